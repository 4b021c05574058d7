"""The router: fit from the registry, route, store as JSON + safetensors, refuse pickles and stale routers, CLI."""

from __future__ import annotations

import copy
import io
import json
import pickle
import shutil

import numpy as np
import pytest

from router import NONE, Router, fit_router, load_router, route_to_adapter
from router.oos import oos_prompts
from zoo.cli import main
from tests.helpers import entry
from zoo.errors import ZooError
from zoo.store import Zoo

TASK_OF = {"sst": "sentiment", "squad": "qa", "dsum": "summarization"}
FAST = dict(rows_per_task=12, features="ngrams")  # no embedding model: a fit in about a second


def make_zoo(path, entries=TASK_OF) -> Zoo:
    zoo = Zoo(path)
    for name, task in entries.items():
        zoo.put(entry(name, task, created="2025-01-01T00:00:00Z"))
    return zoo


@pytest.fixture(scope="module")
def fitted_once(tmp_path_factory, data_dir):
    zoo = make_zoo(tmp_path_factory.mktemp("router") / "zoo")
    return zoo, fit_router(zoo, data_dir=data_dir, **FAST)


@pytest.fixture
def fitted(fitted_once, zoo_dir):
    """A fresh copy of the fitted zoo per test: tests damage it on purpose."""
    zoo, router = fitted_once
    shutil.copytree(zoo.root, zoo_dir)
    return Zoo(zoo_dir), copy.deepcopy(router)


PROMPTS = [
    "Is the following sentence positive or negative?\nA gorgeous, moving film.",
    "Write a poem about the sea at night.",
    "Dialogue:\n#Person1#: Are you coming tonight?\n#Person2#: Yes, at eight.\n\nSummary:",
    "Context:\nThe Eiffel Tower was built in 1889 by Gustave Eiffel's company.\n\nQ: When was the tower built?\n"
    "A (short span from the context):",
]


def test_fit_route_save_load_round_trip(fitted):
    zoo, router = fitted
    assert list(router.classes_) == [NONE, "qa", "sentiment", "summarization"]
    assert sorted(p.name for p in zoo.router_dir.iterdir()) == ["router.json", "router.safetensors"]
    meta = json.loads((zoo.router_dir / "router.json").read_text())
    assert meta["version"] == 1 and meta["tasks"] == ["qa", "sentiment", "summarization"]
    routed = router.route(PROMPTS)
    assert [r["route"] for r in routed] == ["sentiment", NONE, "summarization", "qa"]
    for r in routed:
        assert set(r["probs"]) == set(router.classes_) and abs(sum(r["probs"].values()) - 1) < 1e-4
    loaded = load_router(zoo)
    assert loaded.get_params() == router.get_params() and list(loaded.classes_) == list(router.classes_)
    np.testing.assert_allclose(loaded.predict_proba(PROMPTS), router.predict_proba(PROMPTS), rtol=1e-5)
    assert [route_to_adapter(zoo, r["route"]) for r in routed] == ["sst", None, "dsum", "squad"]


def test_estimator_conventions(fitted):
    from sklearn.base import clone

    _, router = fitted
    fresh = Router(C=2.0, threshold=0.3)
    assert vars(fresh) == {**Router().get_params(), "C": 2.0, "threshold": 0.3}  # __init__ only stores
    assert not hasattr(fresh, "classes_")
    assert clone(router).get_params() == router.get_params()
    proba = router.predict_proba(PROMPTS)
    assert proba.shape == (len(PROMPTS), len(router.classes_))
    assert list(router.predict(PROMPTS)) == [r["route"] for r in router.route(PROMPTS)]


def test_threshold_sends_unsure_prompts_to_none(fitted):
    _, router = fitted
    router.threshold = 0.999999
    assert {r["route"] for r in router.route(PROMPTS)} == {NONE}


@pytest.mark.parametrize("name", ["router.pkl", "weights.dat"])
def test_loading_refuses_a_planted_pickle(fitted, name):
    zoo, _ = fitted
    (zoo.router_dir / name).write_bytes(pickle.dumps({"coef": [1.0, 2.0]}))
    with pytest.raises(ZooError, match="is a pickle-based file"):
        load_router(zoo)


def test_pickle_in_place_of_the_weights_is_refused(fitted):
    zoo, _ = fitted
    (zoo.router_dir / "router.safetensors").write_bytes(pickle.dumps(np.zeros(3)))
    with pytest.raises(ZooError, match="is a pickle-based file"):
        load_router(zoo)


def test_damaged_weights_are_refused(fitted):
    zoo, _ = fitted
    path = zoo.router_dir / "router.safetensors"
    path.write_bytes(path.read_bytes()[:-16])
    with pytest.raises(ZooError, match="zoo route --train"):
        load_router(zoo)


def test_stale_router_asks_for_retraining(fitted):
    zoo, _ = fitted
    zoo.remove("squad")
    with pytest.raises(ZooError, match=r"qa.*zoo route --train"):
        load_router(zoo)


