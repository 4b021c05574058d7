"""Training mechanics on a tiny random Llama: packing is exact, loss covers answers only, runs resume."""


import pytest
import torch

from tasks import get_task
from zoo.base import load_base
from zoo.train import answer_loss, build_examples
from zoo.training.packing import PackedCollator, pack_rows


@pytest.fixture(scope="module")
def tiny(tiny_base_dir):
    return load_base(str(tiny_base_dir), quant=False)


@pytest.mark.parametrize("attention", ["sdpa", "eager", "zoo_packed"])  # zoo_packed: what a CPU trains with
def test_packed_rows_give_the_same_logits_as_separate_runs(tiny, attention):
    from zoo.training.attention import register

    register()
    model = tiny.model
    before = model.config._attn_implementation
    model.set_attn_implementation(attention)
    try:
        check_packed_logits(model)
    finally:
        model.set_attn_implementation(before)


def test_each_phase_runs_its_attention_on_a_cpu_and_gives_the_previous_back(tiny_base_dir):
    from transformers import AutoModelForCausalLM

    from zoo.serving.attention import CPU_ATTENTION, NAME, SERVING, TRAINING, in_phase, use_phase

    model = AutoModelForCausalLM.from_pretrained(tiny_base_dir, attn_implementation="sdpa")  # its own, fresh
    assert CPU_ATTENTION[SERVING] == NAME and CPU_ATTENTION[TRAINING] == "zoo_packed"
    assert use_phase(model, SERVING) == "sdpa" and model.config._attn_implementation == NAME
    with in_phase(model, TRAINING):
        assert model.config._attn_implementation == CPU_ATTENTION[TRAINING]
    assert model.config._attn_implementation == NAME
    with pytest.raises(RuntimeError, match="boom"), in_phase(model, TRAINING):  # given back after errors too
        raise RuntimeError("boom")
    assert model.config._attn_implementation == NAME
    eager_model = AutoModelForCausalLM.from_pretrained(tiny_base_dir, attn_implementation="eager")
    use_phase(eager_model, SERVING)  # not loaded with SDPA: never switched
    assert eager_model.config._attn_implementation == "eager"


def _count_calls(monkeypatch, implementation: str) -> list:
    """A list that grows by one per call of the attention function `implementation` dispatches to."""
    import transformers.models.llama.modeling_llama as llama
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    calls = []
    real = llama.eager_attention_forward if implementation == "eager" else ALL_ATTENTION_FUNCTIONS[implementation]

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    if implementation == "eager":
        monkeypatch.setattr(llama, "eager_attention_forward", spy)
    else:
        monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS, implementation, spy)
    return calls


def test_training_on_a_cpu_runs_its_attention_and_the_runtime_gets_its_own_back(tiny_base_dir, tmp_path,
                                                                                  data_dir, monkeypatch):
    """The bug this guards: loading the base installed the runtime's attention, so training never switched."""
    from dataclasses import replace

    from zoo.serving.attention import CPU_ATTENTION, NAME, TRAINING
    from zoo.serving.runtime import Runtime
    from zoo.store import Zoo
    from zoo.train import train_adapter

    zoo = Zoo(tmp_path / "zoo")
    runtime = Runtime(zoo, base=str(tiny_base_dir), quant=False)  # serving first, as `zoo serve` + train would
    base = runtime.loaded.model
    assert base.config._attn_implementation == NAME
    calls, seen = _count_calls(monkeypatch, CPU_ATTENTION[TRAINING]), set()
    hooks = [layer.self_attn.register_forward_pre_hook(lambda m, args: seen.add(m.config._attn_implementation))
             for layer in base.model.layers]
    spec = get_task("sentiment")
    spec = replace(spec, train=replace(spec.train, max_steps=1, batch_size=4, max_examples=8))
    monkeypatch.setattr("zoo.train.calibrate_labels", lambda *args: None)  # after training, in serving's attention
    try:
        entry = train_adapter(zoo, spec, runtime.loaded, name="probe", data_dir=data_dir)
    finally:
        for hook in hooks:
            hook.remove()
    # every layer's forward but the top one's, which attends at answer positions only (zoo.training.answer_layer)
    assert seen == {CPU_ATTENTION[TRAINING]} and len(calls) >= len(base.model.layers) - 1
    assert entry.throughput["steps"] == 1
    assert base.config._attn_implementation == NAME  # serving's attention is back
    assert runtime.generate("hello", adapter="probe", max_new_tokens=2)["adapter"] == "probe"
    runtime.close()


