"""The zoo folder: manifest writes are atomic and locked, names are safe, damage is reported."""

import json
import multiprocessing as mp

import pytest

from tests.helpers import entry
from zoo.errors import ZooError
from zoo.fsutil import atomic_write_json, check_name
from zoo.store import Zoo, safetensors_error


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", "", ".hidden", "x" * 65, "a\\b", "a b"])
def test_unsafe_names_are_refused(bad):
    with pytest.raises(ZooError, match="invalid"):
        check_name(bad)


def test_atomic_write_leaves_old_file_when_serialization_fails(tmp_path):
    path = tmp_path / "m.json"
    atomic_write_json(path, {"ok": 1})
    class Exploding:
        def __str__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_write_json(path, {"bad": Exploding()})
    assert json.loads(path.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def _put_many(root, worker):
    zoo = Zoo(root)
    for i in range(20):
        zoo.put(entry(f"w{worker}-{i}"))


def test_concurrent_writers_do_not_lose_entries(tmp_path):
    procs = [mp.get_context("fork").Process(target=_put_many, args=(tmp_path, w)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert len(Zoo(tmp_path).entries()) == 60


def test_problems_report_missing_corrupt_and_unlisted(tmp_path):
    zoo = Zoo(tmp_path)
    zoo.put(entry("gone"))
    zoo.put(entry("trunc"))
    d = zoo.adapter_dir("trunc")
    d.mkdir(parents=True)
    (d / "adapter_config.json").write_text("{}")
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    (d / "adapter_model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 8)
    (tmp_path / "adapters" / "stray").mkdir()
    problems = {}
    for p in zoo.problems():
        problems.setdefault(p.name, []).append(p.what)
    assert "missing" in problems["gone"][0]
    assert "truncated" in problems["trunc"][0]
    assert "no manifest entry" in problems["stray"][0]
    assert zoo.healthy() == []


def test_safetensors_check_accepts_a_valid_file(tmp_path):
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(3)}, tmp_path / "ok.safetensors")
    assert safetensors_error(tmp_path / "ok.safetensors") is None


def test_unreadable_manifest_is_a_clear_error(tmp_path):
    (tmp_path / "zoo.json").write_text("{not json")
    with pytest.raises(ZooError, match="not valid JSON"):
        Zoo(tmp_path).entries()


@pytest.mark.parametrize("kill_at, survivor", [("between the renames", "old"), ("before the cleanup", "new")])
def test_doctor_finishes_a_swap_that_a_kill_interrupted(kill_at, survivor, tmp_path, monkeypatch, capsys):
    """A kill inside `replace_dir` leaves `.NAME.old-PID`: `zoo list` reports it, `zoo doctor` restores the old
    copy when the new one is missing and deletes it when the new one is in place."""
    import os

    from zoo import fsutil
    from zoo.cli import main

    zoo = Zoo(tmp_path)
    zoo.put(entry("a"))
    final = zoo.adapter_dir("a")
    for folder, text in ((final, "old"), (tmp_path / ".staging" / "a-1", "new")):
        folder.mkdir(parents=True)
        (folder / "adapter_config.json").write_text(json.dumps({"v": text}))
    real_replace, calls = os.replace, []

    def killed(src, dst):
        calls.append(src)
        if kill_at == "between the renames" and len(calls) == 2:
            raise KeyboardInterrupt  # what SIGKILL would leave: the second rename never happened
        real_replace(src, dst)

    monkeypatch.setattr(fsutil.os, "replace", killed)
    monkeypatch.setattr(fsutil.shutil, "rmtree", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        fsutil.replace_dir(tmp_path / ".staging" / "a-1", final)
    monkeypatch.undo()
    leftovers = [p.name for p in final.parent.iterdir() if ".old-" in p.name]
    assert leftovers == [f".a.old-{os.getpid()}"] and final.exists() == (survivor == "new")

    main(["list", "--zoo", str(tmp_path)])
    assert "interrupted update" in capsys.readouterr().out
    main(["doctor", "--zoo", str(tmp_path)])
    assert ("restored" if survivor == "old" else "deleted the old copy") in capsys.readouterr().out
    assert json.loads((final / "adapter_config.json").read_text()) == {"v": survivor}
    assert not [p for p in final.parent.iterdir() if ".old-" in p.name]


def _hold_name_lock(root, ready, release):
    with Zoo(root).name_lock("sentiment"):
        ready.set()
        release.wait(30)


def test_two_trainings_of_one_name_cannot_share_a_run(tmp_path):
    """A second `zoo train sentiment` in the same zoo is refused at once while the first runs (they would share
    and delete each other's checkpoints); another name, or the same name afterwards, is fine."""
    ctx = mp.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_name_lock, args=(tmp_path, ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(ZooError, match="another process is training 'sentiment'"):
            with Zoo(tmp_path).name_lock("sentiment"):
                pass
        with Zoo(tmp_path).name_lock("qa"):
            pass
    finally:
        release.set()
        holder.join(30)
    with Zoo(tmp_path).name_lock("sentiment"):
        assert (tmp_path / ".runs" / "sentiment.lock").exists()
