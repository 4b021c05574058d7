"""The task registry. Built-in tasks live one per module here; others arrive through the `adapter_zoo.tasks`
entry-point group (`name = "package.module:SPEC"`) or as a YAML/JSON task file (`zoo train my_task.yaml`)."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from pathlib import Path

from tasks.spec import LoraSettings, TaskSpec, TrainSettings
from zoo.errors import ZooError

BUILTIN = ("sentiment", "qa", "summarization")
ENTRY_POINT_GROUP = "adapter_zoo.tasks"
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
    if name_or_file.endswith((".yaml", ".yml", ".json")):
        from tasks.taskfile import load_task_file

        return register(load_task_file(Path(name_or_file)), replace=True)
    tasks = all_tasks()
    if name_or_file not in tasks:
        raise ZooError(f"unknown task {name_or_file!r}; known: {', '.join(sorted(tasks))} "
                       "(or pass a task file: my_task.yaml)")
    return tasks[name_or_file]


__all__ = ["TaskSpec", "LoraSettings", "TrainSettings", "register", "get_task", "all_tasks"]
