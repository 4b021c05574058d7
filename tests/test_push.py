"""`zoo push` without the network: a tiny zoo on the 2-layer test base, dry-run folders parsed back with
huggingface_hub's own card parser, and a real upload through `HfApi` to a fake Hub on 127.0.0.1."""

from __future__ import annotations

import json
import shutil

import pytest
from huggingface_hub import ModelCard, metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results

from tests import helpers
from tests.hub_zoo import EVAL, TOKEN, FakeHub, all_bytes, push
from zoo.cli import main
from zoo.manifest import BaseInfo
from zoo.outdir import MARKER
from zoo.store import Zoo

# what `zoo push` writes for each adapter (besides its report plot, when there is one)
ADAPTER_FILES = ["README.md", "adapter_config.json", "adapter_model.safetensors", "task.json", "training.json",
                 "zoo_entry.json"]


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
