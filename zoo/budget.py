"""Training to a time budget (`zoo train --time-budget 5m`): the run measures its own step time and plans the
number of steps, and the learning-rate schedule, so that training ends within the budget on whatever machine it
runs; a faster machine trains on more examples.

The plan is re-made at every step from the mean step time so far (the first steps are slower: allocation, warm
caches), and the cosine schedule follows the plan: warm-up over `warmup_ratio` of the planned steps, then cosine to
zero at the planned last step. Training stops before a step that would end past the budget. The time counts
`trainer.train()` only (the model load, tokenizing and the final save are outside it), from the start of this
process's run: a resumed run gets the whole budget again.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field

from zoo.errors import ZooError

UNITS = {"s": 1, "m": 60, "h": 3600}
EXAMPLES_PER_SECOND_CAP = 32  # the pool of examples a budget may reach: far above a CPU's rate (a few per second)


def parse_duration(text: str | float | int) -> float:
    """Seconds from "90", "90s", "5m", "1h30m" or "1.5h"; a clear error for anything else."""
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        parts = re.fullmatch(r"\s*((?:\d+(?:\.\d+)?[smh]?\s*)+)", str(text))
        if not parts:
            raise ZooError(f"time budget {str(text)[:40]!r}: write it as 90s, 5m, 1h30m or a number of seconds")
        seconds = sum(float(n) * UNITS[u or "s"] for n, u in re.findall(r"(\d+(?:\.\d+)?)([smh]?)", parts[1]))
    if not 1 <= seconds <= 7 * 86400:
        raise ZooError(f"time budget of {seconds:g} s: give between 1 second and 7 days")
    return seconds


def pool_size(seconds: float, max_examples: int | None) -> int:
    """The examples a budgeted run draws (it stops at the budget, usually long before their end)."""
    return max_examples or max(64, math.ceil(seconds * EXAMPLES_PER_SECOND_CAP))


@dataclass
class BudgetPlan:
    """The planned number of optimizer steps, re-made from the measured step time."""

    seconds: float
    max_steps: int  # the steps the pool of examples allows
    warmup_ratio: float
    total: int = 0
    started: float | None = None  # when train() was called: the budget counts its set-up too
    steps_began: float | None = None  # when the first step began: the step time is measured from here
    history: list[int] = field(default_factory=list)  # the plan after each step (for the record and the tests)

    def __post_init__(self):
        self.total = self.total or self.max_steps

    def lr_factor(self, step: int) -> float:
        """Linear warm-up, then cosine to zero at the planned last step."""
        warmup = int(self.total * self.warmup_ratio)
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, self.total - warmup))
        return 0.5 * (1 + math.cos(math.pi * progress))

    def start_clock(self, now: float) -> None:
        """Start the budget when train() is called (its set-up takes seconds on a busy machine)."""
        self.started = now

    def replan(self, steps_done: int, now: float) -> bool:
        """Re-plan from the mean step time; True when the next step would end past the budget."""
        began = self.steps_began if self.steps_began is not None else self.started
        elapsed = now - self.started
        per_step = (now - began) / max(1, steps_done)
        fits = int((self.seconds - (began - self.started)) / per_step)  # the set-up has used part of the budget
        self.total = max(steps_done, min(self.max_steps, fits))
        self.history.append(self.total)
        return elapsed + per_step > self.seconds or steps_done >= self.total


def budget_callback(plan: BudgetPlan):
    """A Trainer callback that keeps `plan` current and stops training at it (and keeps the progress bar's total
    at the plan)."""
    from transformers import TrainerCallback

    class BudgetCallback(TrainerCallback):
        bar_owner = None  # the Trainer's ProgressCallback, set by `attach`

        def on_train_begin(self, args, state, control, **kwargs):
            plan.steps_began = time.monotonic()
            if plan.started is None:
                plan.started = plan.steps_began

        def on_step_end(self, args, state, control, **kwargs):
            if plan.replan(state.global_step, time.monotonic()):
                control.should_training_stop = True
            bar = getattr(self.bar_owner, "training_bar", None)
            if bar is not None and bar.total != plan.total:
                bar.total = plan.total
                bar.refresh()

    return BudgetCallback()


def attach(trainer, plan: BudgetPlan) -> None:
    """The budget's callback and its schedule on a Trainer (the schedule is made when training starts)."""
    from transformers.trainer_callback import ProgressCallback

    callback = budget_callback(plan)
    callback.bar_owner = next((c for c in trainer.callback_handler.callbacks if isinstance(c, ProgressCallback)),
                              None)
    trainer.add_callback(callback)

    def create_scheduler(num_training_steps: int, optimizer=None):
        from torch.optim.lr_scheduler import LambdaLR

        if trainer.lr_scheduler is None:
            trainer.lr_scheduler = LambdaLR(optimizer or trainer.optimizer, plan.lr_factor)
            trainer._created_lr_scheduler = True  # as the Trainer's own: made again for another train() call
        return trainer.lr_scheduler

    trainer.create_scheduler = create_scheduler


def budget_record(plan: BudgetPlan, steps: int, examples: int, seconds: float) -> dict:
    """What the manifest keeps of a budgeted run."""
    return {"time_budget_s": plan.seconds, "steps": steps, "planned_steps": plan.total,
            "examples_trained": examples, "train_seconds": round(seconds, 1),
            "stopped_by": "budget" if steps < plan.max_steps else "data"}
