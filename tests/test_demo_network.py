"""`zoo demo` where strangers can reach it (issue 16): prompts capped before tokenizing, a bounded queue, errors
without details or paths, a login, and no network address served without one (the processes' sockets checked).
The zoo, runtime and server are built as in tests/test_demo.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from demo.examples import EXAMPLES
from tests.test_demo import NEW, client, demo_zoo, expected, free_port, runtime, server  # noqa: F401 (fixtures)
from zoo.errors import ZooError
from zoo.store import Zoo


def test_prompt_cap_is_checked_before_the_model_sees_anything():
    """Over the cap, every handler refuses with the limit in the message; the runtime (here an object with no
    methods at all) is never touched, so nothing was tokenized."""
    from demo.handlers import Blender, auto_answer, blend_answer, manual_answer

    nothing = object()
    for handler in (lambda: auto_answer(nothing, "x" * 11, None, NEW, 10),
                    lambda: manual_answer(nothing, "qa", "x" * 11, NEW, 10),
                    lambda: blend_answer(nothing, Blender(nothing), {"qa": 1}, "cat", 0.5, "x" * 11, NEW, 10)):
        with pytest.raises(ZooError, match="11 characters; this demo takes at most 10"):
            next(handler())
    with pytest.raises(ZooError, match="must be text"):
        next(auto_answer(nothing, 12345, None, NEW))


@pytest.mark.reliability
def test_errors_reach_visitors_without_details_or_paths(client, runtime, monkeypatch, caplog):
    """Demo: a prompt over the cap gets the limit; our own errors reach the page with folder paths cut; an
    unexpected exception reaches it as one generic line, its text and traceback only in the server's log."""
    from gradio_client.exceptions import AppError

    from demo.app import GENERIC_ERROR
    from demo.handlers import MAX_PROMPT_CHARS

    with pytest.raises(AppError, match=f"at most {MAX_PROMPT_CHARS:,}"):
        client.predict("word " * 4000, None, NEW, api_name="/auto")
    with pytest.raises(AppError) as known:
        client.predict("nope", "hello", NEW, api_name="/manual")
    assert "no adapter named 'nope'" in str(known.value) and str(runtime.zoo.root.parent) not in str(known.value)

    def broken(prompts):
        raise RuntimeError(f"CUDA exploded reading {runtime.zoo.root}/adapters/secret.safetensors")

    monkeypatch.setattr(runtime, "route", broken)
    with caplog.at_level("ERROR", logger="zoo.demo"), pytest.raises(AppError) as hidden:
        client.predict("hello", None, NEW, api_name="/auto")
    assert str(hidden.value).strip() == GENERIC_ERROR
    assert "CUDA exploded" in caplog.text and "Traceback" in caplog.text  # the operator still sees it


@pytest.mark.reliability
def test_queue_turns_away_requests_beyond_its_size(runtime, expected, monkeypatch):
    """Demo queue bounded (`--queue-size 2`): with the model busy, six visitors at once: those beyond the
    queue are told it is full right away, the ones it took still get their correct answers."""
    import threading

    from gradio_client import Client
    from gradio_client.utils import QueueError, Status

    from demo.app import Limits, build_app, serve

    gate, route = threading.Event(), runtime.route
    monkeypatch.setattr(runtime, "route", lambda prompts: gate.wait(120) and route(prompts))
    app = build_app(runtime, Limits(queue_size=2))
    _, url, _ = serve(app, port=None, block=False)
    try:
        client, jobs = Client(url, verbose=False), []
        for _ in range(6):
            jobs.append(client.submit(EXAMPLES[0][1], None, NEW, api_name="/auto"))
            deadline = time.time() + 60
            while jobs[-1].status().code in (Status.STARTING, Status.JOINING_QUEUE) and time.time() < deadline:
                time.sleep(0.1)
        gate.set()
        answers, full = [], 0
        for job in jobs:
            try:
                answers.append(job.result(timeout=300))
            except QueueError:
                full += 1
    finally:
        gate.set()
        app.close()
    assert full >= 3 and len(answers) >= 1, (full, len(answers))
    assert all(a[2] == expected[EXAMPLES[0][1]]["answer"] for a in answers)


