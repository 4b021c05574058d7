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

from zoo.adapter_config import config_problems, tensor_problems
from zoo.errors import ZooError
from zoo.fsutil import atomic_write_json, check_name, exclusive_or_refuse, file_lock, replace_dir
from zoo.manifest import Entry

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

    def name_lock(self, name: str):
        """One job per adapter name at a time (`zoo train`): its run folder and staging are that job's alone."""
        return exclusive_or_refuse(self.root / ".runs" / f"{check_name(name, 'adapter name')}.lock",
                                   f"another process is training {name!r} in {self.root}; wait for it to finish "
                                   "or train under another --name")

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

    def entries(self) -> dict[str, Entry]:
        """Every entry, type-checked; a damaged one is left out here and reported by `problems()`."""
        out = {}
        for name, raw in self.read()["adapters"].items():
            try:
                out[name] = Entry.from_json(raw)
            except ZooError:
                continue
        return out

    def get(self, name: str) -> Entry:
        raw = self.read()["adapters"]
        if name not in raw:
            known = ", ".join(sorted(raw)) or "none yet (run `zoo train TASK`)"
            raise ZooError(f"no adapter named {str(name)[:80]!r} in {self.root}; known: {known}")
        return Entry.from_json(raw[name])

    def require_healthy(self, name: str, base=None, dims: dict | None = None) -> Entry:
        """The entry of an adapter that is whole on disk, plain LoRA (`zoo.adapter_config`) and, given a
        `BaseRef`, trained on that base; with the base's linear `dims`, its tensors fit that base."""
        entry = self.get(name)
        bad = adapter_problems(name, self.adapter_dir(name), dims)
        if bad:
            raise ZooError(f"adapter {name!r} is damaged: {bad[0]}")
        if base is not None and entry.base.hash and entry.base.hash != base.hash:
            raise ZooError(f"adapter {name!r} was trained on base {entry.base.id!r} ({entry.base.hash}), not on "
                           f"{base.id!r} ({base.hash}); use --base {entry.base.id} or retrain it")
        return entry

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

    def put(self, entry: Entry) -> None:
        """Record (or replace) one entry; its adapter folder must already be in place (see `install`)."""
        self.update(lambda d: d["adapters"].__setitem__(entry.name, entry.to_json()))

    def install(self, staged: Path, entry: Entry) -> None:
        """Swap a fully written adapter folder in and record its entry, under one lock: the only way an
        adapter enters the zoo (training, combining, pulling, the bench), so a killed run never leaves half one."""
        with self.lock():
            replace_dir(Path(staged), self.adapter_dir(entry.name))
        self.put(entry)
        try:
            Path(staged).parent.rmdir()  # the staging area, only when no other run is using it
        except OSError:
            pass

    def set_metrics(self, name: str, key: str, value: dict) -> None:
        def change(d):
            if isinstance(d["adapters"].get(name), dict):
                d["adapters"][name].setdefault("metrics", {})[key] = value

        self.update(change)

    def remove(self, name: str) -> None:
        self.update(lambda d: d["adapters"].pop(name, None))

    # health --------------------------------------------------------------
    def problems(self) -> list[Problem]:
        """Everything wrong with the zoo, each with how to repair it."""
        out: list[Problem] = []
        entries = self.read()["adapters"]
        for name in sorted(entries):
            try:
                Entry.from_json(entries[name])
            except ZooError as e:
                out.append(Problem(str(name)[:80], f"manifest entry is damaged: {e}", f"`zoo remove {name}` and retrain"))
                continue
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


def adapter_problems(name: str, path: Path, dims: dict | None = None) -> list[Problem]:
    """Everything that keeps an adapter folder from loading safely: missing or pickled files, a damaged
    safetensors file, a config outside plain LoRA, tensors that do not match the config (or the base's `dims`)."""
    retrain = f"retrain with `zoo train` or remove the entry with `zoo remove {name}`"
    if not path.is_dir():
        return [Problem(name, f"adapter folder {path} is missing", retrain)]
    out = [Problem(name, f"{f.name} is a pickle-based file, which this project never loads", f"delete {f}")
           for f in sorted(path.iterdir()) if f.suffix in PICKLE_SUFFIXES]
    out += [Problem(name, f"{f.name} is a link to {os.readlink(f)[:80]}; adapter files must be plain files",
                    retrain) for f in sorted(path.iterdir()) if f.is_symlink()]
    try:
        cfg = json.loads((path / "adapter_config.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return out + [Problem(name, "adapter_config.json is missing or not valid JSON", retrain)]
    header, err = read_safetensors_header(path / "adapter_model.safetensors")
    if err:
        out.append(Problem(name, f"adapter_model.safetensors {err}", retrain))
    wrong = config_problems(cfg) or tensor_problems(cfg, header or {}, dims)
    return out + [Problem(name, what, retrain) for what in wrong[:3]] + spec_problems(name, path, retrain)


def spec_problems(name: str, path: Path, fix: str) -> list[Problem]:
    """A saved task spec (`task.json`) that does not parse, e.g. a template with a format spec, is that adapter's
    problem: its task could not be read back for eval, routing or answer lengths."""
    from tasks import SPEC_FILE, TaskSpec

    spec = path / SPEC_FILE
    if not spec.is_file() or spec.is_symlink():
        return []
    try:
        TaskSpec.from_json(json.loads(spec.read_text(encoding="utf-8")), where=SPEC_FILE)
    except (OSError, ValueError, ZooError) as e:
        return [Problem(name, f"{SPEC_FILE} is not a valid task spec ({str(e)[:160]})", fix)]
    return []


def safetensors_error(path: Path) -> str | None:
    """Cheap integrity check: the header parses and the data size matches what it declares."""
    return read_safetensors_header(path)[1]


def read_safetensors_header(path: Path) -> tuple[dict | None, str | None]:
    """(header, None) for a whole file, else (None, what is wrong); never raises on a damaged file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            if n > size - 8:
                return None, "is truncated (header larger than file)"
            header = json.loads(f.read(n))
    except FileNotFoundError:
        return None, "is missing"
    except (OSError, struct.error, ValueError, UnicodeDecodeError):
        return None, "is corrupted (unreadable header)"
    try:
        end = 8 + n + max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (AttributeError, KeyError, TypeError, IndexError):  # a header of [] or {"a": 1}, offsets not numbers
        return None, "is corrupted (header is not a tensor table)"
    if end != size:
        return None, f"is truncated or corrupted ({size} bytes, header says {end})"
    return header, None


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
