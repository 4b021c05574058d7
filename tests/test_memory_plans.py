"""Memory plans and the packed training attention: every plan trains the same adapter as the plain path (eager
attention, nothing checkpointed, NF4 dequantized per call), and the planner picks the fastest plan that fits."""

import pytest
import torch

from tasks import get_task
from zoo.errors import ZooError
from zoo.train import answer_loss, attach_adapter, build_examples
from zoo.training import attention as packed
from zoo.training import int8_grads
from zoo.training.memory import MemoryPlan, applied, choose_plan, estimate, parse_budget, parse_size
from zoo.training.packing import PackedCollator, planning_step


@pytest.fixture(scope="module")
def nf4_tiny(tiny_base_dir):
    """The tiny base in NF4 with fp32 compute, a model of its own (plans change it; the shared cache stays clean)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(tiny_base_dir, quantization_config=config, dtype=torch.float32,
                                                 device_map={"": "cpu"}, attn_implementation="eager")
    model.requires_grad_(False)
    return model, AutoTokenizer.from_pretrained(tiny_base_dir)


def _examples(tokenizer, data_dir, task: str = "qa"):
    """Eight examples of `task` (QA cut to 160 tokens)."""
    from zoo.data import load_rows

    spec = get_task(task)
    return build_examples(spec, tokenizer, load_rows(spec, "train", data_dir, limit=8, seed=0), 160, seed=0)


def _batch(tokenizer, row_tokens: int, data_dir, share_prefix: bool = False, task: str = "qa"):
    """Eight examples packed into rows (several examples per row, padding included); with `share_prefix`, one
    row with the batch's shared prefix once."""
    batch = PackedCollator(tokenizer.pad_token_id or 0, row_tokens, share_prefix)(_examples(tokenizer, data_dir, task))
    pieces = packed.pieces_of(batch["position_ids"], len(batch["input_ids"]))
    assert any(len(starts) > 1 for starts, _ in pieces)  # the test needs rows holding several examples
    assert share_prefix == any(p > 0 for _, firsts in pieces for p in firsts)  # and examples after a shared prefix
    return batch


def _loss_and_grads(model, batch, attention: str, plan: MemoryPlan | None, fused: bool = False):
    """One forward and backward with a fresh, seeded LoRA adapter; the loss and every LoRA gradient."""
    import contextlib

    from tasks.spec import LoraSettings
    from zoo.training.lora import fused_lora

    packed.register()
    torch.manual_seed(0)
    peft_model = attach_adapter(model, LoraSettings(r=4, alpha=8), "probe")
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:  # B starts at zero: give it values so that gradients reach A and the inputs
            torch.nn.init.normal_(p, std=0.1)
    model.set_attn_implementation(attention)
    peft_model.train()
    try:
        with applied(model, plan or MemoryPlan(0, 2, False, 0, 0)), \
                (fused_lora(peft_model) if fused else contextlib.nullcontext()):
            loss = answer_loss(peft_model, batch)
            loss.backward()
        grads = {n: p.grad.clone() for n, p in peft_model.named_parameters() if p.requires_grad}
        return loss.item(), grads
    finally:
        peft_model.unload()
        model.set_attn_implementation("eager")


@pytest.mark.parametrize("row_tokens", [96, 400])  # rows attended whole (short) and example by example (long)
@pytest.mark.parametrize("checkpointed", [0, 1, 2])
@pytest.mark.parametrize("dense", [False, True])
def test_every_plan_gives_the_plain_paths_loss_and_gradients(nf4_tiny, data_dir, checkpointed, dense, row_tokens,
                                                              monkeypatch):
    model, tokenizer = nf4_tiny
    monkeypatch.setattr(packed, "WHOLE_ROW_MAX", 128)  # the tiny rows: 96 whole, 400 piece by piece
    monkeypatch.setattr(packed, "CHUNK", 24)  # and each piece's queries in several chunks
    batch = _batch(tokenizer, row_tokens, data_dir)
    plain_loss, plain_grads = _loss_and_grads(model, batch, "eager", None)
    loss, grads = _loss_and_grads(model, batch, packed.NAME, MemoryPlan(checkpointed, 2, dense, 0, 0), fused=True)
    _assert_same(loss, grads, plain_loss, plain_grads)


