"""Task data: rows from the Hub by default, or from local `<split>.jsonl[.gz]` files with the Hub's columns.

Local data is found through `--data-dir` / `ZOO_DATA_DIR` (a folder holding one sub-folder per dataset, e.g.
`../shared/data/sst2/train.jsonl`) or through a task whose `dataset` is itself a folder.
"""

from __future__ import annotations

import gzip
import json
import os
import random
from pathlib import Path

from zoo.errors import ZooError


def data_dir_from_env(data_dir: str | os.PathLike | None = None) -> Path | None:
    value = data_dir or os.environ.get("ZOO_DATA_DIR")
    return Path(value).expanduser() if value else None


def local_split_file(spec, split: str, data_dir: Path | None) -> Path | None:
    """The local file for a split, or None when the data should come from the Hub."""
    candidates: list[Path] = []
    if Path(spec.dataset).expanduser().is_dir():
        candidates.append(Path(spec.dataset).expanduser())
    if data_dir is not None:
        candidates += [data_dir / (spec.local_dir or spec.name), data_dir / spec.name, data_dir]
    for folder in candidates:
        for suffix in (".jsonl", ".jsonl.gz"):
            if (folder / f"{split}{suffix}").is_file():
                return folder / f"{split}{suffix}"
    if candidates:
        raise ZooError(
            f"task {spec.name}: no {split}.jsonl[.gz] in {', '.join(str(c) for c in candidates)}; "
            f"put the split there or unset ZOO_DATA_DIR to download {spec.dataset!r} from the Hub"
        )
    return None


def read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if line.strip():
                    rows.append(json.loads(line))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError, EOFError) as e:
        raise ZooError(f"{path} line {i if 'i' in locals() else 0}: not valid JSON Lines ({type(e).__name__})") from None
    return rows


def _hub_rows(spec, split: str) -> list[dict]:
    import datasets

    from zoo.hub.common import require_hub

    require_hub(f"task {spec.name}: dataset {spec.dataset!r}",
                f"set ZOO_DATA_DIR (or --data-dir) to a folder with {spec.local_dir or spec.name}/{split}.jsonl")
    try:
        ds = datasets.load_dataset(spec.dataset, spec.dataset_config, split=split)
    except Exception as e:  # offline, missing repo or split: one actionable message
        raise ZooError(
            f"task {spec.name}: could not load dataset {spec.dataset!r} split {split!r} from the Hub "
            f"({type(e).__name__}); offline, set ZOO_DATA_DIR (or --data-dir) to a folder with "
            f"{spec.local_dir or spec.name}/{split}.jsonl"
        ) from None
    return ds.to_list()


def load_rows(spec, split: str, data_dir=None, limit: int | None = None, seed: int = 0) -> list[dict]:
    """A seeded random sample of `limit` rows (all rows when None), checked for the task's columns."""
    path = local_split_file(spec, split, data_dir_from_env(data_dir))
    rows = read_jsonl(path) if path else _hub_rows(spec, split)
    where = str(path) if path else f"{spec.dataset}:{split}"
    if not rows:
        raise ZooError(f"task {spec.name}: split {split!r} ({where}) is empty")
    missing = [c for c in spec.columns if c not in rows[0]]
    if missing:
        raise ZooError(f"task {spec.name}: {where} lacks column(s) {missing}; it has {sorted(rows[0])}. "
                       "Fix input_columns/target_column in the task")
    if limit is not None and limit < len(rows):
        rows = random.Random(seed).sample(rows, limit)
    return rows


def describe_source(spec, split: str, data_dir=None) -> str:
    path = local_split_file(spec, split, data_dir_from_env(data_dir))
    return str(path) if path else f"hub:{spec.dataset}:{split}"
