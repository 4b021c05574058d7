"""The router of a zoo: fit it from the zoo's tasks, store it in `Zoo.router_dir`, load it back, map routes
to adapters.

Storage runs no code when loaded: `router.json` (format version, parameters, routes, the tasks it was fit
for) and `router.safetensors` (the weights). A pickle-like file in the folder makes loading refuse.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings

from router.model import NONE, Router
from zoo.errors import ZooError
from zoo.fsutil import atomic_write_bytes, atomic_write_json, replace_dir
from zoo.store import PICKLE_SUFFIXES, now_iso

FORMAT = "adapter-zoo-router"
VERSION = 3  # 2: temperature, six shape features; 3: the embedding reads the request outside the pasted input
META_FILE = "router.json"
WEIGHTS_FILE = "router.safetensors"
RETRAIN = "run `zoo route --train` to fit it again"


# routes <-> adapters ------------------------------------------------------------------------------
def zoo_routes(zoo) -> set[str]:
    """Every route some adapter of the zoo serves: its task, and whatever its entry lists in `route_as`."""
    if not zoo.manifest_path.exists():
        return set()
    routes: set[str] = set()
    for entry in zoo.entries().values():
        routes.update(entry.routes)
    return routes


def adapter_map(zoo) -> dict[str, str]:
    """route -> adapter name. An entry listing the route in `route_as` wins (an explicit choice), then a
    trained adapter of that task; among equals the healthy, then the newest."""
    entries = zoo.entries() if zoo.manifest_path.exists() else {}
    healthy = None
    out: dict[str, str] = {}
    for route in sorted(zoo_routes(zoo)):
        explicit = [n for n, e in entries.items() if route in e.route_as]
        candidates = explicit or [n for n, e in entries.items() if e.task == route]
        if len(candidates) > 1:
            healthy = set(zoo.healthy()) if healthy is None else healthy
            candidates = [n for n in candidates if n in healthy] or candidates
        candidates.sort(key=lambda n: (entries[n].kind == "trained", entries[n].created or "", n))
        out[route] = candidates[-1]
    return out


def route_to_adapter(zoo, route: str) -> str | None:
    """The adapter serving `route`, or None (for `none`, or a route no adapter of the zoo serves)."""
    if route == NONE:
        return None
    return adapter_map(zoo).get(route)


# fit ---------------------------------------------------------------------------------------------
def fit_router(zoo, data_dir=None, seed: int = 0, tasks: list[str] | None = None, rows_per_task: int = 300,
               calibrate: bool = True, **params) -> Router:
    """Fit a router for `tasks` (default: the tasks the zoo's adapters serve), calibrate it, save it in the
    zoo, return it.

    `params` go to `Router` (e.g. `features="ngrams"` for a fit without the embedding model); a `threshold`
    given there is kept, else calibration chooses it (`router.calibration`)."""
    specs = _task_specs(zoo, tasks if tasks is not None else sorted(zoo_routes(zoo)), explicit=tasks is not None)
    router, training = fit_specs(specs, data_dir, seed, rows_per_task, calibrate, **params)
    save_router(zoo, router, training)
    return router


def fit_specs(specs: list, data_dir=None, seed: int = 0, rows_per_task: int = 300, calibrate: bool = True,
              augment: tuple[str, ...] | None = None, **params) -> tuple[Router, dict]:
    """Fit (and calibrate) a router for task specs without touching a zoo: (router, training facts).
    `augment`: the training set's augmentations (default `router.data.AUGMENT`)."""
    from router.calibration import calibrate as fit_calibration
    from router.data import AUGMENT, calibration_set, split_rows, training_set

    t0 = time.perf_counter()
    split = {s.name: split_rows(s, data_dir, rows_per_task, seed) for s in specs}
    augment = AUGMENT if augment is None else tuple(augment)
    prompts, labels = training_set(specs, seed=seed, rows={k: fit for k, (fit, _) in split.items()}, augment=augment)
    router = Router(seed=seed, **params).fit(prompts, labels)
    training = {"prompts_per_route": {r: labels.count(r) for r in sorted(set(labels))},
                "rows_per_task": rows_per_task, "seed": seed, "augment": list(augment)}
    if calibrate:
        cal_prompts, cal_labels = calibration_set(specs, {k: cal for k, (_, cal) in split.items()}, seed)
        training["calibration"] = fit_calibration(router, cal_prompts, cal_labels, keep_threshold="threshold" in params)
    training["fit_seconds"] = round(time.perf_counter() - t0, 2)
    return router, training


def _task_specs(zoo, names: list[str], explicit: bool) -> list:
    """Each route's task spec: registered, or saved with the adapter that serves the route (a task file's task
    needs no registry in this process)."""
    from tasks import all_tasks, get_task, spec_for_adapter

    if not names:
        raise ZooError("no tasks to route to: train an adapter first (`zoo train TASK`) "
                       "or name the tasks (`zoo route --train --tasks sentiment qa`)")
    known, mapping, specs = all_tasks(), adapter_map(zoo), []
    for name in names:
        if name in known or (explicit and name not in mapping):
            specs.append(known.get(name) or get_task(name))
            continue
        try:
            specs.append(spec_for_adapter(zoo, mapping[name]))
        except ZooError as e:
            warnings.warn(f"router: skipping task {name!r}: {e}", stacklevel=3)
    if not specs:
        raise ZooError(f"none of the zoo's tasks {names} has a usable spec; retrain its adapters")
    return specs


# save / load ---------------------------------------------------------------------------------------
def save_router(zoo, router: Router, training: dict | None = None) -> None:
    """Write JSON + safetensors into a staging folder, then swap it in: a reader never sees half a router."""
    import numpy as np
    from safetensors.numpy import save

    # C order: LogisticRegression's coef_ is Fortran-ordered and safetensors writes the raw buffer
    arrays = {"coef": np.ascontiguousarray(router.coef_), "intercept": np.ascontiguousarray(router.intercept_)}
    blob = save(arrays)
    routes = [str(c) for c in router.classes_]
    meta = {"format": FORMAT, "version": VERSION, "created": now_iso(),
            "tasks": [r for r in routes if r != NONE], "classes": routes,
            "served": sorted(set(routes) & zoo_routes(zoo)), "threshold": router.threshold,
            "temperature": float(getattr(router, "temperature_", 1.0)),
            "params": router.get_params(), "weights_sha256": hashlib.sha256(blob).hexdigest(),
            "training": training or {}}
    staged = zoo.root / ".staging" / f"router-{os.getpid()}-{time.time_ns()}"
    try:
        atomic_write_bytes(staged / WEIGHTS_FILE, blob)
        atomic_write_json(staged / META_FILE, meta)
        with zoo.lock():
            replace_dir(staged, zoo.router_dir)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def load_router(zoo, check_tasks: bool = True) -> Router:
    """The zoo's router. Refuses pickle files, unknown formats, damaged weights and routers fit for tasks
    the zoo no longer serves."""
    folder = zoo.router_dir
    refuse_pickles(folder)
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise ZooError(f"no router in {zoo.root}: run `zoo route --train` to fit one, "
                       "or pick the adapter yourself with --adapter NAME")
    meta = _read_meta(meta_path)
    if check_tasks:
        gone = sorted(set(meta.get("served", [])) - zoo_routes(zoo))
        if gone:
            raise ZooError(f"the router was fit for task(s) {', '.join(gone)} that no adapter of {zoo.root} "
                           f"serves any more; {RETRAIN}")
    try:
        router = Router(**meta["params"])
    except TypeError as e:
        raise ZooError(f"{meta_path} has parameters this version does not know ({e}); {RETRAIN}") from None
    router.classes_, router.coef_, router.intercept_ = _read_weights(folder / WEIGHTS_FILE, meta, router.feature_dim())
    router.temperature_ = _temperature(meta, meta_path)
    _warn_unknown_tasks(zoo, router)
    return router


def _warn_unknown_tasks(zoo, router: Router) -> None:
    """Adapters for tasks trained after the router: it still works, it just never picks them."""
    new = sorted(zoo_routes(zoo) - {str(c) for c in router.classes_})
    if new:
        warnings.warn(f"the router does not know task(s) {', '.join(new)} yet; {RETRAIN}", stacklevel=3)


def refuse_pickles(folder) -> None:
    """Pickle (and torch.save zip) files can run code when loaded: their mere presence is an error."""
    if not folder.is_dir():
        return
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        with open(path, "rb") as f:
            head = f.read(2)
        pickled = head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
        if path.suffix in PICKLE_SUFFIXES or pickled or head == b"PK":
            raise ZooError(f"{path} is a pickle-based file, which this project never loads; delete it and {RETRAIN}")


def _read_meta(path) -> dict:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ZooError(f"{path} is not valid JSON ({type(e).__name__}); {RETRAIN}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ZooError(f"{path} is not an adapter-zoo router; {RETRAIN}")
    if meta.get("version") != VERSION:
        raise ZooError(f"{path} has router format version {meta.get('version')}, this zoo reads {VERSION}; {RETRAIN}")
    missing = {"classes", "params", "weights_sha256"} - set(meta)
    if missing:
        raise ZooError(f"{path} lacks {sorted(missing)}; {RETRAIN}")
    return meta


def _temperature(meta: dict, path) -> float:
    """Routers saved before calibration have none: 1.0 is the uncalibrated softmax."""
    t = meta.get("temperature", 1.0)
    if not isinstance(t, (int, float)) or isinstance(t, bool) or not 0.01 <= t <= 100:
        raise ZooError(f"{path} has temperature {t!r}, not a number between 0.01 and 100; {RETRAIN}")
    return float(t)


def _read_weights(path, meta: dict, dim: int):
    import numpy as np
    from safetensors.numpy import load

    try:
        blob = path.read_bytes()
    except OSError:
        raise ZooError(f"{path} is missing; {RETRAIN}") from None
    if hashlib.sha256(blob).hexdigest() != meta["weights_sha256"]:
        raise ZooError(f"{path} does not match router.json (damaged or from another fit); {RETRAIN}")
    arrays = load(blob)
    coef, intercept = arrays.get("coef"), arrays.get("intercept")
    classes = np.asarray(meta["classes"])
    if coef is None or intercept is None or coef.shape != (len(classes), dim) or intercept.shape != (len(classes),):
        raise ZooError(f"{path} has weights that do not fit the router's {len(classes)} routes; {RETRAIN}")
    return classes, coef, intercept
