"""Model cards: README.md for one adapter repo or a whole zoo, built with huggingface_hub's `ModelCard` and
checked offline before anything is written. Task facts come from the adapter's resolved spec
(`tasks.spec_for_adapter`), metric facts (Hub task type, display) from `zoo.metrics.METRICS`."""

from __future__ import annotations

import re
from pathlib import Path

from tasks import TaskSpec
from zoo.errors import ZooError
from zoo.hub.common import ENTRY_FILE, PLOT_FILE, hub_base_id, public_base_id
from zoo.manifest import Entry
from zoo.metrics import METRICS

# Hub license ids (https://huggingface.co/docs/hub/repositories-licenses) a dataset license is likely to name.
HF_LICENSES = frozenset((
    "apache-2.0 mit afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear cc cc0-1.0 "
    "cc-by-2.0 cc-by-2.5 cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 "
    "cc-by-nd-4.0 cc-by-nc-nd-3.0 cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 "
    "cdla-sharing-1.0 cdla-permissive-1.0 cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 eupl-1.1 eupl-1.2 "
    "agpl-3.0 gfdl gpl gpl-2.0 gpl-3.0 lgpl lgpl-2.1 lgpl-3.0 isc mpl-2.0 odc-by odbl openrail openrail++ pddl "
    "ofl-1.1 unlicense zlib llama2 llama3 gemma unknown other").split())


def hf_license(text: str | None) -> dict:
    """The task's (dataset's) license as a Hub id: `cc-by-sa-4.0` as is, `unknown (SST, ...)` -> `unknown`,
    anything else -> `other` with its name kept in `license_name`."""
    text = (text or "unknown").strip().lower()
    first = re.split(r"[\s(,;]+", text)[0]
    for candidate in (text, first):
        if candidate in HF_LICENSES:
            return {"license": candidate}
    return {"license": "other", "license_name": re.sub(r"[^a-z0-9.]+", "-", text).strip("-")[:64]}


def hub_dataset(spec: TaskSpec | None) -> str | None:
    """The task's dataset when it is a Hub id (a local folder is not published as one)."""
    ds = spec.dataset if spec else None
    return ds if ds and not ds.startswith((".", "/", "~")) and not Path(ds).exists() else None


def eval_metrics(entry: Entry) -> dict | None:
    """`metrics.eval` as `zoo eval` writes it ({task, n, base: {...}, adapter: {...}, intervals, ood}), scores
    numbers only (in the out-of-domain block too), or None. Intervals are checked where they are shown."""
    ev = _scores_only(entry.metrics.get("eval"))
    if ev is None:
        return None
    ood = ev.get("ood")
    if isinstance(ood, dict) and ood.get("skipped"):  # its reason names local paths: not for a published card
        return {**ev, "ood": {"dataset": str(ood.get("dataset")), "skipped": "its data was not found at evaluation"}}
    return {**ev, "ood": _scores_only(ood)}


def _scores_only(block) -> dict | None:
    if not isinstance(block, dict) or not isinstance(block.get("adapter"), dict):
        return None
    adapter = _numbers(block["adapter"])
    base = _numbers(block["base"]) if isinstance(block.get("base"), dict) else {}
    return {**block, "adapter": adapter, "base": base} if adapter else None


