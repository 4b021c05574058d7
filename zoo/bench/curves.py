"""The learning-curve study behind the built-in tasks' defaults (issue 20): for each task, adapters trained on more
and more examples (and with other settings at one size), each scored against the base on the same validation
sample, with its training time. Results are appended to a JSON file as each point lands (a stopped study resumes
where it was) and the report (Markdown table + plot) is rebuilt from that file.

    python -m zoo.bench.curves sentiment --examples 200 400 800 1600 --vary lr=5e-4,2e-3 -n 100
    python -m zoo.bench.curves --report-only   # rebuild docs/learning-curves/{README.md,curves.png} from the JSON
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from zoo.errors import ZooError

OUT = Path(__file__).resolve().parents[2] / "docs" / "learning-curves"
FLAGS = {"lr": "--lr", "rank": "--rank", "alpha": "--alpha", "layers": "--layers", "targets": "--targets",
         "dropout": "--dropout", "row_tokens": "--row-tokens", "batch_size": "--batch-size", "epochs": "--epochs",
         "warmup_ratio": "--warmup-ratio", "max_seq_len": "--max-seq-len"}


def point_key(task: str, examples: int, setting: dict) -> str:
    extra = ",".join(f"{k}={v}" for k, v in sorted(setting.items()))
    return f"{task}/{examples}" + (f"/{extra}" if extra else "")


def machine() -> str:
    """Cores, device and the compute dtype the base's own rule picks (`zoo.base`: bf16 only where the CPU has it)."""
    from zoo.base import pick_compute_dtype, pick_device

    device = pick_device()
    dtype = str(pick_compute_dtype(device)).removeprefix("torch.")
    return f"{os.cpu_count()} cores, {device} ({platform.machine()}), {dtype} compute"


def train_point(zoo_dir: Path, task: str, examples: int, setting: dict, data_dir, base: str | None = None) -> dict:
    """Train one adapter (the CLI, as a user would) and return its manifest facts."""
    from zoo.cli import main
    from zoo.store import Zoo

    zoo = Zoo(zoo_dir)
    name = f"p{len(zoo.entries()) if zoo.manifest_path.exists() else 0}"
    argv = ["train", task, "--zoo", str(zoo_dir), "--name", name, "--max-examples", str(examples), "--no-router"]
    argv += [x for k, v in setting.items() for x in (FLAGS[k], str(v))]
    argv += ["--data-dir", str(data_dir)] if data_dir else []
    argv += ["--base", str(base)] if base else []
    if main(argv):
        raise ZooError(f"training {point_key(task, examples, setting)} failed (see above)")
    entry = zoo.entries()[name]
    return {"name": name, "train_seconds": entry.throughput["seconds"],
            "examples_per_second": entry.throughput["examples_per_s"], "memory_plan": entry.throughput.get("memory"),
            "resolved": resolved(entry.lora, entry.train)}


def resolved(lora: dict, train: dict) -> dict:
    """The settings a point really trained with (a task's defaults change; the record must not)."""
    return {"lr": train["learning_rate"], "r": lora["r"], "layers": lora.get("layers") or "all",
            "row_tokens": train.get("row_tokens"), "batch": train.get("batch_size")}


def score_point(zoo_dir: Path, task: str, name: str, n: int, data_dir) -> dict:
    """Adapter vs base on `n` validation rows (seed 0: the sample `zoo eval` uses), with 95% intervals."""
    from tasks import spec_for_adapter
    from zoo.evaluation import compare, eval_rows
    from zoo.serving.runtime import Runtime
    from zoo.store import Zoo

    zoo = Zoo(zoo_dir)
    spec = spec_for_adapter(zoo, name)
    rows = eval_rows(spec, n, data_dir)
    with Runtime(zoo) as runtime:
        scores, _, adapter = compare(runtime, name, spec, rows, 0)
    metric = spec.primary_metric
    return {"metric": metric, "n": len(rows), "base": scores["base"][metric], "adapter": scores["adapter"][metric],
            "interval": scores["intervals"]["adapter"][metric], "eval_seconds": adapter["seconds"]}


def run_study(task: str, sizes: list[int], variations: dict, n: int, data_dir, results: Path,
              base: str | None = None) -> None:
    """Every size with the task's settings, then each variation at the middle size; done points are skipped."""
    from tqdm.auto import tqdm

    done = load_results(results)
    middle = sizes[len(sizes) // 2]
    plan = [(s, {}) for s in sizes] + [(middle, {k: v}) for k, vs in variations.items() for v in vs]
    todo = [(s, v) for s, v in plan if point_key(task, s, v) not in done]
    with tempfile.TemporaryDirectory(prefix="curves-") as tmp:
        for size, setting in tqdm(todo, desc=f"{task} study", unit="point"):
            t0 = time.perf_counter()
            trained = train_point(Path(tmp), task, size, setting, data_dir, base)
            scored = score_point(Path(tmp), task, trained["name"], n, data_dir)
            done[point_key(task, size, setting)] = {
                "task": task, "examples": size, "setting": setting, **trained, **scored,
                "wall_seconds": round(time.perf_counter() - t0, 1), "machine": machine()}
            results.parent.mkdir(parents=True, exist_ok=True)
            results.write_text(json.dumps(done, indent=1))


def load_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def parse_variation(text: str) -> tuple[str, list[str]]:
    key, _, values = text.partition("=")
    if key not in FLAGS or not values:
        raise argparse.ArgumentTypeError(f"--vary takes SETTING=V1,V2 with SETTING one of {', '.join(FLAGS)}")
    return key, values.split(",")


def main(argv: list[str] | None = None) -> int:
    from zoo.bench.curves_report import write_report

    p = argparse.ArgumentParser(prog="python -m zoo.bench.curves", description=__doc__.split("\n\n")[0])
    p.add_argument("task", nargs="?", help="built-in task or task file to study")
    p.add_argument("--examples", type=int, nargs="+", default=[], help="training set sizes")
    p.add_argument("--vary", type=parse_variation, action="append", default=[],
                   help="SETTING=V1,V2: extra points at the middle size (lr, rank, layers, row_tokens, ...)")
    p.add_argument("-n", type=int, default=100, help="validation examples per point (default 100)")
    p.add_argument("--data-dir", default=None, help="local data folder (default: $ZOO_DATA_DIR)")
    p.add_argument("--base", default=None, help="base model (default: the embedded SmolLM2)")
    p.add_argument("--out", type=Path, default=OUT, help=f"results and report folder (default {OUT})")
    p.add_argument("--report-only", action="store_true", help="rebuild the report from the saved results")
    args = p.parse_args(argv)
    results = args.out / "results.json"
    try:
        if not args.report_only:
            if not args.task or not args.examples:
                p.error("name a task and --examples (or --report-only)")
            run_study(args.task, sorted(args.examples), dict(args.vary), args.n, args.data_dir, results, args.base)
        write_report(load_results(results), args.out)
    except ZooError as e:
        print(f"[curves] error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
