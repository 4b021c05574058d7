"""The hostile corpus (issue 16), built here in temporary folders: a real published adapter (`zoo push --dry-run`
of a tiny adapter, as tests/hub_zoo.py makes them) with one attack applied per copy.

Pulled, every copy is refused: exit 2, one line, within seconds, the target zoo byte for byte as it was and no
file of the corpus's choosing written anywhere. Planted straight into a zoo folder (no pull), each is listed as
broken, loading it is refused, and the zoo's good adapter keeps answering. Also here: the honest versions of
three reliability tests (a real token, a pickle beside intact safetensors, remote code in tokenizers and PEFT
configs too)."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import time
from pathlib import Path

import pytest

from tests.helpers import make_adapter
from zoo.base import resolve_base
from zoo.cli import main
from zoo.errors import ZooError
from zoo.fsutil import atomic_write_json
from zoo.store import Zoo

pytestmark = pytest.mark.reliability
GOOD = "good"  # the user's own adapter in the target zoo; its task (sentiment) is the route attacks go after
SECRET = '{"token": "hf_outside_the_folder"}'


# the attacks: each changes one thing in a copy of the published adapter folder -------------------------------
def edit_json(path: Path, **changes) -> None:
    atomic_write_json(path, {**json.loads(path.read_text()), **changes})


def safetensors_bytes(header) -> bytes:
    data = json.dumps(header).encode()
    return struct.pack("<Q", len(data)) + data


def pwn_pickle(marker: Path) -> bytes:
    """A pickle that creates `marker` when it is loaded (`builtins.open(marker, "w")`): proof it never was."""
    return b"cbuiltins\nopen\n(V" + str(marker).encode() + b"\nVw\ntR."


def widen_lora_a(folder: Path) -> None:
    """Tensors for a base twice as wide; `r` and the config stay consistent, only the base's shapes tell."""
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "adapter_model.safetensors")
    save_file({k: torch.zeros(v.shape[0], 2 * v.shape[1]) if "lora_A" in k else v for k, v in tensors.items()},
              folder / "adapter_model.safetensors")


def link_out(folder: Path) -> None:
    (folder / "training.json").unlink()
    (folder / "training.json").symlink_to(folder.parent.parent / "credentials.json")


ATTACKS = {
    "regex_targets": lambda f: edit_json(f / "adapter_config.json", target_modules="(.*.*)*x"),
    "olora_init": lambda f: edit_json(f / "adapter_config.json", init_lora_weights="olora"),
    "huge_rank": lambda f: edit_json(f / "adapter_config.json", r=100000),
    "task_is_a_path": lambda f: edit_json(f / "zoo_entry.json", task="/etc/passwd"),
    "training_links_out": link_out,
    "header_is_a_list": lambda f: (f / "adapter_model.safetensors").write_bytes(safetensors_bytes([])),
    "routes_taken": lambda f: edit_json(f / "zoo_entry.json", route_as=["sentiment", "qa"]),
    "base_evil_huge": lambda f: edit_json(f / "zoo_entry.json", base={"id": "evil/huge", "hub_id": "evil/huge",
                                                                      "hash": "sha256:" + "e" * 64}),
    "template_format_spec": lambda f: edit_json(f / "task.json", templates=["{text:>2000000000}"]),
    "dotted_name": lambda f: edit_json(f / "zoo_entry.json", name="m.v1"),
    "pickle_beside": lambda f: (f / "adapter_model.bin").write_bytes(pwn_pickle(f.parent.parent / "pwned")),
    "shapes_of_another_base": widen_lora_a,
}
# A pulled `route_as` is dropped, not refused (a published combination carries its own routes legitimately;
# what matters is that it never takes the user's): checked on its own below.
REFUSED = sorted(set(ATTACKS) - {"routes_taken"})


# the corpus and the zoos ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def published(tmp_path_factory, tiny_base_dir) -> Path:
    """`zoo push sent --dry-run --out`: the folder a Hub repo of a (tiny) trained adapter would hold."""
    zoo = Zoo(tmp_path_factory.mktemp("source") / "zoo")
    make_adapter(zoo, tiny_base_dir, "sent", "sentiment", seed=0)
    atomic_write_json(zoo.adapter_dir("sent") / "training.json",
                      {"task": "sentiment", "base": resolve_base(str(tiny_base_dir)).hash, "loss_log": []})
    out = tmp_path_factory.mktemp("published")
    assert main(["push", "sent", "--repo", "alice/sent", "--dry-run", "--out", str(out), "--zoo", str(zoo.root)]) == 0
    return out / "sent"