def _numbers(scores: dict) -> dict:
    """Only numeric scores reach a card (a pulled or hand-edited manifest may hold anything)."""
    return {k: v for k, v in scores.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def eval_results(entry: Entry, spec: TaskSpec | None) -> list:
    """The adapter's scores as `EvalResult`s, which become the card's `model-index`."""
    from huggingface_hub import EvalResult

    ev = eval_metrics(entry)
    if ev is None or spec is None:
        return []
    dataset = hub_dataset(spec) or spec.name
    return [EvalResult(task_type=METRICS[spec.metric].hub_task, task_name=spec.name, dataset_type=dataset,
                       dataset_name=dataset, dataset_config=spec.dataset_config,
                       dataset_split=ev.get("split") or spec.eval_split, metric_type=key, metric_name=key,
                       metric_value=float(value))
            for key, value in ev["adapter"].items()]


def card_data(entry: Entry, spec: TaskSpec | None, repo_id: str):
    from huggingface_hub import ModelCardData

    tags = ["lora", *(["qlora"] if entry.base.quantized else []), "adapter-zoo", "peft", entry.task]
    results = eval_results(entry, spec)
    return ModelCardData(
        base_model=hub_base_id(entry.base.id), library_name="peft", tags=tags,
        datasets=[hub_dataset(spec)] if hub_dataset(spec) else None, pipeline_tag="text-generation",
        model_name=repo_id.split("/")[1] if results else None, eval_results=results or None,
        **hf_license(spec.license if spec else None))


def build_card(entry: Entry, spec: TaskSpec | None, repo_id: str, has_plot: bool = False,
               subfolder: str | None = None):
    """README.md for one adapter repo: validated metadata + what it does, how to load it, how it was trained,
    how it scores. `spec` is None for a task this machine does not know (a card is still written)."""
    data = card_data(entry, spec, repo_id)
    body = [*_intro(entry, spec, data.base_model), *_usage(entry, spec, repo_id, data.base_model, subfolder),
            *_training(entry), *_evaluation(entry, has_plot)]
    return _card(data, body)


def _card(data, body: list[str]):
    """Metadata + Markdown body as a `ModelCard`, checked before it is written anywhere."""
    from huggingface_hub import ModelCard

    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n")
    check_card(card)
    return card


def check_card(card) -> None:
    """Offline stand-in for `ModelCard.validate()` (which needs the network): the YAML parses back to the same
    metadata, the model-index converts back into EvalResults, and ids and license have the Hub's shapes."""
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results
    from huggingface_hub.utils import validate_repo_id

    try:
        meta = ModelCard(str(card)).data.to_dict()
        if meta != card.data.to_dict():
            raise ValueError("metadata does not survive a YAML round trip")
        if "model-index" in meta:
            model_index_to_eval_results(meta["model-index"])
        if meta.get("license") not in HF_LICENSES:
            raise ValueError(f"license {meta.get('license')!r} is not a Hub license id")
        for repo in [meta.get("base_model"), *(meta.get("datasets") or [])]:
            if repo is not None:
                validate_repo_id(repo)
    except (ValueError, KeyError, TypeError) as e:
        raise ZooError(f"the generated model card does not validate ({e}); please report this bug") from None


def _intro(entry: Entry, spec: TaskSpec | None, base_model: str | None) -> list[str]:
    local = f"`{public_base_id(entry.base.id)}`"
    base = f"[{base_model}](https://huggingface.co/{base_model})" if base_model else local
    kind = "QLoRA (LoRA trained on the 4-bit NF4 base)" if entry.base.quantized else "LoRA"
    lines = [f"# {entry.name}", "", f"A {kind} adapter for {base} that specialises it for **{entry.task}**"
             + (f": {spec.description}" if spec else "."), "",
             "Part of an Adapter Zoo: one small shared base, one adapter per task, "
             "a router that picks the adapter for each prompt."]
    if entry.blend is not None:
        lines += ["", f"A weighted combination of: {', '.join(entry.blend.parents)}."]
    if spec:
        lines += ["", f"Training data: `{spec.dataset}` (license: {spec.license or 'not stated'}; "
                  "the adapter's license follows its training data)."]
    return lines


def _usage(entry: Entry, spec: TaskSpec | None, repo_id: str, base_model: str | None,
           subfolder: str | None) -> list[str]:
    base_model = base_model or "PATH/TO/BASE"
    sub = f', subfolder="{subfolder}"' if subfolder else ""
    prompt = (spec.templates[0] if spec else "{text}").replace('"""', "'''")
    return ["", "## Use it", "", "With PEFT (the prompt goes through the base's chat template):", "", "```python",
            "from peft import PeftModel", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
            f'tokenizer = AutoTokenizer.from_pretrained("{base_model}")',
            f'model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{base_model}"), '
            f'"{repo_id}"{sub})', f'prompt = """{prompt}"""  # fill in the slots',
            'inputs = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,'
            ' return_tensors="pt", return_dict=True)', "out = model.generate(**inputs, max_new_tokens=64)",
            'print(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))', "```", "",
            "With Adapter Zoo (checks the base fingerprint first):", "",
            "```bash", f"zoo pull {repo_id}", f'zoo generate "..."   # the router sends {entry.task} '
            "prompts to this adapter", "```"]


def _training(entry: Entry) -> list[str]:
    lora, train, data, speed = entry.lora, entry.train or {}, entry.data or {}, entry.throughput or {}
    rows = [("LoRA rank / alpha / dropout", f"{lora.get('r')} / {lora.get('alpha')} / {lora.get('dropout')}"),
            ("target modules", lora.get("target_modules")), ("adapted layers", lora.get("layers") or "all"),
            ("DoRA", lora.get("use_dora")), ("4-bit NF4 base", entry.base.quantized),
            ("learning rate", train.get("learning_rate")), ("batch size", train.get("batch_size")),
            ("epochs", train.get("epochs")), ("optimizer", train.get("optimizer")),
            ("training examples / tokens", f"{data.get('examples')} / {data.get('tokens')}"),
            ("steps / seconds", f"{speed.get('steps')} / {speed.get('seconds')}"),
            ("final loss", entry.final_loss), ("base fingerprint", entry.base.hash)]
    return ["", "## Training", "", "| setting | value |", "|---|---|",
            *[f"| {k} | {v} |" for k, v in rows if v not in (None, "None / None")],
            "", f"Full settings and the loss log are in `training.json`; the manifest entry in `{ENTRY_FILE}`."]


def _evaluation(entry: Entry, has_plot: bool) -> list[str]:
    """Scores as the report shows them: in domain and out of domain, base vs adapter, 95% intervals."""
    from zoo.reports import data_lines, score_table

    ev = eval_metrics(entry)
    if ev is None:
        return ["", "## Evaluation", "", "Not evaluated yet: run `zoo eval NAME` and push again to add scores."]
    ev = {"n": "?", "split": "validation", "metric": None, **ev}
    lines = ["", "## Evaluation", "", f"Task `{ev.get('task', entry.task)}`, greedy decoding, adapter vs the plain "
             "base.", "", *data_lines(ev), "", *score_table(ev)]
    return lines + (["", f"![base vs adapter]({PLOT_FILE})"] if has_plot else [])


def zoo_card(repo_id: str, entries: dict[str, Entry], specs: dict, adapter_repos: dict | None, has_router: bool):
    """README.md for a whole zoo: which adapters, where each lives, how to pull them all."""
    from huggingface_hub import ModelCardData

    bases = sorted({hub_base_id(e.base.id) for e in entries.values()} - {None})
    datasets = sorted({hub_dataset(s) for s in specs.values()} - {None})
    data = ModelCardData(base_model=bases[0] if len(bases) == 1 else None, library_name="peft",
                         tags=["lora", "adapter-zoo", *sorted({e.task for e in entries.values()})],
                         datasets=datasets or None, license="other", license_name="per-adapter-see-each-card")
    rows = [f"| {n} | {e.task} | " + (f"[{adapter_repos[n]}](https://huggingface.co/{adapter_repos[n]})"
            if adapter_repos else f"`adapters/{n}`") + " |" for n, e in entries.items()]
    body = [f"# {repo_id.split('/')[1]}", "", f"An Adapter Zoo: {len(entries)} task adapters on one base"
            + (" and a router (`router/`) that picks one per prompt." if has_router else "."), "",
            "| adapter | task | where |", "|---|---|---|", *rows, "",
            "Each adapter's card has its training settings and scores; `zoo.json` is the manifest.", "",
            "```bash", f"zoo pull {repo_id}   # every adapter (+ router), base fingerprint checked", "```"]
    return _card(data, body)