@pytest.mark.parametrize("task, whole_max", [("sentiment", 512), ("qa", 128)])  # the row whole / piece by piece
@pytest.mark.parametrize("checkpointed", [0, 2])
def test_rows_with_a_shared_prefix_give_the_unshared_rows_loss_and_gradients(nf4_tiny, data_dir, task, whole_max,
                                                                             checkpointed, monkeypatch):
    model, tokenizer = nf4_tiny
    monkeypatch.setattr(packed, "WHOLE_ROW_MAX", whole_max)
    monkeypatch.setattr(packed, "CHUNK", 24)
    plain = _batch(tokenizer, 96, data_dir, task=task)
    shared = _batch(tokenizer, 96, data_dir, share_prefix=True, task=task)
    assert shared["input_ids"].numel() < plain["input_ids"].numel()  # what sharing is for
    assert (shared["input_ids"].shape[1] <= whole_max) == (task == "sentiment")
    assert sorted(shared["targets"].tolist()) == sorted(plain["targets"].tolist())
    plain_loss, plain_grads = _loss_and_grads(model, plain, "eager", None)
    loss, grads = _loss_and_grads(model, shared, packed.NAME, MemoryPlan(checkpointed, 2, False, 0, 0), fused=True)
    _assert_same(loss, grads, plain_loss, plain_grads)


@pytest.mark.skipif(not int8_grads.engine_available(), reason="this torch has no fbgemm int8 linear (not x86)")
@pytest.mark.parametrize("checkpointed", [0, 1])
@pytest.mark.parametrize("dense", [False, True])  # int8 copies from the dense copies, or from the NF4 weights
def test_int8_input_gradients_keep_the_loss_and_round_the_gradients_only(nf4_tiny, data_dir, dense, checkpointed):
    model, tokenizer = nf4_tiny
    batch = _batch(tokenizer, 96, data_dir)
    plain_loss, plain_grads = _loss_and_grads(model, batch, "eager", None)
    plan = MemoryPlan(checkpointed, 2, dense, 0, 0, int8_grads=True)
    loss, grads = _loss_and_grads(model, batch, packed.NAME, plan, fused=True)
    assert loss == pytest.approx(plain_loss, rel=1e-5)  # the forward is the fp32 one
    errors = {name: ((g - plain_grads[name]).norm() / plain_grads[name].norm()).item() for name, g in grads.items()}
    assert max(errors.values()) < 0.05, errors  # rounded, not wrong
    assert max(errors.values()) > 1e-4, errors  # and int8 did compute them (fp32 agrees within 1e-4)


