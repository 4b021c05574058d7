"""Publishing adapters to the Hugging Face Hub and loading them back.

Push: one model repo per adapter (PEFT files + `training.json` + `zoo_entry.json` + a model card built with
huggingface_hub's `ModelCard` + the eval plot), or a whole zoo (manifest + router, adapters in their own repos or
in `adapters/<name>/` of one repo). Every repo is first written as a plain folder, so `--dry-run --out DIR` shows
exactly what would be uploaded, and `zoo pull DIR/<repo>` loads it back offline.

Pull: a Hub repo or a local folder with the same layout. Only safetensors, JSON, Markdown and PNG files are ever
taken (pickles can run code when loaded), the base fingerprint must match the local base, and files land through a
staging folder + one rename, so a refused or failed pull adds nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from zoo.base import EMBEDDED, BaseRef, resolve_base
from zoo.errors import ZooError
from zoo.fsutil import atomic_write_json, atomic_write_text, check_name, existing, replace_dir
from zoo.store import PICKLE_SUFFIXES, Zoo, adapter_problems, now_iso

SAFE_SUFFIXES = (".safetensors", ".json", ".md", ".png")
PULL_PATTERNS = [f"*{s}" for s in SAFE_SUFFIXES]  # fnmatch `*` also matches `/`: subfolders included
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "training.json")
ENTRY_FILE = "zoo_entry.json"  # the manifest entry, so a pulled adapter keeps its task, settings and metrics
PLOT_FILE = "eval.png"
# Entry fields that only make sense on the machine that trained the adapter.
LOCAL_FIELDS = ("path", "pulled_from")


@dataclass
class RepoFolder:
    """One repo to upload: its id, the folder holding exactly its files, and the adapters it carries."""

    repo_id: str
    folder: Path
    adapters: list[str] = field(default_factory=list)

    def files(self) -> list[str]:
        return sorted(p.relative_to(self.folder).as_posix() for p in self.folder.rglob("*") if p.is_file())


# repo ids and names ------------------------------------------------------------------------------------------------
def check_repo_id(repo_id: str) -> str:
    """`USER/NAME` as the Hub accepts it; checked before any work so a typo costs nothing."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ZooError(f"invalid Hub repo id {repo_id!r}: {e}") from None
    if repo_id.count("/") != 1:
        raise ZooError(f"invalid Hub repo id {repo_id!r}: use USER/NAME (or ORG/NAME)")
    return repo_id


def hub_base_id(base_id: str | None) -> str | None:
    """The base's Hub id for `base_model`: the embedded name maps to its source repo; a local folder has none."""
    if not base_id:
        return None
    if base_id in EMBEDDED:
        return EMBEDDED[base_id]["hub_id"]
    if base_id.count("/") == 1 and not base_id.startswith((".", "/", "~")) and not existing(base_id):
        return base_id
    return None


def public_base_id(base_id: str | None) -> str | None:
    """A local base folder is published by its folder name only: no home directories on the Hub."""
    if not base_id or base_id in EMBEDDED or hub_base_id(base_id):
        return base_id
    return Path(base_id).name


def public_entry(entry: dict) -> dict:
    """The manifest entry as published: local paths dropped or shortened."""
    out = json.loads(json.dumps(entry, default=str))
    for key in LOCAL_FIELDS:
        out.pop(key, None)
    if out.get("base"):
        out["base"]["id"] = public_base_id(out["base"].get("id"))
        out["base"]["hub_id"] = hub_base_id(entry["base"].get("id"))
    source = (out.get("data") or {}).get("source")
    if isinstance(source, str) and not source.startswith("hub:"):
        out["data"]["source"] = f"local:{Path(source).parent.name}/{Path(source).name}"
    return out


def find_plot(zoo: Zoo, name: str, task: str | None) -> Path | None:
    """`zoo eval` writes `reports/<adapter>.png`; older reports were named after the task."""
    for stem in (name, task):
        if stem and (zoo.reports_dir / f"{stem}.png").is_file():
            return zoo.reports_dir / f"{stem}.png"
    return None


