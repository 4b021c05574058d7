"""Training and evaluation prompts for the router, built from the task registry and the data folder.

Training: every row sampled from a task's train split, rendered with each of the task's templates, plus the
out-of-scope prompts of `router.oos` for `none`. Evaluation: validation rows and each task's out-of-domain
dataset (`spec.ood`), phrased the way people ask (`HELD_OUT`, never in any template), and the held-out
out-of-scope prompts.
"""

from __future__ import annotations

import string

from router.model import NONE
from router.oos import oos_prompts
from zoo.data import data_dir_from_env, load_rows, read_jsonl
from zoo.errors import ZooError

# Phrasings for the report only; none of them is (or may become) one of the tasks' templates (a test checks).
# "{context} {question}" is the raw input with its question: training sees the bare inputs joined by a blank
# line (`bare_prompts`), so that one phrasing differs from training only by the separator.
HELD_OUT: dict[str, tuple[str, ...]] = {
    "sentiment": (
        "what did you think of this: {sentence}",
        "{sentence}\n\nWas that a good or bad review?",
        "hey is this review happy or unhappy? {sentence}",
        "Tell me if the following comment is favorable: {sentence}",
        "{sentence} -- thumbs up or thumbs down?",
        'How does the author feel here? "{sentence}"',
        "Would you say this customer was satisfied? {sentence}",
    ),
    "qa": (
        "{context} {question}",
        "Using this text: {context}\nI want to know: {question}",
        "hey quick one - {question} here's the article: {context}",
        "Here is some background.\n{context}\nCan you tell me: {question}",
        "Text: {context}\nMy question is {question}",
        "Look at this paragraph and tell me {question}\n\n{context}",
    ),
    "summarization": (
        "{dialogue}\n\ntl;dr?",
        "{dialogue}\n\nCan you sum that up?",
        "What's the gist of this chat?\n{dialogue}",
        "Condense the following exchange into a sentence:\n{dialogue}",
        "{dialogue}\nIn a nutshell, what were they talking about?",
        "Recap this conversation for me: {dialogue}",
        "Give me the short version:\n{dialogue}",
    ),
}


def task_prompts(spec, rows: list[dict]) -> list[str]:
    """Each row with every template of the task."""
    return [spec.prompt(row, i) for row in rows for i in range(len(spec.templates))]


def bare_prompts(spec, rows: list[dict]) -> list[str]:
    """The inputs alone (a review, a passage and its question, a dialogue): routing by content, not wording."""
    return ["\n\n".join(str(row[c]) for c in spec.input_columns) for row in rows]


def swapped_prompts(spec, rows: list[dict], passages: list[str], templates: list[str], seed: int = 0) -> list[str]:
    """Templates with another task's passage in the task's passage slot (`truncate_column`): the wording of
    the request decides the route, not the kind of text (a question about a dialogue is still QA)."""
    import random

    if not spec.truncate_column or not passages:
        return []
    rng = random.Random(seed)
    return [templates[i % len(templates)].format(**{**{c: row[c] for c in spec.input_columns},
                                                    spec.truncate_column: rng.choice(passages)})
            for i, row in enumerate(rows)]


def flipped_templates(spec) -> list[str]:
    """Single-slot templates with the request moved to the other side of the input ("X\n\n{dialogue}" ->
    "{dialogue}\n\nX"): people put the request before or after the text, whatever the template does."""
    out = []
    for t in spec.templates:
        slots = [f for _, f, _, _ in string.Formatter().parse(t) if f]
        if len(slots) != 1:
            continue
        before, _, after = t.partition("{" + slots[0] + "}")
        if before.strip() and not after.strip():
            out.append("{%s}\n\n%s" % (slots[0], before.strip()))
        elif after.strip() and not before.strip():
            out.append("%s\n\n{%s}" % (after.strip(), slots[0]))
    return out


def flipped_prompts(spec, rows: list[dict]) -> list[str]:
    flips = flipped_templates(spec)
    return phrase(tuple(flips), rows, spec.input_columns) if flips else []


