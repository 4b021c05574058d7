"""Training one QLoRA adapter per task on the shared base: packed rows, loss on answer tokens only.

Why it is faster than the usual recipe (see `zoo bench`):
- examples are packed into one row with restarting `position_ids` (no pad tokens, no 2D mask), and the
  prefix a batch shares (the chat template's system prompt) runs once per row (`zoo.training.packing`), and
- the LM head runs only at answer positions: the 49k-word head is ~20% of the FLOPs, and
- `--layers N` puts LoRA on the top N layers only, so backward stops there (no input grads are switched on),
- on a CPU, each packed example attends to itself only, scale and mask fused (`zoo.training.attention`), and
- each LoRA layer adds its adapter in one `addmm` (`zoo.training.lora`), and
- the memory plan (`zoo.training.memory`) checkpoints only as many layers as the memory budget needs and keeps
  dense copies of the frozen NF4 weights when they fit (no dequantizing on every call), and
- in fp32 on a CPU, backward hands the gradient down through int8 copies of the frozen weights
  (`zoo.training.int8_grads`; the forward and the loss stay exact).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from zoo.base import unwrap_peft
from zoo.budget import BudgetPlan, attach, budget_record, parse_duration, pool_size
from zoo.distributed import ddp
from zoo.errors import ZooError
from zoo.fsutil import atomic_write_json
from zoo.manifest import BaseInfo, Entry
from zoo.prompting import target_ids, task_prompt_ids
from zoo.training.packing import PackedCollator, planning_step, shared_length


# data ---------------------------------------------------------------------------
def build_examples(spec, tokenizer, rows: list[dict], max_len: int, seed: int) -> list[dict]:
    """Prompt/completion token ids; each row gets a template drawn at random, so adapters learn many phrasings."""
    rng = random.Random(seed)
    out = []
    for row in rows:
        answer = target_ids(tokenizer, spec.target(row))[: max_len // 4]
        prompt = task_prompt_ids(tokenizer, spec, row, rng.randrange(len(spec.templates)), max_len - len(answer))
        out.append({"input_ids": prompt + answer, "n_prompt": len(prompt)})
    return out


def answer_loss(model, inputs: dict):
    """Mean cross-entropy over answer tokens; the LM head runs only at the positions that predict them, and with
    the CPU's packed attention so does the top layer's all but keys and values (`zoo.training.answer_layer`)."""
    import contextlib

    import torch.nn.functional as F

    from zoo.training import answer_layer, attention

    lm = unwrap_peft(model)
    decoder, rows, cols = lm.get_decoder(), inputs["rows"], inputs["cols"]
    top_at_answers = lm.config._attn_implementation == attention.NAME and answer_layer.supported(lm)
    with answer_layer.answer_positions_only(decoder, rows, cols) if top_at_answers else contextlib.nullcontext():
        hidden = decoder(input_ids=inputs["input_ids"], position_ids=inputs["position_ids"],
                         use_cache=False).last_hidden_state
    logits = lm.get_output_embeddings()(hidden[0] if top_at_answers else hidden[rows, cols]).float()
    cap = getattr(lm.config, "final_logit_softcapping", None)
    if cap:
        logits = cap * (logits / cap).tanh()
    return F.cross_entropy(logits, inputs["targets"])


# model --------------------------------------------------------------------------
def lora_config(lora, n_layers: int):
    from peft import LoraConfig

    layers = None
    if lora.layers is not None and lora.layers < n_layers:
        layers = list(range(n_layers - lora.layers, n_layers))
    return LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.module_names(),
        layers_to_transform=layers, use_dora=lora.use_dora, bias="none", task_type="CAUSAL_LM",
    )


def attach_adapter(base_model, lora, name: str):
    """Wrap the shared base with a fresh LoRA adapter (no prepare_model_for_kbit_training: it would switch on
    input gradients and make backward run through every layer even when only the top ones are adapted)."""
    import warnings

    from peft import get_peft_model

    cfg = lora_config(lora, base_model.config.num_hidden_layers)
    with warnings.catch_warnings():  # PEFT still reads transformers' deprecated `is_gradient_checkpointing`
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model = get_peft_model(base_model, cfg, adapter_name=name)
    return model


# trainer ------------------------------------------------------------------------
def make_trainer(model, examples, args_kwargs: dict, collator: PackedCollator, callbacks=()):
    from transformers import Trainer, TrainingArguments

    class PackedTrainer(Trainer):
        loss_is_scaled_for_ga = False  # answer_loss is a per-batch mean: the Trainer divides by accumulation
        batches_trained = 0

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            self.batches_trained += 1
            loss = ddp.loss_through(model, inputs, answer_loss)  # DDP's forward when data-parallel
            return (loss, None) if return_outputs else loss

    args = TrainingArguments(remove_unused_columns=False, report_to="none", include_num_input_tokens_seen="all",
                             dataloader_num_workers=0, **args_kwargs)
    return PackedTrainer(model=model, args=args, train_dataset=examples, data_collator=collator,
                         callbacks=list(callbacks))


def training_args(train, run_dir: Path, device: str, compute_dtype) -> dict:
    import torch

    return dict(
        output_dir=str(run_dir),
        per_device_train_batch_size=train.batch_size,
        gradient_accumulation_steps=train.grad_accum,
        learning_rate=train.learning_rate,
        num_train_epochs=train.epochs,
        max_steps=train.max_steps or -1,
        warmup_steps=0,
        lr_scheduler_type="cosine",
        optim=train.optimizer,
        logging_steps=5,
        save_strategy="steps",
        save_steps=train.save_steps,
        save_total_limit=2,
        seed=train.seed,
        data_seed=train.seed,
        use_cpu=device == "cpu",
        bf16=compute_dtype == torch.bfloat16 and device != "cpu",
        fp16=compute_dtype == torch.float16,
        disable_tqdm=False,
    )


def memory_plan(run: "TrainingRun", loaded):
    """The fastest memory plan estimated to fit the run's budget, for a step of long examples (`planning_step`)."""
    from zoo.serving.dense import dense_bytes_if_used
    from zoo.training.int8_grads import int8_grad_bytes
    from zoo.training.memory import choose_plan, parse_budget

    train, config = run.spec.train, loaded.model.config
    trained = min(run.spec.lora.layers or config.num_hidden_layers, config.num_hidden_layers)
    shared = shared_length(run.examples) if shares_prefix(loaded) else 0
    tokens, cells = planning_step(run.examples, train.batch_size, train.row_tokens, shared)
    budget = parse_budget(train.max_memory, loaded.compute_dtype) if train.max_memory else None
    return choose_plan(config, trained, tokens, cells, loaded.compute_dtype.itemsize, budget=budget,
                       dense_bytes=dense_bytes_if_used(loaded.model), int8_bytes=int8_grad_bytes(loaded.model),
                       at_least=trained if train.gradient_checkpointing else 0, device=loaded.device)


