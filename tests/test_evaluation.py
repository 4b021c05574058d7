"""Evaluation reports users can trust: 95% bootstrap intervals that cover the truth about 95% of the time (paired
for adapter vs base), out-of-domain sets that load through the same code as the in-domain ones, and reports,
manifest and model card that show both with their intervals."""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import pytest

from tasks import TaskSpec, get_task
from zoo.bootstrap import intervals, paired_intervals
from zoo.data import DataMissing, load_ood_rows, load_rows
from zoo.errors import ZooError


def column(values) -> dict:
    return {"accuracy": np.asarray(values, dtype=float).reshape(-1, 1)}


def test_intervals_cover_the_true_accuracy_about_95_percent_of_the_time():
    """400 seeded samples of n=200 answers, each right with probability 0.7: the interval holds 0.7 in 92-98%."""
    rng = np.random.default_rng(0)
    hits = 0
    for i in range(400):
        low, high = intervals(column(rng.random(200) < 0.7), seed=i)["accuracy"]
        hits += low <= 0.7 <= high
    assert 0.92 <= hits / 400 <= 0.98


def test_interval_width_is_what_n_200_allows():
    """About +-3 points for a 0.87 accuracy on 200 examples (the normal approximation: 1.96 * 0.024)."""
    low, high = intervals(column([1] * 174 + [0] * 26))["accuracy"]
    assert low < 0.87 < high and 0.08 <= high - low <= 0.11


def test_paired_interval_excludes_zero_for_a_real_difference_and_holds_it_for_none():
    rng = np.random.default_rng(1)
    base = (rng.random(200) < 0.6).astype(float)
    wrong, right = np.flatnonzero(base == 0), np.flatnonzero(base == 1)
    better = base.copy()
    better[wrong[:20]] = 1  # 20 more right answers, nothing lost: +0.10
    same = base.copy()
    same[wrong[:15]], same[right[:15]] = 1, 0  # as many fixed as broken: +0
    low, high = paired_intervals(column(base), column(better))["change"]["accuracy"]
    assert 0 < low < 0.1 < high
    low, high = paired_intervals(column(base), column(same))["change"]["accuracy"]
    assert low < 0 < high


def test_paired_interval_is_narrower_than_the_two_systems_own():
    """Pairing is what makes a small real gain visible: the change varies less than either score."""
    rng = np.random.default_rng(2)
    base = (rng.random(200) < 0.5).astype(float)
    adapter = np.where(rng.random(200) < 0.1, 1.0, base)
    out = paired_intervals(column(base), column(adapter))
    width = {side: out[side]["accuracy"][1] - out[side]["accuracy"][0] for side in ("base", "adapter", "change")}
    assert width["change"] < 0.5 * min(width["base"], width["adapter"])
    with pytest.raises(ValueError, match="same examples"):
        paired_intervals(column(base), column(adapter[:100]))


# ---- out-of-domain sets ------------------------------------------------------------------------------------
@pytest.mark.parametrize("task, dataset", [("sentiment", "uci_sentiment"), ("qa", "covid_qa"),
                                           ("summarization", "scitldr")])
def test_every_builtin_task_names_an_out_of_domain_set_that_loads(task, dataset, data_dir):
    spec = get_task(task)
    assert spec.ood["dataset"] == dataset
    rows = load_ood_rows(spec, data_dir, limit=5, seed=3)
    assert len(rows) == 5 and all(c in rows[0] for c in spec.columns)
    for row in rows:
        assert all(isinstance(row[c], str) and row[c] for c in spec.input_columns)
        assert spec.prompt(row) and all(isinstance(r, str) and r for r in spec.references(row))
    assert rows != load_rows(spec, spec.eval_split, data_dir, limit=5, seed=3)


