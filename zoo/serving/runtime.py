"""One runtime: the base loaded once, every healthy adapter of the zoo attached to it, any mix per batch.

Adapters are loaded into one `PeftModel` by name; switching costs no reload. A batch whose prompts go to
different adapters runs as one forward pass per step (PEFT's `adapter_names`), not one adapter at a time.
On a CPU, a batch is prefilled without pad tokens (shared prefix once, the rest packed) and then decoded together.
"""

from __future__ import annotations

import functools
import threading
import warnings

from zoo.base import DEFAULT_BASE, load_base, unwrap_peft
from zoo.serving.attention import SERVING, use_phase
from zoo.serving.dense import use_dense_weights
from zoo.adapter_config import linear_dims
from zoo.errors import ZooError, printable
from zoo.fsutil import check_name
from zoo.label_bias import AdapterLogitBias, check
from zoo.serving.lora_serving import use_serving_forwards
from zoo.prompting import text_prompt_ids
from zoo.store import Zoo, adapter_problems

NONE = "none"
BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in mixed batches
DEFAULT_MAX_NEW_TOKENS = 128
SEGMENT = 8  # decode steps between drops of finished rows from a CPU batch


@functools.lru_cache(maxsize=1)
def shared_identity():
    """The one stateless `nn.Identity` that stands for "no dropout" in every loaded adapter."""
    import torch

    return torch.nn.Identity()