def _assert_same(loss, grads, plain_loss, plain_grads):
    assert loss == pytest.approx(plain_loss, rel=1e-5)
    assert grads.keys() == plain_grads.keys() and len(grads) == 2 * 7 * 2  # A and B, 7 modules, 2 layers
    for name, g in grads.items():
        torch.testing.assert_close(g, plain_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_fused_lora_layers_run_in_training_and_give_peft_back(nf4_tiny):
    from peft.tuners.lora import LoraLayer

    from tasks.spec import LoraSettings
    from zoo.training import lora

    model, _ = nf4_tiny
    peft_model = attach_adapter(model, LoraSettings(r=4, alpha=8), "probe")
    calls = []
    try:
        layers = [m for m in peft_model.modules() if isinstance(m, LoraLayer)]
        with lora.fused_lora(peft_model):
            peft_model.train()
            for m in layers:
                m.register_forward_hook(lambda mod, args, out: calls.append(lora._trainable_adapter(mod, args[0])))
            batch = {"input_ids": torch.tensor([[5, 6, 7]]), "position_ids": torch.tensor([[0, 1, 2]]),
                     "rows": torch.tensor([0]), "cols": torch.tensor([1]), "targets": torch.tensor([7])}
            answer_loss(peft_model, batch)
        assert len(calls) == len(layers) and set(calls) == {"probe"}  # every LoRA layer took the fused path
        assert not any("forward" in vars(m) or hasattr(m, "_zoo_forward_before") for m in layers)
    finally:
        for m in peft_model.modules():
            m._forward_hooks.clear()
        peft_model.unload()


def test_a_plan_is_undone_after_training(nf4_tiny):
    import bitsandbytes as bnb

    model, _ = nf4_tiny
    layers = list(model.model.layers)
    int8 = int8_grads.engine_available()
    with applied(model, MemoryPlan(2, 2, True, 0, 0, int8_grads=int8)):
        assert all(layer.gradient_checkpointing for layer in layers)
        assert all(m._zoo_dense is not None for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
        assert all((m._zoo_int8 is not None) == int8 for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    with applied(model, MemoryPlan(0, 2, False, 0, 0, int8_grads=int8)):
        assert all((m._zoo_int8 is not None) == int8 for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    assert not any(layer.gradient_checkpointing for layer in layers)
    assert all(getattr(m, "_zoo_dense", None) is None for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    assert all(getattr(m, "_zoo_int8", None) is None for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    assert all("forward" not in vars(m) for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))


def test_packed_attention_refuses_what_it_is_not_for():
    q = torch.zeros(1, 4, 3, 8)
    with pytest.raises(ValueError, match="position_ids"):
        packed.packed_attention(None, q, q[:, :2], q[:, :2], None)


def test_piece_starts_follow_the_positions():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]])
    assert [starts for starts, _ in packed.pieces_of(pos, 2)] == [[0, 3, 5], [0]]


def test_an_example_after_a_shared_prefix_starts_at_the_prefix_length():
    pos = torch.tensor([[0, 1, 2, 3, 2, 3, 0]])  # prefix [0, 1] with the first example, a second one, padding
    assert packed.pieces_of(pos, 1) == [([0, 4, 6], [0, 2, 0])]
    with pytest.raises(ValueError, match="no shared prefix of that length"):
        packed.pieces_of(torch.tensor([[0, 1, 5, 6]]), 1)  # an example at position 5 after 2 tokens
    with pytest.raises(ValueError, match="no shared prefix"):
        packed.pieces_of(torch.tensor([[3, 4, 5]]), 1)


def test_the_collator_puts_a_batchs_shared_prefix_once_in_one_row():
    prefix = list(range(100, 110))  # 10 shared tokens (>= MIN_SHARED)
    feats = [{"input_ids": prefix + [1, 2, 3], "n_prompt": 12}, {"input_ids": prefix + [4, 5], "n_prompt": 11},
             {"input_ids": prefix + [6, 7, 8, 9], "n_prompt": 13}]
    batch = PackedCollator(row_tokens=20, share_prefix=True)(feats)
    assert batch["input_ids"].tolist() == [prefix + [1, 2, 3, 4, 5, 6, 7, 8, 9]]  # one row, no padding
    assert batch["position_ids"].tolist() == [list(range(13)) + [10, 11, 10, 11, 12, 13]]
    assert batch["targets"].tolist() == [3, 5, 9] and batch["cols"].tolist() == [11, 13, 17]  # each last token
    assert PackedCollator(row_tokens=20)(feats)["input_ids"].shape == (3, 14)  # unshared: the prefix 3 times
    short = [{"input_ids": [1, 2, 3, 4, 5], "n_prompt": 4}, {"input_ids": [1, 2, 3, 4, 6], "n_prompt": 4}]
    assert PackedCollator(share_prefix=True)(short)["input_ids"].shape == (1, 10)  # too short to be worth it


class _Config:
    hidden_size, intermediate_size, num_attention_heads = 576, 1536, 9


def test_the_planner_checkpoints_only_what_the_budget_needs():
    cost = dict(tokens=2560, attention_cells=8 * 300 * 300, dtype_bytes=4)
    plain = choose_plan(_Config, 30, budget=64 * 2**30, dense_bytes=400 * 2**20, held=10**9, **cost)
    assert plain.checkpointed == 0 and plain.dense_weights
    full = estimate(_Config, 30, 30, dense_bytes=0, held=10**9, **cost)
    tight = choose_plan(_Config, 30, budget=full + 2**20, dense_bytes=400 * 2**20, held=10**9, **cost)
    assert tight.checkpointed == 30 and not tight.dense_weights  # the copies would not fit
    middle = choose_plan(_Config, 30, budget=(full + plain.estimate_bytes) // 2, held=10**9, **cost)
    assert 0 < middle.checkpointed < 30 and middle.estimate_bytes <= middle.budget_bytes
    one_fewer = estimate(_Config, 30, middle.checkpointed - 1, dense_bytes=0, held=10**9, **cost)
    assert one_fewer > middle.budget_bytes  # the fewest layers that fit
    assert choose_plan(_Config, 30, budget=64 * 2**30, at_least=30, held=10**9, **cost).checkpointed == 30
    with pytest.raises(ZooError, match="over the 1.0 GB memory budget: raise --max-memory"):
        choose_plan(_Config, 30, budget=2**30, held=10**9, **cost)
    assert "activation checkpointing 30 of 30 layers" in tight.describe()
    copies = dict(dense_bytes=400 * 2**20, int8_bytes=100 * 2**20, held=10**9)
    int8 = choose_plan(_Config, 30, budget=64 * 2**30, **copies, **cost)
    assert int8.int8_grads and int8.estimate_bytes == plain.estimate_bytes + 100 * 2**20
    assert "input gradients in int8" in int8.describe() and int8.as_dict()["int8_grads"]
    dense_only = choose_plan(_Config, 30, budget=plain.estimate_bytes + 2**20, **copies, **cost)
    assert dense_only.dense_weights and not dense_only.int8_grads  # the int8 copies come last
    no_room_for_dense = dict(copies, dense_bytes=100 * 2**30)
    int8_only = choose_plan(_Config, 30, budget=64 * 2**30, **no_room_for_dense, **cost)
    assert int8_only.int8_grads and not int8_only.dense_weights  # int8 copies need no dense copies
    assert not choose_plan(_Config, 30, budget=full + 2**20, **copies, **cost).int8_grads


def test_the_planning_step_is_a_batch_of_long_examples_packed_as_the_collator_packs():
    examples = [{"input_ids": [1] * n} for n in [900] + [300] * 9 + [60] * 10]  # 90th percentile: 300 tokens
    tokens, cells = planning_step(examples, batch_size=3, row_tokens=700)
    assert tokens == 2 * 600  # [300, 300] and [300] -> two rows of the widest fill
    assert cells == 4 * 300 ** 2  # example by example (rows over WHOLE_ROW_MAX): [300, 300], [300, 300 of padding]
    tokens, cells = planning_step(examples, batch_size=3, row_tokens=700, shared=50)
    assert tokens == 50 + 3 * 250  # one row: the prefix once, then the three examples' own tokens
    assert cells == 300 ** 2 + 2 * 250 * 300  # the first example with the prefix, the others each see it too


@pytest.mark.parametrize("text,size", [("4GB", 4 * 2**30), ("512 mb", 512 * 2**20), ("1.5g", int(1.5 * 2**30))])
def test_memory_sizes_parse(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "-1GB", "4TB", "0GB"])
def test_bad_memory_sizes_say_how_to_write_one(text):
    with pytest.raises(ZooError, match="bad memory size"):
        parse_size(text)


def test_a_budget_per_compute_dtype_gives_each_dtype_its_own_size():
    """`--max-memory bf16=5GB,fp32=6GB` (make run's): fp32 activations take twice the bytes, so each dtype gets its
    size; a plain size applies to any dtype; a dtype not named, or a name that is no dtype, is refused."""
    text = "bf16=5GB, fp32=6GB"
    assert parse_budget(text, torch.bfloat16) == 5 * 2**30
    assert parse_budget(text, torch.float32) == 6 * 2**30
    assert parse_budget(text) == 6 * 2**30  # checked only (task files): every size parses
    assert parse_budget("4GB", torch.float32) == parse_budget("4GB", torch.bfloat16) == 4 * 2**30
    with pytest.raises(ZooError, match="no budget for fp16"):
        parse_budget(text, torch.float16)
    for bad in ("int8=4GB", "bf16=", "bf16=lots,fp32=6GB"):
        with pytest.raises(ZooError, match="bad memory (budget|size)"):
            parse_budget(bad)


@pytest.mark.parametrize("share_prefix", [False, True])
def test_the_top_layer_at_answer_positions_gives_the_whole_layers_states_there(nf4_tiny, data_dir, share_prefix):
    from zoo.training.answer_layer import answer_positions_only, supported

    model, tokenizer = nf4_tiny
    batch = _batch(tokenizer, 96, data_dir, share_prefix=share_prefix)
    packed.register()
    model.set_attn_implementation(packed.NAME)
    try:
        decoder, args = model.model, {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
        whole = decoder(**args).last_hidden_state[batch["rows"], batch["cols"]]
        with answer_positions_only(decoder, batch["rows"], batch["cols"]):
            at_answers = decoder(**args).last_hidden_state
    finally:
        model.set_attn_implementation("eager")
    assert supported(model) and at_answers.shape == (1, *whole.shape)
    torch.testing.assert_close(at_answers[0], whole, rtol=1e-5, atol=1e-5)
    assert "forward" not in vars(decoder.layers[-1])  # the layer's own forward is back