def check_packed_logits(model):
    seqs = [[5, 6, 7, 8, 9], [10, 11, 12], [13, 14, 15, 16], [17, 18]]
    feats = [{"input_ids": s, "n_prompt": 2} for s in seqs]
    batch = PackedCollator(pad_id=0, row_tokens=8)(feats)
    assert batch["input_ids"].shape == (2, 8)  # 14 tokens in two rows of at most 8 ([5, 3] and [4, 2] + 2 pad)
    assert batch["position_ids"][1].tolist() == [0, 1, 2, 3, 0, 1, 0, 1]  # the pad block restarts too
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    for r in range(2):
        pos = batch["position_ids"][r].tolist()
        starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
        for a, b in zip(starts, starts[1:]):
            seq = batch["input_ids"][r, a:b]
            with torch.no_grad():
                alone = model(input_ids=seq[None], position_ids=torch.arange(b - a)[None], use_cache=False).logits[0]
            torch.testing.assert_close(packed[r, a:b].float(), alone.float(), atol=2e-2, rtol=1e-2)


def test_pack_rows_respects_capacity_and_keeps_every_example():
    lengths = [300, 120, 250, 60, 60, 500, 30]
    rows = pack_rows(lengths, 512)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= 512 for r in rows)
    assert len(rows) == 3


def test_loss_is_on_answer_tokens_only(tiny):
    feats = [{"input_ids": [5, 6, 7, 8], "n_prompt": 3}, {"input_ids": [9, 10, 11], "n_prompt": 1}]
    batch = PackedCollator(row_tokens=64)(feats)
    assert batch["targets"].tolist() == [8, 10, 11]
    assert batch["rows"].tolist() == [0, 0, 0]
    assert batch["cols"].tolist() == [2, 4, 5]  # the positions that predict those tokens
    with torch.no_grad():
        loss = answer_loss(tiny.model, batch)
        logits = tiny.model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
    expected = torch.nn.functional.cross_entropy(logits[[2, 4, 5]].float(), torch.tensor([8, 10, 11]))
    torch.testing.assert_close(loss, expected, atol=1e-2, rtol=1e-2)


def test_examples_use_the_chat_template_and_end_with_eos(tiny, data_dir):
    spec = get_task("sentiment")
    from zoo.data import load_rows

    rows = load_rows(spec, "train", data_dir, limit=4)
    ex = build_examples(spec, tiny.tokenizer, rows, max_len=256, seed=0)
    tok = tiny.tokenizer
    for e, row in zip(ex, rows):
        text = tok.decode(e["input_ids"][e["n_prompt"]:])
        assert text == spec.target(row) + tok.eos_token
        assert "<|im_start|>assistant" in tok.decode(e["input_ids"][: e["n_prompt"]])


def test_long_examples_are_cut_in_the_middle(tiny, data_dir):
    spec = get_task("qa")
    row = {"context": "start " + "filler words here " * 400 + " the end", "question": "Where?",
           "answers": {"text": ["here"], "answer_start": [0]}}
    (ex,) = build_examples(spec, tiny.tokenizer, [row], max_len=200, seed=0)
    assert len(ex["input_ids"]) <= 200
    prompt = tiny.tokenizer.decode(ex["input_ids"][: ex["n_prompt"]])
    assert "start" in prompt and "the end" in prompt and "[...]" in prompt and "Where?" in prompt