def test_scitldr_abstract_is_joined_and_every_tldr_is_a_reference(data_dir):
    spec = get_task("summarization")
    raw = [json.loads(line) for line in (data_dir / "scitldr" / "test.jsonl").open()][:50]
    rows = {r["paper_id"]: r for r in load_ood_rows(spec, data_dir)}
    for source in raw:
        row = rows[source["paper_id"]]
        assert row["dialogue"] == " ".join(s.strip() for s in source["source"])
        assert spec.references(row) == [t.strip() for t in source["target"]]


def _write(folder, rows):
    folder.mkdir(parents=True)
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def mood(tmp_path) -> TaskSpec:
    """A task on `data/mood` (text, label) whose out-of-domain set `data/other` holds the same rows under other
    column names, so the two loads can be compared row for row."""
    rows = [{"text": f"sentence {i}", "label": i % 2} for i in range(30)]
    _write(tmp_path / "data" / "mood", rows)
    _write(tmp_path / "data" / "other", [{"review": r["text"], "stars": r["label"], "id": i} for i, r in
                                         enumerate(rows)])
    return TaskSpec(name="mood", description="d", dataset="mood", local_dir="mood", input_columns=("text",),
                    target_column="label", labels=("neg", "pos"), templates=("{text}",), eval_split="test",
                    ood={"dataset": "other", "columns": {"text": "review", "label": "stars"}})


def test_out_of_domain_rows_go_through_the_same_loader_and_sampling(mood, tmp_path, monkeypatch):
    import zoo.data as data

    read = []
    real_read = data.read_jsonl
    monkeypatch.setattr(data, "read_jsonl", lambda path: read.append(path.parent.name) or real_read(path))
    ood = load_ood_rows(mood, tmp_path / "data", limit=7, seed=4)
    same = load_rows(mood, "test", tmp_path / "data", limit=7, seed=4)
    assert read == ["other", "mood"]
    assert [(r["text"], r["label"], mood.prompt(r)) for r in ood] == [(r["text"], r["label"], mood.prompt(r))
                                                                     for r in same]


def test_out_of_domain_set_is_never_read_from_the_tasks_own_folder(mood, tmp_path):
    """Without its own folder the set is missing (and left out of reports), not replaced by in-domain rows."""
    spec = replace(mood, ood={"dataset": "elsewhere"})
    with pytest.raises(DataMissing, match="elsewhere"):
        load_ood_rows(spec, tmp_path / "data")
    with pytest.raises(ZooError, match="ood.columns"):
        load_ood_rows(replace(mood, ood={"dataset": "other"}), tmp_path / "data")


@pytest.mark.parametrize("ood, error", [
    ("uci_sentiment", "mapping"), ({"split": "test"}, "dataset"), ({"dataset": "x", "spilt": "test"}, "split"),
    ({"dataset": "x", "columns": {"review": "text"}}, "not task columns"), ({"dataset": "x", "join": "text"}, "list"),
    ({"dataset": "x", "columns": {"text": 3}}, "columns"),
])
def test_a_task_file_names_its_own_out_of_domain_set_and_mistakes_are_refused(mood, ood, error):
    data = {**mood.to_json(), "ood": {"dataset": "other", "split": "test", "join": ["text"]}}
    assert TaskSpec.from_json(data).ood == data["ood"]
    with pytest.raises(ZooError, match=error):
        TaskSpec.from_json({**data, "ood": ood})


def test_builtin_specs_keep_their_out_of_domain_set_through_task_json():
    for name in ("sentiment", "qa", "summarization"):
        spec = get_task(name)
        assert TaskSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec


