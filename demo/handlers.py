"""What the demo's buttons do, as plain functions of a `Runtime`: tests and scripts call them without a browser.

Answer handlers are generators that yield the whole row of outputs again each time a token arrives; Gradio
streams each yield to the page, and a plain caller can just keep the last one. Nothing here imports gradio.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import OrderedDict
from contextlib import ExitStack
from pathlib import Path

from zoo.errors import ZooError
from zoo.reports import fmt
from zoo.serving.runtime import DEFAULT_MAX_NEW_TOKENS, NONE

SAME_MODEL = "same model: no adapter was chosen, so the routed answer is the base's"
WAITING = "waiting for the adapter's answer…"
ZOO_COLUMNS = ["adapter", "task", "kind", "base model", "rank", "size (MB)", "training time (s)", "metric",
               "base score", "adapter score", "gain", "status"]


# A visitor's prompt is checked by its length in characters before the tokenizer sees it: tokenizing 1 MB holds
# the only model slot for seconds. 16k characters is ~4k tokens, the API server's own prompt limit.
MAX_PROMPT_CHARS = 16_000


# generation -------------------------------------------------------------------------------------------------
def check_prompt(prompt, max_chars: int = MAX_PROMPT_CHARS) -> str:
    """The visitor's text, if it is text, not blank, and at most `max_chars` long (else one clear message)."""
    if not isinstance(prompt, str):
        raise ZooError("the prompt must be text")
    if len(prompt) > max_chars:
        raise ZooError(f"the prompt is {len(prompt):,} characters; this demo takes at most {max_chars:,}: "
                       "shorten it")
    if not prompt.strip():
        raise ZooError("the prompt is empty: type a request or click one of the examples")
    return prompt


def new_tokens(runtime, adapters: list[str], requested: float | None = 0) -> int:
    """The answer length: what the user asked for, else the longest of the adapters' task defaults
    (the base gets the same budget as the adapter it is compared with)."""
    if requested:
        return int(requested)
    return max(task_tokens(runtime.zoo, n) for n in adapters)


def task_tokens(zoo, name: str) -> int:
    """The answer length of an adapter's task (`task.json`); a combination answers for each of its parents'
    tasks too, so it gets the longest of theirs."""
    from tasks import spec_for_adapter

    if name == NONE:
        return DEFAULT_MAX_NEW_TOKENS
    entry, known = zoo.get(name), zoo.entries()
    found = []
    for adapter in [name, *(p for p in (entry.blend.parents if entry.blend else ()) if p in known)]:
        try:
            found.append(spec_for_adapter(zoo, adapter).max_new_tokens)
        except ZooError:  # a damaged task.json: the general default
            continue
    return max(found, default=DEFAULT_MAX_NEW_TOKENS)


def timing(runtime, text: str, seconds: float) -> str:
    if not text.strip():
        return f"{seconds:.2f} s · empty answer: the model ended its turn at once"
    tokens = len(runtime.tokenizer(text, add_special_tokens=False)["input_ids"])
    rate = f" · {tokens / seconds:.1f} tokens/s" if tokens and seconds > 0 else ""
    return f"{seconds:.2f} s · {tokens} tokens{rate}"


def timed_stream(runtime, prompt: str, adapter: str, max_new: int):
    """Yield `(answer so far, status)`; the last status says how long the whole answer took."""
    t0 = time.perf_counter()
    text = ""
    yield text, "generating…"
    for text in runtime.stream(prompt, adapter, max_new):
        yield text, f"generating… {time.perf_counter() - t0:.1f} s"
    yield text, timing(runtime, text, time.perf_counter() - t0)


def compare(runtime, prompt: str, adapter: str, max_new: int, head: tuple = ()):
    """Stream `adapter`'s answer, then the plain base's: yields `head + (answer, time, base answer, base time)`."""
    if adapter == NONE:
        for text, info in timed_stream(runtime, prompt, NONE, max_new):
            yield (*head, text, info, text, SAME_MODEL)
        return
    answer = ("", "")
    for answer in timed_stream(runtime, prompt, adapter, max_new):
        yield (*head, *answer, "", WAITING)
    for base in timed_stream(runtime, prompt, NONE, max_new):
        yield (*head, *answer, *base)


# auto-route -------------------------------------------------------------------------------------------------
def router_problem(runtime) -> str | None:
    """Why the router cannot be used (None when it can): the app then asks for an adapter by hand."""
    try:
        runtime.router
    except ZooError as e:
        return str(e)
    return None