def hostile(published: Path, root: Path, attack: str) -> Path:
    """The corpus entry for `attack`: `root/corpus/<attack>`, with a secret file just outside it."""
    folder = root / "corpus" / attack
    shutil.copytree(published, folder)
    (root / "credentials.json").write_text(SECRET)
    ATTACKS[attack](folder)
    return folder


@pytest.fixture
def user_zoo(tmp_path, tiny_base_dir) -> Zoo:
    """The zoo being pulled into: one good sentiment adapter on the tiny base."""
    zoo = Zoo(tmp_path / "zoo")
    make_adapter(zoo, tiny_base_dir, GOOD, "sentiment", seed=3)
    return zoo


def snapshot(root: Path) -> dict[str, str]:
    """Every file and link under `root` (hidden ones included) -> a hash of its bytes or its link target."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            out[rel] = "link:" + str(path.readlink())
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


# pulled ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("attack", REFUSED)
def test_pull_refuses_each_hostile_adapter(attack, published, user_zoo, tmp_path, monkeypatch, capsys):
    """`zoo pull` of a hostile adapter: exit 2, one clear line, within seconds; every file under the test's
    folder (the target zoo, the corpus, the working directory) byte for byte as before; no base downloaded."""
    import zoo.base

    folder = hostile(published, tmp_path, attack)
    asked = []
    monkeypatch.setattr(zoo.base, "_hub_path", lambda repo_id: asked.append(repo_id) or Path("/nonexistent"))
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    t0 = time.perf_counter()
    assert main(["pull", str(folder), "--into", str(user_zoo.root)]) == 2
    took = time.perf_counter() - t0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("zoo pull: error:") and "Traceback" not in err, err
    assert took < 10, took
    assert snapshot(tmp_path) == before
    assert asked == [] and not (tmp_path / "pwned").exists()
    assert SECRET not in err


def test_pulled_routes_never_take_the_users(published, user_zoo, tmp_path, tiny_base_dir):
    """A pulled entry claiming routes (`route_as: [sentiment, qa]`) arrives answering its own task only: the
    zoo routes exactly as after pulling the same adapter without the claim, and never sends `qa` to it."""
    from router.api import adapter_map

    clean = Zoo(tmp_path / "clean")
    shutil.copytree(user_zoo.root, clean.root)
    assert main(["pull", str(published), "--into", str(clean.root), "--name", "theirs"]) == 0
    folder = hostile(published, tmp_path, "routes_taken")
    assert main(["pull", str(folder), "--into", str(user_zoo.root), "--name", "theirs"]) == 0
    assert user_zoo.get("theirs").route_as == () and user_zoo.get("theirs").routes == ("sentiment",)
    assert adapter_map(user_zoo) == adapter_map(clean) and "qa" not in adapter_map(user_zoo)


# planted straight into a zoo (no pull) -------------------------------------------------------------------------
PLANTED = sorted(set(REFUSED) - {"dotted_name"}) + ["m.v1"]  # the dotted attack is planted under its name
# what the zoo alone cannot tell without a base loaded: a foreign base fingerprint, tensors for another shape
NEEDS_THE_BASE = {"base_evil_huge", "shapes_of_another_base"}


def plant(zoo: Zoo, folder: Path, name: str, base_dir: Path) -> None:
    """Copy an attack's files into `adapters/<name>` and its published entry into the manifest, as someone
    with write access to the zoo folder could: no pull, no check."""
    shutil.copytree(folder, zoo.root / "adapters" / name, symlinks=True)
    raw = json.loads((folder / "zoo_entry.json").read_text())
    if raw["base"].get("id") != "evil/huge":
        raw["base"] = {**raw["base"], "id": str(base_dir)}  # looks like it was trained right here
    zoo.update(lambda d: d["adapters"].__setitem__(name, {**raw, "name": name, "path": f"adapters/{name}"}))


@pytest.fixture(scope="module")
def planted_zoo(tmp_path_factory, published, tiny_base_dir) -> tuple[Zoo, str]:
    """A zoo with the good adapter and every hostile one planted; with the good adapter's answer from before."""
    from zoo.serving.runtime import Runtime

    root = tmp_path_factory.mktemp("planted")
    zoo = Zoo(root / "zoo")
    make_adapter(zoo, tiny_base_dir, GOOD, "sentiment", seed=3)
    with Runtime(zoo, base=str(tiny_base_dir), quant=False) as rt:
        answer = rt.generate(["hi"], adapter=GOOD, max_new_tokens=3)[0]["answer"]
    for name in PLANTED:
        attack = "dotted_name" if name == "m.v1" else name
        plant(zoo, hostile(published, root / "corpus-root" / attack, attack), name, tiny_base_dir)
    return zoo, answer