class Runtime:
    def __init__(self, zoo: Zoo | str | None = None, base: str | None = None, quant: bool = True,
                 device: str | None = None, dtype: str | None = None):
        self.zoo = zoo if isinstance(zoo, Zoo) else Zoo(zoo)
        entries = self.zoo.entries() if self.zoo.manifest_path.exists() else {}
        base = base or next((e.base.id for e in entries.values() if e.base.id), DEFAULT_BASE)
        self.loaded = load_base(base, quant=quant, device=device, dtype=dtype)
        use_phase(self.loaded.model, SERVING)  # prefill and decode attention (zoo.serving.attention)
        self.dense_weight_bytes = use_dense_weights(self.loaded.model)  # CPU prefill in bf16, not NF4 (zoo.serving.dense)
        self.tokenizer = self.loaded.tokenizer
        self.base_dims = linear_dims(self.loaded.model)  # adapter shapes are checked against these before PEFT
        self.model = None  # becomes a PeftModel with the first adapter
        self.logit_biases: dict[str, dict] = {}  # adapter -> its calibrated decision (`zoo.label_bias`)
        self.lock = threading.RLock()  # generation and adapter changes are serialized on the shared model
        self._router = None

    # adapters ------------------------------------------------------------------------
    @property
    def adapters(self) -> list[str]:
        return sorted(self.model.peft_config) if self.model is not None else []

    def available(self) -> list[str]:
        """Adapters of the zoo that are healthy, trained on this base and shaped for it (one look at each
        adapter's files: `adapter_problems` with the base's dims is `Zoo.healthy()`'s check and more)."""
        return [n for n, e in sorted(self.zoo.entries().items()) if e.base.hash in (None, self.loaded.ref.hash)
                and not adapter_problems(n, self.zoo.adapter_dir(n), self.base_dims)]

    def load_adapter(self, name: str) -> None:
        with self.lock:
            if name in self.adapters:
                return
            self.zoo.require_healthy(name, self.loaded.ref, self.base_dims)
            bias = self.zoo.get(name).logit_bias  # set or dropped on each load: after `close`, a retrained
            if bias:                             # adapter without one must not keep the old one's
                self.logit_biases[name] = check(bias, self.loaded.model.config.vocab_size, f"adapter {name!r}")
            else:
                self.logit_biases.pop(name, None)
            self._attach(name, self.zoo.adapter_dir(name))

    def _attach(self, name: str, folder) -> None:
        """Load a checked PEFT folder as adapter `name` (the first one wraps the base in a PeftModel)."""
        options = dict(adapter_name=name, is_trainable=False, autocast_adapter_dtype=False,
                       low_cpu_mem_usage=True)  # the saved tensors become the weights: no random init, then a copy
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if self.model is None:
                from peft import PeftModel

                self.model = PeftModel.from_pretrained(self.loaded.model, str(folder), **options)
            else:
                self.model.load_adapter(str(folder), **options)
        self._serve(name)

    def _serve(self, name: str) -> None:
        """Make a freshly added adapter (loaded or blended) serve like the others."""
        self._cast_adapter(name)
        self._share_identity_dropout(name)
        use_serving_forwards(self.model)  # fewer tensor ops per LoRA layer (zoo.serving.lora_serving)
        self.model.eval()

    def _cast_adapter(self, name: str) -> None:
        """Keep a served adapter in the compute dtype: bf16 halves what each adapter adds to memory (ten
        fp32 adapters of the built-in shape add ~200 MB), and the LoRA matmuls then need no input cast."""
        dtype = self.loaded.compute_dtype
        for param in self.adapter_parameters(name):
            if param.dtype != dtype:
                param.data = param.data.to(dtype)

    def _share_identity_dropout(self, name: str) -> None:
        """PEFT gives every adapter its own `nn.Identity` per adapted module when dropout is 0 (210 of them
        for the built-in shape, ~0.4 MB of Python objects per adapter); one stateless Identity serves all."""
        import torch

        for module in self.model.modules():
            dropout = getattr(module, "lora_dropout", None)
            if isinstance(dropout, torch.nn.ModuleDict) and type(dropout[name] if name in dropout else None) \
                    is torch.nn.Identity:
                dropout[name] = shared_identity()

    def adapter_parameters(self, name: str) -> list:
        """The LoRA tensors of one loaded adapter (PEFT names them `...lora_A.<adapter>.weight`)."""
        return [p for key, p in self.model.named_parameters() if f".{name}." in key and "lora_" in key]

    def load_all(self) -> list[str]:
        """Load every available adapter; one that still fails to load is reported and left out, so one bad
        adapter never takes the others down."""
        for name in self.available():
            try:
                self.load_adapter(name)
            except (ZooError, RuntimeError, ValueError) as e:
                warnings.warn(f"adapter {name!r} was not loaded: {printable(str(e), 200)}", stacklevel=2)
        return self.adapters

    def temporary_adapter(self, folder=None, blend=None, name: str = "temporary"):
        """A context manager: an adapter on the model only inside the `with` block (a blend scored or tried), from
        a PEFT `folder` outside the zoo or a `zoo.combine.Blend` of zoo adapters built in memory (`zoo.combine.plan`
        checks it). Yields its name; deletes it on exit, after errors too. The lock is held to add and delete it."""
        from contextlib import contextmanager
        from pathlib import Path

        if (folder is None) == (blend is None):
            raise ZooError("a temporary adapter comes from a folder or from a blend: give exactly one")
        if check_name(name, "adapter name") in self.adapters or name in self.zoo.entries():
            raise ZooError(f"an adapter named {name!r} exists already; give the temporary one another name")
        if folder is not None and (bad := adapter_problems(name, Path(folder), self.base_dims)):
            raise ZooError(f"cannot load {folder}: {bad[0]}")

        def add() -> None:
            if blend is None:
                return self._attach(name, folder)
            from zoo.combine import apply_blend, plan
            planned = plan(self.zoo, blend)[0]  # may put another parent first, as `zoo combine` does
            for parent in planned.parents:
                self.load_adapter(parent)
            apply_blend(self.model, list(planned.parents), planned, name)
            self._serve(name)  # served like any other adapter from here on

        @contextmanager
        def scope():
            try:
                with self.lock:
                    add()
                yield name
            finally:  # after a failed add too: half a blend is never left behind
                with self.lock, warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # "deleted the active adapter": every call sets its own
                    if self.adapters == [name]:
                        self.close()  # PEFT keeps no model without an adapter: give the base back instead
                    elif name in self.adapters:
                        self.model.delete_adapter(name)

        return scope()

    def release_memory(self) -> None:
        """Hand freed memory back to the OS after a burst of requests (glibc keeps it per thread otherwise)."""
        import ctypes
        import gc

        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc: nothing to trim
            pass

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Give the shared base back without LoRA layers. The base is cached per process: a runtime left open
        would leave its adapters active under the next runtime's "plain base" (or under training)."""
        with self.lock:
            if self.model is not None:
                self.model.unload()
                self.model = None

    # routing -------------------------------------------------------------------------
    @property
    def router(self):
        if self._router is None:
            from router import load_router

            self._router = load_router(self.zoo)
        return self._router

    def route(self, prompts: list[str]) -> list[dict]:
        """Route each prompt to a healthy adapter of this zoo (or `none`), with the router's probabilities."""
        from router import adapter_map

        mapping, healthy = adapter_map(self.zoo), set(self.available())
        out = []
        for r in self.router.route(prompts):
            adapter = mapping.get(r["route"]) if r["route"] != NONE else None
            out.append({**r, "adapter": adapter if adapter in healthy else NONE})  # broken adapters: the base
        return out

    # generation ----------------------------------------------------------------------
    def generate(self, prompts: list[str] | str, adapter: str | list[str] = "auto",
                 max_new_tokens: int | None = None, batch_size: int | None = None) -> list[dict]:
        """Answer prompts: each gets `{"adapter", "answer"}` (+ `"route", "probs"` when auto-routed)."""
        single = isinstance(prompts, str)
        prompts = [prompts] if single else list(prompts)
        for p in prompts:
            if not isinstance(p, str) or not p.strip():
                raise ZooError("empty prompt: give some text to answer")
        if adapter == "auto":
            routes = self.route(prompts)
            names = [r["adapter"] for r in routes]
        else:
            routes = [{} for _ in prompts]
            names = [adapter] * len(prompts) if isinstance(adapter, str) else list(adapter)
        budget = self.context_tokens
        new = max_new_tokens or max(self.default_new_tokens(n) for n in names)
        ids = [text_prompt_ids(self.tokenizer, p, budget - new) for p in prompts]
        answers = self.generate_ids(ids, names, max_new_tokens=new, batch_size=batch_size)
        out = [{**r, "adapter": n, "answer": a} for r, n, a in zip(routes, names, answers)]
        return out[0] if single else out

    @functools.cached_property
    def context_tokens(self) -> int:
        """How many tokens (prompt + answer) the base can attend to: the tokenizer's limit, capped by the
        model's position embeddings (8192 when neither says)."""
        budget = self.tokenizer.model_max_length if self.tokenizer.model_max_length < 1e6 else 8192
        return min(budget, getattr(self.loaded.model.config, "max_position_embeddings", budget))

    def default_new_tokens(self, adapter: str) -> int:
        if adapter == NONE:
            return DEFAULT_MAX_NEW_TOKENS
        from tasks import spec_for_adapter

        try:
            return spec_for_adapter(self.zoo, adapter).max_new_tokens
        except ZooError:  # a task this process does not know: the general default
            return DEFAULT_MAX_NEW_TOKENS

    @property
    def batch_size(self) -> int:
        """Prompts generated together when a caller does not say: on a CPU each decoding step costs mostly
        per-call overhead, so bigger batches pay until the fp32 matmuls fill the cores (evaluation measured in
        docs/performance.md: bf16 64 rows 1.6x faster than 16, fp32 32 rows 1.2x and 64 no better)."""
        import torch

        return 64 if self.loaded.device != "cpu" or self.loaded.compute_dtype == torch.bfloat16 else 32

    def generate_ids(self, prompt_ids: list[list[int]], adapters: str | list[str], max_new_tokens: int,
                     batch_size: int | None = None, progress: str | None = None,
                     min_new_tokens: int = 0) -> list[str]:
        """Greedy batched generation with the KV cache; prompts sorted by length so batches pad little.
        `min_new_tokens` holds off the end-of-text token that long (for timings of a fixed amount of work)."""
        batch_size = batch_size or self.batch_size
        names = [adapters] * len(prompt_ids) if isinstance(adapters, str) else list(adapters)
        for name in set(names) - {NONE}:
            self.load_adapter(name)
        order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
        out: list[str] = [""] * len(prompt_ids)
        from tqdm.auto import tqdm

        bar = tqdm(total=len(order), desc=progress, unit="ex", disable=progress is None, leave=False)
        with self.lock, bar:
            for start in range(0, len(order), batch_size):
                chunk = order[start:start + batch_size]
                texts = self._generate_chunk([prompt_ids[i] for i in chunk], [names[i] for i in chunk],
                                             max_new_tokens, min_new_tokens)
                for i, t in zip(chunk, texts):
                    out[i] = t
                bar.update(len(chunk))
        return out

    def _generate_chunk(self, ids: list[list[int]], names: list[str], max_new_tokens: int,
                        min_new_tokens: int = 0) -> list[str]:
        import torch

        pad = self.tokenizer.pad_token_id
        width = max(len(x) for x in ids)
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=self.loaded.device)
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=self.loaded.device)
        kwargs = dict(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                      min_new_tokens=min_new_tokens, do_sample=False,
                      pad_token_id=pad, eos_token_id=self.tokenizer.eos_token_id, use_cache=True)
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cache = None
            if len(ids) > 1 and self.loaded.device == "cpu":
                cache = self._prefill_batch(ids, names, max_new_tokens)
            if cache is None:
                gen = self._generate_with(names, kwargs)
                return self.tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True)
            kwargs["past_key_values"] = cache  # generate then runs only the last prompt token of each row
            answers = self._generate_dropping_finished(names, kwargs)
        return self.tokenizer.batch_decode(answers, skip_special_tokens=True)

    def _generate_dropping_finished(self, names: list[str], kwargs: dict) -> list[list[int]]:
        """`generate` in segments of `SEGMENT` tokens; rows whose answer has ended leave the batch and its cache
        in between, so 16 rows do not keep decoding for the longest answer of the batch. Each segment continues
        from the full token sequences (logits processors see what they would in one call)."""
        import torch

        eos = kwargs["eos_token_id"]
        stops = set(eos if isinstance(eos, (list, tuple)) else [eos])
        ids, mask, cache = kwargs["input_ids"], kwargs["attention_mask"], kwargs["past_key_values"]
        rows, answers = list(range(ids.shape[0])), [[] for _ in range(ids.shape[0])]
        done, budget = 0, kwargs["max_new_tokens"]
        while rows and done < budget:
            step = min(SEGMENT, budget - done)
            gen = self._generate_with(names, {**kwargs, "input_ids": ids, "attention_mask": mask,
                                              "max_new_tokens": step,
                                              "min_new_tokens": max(0, kwargs["min_new_tokens"] - done)})
            new = gen[:, ids.shape[1]:].tolist()
            keep = []
            for j, tokens in enumerate(new):
                end = next((k for k, t in enumerate(tokens) if t in stops), None)
                answers[rows[j]] += tokens if end is None else tokens[:end + 1]  # as generate leaves it
                if end is None and len(tokens) == step:
                    keep.append(j)
            done += step
            if len(keep) < len(rows) and keep:
                cache.batch_select_indices(torch.tensor(keep, device=gen.device))
            mask = torch.cat([mask, mask.new_ones(len(rows), gen.shape[1] - ids.shape[1])], dim=1)[keep]
            ids, rows, names = gen[keep], [rows[j] for j in keep], [names[j] for j in keep]
        return answers

    def _prefill_batch(self, ids: list[list[int]], names: list[str], max_new_tokens: int):
        """The KV cache of every prompt but its last token as one left-padded batch cache, computed without pad
        tokens: per adapter, the prompts' shared prefix once and their remainders packed (`zoo.serving.prefill`).

        For CPUs, where a padded prefill spends compute and attention on pad tokens: 16 dialogues of 124-582
        tokens took 12.4 s as one padded batch and 5.6-5.9 s one by one on 2 cores. (A GPU wants the whole batch
        at once.)"""
        from zoo.serving.kvcache import left_padded_cache
        from zoo.serving.prefill import prefill_rows

        if min(len(x) for x in ids) < 2 or not self._plain_dynamic_cache:
            return None
        rows: list = [None] * len(ids)
        for name in dict.fromkeys(names):
            group = [i for i, n in enumerate(names) if n == name]
            got = self.with_adapters([name], lambda model, extra: prefill_rows(
                unwrap_peft(model).get_decoder(), [ids[i][:-1] for i in group], self.loaded.device))
            for i, row in zip(group, got):
                rows[i] = row
        return left_padded_cache(rows, room=max_new_tokens + 1)

    @functools.cached_property
    def _plain_dynamic_cache(self) -> bool:
        """Whether the model's cache is the plain per-layer kind that `left_padded_cache` lays out (no sliding
        windows, no linear attention)."""
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        layers = DynamicCache(config=self.loaded.model.config).layers
        return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)

    def _generate_with(self, names: list[str], kwargs: dict):
        if any(n in self.logit_biases for n in names):  # a calibrated decision (zoo.label_bias), row by row
            kwargs = {**kwargs, "logits_processor": [AdapterLogitBias(names, self.logit_biases)]}
        return self.with_adapters(names, lambda model, extra: model.generate(**kwargs, **extra))

    def with_adapters(self, names: list[str], call):
        """`call(model, extra_kwargs)` with the adapters of `names` active: the plain base, one adapter, or one
        adapter per row (PEFT's `adapter_names`)."""
        model = self.model
        if model is None:  # no adapter loaded at all: plain base
            return call(self.loaded.model, {})
        uniq = set(names)
        if uniq == {NONE}:
            with model.disable_adapter():
                return call(model, {})
        if len(uniq) == 1:
            model.set_adapter(names[0])
            return call(model, {})
        return call(model, {"adapter_names": [BASE_ADAPTER if n == NONE else n for n in names]})

    def stream(self, prompt: str, adapter: str = NONE, max_new_tokens: int | None = None):
        """Yield the answer to one prompt as it grows (same greedy decoding as `generate`), for live display.

        `generate` runs in a thread under `self.lock` and feeds a `TextIteratorStreamer`; an error there ends the
        stream and is raised here. Do not hold `self.lock` while iterating: the thread needs it."""
        import torch
        from transformers import TextIteratorStreamer

        if not isinstance(prompt, str) or not prompt.strip():
            raise ZooError("empty prompt: give some text to answer")
        if adapter != NONE:
            self.load_adapter(adapter)
        budget = self.context_tokens
        new = max_new_tokens or self.default_new_tokens(adapter)
        ids = torch.tensor([text_prompt_ids(self.tokenizer, prompt, budget - new)], device=self.loaded.device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False,
                      pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id,
                      use_cache=True, streamer=streamer)
        failed: list[BaseException] = []

        def work():
            try:
                with self.lock, torch.inference_mode(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self._generate_with([adapter], kwargs)
            except BaseException as e:  # handed to the reader below; end() unblocks it
                failed.append(e)
                streamer.end()

        threading.Thread(target=work, daemon=True, name="zoo-stream").start()
        text = ""
        for piece in streamer:
            text += piece
            yield text
        if failed:
            raise failed[0]
