"""What push, pull and the cards share: the files a published adapter holds, the safe file types, repo ids,
the base's Hub id, and the one place the Hub endpoint is read (`HF_ENDPOINT`) and its reachability checked."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from urllib.parse import urlparse

from tasks import SPEC_FILE
from zoo.base import EMBEDDED
from zoo.errors import ZooError
from zoo.fsutil import existing

SAFE_SUFFIXES = (".safetensors", ".json", ".md", ".png")  # never a pickle: those can run code when loaded
PULL_PATTERNS = [f"*{s}" for s in SAFE_SUFFIXES]  # fnmatch `*` also matches `/`: subfolders included
# The files of one adapter that travel: PEFT weights + config, the training log, and its resolved task spec.
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "training.json", SPEC_FILE)
ENTRY_FILE = "zoo_entry.json"  # the manifest entry, so a pulled adapter keeps its task, settings and metrics
PLOT_FILE = "eval.png"
DEFAULT_ENDPOINT = "https://huggingface.co"


# the Hub itself ------------------------------------------------------------------------------------------------
def endpoint() -> str | None:
    """`HF_ENDPOINT`, read when called (not at import) so tests and mirrors can point it elsewhere."""
    return os.environ.get("HF_ENDPOINT") or None


def hub_reachable(timeout: float = 5.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    url = urlparse(endpoint() or DEFAULT_ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_hub(what: str, offline_fix: str, cached=None) -> None:
    """Fail fast with one line naming `what` and how to work offline, instead of minutes of retries."""
    if cached is not None and cached():
        return
    if not hub_reachable():
        raise ZooError(f"{what}: the Hugging Face Hub is unreachable (offline?); {offline_fix}")


def check_repo_id(repo_id: str) -> str:
    """`USER/NAME` as the Hub accepts it; checked before any work so a typo costs nothing."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(repo_id, str):
        raise ZooError(f"a Hub repo id is a string USER/NAME, not {type(repo_id).__name__}")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ZooError(f"invalid Hub repo id {repo_id[:80]!r}: {str(e).splitlines()[0]}") from None
    if repo_id.count("/") != 1:
        raise ZooError(f"invalid Hub repo id {repo_id!r}: use USER/NAME (or ORG/NAME)")
    return repo_id


# the base's names --------------------------------------------------------------------------------------------
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


# safe files ----------------------------------------------------------------------------------------------------
def hidden(rel: Path) -> bool:
    """.gitattributes, .cache/: never published, never taken."""
    return any(part.startswith(".") for part in rel.parts)


def copy_safe_tree(src: Path, dest: Path) -> list[str]:
    """Copy only safetensors/JSON/Markdown/PNG files (the router never needs anything else)."""
    copied = []
    if not src.is_dir():
        return copied
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if path.is_file() and path.suffix.lower() in SAFE_SUFFIXES and not hidden(rel):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest / rel)
            copied.append(rel.as_posix())
    return copied


def check_links(folder: Path, what: str, allowed: Path | None = None) -> None:
    """Refuse a symbolic link that leads out of `folder` (or of `allowed`: the Hub cache's links into its own
    blobs folder): copying would follow it and take a file of the link's choosing, e.g. a credentials file."""
    root = folder.resolve()
    inside = [root] + ([allowed.resolve()] if allowed is not None else [])
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            if path.is_symlink() and not any(path.resolve().is_relative_to(r) for r in inside):
                rel = path.relative_to(folder).as_posix()
                raise ZooError(f"{what}: {rel} is a symbolic link to a place outside the folder; nothing was "
                               "added. Replace the link with the file itself")
