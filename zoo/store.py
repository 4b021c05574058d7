"""The zoo on disk: one folder, one manifest (`zoo.json`), one PEFT adapter folder per entry.

Layout::

    ZOO/zoo.json                 manifest: every adapter with task, base, LoRA config, data, metrics
    ZOO/adapters/<name>/         PEFT adapter (safetensors) + training.json (config, throughput, loss log)
    ZOO/reports/<task>.{md,json,png}
    ZOO/router/                  the router (JSON + safetensors, no pickle)
    ZOO/.runs/<name>/            checkpoints of an unfinished training run (for --resume)
"""

from __future__ import annotations

import json
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from zoo.errors import ZooError
from zoo.fsutil import atomic_write_json, check_name, file_lock

MANIFEST_VERSION = 1
DEFAULT_ZOO = "zoo-out"
PICKLE_SUFFIXES = (".bin", ".pkl", ".pickle", ".pt", ".pth", ".joblib", ".ckpt")


def default_zoo_dir() -> Path:
    return Path(os.environ.get("ZOO_DIR") or DEFAULT_ZOO)


@dataclass
class Problem:
    name: str
    what: str
    fix: str

    def __str__(self) -> str:
        return f"{self.name}: {self.what} (fix: {self.fix})"


class Zoo:
    """A zoo folder. Every manifest change happens under a lock and lands with one atomic rename."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_zoo_dir()

    # paths -------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / "zoo.json"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def router_dir(self) -> Path:
        return self.root / "router"

    def adapter_dir(self, name: str) -> Path:
        return self.root / "adapters" / check_name(name, "adapter name")

    def run_dir(self, name: str) -> Path:
        return self.root / ".runs" / check_name(name, "adapter name")

    def staging_dir(self, name: str) -> Path:
        return self.root / ".staging" / f"{check_name(name, 'adapter name')}-{os.getpid()}-{time.time_ns()}"

    def lock(self):
        return file_lock(self.root / ".lock")

    # manifest ------------------------------------------------------------
    def read(self) -> dict:
        if not self.manifest_path.exists():
            return {"version": MANIFEST_VERSION, "adapters": {}}
        try:
            data = json.loads(self.manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ZooError(f"{self.manifest_path} is not valid JSON ({e}); restore it or run `zoo doctor`") from None
        if not isinstance(data, dict) or not isinstance(data.get("adapters"), dict):
            raise ZooError(f"{self.manifest_path} has no 'adapters' table; restore it or run `zoo doctor`")
        return data

    def entries(self) -> dict[str, dict]:
        return self.read()["adapters"]

    def get(self, name: str) -> dict:
        entries = self.entries()
        if name not in entries:
            known = ", ".join(sorted(entries)) or "none yet (run `zoo train TASK`)"
            raise ZooError(f"no adapter named {name!r} in {self.root}; known: {known}")
        return entries[name]

    def update(self, change) -> dict:
        """Read-modify-write the manifest under the lock; `change(data)` edits the dict in place."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self.lock():
            data = self.read()
            change(data)
            data["version"] = MANIFEST_VERSION
            data["updated"] = now_iso()
            atomic_write_json(self.manifest_path, data)
            return data

    def put(self, name: str, entry: dict) -> None:
        check_name(name, "adapter name")
        self.update(lambda d: d["adapters"].__setitem__(name, entry))

    def set_metrics(self, name: str, key: str, value: dict) -> None:
        def change(d):
            if name in d["adapters"]:
                d["adapters"][name].setdefault("metrics", {})[key] = value

        self.update(change)

    def remove(self, name: str) -> None:
        self.update(lambda d: d["adapters"].pop(name, None))

    # health --------------------------------------------------------------
    def problems(self) -> list[Problem]:
        """Everything wrong with the zoo, each with how to repair it."""
        out: list[Problem] = []
        entries = self.entries()
        for name in sorted(entries):
            out += adapter_problems(name, self.adapter_dir(name))
        adir = self.root / "adapters"
        if adir.is_dir():
            for d in sorted(adir.iterdir()):
                if d.is_dir() and not d.name.startswith(".") and d.name not in entries:
                    out.append(Problem(d.name, "adapter folder has no manifest entry", f"delete {d} or retrain it"))
        return out

    def healthy(self) -> list[str]:
        bad = {p.name for p in self.problems()}
        return [n for n in sorted(self.entries()) if n not in bad]


def adapter_problems(name: str, path: Path) -> list[Problem]:
    retrain = f"retrain with `zoo train` or remove the entry with `zoo remove {name}`"
    if not path.is_dir():
        return [Problem(name, f"adapter folder {path} is missing", retrain)]
    out = []
    for f in sorted(path.iterdir()):
        if f.suffix in PICKLE_SUFFIXES:
            out.append(Problem(name, f"{f.name} is a pickle-based file, which this project never loads", f"delete {f}"))
    cfg = path / "adapter_config.json"
    try:
        json.loads(cfg.read_text())
    except (OSError, ValueError):
        out.append(Problem(name, "adapter_config.json is missing or not valid JSON", retrain))
    weights = path / "adapter_model.safetensors"
    err = safetensors_error(weights)
    if err:
        out.append(Problem(name, f"adapter_model.safetensors {err}", retrain))
    return out


def safetensors_error(path: Path) -> str | None:
    """Cheap integrity check: the header parses and the data size matches what it declares."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            if n > size - 8:
                return "is truncated (header larger than file)"
            header = json.loads(f.read(n))
    except FileNotFoundError:
        return "is missing"
    except (struct.error, ValueError, UnicodeDecodeError):
        return "is corrupted (unreadable header)"
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        return f"is truncated or corrupted ({size} bytes, header says {8 + n + end})"
    return None


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
