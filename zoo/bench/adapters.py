"""The bench's own work zoo: the adapters it trains, the user's it borrows, and random ones to fill up.

Every adapter enters through `Zoo.install(staged, entry)` with a typed `Entry` and its task's `task.json`, as
`zoo train` does, so the runtime reads them exactly as it reads a user's adapters.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

from zoo.bench.config import ADAPTER_TASKS
from zoo.errors import ZooError
from zoo.manifest import BaseInfo, Entry


def _entry(name: str, spec, kind: str, base: BaseInfo, lora: dict) -> Entry:
    from zoo.store import now_iso

    return Entry(name=name, task=spec.name, kind=kind, base=base, lora=lora, path=f"adapters/{name}",
                 created=now_iso())


def install_reference(zoo, staged: Path, name: str, spec, ref, lora: dict) -> Entry:
    """Record an adapter the reference recipe saved in `staged` (always on the NF4 base `ref`)."""
    from tasks import save_spec

    save_spec(staged, spec)
    entry = _entry(name, spec, "bench-reference", BaseInfo(ref.id, ref.hash, True), lora)
    zoo.install(staged, entry)
    return entry


def copy_zoo_adapters(src, dst, ref, limit: int) -> list[str]:
    """Up to `limit` of the user's healthy adapters on this base, copied into the bench's own zoo (the user's
    stays untouched); names the bench trained itself are skipped."""
    names: list[str] = []
    if src is None or not src.manifest_path.exists():
        return names
    taken = set(dst.entries())
    for name in sorted(src.entries()):
        if len(names) >= limit:
            break
        if name in taken:
            continue
        try:
            entry = src.require_healthy(name, ref)
        except ZooError:
            continue  # damaged, or trained on another base
        staged = dst.staging_dir(name)
        shutil.copytree(src.adapter_dir(name), staged)
        dst.install(staged, entry)
        names.append(name)
    return names


def make_random_adapters(zoo, loaded, count: int, seed: int = 0) -> list[str]:
    """`count` LoRA adapters of the built-in tasks' default shapes with random weights (B is non-zero, so
    they change outputs like trained ones), for when the zoo has too few real ones."""
    from tasks import get_task

    names = []
    for k, task in enumerate(ADAPTER_TASKS):
        mine = [f"random-{task}-{i}" for i in range(k, count, len(ADAPTER_TASKS))]
        if mine:
            _random_for_task(zoo, loaded, get_task(task), mine, seed + 1000 * k)
            names += mine
    return sorted(names, key=lambda n: int(n.rsplit("-", 1)[1]))


def _random_for_task(zoo, loaded, spec, names: list[str], seed: int) -> None:
    """One LoRA of `spec`'s shape on the shared base, re-drawn and installed under each of `names`."""
    import torch

    from tasks import save_spec
    from zoo.train import attach_adapter, save_adapter

    with loaded.lock:
        model = attach_adapter(loaded.model, spec.lora, "random")
        try:
            for i, name in enumerate(names):
                torch.manual_seed(seed + i)
                for n, p in model.named_parameters():
                    if "lora_B" in n:
                        p.data.normal_(0, 0.02)
                staged = zoo.staging_dir(name)
                save_adapter(model, "random", staged)
                save_spec(staged, spec)
                zoo.install(staged, _entry(name, spec, "random", BaseInfo.of(loaded), asdict(spec.lora)))
        finally:
            model.unload()  # give the shared base back without LoRA layers


def prepare_adapters(work, user_zoo, loaded, total: int) -> dict:
    """Adapters for the inference and memory sections: the user's, then those trained here, then random."""
    trained = sorted(work.entries(), key=lambda n: (not n.startswith("ours-"), n))
    from_zoo = copy_zoo_adapters(user_zoo, work, loaded.ref, max(0, total - len(trained)))
    random_ = make_random_adapters(work, loaded, max(0, total - len(trained) - len(from_zoo)))
    return {"from_zoo": from_zoo, "trained_here": trained, "random": random_,
            "order": from_zoo + trained + random_}
