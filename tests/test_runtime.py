"""The runtime: one base, many adapters, mixed batches equal to per-adapter runs token for token."""

import pytest
import torch

from tests.helpers import make_adapter
from zoo.manifest import BaseInfo
from zoo.base import load_base
from zoo.errors import ZooError
from zoo.serving.runtime import Runtime
from zoo.store import Zoo


@pytest.fixture
def tiny_zoo(tiny_base_dir, zoo_dir):
    zoo = Zoo(zoo_dir)
    for i, task in enumerate(["sentiment", "qa", "summarization"]):
        make_adapter(zoo, tiny_base_dir, f"a{i}", task, seed=i)
    return zoo


def test_mixed_batch_equals_per_adapter_runs(tiny_zoo, tiny_base_dir):
    rt = Runtime(tiny_zoo, base=str(tiny_base_dir), quant=False)
    prompts = ["hello there", "what is two plus two?", "summarize: a b c", "tell me a story", "ok", "why?"]
    names = ["a0", "a1", "a2", "none", "a1", "a0"]
    mixed = rt.generate(prompts, adapter=names, max_new_tokens=8, batch_size=6)
    for p, n, m in zip(prompts, names, mixed):
        alone = rt.generate([p], adapter=n, max_new_tokens=8, batch_size=1)[0]
        assert m["answer"] == alone["answer"], (n, p)
    # adapters really change the output, and each differently
    answers = {n: rt.generate(["hello there"], adapter=n, max_new_tokens=8)[0]["answer"]
               for n in ["none", "a0", "a1"]}
    assert len(set(answers.values())) == 3
    assert sorted(rt.adapters) == ["a0", "a1", "a2"]
    rt.close()


def test_adapter_from_another_base_is_refused(tiny_zoo, tiny_base_dir):
    entry = tiny_zoo.get("a0")
    tiny_zoo.put(entry.with_(base=BaseInfo("other", "sha256:0000")))
    rt = Runtime(tiny_zoo, base=str(tiny_base_dir), quant=False)
    with pytest.raises(ZooError, match="trained on base 'other'"):
        rt.generate(["hi"], adapter="a0", max_new_tokens=2)
    assert "a0" not in rt.available()
    rt.close()


def test_damaged_adapter_is_skipped_and_refused(tiny_zoo, tiny_base_dir):
    with Runtime(tiny_zoo, base=str(tiny_base_dir), quant=False) as rt:
        healthy = rt.generate("hi", adapter="a2", max_new_tokens=4)
    f = tiny_zoo.adapter_dir("a1") / "adapter_model.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    rt = Runtime(tiny_zoo, base=str(tiny_base_dir), quant=False)
    assert rt.available() == ["a0", "a2"]
    with pytest.raises(ZooError, match="damaged"):
        rt.generate(["hi"], adapter="a1", max_new_tokens=2)
    assert rt.adapters == []  # nothing of the damaged one was loaded
    assert rt.generate("hi", adapter="a2", max_new_tokens=4) == healthy  # the others serve as before
    rt.close()


def test_empty_prompt_is_refused(tiny_zoo, tiny_base_dir):
    rt = Runtime(tiny_zoo, base=str(tiny_base_dir), quant=False)
    with pytest.raises(ZooError, match="empty prompt"):
        rt.generate(["  "], adapter="none")


def test_long_prompt_is_cut_with_a_warning(tiny_zoo, tiny_base_dir, monkeypatch):
    rt = Runtime(tiny_zoo, base=str(tiny_base_dir), quant=False)
    seen = []
    generate_ids = rt.generate_ids
    monkeypatch.setattr(rt, "generate_ids", lambda ids, *args, **kwargs: seen.extend(ids) or generate_ids(
        ids, *args, **kwargs))
    with pytest.warns(UserWarning, match="cut in the middle"):
        out = rt.generate(["word " * 5000], adapter="none", max_new_tokens=2)
    window = rt.loaded.model.config.max_position_embeddings  # 2048 for the tiny model: under the 5,000 words
    assert 0.9 * window < len(seen[0]) <= window - 2  # cut to fit the window with the answer, not far below
    assert out[0]["adapter"] == "none" and out[0]["answer"] == generate_ids([seen[0]], "none", 2)[0]


