"""The calibrated decision of a classification adapter (`zoo.label_bias`): fitted on unseen training rows, kept
in the manifest entry, checked when read, and added by every way the zoo answers."""

import json

import pytest
import torch

from tests.helpers import make_adapter
from zoo import label_bias
from zoo.errors import ZooError
from zoo.manifest import Entry
from zoo.store import Zoo


def _leaning(n: int, lean: float, seed: int = 0):
    """Two-label logits whose log-odds rank the rows right but sit `lean` too low."""
    torch.manual_seed(seed)
    gold = torch.randint(0, 2, (n,))
    odds = (gold * 2.0 - 1) + torch.randn(n) * 1.2 - lean
    return torch.stack([torch.zeros(n), odds], 1), gold.tolist()


def test_the_fitted_bias_undoes_a_lean_and_leaves_a_fair_adapter_alone():
    logits, gold = _leaning(600, lean=1.0)
    bias = label_bias.fit(logits, gold)
    assert bias[0] == 0 and 0.6 < bias[1] < 1.4
    assert label_bias.accuracy(logits, gold, bias) > label_bias.accuracy(logits, gold, [0, 0]) + 0.05
    fair, gold = _leaning(600, lean=0.0, seed=1)
    assert label_bias.fit(fair, gold) == [0.0, 0.0]


def test_three_labels_get_a_bias_each_within_the_bound():
    torch.manual_seed(0)
    gold = torch.randint(0, 3, (600,))
    logits = torch.nn.functional.one_hot(gold, 3).double() * 2 + torch.randn(600, 3)
    logits[:, 2] -= 1.5
    bias = label_bias.fit(logits, gold.tolist())
    assert bias[2] > 0.8 and all(abs(b) <= label_bias.MAX_BIAS for b in bias)


def test_labels_need_distinct_first_tokens(tiny_base_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_base_dir)
    ids = label_bias.label_token_ids(tok, ("negative", "positive"))
    assert ids and len(set(ids)) == 2 and tok.decode(ids[1]) == "positive"
    assert label_bias.label_token_ids(tok, ("very good", "very bad")) is None  # the first token decides nothing
    assert label_bias.label_token_ids(tok, ()) is None


@pytest.mark.parametrize("value", [{"x": 1.0}, {"12": 99.0}, {"12": True}, {"12": float("nan")}, [1, 2],
                                   {str(i): 0.1 for i in range(65)}, {"999999": 1.0}])
def test_a_damaged_or_hostile_bias_is_refused_with_a_message(value):
    with pytest.raises(ZooError, match="logit_bias"):
        label_bias.check(value, vocab_size=50_000)


def test_the_bias_travels_in_the_typed_manifest_entry():
    raw = {"name": "s", "task": "sentiment", "kind": "trained", "base": {"hash": "sha256:1"}, "lora": {},
           "path": "adapters/s", "logit_bias": {"17728": 0.0, "16185": 1.1}}
    entry = Entry.from_json(raw, unknown="drop")
    assert entry.logit_bias == {"17728": 0.0, "16185": 1.1} and Entry.from_json(entry.to_json()) == entry
    with pytest.raises(ZooError, match="logit_bias"):
        Entry.from_json({**raw, "logit_bias": {"16185": 1e9}}, unknown="drop")


def test_every_row_gets_its_own_adapters_bias():
    logits = torch.zeros(3, 10)
    label_bias.add_bias(logits, ["a", "none", "a"], {"a": {"4": 2.5}})
    assert logits[:, 4].tolist() == [2.5, 0.0, 2.5] and logits.sum() == 5.0