# folders to upload ------------------------------------------------------------------------------------------------
def write_adapter_folder(zoo: Zoo, name: str, dest: Path, repo_id: str, subfolder: str | None = None) -> None:
    """PEFT files + card + entry (+ plot) for one adapter, written into `dest`."""
    entry = zoo.get(name)
    src = zoo.adapter_dir(name)
    problems = adapter_problems(name, src)
    if problems:
        raise ZooError(f"cannot publish {name!r}: {problems[0].what} (fix: {problems[0].fix})")
    dest.mkdir(parents=True, exist_ok=True)
    for fname in ADAPTER_FILES:
        if (src / fname).is_file():
            shutil.copyfile(src / fname, dest / fname)
    _publish_adapter_config(dest / "adapter_config.json", entry)
    plot = find_plot(zoo, name, entry.get("task"))
    if plot:
        shutil.copyfile(plot, dest / PLOT_FILE)
    public = {**public_entry(entry), "name": name}
    atomic_write_json(dest / ENTRY_FILE, public)
    card = build_card(public, repo_id, has_plot=plot is not None, subfolder=subfolder)
    atomic_write_text(dest / "README.md", str(card))


def _publish_adapter_config(path: Path, entry: dict) -> None:
    """PEFT records the local base path; on the Hub it must name the base repo so `AutoPeftModel...` works."""
    config = json.loads(path.read_text())
    base_id = (entry.get("base") or {}).get("id")
    config["base_model_name_or_path"] = hub_base_id(base_id) or public_base_id(base_id)
    atomic_write_json(path, config)


def write_zoo_folder(zoo: Zoo, names: list[str], dest: Path, repo_id: str, adapter_repos: dict[str, str] | None):
    """A whole zoo: manifest + router + README; adapters inside (`adapter_repos` None) or referenced by repo id."""
    adapters = {}
    for name in names:
        entry = public_entry(zoo.get(name))
        if adapter_repos is None:
            sub = f"adapters/{name}"
            write_adapter_folder(zoo, name, dest / sub, repo_id, subfolder=sub)
            adapters[name] = {**entry, "path": sub}
        else:
            adapters[name] = {**entry, "repo": adapter_repos[name]}
    atomic_write_json(dest / "zoo.json", {"version": zoo.read().get("version", 1), "adapters": adapters})
    copy_safe_tree(zoo.router_dir, dest / "router")
    atomic_write_text(dest / "README.md", str(zoo_card(repo_id, adapters, adapter_repos, (dest / "router").is_dir())))


def copy_safe_tree(src: Path, dest: Path) -> list[str]:
    """Copy only safetensors/JSON/Markdown/PNG files (the router never needs anything else)."""
    copied = []
    if not src.is_dir():
        return copied
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if path.is_file() and path.suffix.lower() in SAFE_SUFFIXES and not _hidden(rel):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest / rel)
            copied.append(rel.as_posix())
    return copied


def stage_push(zoo: Zoo, names: list[str], repo_id: str, out: Path, whole_zoo: bool,
               single_repo: bool) -> list[RepoFolder]:
    """Write every repo folder into `out/<repo name>` (staged, then renamed); adapters first, the index last."""
    check_repo_id(repo_id)
    if not whole_zoo:
        return [_stage(out, repo_id, names, lambda d: write_adapter_folder(zoo, names[0], d, repo_id))]
    if single_repo:
        return [_stage(out, repo_id, names, lambda d: write_zoo_folder(zoo, names, d, repo_id, None))]
    repos = {n: check_repo_id(f"{repo_id}-{n}") for n in names}
    plans = [_stage(out, r, [n], lambda d, n=n, r=r: write_adapter_folder(zoo, n, d, r)) for n, r in repos.items()]
    plans.append(_stage(out, repo_id, [], lambda d: write_zoo_folder(zoo, names, d, repo_id, repos)))
    return plans


def _stage(out: Path, repo_id: str, names: list[str], write) -> RepoFolder:
    final = out / repo_id.split("/")[1]
    staged = out / f".{final.name}.staging-{os.getpid()}"
    shutil.rmtree(staged, ignore_errors=True)
    try:
        write(staged)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    replace_dir(staged, final)
    return RepoFolder(repo_id, final, list(names))


def check_no_secret(folders: list[RepoFolder], token: str | None) -> None:
    """Last line of defence: refuse to upload any file that contains the token."""
    if not token:
        return
    needle = token.encode()
    for plan in folders:
        for rel in plan.files():
            if needle in (plan.folder / rel).read_bytes():
                raise ZooError(f"{plan.repo_id}: {rel} contains your Hub token; nothing was uploaded")


