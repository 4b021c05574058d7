"""Writing a blend as a new zoo adapter: the parents on a fresh fp32 base, PEFT's blend saved as one flat
folder with its task spec and lineage, installed with its manifest entry."""

from __future__ import annotations

import json
import shutil
import warnings

from zoo.combine.plan import plan
from zoo.combine.recipe import Blend, apply_blend
from zoo.errors import ZooError
from zoo.fsutil import atomic_write_json, check_name
from zoo.manifest import BlendInfo, Entry

NEW = "blend"  # PEFT's name for the blend while it is built
LINEAGE_FILE = "combination.json"


def check_target_name(zoo, name: str, parents, force: bool) -> None:
    check_name(name, "adapter name")
    if name in parents:
        raise ZooError(f"{name!r} is one of the adapters being combined; pick another --name")
    exists = name in zoo.entries() or zoo.adapter_dir(name).exists()
    if exists and not force:
        raise ZooError(f"an adapter named {name!r} already exists; pick another --name or pass --force")


def load_parents(zoo, ref, parents: tuple[str, ...]):
    """The parents on one fresh fp32 base (CPU), as PEFT adapters p0, p1, ... in order."""
    from peft import PeftModel

    from zoo.merge import load_fp32

    base = load_fp32(ref.path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(base, str(zoo.adapter_dir(parents[0])), adapter_name="p0")
        for i, p in enumerate(parents[1:], 1):
            model.load_adapter(str(zoo.adapter_dir(p)), adapter_name=f"p{i}")
    return model


def route_specs(parent_specs: dict, route_as: list[str] | None) -> list:
    """The task specs a blend is told to answer: a parent's own task (task files included), else a registered one."""
    from tasks import get_task

    own = {s.name: s for s in parent_specs.values()}
    return [own[t] if t in own else get_task(t) for t in route_as or []]


def write_blend(zoo, ref, blend: Blend, folder) -> dict:
    """Build the blend in fp32 and save it as a flat PEFT folder; returns its adapter config."""
    from zoo.train import save_adapter

    model = load_parents(zoo, ref, blend.parents)
    apply_blend(model, [f"p{i}" for i in range(len(blend.parents))], blend, NEW)
    save_adapter(model, NEW, folder)
    return json.loads((folder / "adapter_config.json").read_text())


def combine(zoo, blend: Blend, name: str, route_as: list[str] | None = None, force: bool = False) -> Entry:
    """Build `blend` as a new zoo adapter `name`; it answers (and is evaluated on) the task of `route_as[0]`,
    else its first parent's. Returns its manifest entry."""
    from tasks import save_spec, spec_for_adapter

    check_target_name(zoo, name, blend.parents, force)
    blend, entries, ref = plan(zoo, blend)
    parent_specs = {p: spec_for_adapter(zoo, p) for p in blend.parents}
    routes = route_specs(parent_specs, route_as)
    staged = zoo.staging_dir(name)
    try:
        cfg = write_blend(zoo, ref, blend, staged)
        spec = routes[0] if routes else parent_specs[blend.parents[0]]
        save_spec(staged, spec)
        entry = combined_entry(name, blend, entries[blend.parents[0]].base, parent_specs, cfg, spec.name,
                               tuple(s.name for s in routes))
        data = entry.to_json()
        atomic_write_json(staged / LINEAGE_FILE, {**data["blend"], "base": data["base"]})
        check_target_name(zoo, name, blend.parents, force)  # another run may have added it meanwhile
        zoo.install(staged, entry)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return entry


def combined_entry(name: str, blend: Blend, base, parent_specs: dict, cfg: dict, task: str,
                   route_as: tuple[str, ...]) -> Entry:
    """The manifest entry of a blend: its LoRA shape as saved, its recipe and lineage, the parents' base."""
    from zoo.store import now_iso

    layers, targets = cfg.get("layers_to_transform"), cfg["target_modules"]
    lora = {"r": cfg["r"], "alpha": cfg["lora_alpha"], "dropout": cfg.get("lora_dropout", 0.0),
            "target_modules": sorted(targets) if isinstance(targets, list) else targets,
            "layers": None if layers is None else len(layers if isinstance(layers, list) else [layers]),
            "use_dora": False}
    info = BlendInfo(blend.parents, blend.weights, blend.method, blend.effective_density, blend.svd_rank,
                     blend.effective_seed, {p: s.name for p, s in parent_specs.items()})
    return Entry(name=name, task=task, kind="combined", base=base, lora=lora, path=f"adapters/{name}",
                 created=now_iso(), blend=info, route_as=route_as)
