"""`zoo merge`: a standalone model folder that plain transformers loads, equal to adapter-on-base."""

import json

import pytest
import torch

from tests.test_combine import add_adapter
from zoo.cli import main
from zoo.errors import ZooError
from zoo.manifest import BaseInfo
from zoo.merge import CHECK_PROMPTS, merge_adapter
from zoo.outdir import MARKER
from zoo.store import Zoo


@pytest.fixture
def zoo(tiny_base_dir, zoo_dir):
    zoo = Zoo(zoo_dir)
    add_adapter(zoo, tiny_base_dir, "sent", "sentiment", seed=1)
    return zoo


def merge(zoo, *argv) -> int:
    return main(["merge", *argv, "--zoo", str(zoo.root)])


def adapter_logits(zoo, base_dir, name, ids):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(zoo.adapter_dir(name))).eval()
    with torch.no_grad():
        with_adapter = model(input_ids=ids).logits
        with model.disable_adapter():
            without = model(input_ids=ids).logits
    return with_adapter, without


def prompt_ids(base_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_dir)(CHECK_PROMPTS[0], return_tensors="pt").input_ids


def test_merge_round_trip_loads_without_peft(zoo, tiny_base_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "merged"
    assert merge(zoo, "sent", "--out", str(out)) == 0
    printed = capsys.readouterr().out
    assert "max |logit diff| merged vs adapter on the fp32 base" in printed
    assert not (out / "adapter_config.json").exists()  # nothing that would make transformers reach for PEFT
    for f in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "zoo_merge.json"):
        assert (out / f).exists(), f
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not hasattr(model, "peft_config") and model.dtype == torch.float32
    ids = prompt_ids(tiny_base_dir)
    with torch.no_grad():
        merged = model(input_ids=ids).logits
    with_adapter, without = adapter_logits(zoo, tiny_base_dir, "sent", ids)
    torch.testing.assert_close(merged, with_adapter, atol=1e-4, rtol=0)
    assert (merged - without).abs().max() > 1e-2  # the adapter really changed the model
    assert AutoTokenizer.from_pretrained(out).chat_template
    record = json.loads((out / "zoo_merge.json").read_text())
    assert record["adapter"] == "sent" and record["base"]["hash"] == zoo.get("sent").base.hash
    assert record["task"] == "sentiment" and json.loads((out / "task.json").read_text())["name"] == "sentiment"
    assert record["checks"]["max_diff"] < 1e-4 and record["checks"]["saved_diff"] == 0.0
    assert record["checks"]["greedy_same"] == "3/3"
    assert not list(tmp_path.glob(".merged.staging-*"))


def test_merge_bf16_and_nf4_copies(zoo, tiny_base_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "m16"
    assert merge(zoo, "sent", "--out", str(out), "--dtype", "bf16", "--quantize", "nf4", "--json") == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    nf4 = AutoModelForCausalLM.from_pretrained(out / "nf4")
    assert json.loads((out / "nf4" / "config.json").read_text())["quantization_config"]["bnb_4bit_quant_type"] == "nf4"
    assert type(nf4.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    ids = prompt_ids(tiny_base_dir)
    with torch.no_grad():
        logits = nf4(input_ids=ids).logits.float()
    with_adapter, without = adapter_logits(zoo, tiny_base_dir, "sent", ids)
    assert torch.isfinite(logits).all()
    # 4-bit rounding: not equal, but much nearer the adapted model than the base (the delta survived)
    assert (logits - with_adapter).norm() < 0.5 * (logits - without).norm()
    checks = json.loads((out / "zoo_merge.json").read_text())["checks"]
    assert checks["dtype"] == "bf16" and checks["nf4"]["path"] == "nf4" and checks["max_diff"] < 1e-4


def test_refusals_leave_everything_in_place(zoo, tiny_base_dir, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert merge(zoo, "sent", "--out", str(out)) == 2
    assert "already exists" in capsys.readouterr().err and (out / "keep.txt").read_text() == "mine"
    assert merge(zoo, "nope", "--out", str(tmp_path / "a")) == 2
    assert "no adapter named 'nope'" in capsys.readouterr().err
    zoo.put(zoo.get("sent").with_(name="alien", base=BaseInfo(str(tiny_base_dir), "sha256:00")))
    import shutil
    shutil.copytree(zoo.adapter_dir("sent"), zoo.adapter_dir("alien"))
    assert merge(zoo, "alien", "--out", str(tmp_path / "b")) == 2
    assert "was trained on base" in capsys.readouterr().err
    weights = zoo.adapter_dir("alien") / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    zoo.put(zoo.get("sent").with_(name="alien"))
    assert merge(zoo, "alien", "--out", str(tmp_path / "c")) == 2
    assert "damaged" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # argparse refuses the choice itself
        merge(zoo, "sent", "--out", str(tmp_path / "d"), "--dtype", "int8")
    assert exit_info.value.code == 2
    with pytest.raises(ZooError, match="unknown --quantize"):
        merge_adapter(zoo, "sent", tmp_path / "d", quantize="int4")
    assert merge(zoo, "sent", "--out", str(zoo.root), "--force") == 2  # never replaces the zoo itself
    assert "did not write" in capsys.readouterr().err and zoo.manifest_path.exists()
    assert not any((tmp_path / n).exists() for n in "abcd")
    assert not list(tmp_path.glob(".*staging*"))


@pytest.mark.reliability
def test_force_replaces_only_a_folder_merge_wrote(zoo, tmp_path, capsys):
    """`zoo merge --out DIR --force` where DIR holds the user's files (`~/Documents`, or its parent folder):
    exit 2 with one line, every file kept; a folder an earlier merge wrote (or an empty one) is replaced."""
    docs = tmp_path / "Documents"
    docs.mkdir()
    (docs / "thesis.txt").write_text("years of work")
    for target in (docs, tmp_path):
        before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
        assert merge(zoo, "sent", "--out", str(target), "--force") == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "did not write" in err and "nothing was changed" in err, err
        assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert (docs / "thesis.txt").read_text() == "years of work"
    out = tmp_path / "merged"
    assert merge(zoo, "sent", "--out", str(out)) == 0 and (out / MARKER).is_file()
    (out / "stale.txt").write_text("from the first merge")
    assert merge(zoo, "sent", "--out", str(out), "--force") == 0  # ours: replaced
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").exists() and (out / MARKER).is_file()
    (tmp_path / "empty").mkdir()
    assert merge(zoo, "sent", "--out", str(tmp_path / "empty"), "--force") == 0  # nothing to lose
