"""Training and evaluation prompts for the router, built from the task registry and the data folder.

Training: rows sampled from a task's train split, rendered with each of the task's templates and in the
training generator's framings (`router.phrasings`), plus the out-of-scope prompts of `router.oos` and
task-looking inputs put to other jobs for `none`. Calibration: disjoint train rows in the generator's
held-back wording. Evaluation (`eval_sets`): validation rows and each task's out-of-domain dataset
(`spec.ood`), in the templates, the training generator and the separately written `router.heldout`.
"""

from __future__ import annotations

import string

from router import heldout, phrasings
from router.model import NONE
from router.oos import oos_prompts
from zoo.data import data_dir_from_env, load_rows

AUGMENT = ("bare", "swap", "flip", "vary")
OTHER_JOBS_PER_INPUT = 2.0  # task-looking inputs put to other jobs (route `none`), per fit row


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


def split_rows(spec, data_dir=None, rows_per_task: int = 300, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(fit rows, calibration rows) from the task's train split, disjoint: the calibration split is a
    third the size of the fit split."""
    import random

    rows = load_rows(spec, spec.train_split, data_dir=data_dir, seed=seed)
    picked = random.Random(seed).sample(rows, min(len(rows), rows_per_task + max(1, rows_per_task // 3)))
    return picked[:rows_per_task], picked[rows_per_task:]


def training_set(specs: list, data_dir=None, rows_per_task: int = 300, seed: int = 0,
                 augment: tuple[str, ...] = AUGMENT, rows: dict | None = None) -> tuple[list[str], list[str]]:
    """(prompts, routes): every task's fit rows in all its templates plus `augment` (`vary`: the training
    generator of `router.phrasings`), then the out-of-scope training prompts as `none`."""
    rows = rows or {s.name: split_rows(s, data_dir, rows_per_task, seed)[0] for s in specs}
    passages = {s.name: [str(r[s.truncate_column]) for r in rows[s.name]] for s in specs if s.truncate_column}
    prompts: list[str] = []
    labels: list[str] = []
    for spec in specs:
        others = [x for name, ps in passages.items() if name != spec.name for x in ps]
        p = phrasings.rename_some(augmented_prompts(spec, rows[spec.name], others, augment, seed), seed)
        prompts += p
        labels += [spec.name] * len(p)
    oos = [p for i, p in enumerate(oos_prompts("train")) if i % 5 != 4]
    if "vary" in augment:
        inputs = _inputs(specs, rows)
        oos += phrasings.other_job_prompts(inputs, int(OTHER_JOBS_PER_INPUT * len(inputs)), seed)
    return prompts + oos, labels + [NONE] * len(oos)


def calibration_set(specs: list, rows: dict, seed: int = 0) -> tuple[list[str], list[str]]:
    """Prompts to fit the temperature and choose the threshold on: the calibration rows in the training
    generator's held-back wording (`part="calibrate"`), every 5th out-of-scope training prompt (left out of
    the fit) and other-job prompts. Never the evaluation sets."""
    prompts: list[str] = []
    labels: list[str] = []
    for spec in specs:
        p = phrasings.varied_prompts(spec, rows[spec.name], seed, per_row=2, part="calibrate")
        prompts += p
        labels += [spec.name] * len(p)
    oos = [p for i, p in enumerate(oos_prompts("train")) if i % 5 == 4]
    oos += phrasings.other_job_prompts(_inputs(specs, rows), len(prompts) // 3, seed, part="calibrate")
    return prompts + oos, labels + [NONE] * len(oos)


def _inputs(specs: list, rows: dict) -> list[str]:
    """Each task's main input (a review, a passage, a chat): texts for the other-job prompts."""
    return [str(r[s.truncate_column or s.input_columns[0]]) for s in specs for r in rows[s.name]]


def augmented_prompts(spec, rows: list[dict], other_passages: list[str], augment: tuple[str, ...],
                      seed: int) -> list[str]:
    out = task_prompts(spec, rows)
    if "bare" in augment:
        out += bare_prompts(spec, rows)
    if "flip" in augment:
        out += flipped_prompts(spec, rows)
    if "vary" in augment:
        out += phrasings.varied_prompts(spec, rows, seed)
    if "swap" in augment:
        templates = list(spec.templates) + (flipped_templates(spec) if "flip" in augment else [])
        out += swapped_prompts(spec, rows, other_passages, templates, seed)
    return out


def phrase(templates: tuple[str, ...], rows: list[dict], columns: tuple[str, ...]) -> list[str]:
    """Row i in phrasing i mod k, so every phrasing is used about equally."""
    return [templates[i % len(templates)].format(**{c: row[c] for c in columns}) for i, row in enumerate(rows)]


def ood_rows(spec, data_dir=None, limit: int = 100, seed: int = 0) -> list[dict] | None:
    """The task's out-of-domain rows (input columns only) through `zoo.data.load_ood_rows`, the loader evaluation
    uses; None when the task names none or its data is not in the local data folder (no Hub look-up here)."""
    from zoo.data import DataMissing, load_ood_rows

    if not spec.ood or data_dir_from_env(data_dir) is None:
        return None
    try:
        rows = load_ood_rows(spec, data_dir, limit=limit, seed=seed)
    except DataMissing:
        return None
    return [{c: str(row[c]) for c in spec.input_columns} for row in rows]


def eval_sets(specs: list, data_dir=None, n: int = 100, seed: int = 1) -> dict[str, tuple[list[str], list[str]]]:
    """Named sets of (prompts, gold routes) on rows the router never saw: validation rows in the templates,
    in the training generator's wording (`same-generator`) and in the separate one's (`different-generator`);
    out-of-domain rows; out-of-scope prompts from both generators."""
    sets: dict[str, tuple[list[str], list[str]]] = {}
    texts: list[str] = []
    for spec in specs:
        rows = load_rows(spec, spec.eval_split, data_dir=data_dir, limit=n, seed=seed)
        texts += [str(r[spec.truncate_column or spec.input_columns[0]]) for r in rows]
        named = {"validation/templates": phrase(spec.templates, rows, spec.input_columns),
                 "validation/same-generator": phrasings.varied_prompts(spec, rows, seed, per_row=1),
                 "validation/different-generator": heldout.task_prompts(spec, rows, seed)}
        ood = ood_rows(spec, data_dir, limit=n, seed=seed)
        if ood:
            named["ood/templates"] = phrase(spec.templates, ood, spec.input_columns)
            named["ood/different-generator"] = heldout.task_prompts(spec, ood, seed)
        sets.update({f"{spec.name}/{k}": (v, [spec.name] * len(v)) for k, v in named.items() if v})
    oos = oos_prompts("eval")
    sets["none/out-of-scope"] = (oos, [NONE] * len(oos))
    other = heldout.none_prompts(texts[::2], seed)
    sets["none/different-generator"] = (other, [NONE] * len(other))
    return sets
