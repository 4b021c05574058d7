"""`zoo run`: the whole job to a deadline. The plan is checked on a simulated machine (a fake clock and fake steps
that take the time a slow or a fast machine would), the command line on real processes."""

import json

import pytest

from zoo.errors import ZooError
from zoo.job import ADAPTER_EVAL_RATIO, MIN_SHARE, OOD_MIN_SHARE, START_UP_GUESS_S, Job, clock_text, run_job

DEFAULTS = {"sentiment": 120.0, "qa": 300.0, "summarization": 240.0}


class Machine:
    """Steps that take what they would on a machine whose base answers on every evaluation sample take
    `generation` seconds, half of it on QA's 100 out-of-domain rows (at the seconds per prompt token of its
    in-domain rows): a training process runs its budget plus `start_up`, a `zoo eval` process 30 s more than its
    generation, the adapters' evaluation `eval_ratio` times the base's."""

    OOD_ROWS = 100

    def __init__(self, generation: float, start_up: float = 40.0, eval_ratio: float = ADAPTER_EVAL_RATIO,
                 ood: bool = True):
        self.now, self.generation, self.start_up, self.eval_ratio = 0.0, generation, start_up, eval_ratio
        self.ood, self.ood_answered, self.in_domain_answered = ood, None, False
        self.calls: list[list] = []

    def clock(self) -> float:
        return self.now

    def __call__(self, argv, capture):
        argv = [str(a) for a in argv]
        self.calls.append(argv)
        out = None
        if argv[:2] == ["eval", "--base-answers"]:
            took, out = self.base_answers(argv)
        elif argv[0] == "train":
            took = float(argv[argv.index("--time-budget") + 1].rstrip("s")) + self.start_up
        elif argv[0] == "route":
            took = 50.0
        else:
            took = self.eval_ratio * (self.generation / 2 + self.ood_generation(self.ood_answered)) + 30
        self.now += took
        return took, out

    def ood_generation(self, rows: int | None) -> float:
        return self.generation / 2 * rows / self.OOD_ROWS if self.ood and rows else 0.0

    def base_answers(self, argv: list[str]) -> tuple[float, str]:
        kept, self.in_domain_answered = self.in_domain_answered, True
        quarter = self.generation / 4
        in_domain = {"sentiment": {"in_domain": {"seconds": quarter, "prompt_tokens": 12_000, "kept": kept}},
                     "qa": {"in_domain": {"seconds": quarter, "prompt_tokens": 44_000, "kept": kept}}}
        rows = int(argv[argv.index("--ood-n") + 1]) if "--ood-n" in argv else self.OOD_ROWS
        ood = {"dataset": "covid_qa", "n": rows, "prompt_tokens": 880 * rows}
        if not self.ood:
            ood = {"dataset": "covid_qa", "skipped": "no data here"}
        elif "--defer-ood" in argv:
            ood["deferred"] = True
        else:
            self.ood_answered = rows
            ood.update(seconds=self.ood_generation(rows), kept=False)
        in_domain["qa"]["out_of_domain"] = ood
        took = (0 if kept else 2 * quarter) + ood.get("seconds", 0.0) + 30
        return took, json.dumps(in_domain)


def planned(summary: dict) -> dict[str, float]:
    return {s["step"].split()[1]: s["planned_s"] for s in summary["steps"] if s["step"].startswith("train")}


def ood_rows(machine: Machine) -> int:
    final = machine.calls[-1]
    return int(final[final.index("--ood-n") + 1])


def run_on(machine: Machine, deadline: float | None, lines: list | None = None) -> dict:
    job = Job(dict(DEFAULTS), deadline, ood_n=Machine.OOD_ROWS, clock=machine.clock)
    return run_job(job, ["--max-examples", "all"], ["-n", "200"], runner=machine,
                   say=(lines.append if lines is not None else lambda _: None))


def test_a_fast_machine_trains_each_task_for_its_default_budget_and_answers_every_row():
    machine = Machine(generation=120)
    summary = run_on(machine, deadline=24 * 60)
    assert planned(summary) == DEFAULTS and ood_rows(machine) == Machine.OOD_ROWS
    assert summary["within_deadline"] and summary["seconds"] < 24 * 60
    base = [c for c in machine.calls if c[:2] == ["eval", "--base-answers"]]
    assert len(base) == 2 and "--defer-ood" in base[0] and "--defer-ood" not in base[1]
    assert [s["step"] for s in summary["steps"][:2]] == ["base answers, in domain", "base answers, out of domain"]


def test_where_evaluation_would_shorten_training_the_out_of_domain_rows_give_way_first():
    """Evaluation ~12 minutes (as `AVX2=1` on 2 cores here): fewer out-of-domain rows, every training budget kept."""
    lines: list[str] = []
    machine = Machine(generation=300, start_up=START_UP_GUESS_S)
    summary = run_on(machine, deadline=24 * 60, lines=lines)
    assert planned(summary) == DEFAULTS
    assert OOD_MIN_SHARE * Machine.OOD_ROWS < ood_rows(machine) < Machine.OOD_ROWS
    assert summary["base_answers"]["qa"]["out_of_domain"]["n"] == ood_rows(machine)
    assert any(f"cut to {ood_rows(machine)} of 100 rows" in line for line in lines), lines
    assert summary["within_deadline"] and summary["seconds"] >= 0.9 * 24 * 60  # the time left is used


