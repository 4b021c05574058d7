"""`zoo run`: the whole job to a deadline. The plan is checked on a simulated machine (a fake clock and fake steps
that take the time a slow or a fast machine would), the command line on real processes."""

import json

import pytest

from zoo.errors import ZooError
from zoo.job import ADAPTER_EVAL_RATIO, MIN_SHARE, START_UP_GUESS_S, Job, clock_text, run_job

DEFAULTS = {"sentiment": 120.0, "qa": 300.0, "summarization": 240.0}


class Machine:
    """Steps that take what they would on a machine whose base answers generate in `generation` seconds: a
    training process runs its budget plus `start_up`, the final evaluation the predicted ratio of the base's."""

    def __init__(self, generation: float, start_up: float = 40.0, eval_ratio: float = ADAPTER_EVAL_RATIO):
        self.now, self.generation, self.start_up, self.eval_ratio = 0.0, generation, start_up, eval_ratio
        self.calls: list[list] = []

    def clock(self) -> float:
        return self.now

    def __call__(self, argv, capture):
        self.calls.append([str(a) for a in argv])
        out = None
        if argv[:2] == ["eval", "--base-answers"]:
            took = self.generation + 30
            half = {"seconds": self.generation / 2, "kept": False}
            out = json.dumps({"sentiment": {"in_domain": half}, "qa": {"in_domain": half, "out_of_domain": {
                "dataset": "covid_qa", "skipped": "no data here"}}})
        elif argv[0] == "train":
            took = float(argv[argv.index("--time-budget") + 1].rstrip("s")) + self.start_up
        elif argv[0] == "route":
            took = 50.0
        else:
            took = self.eval_ratio * self.generation + 30
        self.now += took
        return took, out


def planned(summary: dict) -> dict[str, float]:
    return {s["step"].split()[1]: s["planned_s"] for s in summary["steps"] if s["step"].startswith("train")}


def run_on(machine: Machine, deadline: float | None, lines: list | None = None) -> dict:
    job = Job(dict(DEFAULTS), deadline, clock=machine.clock)
    return run_job(job, ["--max-examples", "all"], ["-n", "200"], runner=machine,
                   say=(lines.append if lines is not None else lambda _: None))


def test_a_fast_machine_trains_each_task_for_its_default_budget():
    summary = run_on(Machine(generation=120), deadline=24 * 60)
    assert planned(summary) == DEFAULTS
    assert summary["within_deadline"] and summary["seconds"] < 24 * 60


def test_a_slow_machine_trains_shorter_in_proportion_and_ends_by_the_deadline():
    machine = Machine(generation=300, start_up=START_UP_GUESS_S)  # evaluation ~11 minutes, as `AVX2=1` here
    summary = run_on(machine, deadline=24 * 60)
    budgets = planned(summary)
    assert all(budgets[t] < DEFAULTS[t] for t in DEFAULTS)
    assert budgets["qa"] / budgets["sentiment"] == pytest.approx(300 / 120, rel=0.05)
    assert summary["within_deadline"] and summary["seconds"] >= 0.9 * 24 * 60  # the time left is used, not wasted
    assert summary["predicted_evaluation_s"] == pytest.approx(ADAPTER_EVAL_RATIO * 300 + 30)
    train = [c for c in machine.calls if c[0] == "train"]
    assert [c[1] for c in train] == list(DEFAULTS) and all("--no-router" in c and "all" in c for c in train)
    assert machine.calls[-2][:2] == ["route", "--train"] and machine.calls[-1] == ["eval", *DEFAULTS, "-n", "200"]


def test_the_plan_is_remade_from_the_start_up_measured_on_the_first_task():
    slow_start = Machine(generation=300, start_up=3 * START_UP_GUESS_S)
    summary = run_on(slow_start, deadline=24 * 60)
    assert summary["within_deadline"]
    first = run_on(Machine(generation=300, start_up=START_UP_GUESS_S), deadline=24 * 60)
    assert planned(summary)["sentiment"] == planned(first)["sentiment"]  # nothing measured yet: the same plan
    assert planned(summary)["qa"] < planned(first)["qa"]


@pytest.mark.parametrize("generation", [440, 1300])
def test_where_evaluation_leaves_too_little_each_task_trains_half_and_the_job_says_when_it_ends(generation):
    """Below half its budget an adapter is not worth having: the job then runs past its deadline, and its first
    plan says when it will end (here within a minute: the fake steps take what the plan predicts, except the
    router, 50 s of its 60-second reserve)."""
    lines: list[str] = []
    summary = run_on(Machine(generation=generation, start_up=START_UP_GUESS_S), deadline=24 * 60, lines=lines)
    assert planned(summary) == {t: MIN_SHARE * b for t, b in DEFAULTS.items()}
    assert not summary["within_deadline"]
    cut = [line for line in lines if "training" in line]
    assert len(cut) == 3 and all("past its deadline" in line and "EVAL_OOD_N" in line for line in cut), cut
    said = cut[0].split("at about ")[1].split(".")[0]
    minutes, seconds = map(int, said.split(":"))
    assert abs(60 * minutes + seconds - summary["seconds"]) <= 60, (said, clock_text(summary["seconds"]))


def test_without_a_deadline_every_task_trains_for_its_budget():
    summary = run_on(Machine(generation=1300), deadline=None)
    assert planned(summary) == DEFAULTS and summary["within_deadline"] is None


def test_a_failed_step_stops_the_job_and_names_the_command(tmp_path, monkeypatch):
    from zoo.job import run_zoo

    monkeypatch.setenv("ZOO_DIR", str(tmp_path / "zoo"))
    with pytest.raises(ZooError, match=r"`zoo train no-such-task` failed \(exit 2\)"):
        run_zoo(["train", "no-such-task"])


@pytest.mark.parametrize("budgets, message", [
    (["qa"], "write each task as TASK=BUDGET"),
    (["=5m"], "write each task as TASK=BUDGET"),
    (["qa=soon"], "write it as 90s, 5m"),
    (["qa=5m", "qa=2m"], "named twice"),
    (["no-such-task=5m"], "no-such-task"),
    (["qa=5m", "--deadline", "soon"], "--deadline: time budget 'soon'"),
    (["qa=5m", "--max-memory", "lots"], "--max-memory: "),
])
def test_bad_budgets_are_refused_before_anything_runs(budgets, message, tmp_path, capsys):
    from zoo.cli import main

    assert main(["run", *budgets, "--zoo", str(tmp_path / "zoo")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not (tmp_path / "zoo").exists()
