"""The textbook QLoRA recipe, as the tutorials write it, for `zoo bench` to measure `zoo train` against.

NF4 base (bitsandbytes, fp32 compute on a CPU) -> `prepare_model_for_kbit_training` -> `get_peft_model` ->
plain `transformers.Trainer`, chat-formatted examples padded per batch, loss on every token. It gets the same
rows, template draws, LoRA config (rank, alpha, targets, layers), learning rate, schedule and effective batch
as `zoo train`, so what differs is only the recipe. Nothing here is used outside the benchmark.
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path


def format_examples(spec, tokenizer, rows: list[dict], max_len: int, seed: int) -> list[dict]:
    """User + assistant turns through the chat template, truncated at `max_len`; labels = input ids.

    Templates are drawn with the same seeded generator as `zoo.train.build_examples`, so both recipes see
    the same prompts.
    """
    rng = random.Random(seed)
    out = []
    for row in rows:
        messages = [{"role": "user", "content": spec.prompt(row, rng.randrange(len(spec.templates)))},
                    {"role": "assistant", "content": spec.target(row)}]
        enc = tokenizer.apply_chat_template(messages, tokenize=True, truncation=True, max_length=max_len)
        ids = list(enc["input_ids"] if hasattr(enc, "keys") else enc)
        out.append({"input_ids": ids, "labels": list(ids)})
    return out


def reference_dtype(device: str, match_ours: bool = False):
    """The recipe's compute dtype: fp32 on a CPU (what the tutorials use there, and what issue 7 specifies),
    bf16 (else fp16) on a GPU. `match_ours` takes `zoo train`'s choice instead (bf16 on CPUs that have it), so
    the bench can also show the speedup that comes from the recipe alone."""
    import torch

    from zoo.base import pick_compute_dtype

    return pick_compute_dtype(device) if match_ours or device != "cpu" else torch.float32


def load_model(base_path: str | Path, lora, device: str, dtype):
    """NF4 + double quantization, k-bit preparation (fp32 norms, input grads, gradient checkpointing), LoRA
    on the same layers as `zoo train`."""
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from zoo.train import lora_config

    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=dtype)
    model = AutoModelForCausalLM.from_pretrained(base_path, quantization_config=bnb, dtype=dtype,
                                                 device_map={"": device})
    model = prepare_model_for_kbit_training(model, gradient_checkpointing_kwargs={"use_reentrant": False})
    config = lora_config(lora, model.config.num_hidden_layers)  # the very LoraConfig `zoo train` builds
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return get_peft_model(model, config), tokenizer


def make_trainer(model, tokenizer, examples: list[dict], train, out_dir: Path, device: str, dtype):
    """`Trainer` with a padding collator. DataCollatorForSeq2Seq pads labels with -100, so loss covers every
    real token; DataCollatorForLanguageModeling would also mask the end-of-turn token, which is the pad token
    of SmolLM2, and the model would never learn to stop."""
    import math

    import torch
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    steps = math.ceil(len(examples) * train.epochs / (train.batch_size * train.grad_accum))
    args = TrainingArguments(
        output_dir=str(out_dir), per_device_train_batch_size=train.batch_size,
        gradient_accumulation_steps=train.grad_accum, learning_rate=train.learning_rate,
        num_train_epochs=train.epochs, lr_scheduler_type="cosine", warmup_steps=int(steps * train.warmup_ratio),
        optim=train.optimizer, logging_steps=max(1, min(5, steps // 10)), save_strategy="no",
        report_to="none", seed=train.seed, data_seed=train.seed, use_cpu=device == "cpu",
        bf16=dtype == torch.bfloat16 and device != "cpu", fp16=dtype == torch.float16,
        dataloader_num_workers=0, disable_tqdm=True,
    )
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True)
    return Trainer(model=model, args=args, train_dataset=examples, data_collator=collator)


def train_reference(spec, base_path: str | Path, rows: list[dict], adapter_dir: Path, device: str,
                    callbacks=(), match_dtype: bool = False) -> dict:
    """Train one adapter the textbook way and save it (flat PEFT folder) in `adapter_dir`; timing and config."""
    from transformers import set_seed

    from zoo.train import save_adapter

    set_seed(spec.train.seed)
    dtype = reference_dtype(device, match_dtype)
    t0 = time.perf_counter()
    model, tokenizer = load_model(base_path, spec.lora, device, dtype)
    load_s = time.perf_counter() - t0
    examples = format_examples(spec, tokenizer, rows, spec.train.max_seq_len, spec.train.seed)
    with tempfile.TemporaryDirectory(prefix="zoo-bench-ref-") as run_dir:  # the Trainer's output_dir
        trainer = make_trainer(model, tokenizer, examples, spec.train, Path(run_dir), device, dtype)
        for callback in callbacks:  # the bench's step timer
            trainer.add_callback(callback)
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
    save_adapter(model, "default", adapter_dir)
    log = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"seconds": seconds, "load_seconds": load_s, "examples": len(examples),
            "tokens": sum(len(e["input_ids"]) for e in examples), "final_loss": log[-1] if log else None,
            "lora": reference_lora(spec.lora, dtype)}


def reference_lora(lora, dtype) -> dict:
    """The LoRA shape and recipe facts recorded with the reference's results and manifest entry."""
    from zoo.bench.measure import dtype_name

    return {"r": lora.r, "alpha": lora.alpha, "dropout": lora.dropout, "target_modules": lora.module_names(),
            "layers": lora.layers or "all", "use_dora": lora.use_dora,
            "compute_dtype": dtype_name(dtype), "gradient_checkpointing": True,
            "loss_on": "all tokens", "batching": "padded"}
