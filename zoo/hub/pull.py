"""Pulling: a Hub repo or a local folder with the same layout, one adapter or a whole zoo.

Everything is checked before anything is written: only safetensors, JSON, Markdown and PNG files are taken
(pickles can run code when loaded), no symbolic link may lead out of the pulled folder, the entry keeps only
the fields this project writes (each type-checked), the task spec must parse, and the adapter's base fingerprint
must match a base chosen here (`--base`, else this zoo's own base, else the embedded one), never one the pulled
metadata names. Each adapter lands through `Zoo.install`, so a refused or failed pull adds nothing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tasks import SPEC_FILE, TaskSpec
from zoo.base import DEFAULT_BASE, BaseRef, resolve_base
from zoo.errors import ZooError
from zoo.fsutil import check_name, existing, replace_dir
from zoo.hub.common import (ADAPTER_FILES, ENTRY_FILE, PULL_PATTERNS, SAFE_SUFFIXES, check_links, check_repo_id,
                            copy_safe_tree, endpoint, hidden, require_hub)
from zoo.manifest import BaseInfo, Entry
from zoo.store import PICKLE_SUFFIXES, Zoo, adapter_problems

OFFLINE_FIX = "a local folder laid out as the repo works offline (e.g. the output of `zoo push --dry-run --out DIR`)"
_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass
class PullItem:
    """One adapter ready to install: where its files are and the entry it will get."""

    name: str
    folder: Path
    entry: Entry


# where the files come from -------------------------------------------------------------------------------------
def fetch(source: str) -> tuple[Path, Path | None]:
    """A local folder as is, or a Hub snapshot holding only the safe file types; with the one place outside
    the folder its symbolic links may lead (the Hub cache's blobs), or None."""
    kind = existing(source)
    if kind == "dir":
        return Path(source).expanduser(), None
    if kind or source.startswith((".", "/", "~")):
        raise ZooError(f"{source[:200]!r} is not a folder; pass a folder laid out as a Hub repo, or USER/NAME")
    check_repo_id(source)
    return _download(source)


def _download(repo_id: str) -> tuple[Path, Path]:
    from huggingface_hub import HfApi, snapshot_download

    require_hub(f"cannot fetch {repo_id!r}", OFFLINE_FIX)
    try:
        check_safe_names(HfApi(endpoint=endpoint()).list_repo_files(repo_id), repo_id)
        snapshot = Path(snapshot_download(repo_id, allow_patterns=PULL_PATTERNS, endpoint=endpoint()))
    except ZooError:
        raise
    except Exception as e:  # not found, private, network: the repo cannot be had
        raise ZooError(f"could not download {repo_id!r} from the Hub ({type(e).__name__}); check the name "
                       f"and your login; {OFFLINE_FIX}") from None
    return snapshot, snapshot.parents[1] / "blobs"  # <cache>/models--u--n/snapshots/<rev> links into ../../blobs


def check_safe_names(names: list[str], what: str) -> None:
    """Refuse pickles outright (they can run code when loaded) and anything else that is not a known safe type."""
    visible = [n for n in names if not hidden(Path(n))]
    pickles = [n for n in visible if Path(n).suffix.lower() in PICKLE_SUFFIXES]
    if pickles:
        raise ZooError(f"{what} contains pickle-based files ({', '.join(sorted(pickles))}), which can run code when "
                       "loaded; nothing was added. Ask for a safetensors version")
    other = [n for n in visible if Path(n).suffix.lower() not in SAFE_SUFFIXES]
    if other:
        raise ZooError(f"{what} contains files of a type this project does not take ({', '.join(sorted(other))}); "
                       "only .safetensors, .json, .md and .png are pulled; nothing was added")


def check_safe_folder(folder: Path, what: str, allowed: Path | None = None) -> None:
    """No link out of the folder, no file of a type we do not take."""
    check_links(folder, what, allowed)
    check_safe_names([p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()], what)


# what the files say --------------------------------------------------------------------------------------------
def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ZooError(f"{what}: {path.name} is not valid JSON; the upload is damaged, nothing was added") from None


def raw_entry(folder: Path, what: str) -> dict:
    """The published manifest entry, or one rebuilt from `training.json` (which always holds the base hash)."""
    fname = next((f for f in (ENTRY_FILE, "training.json") if (folder / f).is_file()), None)
    if fname is None:
        raise ZooError(f"{what} is not an adapter-zoo adapter (no {ENTRY_FILE} or training.json with the base "
                       "fingerprint), so its base cannot be checked")
    data = _read_json(folder / fname, what)
    if not isinstance(data, dict):
        raise ZooError(f"{what}: {fname} is not a JSON object; the upload is damaged, nothing was added")
    if fname == ENTRY_FILE:
        return data
    return {"task": data.get("task"), "kind": "trained", "lora": data.get("lora") or {}, "train": data.get("train"),
            "base": {"hash": data.get("base"), "quantized": data.get("quantized")},
            "throughput": data.get("throughput")}


def pulled_entry(raw: dict, name: str, source: str, what: str) -> Entry:
    """Only the fields this project writes, each type-checked. Routes stay the user's choice: a pulled entry
    answers its own task only (a published `route_as` could take routes from the user's own adapters)."""
    try:
        entry = Entry.from_json({**raw, "name": name, "path": f"adapters/{name}"}, unknown="drop")
    except ZooError as e:
        raise ZooError(f"{what}: {e}; nothing was added") from None
    return entry.with_(pulled_from=source, repo=None, route_as=())


def check_spec(folder: Path, entry: Entry, what: str) -> TaskSpec | None:
    """The adapter's `task.json`, parsed and checked before anything is written (None for older uploads)."""
    if not (folder / SPEC_FILE).is_file():
        return None
    try:
        spec = TaskSpec.from_json(_read_json(folder / SPEC_FILE, what))
    except ZooError as e:
        raise ZooError(f"{what}: {SPEC_FILE} is not a valid task spec ({e}); nothing was added") from None
    if spec.name != entry.task:
        raise ZooError(f"{what}: {SPEC_FILE} describes task {spec.name!r} but {ENTRY_FILE} says {entry.task!r}; "
                       "the upload is inconsistent, nothing was added")
    if not _names_data_plainly(spec):
        raise ZooError(f"{what}: {SPEC_FILE} names its data by a path (in dataset, local_dir or ood); a published "
                       "task names a Hub dataset and plain folder names, nothing was added")
    return spec


def _names_data_plainly(spec: TaskSpec) -> bool:
    """`dataset` a Hub id or a folder name, `local_dir` and the out-of-domain data (`ood`) folder names: never
    a path the loaders would follow out of the data folder (`/home/...`, `~`, `..`)."""
    parts = spec.dataset.replace("\\", "/").split("/")
    ood = spec.ood or {}
    names = [spec.local_dir, ood.get("dataset"), ood.get("split")]
    return len(parts) <= 2 and all(_PLAIN.fullmatch(p) for p in parts) and \
        all(n is None or (isinstance(n, str) and _PLAIN.fullmatch(n)) for n in names)


@dataclass
class Bases:
    """The bases a pulled adapter may belong to, chosen here and never by what was pulled: `--base`, else the
    bases this zoo's adapters are on, else the embedded default. Resolved (and their layer shapes read) once each."""

    candidates: list[str]
    resolved: dict = field(default_factory=dict)
    shapes: dict = field(default_factory=dict)  # base folder -> its linear layers' (in, out)

    @classmethod
    def for_pull(cls, zoo: Zoo, base: str | None) -> "Bases":
        if base:
            return cls([base])
        return cls(sorted({e.base.id for e in zoo.entries().values() if e.base.id}) or [DEFAULT_BASE])

    def resolve(self, base_id: str) -> BaseRef:
        if base_id not in self.resolved:
            try:
                self.resolved[base_id] = resolve_base(base_id)
            except ZooError as e:
                raise ZooError(f"base {base_id!r} is not available here ({e}); pass --base with the local "
                               "model folder") from None
        return self.resolved[base_id]

    def dims(self, ref: BaseRef) -> dict:
        """The base's linear layers (name -> (in, out)), from a weightless skeleton built from its config."""
        if ref.path not in self.shapes:
            self.shapes[ref.path] = skeleton_dims(ref.path)
        return self.shapes[ref.path]

    def match(self, trained: BaseInfo, what: str) -> BaseRef:
        """The adapter's deltas only mean something on the base they were trained on (fingerprint)."""
        if not trained.hash:
            raise ZooError(f"{what} does not record its base fingerprint, so it cannot be checked; nothing was added")
        for candidate in self.candidates:
            if self.resolve(candidate).hash == trained.hash:
                return self.resolved[candidate]
        local = ", ".join(f"{r.id!r} ({r.hash})" for r in self.resolved.values())
        raise ZooError(f"{what} was trained on base {str(trained.id)[:80]!r} ({trained.hash[:80]}), not on the "
                       f"local base {local}; pass --base with the base it was trained on")


def skeleton_dims(path: Path) -> dict:
    """`linear_dims` of the model at `path` built on the meta device: shapes only, no weights read or allocated."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from zoo.adapter_config import linear_dims

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path, trust_remote_code=False))
    return linear_dims(model)


# planning ------------------------------------------------------------------------------------------------------
def plan_adapter(folder: Path, allowed: Path | None, name: str | None, source: str, bases: Bases) -> PullItem:
    """Check one adapter folder through and through; returns what `install` will add."""
    what = f"adapter at {source}"
    check_safe_folder(folder, what, allowed)
    raw = raw_entry(folder, what)
    name = _local_name(name, raw, source, what)
    _check_files(name, folder, None, what)  # config and tensors first: nothing is run or sized
    entry = pulled_entry(raw, name, source, what)
    check_spec(folder, entry, what)
    ref = bases.match(entry.base, what)
    _check_files(name, folder, bases.dims(ref), what)  # the tensors fit this base's layers
    return PullItem(name, folder, entry.with_(base=BaseInfo(ref.id, entry.base.hash, entry.base.quantized)))


def _local_name(name: str | None, raw: dict, source: str, what: str) -> str:
    """`--name`, else the published name (or the folder's), held to the one name rule before anything else."""
    if name:
        return check_name(name, "--name")
    try:
        return check_name(raw.get("name") or Path(source.rstrip("/")).name, "adapter name")
    except ZooError as e:
        raise ZooError(f"{what}: {e}; nothing was added. Pass --name NEW to pick a local name") from None


def _check_files(name: str, folder: Path, dims: dict | None, what: str) -> None:
    """`adapter_problems`, except for links: `check_safe_folder` has held every link inside the folder (or
    inside the Hub cache's blobs, whose snapshots are links by design), and the copy into the zoo follows them,
    so what lands there is a plain file."""
    links = {f.name for f in folder.iterdir() if f.is_symlink()}
    problems = [p for p in adapter_problems(name, folder, dims)
                if not any(p.what.startswith(f"{link} is a link") for link in links)]
    if problems:
        raise ZooError(f"{what}: {problems[0].what}; nothing was added")


def plan_pull(zoo: Zoo, source: str, name: str | None = None,
              base: str | None = None) -> tuple[list[PullItem], Path | None]:
    """Everything checked before anything is written: the adapters to add, and the router folder (whole zoos)."""
    folder, allowed = fetch(source)
    bases = Bases.for_pull(zoo, base)
    if (folder / "adapter_config.json").is_file():
        return [plan_adapter(folder, allowed, name, source, bases)], None
    check_safe_folder(folder, source, allowed)
    if not (folder / "zoo.json").is_file():
        raise ZooError(f"{source} is neither an adapter (no adapter_config.json) nor a zoo (no zoo.json)")
    if name:
        raise ZooError("--name renames a single adapter; a whole zoo keeps its adapters' names")
    items = []
    for member, repo in _zoo_index(folder, source).items():
        where, member_allowed, label = _member_source(folder, allowed, source, member, repo)
        items.append(plan_adapter(where, member_allowed, member, label, bases))
    return items, (folder / "router" if (folder / "router").is_dir() else None)


def _zoo_index(folder: Path, source: str) -> dict[str, str | None]:
    """Adapter name -> its own repo (or None when it sits in `adapters/<name>`), from the zoo's `zoo.json`."""
    data = _read_json(folder / "zoo.json", source)
    adapters = data.get("adapters") if isinstance(data, dict) else None
    if not isinstance(adapters, dict) or not all(isinstance(e, dict) for e in adapters.values()):
        raise ZooError(f"{source}/zoo.json is not a zoo manifest; the upload is damaged, nothing was added")
    return {check_name(n, "adapter name"): e.get("repo") for n, e in adapters.items()}


def _member_source(folder: Path, allowed: Path | None, source: str, name: str, repo) -> tuple[Path, Path | None, str]:
    """Inside the zoo repo (`adapters/<name>`), or its own repo; for a local zoo folder, a sibling folder."""
    inner = folder / "adapters" / name
    if inner.is_dir():
        return inner, allowed, f"{source}/adapters/{name}"
    if not repo:
        raise ZooError(f"{source}: adapter {name!r} is neither in adapters/{name} nor has a 'repo'")
    check_repo_id(repo)
    if existing(source) == "dir":  # a local zoo folder: its adapters' repos were written next to it
        sibling = folder.parent / repo.split("/")[1]
        if not sibling.is_dir():
            raise ZooError(f"{source}: adapter {name!r} lives in {repo}; expected it next to the zoo at {sibling}")
        return sibling, None, repo
    return (*fetch(repo), repo)


# installing ----------------------------------------------------------------------------------------------------
def install(zoo: Zoo, items: list[PullItem], router: Path | None, force: bool) -> bool:
    """Add each adapter through `Zoo.install`; the router only into a zoo without one (or with `force`).
    Returns whether the router was installed."""
    known = set(zoo.entries())
    taken = [i.name for i in items if i.name in known or zoo.adapter_dir(i.name).exists()]
    if taken and not force:
        raise ZooError(f"{', '.join(taken)} already in {zoo.root}; pass --force to replace, or --name NEW")
    for item in items:
        staged = zoo.staging_dir(item.name)
        staged.mkdir(parents=True)
        try:
            for fname in ADAPTER_FILES:
                if (item.folder / fname).is_file():
                    shutil.copyfile(item.folder / fname, staged / fname)  # follows the Hub cache's own links
            zoo.install(staged, item.entry)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
    if router is None or (zoo.router_dir.is_dir() and not force):
        return False
    _install_router(zoo, router)
    return True


def _install_router(zoo: Zoo, router: Path) -> None:
    """The router is no adapter (no entry): its safe files are staged and swapped in under the zoo's lock."""
    staged = zoo.root / f".router.staging-{os.getpid()}"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    copy_safe_tree(router, staged)
    with zoo.lock():
        replace_dir(staged, zoo.router_dir)
