"""Adapter Zoo's task metrics as a local `evaluate` module (`zoo_metrics.py`); see `zoo.metrics`."""