def test_zoo_without_router_says_what_to_do(zoo_dir):
    zoo = make_zoo(zoo_dir)
    with pytest.raises(ZooError, match=r"zoo route --train.*--adapter"):
        load_router(zoo)


def test_fit_needs_tasks(zoo_dir, data_dir):
    with pytest.raises(ZooError, match="no tasks"):
        fit_router(Zoo(zoo_dir), data_dir=data_dir, **FAST)


def test_fit_for_explicit_tasks_in_an_empty_zoo(zoo_dir, data_dir):
    zoo = Zoo(zoo_dir)
    router = fit_router(zoo, data_dir=data_dir, tasks=["sentiment", "qa"], **FAST)
    assert list(load_router(zoo).classes_) == [NONE, "qa", "sentiment"] == list(router.classes_)
    assert route_to_adapter(zoo, "qa") is None  # known route, no adapter serving it
    make_zoo(zoo.root, {"dsum": "summarization"})  # an adapter trained after the router: still loads, warns
    with pytest.warns(UserWarning, match="summarization.*zoo route --train"):
        load_router(zoo)


def test_route_to_adapter_prefers_route_as_then_trained(zoo_dir):
    zoo = make_zoo(zoo_dir, {"sst": "sentiment"})
    zoo.put(entry("blend", "sentiment", "combined", created="2030-01-01T00:00:00Z"))
    assert route_to_adapter(zoo, "sentiment") == "sst"
    zoo.put(entry("multi", "qa", "combined", route_as=("qa", "sentiment")))
    assert route_to_adapter(zoo, "sentiment") == "multi" and route_to_adapter(zoo, "qa") == "multi"
    assert route_to_adapter(zoo, NONE) is None and route_to_adapter(zoo, "summarization") is None


def test_out_of_scope_sets_are_large_and_disjoint():
    train, held_out = oos_prompts("train"), oos_prompts("eval")
    assert len(train) >= 300 and len(held_out) >= 300
    assert not set(train) & set(held_out)


def test_held_out_phrasings_are_not_training_templates():
    from router.data import HELD_OUT, flipped_templates
    from tasks import get_task

    for task, phrasings in HELD_OUT.items():
        spec = get_task(task)
        assert not set(phrasings) & (set(spec.templates) | set(flipped_templates(spec)))


def test_mix_features_round_trip(zoo_dir):
    """The default features (n-grams + MiniLM) fit, save and load to the same probabilities."""
    from router.api import save_router

    zoo = make_zoo(zoo_dir, {"sst": "sentiment"})
    prompts = ["Is this review positive or negative? I loved it.", "Sentiment of: dull and slow.",
               "Write a haiku about rain.", "What is 12 * 13?"]
    router = Router().fit(prompts, ["sentiment", "sentiment", NONE, NONE])
    assert router.coef_.shape == (2, router.feature_dim())
    save_router(zoo, router)
    np.testing.assert_allclose(load_router(zoo).predict_proba(prompts), router.predict_proba(prompts), rtol=1e-5)


# CLI ---------------------------------------------------------------------------------------------------
def cli(*args) -> int:
    return main(["route", *args])


def test_cli_train_and_route_json(zoo_dir, data_dir, capsys):
    make_zoo(zoo_dir)
    assert cli("--zoo", str(zoo_dir), "--train", "--features", "ngrams", "--rows", "12",
               "--data-dir", str(data_dir)) == 0
    capsys.readouterr()
    assert cli("--zoo", str(zoo_dir), "--json", PROMPTS[0]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert set(out) == {"route", "probs"} and out["route"] == "sentiment"
    assert set(out["probs"]) == {NONE, "qa", "sentiment", "summarization"}


def test_cli_empty_prompt_exits_2(fitted, capsys):
    zoo, _ = fitted
    assert cli("--zoo", str(zoo.root), "   ") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "empty prompt" in err


def test_cli_without_router_exits_2(zoo_dir, capsys):
    make_zoo(zoo_dir)
    assert cli("--zoo", str(zoo_dir), "hello") == 2
    assert "zoo route --train" in capsys.readouterr().err


def stdin(monkeypatch, data: bytes) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


def test_cli_batch_from_stdin_survives_garbage(fitted, monkeypatch, capsys):
    zoo, _ = fitted
    data = (PROMPTS[1].encode() + b"\n" + json.dumps({"prompt": PROMPTS[0]}).encode() + b"\n\n"
            + b"\xff\xfe\x00 binary \x80\x81 garbage\n{not json\n")
    stdin(monkeypatch, data)
    assert cli("--zoo", str(zoo.root), "--json") == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 4
    assert rows[0]["route"] == NONE and rows[1]["route"] == "sentiment"


def test_cli_jsonl_with_empty_prompt_exits_2(fitted, monkeypatch, capsys):
    zoo, _ = fitted
    stdin(monkeypatch, b'{"prompt": "fine"}\n{"prompt": ""}\n')
    assert cli("--zoo", str(zoo.root)) == 2
    assert "line 2" in capsys.readouterr().err