def test_a_slower_machine_answers_the_least_rows_and_trains_shorter_in_proportion_by_the_deadline():
    machine = Machine(generation=400, start_up=START_UP_GUESS_S)
    summary = run_on(machine, deadline=24 * 60)
    budgets = planned(summary)
    assert ood_rows(machine) == OOD_MIN_SHARE * Machine.OOD_ROWS
    assert all(MIN_SHARE * DEFAULTS[t] < budgets[t] < DEFAULTS[t] for t in DEFAULTS)
    assert budgets["qa"] / budgets["sentiment"] == pytest.approx(300 / 120, rel=0.05)
    assert summary["within_deadline"] and summary["seconds"] >= 0.9 * 24 * 60
    ood_generation = machine.ood_generation(ood_rows(machine))
    assert summary["predicted_evaluation_s"] == pytest.approx(ADAPTER_EVAL_RATIO * (200 + ood_generation) + 30)
    train = [c for c in machine.calls if c[0] == "train"]
    assert [c[1] for c in train] == list(DEFAULTS) and all("--no-router" in c and "all" in c for c in train)
    assert machine.calls[-2][:2] == ["route", "--train"]
    assert machine.calls[-1] == ["eval", *DEFAULTS, "-n", "200", "--ood-n", str(int(OOD_MIN_SHARE * Machine.OOD_ROWS))]


def test_without_out_of_domain_data_the_base_answers_once_and_training_gives_way():
    machine = Machine(generation=300, start_up=START_UP_GUESS_S, ood=False)
    summary = run_on(machine, deadline=16 * 60)
    assert sum(c[:2] == ["eval", "--base-answers"] for c in machine.calls) == 1
    assert all(planned(summary)[t] < DEFAULTS[t] for t in DEFAULTS) and summary["within_deadline"]


def test_the_plan_is_remade_from_the_start_up_measured_on_the_first_task():
    slow_start = Machine(generation=400, start_up=3 * START_UP_GUESS_S)
    summary = run_on(slow_start, deadline=24 * 60)
    assert summary["within_deadline"]
    first = run_on(Machine(generation=400, start_up=START_UP_GUESS_S), deadline=24 * 60)
    assert planned(summary)["sentiment"] == planned(first)["sentiment"]  # nothing measured yet: the same plan
    assert planned(summary)["qa"] < planned(first)["qa"]


@pytest.mark.parametrize("generation", [800, 1300])
def test_where_evaluation_leaves_too_little_each_task_trains_half_and_the_job_says_when_it_ends(generation):
    """Below half its budget an adapter is not worth having: the job then runs past its deadline, and its first
    plan says when it will end (here within a minute: the fake steps take what the plan predicts, except the
    router, 50 s of its 60-second reserve)."""
    lines: list[str] = []
    summary = run_on(Machine(generation=generation, start_up=START_UP_GUESS_S), deadline=24 * 60, lines=lines)
    assert planned(summary) == {t: MIN_SHARE * b for t, b in DEFAULTS.items()}
    assert not summary["within_deadline"]
    cut = [line for line in lines if "training" in line and "[zoo run] " in line and " used: " in line]
    assert len(cut) == 3 and all("past its deadline" in line and "EVAL_OOD_N" in line for line in cut), cut
    said = cut[0].split("at about ")[1].split(".")[0]
    minutes, seconds = map(int, said.split(":"))
    assert abs(60 * minutes + seconds - summary["seconds"]) <= 60, (said, clock_text(summary["seconds"]))


def test_without_a_deadline_every_task_trains_for_its_budget_and_every_row_is_answered():
    machine = Machine(generation=1300)
    summary = run_on(machine, deadline=None)
    assert planned(summary) == DEFAULTS and summary["within_deadline"] is None
    assert sum(c[:2] == ["eval", "--base-answers"] for c in machine.calls) == 1 and ood_rows(machine) == 100


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


def test_every_step_gets_the_jobs_data_folder():
    """`zoo run --data-dir D`: training, the router's fit and evaluation all read D (the router's fit once did not,
    and went to the Hub, which fails offline)."""
    machine = Machine(generation=120)
    job = Job(dict(DEFAULTS), 24 * 60, ood_n=Machine.OOD_ROWS, clock=machine.clock)
    shared = ["--data-dir", "D"]
    run_job(job, ["--max-examples", "all", *shared], ["-n", "200", *shared], runner=machine, say=lambda _: None,
            route_args=shared)
    steps = [c for c in machine.calls if c[0] in ("train", "route", "eval")]
    assert {c[0] for c in steps} == {"train", "route", "eval"}
    assert all(c[c.index("--data-dir") + 1] == "D" for c in steps)


def test_the_bases_first_conversion_speaks_on_stderr_so_json_output_stays_json(tmp_path, monkeypatch, capsys):
    """On a machine that had not converted the embedded base, `make run`'s first step (`zoo eval --base-answers
    --json`, read from stdout by the job) printed the conversion notice before its JSON, and the job stopped."""
    import zoo.base

    def convert(gguf_dir, gguf_file, target, hub_id):
        target.mkdir(parents=True)
        (target / "model.safetensors").write_bytes(b"")

    monkeypatch.setenv("ZOO_CACHE", str(tmp_path))
    monkeypatch.setattr(zoo.base, "_convert_gguf", convert)
    assert zoo.base._embedded_path("smollm2-135m") == tmp_path / "smollm2-135m"
    out, err = capsys.readouterr()
    assert out == "" and "converting" in err


def test_output_the_job_cannot_read_is_shown_in_the_error():
    job = Job(dict(DEFAULTS), 24 * 60, ood_n=Machine.OOD_ROWS)
    with pytest.raises(ZooError, match=r"printed no results the job can read .* it began: '\[zoo\] hello'"):
        run_job(job, [], [], runner=lambda argv, capture: (1.0, "[zoo] hello\n{}"), say=lambda _: None)
