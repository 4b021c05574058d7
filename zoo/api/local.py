"""A `zoo serve` app in a background thread on a free loopback port, for tests and benchmarks: the same uvicorn
server and sockets a client sees, without a second process."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from typing import Callable

from zoo.api.app import create_app
from zoo.api.config import ServeConfig
from zoo.api.metrics import Metrics
from zoo.api.scheduler import Scheduler


def wait_for(condition: Callable[[], object], seconds: float, what: str = "a condition") -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {seconds:g} s waiting for {what}")
        time.sleep(0.05)


@contextmanager
def local_server(load_runtime: Callable, ready: bool = True, **settings):
    """Yield `(url, scheduler)` for an app serving `load_runtime()` on 127.0.0.1 (once the model is loaded when
    `ready`); the server stops and the runtime is closed on exit."""
    import httpx
    import uvicorn

    config = ServeConfig(**settings)
    scheduler = Scheduler(load_runtime, config, Metrics())
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    # log_config=None: uvicorn's default would reset the host process's logging (dictConfig closes every handler)
    server = uvicorn.Server(uvicorn.Config(create_app(scheduler, config), log_level="warning", log_config=None))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="zoo-serve")
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        wait_for(lambda: server.started, 60, "the server to start")
        if ready:
            wait_for(lambda: scheduler.ready or scheduler.load_failed, 600, "the model to load")
            if scheduler.load_failed:
                raise RuntimeError("the model failed to load (see the log)")
            httpx.get(f"{url}/health").raise_for_status()
        yield url, scheduler
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