@pytest.mark.parametrize("name", sorted(set(PLANTED) - NEEDS_THE_BASE))
def test_planted_hostile_adapter_is_listed_as_broken(name, planted_zoo, capsys):
    """`zoo doctor` names each planted adapter as broken (with a fix), the good one stays healthy, and the check
    takes seconds (no regex run, no tensor read)."""
    zoo, _ = planted_zoo
    assert name in {p.name for p in zoo.problems()}
    assert name not in zoo.healthy() and GOOD in zoo.healthy()
    t0 = time.perf_counter()
    assert main(["doctor", "--zoo", str(zoo.root)]) == 1
    assert time.perf_counter() - t0 < 10
    out = capsys.readouterr().out
    assert name in out and "fix:" in out


@pytest.fixture(scope="module")
def runtime(planted_zoo, tiny_base_dir):
    from zoo.serving.runtime import Runtime

    rt = Runtime(planted_zoo[0], base=str(tiny_base_dir), quant=False)
    yield rt
    rt.close()


@pytest.mark.parametrize("name", PLANTED)
def test_loading_a_planted_hostile_adapter_is_refused(name, planted_zoo, runtime, tiny_base_dir):
    """Loading a planted hostile adapter by name is a ZooError naming it (PEFT never sees it), and the good
    adapter still answers exactly as before the planting."""
    zoo, answer = planted_zoo
    with pytest.raises(ZooError):
        runtime.load_adapter(name)
    assert name not in runtime.adapters
    assert runtime.generate(["hi"], adapter=GOOD, max_new_tokens=3)[0]["answer"] == answer
    assert not (tiny_base_dir.parent / "pwned").exists()


def test_the_rest_of_a_planted_zoo_keeps_serving(planted_zoo, tiny_base_dir):
    """A runtime over the whole planted zoo starts, loads the good adapter only, and answers with it as
    before; the base's own weights are untouched (no init rewrote them)."""
    import torch

    from zoo.serving.runtime import Runtime

    zoo, answer = planted_zoo
    with Runtime(zoo, base=str(tiny_base_dir), quant=False) as rt:
        before = {k: v.clone() for k, v in rt.loaded.model.state_dict().items()}
        assert rt.load_all() == [GOOD]
        assert rt.generate(["hi"], adapter=GOOD, max_new_tokens=3)[0]["answer"] == answer
        after = {k.replace("base_layer.", "").replace("base_model.model.", ""): v
                 for k, v in rt.model.state_dict().items() if "lora_" not in k}
        assert all(torch.equal(before[k], after[k]) for k in before if k in after)


