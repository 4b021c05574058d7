"""What routing mistakes cost, in each task's own metric ("routing regret").

A mixed set: every served task's validation rows, each in one of several phrasings (the task's templates, the
training generator, the separately written evaluation generator), plus out-of-scope prompts. Each task's
rows are answered three ways: as the learned router sends them, by the task's adapter (perfect routing), and
by the plain base (everything to `none`). Regret = perfect - learned, per task; out-of-scope prompts have no
task metric, so for them the report gives the share an adapter answered.
"""

from __future__ import annotations

from router.model import NONE

PHRASINGS = ("templates", "same-generator", "different-generator")


def mixed_prompts(spec, rows: list[dict], seed: int = 0) -> list[str]:
    """Row i in phrasing i mod 3: a template, the training generator, the evaluation generator."""
    from router import heldout, phrasings

    kinds = [[spec.prompt(r, i) for i, r in enumerate(rows)], phrasings.varied_prompts(spec, rows, seed, per_row=1),
             heldout.task_prompts(spec, rows, seed)]
    kinds = [k for k in kinds if len(k) == len(rows)]
    return [kinds[i % len(kinds)][i] for i in range(len(rows))]


def routed_adapters(runtime, router, prompts: list[str]) -> tuple[list[str], list[str]]:
    """(route, adapter) per prompt: the route's adapter when it is healthy in the runtime, else the base."""
    from router import adapter_map

    mapping, healthy = adapter_map(runtime.zoo), set(runtime.available())
    routes = [r["route"] for r in router.route(prompts)]
    adapters = [mapping.get(r, NONE) if r != NONE else NONE for r in routes]
    return routes, [a if a in healthy else NONE for a in adapters]


def answer(runtime, spec, prompts: list[str], adapters: list[str], batch_size: int, label: str) -> list[str]:
    """Greedy answers to free-form prompts, each with its own adapter (`none`: the base); a progress bar named
    after the task and `label`."""
    from zoo.prompting import text_prompt_ids

    if not prompts:
        return []
    limit = max(256, spec.train.max_seq_len - spec.max_new_tokens)
    ids = [text_prompt_ids(runtime.tokenizer, p, limit) for p in prompts]
    return runtime.generate_ids(ids, adapters, spec.max_new_tokens, batch_size,
                                progress=f"regret, {spec.name}: {label}")


def task_regret(runtime, router, spec, adapter: str, n: int, data_dir=None, seed: int = 0,
                batch_size: int | None = None) -> dict:
    """One task: its metric with learned routing, perfect routing and all-to-base on the same prompts."""
    import warnings

    from zoo.evaluation import eval_rows, score_outputs

    rows = eval_rows(spec, n, data_dir, seed)
    prompts = mixed_prompts(spec, rows, seed)
    routes, chosen = routed_adapters(runtime, router, prompts)
    with warnings.catch_warnings():  # long passages are cut in the middle: expected here
        warnings.simplefilter("ignore")
        perfect = answer(runtime, spec, prompts, [adapter] * len(prompts), batch_size, "its adapter")
        base = answer(runtime, spec, prompts, [NONE] * len(prompts), batch_size, "the base")
        elsewhere = [i for i, a in enumerate(chosen) if a not in (adapter, NONE)]
        other = dict(zip(elsewhere, answer(runtime, spec, [prompts[i] for i in elsewhere],
                                           [chosen[i] for i in elsewhere], batch_size, "misrouted")))
    learned = [perfect[i] if a == adapter else base[i] if a == NONE else other[i] for i, a in enumerate(chosen)]
    metric = spec.primary_metric
    scores = {k: score_outputs(spec, outs, rows)[metric] for k, outs in
              (("learned", learned), ("perfect", perfect), ("base", base))}
    regret = scores["perfect"] - scores["learned"]
    return {"task": spec.name, "adapter": adapter, "metric": metric, "n": len(rows), **scores,
            "regret": regret, "regret_share": regret / scores["perfect"] if scores["perfect"] else 0.0,
            "routed_right": sum(r == spec.name for r in routes) / len(routes)}


def out_of_scope_share(runtime, router, n: int, seed: int = 0) -> dict:
    """Out-of-scope prompts (both generators): the share some adapter would answer instead of the base."""
    from router import heldout
    from router.oos import oos_prompts

    prompts = oos_prompts("eval")[::max(1, len(oos_prompts("eval")) // n)][:n] + list(heldout.PLAIN_OTHER)
    _, chosen = routed_adapters(runtime, router, prompts)
    return {"n": len(prompts), "to_an_adapter": sum(a != NONE for a in chosen) / len(prompts)}


def routing_regret(runtime, n: int = 50, data_dir=None, seed: int = 0, batch_size: int | None = None,
                   router=None) -> dict:
    """Routing regret per task the zoo serves (the runtime's zoo and router unless `router` is given)."""
    from router import adapter_map
    from tasks import spec_for_adapter

    router = router or runtime.router
    healthy = set(runtime.available())
    tasks = {}
    for route, adapter in sorted(adapter_map(runtime.zoo).items()):
        if adapter in healthy and route in {str(c) for c in router.classes_}:
            spec = spec_for_adapter(runtime.zoo, adapter)
            tasks[route] = task_regret(runtime, router, spec, adapter, n, data_dir, seed, batch_size)
    return {"n_per_task": n, "seed": seed, "tasks": tasks,
            "out_of_scope": out_of_scope_share(runtime, router, n, seed)}
