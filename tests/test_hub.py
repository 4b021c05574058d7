"""`zoo push` / `zoo pull` without the network: a tiny zoo on the 2-layer test base, dry-run folders parsed back
with huggingface_hub's own card parser, a real upload through `HfApi` to a fake Hub on 127.0.0.1, and pulls from
local folders laid out as Hub repos."""

from __future__ import annotations

import base64
import json
import os
import shutil
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from huggingface_hub import ModelCard, metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results

from tests import helpers
from tests.helpers import make_adapter, send_json
from zoo.base import resolve_base
from zoo.cli import main
from zoo.fsutil import atomic_write_json
from zoo.manifest import BaseInfo
from zoo.outdir import MARKER
from zoo.store import Zoo

TOKEN = "hf_TestSecretToken1234567890abcdefXYZ"
EVAL = {"task": "sentiment", "name": "sent", "n": 50, "split": "validation", "seed": 0, "metric": "accuracy",
        "base": {"accuracy": 0.52, "macro_f1": 0.41}, "adapter": {"accuracy": 0.86, "macro_f1": 0.855}}
ADAPTER_FILES = ["README.md", "adapter_config.json", "adapter_model.safetensors", "task.json", "training.json",
                 "zoo_entry.json"]


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


# push --dry-run ----------------------------------------------------------------------------------------------------
def test_dry_run_writes_the_repo_folder_and_a_valid_card(tiny_zoo, tmp_path, no_token, capsys):
    out = tmp_path / "out"
    assert push(tiny_zoo, "sent", "--repo", "alice/sst2-lora", "--dry-run", "--out", str(out)) == 0
    folder = out / "sst2-lora"
    files = sorted(p.name for p in folder.iterdir() if p.name != MARKER)
    assert files == sorted([*ADAPTER_FILES, "eval.png"]) and (folder / MARKER).is_file()
    printed = capsys.readouterr().out
    assert "alice/sst2-lora" in printed and all(f in printed for f in files)
    assert (folder / "adapter_model.safetensors").read_bytes() == \
        (tiny_zoo.adapter_dir("sent") / "adapter_model.safetensors").read_bytes()

    card = ModelCard.load(folder / "README.md")
    meta = metadata_load(folder / "README.md")
    assert meta == card.data.to_dict()
    assert meta["library_name"] == "peft"
    assert {"lora", "qlora", "adapter-zoo", "sentiment"} <= set(meta["tags"])
    assert meta["datasets"] == ["stanfordnlp/sst2"]
    assert meta["license"] == "unknown"  # "unknown (SST, Socher et al. 2013)" -> the Hub id "unknown"
    assert "base_model" not in meta  # a local base folder has no Hub id
    name, results = model_index_to_eval_results(meta["model-index"])
    assert name == "sst2-lora"
    assert {r.metric_type: r.metric_value for r in results} == EVAL["adapter"]
    assert {(r.task_type, r.dataset_type, r.dataset_split) for r in results} == \
        {("text-classification", "stanfordnlp/sst2", "validation")}
    assert "| accuracy | 0.520 | 0.860 |" in card.text and "![base vs adapter](eval.png)" in card.text
    assert 'PeftModel.from_pretrained(' in card.text and "zoo pull alice/sst2-lora" in card.text