# upload ------------------------------------------------------------------------------------------------------------
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

    from zoo.hubnet import require_hub

    require_hub(f"pushing to {folders[0].repo_id!r}", "use --dry-run --out DIR to write the folders locally")
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)  # HF_ENDPOINT read now, not at import
    urls = []
    for plan in folders:
        try:
            url = api.create_repo(plan.repo_id, repo_type="model", private=private, exist_ok=True)
            api.upload_folder(repo_id=plan.repo_id, repo_type="model", folder_path=plan.folder,
                              commit_message=f"Upload {', '.join(plan.adapters) or 'zoo index'} with adapter-zoo")
        except Exception as e:  # auth, permissions, network, bad name: all mean "this repo was not pushed"
            msg = str(e).replace(token, "***").splitlines()[0] if str(e) else ""
            raise ZooError(f"pushing {plan.repo_id!r} failed ({type(e).__name__}: {msg}); check the repo name, "
                           "that your token can write to it, and the network") from None
        urls.append(str(url))
    return urls


# pull --------------------------------------------------------------------------------------------------------------
def fetch(source: str) -> Path:
    """A local folder as is, or a Hub snapshot holding only the safe file types."""
    kind = existing(source)
    if kind == "dir":
        return Path(source).expanduser()
    if kind or source.startswith((".", "/", "~")):
        raise ZooError(f"{source!r} is not a folder; pass a folder laid out as a Hub repo, or USER/NAME")
    check_repo_id(source)
    return _download(source)


def _download(repo_id: str) -> Path:
    from huggingface_hub import HfApi, snapshot_download

    from zoo.hubnet import require_hub

    offline = "a local folder laid out as the repo works offline (e.g. the output of `zoo push --dry-run --out DIR`)"
    require_hub(f"cannot fetch {repo_id!r}", offline)
    try:
        remote = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None).list_repo_files(repo_id)
        check_safe_names(remote, repo_id)
        return Path(snapshot_download(repo_id, allow_patterns=PULL_PATTERNS,
                                      endpoint=os.environ.get("HF_ENDPOINT") or None))
    except ZooError:
        raise
    except Exception as e:  # not found, private, network: the repo cannot be had
        raise ZooError(f"could not download {repo_id!r} from the Hub ({type(e).__name__}); check the name "
                       f"and your login; {offline}") from None


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)  # .gitattributes, .cache/: never taken


def check_safe_names(names: list[str], what: str) -> None:
    """Refuse pickles outright (they can run code when loaded) and anything else that is not a known safe type."""
    visible = [n for n in names if not _hidden(Path(n))]
    pickles = [n for n in visible if Path(n).suffix.lower() in PICKLE_SUFFIXES]
    if pickles:
        raise ZooError(f"{what} contains pickle-based files ({', '.join(sorted(pickles))}), which can run code when "
                       "loaded; nothing was added. Ask for a safetensors version")
    other = [n for n in visible if Path(n).suffix.lower() not in SAFE_SUFFIXES]
    if other:
        raise ZooError(f"{what} contains files of a type this project does not take ({', '.join(sorted(other))}); "
                       "only .safetensors, .json, .md and .png are pulled; nothing was added")


def check_safe_folder(folder: Path, what: str) -> None:
    check_safe_names([p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()], what)


def entry_from_folder(folder: Path, what: str) -> dict:
    """The published manifest entry, or one rebuilt from `training.json` (which always holds the base hash)."""
    fname = next((f for f in (ENTRY_FILE, "training.json") if (folder / f).is_file()), None)
    if fname is None:
        raise ZooError(f"{what} is not an adapter-zoo adapter (no {ENTRY_FILE} or training.json with the base "
                       "fingerprint), so its base cannot be checked")
    try:
        data = json.loads((folder / fname).read_text())
    except ValueError:
        raise ZooError(f"{what}: {fname} is not valid JSON; the upload is damaged") from None
    if fname == ENTRY_FILE:
        return data
    return {"task": data.get("task"), "kind": "trained", "lora": data.get("lora"), "train": data.get("train"),
            "base": {"id": None, "hash": data.get("base"), "quantized": data.get("quantized")},
            "throughput": data.get("throughput"), "metrics": {}}


