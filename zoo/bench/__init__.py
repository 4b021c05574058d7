"""`zoo bench`: our recipe and runtime against the textbook ones, side by side, in one run, on one base.

Entry point: `run_bench(cfg, user_zoo=None) -> dict` with `cfg = config_for("quick" | "full" | "tiny", ...)`.

Layout:
    config.py     `BenchConfig`, its presets and the section names
    run.py        `run_bench`: checks the request, makes a work zoo, runs the sections, judges the bars
    sections.py   training (ours vs the reference), inference, memory and router sections
    workers.py    measured jobs in fresh processes (`python -m zoo.bench JOB OUT`, see `__main__.py`), so
                  peak memory never mixes; the training and RSS workers
    adapters.py   the work zoo: trained, borrowed and random adapters, each installed as a typed `Entry`
    reference.py  the textbook PEFT + Trainer QLoRA recipe that `zoo train` is measured against
    measure.py    RSS, GPU memory, machine info, the step timer
    bars.py       the headline ratios and the PASS/FAIL bars

Everything works on a base path too, so tests run the whole bench on a tiny random model.
"""

from zoo.bench.bars import bars, headline
from zoo.bench.config import PRESETS, SECTIONS, BenchConfig, config_for
from zoo.bench.run import run_bench

__all__ = ["BenchConfig", "PRESETS", "SECTIONS", "bars", "config_for", "headline", "run_bench"]