# ---- end to end on the tiny model: `evaluate` -> reports, manifest summary, model card ---------------------
@contextmanager
def counted_systems():
    """The system (adapter name, or NONE for the base) of every generation run inside the block, in order."""
    import zoo.evaluation as evaluation

    systems, real_run = [], evaluation.run_outputs

    def counted(runtime, spec, ids, adapter, batch_size=16):
        systems.append(adapter)
        return real_run(runtime, spec, ids, adapter, batch_size)

    evaluation.run_outputs = counted
    try:
        yield systems
    finally:
        evaluation.run_outputs = real_run


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_base_dir, data_dir):
    """A random sentiment adapter on the tiny base, evaluated on 12 rows in domain and out of domain (twice:
    the second run must reuse the base's answers)."""
    import zoo.evaluation as evaluation
    from tests.helpers import make_adapter
    from zoo.serving.runtime import NONE, Runtime
    from zoo.store import Zoo

    zoo = Zoo(tmp_path_factory.mktemp("eval") / "zoo")
    make_adapter(zoo, tiny_base_dir, "sent", "sentiment", seed=0)
    spec = replace(get_task("sentiment"), max_new_tokens=2)
    with counted_systems() as systems, Runtime(zoo, base=str(tiny_base_dir), quant=False) as runtime:
        result = evaluation.evaluate(runtime, "sent", spec, n=12, data_dir=data_dir, seed=5)
        again = evaluation.evaluate(runtime, "sent", spec, n=12, data_dir=data_dir, seed=5)
    assert systems.count(NONE) == 2 and systems.count("sent") == 4  # base once per data set, then cached
    assert again["base"] == result["base"] and again["ood"]["base"] == result["ood"]["base"]
    return zoo, result


def test_result_has_in_domain_and_out_of_domain_scores_with_intervals(evaluated):
    _, result = evaluated
    ood = result["ood"]
    assert (result["n"], result["split"], ood["n"], ood["dataset"], ood["split"]) == (12, "validation", 12,
                                                                                      "uci_sentiment", "test")
    for block in (result, ood):
        ci = block["intervals"]
        assert (ci["level"], ci["resamples"]) == (0.95, 1000)
        for side in ("base", "adapter"):
            for key, value in block[side].items():
                low, high = ci[side][key]
                assert 0 <= low <= high <= 1 and low - 1e-9 <= value <= high + 1e-9
        change = block["adapter"]["accuracy"] - block["base"]["accuracy"]
        assert ci["change"]["accuracy"][0] - 1e-9 <= change <= ci["change"]["accuracy"][1] + 1e-9


def test_report_files_show_out_of_domain_rows_and_intervals(evaluated, tmp_path):
    from zoo.reports import write_task_report

    _, result = evaluated
    md = write_task_report(tmp_path, result, [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0}]).read_text()
    acc = result["adapter"]["accuracy"]
    low, high = result["intervals"]["adapter"]["accuracy"]
    assert f"{acc:.3f} [{low:.2f}, {high:.2f}]" in md
    assert "| metric | base | adapter | change | OOD base | OOD adapter | OOD change |" in md
    assert "`uci_sentiment`" in md and "95% bootstrap" in md and md.count("| accuracy |") == 1
    ood_acc = result["ood"]["adapter"]["accuracy"]
    low, high = result["ood"]["intervals"]["adapter"]["accuracy"]
    assert f"{ood_acc:.3f} [{low:.2f}, {high:.2f}]" in md.split("| accuracy |")[1].splitlines()[0]
    saved = json.loads((tmp_path / "sent.json").read_text())
    assert saved["ood"]["intervals"]["change"] == result["ood"]["intervals"]["change"]
    assert (tmp_path / "sent.png").stat().st_size > 1000


def test_manifest_summary_json_and_model_card_carry_both_sets(evaluated, capsys):
    from tests.helpers import entry
    from zoo.commands.evaluate import print_table
    from zoo.evaluation import summary
    from zoo.hub import build_card

    _, result = evaluated
    record = json.loads(json.dumps(summary(result)))  # what the manifest and `zoo eval --json` hold
    assert "examples" not in record and record["ood"]["intervals"] == result["ood"]["intervals"]
    print_table([record])
    out = capsys.readouterr().out
    assert "ood:uci_sentiment" in out and out.count("[") >= 6
    card = build_card(entry("sent", "sentiment", metrics={"eval": record}), get_task("sentiment"), "bob/sent").text
    assert "| metric | base | adapter | change | OOD base | OOD adapter | OOD change |" in card
    low, high = result["intervals"]["change"]["accuracy"]
    assert f"[{low:.2f}, {high:.2f}]" in card and "`uci_sentiment`" in card


