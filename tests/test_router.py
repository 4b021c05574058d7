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
FAST = dict(rows_per_task=24, features="ngrams")  # no embedding model: a fit in a second or two


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
    assert meta["version"] == 3 and meta["tasks"] == ["qa", "sentiment", "summarization"]
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


def test_the_two_generators_are_written_apart(data_dir):
    """The evaluation generator shares no module and no request wording with the training generator."""
    import ast
    import inspect

    from router import heldout, phrasings
    from router.data import split_rows
    from tasks import get_task

    imported = {n.module or "" for n in ast.walk(ast.parse(inspect.getsource(heldout)))
                if isinstance(n, ast.ImportFrom)} | {a.name for n in ast.walk(ast.parse(inspect.getsource(heldout)))
                                                     if isinstance(n, ast.Import) for a in n.names}
    assert not any("phrasings" in m or m == "router.data" for m in imported)
    frames = [f.split("{")[0].strip() for fs in heldout.FRAMES.values() for f in fs] + list(heldout.PLAIN_OTHER)
    frames = [f for f in frames if len(f) > 8]
    specs = [get_task(t) for t in ("qa", "sentiment", "summarization")]
    rows = {s.name: split_rows(s, data_dir, 40)[0] for s in specs}
    training = "\n".join(p for s in specs for p in phrasings.varied_prompts(s, rows[s.name], 0) + list(s.templates))
    assert not [f for f in frames if f in training]


def test_the_embedding_reads_the_request_not_the_pasted_input():
    """Quoted spans and runs of chat turns are left out of what MiniLM embeds; a bare input is embedded itself."""
    from router.features import ends, request_ends

    assert request_ends("Read: 'The bakery opens at 7 am and closes at 3 pm on weekdays.' When does it close?",
                        160) == ("Read:", "When does it close?")
    chat = "Ann: are we still on for lunch?\nMark: yes, 12:30\nAnn: great"
    assert request_ends(f"Turn this into a poem:\n{chat}", 160) == ("Turn this into a poem:",) * 2
    assert request_ends(f"{chat}\n\nSummary:", 160) == ("Summary:", "Summary:")
    assert request_ends(chat, 160) == ends(chat, 160)


def test_one_pass_embedding_gives_each_sentence_its_own_vector():
    """The first and last sentences go through MiniLM in one batch (for speed); each prompt's columns are still
    [its first sentence's vector, its last sentence's vector], as when each is embedded alone."""
    from router.features import Embedder, embed_features, forget_embeddings, request_ends

    prompts = ["Read: 'The bakery opens at 7 am and closes at 3 pm on weekdays.' When does it close?",
               "Summarize this, please.\nAnn: lunch at noon?\nMark: yes\nThanks a lot for your help."]
    forget_embeddings()
    batched = embed_features(prompts, 160)
    for row, prompt in zip(batched, prompts):
        first, last = request_ends(prompt, 160)
        forget_embeddings()
        alone = np.hstack([Embedder.get()([first])[0], Embedder.get()([last])[0]])
        np.testing.assert_allclose(row, alone, atol=1e-5)
    assert not np.allclose(batched[0], batched[1], atol=1e-2)


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