@pytest.mark.reliability
def test_login_is_required_when_auth_is_set(runtime, expected):
    """Demo with a login: without it the config and every endpoint answer 401; with it, answers as usual."""
    import urllib.error

    from gradio_client import Client

    from demo.app import build_app, serve

    app = build_app(runtime)
    _, url, _ = serve(app, port=None, block=False, auth=("ann", "s3cret"))
    try:
        for path, data in (("config", None), ("gradio_api/info", None), ("gradio_api/call/auto", b'{"data": ["hi"]}')):
            request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=30)
            assert refused.value.code == 401, (path, refused.value.code)
        with pytest.raises(ValueError, match="Could not login"):
            Client(url, auth=("ann", "wrong"), verbose=False)
        _, prompt, _ = EXAMPLES[0]
        answer = Client(url, auth=("ann", "s3cret"), verbose=False).predict(prompt, None, NEW, api_name="/auto")[2]
        assert answer == expected[prompt]["answer"]
    finally:
        app.close()


@contextmanager
def running_demo(zoo: Zoo, port: int, *flags: str, env: dict | None = None):
    """`zoo demo` in its own process, yielded once it answers on 127.0.0.1:`port`; stopped on exit."""
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "zoo", "demo", "--zoo", str(zoo.root), "--port", str(port), *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=Path(__file__).resolve().parents[1])
    try:
        deadline, up = time.time() + 120, False
        while time.time() < deadline and proc.poll() is None and not up:
            try:
                up = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).status == 200
            except OSError:
                time.sleep(1)
        assert up, proc.communicate(timeout=5)[0] if proc.poll() is not None else "no answer"
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def listening(proc, port: int) -> set[str]:
    """The addresses the process listens on at `port`, read from its sockets."""
    import psutil

    return {c.laddr.ip for c in psutil.Process(proc.pid).net_connections("tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port}


@pytest.mark.reliability
def test_zoo_demo_serves_on_localhost(demo_zoo):
    """`zoo demo` with no --host: the started process listens on 127.0.0.1 only (its socket, read back), serves
    the page without a login, and stops on a signal."""
    port = free_port()
    with running_demo(demo_zoo, port, env={"ZOO_DEMO_AUTH": ""}) as proc:
        assert "Adapter Zoo" in urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5).status == 200
        assert listening(proc, port) == {"127.0.0.1"}


@pytest.mark.reliability
def test_zoo_demo_on_the_network_needs_a_login(demo_zoo, monkeypatch, capsys):
    """`zoo demo --host 0.0.0.0` (or --share) without a login: exit 2 at once, before the model loads, naming
    --auth and --insecure, and nothing listens. With a login (`$ZOO_DEMO_AUTH`), the started process listens on
    every interface and answers nothing without it."""
    from zoo.cli import main

    monkeypatch.delenv("ZOO_DEMO_AUTH", raising=False)
    port = free_port()
    t0, errors = time.perf_counter(), []
    for flags in (["--host", "0.0.0.0"], ["--share"], ["--host", "0.0.0.0", "--auth", "ann"]):
        assert main(["demo", "--zoo", str(demo_zoo.root), "--port", str(port), *flags]) == 2
        errors.append(capsys.readouterr().err.strip())
        assert len(errors[-1].splitlines()) == 1 and "--auth" in errors[-1], errors[-1]
    assert time.perf_counter() - t0 < 5
    assert "--insecure" in errors[0] and "share" in errors[1] and "USER:PASSWORD" in errors[2]
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # nothing was started
    with running_demo(demo_zoo, port, "--host", "0.0.0.0", env={"ZOO_DEMO_AUTH": "ann:s3cret"}) as proc:
        assert listening(proc, port) == {"0.0.0.0"}
        import urllib.error

        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5)
        assert refused.value.code == 401
