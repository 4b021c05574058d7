"""Batch prefill without pad tokens: a shared prefix once, remainders packed, same keys/values as one by one."""

import pytest
import torch

from zoo.serving.prefill import pack, packed_inputs, piecewise_inputs, prefill_rows, shared_prefix


def test_shared_prefix_leaves_every_sequence_a_token_and_skips_short_ones():
    assert shared_prefix([list(range(20)) + [1], list(range(20)) + [2, 3]]) == 20
    assert shared_prefix([list(range(10)), list(range(12))]) == 9  # the shorter keeps its last token
    assert shared_prefix([[1, 2, 3, 4], [1, 2, 3, 5]]) == 0  # under MIN_SHARED
    assert shared_prefix([list(range(30))]) == 0


def test_pack_fills_passes_in_order_and_gives_a_long_one_its_own():
    assert pack([100, 100, 100, 300, 10], budget=256) == [[0, 1], [2], [3], [4]]
    assert pack([]) == []


def test_packed_inputs_restart_positions_and_mask_pieces_from_each_other():
    ids, positions, mask = packed_inputs([[7, 8], [9, 10, 11]], start=3)
    assert ids.tolist() == [[7, 8, 9, 10, 11]] and positions.tolist() == [[3, 4, 3, 4, 5]]
    assert mask.shape == (1, 1, 5, 8) and mask[0, 0, :, :3].all()
    assert mask[0, 0, 3, 3:].tolist() == [False, False, True, True, False]  # piece 2, token 2: itself, no piece 1
    assert mask[0, 0, 1, 3:].tolist() == [True, True, False, False, False]


def _alone(model, seq):
    with torch.inference_mode():
        out = model.model(input_ids=torch.tensor([seq]), use_cache=True)
    return [(layer.keys, layer.values) for layer in out.past_key_values.layers]


def _tiny(tiny_base_dir, piecewise: bool):
    """The tiny model on SDPA, or on the runtime's attention (`piecewise`: one pass, attention piece by piece)."""
    from transformers import AutoModelForCausalLM

    from zoo.serving.attention import SERVING, use_phase

    model = AutoModelForCausalLM.from_pretrained(tiny_base_dir, attn_implementation="sdpa").eval()
    if piecewise:
        use_phase(model, SERVING)
    return model


def _assert_rows_equal_each_run_alone(model, seqs):
    with torch.inference_mode():
        rows = prefill_rows(model.model, seqs)
    for seq, row in zip(seqs, rows):
        for (keys, values), (want_k, want_v) in zip(row, _alone(model, seq)):
            assert keys.shape == want_k.shape == (1, want_k.shape[1], len(seq), want_k.shape[-1])
            torch.testing.assert_close(keys, want_k, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(values, want_v, atol=1e-5, rtol=1e-5)


def test_piecewise_inputs_give_each_piece_its_bounds():
    from zoo.serving.attention import PIECES

    ids, positions, placeholder, extra = piecewise_inputs([[7, 8], [9, 10, 11], [12, 13]], start=3)
    assert ids.tolist() == [[7, 8, 9, 10, 11, 12, 13]] and positions.tolist() == [[3, 4, 3, 4, 5, 3, 4]]
    assert placeholder.shape == (1, 1, 7, 10)
    assert extra[PIECES] == [(0, 2), (2, 3), (5, 2)]


@pytest.mark.parametrize("piecewise", [False, True])
def test_prefill_rows_equal_each_sequence_run_alone(tiny_base_dir, piecewise):
    prefix = list(range(3, 15))
    seqs = [prefix + [20, 21], prefix + [22, 23, 24, 25, 26], prefix + [27], prefix + list(range(30, 90))]
    _assert_rows_equal_each_run_alone(_tiny(tiny_base_dir, piecewise), seqs)


def test_prefill_rows_without_a_shared_prefix_run_each_piece_causally(tiny_base_dir):
    seqs = [[5, 6, 7], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50], [9]]
    _assert_rows_equal_each_run_alone(_tiny(tiny_base_dir, piecewise=True), seqs)


def test_with_piecewise_attention_a_batch_shares_one_pass_beyond_the_masked_budget(tiny_base_dir):
    from zoo.serving.attention import SERVING, use_phase
    from zoo.serving.prefill import PACK_TOKENS

    model = _tiny(tiny_base_dir, piecewise=False)
    seqs = [list(range(3, 3 + PACK_TOKENS - 10)), list(range(5, 5 + PACK_TOKENS - 20))]  # no shared prefix
    passes = []
    model.model.register_forward_pre_hook(lambda module, args: passes.append(1))
    with torch.inference_mode():
        prefill_rows(model.model, seqs)
        masked = len(passes)
        use_phase(model, SERVING)
        prefill_rows(model.model, seqs)
    assert (masked, len(passes) - masked) == (2, 1)