# how people actually ask (issue 21): a real router, fit on real data in the default features -----------------
# Hand-written, one list per kind of framing; none of them comes from either generator.
FRAMINGS: dict[str, list[tuple[str, str]]] = {
    "short quoted context, 'Here is a paragraph'": [
        ('Here is a paragraph: "The Nile flows north through eleven countries before reaching the Mediterranean." '
         "Question: Where does the Nile end?", "qa"),
        ("Here is a paragraph: 'Marie Curie won two Nobel Prizes, in physics and in chemistry.' How many Nobel "
         "Prizes did Curie win?", "qa")],
    "'Read:' then the question": [
        ("Read: 'The bakery opens at 7 am and closes at 3 pm on weekdays.' When does the bakery close?", "qa"),
        ('Read: "Oslo is the capital of Norway and its largest city." What is the capital of Norway?', "qa")],
    "'Given this background:'": [
        ("Given this background: The Great Fire of London started in a bakery on Pudding Lane in 1666.\n"
         "Where did the fire start?", "qa"),
        ("Given this background: penicillin was discovered by Alexander Fleming in 1928. Who discovered penicillin?",
         "qa")],
    "TL;DR of an exchange with speaker names": [
        ("TL;DR of the following exchange:\nAlice: Did you book the hotel for Friday?\nBob: Not yet, the one near "
         "the station was full.\nAlice: Try the place by the river then.\nBob: Ok, I'll call them tonight.",
         "summarization"),
        ("tl;dr this exchange pls\nMr. Park - the shipment is two days late\nSupport - sorry, a truck broke down, it "
         "arrives Thursday\nMr. Park - fine, but I want the delivery fee back", "summarization")],
    "request after the input": [
        ("the soundtrack was lovely but the plot dragged on forever and I nearly fell asleep\n\nso did they like it "
         "or not?", "sentiment"),
        ("Jen: are we still on for lunch?\nMark: yes, 12:30 at the Thai place\nJen: great, see you there\n\n"
         "can you sum that up in one line?", "summarization")],
    "request in the middle": [
        ("I got this review for my cafe. Can you tell me whether it is positive or negative? Here it is: "
         "'Cold coffee, rude staff, never again.' Thanks!", "sentiment"),
        ("Passage: The Amazon river discharges more water than any other river.\nUsing the passage, answer the "
         "question below.\nQ: Which river discharges the most water?", "qa")],
    "casual register with typos": [
        ("hey is this reveiw good or bad lol: 'worst headphones i ever bought, broke in a week'", "sentiment"),
        ("yo whats this convo about, short plz\nsam: u coming 2nite?\nlee: cant, got work\nsam: ugh fine", "summarization")],
    "formal register": [
        ("Kindly determine whether the following customer feedback expresses satisfaction: \"The staff were "
         "courteous and the room was spotless.\"", "sentiment"),
        ("I would be grateful for a concise summary of the following conversation.\nManager: We need the report "
         "by Monday.\nAnalyst: I can deliver it Sunday evening.\nManager: Excellent, thank you.", "summarization")],
    "out of scope, with or without a text": [
        ("Write a haiku about autumn rain.", NONE),
        ("Translate into Spanish: 'The meeting has been moved to Tuesday.'", NONE),
        ("What is the capital of Canada?", NONE),
        ('Here is a paragraph: "The museum reopened in May after a long renovation." Rewrite it as a limerick.', NONE)],
}
TOPIC_TASK = """name: topic
description: Which topic is a dialogue about?
dataset: {data}
input_columns: [dialogue]
output_column: topic
metric: rouge
templates:
  - "What is the topic of this conversation? Answer in one or two words.\\n\\n{{dialogue}}"
  - "{{dialogue}}\\n\\nName the topic of this dialogue in a word or two."
  - "Topic label for the chat below (one or two words):\\n{{dialogue}}"
"""
REAL_ROWS = 100  # rows per task: enough for the default router to generalize, a fit of about a minute


@pytest.fixture(scope="module")
def real_router(data_dir):
    """The default router (n-grams + MiniLM), fit and calibrated on the real data for the built-in tasks."""
    from router.api import fit_specs
    from tasks import get_task

    specs = [get_task(t) for t in ("qa", "sentiment", "summarization")]
    return specs, fit_specs(specs, data_dir, rows_per_task=REAL_ROWS)[0]


# Issue 21's targets not reached yet (docs/router.md): strict, so a fix that makes one pass says so
SHORT_OF_TARGET = {"short quoted context, 'Here is a paragraph'", "'Read:' then the question",
                   "'Given this background:'"}


@pytest.mark.parametrize("kind", [pytest.param(k, marks=pytest.mark.xfail(
    strict=True, reason="issue 21: a sentence or two of context then a question still goes to none "
    "(an open question, for the router)")) if k in SHORT_OF_TARGET else k for k in FRAMINGS])
def test_each_framing_routes_right(real_router, kind):
    _, router = real_router
    prompts, gold = zip(*FRAMINGS[kind])
    routed = router.route(list(prompts))
    assert [r["route"] for r in routed] == list(gold), [(g, r["route"], r["probs"]) for g, r in zip(gold, routed)]


def test_calibrated_router_keeps_its_temperature(real_router, zoo_dir):
    """The fitted temperature travels in router.json; an impossible one is refused with the retrain hint."""
    from router.api import META_FILE, save_router

    _, router = real_router
    assert router.temperature_ != 1.0 and 0.0 <= router.threshold < 1.0
    zoo = make_zoo(zoo_dir)
    save_router(zoo, router)
    loaded = load_router(zoo)
    assert loaded.temperature_ == pytest.approx(router.temperature_)
    np.testing.assert_allclose(loaded.predict_proba(PROMPTS), router.predict_proba(PROMPTS), rtol=1e-5)
    meta = json.loads((zoo.router_dir / META_FILE).read_text())
    (zoo.router_dir / META_FILE).write_text(json.dumps({**meta, "temperature": -1}))
    with pytest.raises(ZooError, match="temperature.*zoo route --train"):
        load_router(zoo)


@pytest.fixture(scope="module")
def topic_refit(real_router, data_dir, tmp_path_factory):
    """The real router refit with a task file's task (dialogue topics) as a 4th route."""
    from router.refit import refit_with_task
    from tasks import get_task

    specs, before = real_router
    path = tmp_path_factory.mktemp("taskfile") / "topic.yaml"
    path.write_text(TOPIC_TASK.format(data=data_dir / "dialogsum"))
    return refit_with_task(specs, get_task(str(path)), data_dir, rows_per_task=REAL_ROWS, before=before, n=60)


