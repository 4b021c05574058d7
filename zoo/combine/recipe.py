"""A blend's recipe (`Blend`: parents, weights, method and its options) and the one PEFT call that builds it."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

from zoo.errors import ZooError

METHODS = {
    "cat": "exact: stacks the weighted A/B matrices (rank = sum of ranks); any ranks",
    "svd": "weighted sum of the full deltas, truncated by SVD to --svd-rank (default: largest rank); any ranks",
    "linear": "weighted sum of A and of B separately (approximate); same rank needed",
    "ties": "TIES merging of A and B (trim to --density, elect sign, disjoint mean); same rank needed",
    "dare_linear": "DARE: random drop to --density and rescale, then linear; same rank needed",
    "dare_ties": "DARE drop then TIES sign election; same rank needed",
    "magnitude_prune": "keep the --density largest entries, then linear; same rank needed",
    "ties_svd": "TIES on the full deltas, then SVD; any ranks",
    "dare_linear_svd": "DARE linear on the full deltas, then SVD; any ranks",
    "dare_ties_svd": "DARE TIES on the full deltas, then SVD; any ranks",
    "magnitude_prune_svd": "magnitude pruning on the full deltas, then SVD; any ranks",
}
SAME_RANK = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")
DENSITY_METHODS = tuple(m for m in METHODS if m.split("_")[0] in ("ties", "dare", "magnitude"))
RANDOM_METHODS = tuple(m for m in METHODS if m.startswith("dare"))
DEFAULT_DENSITY = 0.5


@dataclass(frozen=True)
class Blend:
    """One weighted combination: which adapters, with which weights, by which method."""

    parents: tuple[str, ...]
    weights: tuple[float, ...]
    method: str = "cat"
    density: float | None = None
    svd_rank: int | None = None
    seed: int = 0

    def __post_init__(self):
        if len(self.parents) < 2:
            raise ZooError("combine needs at least two adapters")
        if len(set(self.parents)) != len(self.parents):
            raise ZooError(f"an adapter is listed twice in {list(self.parents)}; give each once and set its weight")
        if len(self.weights) != len(self.parents):
            raise ZooError(f"{len(self.weights)} weights for {len(self.parents)} adapters; give one weight each")
        if not all(math.isfinite(w) for w in self.weights) or not any(self.weights):
            raise ZooError(f"weights {list(self.weights)} must be finite numbers, not all zero")
        if self.method not in METHODS:
            raise ZooError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        self._check_options()

    def _check_options(self):
        if self.density is not None and self.method not in DENSITY_METHODS:
            raise ZooError(f"--density applies only to {', '.join(DENSITY_METHODS)}, not {self.method!r}")
        if self.density is not None and not 0 < self.density <= 1:
            raise ZooError(f"--density must be in (0, 1], got {self.density}")
        if self.svd_rank is not None and not self.method.endswith("svd"):
            raise ZooError(f"--svd-rank applies only to the SVD methods, not {self.method!r}")
        if self.svd_rank is not None and self.svd_rank < 1:
            raise ZooError(f"--svd-rank must be >= 1, got {self.svd_rank}")

    @classmethod
    def from_json(cls, data: dict) -> Blend:
        """A blend from its JSON form (`dataclasses.asdict`, as the search report stores it)."""
        return cls(**{**data, "parents": tuple(data["parents"]), "weights": tuple(data["weights"])})

    @property
    def effective_density(self) -> float | None:
        return (self.density or DEFAULT_DENSITY) if self.method in DENSITY_METHODS else None

    @property
    def effective_seed(self) -> int | None:
        """The seed only matters (and is only recorded) for DARE's random drops."""
        return self.seed if self.method in RANDOM_METHODS else None

    @property
    def label(self) -> str:
        w = "/".join(f"{x:g}" for x in self.weights)
        d = f" d={self.effective_density:g}" if self.effective_density is not None else ""
        return f"{self.method} {w}{d}"

    def reordered(self, first: int) -> Blend:
        order = [first] + [i for i in range(len(self.parents)) if i != first]
        return Blend(tuple(self.parents[i] for i in order), tuple(self.weights[i] for i in order), self.method,
                     self.density, self.svd_rank, self.seed)


def apply_blend(peft_model, adapter_names: list[str], blend: Blend, new_name: str) -> None:
    """Add the blend to a PeftModel holding the parents under `adapter_names` (in `blend.parents` order)."""
    import torch

    if blend.method in RANDOM_METHODS:
        torch.manual_seed(blend.seed)  # DARE drops entries at random: a seed makes the blend reproducible
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            peft_model.add_weighted_adapter(adapter_names, list(blend.weights), new_name,
                                            combination_type=blend.method, svd_rank=blend.svd_rank,
                                            density=blend.effective_density,
                                            svd_full_matrices=False)  # same top-r factors, half the time
        except ValueError as e:  # PEFT's own refusals, for what `plan` cannot see from the configs
            raise ZooError(f"cannot blend with {blend.method!r}: {e} (try 'cat' or 'svd')") from None
