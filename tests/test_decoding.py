"""CPU decoding pieces: the in-place KV cache layer and the one-token attention path."""

import pytest
import torch
from transformers.cache_utils import DynamicLayer

from zoo.serving.attention import _decode_attention, attention
from zoo.serving.kvcache import RoomyLayer, left_padded_cache


def _kv(batch=2, heads=3, length=4, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, heads, length, dim, generator=g), torch.randn(batch, heads, length, dim, generator=g)


def test_roomy_layer_matches_dynamic_layer_while_writing_in_place_and_growing():
    k0, v0 = _kv(length=5)
    plain = DynamicLayer()
    plain.update(k0, v0)
    buf_k = torch.zeros(2, 3, 7, 8)
    buf_k[:, :, :5] = k0
    buf_v = torch.zeros(2, 3, 7, 8)
    buf_v[:, :, :5] = v0
    roomy = RoomyLayer(buf_k, buf_v, length=5, room=2)
    for step in range(6):  # two steps fit in the room, then the buffers grow
        k, v = _kv(length=1, seed=step + 1)
        want_k, want_v = plain.update(k, v)
        got_k, got_v = roomy.update(k, v)
        assert torch.equal(got_k, want_k) and torch.equal(got_v, want_v)
        assert roomy.get_seq_length() == plain.get_seq_length() == 6 + step
    assert roomy._keys.shape[-2] >= 11 and roomy._in_buffer()


def test_roomy_layer_writes_into_its_buffer_without_copying_the_cache():
    k0, v0 = _kv(length=3)
    buf = torch.zeros(2, 3, 10, 8), torch.zeros(2, 3, 10, 8)
    layer = RoomyLayer(*buf, length=0, room=10)
    with torch.inference_mode():  # as in generation, where views lose their `_base`
        layer.update(k0, v0)
        layer.update(*_kv(length=1, seed=5))
    assert layer._keys is buf[0] and torch.equal(buf[0][:, :, :3], k0) and buf[0][:, :, 4:].abs().sum() == 0


def test_roomy_layer_keeps_its_room_through_batch_selection_and_survives_reset():
    k0, v0 = _kv(length=3)
    layer = RoomyLayer(torch.cat([k0, torch.zeros(2, 3, 4, 8)], 2), torch.cat([v0, torch.zeros(2, 3, 4, 8)], 2), 3)
    layer.batch_select_indices(torch.tensor([1]))  # a row leaves the batch: the buffer keeps its room
    assert layer._in_buffer() and layer._keys.shape == (1, 3, 7, 8)
    k, v = _kv(batch=1, length=1, seed=9)
    got_k, _ = layer.update(k, v)
    assert torch.equal(got_k, torch.cat([k0[1:], k], 2))
    layer.keys = layer.keys.clone()  # an inherited method's own tensor is picked up on the next update
    got_k, _ = layer.update(k, v)
    assert torch.equal(got_k, torch.cat([k0[1:], k, k], 2)) and layer._in_buffer()
    layer.reset()
    got_k, _ = layer.update(k, v)
    assert torch.equal(got_k, k)


def test_left_padded_cache_puts_each_prompt_flush_right_with_room():
    short, long_ = _kv(batch=1, length=2, seed=1), _kv(batch=1, length=5, seed=2)
    cache = left_padded_cache([[short], [long_]], room=3)
    layer = cache.layers[0]
    assert layer.keys.shape == (2, 3, 5, 8) and layer._keys.shape[-2] == 8
    assert layer.keys[0, :, :3].abs().sum() == 0 and torch.equal(layer.keys[0, :, 3:], short[0][0])
    assert torch.equal(layer.values[1], long_[1][0]) and cache.get_seq_length() == 5


class _Module(torch.nn.Module):
    num_key_value_groups = 3
    is_causal = True


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mask_kind", ["none", "bool", "float"])
def test_decode_attention_equals_sdpa(dtype, mask_kind):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    g = torch.Generator().manual_seed(0)
    q = torch.randn(4, 9, 1, 16, generator=g).to(dtype)
    k, v = (torch.randn(4, 3, 12, 16, generator=g).to(dtype) for _ in range(2))
    keep = torch.ones(4, 1, 1, 12, dtype=torch.bool)
    keep[0, ..., :5] = False  # a left-padded row
    keep[2, ..., :11] = False
    mask = {"none": None, "bool": keep,
            "float": torch.zeros(4, 1, 1, 12, dtype=dtype).masked_fill(~keep, torch.finfo(dtype).min)}[mask_kind]
    want, _ = sdpa_attention_forward(_Module(), q, k, v, mask, scaling=0.25)
    got, weights = attention(_Module().eval(), q, k, v, mask, scaling=0.25)
    assert weights is None and got.shape == want.shape == (4, 1, 9, 16)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)
    torch.testing.assert_close(_decode_attention(q, k, v, mask, 0.25), got)


def test_attention_leaves_prefill_to_sdpa():
    q = torch.randn(1, 9, 4, 16)
    k, v = torch.randn(1, 3, 4, 16), torch.randn(1, 3, 4, 16)
    got, _ = attention(_Module(), q, k, v, None, scaling=0.25)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.25, enable_gqa=True)
    torch.testing.assert_close(got, want.transpose(1, 2))