def test_a_task_file_task_joins_as_a_new_route(topic_refit):
    """Refitting with a task file's task adds its route, keeps the earlier doubt policy and reports the
    disturbance of every earlier route on their held-out prompts."""
    after, report = topic_refit
    assert list(after.classes_) == [NONE, "qa", "sentiment", "summarization", "topic"]
    assert set(report["per_route"]) == {NONE, "qa", "sentiment", "summarization"} and report["prompts"] > 300
    assert report["largest_drop"] == max(v["before"] - v["after"] for v in report["per_route"].values())
    assert after.predict(["What topic is this chat about? One or two words.\nAnna: The flight leaves at 6.\n"
                          "Tom: Then we need a taxi at 4."])[0] == "topic"


def test_a_new_task_keeps_earlier_routes_within_a_point(topic_refit, real_router):
    """The earlier routes keep their weights: no prompt moves between them, and the new route takes at most a
    point of any earlier route's held-out prompts."""
    after, report = topic_refit
    _, before = real_router
    assert report["largest_drop"] <= 0.01, report["per_route"]
    kept = [i for i, c in enumerate(after.classes_) if c != "topic"]
    np.testing.assert_array_equal(after.coef_[kept], before.coef_)
    assert after.temperature_ == before.temperature_ and after.threshold == before.threshold


# calibration and routing regret, on synthetic numbers and the tiny model ---------------------------------------
def test_temperature_scaling_recovers_a_known_temperature():
    from router.calibration import fit_temperature, reliability

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(4000, 4))
    true = rng.random(4000)[:, None] < np.cumsum(np.exp(logits / 2) / np.exp(logits / 2).sum(1, keepdims=True), 1)
    gold = true.argmax(axis=1)  # labels drawn from softmax(logits / 2)
    assert fit_temperature(logits, gold) == pytest.approx(2.0, rel=0.1)
    sure = np.eye(4)[gold]
    assert reliability(sure, gold)["ece"] == 0.0
    assert reliability(np.full((4, 4), 0.25), np.array([0, 1, 2, 3]))["ece"] == pytest.approx(0.0)
    assert reliability(np.array([[0.9, 0.1]] * 10), np.array([1] * 10))["ece"] == pytest.approx(0.9)


def test_unsure_route_policies_and_threshold_choice():
    from router.calibration import choose_threshold, policies

    classes = [NONE, "qa"]
    proba = np.array([[0.1, 0.9], [0.45, 0.55], [0.6, 0.4], [0.48, 0.52]])
    gold = np.array([1, 0, 0, 1])
    pol = policies(proba, gold, classes, threshold=0.6)
    assert pol["best"] == 0.75 and pol["base"] == 0.75  # the unsure qa prompt is lost, the unsure none one won
    assert pol["ask"] == {"asked": 0.5, "accuracy_answered": 1.0}
    threshold, curve = choose_threshold(proba, gold, classes)
    assert curve[threshold] == max(curve.values()) and threshold == min(t for t, a in curve.items()
                                                                        if a == max(curve.values()))


class AllTo:
    """A stand-in router that sends every prompt to one route."""

    def __init__(self, route, classes):
        self.route_name, self.classes_ = route, np.asarray(classes)

    def route(self, prompts):
        return [{"route": self.route_name, "probs": {}} for _ in prompts]


def test_routing_regret_learned_vs_perfect_vs_base(tmp_path, tiny_base_dir, data_dir):
    """Regret on the tiny model: a router sending everything to the base scores exactly the base, one sending
    each task to its adapter exactly perfect routing, and regret is the gap."""
    from router.regret import routing_regret
    from tests.helpers import make_adapter
    from zoo.serving.runtime import Runtime

    zoo = Zoo(tmp_path / "zoo")
    make_adapter(zoo, tiny_base_dir, "sst", "sentiment", seed=1)
    classes = [NONE, "sentiment"]
    with Runtime(zoo, base=str(tiny_base_dir), quant=False) as rt:
        to_base = routing_regret(rt, n=4, data_dir=data_dir, batch_size=4, router=AllTo(NONE, classes))
        right = routing_regret(rt, n=4, data_dir=data_dir, batch_size=4, router=AllTo("sentiment", classes))
    t = to_base["tasks"]["sentiment"]
    assert t["learned"] == t["base"] and t["regret"] == pytest.approx(t["perfect"] - t["base"])
    assert t["routed_right"] == 0.0 and to_base["out_of_scope"]["to_an_adapter"] == 0.0
    r = right["tasks"]["sentiment"]
    assert r["learned"] == r["perfect"] == t["perfect"] and r["regret"] == 0.0 and r["routed_right"] == 1.0
    assert right["out_of_scope"]["to_an_adapter"] == 1.0