def check_base(entry: dict, what: str, base: str | None, cache: dict) -> BaseRef:
    """The adapter's base must be the local one, byte for byte (fingerprint), or its deltas are meaningless."""
    trained = entry.get("base") or {}
    base_id = base or trained.get("id") or _embedded_for(trained.get("hub_id")) or "smollm2-135m"
    if base_id not in cache:
        try:
            cache[base_id] = resolve_base(base_id)
        except ZooError as e:
            raise ZooError(f"{what} was trained on base {base_id!r}, which is not available here ({e}); "
                           "pass --base with the local model folder") from None
    ref = cache[base_id]
    if not trained.get("hash"):
        raise ZooError(f"{what} does not record its base fingerprint, so it cannot be checked against {ref.id!r}")
    if trained["hash"] != ref.hash:
        raise ZooError(f"{what} was trained on base {trained.get('id')!r} ({trained['hash']}), not on the local "
                       f"base {ref.id!r} ({ref.hash}); pass --base with the base it was trained on")
    return ref


def _embedded_for(hub_id: str | None) -> str | None:
    return next((k for k, v in EMBEDDED.items() if v["hub_id"] == hub_id), None) if hub_id else None


@dataclass
class PullItem:
    """One adapter ready to install: where its files are and the entry it will get."""

    name: str
    folder: Path
    entry: dict


def plan_adapter(folder: Path, name: str | None, source: str, base: str | None, cache: dict) -> PullItem:
    what = f"adapter at {source}"
    check_safe_folder(folder, what)
    entry = entry_from_folder(folder, what)
    name = check_name(name or entry.get("name") or Path(source.rstrip("/")).name, "adapter name")
    problems = adapter_problems(name, folder)
    if problems:
        raise ZooError(f"{what}: {problems[0].what}; nothing was added")
    ref = check_base(entry, what, base, cache)
    entry = {**entry, "name": name, "path": f"adapters/{name}", "pulled_from": source, "pulled": now_iso()}
    entry["base"] = {**entry["base"], "id": ref.id}
    entry["base"].pop("hub_id", None)
    entry.pop("repo", None)
    return PullItem(name, folder, entry)


def plan_pull(source: str, name: str | None, base: str | None) -> tuple[list[PullItem], Path | None]:
    """Everything checked before anything is written: the adapters to add, and the router folder (whole zoos)."""
    folder = fetch(source)
    cache: dict = {}
    if (folder / "adapter_config.json").is_file():
        return [plan_adapter(folder, name, source, base, cache)], None
    check_safe_folder(folder, source)
    if not (folder / "zoo.json").is_file():
        raise ZooError(f"{source} is neither an adapter (no adapter_config.json) nor a zoo (no zoo.json)")
    if name:
        raise ZooError("--name renames a single adapter; a whole zoo keeps its adapters' names")
    try:
        adapters = json.loads((folder / "zoo.json").read_text())["adapters"]
    except (ValueError, KeyError, TypeError):
        raise ZooError(f"{source}/zoo.json is not a zoo manifest; the upload is damaged") from None
    items = [plan_adapter(_adapter_source(folder, source, n, e), n, e.get("repo") or f"{source}/adapters/{n}",
                          base, cache) for n, e in adapters.items()]
    return items, (folder / "router" if (folder / "router").is_dir() else None)


def _adapter_source(folder: Path, source: str, name: str, entry: dict) -> Path:
    """Inside the zoo repo (`adapters/<name>`), or its own repo; for a local zoo folder, a sibling folder."""
    inner = folder / "adapters" / check_name(name, "adapter name")
    if inner.is_dir():
        return inner
    repo = entry.get("repo")
    if not repo:
        raise ZooError(f"{source}: adapter {name!r} is neither in adapters/{name} nor has a 'repo'")
    if Path(source).expanduser().is_dir():
        sibling = folder.parent / check_repo_id(repo).split("/")[1]
        if not sibling.is_dir():
            raise ZooError(f"{source}: adapter {name!r} lives in {repo}; expected it next to the zoo at {sibling}")
        return sibling
    return fetch(repo)