def shares_prefix(loaded) -> bool:
    """Whether a batch's rows carry its shared prefix once (`zoo.training.packing`): only the CPU's training
    attention reads that layout; another (a GPU's) would hide the prefix from all but one example."""
    from zoo.serving.attention import PACKED, TRAINING, attention_for

    return attention_for(loaded.model, TRAINING) == PACKED


def last_checkpoint(run_dir: Path) -> str | None:
    """The newest whole checkpoint: the Trainer writes trainer_state.json last, so one without it was cut short
    by a kill during the save (checkpoints are not written atomically) and is passed over."""
    whole = [d for d in run_dir.glob("checkpoint-*") if d.name[11:].isdigit() and (d / "trainer_state.json").is_file()]
    return str(max(whole, key=lambda d: int(d.name[11:]))) if whole else None


def total_steps(train, n_examples: int) -> int:
    return train.max_steps or math.ceil(n_examples * train.epochs / (train.batch_size * train.grad_accum))


# recipe: setup -> train -> save -> cleanup ----------------------------------------
@dataclass
class TrainingRun:
    """What `setup_run` resolves before training: the run folder, its settings and the examples."""

    name: str
    spec: object
    run_dir: Path
    settings: dict
    checkpoint: str | None  # resume from here
    examples: list[dict]
    source: str  # where the rows came from, for the manifest
    pool: list[dict]  # the rows drawn for training (calibration takes others)

    @property
    def tokens(self) -> int:
        return sum(len(e["input_ids"]) for e in self.examples)


