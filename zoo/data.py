"""Task data: rows from the Hub by default, or from local `<split>.jsonl[.gz]` files with the Hub's columns.

Local data is found through `--data-dir` / `ZOO_DATA_DIR` (a folder holding one sub-folder per dataset, e.g.
`../shared/data/sst2/train.jsonl`) or through a task whose `dataset` is itself a folder. A task's out-of-domain
set (`spec.ood`) loads through the same code, its columns renamed to the task's (`load_ood_rows`).
"""

from __future__ import annotations

import gzip
import json
import os
import random
from dataclasses import replace
from pathlib import Path

from zoo.errors import ZooError


class DataMissing(ZooError):
    """A split that is not where it should be: an out-of-domain set is then left out of a report, not an error."""


def data_dir_from_env(data_dir: str | os.PathLike | None = None) -> Path | None:
    value = data_dir or os.environ.get("ZOO_DATA_DIR")
    return Path(value).expanduser() if value else None


def local_split_file(spec, split: str, data_dir: Path | None, ood: bool = False) -> Path | None:
    """The local file for a split, or None when the data should come from the Hub. An out-of-domain set is
    looked for in its own folder only: the task's folder would give in-domain rows under its name."""
    candidates: list[Path] = []
    if Path(spec.dataset).expanduser().is_dir():
        candidates.append(Path(spec.dataset).expanduser())
    if data_dir is not None:
        candidates += ([data_dir / spec.local_dir] if ood else
                       [data_dir / (spec.local_dir or spec.name), data_dir / spec.name, data_dir])
    for folder in candidates:
        for suffix in (".jsonl", ".jsonl.gz"):
            if (folder / f"{split}{suffix}").is_file():
                return folder / f"{split}{suffix}"
    if candidates:
        raise DataMissing(
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

    try:
        require_hub(f"task {spec.name}: dataset {spec.dataset!r}",
                    f"set ZOO_DATA_DIR (or --data-dir) to a folder with {spec.local_dir or spec.name}/{split}.jsonl")
    except ZooError as e:
        raise DataMissing(str(e)) from None
    try:
        ds = datasets.load_dataset(spec.dataset, spec.dataset_config, split=split)
    except Exception as e:  # offline, missing repo or split: one actionable message
        raise DataMissing(
            f"task {spec.name}: could not load dataset {spec.dataset!r} split {split!r} from the Hub "
            f"({type(e).__name__}); offline, set ZOO_DATA_DIR (or --data-dir) to a folder with "
            f"{spec.local_dir or spec.name}/{split}.jsonl"
        ) from None
    return ds.to_list()


def load_rows(spec, split: str, data_dir=None, limit: int | None = None, seed: int = 0,
              ood: bool = False) -> list[dict]:
    """A seeded random sample of `limit` rows (all rows when None), checked for the task's columns. With `ood`,
    from the task's out-of-domain set (`split` is one of its splits), in the task's column names."""
    source = ood_source(spec) if ood else spec
    path = local_split_file(source, split, data_dir_from_env(data_dir), ood)
    rows = read_jsonl(path) if path else _hub_rows(source, split)
    where = str(path) if path else f"{source.dataset}:{split}"
    if not rows:
        raise ZooError(f"task {spec.name}: split {split!r} ({where}) is empty")
    if limit is not None and limit < len(rows):
        rows = random.Random(seed).sample(rows, limit)
    if ood:
        rows = [as_task_row(spec.ood, row) for row in rows]
    missing = [c for c in spec.columns if c not in rows[0]]
    if missing:
        fix = "ood.columns" if ood else "input_columns/target_column"
        raise ZooError(f"task {spec.name}: {where} lacks column(s) {missing}; it has {sorted(rows[0])}. "
                       f"Fix {fix} in the task")
    return rows


def ood_split(spec) -> str:
    return (spec.ood or {}).get("split") or "test"


def ood_source(spec):
    """The out-of-domain set as a spec to find rows with: its dataset (a folder under the data folder, a local
    folder or a Hub id), config and split; everything else the task's."""
    if not spec.ood:
        raise ZooError(f"task {spec.name} names no out-of-domain set; add `ood: {{dataset: FOLDER}}` to the task")
    return replace(spec, dataset=spec.ood["dataset"], local_dir=spec.ood["dataset"],
                   dataset_config=spec.ood.get("config"), eval_split=ood_split(spec))


def as_task_row(ood: dict, row: dict) -> dict:
    """A row of an out-of-domain set with the task's column names (`ood.columns`), lists of sentences joined
    (`ood.join`); columns the task does not rename stay as they are."""
    renamed = ood.get("columns") or {}
    out = {**row, **{task_col: row[col] for task_col, col in renamed.items() if col in row}}
    for col in ood.get("join") or ():
        if isinstance(out.get(col), list):
            out[col] = " ".join(str(s).strip() for s in out[col])
    return out


def load_ood_rows(spec, data_dir=None, limit: int | None = None, seed: int = 0) -> list[dict]:
    """The task's out-of-domain rows, through `load_rows` like the in-domain ones."""
    return load_rows(spec, ood_split(spec), data_dir, limit, seed, ood=True)


def describe_source(spec, split: str, data_dir=None) -> str:
    path = local_split_file(spec, split, data_dir_from_env(data_dir))
    return str(path) if path else f"hub:{spec.dataset}:{split}"
