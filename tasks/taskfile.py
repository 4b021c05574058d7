"""Tasks without code: a YAML or JSON file naming a dataset, its columns, templates and metric.

    name: topic
    description: Which topic is a dialogue about?
    dataset: ./my_data            # a Hub dataset id, or a folder of <split>.jsonl[.gz] files
    input_columns: [dialogue]
    output_column: topic
    templates: ["What is this conversation about?\n\n{dialogue}"]
    metric: rouge                 # accuracy (needs labels) | squad | rouge
    lora: {r: 8, target_modules: attention}
    train: {max_examples: 200, learning_rate: 3e-4}
"""

from __future__ import annotations

import difflib
import json
from dataclasses import fields
from pathlib import Path

from tasks.spec import LoraSettings, TaskSpec, TrainSettings
from zoo.errors import ZooError
from zoo.fsutil import existing

ALIASES = {"output_column": "target_column", "hub_dataset": "dataset", "data_dir": "dataset"}
SPEC_KEYS = {f.name for f in fields(TaskSpec)} - {"target_fn"}


def load_task_file(path: Path) -> TaskSpec:
    if existing(path) != "file":  # also a name too long or otherwise impossible for this filesystem
        raise ZooError(f"task file {str(path)[:120]!r} does not exist")
    raw = _parse(path)
    if not isinstance(raw, dict):
        raise ZooError(f"task file {path} must hold a mapping of settings, not {type(raw).__name__}")
    data = {ALIASES.get(k, k): v for k, v in raw.items()}
    _check_keys(path, data, SPEC_KEYS)
    for key in ("name", "dataset", "input_columns", "target_column", "templates"):
        if key not in data:
            raise ZooError(f"task file {path}: missing required key {key!r}")
    data.setdefault("description", f"Task {data['name']} from {path.name}")
    if isinstance(data["input_columns"], str):
        data["input_columns"] = [data["input_columns"]]
    if isinstance(data["templates"], str):
        data["templates"] = [data["templates"]]
    for key in ("input_columns", "templates", "labels"):
        if data.get(key) is not None:
            data[key] = tuple(data[key])
    data["lora"] = _settings(path, LoraSettings, data.get("lora"))
    data["train"] = _settings(path, TrainSettings, data.get("train"))
    dataset = Path(data["dataset"]).expanduser()
    if not dataset.is_absolute() and (path.parent / dataset).is_dir():
        data["dataset"] = str((path.parent / dataset).resolve())  # relative to the task file, like an include
    return TaskSpec(**data)


def _parse(path: Path):
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        if path.suffix == ".json":
            return json.loads(text)
        import yaml

        return yaml.safe_load(text)
    except (ValueError, Exception) as e:  # yaml.YAMLError and json errors both say where the problem is
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ZooError(f"task file {path} is not valid {path.suffix[1:].upper()}: {first}") from None


def _settings(path: Path, cls, values):
    if values is None:
        return cls()
    if not isinstance(values, dict):
        raise ZooError(f"task file {path}: '{cls.__name__}' settings must be a mapping")
    names = {f.name for f in fields(cls)}
    _check_keys(path, values, names)
    if isinstance(values.get("target_modules"), list):
        values = {**values, "target_modules": tuple(values["target_modules"])}
    try:
        return cls(**values)
    except TypeError as e:
        raise ZooError(f"task file {path}: {e}") from None


def _check_keys(path: Path, data: dict, known: set[str]) -> None:
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(sorted(known))}"
            raise ZooError(f"task file {path}: unknown key {key!r}{hint}")