def test_a_missing_out_of_domain_set_is_reported_not_fatal(evaluated, tmp_path):
    from tests.helpers import entry
    from zoo.hub import build_card
    from zoo.reports import task_markdown

    _, result = evaluated
    skipped = {**result, "ood": {"dataset": "uci_sentiment", "split": "test",
                                 "skipped": f"no test.jsonl in {tmp_path}/uci_sentiment"}}
    md = task_markdown(skipped, "x.png")
    assert "not scored: no test.jsonl" in md and "OOD base" not in md
    card = build_card(entry("sent", "sentiment", metrics={"eval": skipped}), get_task("sentiment"), "bob/s").text
    assert "not scored" in card and str(tmp_path) not in card  # a local path never reaches a published card


def test_a_later_eval_reads_the_base_answers_back_and_regenerates_what_changed(evaluated, tiny_base_dir, data_dir):
    """A new `zoo eval` (the in-process cache emptied) reads the base's answers from the zoo's cache: same scores,
    no base generation; other prompts (another seed) or a damaged cache file are generated again."""
    import zoo.evaluation as evaluation
    from zoo.serving.runtime import NONE, Runtime

    zoo, result = evaluated
    spec = replace(get_task("sentiment"), max_new_tokens=2)
    kept = sorted((zoo.root / ".cache" / "base-answers").glob("*.json"))
    assert len(kept) == 2  # in domain and out of domain
    evaluation._BASE_CACHE.clear()
    kept[0].write_text('{"outputs": ["only one"], "seconds": 1}')  # damaged: ignored, generated again
    with counted_systems() as systems, Runtime(zoo, base=str(tiny_base_dir), quant=False) as runtime:
        again = evaluation.evaluate(runtime, "sent", spec, n=12, data_dir=data_dir, seed=5)
        assert systems.count(NONE) == 1
        evaluation.evaluate(runtime, "sent", spec, n=12, data_dir=data_dir, seed=6)
    assert again["base"] == result["base"] and again["ood"]["base"] == result["ood"]["base"]
    assert systems.count(NONE) == 3  # the new seed's two samples
    assert len(list((zoo.root / ".cache" / "base-answers").glob("*.json"))) == 4


