"""Publishing: one model repo per adapter (PEFT files + `training.json` + the task spec + `zoo_entry.json` + a
model card + the eval plot), or a whole zoo (manifest + router, adapters in their own repos or in
`adapters/<name>/` of one repo). Every repo is first written as a plain folder, so `--dry-run --out DIR` shows
exactly what would be uploaded and `zoo pull DIR/<repo>` loads it back offline."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

from tasks import SPEC_FILE, TaskSpec, save_spec, spec_for_adapter
from zoo.errors import ZooError
from zoo.fsutil import atomic_write_json, atomic_write_text, replace_dir
from zoo.hub.cards import build_card, hub_dataset, zoo_card
from zoo.hub.common import (ADAPTER_FILES, ENTRY_FILE, PLOT_FILE, check_links, check_repo_id, copy_safe_tree,
                            endpoint, hub_base_id, public_base_id, require_hub)
from zoo.manifest import Entry
from zoo.outdir import MARKER, check_replaceable, mark
from zoo.store import Zoo

# Entry fields that only make sense on the machine that holds the adapter.
LOCAL_FIELDS = ("path", "pulled_from")


@dataclass
class RepoFolder:
    """One repo to upload: its id, the folder holding exactly its files, and the adapters it carries."""

    repo_id: str
    folder: Path
    adapters: list[str] = field(default_factory=list)

    def files(self) -> list[str]:
        """What the repo gets: every file but the output marker (a local note, never uploaded)."""
        return sorted(p.relative_to(self.folder).as_posix() for p in self.folder.rglob("*")
                      if p.is_file() and p.name != MARKER)


# what gets published -------------------------------------------------------------------------------------------
def public_entry(entry: Entry) -> dict:
    """The manifest entry as published (`Entry.to_json()`): local-only fields dropped, local paths shortened."""
    out = entry.to_json()
    for key in LOCAL_FIELDS:
        out.pop(key, None)
    out["base"] = {**out["base"], "id": public_base_id(entry.base.id), "hub_id": hub_base_id(entry.base.id)}
    source = (entry.data or {}).get("source")
    if isinstance(source, str) and not source.startswith("hub:"):
        out["data"] = {**out["data"], "source": f"local:{Path(source).parent.name}/{Path(source).name}"}
    return out


def public_spec(spec: TaskSpec) -> TaskSpec:
    """A task whose data is a local folder is published by the folder's name (found again under ZOO_DATA_DIR):
    no home directories on the Hub."""
    if hub_dataset(spec):
        return spec
    folder = Path(spec.dataset).expanduser().name
    return replace(spec, dataset=folder, local_dir=spec.local_dir or folder)


def spec_or_none(zoo: Zoo, name: str) -> TaskSpec | None:
    """The adapter's task, or None when neither its folder nor this machine's registry knows it."""
    try:
        return spec_for_adapter(zoo, name)
    except ZooError:
        return None


def find_plot(zoo: Zoo, name: str, task: str) -> Path | None:
    """`zoo eval` writes `reports/<adapter>.png`; older reports were named after the task."""
    for stem in (name, task):
        if (zoo.reports_dir / f"{stem}.png").is_file():
            return zoo.reports_dir / f"{stem}.png"
    return None


# folders to upload ---------------------------------------------------------------------------------------------
def write_adapter_folder(zoo: Zoo, name: str, dest: Path, repo_id: str, subfolder: str | None = None) -> None:
    """PEFT files + task spec + entry + card (+ plot) for one healthy adapter, written into `dest`."""
    entry = zoo.require_healthy(name)
    src = zoo.adapter_dir(name)
    check_links(src, f"cannot publish {name!r}")
    spec = spec_or_none(zoo, name)
    dest.mkdir(parents=True, exist_ok=True)
    for fname in ADAPTER_FILES:
        if fname != SPEC_FILE and (src / fname).is_file():
            shutil.copyfile(src / fname, dest / fname)
    if spec is not None:
        save_spec(dest, public_spec(spec))
    _publish_adapter_config(dest / "adapter_config.json", entry)
    plot = find_plot(zoo, name, entry.task)
    if plot:
        shutil.copyfile(plot, dest / PLOT_FILE)
    atomic_write_json(dest / ENTRY_FILE, public_entry(entry))
    card = build_card(entry, spec, repo_id, has_plot=plot is not None, subfolder=subfolder)
    atomic_write_text(dest / "README.md", str(card))


def _publish_adapter_config(path: Path, entry: Entry) -> None:
    """PEFT records the local base path; on the Hub it must name the base repo so `AutoPeftModel...` works."""
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = hub_base_id(entry.base.id) or public_base_id(entry.base.id)
    atomic_write_json(path, config)


def write_zoo_folder(zoo: Zoo, names: list[str], dest: Path, repo_id: str, adapter_repos: dict[str, str] | None):
    """A whole zoo: manifest + router + README; adapters inside (`adapter_repos` None) or referenced by repo id."""
    index = {}
    for name in names:
        if adapter_repos is None:
            write_adapter_folder(zoo, name, dest / "adapters" / name, repo_id, subfolder=f"adapters/{name}")
            index[name] = {**public_entry(zoo.get(name)), "path": f"adapters/{name}"}
        else:
            index[name] = {**public_entry(zoo.get(name)), "repo": adapter_repos[name]}
    atomic_write_json(dest / "zoo.json", {"version": zoo.read().get("version", 1), "adapters": index})
    copy_safe_tree(zoo.router_dir, dest / "router")
    entries = {n: zoo.get(n) for n in names}
    specs = {n: spec_or_none(zoo, n) for n in names}
    card = zoo_card(repo_id, entries, specs, adapter_repos, (dest / "router").is_dir())
    atomic_write_text(dest / "README.md", str(card))


def stage_push(zoo: Zoo, names: list[str], repo_id: str, out: Path, whole_zoo: bool,
               single_repo: bool) -> list[RepoFolder]:
    """Write every repo folder into `out/<repo name>` (staged, then renamed); adapters first, the index last.
    An existing `out/<repo name>` is replaced only if an earlier push wrote it (`zoo.outdir`): all are checked
    before anything is written."""
    check_repo_id(repo_id)
    plans = _plans(zoo, names, repo_id, whole_zoo, single_repo)
    for repo, _, _ in plans:
        check_replaceable(out / repo.split("/")[1], "zoo push", "pick another --out (or --repo)")
    return [_stage(out, repo, members, write) for repo, members, write in plans]


def _plans(zoo: Zoo, names: list[str], repo_id: str, whole_zoo: bool, single_repo: bool) -> list[tuple]:
    """(repo id, adapters it carries, function writing its folder) for every repo to build."""
    if not whole_zoo:
        return [(repo_id, names, lambda d: write_adapter_folder(zoo, names[0], d, repo_id))]
    if single_repo:
        return [(repo_id, names, lambda d: write_zoo_folder(zoo, names, d, repo_id, None))]
    repos = {n: check_repo_id(f"{repo_id}-{n}") for n in names}
    plans = [(r, [n], lambda d, n=n, r=r: write_adapter_folder(zoo, n, d, r)) for n, r in repos.items()]
    return plans + [(repo_id, [], lambda d: write_zoo_folder(zoo, names, d, repo_id, repos))]


def _stage(out: Path, repo_id: str, names: list[str], write) -> RepoFolder:
    final = out / repo_id.split("/")[1]
    staged = out / f".{final.name}.staging-{os.getpid()}"
    shutil.rmtree(staged, ignore_errors=True)
    try:
        write(staged)
        mark(staged, "zoo push")
        check_replaceable(final, "zoo push", "pick another --out (or --repo)")  # appeared while we worked
        replace_dir(staged, final)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return RepoFolder(repo_id, final, list(names))


# upload --------------------------------------------------------------------------------------------------------
def check_no_secret(folders: list[RepoFolder], token: str | None) -> None:
    """Last line of defence: refuse to upload any file that contains the token."""
    if not token:
        return
    needle = token.encode()
    for plan in folders:
        for rel in plan.files():
            if needle in (plan.folder / rel).read_bytes():
                raise ZooError(f"{plan.repo_id}: {rel} contains your Hub token; nothing was uploaded")


def find_token() -> str:
    """`HF_TOKEN`, else the cached `hf auth login` token; never printed, never written anywhere."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise ZooError("no Hugging Face token: set HF_TOKEN or run `hf auth login` "
                       "(or use --dry-run --out DIR to write the repo folders without uploading)")
    return token


def upload(folders: list[RepoFolder], token: str, private: bool) -> list[str]:
    """`create_repo(exist_ok=True)` + `upload_folder` per repo; errors name the repo, never the token."""
    from huggingface_hub import HfApi

    require_hub(f"pushing to {folders[0].repo_id!r}", "use --dry-run --out DIR to write the folders locally")
    api = HfApi(endpoint=endpoint(), token=token)
    urls = []
    for plan in folders:
        try:
            url = api.create_repo(plan.repo_id, repo_type="model", private=private, exist_ok=True)
            api.upload_folder(repo_id=plan.repo_id, repo_type="model", folder_path=plan.folder,
                              ignore_patterns=[MARKER],
                              commit_message=f"Upload {', '.join(plan.adapters) or 'zoo index'} with adapter-zoo")
        except Exception as e:  # auth, permissions, network, bad name: all mean "this repo was not pushed"
            msg = str(e).replace(token, "***").splitlines()[0] if str(e) else ""
            raise ZooError(f"pushing {plan.repo_id!r} failed ({type(e).__name__}: {msg}); check the repo name, "
                           "that your token can write to it, and the network") from None
        urls.append(str(url))
    return urls
