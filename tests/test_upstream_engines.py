"""`zoo serve --upstream` in front of the real engines: vLLM on the CPU (`.venv-vllm`, `make vllm-venv`) serving a
`zoo export vllm` folder; llama-cpp-python's server (`.venv-llama`, `make llama-check`) serving a `zoo export gguf`
folder (one model per adapter); and llama.cpp's own llama-server (one model, per-request LoRA scales; a binary
named by $LLAMA_SERVER or on the PATH: no package ships it). Engines take minutes to start on 2 cores, so these run
only when asked: `ZOO_ENGINE_TESTS=1 pytest tests/test_upstream_engines.py` (`make vllm-check` runs the vLLM one);
asked for and vLLM or llama-cpp-python is not installed, they fail, not skip."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from contextlib import contextmanager

import openai
import pytest

from tests.helpers import make_adapter
from tests.test_upstream import PROMPTS, TASK_OF, chat, front
from zoo.store import Zoo

ASKED = os.environ.get("ZOO_ENGINE_TESTS") == "1"
pytestmark = pytest.mark.skipif(not ASKED, reason="real engines take minutes to start: runs in `make vllm-check` "
                                                   "and `make llama-check` (ZOO_ENGINE_TESTS=1)")


@pytest.fixture(scope="module")
def real_zoo(tmp_path_factory, embedded_base_dir, data_dir) -> Zoo:
    """Three random adapters on the real embedded base, strong enough to change every answer (so an adapter that
    is not applied shows), and a router: what the engines load; their answers are compared with the engine's own
    (the same engine, or one running that adapter alone), not with a task metric."""
    from router import fit_router

    zoo = Zoo(tmp_path_factory.mktemp("engines") / "zoo")
    for i, (name, task) in enumerate(TASK_OF.items()):
        make_adapter(zoo, embedded_base_dir, name, task, seed=i, r=8, lora_alpha=16)
    fit_router(zoo, data_dir=data_dir, rows_per_task=24, features="ngrams")
    return zoo


def exported(zoo: Zoo, engine: str, out) -> None:
    from zoo.cli import main

    assert main(["export", engine, "--all", "--out", str(out), "--zoo", str(zoo.root)]) == 0


def routes_equal_the_engine_direct(front_url: str, backend, engine_url: str, models: set[str]) -> None:
    """What `zoo serve --upstream` promises, checked against the engine itself: every adapter listed, `auto`
    answering with the routed adapter's name and the engine's own answer for it, forced names, streaming."""
    # long timeouts: llama-cpp-python's server reloads the base and LoRA whenever the model changes (seconds each on a
    # loaded 2-core machine), and `zoo serve --upstream` waits its --timeout-s (300 s) for it
    client = openai.OpenAI(base_url=front_url + "/v1", api_key="none", max_retries=0, timeout=600)
    direct = openai.OpenAI(base_url=engine_url, api_key="none", max_retries=0, timeout=600)
    assert {m.id for m in client.models.list().data} == {"auto", "base", *models}
    chosen = set()
    for prompt in PROMPTS.values():
        answer = chat(client, prompt, "auto", max_tokens=8)
        route = answer.model_extra["zoo_route"]
        expected = chat(direct, prompt, backend.names.served(answer.model), max_tokens=8).choices[0].message.content
        assert answer.choices[0].message.content == expected, (route, answer.model)
        chosen.add(answer.model)
    assert len(chosen) >= 3, chosen

    async def streamed():
        async with openai.AsyncOpenAI(base_url=front_url + "/v1", api_key="none", max_retries=0) as aclient:
            stream = await aclient.chat.completions.create(
                model="squad", messages=[{"role": "user", "content": PROMPTS["squad"]}], temperature=0, max_tokens=8,
                stream=True)
            return [chunk async for chunk in stream]

    chunks = asyncio.run(streamed())
    whole = chat(client, PROMPTS["squad"], "squad", max_tokens=8).choices[0].message.content
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert {c.model for c in chunks} == {"squad"}


def test_routing_in_front_of_real_vllm(real_zoo, tmp_path):
    """Content routing in front of vLLM (what its users ask for: vLLM #51211), on `zoo export vllm`'s folder and
    names file, vLLM serving the embedded base's safetensors in fp32 on the CPU."""
    from zoo.export.vllm_serving import start_vllm, vllm_python

    vllm_python()  # asked for and missing: a ZooError that says how to install it, not a skip
    out = tmp_path / "export"
    exported(real_zoo, "vllm", out)
    with start_vllm(out) as engine_url:
        with front(Zoo(out), engine_url, upstream_map=str(out / "routes.json")) as (url, backend):
            routes_equal_the_engine_direct(url, backend, engine_url, set(TASK_OF))
    assert json.loads((out / "routes.json").read_text())["routes"]["sentiment"] == "sst"


def test_routing_in_front_of_real_llama_cpp_server(real_zoo, tmp_path):
    """llama-cpp-python's OpenAI server on `zoo export gguf`'s folder (one model alias per adapter: the base GGUF
    plus that adapter's GGUF), routed by `zoo serve --upstream` under the zoo's own adapter names."""
    from zoo.export.llama_check import start_llama_server
    from zoo.export.vllm_serving import free_port

    out = tmp_path / "export"
    exported(real_zoo, "gguf", out)
    with start_llama_server(out, free_port()) as engine_url:
        with front(real_zoo, engine_url) as (url, backend):
            routes_equal_the_engine_direct(url, backend, engine_url, set(TASK_OF))


def llama_server_binary() -> str:
    path = os.environ.get("LLAMA_SERVER") or shutil.which("llama-server")
    if not path:
        pytest.skip("no llama-server binary (set LLAMA_SERVER; build llama.cpp's tools/server): llama-cpp-python's "
                    "server has no per-request LoRA scales, so the llama-server kind needs llama.cpp's own")
    return path


@contextmanager
def llama_server(binary: str, base: str, loras: list[str], apply: bool, log_dir):
    """llama.cpp's llama-server on a free port, one slot, greedy-reproducible; yields its URL."""
    import httpx

    from zoo.export.vllm_serving import free_port

    port = free_port()
    # one --lora with commas: recent llama-server keeps only the last of repeated --lora flags; --no-repack: its
    # AMX weight repacking died with SIGILL on this (virtualised) AMX machine
    cmd = [binary, "-m", base, "--host", "127.0.0.1", "--port", str(port), "-c", "2048", "-np", "1", "-t", "2",
           "--no-repack", *(["--lora", ",".join(loras)] if loras else []),
           *([] if apply else ["--lora-init-without-apply"])]
    log = open(log_dir / f"llama-server-{port}.log", "w+")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while not _answers(httpx, f"http://127.0.0.1:{port}/health"):
            assert proc.poll() is None and time.monotonic() < deadline, open(log.name).read()[-2000:]
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def _answers(httpx, url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_llama_server_kind_in_front_of_real_llama_server(real_zoo, tmp_path):
    """`zoo export gguf`'s adapters, all loaded in one llama-server and none applied; `zoo serve --upstream
    --upstream-kind llama-server` (as the export's own hint says, ids from /lora-adapters) alternates adapters and
    the base, and each answer equals that of a llama-server running only that adapter (or none): every scale sent
    (#28674) and no prompt cache reused across adapters (#26207)."""
    binary = llama_server_binary()
    out = tmp_path / "export"
    exported(real_zoo, "gguf", out)
    routes = json.loads((out / "routes.json").read_text())
    base = routes["base"]["gguf"]
    files = {n: str(out / a["path"]) for n, a in routes["adapters"].items()}
    asked = [("sst", PROMPTS["squad"]), ("squad", PROMPTS["squad"]), ("sst", PROMPTS["squad"]),
             ("base", PROMPTS["squad"]), ("dsum", PROMPTS["dsum"]), ("squad", PROMPTS["squad"])]
    with llama_server(binary, base, list(files.values()), False, tmp_path) as url:
        with front(real_zoo, url, upstream_kind="llama-server") as (front_url, _):
            client = openai.OpenAI(base_url=front_url + "/v1", api_key="none", max_retries=0, timeout=600)
            got = [chat(client, p, m).choices[0].message.content for m, p in asked]
    expected = {}
    for model in dict.fromkeys(m for m, _ in asked):
        with llama_server(binary, base, [files[model]] if model != "base" else [], True, tmp_path) as url:
            direct = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
            for m, p in asked:
                if m == model:
                    expected[m, p] = chat(direct, p, "any").choices[0].message.content
    assert got == [expected[m, p] for m, p in asked]
    assert len({got[0], got[1], got[3]}) >= 2  # the adapters change the answer: they are really applied
