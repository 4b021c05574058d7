"""What a task is: a frozen, validated spec. A task module builds one `TaskSpec` and calls `register`."""

from __future__ import annotations

import difflib
import re
import string
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from zoo.errors import ZooError
from zoo.metrics import METRICS
TARGET_PRESETS = {
    "attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj"),
    "all-linear": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
}
OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "sgd", "adafactor", "adamw_bnb_8bit", "paged_adamw_8bit",
              "paged_adamw_32bit", "lion_8bit", "paged_lion_8bit")


@dataclass(frozen=True)
class LoraSettings:
    r: int = field(default=16, metadata={"help": "LoRA rank"})
    alpha: int = field(default=32, metadata={"help": "LoRA alpha (scale = alpha / r)"})
    dropout: float = field(default=0.0, metadata={
        "help": "dropout on the LoRA input; 0 by default: short runs don't overfit, and each dropout keeps a copy "
                "of every adapted layer's input for backward"})
    target_modules: str | tuple[str, ...] = field(
        default="all-linear", metadata={"help": "preset (attention, mlp, all-linear) or a list of module names"})
    layers: int | None = field(
        default=None, metadata={"help": "adapt only the top N layers: backward stops there, so training is faster"})
    use_dora: bool = field(default=False, metadata={"help": "weight-decomposed LoRA (DoRA)"})

    def __post_init__(self):
        if self.r < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise ZooError(f"bad LoRA settings r={self.r} alpha={self.alpha} dropout={self.dropout}")
        if isinstance(self.target_modules, str) and self.target_modules not in TARGET_PRESETS:
            raise ZooError(f"unknown target preset {self.target_modules!r}; use {', '.join(TARGET_PRESETS)} "
                           "or a list of module names")
        if self.layers is not None and self.layers < 1:
            raise ZooError(f"layers must be >= 1 (got {self.layers})")

    def module_names(self) -> list[str]:
        t = self.target_modules
        return list(TARGET_PRESETS[t] if isinstance(t, str) else t)