def install(zoo: Zoo, items: list[PullItem], router: Path | None, force: bool) -> bool:
    """Copy each adapter via staging + one rename, then record it; the router only into a zoo without one (or
    with `force`). Returns whether the router was installed."""
    existing = set(zoo.entries())
    taken = [i.name for i in items if i.name in existing or zoo.adapter_dir(i.name).exists()]
    if taken and not force:
        raise ZooError(f"{', '.join(taken)} already in {zoo.root}; pass --force to replace, or --name NEW")
    for item in items:
        staged = zoo.staging_dir(item.name)
        staged.mkdir(parents=True)
        for fname in ADAPTER_FILES:
            if (item.folder / fname).is_file():
                shutil.copyfile(item.folder / fname, staged / fname)  # copyfile follows the Hub cache's symlinks
        with zoo.lock():
            replace_dir(staged, zoo.adapter_dir(item.name))
        zoo.put(item.name, item.entry)
    with contextlib.suppress(OSError):
        (zoo.root / ".staging").rmdir()  # only when empty
    if router is None or (zoo.router_dir.is_dir() and not force):
        return False
    staged = zoo.root / f".router.staging-{os.getpid()}"
    copy_safe_tree(router, staged)
    replace_dir(staged, zoo.router_dir)
    return True


# model cards -------------------------------------------------------------------------------------------------------
# Hub license ids (https://huggingface.co/docs/hub/repositories-licenses) a dataset license is likely to name.
HF_LICENSES = frozenset((
    "apache-2.0 mit afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear cc cc0-1.0 "
    "cc-by-2.0 cc-by-2.5 cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 "
    "cc-by-nd-4.0 cc-by-nc-nd-3.0 cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 "
    "cdla-sharing-1.0 cdla-permissive-1.0 cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 eupl-1.1 eupl-1.2 "
    "agpl-3.0 gfdl gpl gpl-2.0 gpl-3.0 lgpl lgpl-2.1 lgpl-3.0 isc mpl-2.0 odc-by odbl openrail openrail++ pddl "
    "ofl-1.1 unlicense zlib llama2 llama3 gemma unknown other").split())
TASK_TYPES = {"accuracy": "text-classification", "squad": "question-answering", "rouge": "summarization"}


def hf_license(text: str | None) -> dict:
    """The task's (dataset's) license as a Hub id: `cc-by-sa-4.0` as is, `unknown (SST, ...)` -> `unknown`,
    anything else -> `other` with its name kept in `license_name`."""
    text = (text or "unknown").strip().lower()
    first = re.split(r"[\s(,;]+", text)[0]
    for candidate in (text, first):
        if candidate in HF_LICENSES:
            return {"license": candidate}
    return {"license": "other", "license_name": re.sub(r"[^a-z0-9.]+", "-", text).strip("-")[:64]}


def _task(name: str | None):
    """The task spec, or None for a task this machine does not know (a card is still written)."""
    from tasks import get_task

    try:
        return get_task(name) if name else None
    except ZooError:
        return None


def hub_dataset(spec) -> str | None:
    ds = getattr(spec, "dataset", None)
    return ds if ds and not ds.startswith((".", "/", "~")) and not Path(ds).exists() else None


def eval_metrics(entry: dict) -> dict | None:
    """`metrics.eval` as `zoo eval` writes it ({task, n, base: {...}, adapter: {...}}), or None."""
    ev = (entry.get("metrics") or {}).get("eval")
    ok = isinstance(ev, dict) and isinstance(ev.get("adapter"), dict) and ev["adapter"]
    return ev if ok else None


def eval_results(entry: dict, spec) -> list:
    """The adapter's scores as `EvalResult`s, which become the card's `model-index`."""
    from huggingface_hub import EvalResult

    ev = eval_metrics(entry)
    if ev is None or spec is None:
        return []
    return [EvalResult(task_type=TASK_TYPES.get(spec.metric, "text-generation"), task_name=spec.name,
                       dataset_type=hub_dataset(spec) or spec.name, dataset_name=hub_dataset(spec) or spec.name,
                       dataset_config=spec.dataset_config, dataset_split=ev.get("split") or spec.eval_split,
                       metric_type=metric, metric_name=metric, metric_value=float(value))
            for metric, value in ev["adapter"].items() if isinstance(value, (int, float))]


