"""Training mechanics on a tiny random Llama: packing is exact, loss covers answers only, runs resume."""


import pytest
import torch

from tasks import get_task
from zoo.base import load_base
from zoo.train import PackedCollator, answer_loss, build_examples, pack_rows


@pytest.fixture(scope="module")
def tiny(tiny_base_dir):
    return load_base(str(tiny_base_dir), quant=False)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])  # eager: what training uses on a CPU
def test_packed_rows_give_the_same_logits_as_separate_runs(tiny, attention):
    model = tiny.model
    model.set_attn_implementation(attention)
    try:
        check_packed_logits(model)
    finally:
        model.set_attn_implementation("sdpa")


def test_cpu_training_attention_switches_to_eager_and_back(tiny):
    from zoo.train import cpu_training_attention

    with cpu_training_attention(tiny.model, "cpu"):
        assert tiny.model.config._attn_implementation == "eager"
    assert tiny.model.config._attn_implementation == "sdpa"


def check_packed_logits(model):
    seqs = [[5, 6, 7, 8, 9], [10, 11, 12], [13, 14, 15, 16], [17, 18]]
    feats = [{"input_ids": s, "n_prompt": 2} for s in seqs]
    batch = PackedCollator(pad_id=0, row_tokens=8)(feats)
    assert batch["input_ids"].shape == (2, 8)  # 14 tokens in two rows of at most 8 ([5, 3] and [4, 2] + 2 pad)
    assert batch["position_ids"][1].tolist() == [0, 1, 2, 3, 0, 1, 0, 1]  # the pad block restarts too
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    for r in range(2):
        pos, start = batch["position_ids"][r].tolist(), 0
        starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
        for a, b in zip(starts, starts[1:]):
            seq = batch["input_ids"][r, a:b]
            with torch.no_grad():
                alone = model(input_ids=seq[None], use_cache=False).logits[0]
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