def test_nf4_base_is_shared_between_calls(tiny_base_dir):
    a = load_base(str(tiny_base_dir), quant=True)
    b = load_base(str(tiny_base_dir), quant=True)
    assert a is b and a.quantized
    assert any("4bit" in type(m).__name__ for m in a.model.modules())


def test_the_lm_head_reads_a_contiguous_last_position(tiny_base_dir):
    """A batch scored at its last position only (`logits_to_keep=1`) hands the head a strided view, which torch's
    CPU matmul serves by copying the head's weight per row; the base's head gets it contiguous, same logits."""
    model = load_base(tiny_base_dir).model
    seen = []
    hook = model.get_output_embeddings().register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    ids = torch.randint(5, 500, (3, 9))
    try:
        with torch.inference_mode():
            last = model(input_ids=ids, logits_to_keep=1).logits
            full = model(input_ids=ids).logits
    finally:
        hook.remove()
    assert seen[0].shape == (3, 1, model.config.hidden_size) and all(x.is_contiguous() for x in seen)
    torch.testing.assert_close(last[:, 0], full[:, -1])


def test_the_same_weights_by_another_name_share_the_model_and_keep_their_name(tiny_base_dir, tmp_path):
    """A base loaded by one name (its folder), then by another (a link to it): one model in memory, and each
    caller's name, so a manifest records what its command named, whatever loaded first in the process."""
    link = tmp_path / "same-base"
    link.symlink_to(tiny_base_dir, target_is_directory=True)
    a = load_base(str(tiny_base_dir), quant=True)
    b = load_base(str(link), quant=True)
    assert (a.ref.id, b.ref.id) == (str(tiny_base_dir), str(link)) and a.ref.path == b.ref.path
    assert b.model is a.model and b.tokenizer is a.tokenizer and b.lock is a.lock


def test_loaded_adapters_hold_their_saved_weights_and_share_one_identity(tiny_zoo, tiny_base_dir):
    from safetensors.torch import load_file

    rt = Runtime(tiny_zoo, base=str(tiny_base_dir), quant=False)
    rt.load_adapter("a0"), rt.load_adapter("a1")
    saved = load_file(tiny_zoo.adapter_dir("a1") / "adapter_model.safetensors")
    live = {k: p for k, p in rt.model.named_parameters() if ".a1." in k}
    assert len(live) == len(saved) > 0
    for key, tensor in saved.items():  # loaded without a random init first, then kept in the compute dtype
        param = live[key.replace(".weight", ".a1.weight")]
        assert param.dtype == rt.loaded.compute_dtype and torch.equal(param, tensor.to(param.dtype))
    identities = {id(m.lora_dropout[n]) for m in rt.model.modules() if hasattr(m, "lora_dropout")
                  for n in ("a0", "a1")}
    assert len(identities) == 1 and isinstance(rt.model.get_submodule(
        next(k for k, m in rt.model.named_modules() if k.endswith("lora_dropout.a0"))), torch.nn.Identity)
    rt.close()


def test_a_batch_is_prefilled_into_one_left_padded_cache_with_room(tiny_zoo, tiny_base_dir):
    rt = Runtime(tiny_zoo, base=str(tiny_base_dir), quant=False)
    rt.load_adapter("a0")
    with torch.inference_mode():
        cache = rt._prefill_batch([[5, 6, 7], [8, 9, 10, 11, 12]], ["a0", "none"], max_new_tokens=3)
    keys = cache.layers[0].keys
    assert keys.shape[0] == 2 and keys.shape[-2] == 4  # every prompt but its last token, padded to the longest
    assert cache.layers[0]._keys.shape[-2] == 4 + 3 + 1  # room for the last prompt token and the answer
    assert keys[0, :, :2].abs().sum() == 0 and keys[0, :, 2:].abs().sum() > 0 and keys[1].abs().sum() > 0
    rt.close()


