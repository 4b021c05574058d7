"""95% bootstrap intervals for the scores in reports, so a reader sees when a difference is noise.

Each resample draws the evaluated examples again with replacement (seeded) and recomputes every number from its
per-example scores (`zoo.metrics.example_scores` / `from_means`); the interval is the middle 95% of the
resampled values (percentile bootstrap). Adapter and base are resampled in pairs, the same draw for both, so the
interval of their difference reflects how they differ example by example: at n=200 two systems that each move
+-3 points can still differ clearly when one is better on the same examples.
"""

from __future__ import annotations

RESAMPLES = 1000
LEVEL = 0.95


def resample_weights(n: int, resamples: int = RESAMPLES, seed: int = 0):
    """How often each of `n` examples is drawn in each resample: (resamples, n) counts, each row summing to n."""
    import numpy as np

    if n < 1:
        raise ValueError("a bootstrap needs at least one example")
    return np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=resamples)


def resampled(key: str, rows, weights):
    """The number `key` on every resample: (resamples,), from its (n, k) per-example rows."""
    from zoo.metrics import from_means

    return from_means(key, weights @ rows / rows.shape[0])


def percentile_interval(values, level: float = LEVEL) -> list[float]:
    """The middle `level` of resampled values, rounded for reports and JSON."""
    import numpy as np

    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return [round(float(low), 4), round(float(high), 4)]


def intervals(examples: dict, resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL) -> dict:
    """Each key's interval from its per-example rows (`example_scores` of one system)."""
    weights = resample_weights(_count(examples), resamples, seed)
    return {key: percentile_interval(resampled(key, rows, weights), level) for key, rows in examples.items()}


def paired_intervals(base: dict, adapter: dict, resamples: int = RESAMPLES, seed: int = 0,
                     level: float = LEVEL) -> dict:
    """Intervals of the base's and the adapter's scores and of their change (adapter - base), all from the same
    resamples of the same examples: {"level", "resamples", "base": {key: [lo, hi]}, "adapter": ..., "change": ...}."""
    n = _count(adapter)
    if _count(base) != n:
        raise ValueError(f"paired scores need the same examples: base has {_count(base)}, adapter {n}")
    weights = resample_weights(n, resamples, seed)
    out: dict = {"level": level, "resamples": resamples, "base": {}, "adapter": {}, "change": {}}
    for key in adapter:
        b, a = resampled(key, base[key], weights), resampled(key, adapter[key], weights)
        for side, values in (("base", b), ("adapter", a), ("change", a - b)):
            out[side][key] = percentile_interval(values, level)
    return out


def _count(examples: dict) -> int:
    counts = {rows.shape[0] for rows in examples.values()}
    if len(counts) != 1:
        raise ValueError(f"per-example scores of different lengths {sorted(counts)}")
    return counts.pop()