@dataclass(frozen=True)
class TrainSettings:
    learning_rate: float = field(default=2e-4, metadata={"help": "peak learning rate"})
    batch_size: int = field(default=8, metadata={"help": "examples per step (packed into one row, no padding)"})
    grad_accum: int = field(default=1, metadata={"help": "gradient accumulation steps"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the training examples"})
    max_examples: int | None = field(default=None, metadata={"help": "use at most this many training examples"})
    max_steps: int | None = field(default=None, metadata={"help": "stop after this many optimizer steps"})
    optimizer: str = field(default="adamw_torch", metadata={"help": "transformers optimizer name (bnb 8-bit ok)"})
    warmup_ratio: float = field(default=0.05, metadata={"help": "share of steps spent warming up"})
    max_seq_len: int = field(default=768, metadata={"help": "longer prompts are cut in the middle of the passage"})
    row_tokens: int = field(default=512, metadata={
        "help": "packed row length (attention cost grows with its square); on a CPU a batch whose examples share a "
                "prefix is one row, the prefix once (zoo.training.packing)"})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "recompute every trained layer's activations in backward (by default only as many layers as "
                "--max-memory needs)"})
    max_memory: str | None = field(default=None, metadata={
        "help": "peak memory for training (4GB, 512MB, or per compute dtype: bf16=5GB,fp32=6GB): the fastest "
                "memory plan estimated to fit; default half the machine's RAM"})
    save_steps: int = field(default=25, metadata={"help": "checkpoint every N steps (for --resume)"})
    seed: int = field(default=0, metadata={"help": "seed for sampling, shuffling and init"})
    time_budget: str | None = field(default=None, metadata={
        "help": "train for this long (90s, 5m, 1h30m): steps, examples and the schedule are planned from the "
                "measured step time"})

    def __post_init__(self):
        if self.learning_rate <= 0 or self.batch_size < 1 or self.grad_accum < 1 or self.epochs <= 0:
            raise ZooError("learning rate, batch size, accumulation and epochs must be positive")
        for name in ("max_examples", "max_steps", "max_seq_len", "row_tokens", "save_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ZooError(f"{name} must be at least 1 (got {value})")
        if not 0 <= self.warmup_ratio < 1:
            raise ZooError(f"warmup_ratio must be at least 0 and below 1 (got {self.warmup_ratio})")
        if self.seed < 0:
            raise ZooError(f"seed must be at least 0 (got {self.seed})")
        if self.time_budget is not None:
            from zoo.budget import parse_duration

            parse_duration(self.time_budget)  # a clear error now, not after the model is loaded
        if self.max_memory is not None:
            from zoo.training.memory import parse_budget

            parse_budget(self.max_memory)
        if self.optimizer not in OPTIMIZERS:
            raise ZooError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")


@dataclass(frozen=True)
class TaskSpec:
    """A task: where its data is, how a row becomes a prompt and a target, and how answers are scored."""

    name: str
    description: str
    dataset: str = field(metadata={"help": "Hub dataset id (or a local folder of <split>.jsonl files)"})
    input_columns: tuple[str, ...]
    target_column: str = field(metadata={"help": "column holding the answer; 'a.b' reads a nested field"})
    templates: tuple[str, ...] = field(metadata={"help": "instruction templates with {column} slots; [0] is used for eval"})
    metric: str = "accuracy"
    labels: tuple[str, ...] | None = field(default=None, metadata={"help": "names of integer class labels"})
    dataset_config: str | None = None
    local_dir: str | None = field(default=None, metadata={"help": "folder name under ZOO_DATA_DIR"})
    train_split: str = "train"
    eval_split: str = "validation"
    truncate_column: str | None = field(default=None, metadata={"help": "column cut in the middle when too long"})
    max_new_tokens: int = 32
    lora: LoraSettings = LoraSettings()
    train: TrainSettings = TrainSettings()
    ood: dict | None = field(default=None, metadata={
        "help": "out-of-domain set, scored next to the eval split by `zoo eval` and used by the router report: "
                "a mapping with the keys of OOD_KEYS"})
    license: str | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not re.fullmatch(r"[a-z][a-z0-9_]{0,39}", self.name):
            raise ZooError(f"invalid task name {str(self.name)[:60]!r}: lowercase letters, digits and '_', "
                           "starting with a letter")
        if self.metric not in METRICS:
            raise ZooError(f"task {self.name}: unknown metric {self.metric!r}; choose one of {', '.join(METRICS)}")
        if not self.templates:
            raise ZooError(f"task {self.name}: needs at least one template")
        for t in self.templates:
            _check_template(self.name, t, self.input_columns)
        if self.metric == "accuracy" and not self.labels:
            raise ZooError(f"task {self.name}: metric 'accuracy' needs 'labels'")
        if self.ood is not None:
            check_ood(f"task {self.name}: ood", self.ood, self.columns)

    # row -> text -----------------------------------------------------------
    @property
    def primary_metric(self) -> str:
        return METRICS[self.metric].primary

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.input_columns, self.target_column.split(".")[0])

    def prompt(self, row: dict, template: int = 0) -> str:
        return self.templates[template % len(self.templates)].format(**{c: row[c] for c in self.input_columns})

    def references(self, row: dict) -> list[str]:
        value = row
        for part in self.target_column.split("."):
            value = value[part]
        values = value if isinstance(value, list) else [value]
        if self.labels:
            return [self.labels[int(v)] if not isinstance(v, str) else v for v in values]
        return [str(v).strip() for v in values]

    def target(self, row: dict) -> str:
        return self.references(row)[0]

    def with_overrides(self, lora: dict | None = None, train: dict | None = None) -> "TaskSpec":
        """The spec with some LoRA/training settings changed; `None` values leave a setting as it is."""
        clean = lambda d: {k: v for k, v in (d or {}).items() if v is not None}  # noqa: E731
        return replace(self, lora=settings_from_dict(LoraSettings, clean(lora), self.lora),
                       train=settings_from_dict(TrainSettings, clean(train), self.train))

    # the resolved spec travels with its adapter (task.json) ------------------
    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any, where: str = "task spec") -> "TaskSpec":
        """A spec from JSON (a task file, or an adapter's task.json): only known keys, each checked."""
        if not isinstance(data, dict):
            raise ZooError(f"{where} must be a mapping of settings, not {type(data).__name__}")
        check_keys(where, data, {f.name for f in fields(cls)})
        values = dict(data)
        for key in ("input_columns", "templates", "labels"):
            if isinstance(values.get(key), str):
                values[key] = [values[key]]
            if values.get(key) is not None:
                if not isinstance(values[key], (list, tuple)) or not all(isinstance(v, str) for v in values[key]):
                    raise ZooError(f"{where}: {key!r} must be a list of strings")
                values[key] = tuple(values[key])
        values["lora"] = settings_from_dict(LoraSettings, values.get("lora"), where=where)
        values["train"] = settings_from_dict(TrainSettings, values.get("train"), where=where)
        for key in ("name", "description", "dataset", "target_column", "metric"):
            if key in values and not isinstance(values[key], str):
                raise ZooError(f"{where}: {key!r} must be a string")
        try:
            return cls(**values)
        except TypeError as e:  # a required key is missing
            raise ZooError(f"{where}: {e}") from None