def test_batch_cache_gives_each_prompt_the_next_token_logits_it_gets_alone(tiny_zoo, tiny_base_dir, monkeypatch):
    monkeypatch.setenv("ZOO_DTYPE", "fp32")  # tight tolerances: a token of cache lost moves logits by ~1e-2
    rt = Runtime(tiny_zoo, base=str(tiny_base_dir), quant=False)
    rt.load_adapter("a0")
    shared = list(range(100, 112))  # a prefix the a0 prompts share: prefilled once
    ids = [shared + [5, 6, 7], shared + [8, 9, 10, 11, 12], [20, 21, 22, 23]]
    names = ["a0", "a0", "none"]
    width = max(len(x) for x in ids)
    with torch.inference_mode():
        cache = rt._prefill_batch(ids, names, max_new_tokens=2)
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
        step = rt.with_adapters(names, lambda model, extra: model(
            input_ids=torch.tensor([[x[-1]] for x in ids]), attention_mask=mask, past_key_values=cache,
            position_ids=torch.tensor([[len(x) - 1] for x in ids]), use_cache=True, **extra)).logits[:, -1]
        for row, (x, name) in enumerate(zip(ids, names)):
            alone = rt.with_adapters([name], lambda model, extra: model(input_ids=torch.tensor([x]))).logits[0, -1]
            torch.testing.assert_close(step[row], alone, atol=1e-4, rtol=1e-4)
    rt.close()


def test_rows_that_end_leave_the_batch_and_the_answers_stay_the_same(tiny_zoo, tiny_base_dir, monkeypatch):
    import zoo.serving.runtime as runtime_module

    monkeypatch.setenv("ZOO_DTYPE", "fp32")
    monkeypatch.setattr(runtime_module, "SEGMENT", 2)  # rows leave every 2 tokens
    rt = Runtime(tiny_zoo, base=str(tiny_base_dir), quant=False)
    prompts = ["hello there", "what is two plus two?", "summarize: a b c", "tell me a story"]
    names = ["a0", "a1", "a0", "none"]
    ids = [rt.tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True)
           for p in prompts]
    ids = [x if isinstance(x, list) else x["input_ids"] for x in ids]
    full = [rt.generate_ids([x], n, 10, 1)[0] for x, n in zip(ids, names)]
    tokens = rt.tokenizer(full[0], add_special_tokens=False)["input_ids"]
    eos = rt.tokenizer.eos_token_id
    rt.tokenizer.eos_token_id = tokens[len(tokens) // 2]  # a token some answers hold: they end early
    try:
        alone = [rt.generate_ids([x], n, 10, 1)[0] for x, n in zip(ids, names)]
        batched = rt.generate_ids(ids, names, 10, batch_size=4)
    finally:
        rt.tokenizer.eos_token_id = eos
    assert alone[0] != full[0] and alone[0] in full[0]
    assert batched == alone
    rt.close()


@pytest.mark.parametrize("dtype, expected", [("fp32", 32), ("bf16", 64)])
def test_callers_that_do_not_say_get_the_batch_size_of_the_compute_dtype(tiny_zoo, tiny_base_dir, monkeypatch,
                                                                           dtype, expected):
    """fp32 on a CPU: 32 rows at a time (64 is no faster there); bf16 or a GPU: 64 (docs/performance.md)."""
    monkeypatch.setenv("ZOO_DTYPE", dtype)
    rt = Runtime(tiny_zoo, base=str(tiny_base_dir), quant=False)
    chunks = []
    monkeypatch.setattr(rt, "_generate_chunk", lambda ids, names, *a: chunks.append(len(ids)) or [""] * len(ids))
    rt.generate_ids([[1, 2, 3]] * (expected + 5), "none", 2)
    assert rt.batch_size == expected and chunks == [expected, 5]
    rt.close()