def test_the_runtime_and_the_api_engine_answer_with_the_bias(tiny_base_dir, tmp_path):
    from zoo.api.scheduler import add_bias  # the API's decode step adds it where it samples
    from zoo.serving.runtime import Runtime

    zoo = Zoo(tmp_path / "zoo")
    make_adapter(zoo, tiny_base_dir, "lean", "sentiment", seed=0)
    runtime = Runtime(zoo, base=str(tiny_base_dir), quant=False)
    before = runtime.generate_ids([[5, 6, 7]], "lean", 3)
    pushed = runtime.tokenizer("positive", add_special_tokens=False)["input_ids"][0]
    runtime.close()
    zoo.put(zoo.get("lean").with_(logit_bias={str(pushed): label_bias.MAX_BIAS}))
    runtime = Runtime(zoo, base=str(tiny_base_dir), quant=False)
    after = runtime.generate_ids([[5, 6, 7], [5, 6, 7]], ["lean", "none"], 3)
    assert after[0].startswith("positive") and not before[0].startswith("positive")
    assert after[1] == runtime.generate_ids([[5, 6, 7]], "none", 3)[0]  # the base row is untouched
    assert add_bias(torch.zeros(1, 8), ["lean"], {"lean": {"3": 1.0}})[0, 3] == 1.0
    runtime.close()
    zoo.put(zoo.get("lean").with_(logit_bias=None))  # retrained without one: the same runtime drops the old bias
    assert runtime.generate_ids([[5, 6, 7]], "lean", 3) == before and "lean" not in runtime.logit_biases
    runtime.close()


def test_first_token_logits_are_each_prompts_own_in_the_given_order(tiny_base_dir):
    """Batched by length, left-padded: each row is what the prompt alone gives, in the order the prompts came."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_base_dir, dtype=torch.float32)
    prompts = [[5, 6, 7, 8, 9, 10, 11], [3], [4, 5, 6], [7, 8, 9, 10, 11, 12, 13, 14, 15], [9, 9]]
    got = label_bias.first_token_logits(model, prompts, [1, 2, 3], pad=0, batch=2)
    with torch.inference_mode():
        want = torch.stack([model(input_ids=torch.tensor([p])).logits[0, -1, [1, 2, 3]] for p in prompts])
    assert got.shape == (5, 3) and torch.allclose(got, want, atol=1e-4)
    model.train()  # a model in training is left in training
    label_bias.first_token_logits(model, prompts[:2], [1], pad=0)
    assert model.training


def test_training_a_task_with_labels_calibrates_on_rows_it_did_not_train_on(tiny_base_dir, tmp_path, data_dir):
    from dataclasses import replace

    from tasks import get_task
    from zoo.base import load_base
    from zoo.data import load_rows
    from zoo.train import train_adapter

    zoo = Zoo(tmp_path / "zoo")
    spec = get_task("sentiment")
    spec = replace(spec, train=replace(spec.train, max_steps=1, batch_size=4, max_examples=8))
    entry = train_adapter(zoo, spec, load_base(str(tiny_base_dir), quant=False), name="probe", data_dir=data_dir)
    record = json.loads((zoo.adapter_dir("probe") / "training.json").read_text())["calibration"]
    assert record["rows"] == label_bias.CALIBRATION_ROWS and record["labels"] == ["negative", "positive"]
    assert record["accuracy_after"] >= record["accuracy_before"]
    assert entry.logit_bias == (label_bias.as_logit_bias(record["token_ids"], record["bias"]) or None)
    trained = load_rows(spec, "train", data_dir, limit=8, seed=spec.train.seed)
    unseen = label_bias.calibration_rows(spec, trained, data_dir, n=50)
    assert not any(row in trained for row in unseen)


def test_a_merged_model_keeps_the_bias_for_plain_transformers(tiny_base_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from zoo.cli import main

    zoo = Zoo(tmp_path / "zoo")
    make_adapter(zoo, tiny_base_dir, "lean", "sentiment", seed=0)
    pushed = AutoTokenizer.from_pretrained(tiny_base_dir)("positive", add_special_tokens=False)["input_ids"][0]
    zoo.put(zoo.get("lean").with_(logit_bias={str(pushed): label_bias.MAX_BIAS}))
    assert main(["merge", "lean", "--out", str(tmp_path / "merged"), "--zoo", str(zoo.root)]) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert model.generation_config.sequence_bias == [[[pushed], label_bias.MAX_BIAS]]
    out = model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=1, do_sample=False)
    assert out[0, -1] == pushed