def test_card_peft_snippet_runs(tiny_zoo, tmp_path, no_token, tiny_base_dir, capsys):
    """The card's "With PEFT" code, pointed at the repo folder and the local base, loads and generates."""
    out = tmp_path / "out"
    assert push(tiny_zoo, "sent", "--repo", "alice/sst2-lora", "--dry-run", "--out", str(out)) == 0
    text = (out / "sst2-lora" / "README.md").read_text()
    code = text.split("```python\n")[1].split("```")[0]
    code = code.replace('"alice/sst2-lora"', repr(str(out / "sst2-lora"))).replace('"PATH/TO/BASE"', repr(str(tiny_base_dir)))
    namespace: dict = {}
    exec(compile(code, "card-snippet", "exec"), namespace)
    from peft import PeftModel
    from safetensors.torch import load_file

    model = namespace["model"]
    assert isinstance(model, PeftModel)
    saved = load_file(out / "sst2-lora" / "adapter_model.safetensors")
    loaded = {k: v for k, v in model.state_dict().items() if "lora_B" in k}
    assert len(loaded) == len([k for k in saved if "lora_B" in k]) > 0
    assert all(v.abs().sum() > 0 for v in loaded.values())  # the published (non-zero) B weights, not a fresh init
    assert namespace["out"].shape[1] > namespace["inputs"]["input_ids"].shape[1]


