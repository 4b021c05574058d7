"""Which model of the upstream engine answers a request of `zoo serve --upstream`: the names file `zoo export`
wrote for the engine (its routes.json), or else the zoo's own adapter names. The router (the only model in this
process) picks the route; this maps it onto what the engine serves.

The names file is JSON; what is read of it (other keys are ignored; a flat `{route: served}` object is `routes`):

    "base"      the base's served model name (`zoo export vllm`); an object (`zoo export gguf`) or none: `base`
    "routes"    router route -> served model; `none` (or a null target) is the base
    "adapters"  the served adapter names (default: the routes' targets), or for llama-server (`zoo export gguf`)
                {name: {"lora_id": index of its --lora flag, ...}}
    "engine"    "llama-server" or "sglang" when written for one (a llama-server file needs --upstream-kind
                llama-server); SGLang's served "BASE:NAME" are offered to clients as NAME

Without a file: the zoo's healthy adapters under their own names, `base` for the base, the zoo's route -> adapter
map, and for llama-server the LoRA indexes its `GET /lora-adapters` lists (a file named `<adapter>.gguf`).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from zoo.api.protocol import ApiError
from zoo.api.serving import AUTO, BASE, unknown_model
from zoo.errors import ZooError

log = logging.getLogger("zoo.serve")
NONE_ROUTE = "none"
MAX_FILE_BYTES = 1 << 20
_SERVED = re.compile(r"[\w.:/@+-]{1,128}")  # a served model name as engines spell them (Hub ids included)
_SUFFIXES = ("-lora", "_lora", ".lora", "-adapter", "-f32", "-f16", "-bf16", "-q8_0")


@dataclass
class Names:
    base: str                      # the base's served name
    adapters: list[str]            # the adapter names clients see
    routes: dict[str, str]         # router route -> an adapter of `adapters`, or BASE
    lora: dict[str, int] | None    # llama-server: adapter -> LoRA index (None: ask the engine)
    served_as: dict[str, str] = field(default_factory=dict)  # adapter -> the engine's name, where they differ

    def served(self, model: str) -> str:
        """The name the engine knows for a client's `model` (an adapter or `base`); 404 for anything else."""
        if model == BASE:
            return self.base
        if model in self.adapters:
            return self.served_as.get(model, model)
        raise unknown_model(model)

    def for_route(self, route: str) -> str:
        """The client-visible model that answers a route: its adapter when the engine serves it, else `base`."""
        target = self.routes.get(route, BASE)
        return target if target in self.adapters else BASE


def load_names(zoo, names_file: str | None, kind: str) -> Names:
    """The names the engine serves (a bad file is a ZooError that says what is wrong with it)."""
    spec = read_names_file(names_file) if names_file else {}
    if spec.get("engine") == "llama-server" and kind != "llama-server":
        raise ZooError(f"{names_file} was written for llama-server: add --upstream-kind llama-server")
    if kind == "llama-server" and names_file and spec.get("lora") is None:
        raise ZooError(f"{names_file} has no LoRA ids (`zoo export gguf` writes them): give its routes.json")
    base = spec.get("base") or BASE
    if "routes" in spec:
        routes = spec["routes"]
    else:
        from router import adapter_map

        routes = adapter_map(zoo) if zoo.manifest_path.exists() else {}
    if "adapters" in spec:
        adapters = spec["adapters"]
    elif names_file:
        adapters = sorted({t for r, t in routes.items() if t and t != base and r != NONE_ROUTE})
    else:
        adapters = zoo.healthy() if zoo.manifest_path.exists() else []
    shown = {a: a.removeprefix(f"{base}:") if spec.get("engine") == "sglang" else a for a in adapters}
    routes = {r: (BASE if not t or t == base or r == NONE_ROUTE else shown.get(t, t)) for r, t in routes.items()}
    served_as = {c: a for a, c in shown.items() if c != a}
    clients = [c for c in shown.values() if c not in (AUTO, BASE)]
    return Names(base=base, adapters=clients, routes=routes, lora=spec.get("lora"), served_as=served_as)


def read_names_file(path: str) -> dict:
    """The names file, checked: names an engine could serve, LoRA indexes as integers."""
    file = Path(path)
    try:
        if file.stat().st_size > MAX_FILE_BYTES:
            raise ZooError(f"{path}: over {MAX_FILE_BYTES} bytes, not a names file")
        raw = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ZooError(f"cannot read the names file {path}: {e}") from None
    if not isinstance(raw, dict):
        raise ZooError(f"{path}: expected a JSON object of routes and names")
    if not {"base", "routes", "adapters"} & set(raw):
        raw = {"routes": raw}  # a flat {route: served} map
    out = {"engine": raw.get("engine") if isinstance(raw.get("engine"), str) else None}
    if isinstance(raw.get("base"), str):
        out["base"] = _name(raw["base"], path, "base")
    if "routes" in raw:
        routes = _mapping(raw["routes"], path, "routes")
        out["routes"] = {_name(r, path, "a route"): None if t is None else _name(t, path, f"route {r}")
                         for r, t in routes.items()}
    adapters = raw.get("adapters")
    if isinstance(adapters, dict):  # `zoo export gguf`: {name: {"lora_id": i, ...}}
        ids = {_name(a, path, "an adapter"): info.get("lora_id") if isinstance(info, dict) else None
               for a, info in adapters.items()}
        if any(type(i) is not int or i < 0 for i in ids.values()):
            raise ZooError(f"{path}: each adapter needs its \"lora_id\" (0, 1, ...: the order of --lora)")
        out["adapters"], out["lora"] = list(ids), ids
    elif adapters is not None:
        if not isinstance(adapters, list):
            raise ZooError(f"{path}: \"adapters\" must be a list of served names")
        out["adapters"] = [_name(a, path, "an adapter") for a in adapters]
    return out


def _mapping(value, path: str, key: str) -> dict:
    if not isinstance(value, dict):
        raise ZooError(f"{path}: \"{key}\" must be a JSON object")
    return value


def _name(value, path: str, what: str) -> str:
    if not isinstance(value, str) or not _SERVED.fullmatch(value):
        raise ZooError(f"{path}: {what} must be a model name (letters, digits, . _ - : / @ +; at most 128), "
                       f"not {str(value)[:60]!r}")
    return value


def lora_ids(listing, adapters: list[str]) -> dict[str, int]:
    """Adapter -> LoRA index from llama-server's `GET /lora-adapters` (`[{"id", "path", "scale"}, ...]`): the
    adapter whose name is the file's stem (a `-lora`/`-f32`-like suffix allowed)."""
    if not isinstance(listing, list):
        raise ApiError(502, "the upstream's /lora-adapters did not answer a list: is it a llama-server?",
                       type="server_error", code="upstream_error")
    found: dict[str, int] = {}
    for item in listing:
        if not isinstance(item, dict) or type(item.get("id")) is not int or not isinstance(item.get("path"), str):
            continue
        stem = PurePath(item["path"]).name.removesuffix(".gguf")
        for name in adapters:
            if stem == name or any(stem == name + s for s in _SUFFIXES):
                found.setdefault(name, item["id"])
    return found


def load_router(zoo):
    """The zoo's router, or None (then there is no `auto`): a missing or stale router is not fatal."""
    if not (zoo.router_dir / "router.json").exists():
        return None
    from router import load_router as load

    try:
        return load(zoo)
    except ZooError as e:
        log.warning("zoo serve: no `auto` model: %s", e)
        return None
