"""Shared fixtures: a tiny random Llama with the real SmolLM2 tokenizer (units, seconds) and the embedded base."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# the hub tests' zoo, its published folders and the fake Hub (tests/test_push.py, test_pull.py, test_hostile.py)
pytest_plugins = ["tests.hub_zoo"]

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _a_share_of_the_cores_per_worker() -> None:
    """Under pytest-xdist (`make test`), each worker's torch/OpenMP gets its share of the cores, and so do the
    processes its tests start (they inherit it): N workers each using every core would oversubscribe the CPU."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))


_a_share_of_the_cores_per_worker()  # before anything imports torch


def _tasks_restored():
    """The task registry as it was before, after: a task a test (or a module's fixture) registers from a task file
    leaves with it, so no test sees another's tasks, whatever order or xdist worker runs them."""
    import tasks

    tasks.all_tasks()  # the built-ins and plugins, loaded before the snapshot
    before = dict(tasks._REGISTRY)
    yield
    tasks._REGISTRY.clear()
    tasks._REGISTRY.update(before)


@pytest.fixture(autouse=True, scope="module")
def module_tasks_restored():
    yield from _tasks_restored()


@pytest.fixture(autouse=True)
def each_tests_tasks_restored():
    yield from _tasks_restored()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(os.environ.get("ZOO_DATA_DIR") or SHARED_DATA)
    if not (path / "sst2").is_dir():
        pytest.fail(f"test data not found at {path}: set ZOO_DATA_DIR to the shared data folder")
    return path


@pytest.fixture(scope="session")
def embedded_base_dir() -> Path:
    """The real SmolLM2-135M-Instruct as safetensors (converted once into the cache)."""
    from zoo.base import resolve_base

    return resolve_base("smollm2-135m").path


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory, embedded_base_dir) -> Path:
    """A 2-layer random Llama (hidden 64) with the real tokenizer and chat template: a full model in seconds."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(embedded_base_dir)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def served_zoo(tmp_path_factory, tiny_base_dir, data_dir):
    """Three random adapters on the tiny base and a router fit on n-grams: the zoo the server tests serve
    (read only: tests that change a zoo make their own)."""
    from router import fit_router
    from tests.helpers import SERVE_TASKS, make_adapter
    from zoo.store import Zoo

    zoo = Zoo(tmp_path_factory.mktemp("served") / "zoo")
    for i, (name, task) in enumerate(SERVE_TASKS.items()):
        make_adapter(zoo, tiny_base_dir, name, task, seed=i)
    fit_router(zoo, data_dir=data_dir, rows_per_task=24, features="ngrams")
    return zoo


@pytest.fixture
def zoo_dir(tmp_path) -> Path:
    return tmp_path / "zoo"


# reports/reliability.md: every reliability scenario (test docstring) with its outcome -------------------------
_SCENARIOS: dict[str, dict] = {}
_PARTIAL_RUN = False  # `-k` or `-m` deselected tests: a report would lose their rows
REPORT = Path(__file__).resolve().parents[1] / "reports" / "reliability.md"


def pytest_collection_modifyitems(items):
    for item in items:
        if item.get_closest_marker("reliability"):
            doc = (getattr(item.function, "__doc__", None) or item.name).strip().splitlines()
            text = " ".join(line.strip() for line in doc)
            if getattr(item, "callspec", None) is not None:
                text += f" [{item.callspec.id}]"
            _SCENARIOS[item.nodeid] = {"scenario": text, "outcome": "not run"}


def pytest_runtest_logreport(report):
    entry = _SCENARIOS.get(report.nodeid)
    if entry is None or (report.when != "call" and report.passed):
        return
    entry["outcome"] = "skipped" if report.skipped else ("passed" if report.passed else f"FAILED ({report.when})")
    entry["seconds"] = round(report.duration, 1)


def pytest_deselected(items):
    global _PARTIAL_RUN
    _PARTIAL_RUN = True


def pytest_sessionfinish(session):
    """Rewrite the report after whole-suite runs only: a `-k` or single-file run would drop the other rows."""
    paths = [a for a in session.config.invocation_params.args if not a.startswith("-")]
    ran = [e for e in _SCENARIOS.values() if e["outcome"] != "not run"]
    if not ran or paths or _PARTIAL_RUN:
        return
    lines = ["# Reliability scenarios", "",
             "Generated by `make test` (tests/test_reliability.py and other tests marked `reliability`).", "",
             "| scenario | outcome | seconds |", "|---|---|---|"]
    lines += [f"| {e['scenario']} | {e['outcome']} | {e.get('seconds', '')} |" for e in ran]
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text("\n".join(lines) + "\n")
