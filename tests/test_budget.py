"""Training to a time budget: the duration syntax, the plan and its schedule, and a real run on a tiny model that
ends within 15% of its budget."""

from __future__ import annotations

import math

import pytest

from zoo.budget import BudgetPlan, parse_duration, pool_size
from zoo.errors import ZooError


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("5m", 300), ("1h30m", 5400), ("1.5h", 5400),
                                           (" 2m 30s ", 150), (45, 45)])
def test_durations_read_as_people_write_them(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "five minutes", "5 min", "-3m", "0s", "8d", "1e9", "3m;rm"])
def test_a_bad_duration_is_a_clear_error(text):
    with pytest.raises(ZooError, match="time budget"):
        parse_duration(text)


def test_the_plan_follows_the_measured_step_time():
    """One second a step against a 10 s budget: ten steps planned, stop before the step that would overrun; a
    pool smaller than the budget caps the plan."""
    plan = BudgetPlan(seconds=10, max_steps=1000, warmup_ratio=0.1, started=0.0)
    stops = [plan.replan(step, now=float(step)) for step in range(1, 11)]
    assert plan.total == 10 and stops == [False] * 9 + [True]
    small = BudgetPlan(seconds=10, max_steps=4, warmup_ratio=0.0, started=0.0)
    assert small.replan(1, 1.0) is False and small.total == 4
    assert small.replan(4, 4.0) is True  # the data ran out first
    slowing = BudgetPlan(seconds=10, max_steps=1000, warmup_ratio=0.0, started=0.0)
    slowing.replan(2, 1.0)
    slowing.replan(4, 8.0)  # two seconds a step from now on: the plan shrinks
    assert slowing.history == [20, 5]


def test_the_set_up_before_the_first_step_counts_against_the_budget():
    """train() called at 0, first step at 4 s (a busy machine), one second a step: six steps fit in 10 s, and
    the run stops before the step that would end past 10 s."""
    plan = BudgetPlan(seconds=10, max_steps=1000, warmup_ratio=0.0, started=0.0, steps_began=4.0)
    stops = [plan.replan(step, now=4.0 + step) for step in range(1, 7)]
    assert plan.history[0] == 6 and stops == [False] * 5 + [True]


def test_the_schedule_warms_up_then_ends_at_zero_on_the_planned_step():
    plan = BudgetPlan(seconds=60, max_steps=100, warmup_ratio=0.1, total=50)
    factors = [plan.lr_factor(s) for s in range(51)]
    assert factors[0] < factors[4] < factors[5] == pytest.approx(1.0)  # 5 warm-up steps
    assert all(a >= b for a, b in zip(factors[5:], factors[6:]))
    assert factors[50] == pytest.approx(0.0, abs=1e-9)
    assert plan.lr_factor(30) == pytest.approx(0.5 * (1 + math.cos(math.pi * 25 / 45)))


def test_a_budget_draws_a_pool_far_above_a_cpu_rate():
    assert pool_size(300, None) == 9600 and pool_size(300, 500) == 500 and pool_size(1, None) == 64


def test_a_budgeted_run_on_a_tiny_model_ends_within_15_percent_of_its_budget(tiny_base_dir, data_dir, tmp_path,
                                                                            capsys):
    """`zoo train --time-budget 8s` on the tiny model: trainer.train() takes 8 s +-15% (its steps take a few
    milliseconds, so the data would last far longer), the schedule ends at zero on the last step, and the manifest
    and the printed line say how far it got."""
    from zoo.cli import main
    from zoo.store import Zoo

    zoo = Zoo(tmp_path / "zoo")
    assert main(["train", "sentiment", "--zoo", str(zoo.root), "--base", str(tiny_base_dir), "--no-quant",
                 "--data-dir", str(data_dir), "--no-router", "--time-budget", "8s", "--batch-size", "2",
                 "--save-steps", "100000", "--max-examples", "4000"]) == 0  # a pool no tiny run exhausts in 8 s
    entry = zoo.get("sentiment")
    budget = entry.throughput["budget"]
    assert budget["time_budget_s"] == 8 and budget["stopped_by"] == "budget"
    assert 8 * 0.85 <= entry.throughput["seconds"] <= 8 * 1.15, entry.throughput
    assert budget["steps"] == entry.throughput["steps"] >= 10 and budget["examples_trained"] == 2 * budget["steps"]
    assert entry.train["time_budget"] == "8s"
    assert "time budget 8 s, stopped by the budget" in capsys.readouterr().out
