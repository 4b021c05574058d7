"""The zoo `zoo push` publishes in the hub tests (tests/test_push.py, tests/test_pull.py), the folders it writes,
and a fake Hub on 127.0.0.1 that the real `HfApi` client uploads to (tests/test_hostile.py uses it too)."""

from __future__ import annotations

import base64
import json
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from tests.helpers import make_adapter, send_json
from zoo.base import resolve_base
from zoo.cli import main
from zoo.fsutil import atomic_write_json
from zoo.store import Zoo

TOKEN = "hf_TestSecretToken1234567890abcdefXYZ"
EVAL = {"task": "sentiment", "name": "sent", "n": 50, "split": "validation", "seed": 0, "metric": "accuracy",
        "base": {"accuracy": 0.52, "macro_f1": 0.41}, "adapter": {"accuracy": 0.86, "macro_f1": 0.855}}


def _png() -> bytes:
    """A minimal valid 1x1 PNG (the report plot stands in)."""
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00\x00")) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory, tiny_base_dir) -> Zoo:
    """Two adapters on the tiny base: `sent` (evaluated, with a report plot) and `qa1` (not evaluated yet),
    plus a router folder."""
    zoo = Zoo(tmp_path_factory.mktemp("src") / "zoo")
    for name, task, seed in (("sent", "sentiment", 0), ("qa1", "qa", 1)):
        make_adapter(zoo, tiny_base_dir, name, task, seed)
        atomic_write_json(zoo.adapter_dir(name) / "training.json",
                          {"task": task, "base": resolve_base(str(tiny_base_dir)).hash, "loss_log": [{"loss": 1.0}]})
        zoo.update(lambda d, n=name: d["adapters"][n].update(
            lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"], "layers": None,
                  "use_dora": False},
            train={"learning_rate": 1e-3, "batch_size": 8, "epochs": 1.0}, path=f"adapters/{n}",
            data={"source": "/home/someone/data/sst2/train.jsonl", "examples": 40, "tokens": 900}))
        zoo.update(lambda d, n=name: d["adapters"][n]["base"].update(quantized=True))
    zoo.set_metrics("sent", "eval", EVAL)
    zoo.reports_dir.mkdir(parents=True)
    (zoo.reports_dir / "sent.png").write_bytes(_png())
    zoo.router_dir.mkdir()
    atomic_write_json(zoo.router_dir / "router.json", {"classes": ["sent", "qa1"]})
    (zoo.router_dir / "router.pkl").write_bytes(b"never published")
    return zoo


@pytest.fixture
def no_token(monkeypatch, tmp_path):
    """No HF_TOKEN and no cached login."""
    import huggingface_hub.constants as c

    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(c, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(c, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))


def push(zoo: Zoo, *args: str) -> int:
    return main(["push", *args, "--zoo", str(zoo.root)])


def all_bytes(root: Path) -> list[tuple[Path, bytes]]:
    return [(p, p.read_bytes()) for p in root.rglob("*") if p.is_file()]



# a fake Hub for huggingface_hub's own client -----------------------------------------------------------------------
class FakeHub:
    """The four Hub endpoints `create_repo` + `upload_folder` use, on 127.0.0.1. We run the real HfApi client
    against it (rather than recording HfApi calls) so the test covers the actual HTTP the upload makes: auth
    header, repo creation, preupload, README validation and the ndjson commit. Every file is answered as a
    'regular' (inline, base64) upload, so no LFS/Xet storage is needed."""

    def __init__(self):
        self.created: list[dict] = []
        self.files: dict[str, dict[str, bytes]] = {}
        self.auth: set[str] = set()
        self.unexpected: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hub.auth.add(self.headers.get("Authorization", ""))
                self._reply(*hub.answer(self.path, body))

            def do_GET(self):
                hub.unexpected.append(f"GET {self.path}")
                self._reply(404, {"error": "not in the fake hub"})

            def _reply(self, status, obj):
                send_json(self, status, obj)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, path: str, body: bytes):
        path = path.split("?")[0]
        if path == "/api/repos/create":
            req = json.loads(body)
            self.created.append(req)
            return 200, {"url": f"{self.url}/{req['organization']}/{req['name']}"}
        if path == "/api/validate-yaml":
            ModelCard(json.loads(body)["content"])  # the card must at least parse on the "server" too
            return 200, {}
        parts = path.strip("/").split("/")  # api/models/<ns>/<name>/<preupload|commit>/main
        if len(parts) == 6 and parts[:2] == ["api", "models"] and parts[4] == "preupload":
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
        if len(parts) == 6 and parts[:2] == ["api", "models"] and parts[4] == "commit":
            repo = f"{parts[2]}/{parts[3]}"
            for line in body.splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    self.files.setdefault(repo, {})[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                elif item["key"] != "header":
                    self.unexpected.append(f"commit op {item['key']}")
            return 200, {"commitUrl": f"{self.url}/{repo}/commit/{'a' * 40}", "commitOid": "a" * 40}
        self.unexpected.append(f"POST {path}")
        return 404, {"error": "not in the fake hub"}

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub.constants as c

    hub = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    yield hub
    hub.close()


# what `zoo pull` reads -------------------------------------------------------------------------------------------
@pytest.fixture
def published(tiny_zoo, tmp_path, no_token) -> Path:
    """`zoo push --all --dry-run` output: what the Hub repos would hold, as local folders."""
    out = tmp_path / "published"
    assert push(tiny_zoo, "--all", "--repo", "alice/zoo", "--dry-run", "--out", str(out)) == 0
    assert push(tiny_zoo, "sent", "--repo", "alice/sst2-lora", "--dry-run", "--out", str(out)) == 0
    return out


def pull(zoo_dir: Path, *args: str) -> int:
    return main(["pull", *args, "--into", str(zoo_dir)])
