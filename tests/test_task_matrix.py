"""Every registered task, and one from a task file, through build -> one training step -> save -> a new process.

The new process is the point: it knows the task-file task only from the `task.json` saved with its adapter, so
`zoo eval`, `zoo route` and `zoo generate` there prove that a task's resolved spec travels with its adapter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from tasks import all_tasks
from zoo.cli import main
from zoo.store import Zoo

ROOT = Path(__file__).resolve().parents[1]
TASK_FILE = """\
name: topic
description: What is a dialogue about, in a few words?
dataset: {data}/dialogsum
input_columns: [dialogue]
output_column: topic
templates: ["What is this conversation about? Answer in a few words.\\n\\n{{dialogue}}"]
metric: rouge
max_new_tokens: 6
train: {{max_examples: 8}}
"""
PROMPTS = {
    "sentiment": "Is the following sentence positive or negative?\nA gorgeous, moving film.",
    "qa": "Passage: The Nile flows north through Egypt.\n\nQuestion: Which way does the Nile flow?",
    "summarization": "Summarize the dialogue.\n\n#Person1#: Lunch at noon?\n#Person2#: Sure, see you then.",
    "topic": "What is this conversation about? Answer in a few words.\n\n#Person1#: Your ticket, please.",
}


def zoo_cli(*args: str) -> subprocess.CompletedProcess:
    """`zoo ...` in a fresh interpreter: nothing registered in this test process reaches it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "zoo", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=600)


@pytest.fixture(scope="module")
def matrix_zoo(tmp_path_factory, tiny_base_dir, data_dir) -> Zoo:
    """One adapter per registered task plus the task file's, each after one optimizer step on a tiny base."""
    work = tmp_path_factory.mktemp("matrix")
    task_file = work / "topic.yaml"
    task_file.write_text(TASK_FILE.format(data=data_dir))
    zoo = Zoo(work / "zoo")
    for task in [*sorted(all_tasks()), str(task_file)]:
        rc = main(["train", task, "--zoo", str(zoo.root), "--base", str(tiny_base_dir), "--data-dir",
                   str(data_dir), "--max-steps", "1", "--max-examples", "8", "--batch-size", "4", "--no-router"])
        assert rc == 0, task
    return zoo


def test_every_task_is_saved_with_its_spec(matrix_zoo):
    from tasks import SPEC_FILE, get_task, spec_for_adapter

    names = sorted(matrix_zoo.entries())
    assert set(names) == {*all_tasks(), "topic"} and len(names) == 4
    for name in names:
        saved = json.loads((matrix_zoo.adapter_dir(name) / SPEC_FILE).read_text())
        assert saved["name"] == name
        spec = spec_for_adapter(matrix_zoo, name)  # the resolved spec: the task's, with this run's settings
        assert spec.train.max_steps == 1 and spec.train.batch_size == 4
        assert replace(spec, train=get_task(name).train) == get_task(name)


def test_a_new_process_evaluates_every_adapter(matrix_zoo, data_dir):
    done = zoo_cli("eval", "-n", "2", "--zoo", str(matrix_zoo.root), "--data-dir", str(data_dir), "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    results = {r["name"]: r for r in json.loads(done.stdout[done.stdout.index("["):])}
    assert sorted(results) == sorted(matrix_zoo.entries())
    assert results["topic"]["metric"] == "rougeL" and results["topic"]["n"] == 2
    assert results["sentiment"]["metric"] == "accuracy"
    assert matrix_zoo.get("topic").metrics["eval"]["adapter"] == results["topic"]["adapter"]


def test_a_new_process_routes_to_every_task(matrix_zoo, data_dir):
    done = zoo_cli("route", "--train", "--features", "ngrams", "--rows", "60", "--zoo", str(matrix_zoo.root),
                   "--data-dir", str(data_dir))
    assert done.returncode == 0, done.stderr[-2000:]
    done = zoo_cli("route", PROMPTS["topic"], "--json", "--zoo", str(matrix_zoo.root))
    assert done.returncode == 0, done.stderr[-2000:]
    probs = json.loads(done.stdout)["probs"]
    assert set(probs) == {"sentiment", "qa", "summarization", "topic", "none"}


@pytest.mark.parametrize("name", ["sentiment", "qa", "summarization", "topic"])
def test_a_new_process_generates_with_each_adapter(matrix_zoo, name):
    done = zoo_cli("generate", PROMPTS[name], "--adapter", name, "--json", "--zoo", str(matrix_zoo.root))
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)
    assert out["adapter"] == name and isinstance(out["answer"], str)


def test_router_report_scores_routing_regret_on_every_task(matrix_zoo, data_dir, capsys):
    """`zoo eval --router` runs the zoo's adapters: the task metric with the learned router, with perfect routing
    and with everything sent to the base, per task (a task file's task included)."""
    assert main(["route", "--train", "--features", "ngrams", "--rows", "60", "--zoo", str(matrix_zoo.root),
                 "--data-dir", str(data_dir)]) == 0
    capsys.readouterr()
    assert main(["eval", "--router", "-n", "2", "--zoo", str(matrix_zoo.root), "--data-dir", str(data_dir),
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    regret = result["regret"]["tasks"]
    assert set(regret) == {"sentiment", "qa", "summarization", "topic"}
    assert all(set(r) >= {"learned", "perfect", "base"} for r in regret.values())


def test_adding_a_task_to_the_router_reports_how_far_earlier_routes_moved(matrix_zoo, data_dir, tmp_path, capsys):
    assert main(["route", "--train", "--features", "ngrams", "--rows", "60", "--tasks", "sentiment", "qa",
                 "--zoo", str(matrix_zoo.root), "--data-dir", str(data_dir)]) == 0
    task_file = tmp_path / "gist.yaml"
    task_file.write_text(TASK_FILE.format(data=data_dir).replace("name: topic", "name: gist"))
    capsys.readouterr()
    assert main(["route", "--add-task", str(task_file), "--json", "--zoo", str(matrix_zoo.root),
                 "--data-dir", str(data_dir)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["task"] == "gist" and set(report["per_route"]) >= {"sentiment", "qa", "none"}
    assert 0 <= report["changed"] <= 1 and report["largest_drop"] == max(
        v["before"] - v["after"] for v in report["per_route"].values())
    from router import load_router

    assert "gist" in {str(c) for c in load_router(matrix_zoo, check_tasks=False).classes_}
