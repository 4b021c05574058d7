"""`zoo serve`: the zoo behind OpenAI's HTTP API, with the router choosing the adapter and continuous batching.

- `config.py`     the server's settings and limits (a typed dataclass the CLI maps onto)
- `protocol.py`   request/response bodies (pydantic) and OpenAI's error JSON
- `scheduler.py`  the one thread that owns the model: a queue, and a batch rows join and leave at step boundaries
- `metrics.py`    Prometheus metrics
- `security.py`   bearer-key auth and the request-body bound
- `app.py`        FastAPI routes only: HTTP in, backend calls, HTTP out
- `backend.py`    what answers: the local scheduler, or (`upstream*.py`) another engine behind the router
"""
