"""Atomic file writes, folder swaps, a portable lock (`filelock`) and name validation: a killed process never
leaves half a file, and a swap it interrupted is found and finished by `finish_swaps` (`zoo doctor`)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from filelock import FileLock

from zoo.errors import ZooError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")  # no dots: torch refuses dotted module names
OLD_COPY_RE = re.compile(r"^\.(?P<name>[A-Za-z0-9][A-Za-z0-9_-]{0,63})\.old-(?P<pid>\d+)$")  # see replace_dir


def check_name(name: str, what: str = "name") -> str:
    """Names become folder names: no separators, no `..`, bounded length, so no write leaves the zoo."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ZooError(f"invalid {what} {str(name)[:80]!r}: use 1-64 letters, digits, '_' or '-', "
                       "starting with a letter or digit")
    return name


def existing(path: str | os.PathLike) -> str | None:
    """'dir', 'file' or None; a name the OS cannot even look up (too long, NUL bytes) is simply not there."""
    try:
        path = Path(path).expanduser()
        return "dir" if path.is_dir() else "file" if path.exists() else None
    except (OSError, ValueError):
        return None


def _umask() -> int:
    """The process umask, read without changing it (os.umask can only be read by setting it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the file should read like any other
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def replace_dir(staged: Path, final: Path) -> None:
    """Move a fully written folder into place; the old one (if any) is removed only after the swap.

    A kill between the two renames leaves `final` missing and the old copy as `.<name>.old-<pid>`;
    `finish_swaps` puts it back."""
    final.parent.mkdir(parents=True, exist_ok=True)
    trash = None
    if final.exists():
        trash = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, trash)
    os.replace(staged, final)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def interrupted_swaps(folder: Path) -> list[tuple[Path, Path]]:
    """(old copy, final folder) for every `replace_dir` in `folder` that a killed process left half done."""
    folder = Path(folder)
    found = []
    for old in sorted(folder.iterdir()) if folder.is_dir() else []:
        match = OLD_COPY_RE.fullmatch(old.name)
        if match is not None and old.is_dir() and not old.is_symlink():
            found.append((old, old.with_name(match["name"])))
    return found


def finish_swap(old: Path, final: Path) -> str:
    """Finish a half-done swap: the old copy comes back when the new folder is missing, and is deleted when the
    new one is in place. Call it under the lock the swap took (`Zoo.lock()`), so a running swap is never touched."""
    if final.exists():
        shutil.rmtree(old)
        return f"{final.name}: deleted the old copy an interrupted swap left behind ({old.name})"
    os.replace(old, final)
    return f"{final.name}: restored the previous copy from an interrupted swap ({old.name})"


@contextlib.contextmanager
def exclusive_or_refuse(path: str | os.PathLike, busy: str):
    """Hold a lock for one job, or refuse at once with `busy` when another process holds it (two trainings
    of one name would share and delete each other's checkpoints)."""
    from filelock import Timeout

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(path), timeout=0):
            yield
    except Timeout:
        raise ZooError(busy) from None


@contextlib.contextmanager
def file_lock(path: str | os.PathLike):
    """An exclusive lock (the `filelock` package: flock on POSIX, msvcrt on Windows), so two `zoo` processes
    never interleave manifest updates. Not reentrant across calls: never nest two locks on one path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path)):
        yield