def training_set(specs: list, data_dir=None, rows_per_task: int = 300, seed: int = 0,
                 augment: tuple[str, ...] = ("bare", "swap", "flip")) -> tuple[list[str], list[str]]:
    """(prompts, routes): every task's sampled rows in all its templates plus `augment`, then the
    out-of-scope training prompts as `none`. Each augmentation was kept because the dev set needed it
    (numbers in `router.model`)."""
    rows = {s.name: load_rows(s, s.train_split, data_dir=data_dir, limit=rows_per_task, seed=seed) for s in specs}
    passages = {s.name: [str(r[s.truncate_column]) for r in rows[s.name]] for s in specs if s.truncate_column}
    prompts: list[str] = []
    labels: list[str] = []
    for spec in specs:
        others = [x for name, ps in passages.items() if name != spec.name for x in ps]
        p = augmented_prompts(spec, rows[spec.name], others, augment, seed)
        prompts += p
        labels += [spec.name] * len(p)
    oos = oos_prompts("train")
    return prompts + oos, labels + [NONE] * len(oos)


def augmented_prompts(spec, rows: list[dict], other_passages: list[str], augment: tuple[str, ...],
                      seed: int) -> list[str]:
    out = task_prompts(spec, rows)
    if "bare" in augment:
        out += bare_prompts(spec, rows)
    if "flip" in augment:
        out += flipped_prompts(spec, rows)
    if "swap" in augment:
        templates = list(spec.templates) + (flipped_templates(spec) if "flip" in augment else [])
        out += swapped_prompts(spec, rows, other_passages, templates, seed)
    return out


def phrase(templates: tuple[str, ...], rows: list[dict], columns: tuple[str, ...]) -> list[str]:
    """Row i in phrasing i mod k, so every phrasing is used about equally."""
    return [templates[i % len(templates)].format(**{c: row[c] for c in columns}) for i, row in enumerate(rows)]


def ood_rows(spec, data_dir=None, limit: int = 100, seed: int = 0) -> list[dict] | None:
    """Rows of the task's out-of-domain dataset with the task's column names (None when it has none here)."""
    import random

    root = data_dir_from_env(data_dir)
    if not spec.ood or root is None:
        return None
    path = root / spec.ood["dataset"] / f"{spec.ood.get('split', 'test')}.jsonl"
    if not path.is_file():
        return None
    rows = read_jsonl(path)
    rows = random.Random(seed).sample(rows, min(limit, len(rows)))
    mapping = {c: spec.ood.get("columns", {}).get(c, c) for c in spec.input_columns}
    missing = [src for src in mapping.values() if src not in rows[0]]
    if missing:
        raise ZooError(f"task {spec.name}: out-of-domain data {path} lacks column(s) {missing}; fix the task's ood.columns")
    return [{c: _text(row[src]) for c, src in mapping.items()} for row in rows]


def _text(value) -> str:
    """SciTLDR keeps an abstract as a list of sentences: join them."""
    return " ".join(s.strip() for s in value) if isinstance(value, list) else str(value)


def eval_sets(specs: list, data_dir=None, n: int = 100, seed: int = 1) -> dict[str, tuple[list[str], list[str]]]:
    """Named sets of (prompts, gold routes): validation x templates / held-out phrasings, ood, out-of-scope."""
    sets: dict[str, tuple[list[str], list[str]]] = {}
    for spec in specs:
        rows = load_rows(spec, spec.eval_split, data_dir=data_dir, limit=n, seed=seed)
        phrasings = HELD_OUT.get(spec.name)
        sets[f"{spec.name}/validation/templates"] = (phrase(spec.templates, rows, spec.input_columns),
                                                     [spec.name] * len(rows))
        if phrasings:
            sets[f"{spec.name}/validation/held-out"] = (phrase(phrasings, rows, spec.input_columns),
                                                        [spec.name] * len(rows))
        ood = ood_rows(spec, data_dir, limit=n, seed=seed)
        if ood:
            sets[f"{spec.name}/ood/templates"] = (phrase(spec.templates, ood, spec.input_columns),
                                                  [spec.name] * len(ood))
            if phrasings:
                sets[f"{spec.name}/ood/held-out"] = (phrase(phrasings, ood, spec.input_columns),
                                                     [spec.name] * len(ood))
    oos = oos_prompts("eval")
    sets["none/out-of-scope"] = (oos, [NONE] * len(oos))
    return sets