def test_ood_n_sets_the_out_of_domain_sample_alone(evaluated, tiny_base_dir, data_dir, capsys):
    """`zoo eval --ood-n 5`: 12 rows in domain, 5 out of domain (a shorter run where fewer will do)."""
    from zoo.cli import main

    zoo, _ = evaluated
    assert main(["eval", "sent", "--zoo", str(zoo.root), "-n", "12", "--ood-n", "5", "--data-dir", str(data_dir),
                 "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)[0]
    assert (printed["n"], printed["ood"]["n"]) == (12, 5)
    with pytest.raises(SystemExit) as refused:
        main(["eval", "sent", "--zoo", str(zoo.root), "--ood-n", "0"])
    assert refused.value.code == 2 and "--ood-n: must be at least 1" in capsys.readouterr().err


def test_base_answers_kept_ahead_are_read_back_by_the_evaluation(evaluated, tiny_base_dir, data_dir):
    """`zoo run` generates the base's answers first (to time them): they are kept, a second call reads them back
    with the seconds of the run that made them, and the evaluation then generates only the adapter's."""
    import zoo.evaluation as evaluation
    from zoo.serving.runtime import NONE, Runtime

    zoo, _ = evaluated
    spec = replace(get_task("sentiment"), max_new_tokens=2)
    with counted_systems() as systems, Runtime(zoo, base=str(tiny_base_dir), quant=False) as runtime:
        first = evaluation.keep_base_answers(runtime, spec, n=12, data_dir=data_dir, seed=9, ood_n=5)
        evaluation._BASE_CACHE.clear()
        again = evaluation.keep_base_answers(runtime, spec, n=12, data_dir=data_dir, seed=9, ood_n=5)
        evaluation._BASE_CACHE.clear()
        result = evaluation.evaluate(runtime, "sent", spec, n=12, data_dir=data_dir, seed=9, ood_n=5)
    assert systems == [NONE, NONE, "sent", "sent"]  # the base twice (in and out of domain), then never again
    assert [(s["n"], s["kept"]) for s in first.values()] == [(12, False), (5, False)]
    assert [(s["n"], s["kept"]) for s in again.values()] == [(12, True), (5, True)]
    assert [s["seconds"] for s in again.values()] == [s["seconds"] for s in first.values()]
    assert first["in_domain"]["scores"] == again["in_domain"]["scores"] == result["base"]
    assert result["ood"]["base"] == first["out_of_domain"]["scores"]
    assert first["out_of_domain"]["dataset"] == "uci_sentiment"


def test_deferred_out_of_domain_rows_are_only_counted_then_answered_by_the_next_call(evaluated, tiny_base_dir,
                                                                                      data_dir):
    """`zoo run` answers the in-domain samples first and sizes the out-of-domain ones from their prompt tokens."""
    import zoo.evaluation as evaluation
    from zoo.data import load_ood_rows
    from zoo.serving.runtime import NONE, Runtime

    zoo, _ = evaluated
    spec = replace(get_task("sentiment"), max_new_tokens=2)
    with counted_systems() as systems, Runtime(zoo, base=str(tiny_base_dir), quant=False) as runtime:
        first = evaluation.keep_base_answers(runtime, spec, n=6, data_dir=data_dir, seed=13, ood_n=7, defer_ood=True)
        rows = load_ood_rows(spec, data_dir, limit=7, seed=13)
        tokens = sum(map(len, evaluation.prompt_ids(runtime, spec, rows)))
        evaluation._BASE_CACHE.clear()
        then = evaluation.keep_base_answers(runtime, spec, n=6, data_dir=data_dir, seed=13, ood_n=4)
    assert systems == [NONE, NONE]  # in domain in the first call, out of domain (4 rows) in the second
    assert first["out_of_domain"] == {"dataset": "uci_sentiment", "split": "test", "n": 7, "prompt_tokens": tokens,
                                      "deferred": True}
    assert first["in_domain"]["prompt_tokens"] == then["in_domain"]["prompt_tokens"] > 0
    assert (then["in_domain"]["kept"], then["out_of_domain"]["kept"], then["out_of_domain"]["n"]) == (True, False, 4)


def test_defer_ood_goes_with_base_answers_only(evaluated, capsys):
    from zoo.cli import main

    zoo, _ = evaluated
    assert main(["eval", "--defer-ood", "--zoo", str(zoo.root)]) == 2
    assert "--defer-ood goes with --base-answers" in capsys.readouterr().err


def test_zoo_eval_base_answers_prints_what_zoo_run_reads(evaluated, data_dir, capsys):
    from zoo.cli import main

    zoo, _ = evaluated
    assert main(["eval", "--base-answers", "sentiment", "--zoo", str(zoo.root), "-n", "4", "--ood-n", "3",
                 "--data-dir", str(data_dir), "--seed", "11", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)["sentiment"]
    assert {k: (v["n"], v["kept"]) for k, v in printed.items()} == {"in_domain": (4, False),
                                                                     "out_of_domain": (3, False)}
    assert all(v["seconds"] > 0 for v in printed.values())
    assert main(["eval", "--base-answers", "no-such-task", "--zoo", str(zoo.root)]) == 2
