"""End to end on the real embedded SmolLM2-135M (NF4): train a few steps, reload, evaluate, report."""

import json

import pytest

from zoo.cli import main
from zoo.store import Zoo

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def trained_zoo(tmp_path_factory, data_dir, embedded_base_dir):
    zoo_dir = tmp_path_factory.mktemp("e2e") / "zoo"
    rc = main(["train", "sentiment", "--zoo", str(zoo_dir), "--data-dir", str(data_dir), "--max-examples", "64",
               "--batch-size", "8", "--lr", "1e-3", "--no-router"])
    assert rc == 0
    return Zoo(zoo_dir)


def test_training_loss_falls_and_throughput_is_saved(trained_zoo):
    entry = trained_zoo.get("sentiment")
    log = json.loads((trained_zoo.adapter_dir("sentiment") / "training.json").read_text())["loss_log"]
    assert len(log) >= 3
    assert log[-1]["loss"] < log[0]["loss"]
    assert entry.throughput["tokens_per_s"] > 0 and entry.throughput["examples_per_s"] > 0
    assert entry.base.id == "smollm2-135m" and entry.base.hash.startswith("sha256:")
    assert entry.base.quantized is True


def test_adapter_reloads_and_changes_the_output(trained_zoo, data_dir):
    from tasks import get_task
    from zoo.evaluation import eval_rows, prompt_ids
    from zoo.serving.runtime import Runtime

    spec = get_task("sentiment")
    rt = Runtime(trained_zoo)
    ids = prompt_ids(rt, spec, eval_rows(spec, 8, data_dir))
    base = rt.generate_ids(ids, "none", 6)
    tuned = rt.generate_ids(ids, "sentiment", 6)
    assert base != tuned
    assert all(t.strip() in ("positive", "negative") for t in tuned)  # learned the answer format
    rt.close()


def test_eval_writes_report_manifest_and_json(trained_zoo, data_dir, capsys):
    capsys.readouterr()
    rc = main(["eval", "--zoo", str(trained_zoo.root), "--data-dir", str(data_dir), "-n", "16", "--json"])
    assert rc == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["task"] == "sentiment" and result["n"] == 16
    assert set(result["base"]) == set(result["adapter"]) == {"accuracy", "macro_f1"}
    reports = trained_zoo.reports_dir
    assert (reports / "sentiment.md").read_text().count("| accuracy |") == 1
    assert (reports / "sentiment.png").stat().st_size > 1000
    assert trained_zoo.get("sentiment").metrics["eval"]["adapter"] == result["adapter"]
    rc = main(["list", "--zoo", str(trained_zoo.root), "--json"])
    listing = json.loads(capsys.readouterr().out)
    assert listing["adapters"][0]["metrics"]["eval"]["adapter"] == result["adapter"]


def test_auto_routing_end_to_end(trained_zoo, data_dir, capsys):
    """The router sends a review to the sentiment adapter, which answers; chit-chat goes to the plain base."""
    rc = main(["route", "--train", "--features", "ngrams", "--rows", "300", "--zoo", str(trained_zoo.root),
               "--data-dir", str(data_dir)])
    assert rc == 0
    capsys.readouterr()
    prompts = ["Is this review positive or negative? An utterly charming, funny and moving film.",
               "hey, how is your weekend going?"]
    for prompt, route in zip(prompts, ["sentiment", "none"]):
        rc = main(["generate", prompt, "--json", "--max-new-tokens", "4", "--zoo", str(trained_zoo.root)])
        assert rc == 0
        out = json.loads(capsys.readouterr().out)
        assert out["route"] == route and set(out["probs"]) == {"sentiment", "none"}
        assert out["answer"].strip()
    assert main(["generate", "", "--zoo", str(trained_zoo.root)]) == 2


def test_zoo_run_times_the_base_trains_routes_and_evaluates_by_its_deadline(tmp_path, data_dir):
    """`zoo run` on real processes: the base's answers first (timed and kept; in domain, then out of domain),
    training to the planned budget, the router, then the evaluation, which reads the kept answers back (the report
    shows their seconds)."""
    zoo_dir = tmp_path / "zoo"
    assert main(["run", "sentiment=15s", "--deadline", "10m", "-n", "8", "--ood-n", "4", "--zoo", str(zoo_dir),
                 "--data-dir", str(data_dir)]) == 0
    record = json.loads((zoo_dir / "reports" / "run.json").read_text())
    assert [s["step"] for s in record["steps"]] == ["base answers, in domain", "base answers, out of domain",
                                                    "train sentiment", "route", "eval"]
    assert record["steps"][2]["planned_s"] == 15 and record["within_deadline"]
    assert record["examples"]["sentiment"] > 0
    kept = record["base_answers"]["sentiment"]
    # the second step read the in-domain answers back and answered the out-of-domain rows (all 4: time allowed)
    assert {k: (v["n"], v["kept"]) for k, v in kept.items()} == {"in_domain": (8, True), "out_of_domain": (4, False)}
    report = json.loads((zoo_dir / "reports" / "sentiment.json").read_text())
    # the same seconds, shown to 0.1 s in the report and to 0.01 s in run.json
    assert abs(report["seconds"]["base"] - kept["in_domain"]["seconds"]) <= 0.05 + 1e-9
    assert report["base"] == kept["in_domain"]["scores"] and report["ood"]["base"] == kept["out_of_domain"]["scores"]