def card_data(entry: dict, repo_id: str):
    from huggingface_hub import ModelCardData

    spec = _task(entry.get("task"))
    base = entry.get("base") or {}
    tags = ["lora", *(["qlora"] if base.get("quantized", True) else []), "adapter-zoo", "peft"]
    tags += [entry["task"]] if entry.get("task") else []
    model_name = repo_id.split("/")[1]
    results = eval_results(entry, spec)
    return ModelCardData(
        base_model=hub_base_id(base.get("id")) or base.get("hub_id"), library_name="peft", tags=tags,
        datasets=[hub_dataset(spec)] if hub_dataset(spec) else None, pipeline_tag="text-generation",
        model_name=model_name if results else None, eval_results=results or None,
        **hf_license(getattr(spec, "license", None)))


def build_card(entry: dict, repo_id: str, has_plot: bool = False, subfolder: str | None = None):
    """README.md for one adapter repo: validated metadata + what it does, how to load it, how it was trained,
    how it scores."""
    data = card_data(entry, repo_id)
    spec = _task(entry.get("task"))
    body = [*_intro(entry, spec, data.base_model), *_usage(entry, spec, repo_id, data.base_model, subfolder),
            *_training(entry), *_evaluation(entry, has_plot)]
    return _card(data, body)


def _card(data, body: list[str]):
    """Metadata + Markdown body as a `ModelCard`, checked before it is written anywhere."""
    from huggingface_hub import ModelCard

    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n")
    check_card(card)
    return card


def check_card(card) -> None:
    """Offline stand-in for `ModelCard.validate()` (which needs the network): the YAML parses back to the same
    metadata, the model-index converts back into EvalResults, and ids and license have the Hub's shapes."""
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results
    from huggingface_hub.utils import validate_repo_id

    try:
        meta = ModelCard(str(card)).data.to_dict()
        if meta != card.data.to_dict():
            raise ValueError("metadata does not survive a YAML round trip")
        if "model-index" in meta:
            model_index_to_eval_results(meta["model-index"])
        if meta.get("license") not in HF_LICENSES:
            raise ValueError(f"license {meta.get('license')!r} is not a Hub license id")
        for repo in [meta.get("base_model"), *(meta.get("datasets") or [])]:
            validate_repo_id(repo)
    except (ValueError, KeyError, TypeError) as e:
        raise ZooError(f"the generated model card does not validate ({e}); please report this bug") from None


def _intro(entry: dict, spec, base_model: str | None) -> list[str]:
    name, task = entry.get("name", "adapter"), entry.get("task") or "unknown task"
    base = f"[{base_model}](https://huggingface.co/{base_model})" if base_model else f"`{entry['base'].get('id')}`"
    kind = "QLoRA (LoRA trained on the 4-bit NF4 base)" if (entry.get("base") or {}).get("quantized") else "LoRA"
    lines = [f"# {name}", "", f"A {kind} adapter for {base} that specialises it for **{task}**"
             + (f": {spec.description}" if spec else "."), "",
             "Part of an Adapter Zoo: one small shared base, one adapter per task, "
             "a router that picks the adapter for each prompt."]
    if entry.get("kind") == "combined" and entry.get("parents"):
        lines += ["", f"A weighted combination of: {', '.join(map(str, entry['parents']))}."]
    if spec:
        lines += ["", f"Training data: `{spec.dataset}` (license: {spec.license or 'not stated'}; "
                  "the adapter's license follows its training data)."]
    return lines


def _usage(entry: dict, spec, repo_id: str, base_model: str | None, subfolder: str | None) -> list[str]:
    base_model = base_model or "PATH/TO/BASE"
    sub = f', subfolder="{subfolder}"' if subfolder else ""
    prompt = (spec.templates[0] if spec else "{text}").replace('"""', "'''")
    return ["", "## Use it", "", "With PEFT (the prompt goes through the base's chat template):", "", "```python",
            "from peft import PeftModel", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
            f'tokenizer = AutoTokenizer.from_pretrained("{base_model}")',
            f'model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{base_model}"), '
            f'"{repo_id}"{sub})', f'prompt = """{prompt}"""  # fill in the slots',
            'inputs = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,'
            ' return_tensors="pt", return_dict=True)', "out = model.generate(**inputs, max_new_tokens=64)",
            'print(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))', "```", "", "With Adapter Zoo (checks the base fingerprint first):", "",
            "```bash", f"zoo pull {repo_id}", f'zoo generate "..."   # the router sends {entry.get("task")} '
            "prompts to this adapter", "```"]


