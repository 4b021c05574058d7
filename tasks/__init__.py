"""The task registry. Built-in tasks live one per module here; others arrive through the `adapter_zoo.tasks`
entry-point group (`name = "package.module:SPEC"`) or as a YAML/JSON task file (`zoo train my_task.yaml`)."""

from __future__ import annotations

import importlib
import json
from importlib.metadata import entry_points
from pathlib import Path

from tasks.spec import LoraSettings, TaskSpec, TrainSettings
from zoo.errors import ZooError

BUILTIN = ("sentiment", "qa", "summarization")
ENTRY_POINT_GROUP = "adapter_zoo.tasks"
SPEC_FILE = "task.json"  # the resolved TaskSpec, saved in every adapter folder
_REGISTRY: dict[str, TaskSpec] = {}
_loaded = False


def register(spec: TaskSpec, replace: bool = False) -> TaskSpec:
    """Add a task; a second task with the same name is refused unless `replace`."""
    if not isinstance(spec, TaskSpec):
        raise ZooError(f"register() takes a TaskSpec, got {type(spec).__name__}")
    if spec.name in _REGISTRY and not replace and _REGISTRY[spec.name] is not spec:
        raise ZooError(f"a task named {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for name in BUILTIN:
        importlib.import_module(f"tasks.{name}")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            spec = ep.load()
        except Exception as e:  # a broken plugin must not break the built-in tasks
            print(f"[zoo] warning: task plugin {ep.name!r} failed to load: {e}")
            continue
        if isinstance(spec, TaskSpec):
            register(spec)


def all_tasks() -> dict[str, TaskSpec]:
    _load_all()
    return dict(_REGISTRY)


def get_task(name_or_file: str) -> TaskSpec:
    """A registered task by name, or a task file (YAML/JSON) by path, which is registered on the way."""
    if not isinstance(name_or_file, str):
        raise ZooError(f"a task is named by a string, not {type(name_or_file).__name__}")
    if name_or_file.endswith((".yaml", ".yml", ".json")):
        from tasks.taskfile import load_task_file

        return register(load_task_file(Path(name_or_file)), replace=True)
    tasks = all_tasks()
    if name_or_file not in tasks:
        raise ZooError(f"unknown task {name_or_file!r}; known: {', '.join(sorted(tasks))} "
                       "(or pass a task file: my_task.yaml)")
    return tasks[name_or_file]


def save_spec(folder: Path, spec: TaskSpec) -> None:
    """Write the resolved spec next to an adapter, so any later process (eval, routing, serving, a pulled copy)
    knows its task without the registry or the task file it came from."""
    from zoo.fsutil import atomic_write_json

    atomic_write_json(Path(folder) / SPEC_FILE, spec.to_json())


def spec_for_adapter(zoo, name: str) -> TaskSpec:
    """The task an adapter answers: its saved `task.json`, else (adapters from before specs travelled) the
    registered task its manifest entry names. Never a file path from the entry."""
    folder = zoo.adapter_dir(name)
    path = folder / SPEC_FILE
    if path.is_file() and not path.is_symlink():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise ZooError(f"adapter {name!r}: {SPEC_FILE} is not valid JSON; retrain or re-pull it") from None
        return TaskSpec.from_json(data, where=f"adapter {name!r}'s {SPEC_FILE}")
    return get_task(zoo.get(name).task)


__all__ = ["TaskSpec", "LoraSettings", "TrainSettings", "register", "get_task", "all_tasks", "save_spec",
           "spec_for_adapter", "SPEC_FILE"]