def pick_route(runtime, prompt: str, fallback: str | None = None) -> dict:
    """The router's `{"route", "probs", "adapter"}`; with no router, the adapter picked by hand."""
    try:
        return runtime.route([prompt])[0]
    except ZooError as e:
        if not fallback:
            raise ZooError(f"{e} (or pick an adapter by hand)") from None
    return {"route": "manual", "probs": {}, "adapter": fallback}


def route_text(route: dict) -> str:
    """One line: the route, its probability and what answers (`sentiment (p=0.97) → adapter 'sentiment'`)."""
    name, adapter = route["route"], route["adapter"]
    if name == "manual":
        return f"no router → adapter {adapter!r} (picked by hand)" if adapter != NONE else "no router → plain base"
    p = route.get("probs", {}).get(name)
    head = f"{name} (p={p:.2f})" if p is not None else name
    if name == NONE:
        return f"{head} → plain base model: no adapter fits this request"
    if adapter == NONE:
        return f"{head} → plain base model: the zoo has no adapter for this task"
    return f"{head} → adapter {adapter!r}"


def auto_answer(runtime, prompt: str, fallback: str | None = None, max_new_tokens: float = 0,
                max_chars: int = MAX_PROMPT_CHARS):
    """Route, then stream the routed answer next to the base's.
    Yields `(route line, {route: probability}, answer, time, base answer, base time)`."""
    prompt = check_prompt(prompt, max_chars)
    route = pick_route(runtime, prompt, fallback)
    adapter = route["adapter"]
    probs = {k: float(v) for k, v in route.get("probs", {}).items()}
    yield from compare(runtime, prompt, adapter, new_tokens(runtime, [adapter], max_new_tokens),
                       head=(route_text(route), probs))


def manual_answer(runtime, adapter: str, prompt: str, max_new_tokens: float = 0, max_chars: int = MAX_PROMPT_CHARS):
    """One adapter (or combination) of the zoo, picked by hand, next to the base.
    Yields `(answer, time, base answer, base time)`."""
    prompt = check_prompt(prompt, max_chars)
    if not adapter:
        raise ZooError("pick an adapter first")
    if adapter != NONE:
        runtime.zoo.get(adapter)  # a clear error for a name the zoo does not know
    yield from compare(runtime, prompt, adapter, new_tokens(runtime, [adapter], max_new_tokens))


# blend ------------------------------------------------------------------------------------------------------
def blendable(runtime) -> list[str]:
    """Trained adapters of the zoo (combinations are blended from their parents, not blended again)."""
    return [n for n in runtime.available() if runtime.zoo.get(n).kind == "trained"]


def make_blend(weights: dict[str, float], method: str = "cat", density: float | None = None):
    """A `zoo.combine.Blend` of every slider's adapter (zero weights included: they add nothing, and a lone
    adapter at some weight is a blend too); weights rounded so nearby slider positions share a cache entry."""
    from zoo.combine import DENSITY_METHODS, Blend

    parts = {n: round(float(w), 2) for n, w in weights.items()}
    if not any(parts.values()):
        raise ZooError("every weight is 0: give at least one adapter a weight")
    density = round(float(density), 2) if density is not None and method in DENSITY_METHODS else None
    return Blend(tuple(parts), tuple(parts.values()), method, density)


_BLEND_IDS = itertools.count()  # PEFT names unique per process: two apps may share one runtime


class Blender:
    """Blends built in memory by `Runtime.temporary_adapter` (the same checks and PEFT call as `zoo combine`),
    never saved. Built blends are kept by their `Blend` for reuse; beyond `keep`, the oldest is deleted so a
    long session does not grow the model without bound."""

    def __init__(self, runtime, keep: int = 4):
        self.runtime = runtime
        self.keep = keep
        self._built: OrderedDict = OrderedDict()  # Blend -> (PEFT name, the ExitStack that deletes it)
        self._lock = threading.Lock()

    def build(self, blend) -> tuple[str, bool]:
        """The PEFT adapter name of `blend`, built now unless cached; returns `(name, was_cached)`."""
        with self._lock:
            if blend in self._built:
                self._built.move_to_end(blend)
                return self._built[blend][0], True
            stack = ExitStack()
            name = stack.enter_context(self.runtime.temporary_adapter(blend=blend, name=f"blend_{next(_BLEND_IDS)}"))
            self._built[blend] = (name, stack)
            while len(self._built) > self.keep:
                self._built.popitem(last=False)[1][1].close()
        return name, False

    def close(self) -> None:
        """Delete every blend this blender built."""
        with self._lock:
            while self._built:
                self._built.popitem()[1][1].close()