def train_adapter(zoo, spec, loaded, name: str | None = None, data_dir=None, resume: bool = False,
                  callbacks=()) -> Entry:
    """Train `spec`'s adapter on the shared base `loaded` and add it to `zoo`. Returns its manifest entry.
    `callbacks` go to the Trainer (the bench's step timer)."""
    import torch

    with ddp.main_holds(zoo.name_lock(name or spec.name)):  # data-parallel: the main process writes
        run = setup_run(zoo, spec, loaded, name or spec.name, data_dir, resume)
        with loaded.lock:
            model = attach_adapter(loaded.model, spec.lora, run.name)
            try:
                stats, log = run_trainer(model, run, loaded, callbacks)
                calibration = ddp.on_main(calibrate_labels, model, run, loaded, data_dir)
                staged = ddp.on_main(stage_adapter, zoo, model, run, stats, log, calibration)
            finally:
                model.unload()  # give the shared base back without LoRA layers
                torch.set_grad_enabled(True)
        entry = adapter_entry(run, loaded, stats, log, calibration)
        ddp.on_main(_install, zoo, staged, entry, run.run_dir)
    return entry


def _install(zoo, staged: Path, entry: Entry, run_dir: Path) -> None:
    zoo.install(staged, entry)
    shutil.rmtree(run_dir, ignore_errors=True)


def setup_run(zoo, spec, loaded, name: str, data_dir, resume: bool) -> TrainingRun:
    """The run folder (resumed or clean), the tokenized examples and the seed."""
    from transformers import set_seed

    from zoo.data import describe_source, load_rows

    train = spec.train
    run_dir = zoo.run_dir(name)
    settings = {"task": spec.name, "base": loaded.ref.hash, "lora": asdict(spec.lora), "train": asdict(train),
                "quantized": loaded.quantized}
    checkpoint = ddp.on_main(_prepare_run_dir, run_dir, settings, resume)
    limit = pool_size(parse_duration(train.time_budget), train.max_examples) if train.time_budget else \
        train.max_examples
    rows = load_rows(spec, spec.train_split, data_dir, limit=limit, seed=train.seed)
    examples = build_examples(spec, loaded.tokenizer, rows, train.max_seq_len, train.seed)
    set_seed(train.seed)
    return TrainingRun(name, spec, run_dir, settings, checkpoint, examples,
                       describe_source(spec, spec.train_split, data_dir), rows)


