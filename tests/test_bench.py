"""`zoo bench`: the whole run on a tiny model gives every number the bars need; the bars judge them right;
measured jobs really run in fresh processes; the reference recipe sees the same prompts as ours."""

import json
import os

import pytest

from tasks import get_task
from zoo.bench import bars
from zoo.bench.measure import rss_bytes
from zoo.bench.workers import run_worker
from zoo.cli import main
from zoo.errors import ZooError


@pytest.fixture(scope="module")
def tiny_argv(tiny_base_dir, data_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "result.json"
    argv = ["bench", "--tiny", "--in-process", "--json", "--base", str(tiny_base_dir), "--data-dir", str(data_dir),
            "--out", str(out), "--zoo", str(tmp / "no-zoo")]
    return argv, out


def test_tiny_bench_reports_every_section(tiny_argv, capsys):
    import torch

    argv, out = tiny_argv
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)  # stdout is exactly one JSON object
    assert json.loads(out.read_text()) == printed
    r = printed
    assert set(r["train_speedup"]) == {"sentiment", "qa"}
    for task in ("sentiment", "qa"):
        ours, ref = r["train"][task]["ours"], r["train"][task]["reference"]
        assert r["train_speedup"][task] == pytest.approx(ours["examples_per_s"] / ref["examples_per_s"], rel=0.02)
        for x in (ours, ref):
            assert x["examples"] == 8 and x["examples_per_s"] > 0 and x["tokens_per_s"] > 0
            steps = -(-8 // get_task(task).train.batch_size)  # both recipes take the task's batch size
            assert len(x["step_seconds"]) == steps and sum(x["step_seconds"]) <= x["train_seconds"] + 0.05
            assert x["peak_rss_mb"] > 100
            assert x["metric"]["n"] == 2 and 0 <= x["metric"]["value"] <= 100
        assert abs(ours["tokens"] - ref["tokens"]) <= 8  # same prompts; the template adds one "\n" per example
        assert (ours["lora"]["r"], ours["lora"]["alpha"]) == (ref["lora"]["r"], ref["lora"]["alpha"])
        assert ref["lora"]["layers"] == ours["lora"]["layers"] and ref["lora"]["loss_on"] == "all tokens"
        assert ours["lora"]["loss_on"] == "answer tokens"
        assert ref["lora"]["compute_dtype"] == "float32"  # the recipe's dtype on a CPU
        assert "reference_same_dtype" not in r["train"][task]  # tiny/quick runs leave the extra run out
    assert r["batched_eval_speedup"] > 0 and r["mixed_batch_ratio"] > 0
    inf = r["inference"]
    assert len(inf["mixed"]["mixed_adapters"]["adapters"]) == 3 and inf["first_token_ms"]["median"] > 0
    ev = inf["eval_style"]
    assert set(ev["tasks"]) == {"sentiment", "qa", "summarization"}
    assert ev["tasks"]["qa"]["adapter"] == "ours-qa" and ev["tasks"]["summarization"]["adapter"] == "none"
    for x in ev["tasks"].values():
        assert x["batched"]["prompts"] == x["one_at_a_time"]["prompts"] == 2
        assert x["one_at_a_time"]["batch_size"] == 1
    tokens = sum(x["batched"]["answer_tokens"] for x in ev["tasks"].values())
    seconds = sum(x["batched"]["seconds"] for x in ev["tasks"].values())
    assert ev["batched_tokens_per_s"] == pytest.approx(tokens / seconds, rel=0.02, abs=0.05)  # 1 decimal
    assert r["batched_eval_speedup"] == ev["speedup"]
    assert r["adapters"]["trained_here"] == ["ours-qa", "ours-sentiment", "reference-qa", "reference-sentiment"]
    assert len(r["adapters"]["random"]) == 6 and r["adapters"]["from_zoo"] == []
    mem = r["memory"]
    assert set(mem["runtime"]["rss_mb"]) == {"base", "1", "3", "10"}
    assert r["rss_10_over_1"] == pytest.approx(mem["runtime"]["rss_mb"]["10"] / mem["runtime"]["rss_mb"]["1"],
                                               rel=0.01)
    assert len(mem["runtime"]["adapters"]) == 10
    for a in mem["runtime"]["adapters"]:
        assert a["disk_bytes"] > 0 and a["param_bytes"] >= 2 * a["params"] > 0
    assert mem["base_nf4"]["quantized"] and not mem["base_fp32"]["quantized"]
    assert mem["base_fp32"]["dtype"] == "float32"
    assert {"cpu", "cores", "device", "versions"} <= set(r["machine"])
    assert r["machine"]["torch_isa"] == torch.backends.cpu.get_cpu_capability()  # what ran, not only the CPU's name
    assert all(r["machine"]["versions"][p] for p in ("torch", "transformers", "peft", "bitsandbytes"))
    rt = r["router"]
    assert rt["batch_prompts"] == 30 and rt["single_prompts"] == 5 and rt["p99_ms"] >= rt["p50_ms"] > 0
    assert sum(rt["routes"].values()) == 30 and rt["prompts_per_s"] > 0
    sv = r["serve"]
    assert sv["models"] == ["auto"] and sv["sequential"]["requests"] == sv["concurrent"]["requests"] == 3
    assert sv["concurrency_speedup"] == pytest.approx(
        sv["concurrent"]["tokens_per_s"] / sv["sequential"]["tokens_per_s"], rel=0.02)
    assert r["serve_concurrency_speedup"] == sv["concurrency_speedup"] and r["serve_ttft_p95_ms"] > 0
    assert r["serve_hol_ttft_ratio"] == sv["head_of_line"]["ratio"] > 0
    assert sv["vs_vllm"] == {"skipped": "vllm_clients is 0"} and r["serve_vs_vllm_tokens_ratio"] is None
    assert "errors" not in r
    assert len(r["bars"]) == 7 and all(isinstance(b["pass"], bool) for b in r["bars"])  # 2 train + 5 ratios


def test_tiny_bench_table_has_a_verdict_per_bar(tiny_argv, capsys, tmp_path):
    argv, _ = tiny_argv
    argv = [a for a in argv if a != "--json"]
    argv[argv.index("--out") + 1] = str(tmp_path)
    argv += ["--only", "memory"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "runtime RSS with adapters loaded" in text
    assert sum(line.strip().startswith(("PASS", "FAIL")) for line in text.splitlines()) == 1  # memory's bar
    assert len(list(tmp_path.glob("results-*-tiny.json"))) == 1


def test_unknown_section_or_task_is_a_usage_error(tiny_base_dir, capsys):
    assert main(["bench", "--tiny", "--only", "speed", "--base", str(tiny_base_dir)]) == 2
    assert "unknown bench section" in capsys.readouterr().err
    assert main(["bench", "--tiny", "--tasks", "sentiment,poetry", "--base", str(tiny_base_dir)]) == 2
    assert "poetry" in capsys.readouterr().err


def _result(**kw):
    base = {"mode": "quick", "seconds": 500.0, "batched_eval_speedup": 3.5, "mixed_batch_ratio": 0.9,
            "rss_10_over_1": 1.1, "train": {"qa": {"speedup": 3.1, "ours": {"metric": {"name": "f1", "value": 40.0}},
                                                   "reference": {"metric": {"name": "f1", "value": 30.0}}}}}
    return {**base, **kw}


def test_bars_pass_and_fail_on_the_thresholds():
    assert all(b["pass"] for b in bars(_result()))
    assert len(bars(_result())) == 5
    worse = _result(train={"qa": {"speedup": 3.0, "ours": {"metric": {"name": "f1", "value": 29.0}},
                                  "reference": {"metric": {"name": "f1", "value": 30.0}}}})
    assert not bars(worse)[0]["pass"]  # fast but less accurate is a fail
    failed = [b["bar"] for b in bars(_result(batched_eval_speedup=2.9, mixed_batch_ratio=0.79, rss_10_over_1=1.15,
                                              seconds=601.0)) if not b["pass"]]
    assert len(failed) == 4
    assert not any("10 minutes" in b["bar"] for b in bars(_result(mode="full")))
    assert not bars(_result(train={"qa": {**_result()["train"]["qa"], "speedup": 2.9}}))[0]["pass"]  # under 3x


def test_the_memory_bar_compares_peaks_within_the_reference_budget():
    def judged(ours_peak):
        qa = {**_result()["train"]["qa"], "speedup_in_reference_memory": 2.4,
              "ours_in_reference_memory": {"peak_rss_mb": ours_peak}}
        qa["reference"] = {**qa["reference"], "peak_rss_mb": 6000}
        return [b for b in bars(_result(train={"qa": qa})) if "peak RSS as budget" in b["bar"]]

    assert [b["pass"] for b in judged(5900)] == [True] and "5900 vs 6000 MB, 2.4x" in judged(5900)[0]["value"]
    assert [b["pass"] for b in judged(6100)] == [False]


def test_measured_jobs_run_in_a_fresh_process(tiny_base_dir):
    r = run_worker({"kind": "base-rss", "base": str(tiny_base_dir), "quant": True, "device": "cpu"})
    assert r["pid"] != os.getpid()
    assert r["quantized"] and r["bare_mb"] > 50 and r["loaded_mb"] >= r["bare_mb"]
    assert rss_bytes("VmHWM") >= rss_bytes("VmRSS") > 0


def test_a_failing_worker_is_a_zoo_error_with_its_output():
    with pytest.raises(ZooError, match="bench worker 'no-such-job' failed"):
        run_worker({"kind": "no-such-job"})


def test_reference_sees_the_same_prompts_as_ours(tiny_base_dir, data_dir):
    from transformers import AutoTokenizer

    from tasks import get_task
    from zoo.bench.reference import format_examples
    from zoo.data import load_rows
    from zoo.train import build_examples

    tok = AutoTokenizer.from_pretrained(tiny_base_dir)
    for task in ("sentiment", "qa"):
        spec = get_task(task)
        rows = load_rows(spec, "train", data_dir, limit=6)
        ours = build_examples(spec, tok, rows, 2048, seed=3)
        ref = format_examples(spec, tok, rows, 2048, seed=3)
        for o, r in zip(ours, ref):
            assert r["input_ids"][:len(o["input_ids"])] == o["input_ids"]  # then only the template's final "\n"
            assert len(r["input_ids"]) == len(o["input_ids"]) + 1 and r["labels"] == r["input_ids"]


def test_a_failing_section_is_recorded_and_the_others_still_run(tiny_base_dir, data_dir, monkeypatch):
    import zoo.bench as bench
    from zoo.bench import sections

    def broken(*a, **k):
        raise RuntimeError("router exploded")

    monkeypatch.setattr(sections, "bench_router", broken)
    cfg = bench.config_for("tiny", base=str(tiny_base_dir), data_dir=str(data_dir), isolate=False,
                           sections=("memory", "router"))
    r = bench.run_bench(cfg)
    assert r["errors"] == {"router": "RuntimeError: router exploded"}
    assert r["rss_10_over_1"] > 0  # memory still ran
    assert [b["pass"] for b in r["bars"] if b["bar"] == "section router ran"] == [False]


def test_reference_runs_in_fp32_on_a_cpu_and_again_in_our_dtype_when_asked(monkeypatch, tmp_path):
    import torch

    import zoo.base
    import zoo.bench as bench
    from zoo.bench import sections
    from zoo.bench.reference import reference_dtype

    assert reference_dtype("cpu") == torch.float32
    monkeypatch.setattr(zoo.base, "pick_compute_dtype", lambda device: torch.bfloat16)  # a CPU with AVX512-BF16
    assert reference_dtype("cpu", match_ours=True) == torch.bfloat16
    jobs = []

    def fake_worker(job, isolate=True):
        jobs.append(job)
        return {"examples_per_s": {"train-ours": 6.0}.get(job["kind"], 3.0 if job["match_dtype"] else 2.0),
                "tokens_per_s": 1.0, "train_seconds": 1.0, "peak_rss_mb": 1.0}

    monkeypatch.setattr(sections, "run_worker", fake_worker)
    out = {}
    sections.bench_training(bench.config_for("tiny", tasks=("sentiment",), reference_same_dtype=True), tmp_path,
                            "cpu", out)
    assert [(j["kind"], j["match_dtype"]) for j in jobs] == [
        ("train-ours", False), ("train-reference", False), ("train-reference", True)]
    assert out["sentiment"]["speedup"] == 3.0 and out["sentiment"]["speedup_same_dtype"] == 2.0
    jobs.clear()
    sections.bench_training(bench.config_for("tiny", tasks=("sentiment",)), tmp_path, "cpu", {})
    assert len(jobs) == 2  # quick and tiny runs leave the extra run out


def test_work_zoo_adapters_are_installed_entries_with_their_task(tiny_base_dir, tmp_path):
    """Random and borrowed adapters enter the bench's zoo as typed entries with their task.json, whole on disk;
    the user's adapters on another base are not borrowed."""
    from tasks import spec_for_adapter
    from zoo.base import load_base
    from zoo.bench.adapters import copy_zoo_adapters, make_random_adapters
    from zoo.manifest import BaseInfo
    from zoo.store import Zoo

    loaded = load_base(str(tiny_base_dir), device="cpu")
    user, work = Zoo(tmp_path / "user"), Zoo(tmp_path / "work")
    assert make_random_adapters(user, loaded, 4) == ["random-sentiment-0", "random-qa-1", "random-summarization-2",
                                                     "random-sentiment-3"]
    entries = user.entries()
    assert {e.kind for e in entries.values()} == {"random"} and entries["random-qa-1"].task == "qa"
    assert entries["random-qa-1"].base.hash == loaded.ref.hash
    assert spec_for_adapter(user, "random-summarization-2").name == "summarization"
    assert user.problems() == [] and not (user.root / ".staging").exists()
    user.put(entries["random-sentiment-3"].with_(base=BaseInfo("other", "0" * 16, True)))  # another base
    assert copy_zoo_adapters(user, work, loaded.ref, limit=2) == ["random-qa-1", "random-sentiment-0"]
    assert copy_zoo_adapters(user, work, loaded.ref, limit=5) == ["random-summarization-2"]  # the rest: taken
    assert work.get("random-qa-1") == entries["random-qa-1"] and work.problems() == []
    assert spec_for_adapter(work, "random-qa-1").name == "qa"


def test_the_vllm_comparison_says_why_it_did_not_run(tmp_path, monkeypatch, tiny_base_dir):
    """Without a vLLM install, or without a summarization adapter to serve on both engines, the comparison is
    skipped with the reason (no number, no bar)."""
    from tests.helpers import make_adapter
    from zoo.bench.engines import bench_vs_vllm
    from zoo.store import Zoo

    zoo = Zoo(tmp_path / "zoo")
    make_adapter(zoo, tiny_base_dir, "sst", "sentiment", seed=0)
    monkeypatch.setenv("VLLM_PYTHON", str(tmp_path / "no-venv" / "python"))
    assert "no vLLM install" in bench_vs_vllm(zoo, str(tiny_base_dir), None)["skipped"]
    monkeypatch.setenv("VLLM_PYTHON", __import__("sys").executable)  # any Python passes the install check
    assert "no healthy summarization adapter" in bench_vs_vllm(zoo, str(tiny_base_dir), None)["skipped"]
    from zoo.bench.bars import bars as judge

    assert not any("vLLM" in b["bar"] for b in judge({"mode": "full", "serve": {"vs_vllm": {"skipped": "x"}}}))