def test_published_files_leak_no_local_paths(tiny_zoo, tmp_path, no_token, tiny_base_dir):
    out = tmp_path / "out"
    assert push(tiny_zoo, "sent", "--repo", "alice/sst2-lora", "--dry-run", "--out", str(out)) == 0
    for path, data in all_bytes(out):
        assert str(tiny_base_dir).encode() not in data, path
        assert b"/home/someone" not in data, path
    config = json.loads((out / "sst2-lora" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == tiny_base_dir.name


def test_card_without_metrics_has_no_model_index(tiny_zoo, tmp_path, no_token):
    out = tmp_path / "out"
    assert push(tiny_zoo, "qa1", "--repo", "alice/qa1", "--dry-run", "--out", str(out)) == 0
    assert "eval.png" not in {p.name for p in (out / "qa1").iterdir()}
    meta = metadata_load(out / "qa1" / "README.md")
    assert "model-index" not in meta and meta["license"] == "cc-by-sa-4.0" and meta["datasets"] == ["rajpurkar/squad"]
    assert "Not evaluated yet" in (out / "qa1" / "README.md").read_text()


def test_card_names_the_embedded_base_and_maps_licenses():
    from tasks import get_task
    from zoo.hub import build_card, hf_license

    entry = helpers.entry("summ", "summarization", base=BaseInfo("smollm2-135m", "sha256:x", False),
                          metrics={"eval": {"task": "summarization", "n": 20, "base": {"rouge1": 10.0, "rougeL": 8.0},
                                            "adapter": {"rouge1": 30.5, "rouge2": 9.25, "rougeL": 25.0}}})
    card = build_card(entry, get_task("summarization"), "bob/summ")
    meta = card.data.to_dict()
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["license"] == "cc-by-nc-sa-4.0" and "qlora" not in meta["tags"]  # full-precision base: plain LoRA
    _, results = model_index_to_eval_results(meta["model-index"])
    assert {r.metric_type: r.metric_value for r in results} == {"rouge1": 30.5, "rouge2": 9.25, "rougeL": 25.0}
    assert {r.task_type for r in results} == {"summarization"}
    assert "| rougeL | 8.0 | 25.0 | +17.0 |" in card.text  # points shown as METRICS says: one decimal
    assert hf_license("Apache-2.0") == {"license": "apache-2.0"}
    assert hf_license("Custom research terms v2") == {"license": "other", "license_name": "custom-research-terms-v2"}
    unknown_task = build_card(entry.with_(task="no_such_task", metrics={}), None, "bob/x").data.to_dict()
    assert unknown_task["license"] == "unknown" and "datasets" not in unknown_task


def test_dry_run_whole_zoo_one_repo_per_adapter(tiny_zoo, tmp_path, no_token):
    out = tmp_path / "out"
    assert push(tiny_zoo, "--all", "--repo", "alice/zoo", "--dry-run", "--out", str(out)) == 0
    assert sorted(p.name for p in out.iterdir()) == ["zoo", "zoo-qa1", "zoo-sent"]
    manifest = json.loads((out / "zoo" / "zoo.json").read_text())
    assert {n: e["repo"] for n, e in manifest["adapters"].items()} == {"sent": "alice/zoo-sent", "qa1": "alice/zoo-qa1"}
    assert manifest["adapters"]["sent"]["metrics"]["eval"] == EVAL
    assert sorted(p.name for p in (out / "zoo" / "router").iterdir()) == ["router.json"]  # the pickle stays home
    assert "alice/zoo-sent" in (out / "zoo" / "README.md").read_text()
    assert metadata_load(out / "zoo" / "README.md")["library_name"] == "peft"


def test_dry_run_single_repo(tiny_zoo, tmp_path, no_token):
    out = tmp_path / "out"
    assert push(tiny_zoo, "--all", "--single-repo", "--repo", "alice/zoo", "--dry-run", "--out", str(out)) == 0
    folder = out / "zoo"
    assert sorted(p.name for p in (folder / "adapters").iterdir()) == ["qa1", "sent"]
    assert sorted(p.name for p in (folder / "adapters" / "sent").iterdir()) == sorted([*ADAPTER_FILES, "eval.png"])
    assert 'subfolder="adapters/sent"' in (folder / "adapters" / "sent" / "README.md").read_text()
    assert json.loads((folder / "zoo.json").read_text())["adapters"]["qa1"]["path"] == "adapters/qa1"


@pytest.mark.reliability
def test_dry_run_never_replaces_a_folder_it_did_not_write(tiny_zoo, tmp_path, no_token, monkeypatch, capsys):
    """`zoo push NAME --dry-run --out .` beside the zoo with a repo named like the zoo folder, or like a folder
    of the user's: exit 2 with one line, everything byte for byte as it was; a folder an earlier dry run wrote
    (or an empty one) is replaced."""
    work = tmp_path / "work"
    shutil.copytree(tiny_zoo.root, work / "zoo")
    (work / "notes").mkdir()
    (work / "notes" / "todo.md").write_text("mine")
    monkeypatch.chdir(work)
    for repo in ("alice/zoo", "alice/notes"):
        before = all_bytes(work)
        assert main(["push", "sent", "--repo", repo, "--dry-run", "--out", ".", "--zoo", "zoo"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "did not write" in err and "--out" in err, err
        assert all_bytes(work) == before and sorted(p.name for p in work.iterdir()) == ["notes", "zoo"]
    assert Zoo(work / "zoo").healthy() == ["qa1", "sent"]
    assert main(["push", "sent", "--repo", "alice/sst2-lora", "--dry-run", "--out", ".", "--zoo", "zoo"]) == 0
    (work / "sst2-lora" / "stale.md").write_text("from the first dry run")
    assert main(["push", "sent", "--repo", "alice/sst2-lora", "--dry-run", "--out", ".", "--zoo", "zoo"]) == 0
    assert not (work / "sst2-lora" / "stale.md").exists() and (work / "sst2-lora" / "adapter_config.json").is_file()
    (work / "empty").mkdir()
    assert main(["push", "qa1", "--repo", "alice/empty", "--dry-run", "--out", ".", "--zoo", "zoo"]) == 0


def test_push_argument_errors_are_exit_2(tiny_zoo, tmp_path, no_token, capsys):
    assert push(tiny_zoo, "sent", "--repo", "not a repo", "--dry-run") == 2
    assert push(tiny_zoo, "sent", "--all", "--repo", "alice/x", "--dry-run") == 2
    assert push(tiny_zoo, "nope", "--repo", "alice/x", "--dry-run") == 2
    err = capsys.readouterr().err
    assert "invalid Hub repo id" in err and "one adapter NAME or --all" in err and "no adapter named 'nope'" in err


def test_missing_token_is_exit_2_before_any_work(tiny_zoo, no_token, capsys, monkeypatch):
    import zoo.hub

    staged = []
    monkeypatch.setattr(zoo.hub, "stage_push", lambda *a, **k: staged.append(a) or [])
    assert push(tiny_zoo, "sent", "--repo", "alice/sst2-lora") == 2
    err = capsys.readouterr().err
    assert "no Hugging Face token" in err and "HF_TOKEN" in err and "--dry-run" in err
    assert staged == []  # refused before building anything


# push through huggingface_hub's client to a fake Hub ---------------------------------------------------------------
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


def test_push_uploads_every_repo_through_hfapi(tiny_zoo, tmp_path, fake_hub, capsys):
    assert push(tiny_zoo, "--all", "--repo", "alice/zoo", "--private") == 0, capsys.readouterr().err
    assert fake_hub.unexpected == []
    assert [(r["organization"], r["name"], r.get("visibility")) for r in fake_hub.created] == \
        [("alice", "zoo-qa1", "private"), ("alice", "zoo-sent", "private"), ("alice", "zoo", "private")]
    assert fake_hub.auth == {f"Bearer {TOKEN}"}  # the token travels in the header, and only there
    # what arrived is byte for byte what --dry-run writes
    out = tmp_path / "dry"
    assert push(tiny_zoo, "--all", "--repo", "alice/zoo", "--dry-run", "--out", str(out)) == 0
    for repo, files in fake_hub.files.items():
        local = out / repo.split("/")[1]
        assert sorted(files) == sorted(p.relative_to(local).as_posix() for p in local.rglob("*")
                                       if p.is_file() and p.name != MARKER)  # the output marker stays local
        assert all(data == (local / rel).read_bytes() for rel, data in files.items())
        assert all(TOKEN.encode() not in data for data in files.values())
    printed = capsys.readouterr()
    assert "pushed" in printed.out and TOKEN not in printed.out + printed.err


def test_push_failure_names_the_repo_not_the_token(tiny_zoo, fake_hub, capsys, monkeypatch):
    monkeypatch.setattr(fake_hub, "answer", lambda path, body: (403, {"error": f"bad token {TOKEN}"}))
    assert push(tiny_zoo, "sent", "--repo", "alice/sst2-lora") == 2
    err = capsys.readouterr().err
    assert "alice/sst2-lora" in err and "403" in err and TOKEN not in err
    # an error whose own message carries the token (a client library echoing a header) is scrubbed too
    import huggingface_hub

    def leaky(self, **kw):
        raise ValueError(f"Authorization: Bearer {TOKEN} was rejected")
    monkeypatch.setattr(fake_hub, "answer", FakeHub.answer.__get__(fake_hub))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", leaky)
    assert push(tiny_zoo, "sent", "--repo", "alice/sst2-lora") == 2
    err = capsys.readouterr().err
    assert "alice/sst2-lora" in err and "Bearer ***" in err and TOKEN not in err


# pull --------------------------------------------------------------------------------------------------------------
@pytest.fixture
def published(tiny_zoo, tmp_path, no_token) -> Path:
    """`zoo push --all --dry-run` output: what the Hub repos would hold, as local folders."""
    out = tmp_path / "published"
    assert push(tiny_zoo, "--all", "--repo", "alice/zoo", "--dry-run", "--out", str(out)) == 0
    assert push(tiny_zoo, "sent", "--repo", "alice/sst2-lora", "--dry-run", "--out", str(out)) == 0
    return out


def pull(zoo_dir: Path, *args: str) -> int:
    return main(["pull", *args, "--into", str(zoo_dir)])


def test_pull_adapter_from_a_local_repo_folder(published, tiny_zoo, tiny_base_dir, tmp_path, capsys):
    dest = Zoo(tmp_path / "dest")
    assert pull(dest.root, str(published / "sst2-lora"), "--base", str(tiny_base_dir), "--name", "mine") == 0
    assert dest.healthy() == ["mine"]
    entry, original = dest.get("mine"), tiny_zoo.get("sent")
    assert entry.metrics == original.metrics and entry.task == "sentiment" and entry.kind == "trained"
    assert entry.base.hash == original.base.hash and entry.base.id == str(tiny_base_dir)
    assert entry.pulled_from == str(published / "sst2-lora") and entry.path == "adapters/mine"
    assert sorted(p.name for p in dest.adapter_dir("mine").iterdir()) == \
        ["adapter_config.json", "adapter_model.safetensors", "task.json", "training.json"]
    assert (dest.adapter_dir("mine") / "adapter_model.safetensors").read_bytes() == \
        (tiny_zoo.adapter_dir("sent") / "adapter_model.safetensors").read_bytes()
    assert not (dest.root / ".staging").exists()
    # the same name again needs --force
    assert pull(dest.root, str(published / "sst2-lora"), "--base", str(tiny_base_dir), "--name", "mine") == 2
    assert "--force" in capsys.readouterr().err
    assert pull(dest.root, str(published / "sst2-lora"), "--base", str(tiny_base_dir), "--name", "mine",
                "--force") == 0


def test_embedded_base_round_trip_needs_no_base_flag(tiny_zoo, tmp_path, no_token, embedded_base_dir):
    """An adapter on the embedded base is published with `base_model: HuggingFaceTB/SmolLM2-135M-Instruct` and
    pulls back without --base: `smollm2-135m` resolves locally and its fingerprint is checked."""
    src = Zoo(tmp_path / "src")
    make_adapter(src, embedded_base_dir, "sent", "sentiment", seed=0)  # shaped for the real base: pull checks
    src.put(tiny_zoo.get("sent").with_(base=BaseInfo("smollm2-135m", resolve_base().hash, True)))
    out = tmp_path / "out"
    assert push(src, "sent", "--repo", "alice/sent", "--dry-run", "--out", str(out)) == 0
    assert metadata_load(out / "sent" / "README.md")["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    config = json.loads((out / "sent" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    dest = Zoo(tmp_path / "dest")
    assert pull(dest.root, str(out / "sent")) == 0
    assert dest.get("sent").base == BaseInfo("smollm2-135m", resolve_base().hash, True)


def test_pull_whole_zoo_from_local_folders(published, tiny_base_dir, tmp_path):
    dest = Zoo(tmp_path / "dest")
    assert pull(dest.root, str(published / "zoo"), "--base", str(tiny_base_dir)) == 0
    assert dest.healthy() == ["qa1", "sent"]
    assert (dest.router_dir / "router.json").is_file() and not (dest.router_dir / "router.pkl").exists()
    assert dest.get("sent").pulled_from == "alice/zoo-sent"


def test_pull_single_repo_zoo(tiny_zoo, tiny_base_dir, tmp_path, no_token):
    out = tmp_path / "out"
    assert push(tiny_zoo, "--all", "--single-repo", "--repo", "alice/zoo", "--dry-run", "--out", str(out)) == 0
    dest = Zoo(tmp_path / "dest")
    assert pull(dest.root, str(out / "zoo"), "--base", str(tiny_base_dir)) == 0
    assert dest.healthy() == ["qa1", "sent"]


def test_pull_refuses_pickles_and_adds_nothing(published, tiny_base_dir, tmp_path, capsys):
    repo = tmp_path / "evil"
    shutil.copytree(published / "sst2-lora", repo)
    (repo / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    dest = Zoo(tmp_path / "dest")
    assert pull(dest.root, str(repo), "--base", str(tiny_base_dir)) == 2
    err = capsys.readouterr().err
    assert "adapter_model.bin" in err and "pickle" in err
    assert dest.entries() == {} and not (dest.root / "adapters").exists()


def test_pull_refuses_another_base(published, tmp_path, capsys, embedded_base_dir):
    dest = Zoo(tmp_path / "dest")
    assert pull(dest.root, str(published / "sst2-lora"), "--base", str(embedded_base_dir)) == 2
    assert "was trained on base" in capsys.readouterr().err
    # without --base the published folder name of the local base cannot be resolved: say what to do
    assert pull(dest.root, str(published / "sst2-lora")) == 2
    assert "--base" in capsys.readouterr().err
    assert dest.entries() == {}


def test_pull_from_unreachable_hub_says_local_folders_work(tmp_path, monkeypatch, capsys):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    assert pull(tmp_path / "dest", "alice/zoo") == 2
    err = capsys.readouterr().err
    assert "alice/zoo" in err and "local folder" in err


def test_pull_from_hub_takes_only_safe_files(published, tiny_base_dir, tmp_path, monkeypatch, capsys):
    """The Hub path with `list_repo_files` / `snapshot_download` replaced by a local stand-in (no network): the
    download asks only for safe patterns, and a repo listing a pickle is refused before anything is downloaded."""
    import fnmatch

    import huggingface_hub

    import zoo.hub.common

    repo_dir = tmp_path / "hub-repo"
    shutil.copytree(published / "sst2-lora", repo_dir)
    (repo_dir / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    (repo_dir / "adapter_model.bin").write_bytes(b"pickle")
    calls = []

    def fake_snapshot(repo_id, allow_patterns=None, **kw):
        """The Hub cache's layout: every snapshot file is a relative link into the repo's `blobs/`."""
        calls.append((repo_id, allow_patterns))
        cache = tmp_path / "hub-cache" / "models--alice--sst2-lora"
        snap = cache / "snapshots" / ("0" * 40)
        for p in repo_dir.rglob("*"):
            rel = p.relative_to(repo_dir).as_posix()
            if p.is_file() and any(fnmatch.fnmatch(rel, pat) for pat in allow_patterns):
                blob = cache / "blobs" / rel.replace("/", "_")
                blob.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(p, blob)
                (snap / rel).parent.mkdir(parents=True, exist_ok=True)
                (snap / rel).symlink_to(os.path.relpath(blob, (snap / rel).parent))
        return str(snap)

    monkeypatch.setattr(zoo.hub.common, "hub_reachable", lambda timeout=5.0: True)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda self, repo_id, **kw: sorted(
        p.relative_to(repo_dir).as_posix() for p in repo_dir.rglob("*") if p.is_file()))
    dest = Zoo(tmp_path / "dest")
    assert pull(dest.root, "alice/sst2-lora", "--base", str(tiny_base_dir)) == 2
    assert "adapter_model.bin" in capsys.readouterr().err and calls == [] and dest.entries() == {}
    (repo_dir / "adapter_model.bin").unlink()
    assert pull(dest.root, "alice/sst2-lora", "--base", str(tiny_base_dir)) == 0
    assert calls == [("alice/sst2-lora", ["*.safetensors", "*.json", "*.md", "*.png"])]
    assert dest.healthy() == ["sent"] and dest.get("sent").pulled_from == "alice/sst2-lora"
    assert not any(p.is_symlink() for p in dest.root.rglob("*"))  # the cache's links were followed, not copied


def test_token_never_written(tiny_zoo, tmp_path, fake_hub, tiny_base_dir):
    """Push (dry-run and real) and pull with HF_TOKEN set: the token is in no file anywhere under tmp."""
    out = tmp_path / "out"
    assert push(tiny_zoo, "--all", "--repo", "alice/zoo", "--dry-run", "--out", str(out)) == 0
    assert push(tiny_zoo, "sent", "--repo", "alice/sent") == 0
    assert pull(tmp_path / "dest", str(out / "zoo"), "--base", str(tiny_base_dir)) == 0
    for root in (tmp_path, tiny_zoo.root):
        for path, data in all_bytes(root):
            assert TOKEN.encode() not in data, path


# what a pulled adapter may bring (issue 16) ------------------------------------------------------------------------
def tamper(published: Path, tmp_path: Path, change) -> Path:
    """A copy of the published `sst2-lora` repo folder with `change(folder)` applied."""
    repo = tmp_path / "tampered" / "sst2-lora"
    shutil.copytree(published / "sst2-lora", repo)
    change(repo)
    return repo


def edit_json(path: Path, **changes) -> None:
    atomic_write_json(path, {**json.loads(path.read_text()), **changes})


def refused(dest: Path, capsys, *args: str) -> str:
    """The pull exits 2 with one line and leaves `dest` exactly as it was."""
    before = all_bytes(dest) if dest.exists() else None
    assert pull(dest, *args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert (all_bytes(dest) if dest.exists() else None) == before
    return err


def test_pulled_entry_keeps_only_known_fields_and_no_routes(published, tiny_base_dir, tmp_path):
    """A published entry's unknown fields and its `route_as` do not survive the pull: routes stay the user's."""
    repo = tamper(published, tmp_path, lambda r: edit_json(r / "zoo_entry.json", route_as=["qa", "sentiment"],
                                                           created_by="someone", repo="evil/other"))
    dest = Zoo(tmp_path / "dest")
    assert pull(dest.root, str(repo), "--base", str(tiny_base_dir)) == 0
    entry = dest.get("sent")
    assert entry.route_as == () and entry.routes == ("sentiment",) and entry.repo is None and entry.extra == {}
    assert "created_by" not in dest.read()["adapters"]["sent"]


@pytest.mark.parametrize("change", [{"task": "../../etc/passwd"}, {"metrics": ["not", "a", "table"]},
                                    {"base": {"hash": 42}}, {"kind": "root"}])
def test_pulled_entry_of_the_wrong_shape_is_refused(change, published, tiny_base_dir, tmp_path, capsys):
    repo = tamper(published, tmp_path, lambda r: edit_json(r / "zoo_entry.json", **change))
    err = refused(tmp_path / "dest", capsys, str(repo), "--base", str(tiny_base_dir))
    assert "nothing was added" in err


def test_base_comes_from_here_never_from_the_pulled_metadata(published, tiny_base_dir, tmp_path, monkeypatch,
                                                            capsys):
    """`base.id: evil/huge` in the pulled entry is never resolved (no download): the base is the one of the
    zoo pulled into (or --base, or the embedded default)."""
    import zoo.base

    asked = []
    monkeypatch.setattr(zoo.base, "_hub_path", lambda repo_id: asked.append(repo_id) or tiny_base_dir)
    evil = {"id": "evil/huge", "hub_id": "evil/huge", "hash": resolve_base(str(tiny_base_dir)).hash}
    repo = tamper(published, tmp_path, lambda r: edit_json(r / "zoo_entry.json", base=evil))
    dest = Zoo(tmp_path / "dest")
    assert "was trained on base" in refused(dest.root, capsys, str(repo))  # fresh zoo: the embedded base only
    assert pull(dest.root, str(published / "sst2-lora"), "--base", str(tiny_base_dir), "--name", "first") == 0
    assert pull(dest.root, str(repo), "--name", "second") == 0  # no --base: this zoo's own base
    assert dest.get("second").base.id == str(tiny_base_dir) and asked == []


def test_pulled_task_spec_travels_with_its_adapter(tiny_zoo, tiny_base_dir, tmp_path, no_token):
    """An adapter of a task-file task (not in any registry) is published with its `task.json`, the local data
    folder shortened to its name, and a pulled copy knows its task in a new zoo."""
    from tasks import TaskSpec, all_tasks, get_task, save_spec, spec_for_adapter

    src = Zoo(tmp_path / "src")
    shutil.copytree(tiny_zoo.adapter_dir("sent"), src.adapter_dir("mood"))
    src.put(tiny_zoo.get("sent").with_(name="mood", task="mood", path="adapters/mood", metrics={}))
    spec = TaskSpec.from_json(
        {**get_task("sentiment").to_json(), "name": "mood", "dataset": str(tmp_path / "data" / "moods"),
         "local_dir": None})
    save_spec(src.adapter_dir("mood"), spec)
    assert "mood" not in all_tasks()
    out = tmp_path / "out"
    assert push(src, "mood", "--repo", "alice/mood", "--dry-run", "--out", str(out)) == 0
    assert str(tmp_path).encode() not in (out / "mood" / "task.json").read_bytes()
    dest = Zoo(tmp_path / "dest")
    assert pull(dest.root, str(out / "mood"), "--base", str(tiny_base_dir)) == 0
    pulled = spec_for_adapter(dest, "mood")
    assert pulled.name == "mood" and pulled.templates == spec.templates and pulled.labels == spec.labels
    assert (pulled.dataset, pulled.local_dir) == ("moods", "moods")


@pytest.mark.parametrize("change", [{"metric": "exec"}, {"name": "qa"}, {"dataset": "/home/someone/.ssh"},
                                    {"local_dir": "../../etc"}, {"ood": {"dataset": "/etc", "split": "passwd"}},
                                    {"templates": ["{text.__class__}"]}, [1, 2]])
def test_pulled_task_spec_is_checked_before_anything_is_written(change, published, tiny_base_dir, tmp_path, capsys):
    def damage(repo: Path):
        path = repo / "task.json"
        data = change if isinstance(change, list) else {**json.loads(path.read_text()), **change}
        atomic_write_json(path, data)

    repo = tamper(published, tmp_path, damage)
    assert "task.json" in refused(tmp_path / "dest", capsys, str(repo), "--base", str(tiny_base_dir))


def test_symlink_out_of_the_pulled_folder_is_refused(published, tiny_base_dir, tmp_path, capsys):
    """`training.json` linking to a file outside the folder (a credentials file) is never copied in; a link that
    stays inside the folder is fine."""
    secret = tmp_path / "credentials.json"
    secret.write_text('{"token": "hf_secret"}')

    def relink(target):
        def change(repo: Path):
            (repo / "training.json").rename(repo / "training-real.json")
            (repo / "training.json").symlink_to(target)
        return change

    inside = tamper(published, tmp_path / "in", relink("training-real.json"))
    assert pull(tmp_path / "ok", str(inside), "--base", str(tiny_base_dir)) == 0
    outside = tamper(published, tmp_path / "out", relink(secret))
    err = refused(tmp_path / "dest", capsys, str(outside), "--base", str(tiny_base_dir))
    assert "training.json is a symbolic link" in err and not (tmp_path / "dest").exists()


def test_symlinked_router_folder_of_a_zoo_is_refused(published, tiny_base_dir, tmp_path, capsys):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "router.json").write_text("{}")
    zoo_repo = tmp_path / "copy" / "zoo"
    shutil.copytree(published, zoo_repo.parent, dirs_exist_ok=True)
    shutil.rmtree(zoo_repo / "router")
    (zoo_repo / "router").symlink_to(outside, target_is_directory=True)
    assert "router is a symbolic link" in refused(tmp_path / "dest", capsys, str(zoo_repo), "--base",
                                                  str(tiny_base_dir))


def _header(obj) -> bytes:
    data = json.dumps(obj).encode()
    return struct.pack("<Q", len(data)) + data


@pytest.mark.parametrize("header", [[], {"a": 1}, {"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, "4"]}},
                                    None])
def test_damaged_safetensors_header_is_that_adapters_refusal(header, published, tiny_base_dir, tmp_path, capsys):
    """A header of `[]`, `{"a": 1}` or offsets that are not numbers: exit 2 naming the file, not a crash."""
    repo = tamper(published, tmp_path,
                  lambda r: (r / "adapter_model.safetensors").write_bytes(_header(header) + b"\0" * 4))
    assert "adapter_model.safetensors" in refused(tmp_path / "dest", capsys, str(repo), "--base",
                                                  str(tiny_base_dir))