def recipe(blend, seconds: float | None) -> str:
    terms = " + ".join(f"{w:g} × `{n}`" for n, w in zip(blend.parents, blend.weights) if w)
    how = f"`{blend.method}`" + (f", density {blend.effective_density:g}" if blend.effective_density else "")
    when = "reused from the cache" if seconds is None else f"built in {seconds:.2f} s"
    return f"**Blend:** {terms} — method {how} ({when}, in memory only)"


def blend_answer(runtime, blender: Blender, weights: dict[str, float], method: str, density: float | None,
                 prompt: str, max_new_tokens: float = 0, max_chars: int = MAX_PROMPT_CHARS):
    """Build (or reuse) the blend and stream its answer. Yields `(recipe, answer, time)`."""
    prompt = check_prompt(prompt, max_chars)
    blend = make_blend(weights, method, density)
    t0 = time.perf_counter()
    name, cached = blender.build(blend)
    head = recipe(blend, None if cached else time.perf_counter() - t0)
    budget = new_tokens(runtime, [n for n, w in zip(blend.parents, blend.weights) if w], max_new_tokens)
    for text, info in timed_stream(runtime, prompt, name, budget):
        yield head, text, info


# zoo --------------------------------------------------------------------------------------------------------
def size_mb(path: Path) -> float | None:
    if not path.is_dir():
        return None
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6, 2)


def _rank(zoo, name: str, entry) -> int | None:
    if entry.lora.get("r"):
        return entry.lora["r"]
    try:
        import json

        return json.loads((zoo.adapter_dir(name) / "adapter_config.json").read_text()).get("r")
    except (OSError, ValueError):
        return None


def _score(metric: str, value) -> float | None:
    """A number for the table, rounded as `zoo.metrics.METRICS` shows it."""
    return None if value is None else float(fmt(metric, float(value)))


def zoo_row(zoo, name: str, entry, problem: str | None) -> list:
    ev = entry.metrics.get("eval") or {}
    metric = ev.get("metric")
    b, a = (_score(metric, ev.get(k, {}).get(metric)) if metric else None for k in ("base", "adapter"))
    gain = _score(metric, a - b) if a is not None and b is not None else None
    return [name, entry.task, entry.kind,
            short_base(entry.base.id or "-") + (" (NF4)" if entry.base.quantized else ""), _rank(zoo, name, entry),
            size_mb(zoo.adapter_dir(name)), (entry.throughput or {}).get("seconds"),
            metric or "not evaluated", b, a, gain, f"broken: {problem}" if problem else "ok"]


def zoo_rows(zoo) -> list[list]:
    """One row per adapter of the manifest (columns: `ZOO_COLUMNS`), broken ones included and marked; an entry
    too damaged to read shows only its name and what is wrong."""
    problems = {p.name: p.what for p in zoo.problems()}
    entries = zoo.entries()
    rows = {n: zoo_row(zoo, n, e, problems.get(n)) for n, e in entries.items()}
    unreadable = [None, None, None, "-", None, None, None]  # rank ... gain: nothing is known
    rows.update({n: [n, "-", "-", "-", *unreadable, f"broken: {what}"] for n, what in problems.items() if n not in rows})
    return [rows[n] for n in sorted(rows)]


def zoo_plots(zoo) -> list[tuple[str, str]]:
    """`(png path, caption)` for each adapter's report plot, then the router's."""
    rdir = zoo.reports_dir
    plots = [(rdir / f"{n}.png", f"{n}: adapter vs base") for n in sorted(zoo.entries())]
    plots += [(p, p.stem.replace("_", " ")) for p in sorted(rdir.glob("router*.png"))]
    return [(str(p), caption) for p, caption in plots if p.is_file()]


def short_base(base_id: str) -> str:
    """A base named by a local folder shows as the folder's name; embedded and Hub names stay as they are."""
    return Path(base_id).name if os.path.isabs(base_id) else base_id


def zoo_summary(runtime, router_error: str | None) -> str:
    ref = runtime.loaded.ref
    n = len(runtime.zoo.entries())
    quant = "NF4 4-bit" if runtime.loaded.quantized else "full precision"
    router = ("**router:** not available" if router_error else
              f"**router:** routes to {', '.join(str(c) for c in runtime.router.classes_)}")
    return (f"**Zoo:** `{runtime.zoo.root.resolve().name}` · {n} adapter{'s' * (n != 1)} · "
            f"**base:** `{short_base(ref.id)}` ({quant}, {runtime.loaded.device}) · "
            f"{router}")