def run_trainer(model, run: TrainingRun, loaded, callbacks=()) -> tuple[dict, list[dict]]:
    """Train `model` (the base with the new adapter) on the run's examples, in the training phase's attention.
    Returns the throughput and the loss log."""
    from zoo.serving.attention import TRAINING, in_phase
    from zoo.training.lora import fused_lora
    from zoo.training.memory import applied, peak_rss_bytes

    train, spec = run.spec.train, run.spec
    args = ddp.per_process_args(training_args(train, run.run_dir, loaded.device, loaded.compute_dtype))
    steps = total_steps(train, len(run.examples))
    args["warmup_steps"] = int(steps * train.warmup_ratio)
    args["logging_steps"] = max(1, min(5, steps // 10))  # a loss curve even for short runs
    collator = PackedCollator(loaded.tokenizer.pad_token_id or 0, train.row_tokens, share_prefix=shares_prefix(loaded))
    trainer = make_trainer(model, run.examples, args, collator, callbacks)
    budget = BudgetPlan(parse_duration(train.time_budget), steps, train.warmup_ratio) if train.time_budget else None
    if budget:
        attach(trainer, budget)
    print(f"[zoo] training {run.name!r} ({spec.name}): {len(run.examples)} examples{' at most' if budget else ''}, "
          f"{run.tokens} tokens, LoRA r={spec.lora.r} on {spec.lora.layers or 'all'} layers"
          + (f", within {budget.seconds:g} s" if budget else ""), flush=True)
    memory = memory_plan(run, loaded)
    print(f"[zoo] {memory.describe()}", flush=True)
    t0 = time.perf_counter()
    if budget:
        budget.start_clock(time.monotonic())
    with in_phase(loaded.model, TRAINING), applied(loaded.model, memory), fused_lora(model):
        trainer.train(resume_from_checkpoint=run.checkpoint)
    stats = _throughput(trainer, collator, time.perf_counter() - t0)
    stats["memory"] = {**memory.as_dict(), "peak_rss_mb": round(peak_rss_bytes() / 2**20)}
    if budget:
        stats["budget"] = budget_record(budget, trainer.state.global_step, stats["examples"], stats["seconds"])
    return stats, [h for h in trainer.state.log_history if "loss" in h]


def calibrate_labels(model, run: TrainingRun, loaded, data_dir) -> dict | None:
    """A task with labels: the adapter's decision calibrated on unseen training rows (`zoo.label_bias`)."""
    from zoo import label_bias

    calibration = label_bias.calibrate(model, loaded.tokenizer, run.spec, run.pool, data_dir, run.spec.train.seed + 1)
    if calibration:
        print(f"[zoo] {run.name}: label bias {calibration['bias']} on {calibration['rows']} unseen training rows "
              f"(accuracy there {calibration['accuracy_before']:.3f} -> {calibration['accuracy_after']:.3f}; "
              f"{calibration['seconds']:.0f} s)", flush=True)
    return calibration


def stage_adapter(zoo, model, run: TrainingRun, stats: dict, log: list[dict], calibration: dict | None = None) -> Path:
    """The adapter, its training record and its resolved task spec in a staging folder for `Zoo.install`."""
    from tasks import save_spec

    staged = zoo.staging_dir(run.name)
    save_adapter(model, run.name, staged)
    record = {**run.settings, "throughput": stats, "loss_log": log}
    atomic_write_json(staged / "training.json", {**record, "calibration": calibration} if calibration else record)
    save_spec(staged, run.spec)
    return staged


def adapter_entry(run: TrainingRun, loaded, stats: dict, log: list[dict], calibration: dict | None = None) -> Entry:
    """The manifest entry of a finished run (what `Zoo.install` records)."""
    from zoo.label_bias import as_logit_bias
    from zoo.store import now_iso

    return Entry(
        name=run.name, task=run.spec.name, kind="trained", base=BaseInfo.of(loaded), lora=asdict(run.spec.lora),
        train=asdict(run.spec.train), path=f"adapters/{run.name}", created=now_iso(), throughput=stats,
        data={"source": run.source, "examples": len(run.examples), "tokens": run.tokens},
        final_loss=log[-1]["loss"] if log else None,
        logit_bias=as_logit_bias(calibration["token_ids"], calibration["bias"]) or None if calibration else None,
    )


def _prepare_run_dir(run_dir: Path, settings: dict, resume: bool) -> str | None:
    """Resume only a run with the same settings; otherwise start clean (a stale run is never mixed in)."""
    settings_file = run_dir / "run.json"
    checkpoint = last_checkpoint(run_dir)
    if resume and checkpoint:
        old = json.loads(settings_file.read_text()) if settings_file.exists() else None
        if old != json.loads(json.dumps(settings)):
            raise ZooError(f"cannot resume {run_dir.name!r}: its settings differ from this run's; "
                           "drop --resume to start over")
        print(f"[zoo] resuming from {checkpoint}", flush=True)
        return checkpoint
    if checkpoint and not resume:
        print(f"[zoo] note: an unfinished run was at {checkpoint}; starting over (pass --resume to continue)")
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    atomic_write_json(settings_file, settings)
    return None


def save_adapter(model, name: str, folder: Path) -> None:
    """Save one adapter of a PeftModel as safetensors in one flat folder (PEFT puts a non-default adapter in
    a sub-folder named after it)."""
    model.save_pretrained(folder, selected_adapters=[name], safe_serialization=True)
    sub = folder / name
    if sub.is_dir():
        for f in sub.iterdir():
            os.replace(f, folder / f.name)
        sub.rmdir()


def _throughput(trainer, collator: PackedCollator, seconds: float) -> dict:
    """Real (unpadded) examples and tokens processed in this session, per second of training."""
    steps = trainer.state.global_step
    ex, tok = ddp.total(*collator.trained(trainer.batches_trained))  # every process's share
    return {"seconds": round(seconds, 1), "steps": steps, "examples": ex, "tokens": tok,
            "examples_per_s": round(ex / seconds, 3), "tokens_per_s": round(tok / seconds, 1)}
