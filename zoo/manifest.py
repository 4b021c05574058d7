"""One typed manifest entry per adapter: what every writer of `zoo.json` builds and every reader gets back.

An `Entry` is checked field by field when read (`Entry.from_json`): a manifest edited by hand, damaged, or
pulled from a stranger can only yield the fields this project writes, each of the type it writes. Fields it
does not know are dropped with `unknown="drop"` (pulled zoos: a field this version does not know must not
change what the user's own adapters do) or kept verbatim with `unknown="keep"` (the local manifest,
so that a newer version's fields survive an older version's write).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from zoo.errors import ZooError
from zoo.fsutil import check_name

KINDS = ("trained", "combined", "pulled", "bench-reference", "random")
_NUMBER = (int, float)


@dataclass(frozen=True)
class BaseInfo:
    """Which base an adapter's deltas belong to: `hash` fingerprints its config and weights (`zoo.base`)."""

    id: str | None = None
    hash: str | None = None
    quantized: bool | None = None

    @classmethod
    def of(cls, loaded) -> "BaseInfo":
        return cls(loaded.ref.id, loaded.ref.hash, loaded.quantized)


@dataclass(frozen=True)
class BlendInfo:
    """How a combined adapter was made from its parents (`zoo combine`)."""

    parents: tuple[str, ...]
    weights: tuple[float, ...]
    method: str
    density: float | None = None
    svd_rank: int | None = None
    seed: int | None = None
    parent_tasks: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Entry:
    """One adapter of the zoo. `task` names the task; the resolved spec itself lives in the adapter folder
    (`task.json`, see `tasks.spec_for_adapter`), so a task from a task file travels with its adapter."""

    name: str
    task: str
    kind: str
    base: BaseInfo
    lora: dict
    path: str
    created: str | None = None
    metrics: dict = field(default_factory=dict)
    train: dict | None = None
    data: dict | None = None
    throughput: dict | None = None
    final_loss: float | None = None
    blend: BlendInfo | None = None
    route_as: tuple[str, ...] = ()
    pulled_from: str | None = None
    repo: str | None = None
    logit_bias: dict | None = None  # {"token id": value}: the calibrated decision of a task with labels
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        check_name(self.name, "adapter name")
        check_name(self.task, "task name")
        if self.kind not in KINDS:
            raise ZooError(f"adapter {self.name!r}: unknown kind {self.kind!r}; one of {', '.join(KINDS)}")

    @property
    def routes(self) -> tuple[str, ...]:
        """The router routes this adapter answers: its own task, or what a blend was told to answer."""
        return self.route_as or (self.task,)

    def with_(self, **changes) -> "Entry":
        return replace(self, **changes)

    def to_json(self) -> dict:
        out = asdict(self)
        extra = out.pop("extra")
        out["route_as"] = list(self.route_as)
        if self.blend is not None:
            out["blend"] = {**out["blend"], "parents": list(self.blend.parents), "weights": list(self.blend.weights)}
        return {**extra, **{k: v for k, v in out.items() if v is not None}}

    @classmethod
    def from_json(cls, data: Any, unknown: str = "keep") -> "Entry":
        """Check every field's type; `unknown` fields are kept ("keep"), dropped ("drop") or refused ("refuse")."""
        if not isinstance(data, dict):
            raise ZooError(f"a manifest entry must be a JSON object, not {type(data).__name__}")
        data = _migrate_v1(data)
        known = {f.name for f in fields(cls)} - {"extra"}
        extra = {k: v for k, v in data.items() if k not in known}
        if extra and unknown == "refuse":
            raise ZooError(f"adapter {data.get('name')!r}: unknown manifest field(s) {sorted(extra)}")
        what = f"adapter {str(data.get('name'))[:60]!r}"
        values = {k: _checked(what, k, data[k]) for k in known if data.get(k) is not None}
        for required in ("name", "task", "kind", "base", "lora", "path"):
            if required not in values:
                raise ZooError(f"{what}: manifest entry has no {required!r}")
        return cls(**values, extra=extra if unknown == "keep" else {})


_TYPES = {"name": str, "task": str, "kind": str, "lora": dict, "path": str, "created": str, "metrics": dict,
          "train": dict, "data": dict, "throughput": dict, "final_loss": _NUMBER, "pulled_from": str, "repo": str}


def _checked(what: str, key: str, value):
    if key == "base":
        return BaseInfo(**_typed_dict(what, key, value, {"id": str, "hash": str, "quantized": bool}))
    if key == "blend":
        raw = _typed_dict(what, key, value, {"parents": list, "weights": list, "method": str, "density": _NUMBER,
                                             "svd_rank": int, "seed": int, "parent_tasks": dict})
        if not all(isinstance(w, _NUMBER) for w in raw.get("weights", [])) or \
                not all(isinstance(p, str) for p in raw.get("parents", [])):
            raise ZooError(f"{what}: blend parents must be names and weights numbers")
        return BlendInfo(**{**raw, "parents": tuple(raw.get("parents", ())), "weights": tuple(raw.get("weights", ()))})
    if key == "logit_bias":
        from zoo.label_bias import check

        return check(value, what=f"{what}: manifest field 'logit_bias'")
    if key == "route_as":
        if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
            raise ZooError(f"{what}: 'route_as' must be a list of task names")
        return tuple(check_name(t, "task name") for t in value)
    expected = _TYPES[key]
    if not isinstance(value, expected) or isinstance(value, bool):  # no field here is a flag: true is no number
        raise ZooError(f"{what}: manifest field {key!r} has the wrong type ({type(value).__name__})")
    return value


def _typed_dict(what: str, key: str, value, types: dict) -> dict:
    if not isinstance(value, dict):
        raise ZooError(f"{what}: manifest field {key!r} must be an object")
    out = {}
    for k, v in value.items():
        if k not in types:
            continue  # e.g. a published entry's base.hub_id: informational, never used to pick a base
        if v is not None and not isinstance(v, types[k]):
            raise ZooError(f"{what}: manifest field {key}.{k} has the wrong type ({type(v).__name__})")
        out[k] = v
    return out


def _migrate_v1(data: dict) -> dict:
    """Version-1 manifests kept a blend's recipe at the top level of its entry."""
    if data.get("kind") != "combined" or "blend" in data or "parents" not in data:
        return data
    keys = ("parents", "weights", "method", "density", "svd_rank", "seed", "parent_tasks")
    blend = {k: data[k] for k in keys if data.get(k) is not None}
    return {**{k: v for k, v in data.items() if k not in keys}, "blend": blend}