def _training(entry: dict) -> list[str]:
    lora, train = entry.get("lora") or {}, entry.get("train") or {}
    data, speed = entry.get("data") or {}, entry.get("throughput") or {}
    rows = [("LoRA rank / alpha / dropout", f"{lora.get('r')} / {lora.get('alpha')} / {lora.get('dropout')}"),
            ("target modules", lora.get("target_modules")), ("adapted layers", lora.get("layers") or "all"),
            ("DoRA", lora.get("use_dora")), ("4-bit NF4 base", (entry.get("base") or {}).get("quantized")),
            ("learning rate", train.get("learning_rate")), ("batch size", train.get("batch_size")),
            ("epochs", train.get("epochs")), ("optimizer", train.get("optimizer")),
            ("training examples / tokens", f"{data.get('examples')} / {data.get('tokens')}"),
            ("steps / seconds", f"{speed.get('steps')} / {speed.get('seconds')}"),
            ("final loss", entry.get("final_loss")), ("base fingerprint", (entry.get("base") or {}).get("hash"))]
    return ["", "## Training", "", "| setting | value |", "|---|---|",
            *[f"| {k} | {v} |" for k, v in rows if v not in (None, "None / None")],
            "", "Full settings and the loss log are in `training.json`; the manifest entry in "
            f"`{ENTRY_FILE}`."]


def _evaluation(entry: dict, has_plot: bool) -> list[str]:
    from zoo.reports import fmt

    ev = eval_metrics(entry)
    if ev is None:
        return ["", "## Evaluation", "", "Not evaluated yet: run `zoo eval NAME` and push again to add scores."]
    base = ev.get("base") or {}
    lines = ["", "## Evaluation", "", f"{ev.get('n', '?')} examples from the `{ev.get('split', 'validation')}` split "
             f"of `{ev.get('task', entry.get('task'))}`, greedy decoding, adapter vs the plain base.", "",
             "| metric | base | adapter | change |", "|---|---|---|---|"]
    for m, a in ev["adapter"].items():
        b = base.get(m)
        change = "-" if b is None else ("+" if a >= b else "") + fmt(m, a - b)
        lines.append(f"| {m} | {'-' if b is None else fmt(m, b)} | {fmt(m, a)} | {change} |")
    return lines + (["", f"![base vs adapter]({PLOT_FILE})"] if has_plot else [])


def zoo_card(repo_id: str, adapters: dict[str, dict], adapter_repos: dict | None, has_router: bool):
    """README.md for a whole zoo: which adapters, where each lives, how to pull them all."""
    from huggingface_hub import ModelCardData

    specs = {n: _task(e.get("task")) for n, e in adapters.items()}
    bases = sorted({(e.get("base") or {}).get("hub_id") for e in adapters.values()} - {None})
    datasets = sorted({hub_dataset(s) for s in specs.values()} - {None})
    data = ModelCardData(base_model=bases[0] if len(bases) == 1 else None, library_name="peft",
                         tags=["lora", "adapter-zoo", *sorted({e["task"] for e in adapters.values() if e.get("task")})],
                         datasets=datasets or None, license="other", license_name="per-adapter-see-each-card")
    rows = [f"| {n} | {e.get('task')} | " + (f"[{adapter_repos[n]}](https://huggingface.co/{adapter_repos[n]})"
            if adapter_repos else f"`adapters/{n}`") + " |" for n, e in adapters.items()]
    body = [f"# {repo_id.split('/')[1]}", "", f"An Adapter Zoo: {len(adapters)} task adapters on one base"
            + (" and a router (`router/`) that picks one per prompt." if has_router else "."), "",
            "| adapter | task | where |", "|---|---|---|", *rows, "",
            "Each adapter's card has its training settings and scores; `zoo.json` is the manifest.", "",
            "```bash", f"zoo pull {repo_id}   # every adapter (+ router), base fingerprint checked", "```"]
    return _card(data, body)
