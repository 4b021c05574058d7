"""Training internals `zoo.train` installs for a run: the packed-row attention a CPU trains with (`attention.py`)
and the memory plans (`memory.py`: activation checkpointing per layer, dense NF4 copies, chosen within a budget)."""
