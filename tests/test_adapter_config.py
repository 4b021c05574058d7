"""Only plain, bounded LoRA reaches PEFT: every way a config or a weights file could hurt the shared base is refused,
at pull time and at load time (both go through `zoo.store.adapter_problems`)."""

from __future__ import annotations

import json

import pytest

from tests.helpers import make_adapter
from zoo.adapter_config import config_problems, linear_dims, tensor_problems
from zoo.base import load_base
from zoo.errors import ZooError
from zoo.store import Zoo, adapter_problems, read_safetensors_header

PLAIN = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
         "target_modules": ["q_proj", "v_proj"], "init_lora_weights": True, "bias": "none", "eva_config": None,
         "loftq_config": {}, "rank_pattern": {}, "modules_to_save": None}


def test_a_plain_lora_config_passes():
    assert config_problems(PLAIN) == []


@pytest.mark.parametrize("change, why", [
    ({"target_modules": "(.*.*)*x"}, "regex"),
    ({"init_lora_weights": "olora"}, "rewrite the shared base"),
    ({"init_lora_weights": "pissa_niter_4"}, "rewrite the shared base"),
    ({"r": 100000}, "1 to 512"),
    ({"r": True}, "1 to 512"),
    ({"peft_type": "IA3"}, "LoRA only"),
    ({"modules_to_save": ["lm_head"]}, "does not allow"),
    ({"rank_pattern": {".*": 4096}}, "does not allow"),
    ({"layer_replication": [[0, 4]]}, "does not allow"),
    ({"trainable_token_indices": [1, 2]}, "does not allow"),
    ({"auto_mapping": {"base_model_class": "Evil", "parent_library": "os"}}, "outside what"),
    ({"target_modules": ["q_proj", "a.b|c"]}, "regex"),
])
def test_configs_that_could_hurt_the_base_are_refused(change, why):
    problems = config_problems({**PLAIN, **change})
    assert len(problems) == 1 and why in problems[0]


def test_a_config_that_is_not_an_object_is_refused():
    assert config_problems([]) == ["adapter_config.json is not a JSON object"]
    assert any("'r'" in p for p in config_problems({k: v for k, v in PLAIN.items() if k != "r"}))


def header(shapes: dict[str, list[int]]) -> dict:
    return {f"base_model.model.model.layers.0.self_attn.{k}.weight": {"dtype": "F32", "shape": s,
                                                                        "data_offsets": [0, 0]}
            for k, s in shapes.items()}


def test_tensor_shapes_must_match_the_rank_and_the_base():
    dims = {"layers.0.self_attn.q_proj": (64, 64)}
    good = header({"q_proj.lora_A": [4, 64], "q_proj.lora_B": [64, 4]})
    assert tensor_problems(PLAIN, good, dims) == []
    assert "not rank r=4" in tensor_problems(PLAIN, header({"q_proj.lora_A": [8, 64]}), dims)[0]
    assert "the base needs 64" in tensor_problems(PLAIN, header({"q_proj.lora_B": [128, 4]}), dims)[0]
    assert "does not have" in tensor_problems(PLAIN, header({"v_proj.lora_A": [4, 64]}), dims)[0]
    assert "not a LoRA weight" in tensor_problems(PLAIN, header({"k_proj.lora_A": [4, 64]}), dims)[0]


@pytest.fixture
def tiny(tiny_base_dir):
    return load_base(str(tiny_base_dir), quant=False)


def test_a_real_adapter_passes_and_a_planted_one_is_refused_at_load(tmp_path, tiny_base_dir, tiny):
    """A hostile config planted straight into a zoo (no pull) is that adapter's problem: the zoo lists it as
    broken, `require_healthy` refuses it before PEFT reads it, the other adapters stay healthy."""
    zoo = Zoo(tmp_path / "zoo")
    for name in ("good", "evil"):
        make_adapter(zoo, tiny_base_dir, name, "qa", seed=0)
    dims = linear_dims(tiny.model)
    assert adapter_problems("good", zoo.adapter_dir("good"), dims) == []
    cfg_path = zoo.adapter_dir("evil") / "adapter_config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "init_lora_weights": "olora"}))
    assert zoo.healthy() == ["good"]
    with pytest.raises(ZooError, match="init_lora_weights"):
        zoo.require_healthy("evil", tiny.ref, dims)
    assert zoo.require_healthy("good", tiny.ref, dims).name == "good"


def test_weights_for_another_base_shape_are_refused_before_peft_allocates(tmp_path, tiny_base_dir, tiny):
    zoo = Zoo(tmp_path / "zoo")
    make_adapter(zoo, tiny_base_dir, "wide", "qa", seed=0)
    header_, err = read_safetensors_header(zoo.adapter_dir("wide") / "adapter_model.safetensors")
    assert err is None and header_
    dims = {k: (v[0] * 2, v[1]) for k, v in linear_dims(tiny.model).items()}  # a base twice as wide
    with pytest.raises(ZooError, match="the base needs"):
        zoo.require_healthy("wide", tiny.ref, dims)
