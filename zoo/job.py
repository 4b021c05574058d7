"""The whole job of `make run` to one deadline (`zoo run --deadline 24m`): train each task, fit the router,
evaluate, and be done in time on whatever machine it runs.

Training is the part that can give: evaluation scores a fixed sample and costs what the machine makes it cost
(on a 2-core CPU without AVX512-BF16 it took about 17 of 30 minutes). So the job measures that cost first: it
generates the base's answers on the evaluation samples (kept in the zoo's cache, so the final `zoo eval` reads
them back instead of generating them again) and predicts the adapters' evaluation from their seconds. Each
task's training budget is then what is left until the deadline, less that reserve, the router's and the
training processes' own start-up, shared in proportion to the tasks' default budgets, never more than the
default and never less than half of it: a fast machine trains as long as it always did (and on more examples), a
slower one shorter, and one where evaluation leaves too little runs past the deadline and says so. The plan is
re-made before every task from the time actually spent.

The out-of-domain samples give way first: they are context in the reports, not what the adapters are trained and
judged on. The base answers the in-domain samples first; from their seconds per prompt token the job predicts
what the out-of-domain samples would cost and, where they would leave training less than its budgets, answers
fewer of their rows (down to a quarter), before training is shortened at all.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from zoo.errors import ZooError

# Seconds the adapters' evaluation takes per second of the base's generation on the same samples: measured 1.03
# (bf16) and 1.00 (fp32) for the whole `zoo eval`, up to 1.10 for one task (docs/performance.md, "The whole job
# to a deadline").
ADAPTER_EVAL_RATIO = 1.1
ROUTER_RESERVE_S = 60.0  # `zoo route --train`: 48 s measured on 2 cores, either path
START_UP_GUESS_S = 30.0  # a training process's time outside its budget (load, tokenize, save: 10-15 s measured)
# The least share of its budget a task trains for. Below it the adapter is not worth having (QA F1 34 at 112
# examples against 48 at 240, docs/learning-curves/): where evaluation leaves less, as on a 2-core CPU without
# AVX512-BF16, the job runs past its deadline and says so before it trains.
MIN_SHARE = 0.5
SAFETY = 0.04  # share of the deadline kept free for what the prediction misses
OOD_MIN_SHARE = 0.25  # the least share of the out-of-domain rows asked for that the job keeps (25 of 100)

Runner = Callable[[list, bool], tuple]  # (zoo arguments, capture stdout) -> (seconds, stdout or None)


@dataclass
class Job:
    """The plan and the record of one job. `defaults`: task -> its training budget when time allows."""

    defaults: dict[str, float]
    deadline: float | None = None  # seconds for the whole job; None: every task trains for its default
    ood_n: int | None = None  # out-of-domain rows asked for per task (None: `zoo eval`'s default)
    clock: Callable[[], float] = time.monotonic
    started: float = 0.0
    base_answers: dict = field(default_factory=dict)  # `zoo eval --base-answers --json`: per task and sample
    base_seconds: float = 0.0  # the base's generation seconds over every evaluation sample
    eval_start_up: float = 0.0  # an evaluation process's seconds outside generation
    start_ups: list[float] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)

    def elapsed(self) -> float:
        return self.clock() - self.started

    def predicted_evaluation(self) -> float:
        return ADAPTER_EVAL_RATIO * self.base_seconds + self.eval_start_up

    def evaluation_reserve(self) -> float:
        return self.predicted_evaluation() + ROUTER_RESERVE_S

    def start_up(self) -> float:
        return max(self.start_ups) if self.start_ups else START_UP_GUESS_S

    def training_pool(self, remaining: list[str]) -> float:
        """Seconds left for training the `remaining` tasks, once the reserves are set aside."""
        pool = self.deadline * (1 - SAFETY) - self.elapsed() - self.evaluation_reserve()
        return pool - self.start_up() * len(remaining)

    def budget(self, task: str, remaining: list[str]) -> float:
        """Training seconds for `task`, with `remaining` (itself included) still to train."""
        if self.deadline is None:
            return self.defaults[task]
        fair = self.training_pool(remaining) * self.defaults[task] / sum(self.defaults[t] for t in remaining)
        return max(MIN_SHARE * self.defaults[task], min(self.defaults[task], fair))

    def ood_rows(self) -> int:
        """Out-of-domain rows per task to answer: as asked, or fewer (down to `OOD_MIN_SHARE`) where their
        predicted evaluation, base and adapters, would leave training less than its budgets."""
        least = max(1, math.ceil(OOD_MIN_SHARE * self.ood_n))
        spare = self.training_pool(list(self.defaults)) - self.eval_start_up - sum(self.defaults.values())
        rows = self.ood_n
        while rows > least and (1 + ADAPTER_EVAL_RATIO) * self.ood_seconds(rows) > spare:
            rows -= 1
        return rows

    def ood_seconds(self, rows: int) -> float:
        """The base's predicted generation seconds on `rows` of each deferred out-of-domain sample, at its task's
        in-domain seconds per prompt token."""
        total = 0.0
        for sets in self.base_answers.values():
            deferred, measured = sets.get("out_of_domain", {}), sets.get("in_domain", {})
            if deferred.get("deferred") and measured.get("prompt_tokens"):
                rate = measured["seconds"] / measured["prompt_tokens"]
                total += rate * deferred["prompt_tokens"] * min(rows, deferred["n"]) / deferred["n"]
        return total

    def expected_end(self, budget: float, task: str) -> float:
        """When the job would end if the tasks after `task` also got their least share."""
        tasks = list(self.defaults)
        later = tasks[tasks.index(task) + 1:]
        training = budget + sum(MIN_SHARE * self.defaults[t] for t in later)
        return self.elapsed() + training + self.start_up() * (1 + len(later)) + self.evaluation_reserve()

    def record(self, step: str, seconds: float, planned: float | None = None) -> None:
        self.steps.append({"step": step, "seconds": round(seconds, 1),
                           **({"planned_s": round(planned, 1)} if planned is not None else {})})

    def summary(self) -> dict:
        total = self.elapsed()
        return {"deadline_s": self.deadline, "seconds": round(total, 1),
                "within_deadline": None if self.deadline is None else total <= self.deadline,
                "base_generation_s": round(self.base_seconds, 1),
                "predicted_evaluation_s": round(self.predicted_evaluation(), 1),
                "steps": self.steps, "base_answers": self.base_answers}


def run_zoo(argv: list, capture: bool = False) -> tuple[float, str | None]:
    """One `zoo` command in its own process (each step's memory is given back when it ends); its output goes
    to the console, or stdout is returned with `capture`. A failed step stops the job."""
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "zoo", *map(str, argv)], text=True,
                          stdout=subprocess.PIPE if capture else None)
    if done.returncode != 0:
        raise ZooError(f"`zoo {' '.join(map(str, argv))}` failed (exit {done.returncode}); the job stops here")
    return time.monotonic() - t0, done.stdout


def say_now(line: str) -> None:
    print(line, flush=True)  # before the next step's own output, also when the console is a log file


def run_job(job: Job, train_args: list, eval_args: list, adapters: list[str] | None = None, runner: Runner = run_zoo,
            say=say_now, route_args: list = ()) -> dict:
    """Base answers (timed), then each task's training to its planned budget, the router (`zoo route --train
    *route_args`), the evaluation of the job's `adapters` (default: named as the tasks)."""
    job.started = job.clock()
    tasks = list(job.defaults)
    eval_args = base_answers_then_ood(job, tasks, eval_args, runner, say)
    for i, task in enumerate(tasks):
        budget = job.budget(task, tasks[i:])
        say(plan_line(job, task, budget))
        seconds, _ = runner(["train", task, "--time-budget", f"{budget:.0f}s", *train_args, "--no-router"], False)
        job.start_ups.append(max(0.0, seconds - budget))
        job.record(f"train {task}", seconds, planned=budget)
    steps = (("route", ["route", "--train", *route_args]), ("eval", ["eval", *(adapters or tasks), *eval_args]))
    for step, argv in steps:
        seconds, _ = runner(argv, False)
        job.record(step, seconds)
    summary = job.summary()
    say(f"[zoo run] done in {clock_text(summary['seconds'])}"
        + ("" if job.deadline is None else f" (deadline {clock_text(job.deadline)})"))
    return summary


def base_answers_then_ood(job: Job, tasks: list[str], eval_args: list, runner: Runner, say) -> list:
    """The base's answers: in domain first, then (with a deadline) out of domain on as many rows as the plan
    allows. Returns the evaluation arguments with that row count, for the final `zoo eval`."""
    ood_args = [] if job.ood_n is None else ["--ood-n", job.ood_n]
    if job.deadline is None or job.ood_n is None:
        time_base_answers(job, tasks, [*eval_args, *ood_args], runner, say, "base answers")
        return [*eval_args, *ood_args]
    time_base_answers(job, tasks, [*eval_args, *ood_args, "--defer-ood"], runner, say, "base answers, in domain")
    if any(sets.get("out_of_domain", {}).get("deferred") for sets in job.base_answers.values()):
        rows = job.ood_rows()
        if rows < job.ood_n:
            say(f"[zoo run] out-of-domain samples cut to {rows} of {job.ood_n} rows per task, so that training "
                f"keeps more of its budgets (all of them: about {clock_text(job.ood_seconds(job.ood_n))} of the "
                "base's generation, and about as much again for the adapters)")
        ood_args = ["--ood-n", rows]
        time_base_answers(job, tasks, [*eval_args, *ood_args], runner, say, "base answers, out of domain")
    say(f"[zoo run] evaluation reserved: {clock_text(job.evaluation_reserve())} with the router")
    return [*eval_args, *ood_args]


def time_base_answers(job: Job, tasks: list[str], eval_args: list, runner: Runner, say, step: str) -> None:
    """The base's answers on the evaluation samples, generated now and kept (those kept before are read back):
    their generation seconds predict the adapters' evaluation; the rest of the process's time is its start-up,
    which the final `zoo eval` pays too."""
    seconds, out = runner(["eval", "--base-answers", *tasks, *eval_args, "--json"], True)
    try:
        job.base_answers = json.loads(out)
        sets = [s for per_task in job.base_answers.values() for s in per_task.values() if "seconds" in s]
    except (ValueError, AttributeError) as e:
        first_line = (out or "").strip().partition("\n")[0]
        raise ZooError(f"`zoo eval --base-answers` printed no results the job can read ({e}); it began: "
                       f"{first_line[:120]!r}") from None
    job.base_seconds = sum(s["seconds"] for s in sets)
    start_up = max(0.0, seconds - sum(s["seconds"] for s in sets if not s["kept"]))
    job.eval_start_up = max(job.eval_start_up, start_up)
    job.record(step, seconds)
    say(f"[zoo run] {step}: {clock_text(seconds)} ({clock_text(job.base_seconds)} of generation in all)")


def plan_line(job: Job, task: str, budget: float) -> str:
    default = job.defaults[task]
    line = f"[zoo run] {clock_text(job.elapsed())} used: training {task} for {clock_text(budget)}"
    if budget < default:
        line += f" (its default {clock_text(default)}, shortened to end by {clock_text(job.deadline)})"
    if budget <= MIN_SHARE * default:
        line += (f"; half its budget, the least worth training: the job will end past its deadline, at about "
                 f"{clock_text(job.expected_end(budget, task))}. Evaluation takes most of the time on this machine: "
                 "fewer evaluation examples (--ood-n, EVAL_OOD_N) or a later deadline leave training more")
    return line


def clock_text(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}:{secs:02d}"
