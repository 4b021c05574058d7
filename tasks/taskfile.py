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

import json
from pathlib import Path

from tasks.spec import TaskSpec, check_keys
from zoo.errors import ZooError
from zoo.fsutil import existing

ALIASES = {"output_column": "target_column", "hub_dataset": "dataset", "data_dir": "dataset"}
MAX_BYTES = 1 << 20  # a task file is a few lines; a bigger one is a mistake (or an attack on the parser)


def load_task_file(path: Path) -> TaskSpec:
    if existing(path) != "file":  # also a name too long or otherwise impossible for this filesystem
        raise ZooError(f"task file {str(path)[:120]!r} does not exist")
    if path.stat().st_size > MAX_BYTES:
        raise ZooError(f"task file {path} is larger than {MAX_BYTES // 1024} KB; a task file is a few settings")
    raw = _parse(path)
    if not isinstance(raw, dict):
        raise ZooError(f"task file {path} must hold a mapping of settings, not {type(raw).__name__}")
    data = {ALIASES.get(k, k): v for k, v in raw.items()}
    check_keys(f"task file {path}", data, {f for f in TaskSpec.__dataclass_fields__})
    for key in ("name", "dataset", "input_columns", "target_column", "templates"):
        if key not in data:
            raise ZooError(f"task file {path}: missing required key {key!r}")
    data.setdefault("description", f"Task {data['name']} from {path.name}")
    if isinstance(data["dataset"], str):
        dataset = Path(data["dataset"]).expanduser()
        if not dataset.is_absolute() and (path.parent / dataset).is_dir():
            data["dataset"] = str((path.parent / dataset).resolve())  # relative to the task file, like an include
    return TaskSpec.from_json(data, where=f"task file {path}")


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
