"""`zoo pull` without the network: from local folders laid out as Hub repos (what `zoo push --dry-run` writes),
from a stand-in for the Hub's download, and everything a pulled adapter may bring that it must not."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest
from huggingface_hub import metadata_load

from tests.helpers import make_adapter
from tests.hub_zoo import TOKEN, all_bytes, pull, push
from zoo.base import resolve_base
from zoo.fsutil import atomic_write_json
from zoo.manifest import BaseInfo
from zoo.store import Zoo


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