# reliability tests made honest (the weak versions are in tests/test_reliability.py) ----------------------------
def test_a_real_token_is_used_and_never_written(user_zoo, tiny_base_dir, tmp_path, monkeypatch, capsys):
    """The token of a cached `hf auth login` (no HF_TOKEN) is really read and sent, in the Authorization header
    only, by a real (not dry-run) push to a local fake Hub; it is in no output and no file written by push,
    pull, list or doctor."""
    import huggingface_hub.constants as c

    from tests.hub_zoo import FakeHub

    token = "hf_CachedLoginToken0123456789abcdefXYZ"
    login = tmp_path / "hf-home" / "token"
    login.parent.mkdir()
    login.write_text(token)
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(c, "HF_TOKEN_PATH", str(login))
    monkeypatch.setattr(c, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-stored-tokens"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    hub = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    try:
        zoo = ["--zoo", str(user_zoo.root)]
        assert main(["push", GOOD, "--repo", "alice/good", *zoo]) == 0
        assert main(["push", GOOD, "--repo", "alice/good", "--dry-run", "--out", str(tmp_path / "dry"), *zoo]) == 0
        assert main(["pull", str(tmp_path / "dry" / "good"), "--into", str(tmp_path / "pulled"),
                     "--base", str(tiny_base_dir)]) == 0
        assert main(["list", "--json", *zoo]) == 0 and main(["doctor", *zoo]) == 0
    finally:
        hub.close()
    assert hub.auth == {f"Bearer {token}"} and hub.files["alice/good"]  # read from the login file, and used
    assert all(token.encode() not in data for data in hub.files["alice/good"].values())
    printed = capsys.readouterr()
    assert token not in printed.out + printed.err
    leaks = [p for p in tmp_path.rglob("*") if p.is_file() and p != login and token.encode() in p.read_bytes()]
    assert leaks == []


def test_a_pickle_beside_intact_safetensors_is_never_loaded(user_zoo, tiny_base_dir, tmp_path, capsys):
    """A code-running `adapter_model.bin` planted beside the adapter's intact safetensors (which alone would
    load fine): the zoo reports the pickle, loading and publishing are refused, and the pickle never runs."""
    from zoo.serving.runtime import Runtime
    from zoo.store import read_safetensors_header

    marker = tmp_path / "pwned"
    folder = user_zoo.adapter_dir(GOOD)
    (folder / "adapter_model.bin").write_bytes(pwn_pickle(marker))
    assert read_safetensors_header(folder / "adapter_model.safetensors")[1] is None  # the safetensors is whole
    assert any("pickle" in p.what for p in user_zoo.problems() if p.name == GOOD)
    with Runtime(user_zoo, base=str(tiny_base_dir), quant=False) as rt:
        with pytest.raises(ZooError, match="pickle"):
            rt.load_adapter(GOOD)
        assert rt.load_all() == []
    assert main(["push", GOOD, "--repo", "alice/good", "--dry-run", "--out", str(tmp_path / "out"),
                 "--zoo", str(user_zoo.root)]) == 2
    assert "pickle" in capsys.readouterr().err and not marker.exists()


EVIL_CODE = "open({marker!r}, 'w').write('ran')\nfrom transformers import {cls} as {name}\n"


def test_remote_code_never_runs_from_a_base_its_tokenizer_or_a_peft_config(tiny_base_dir, user_zoo, tmp_path,
                                                                           published, capsys):
    """Custom code named by a base's `config.json`, its `tokenizer_config.json` or an adapter's
    `adapter_config.json` (`auto_mapping`) is never imported: the base loads as the stock Llama with the stock
    tokenizer, the adapter is refused by `zoo doctor`, loading and `zoo pull`, and the code's marker never
    appears."""
    from zoo.base import load_base
    from zoo.serving.runtime import Runtime

    marker = tmp_path / "pwned"
    base = tmp_path / "evil-base"
    shutil.copytree(tiny_base_dir, base)
    (base / "evil.py").write_text(EVIL_CODE.format(marker=str(marker), cls="LlamaForCausalLM", name="EvilModel")
                                  + EVIL_CODE.format(marker=str(marker), cls="PreTrainedTokenizerFast",
                                                     name="EvilTokenizer"))
    edit_json(base / "config.json", auto_map={"AutoModelForCausalLM": "evil.EvilModel"})
    edit_json(base / "tokenizer_config.json", auto_map={"AutoTokenizer": ["evil.EvilTokenizer", "evil.EvilTokenizer"]})
    loaded = load_base(str(base), quant=False)
    assert type(loaded.model).__module__.startswith("transformers.") and not marker.exists()
    assert type(loaded.tokenizer).__module__.startswith("transformers.")

    folder = user_zoo.adapter_dir(GOOD)
    (folder / "evil.py").write_text(EVIL_CODE.format(marker=str(marker), cls="LlamaForCausalLM", name="Evil"))
    edit_json(folder / "adapter_config.json", auto_mapping={"base_model_class": "Evil", "parent_library": "evil"})
    assert any("auto_mapping" in p.what for p in user_zoo.problems() if p.name == GOOD)
    with Runtime(user_zoo, base=str(tiny_base_dir), quant=False) as rt, pytest.raises(ZooError, match="auto_mapping"):
        rt.load_adapter(GOOD)
    repo = tmp_path / "corpus" / "evil-peft"
    shutil.copytree(published, repo)
    shutil.copyfile(folder / "evil.py", repo / "evil.py")
    edit_json(repo / "adapter_config.json", auto_mapping={"base_model_class": "Evil", "parent_library": "evil"})
    assert main(["pull", str(repo), "--into", str(tmp_path / "dest")]) == 2
    assert "evil.py" in capsys.readouterr().err and not (tmp_path / "dest").exists() and not marker.exists()
