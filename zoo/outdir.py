"""Output folders the user names (`zoo merge --out`, `zoo push --dry-run --out`): replaced only if this tool made them.

Replacing a folder deletes what it held, and a mistyped `--out` (`.`, `~/Documents`, the zoo itself) must never
cost the user their files. So every output folder gets a small marker file when it is written, and an existing
folder is replaced only when it carries that marker (or is empty); anything else is refused with one line.
"""

from __future__ import annotations

import json
from pathlib import Path

from zoo.errors import ZooError
from zoo.fsutil import atomic_write_json

MARKER = ".adapter-zoo-output"  # hidden: never pulled (`zoo.hub.common.hidden`), never uploaded (push ignores it)


def mark(folder: Path, made_by: str) -> None:
    """Record that `made_by` (a command) wrote this folder, so a later run may replace it."""
    atomic_write_json(Path(folder) / MARKER, {"made_by": made_by, "tool": "adapter-zoo"})


def is_ours(folder: Path) -> bool:
    """A real folder (not a link) holding our marker as a plain file."""
    folder, marker = Path(folder), Path(folder) / MARKER
    if folder.is_symlink() or not folder.is_dir() or marker.is_symlink() or not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("tool") == "adapter-zoo"
    except (OSError, ValueError, AttributeError):
        return False


def _empty(folder: Path) -> bool:
    return folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir())


def check_replaceable(folder: Path, flag: str, other: str = "pick another --out") -> None:
    """Refuse to replace `folder` unless it is missing, empty, or made by this tool; `flag` names what asked
    for the replacement (e.g. "--force"), so the message says exactly what was refused."""
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return
    if folder.is_symlink() or not folder.is_dir():
        raise ZooError(f"{folder} exists and is not a plain folder; {flag} never replaces it, {other}")
    if not (_empty(folder) or is_ours(folder)):
        raise ZooError(f"{folder} holds files this tool did not write (no {MARKER} marker); {flag} only replaces "
                       f"folders made by adapter-zoo, so nothing was changed: {other} or delete it yourself")