OOD_KEYS = {
    "dataset": "folder under the data folder (ZOO_DATA_DIR / --data-dir), a local folder or a Hub dataset id",
    "split": "the split to score (default 'test')",
    "config": "Hub dataset config, if any",
    "columns": "{task column: the set's column} where the names differ (SciTLDR's 'source' is the 'dialogue')",
    "join": "task columns whose value is a list of strings (SciTLDR's sentences), joined with spaces",
}


def check_ood(where: str, ood: Any, columns: tuple[str, ...]) -> None:
    """An out-of-domain set is plain data: known keys, names as strings, only the task's columns renamed."""
    if not isinstance(ood, dict):
        raise ZooError(f"{where} must be a mapping with the keys {', '.join(OOD_KEYS)}")
    check_keys(where, ood, set(OOD_KEYS))
    for key in ("dataset", "split", "config"):
        value = ood.get(key, "" if key == "dataset" else None)  # a dataset is required, the rest optional
        if value is not None and not (isinstance(value, str) and value):
            raise ZooError(f"{where}: {key!r} must be a non-empty string ({OOD_KEYS[key]})")
    renamed = ood.get("columns") or {}
    joined = ood.get("join") or []
    if not isinstance(renamed, dict) or not all(isinstance(v, str) for v in renamed.values()):
        raise ZooError(f"{where}: 'columns' must map task columns to the set's column names")
    if not isinstance(joined, (list, tuple)):
        raise ZooError(f"{where}: 'join' must be a list of task columns")
    unknown = [c for c in [*renamed, *joined] if c not in columns]
    if unknown:
        raise ZooError(f"{where}: {unknown} are not task columns; use {', '.join(columns)}")


def settings_from_dict(cls, values: Any, start=None, where: str = "settings"):
    """`LoraSettings`/`TrainSettings` from a mapping (a task file's section, CLI flags): known keys only, each of
    the field's type; the rest of the fields from `start` (default: the class defaults)."""
    start = start if start is not None else cls()
    if values is None:
        return start
    if not isinstance(values, dict):
        raise ZooError(f"{where}: {cls.__name__} settings must be a mapping")
    check_keys(where, values, {f.name for f in fields(cls)})
    clean = {}
    for f in fields(cls):
        if f.name in values:
            clean[f.name] = _typed(where, f, values[f.name])
    return replace(start, **clean)


def _typed(where: str, f, value):
    """A setting of the type its field declares (lists become tuples); bools are not numbers here."""
    kind = str(f.type)
    if isinstance(value, list) and "tuple" in kind:
        if not all(isinstance(v, str) for v in value):
            raise ZooError(f"{where}: {f.name!r} must be a list of names")
        return tuple(value)
    if value is None and "None" in kind:
        return None
    ok = (isinstance(value, bool) if kind == "bool" else
          isinstance(value, str) if kind.startswith("str") else
          isinstance(value, (int, float)) and not isinstance(value, bool) if kind.startswith("float") else
          isinstance(value, int) and not isinstance(value, bool) if kind.startswith("int") else True)
    if not ok:
        raise ZooError(f"{where}: {f.name!r} has the wrong type ({type(value).__name__}: {str(value)[:40]!r})")
    return float(value) if kind.startswith("float") else value


def check_keys(where: str, data: dict, known: set[str]) -> None:
    """Refuse an unknown key, suggesting the closest known one (a typo must not be ignored silently)."""
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(sorted(known))}"
            raise ZooError(f"{where}: unknown key {str(key)[:60]!r}{hint}")


def _check_template(task: str, template: str, columns: tuple[str, ...]) -> None:
    """Plain `{column}` slots only: a format spec or conversion (`{text:>2000000000}`, `{text.__class__}`)
    could allocate gigabytes or read attributes."""
    if not isinstance(template, str):
        raise ZooError(f"task {task}: templates must be strings")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ZooError(f"task {task}: bad template ({e}); write braces as {{{{ and }}}}") from None
    for _, slot, spec, conversion in parsed:
        if slot is None:
            continue
        if slot not in columns or spec or conversion:
            raise ZooError(f"task {task}: template slot {{{slot}{'!' + conversion if conversion else ''}"
                           f"{':' + spec if spec else ''}}} is not a plain input column; use one of "
                           + ", ".join(f"{{{c}}}" for c in columns))
