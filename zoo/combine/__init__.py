"""Weighted combinations of zoo adapters, built by PEFT's `add_weighted_adapter` and saved as a new adapter.

- `recipe.py`  `Blend` (parents, weights, method and its options) and the one PEFT call that builds it
- `plan.py`    the checks below, run before anything is built (`plan`)
- `build.py`   `combine`: the blend written as a zoo adapter, with its task spec and lineage
- `search.py`  the weight/method grid scored on every parent's task (`zoo combine --search`); the report
               itself is written by `zoo.reports.write_combination_report`

PEFT 0.21.2's `add_weighted_adapter` has constraints `plan` checks up front, each with what to do instead:
- `linear`, `ties`, `dare_linear`, `dare_ties`, `magnitude_prune` combine the A and B matrices separately, so
  every parent must have the same rank (r, and any rank_pattern); `cat` (exact, rank = sum of ranks) and the
  SVD variants (rank = largest rank, or --svd-rank) accept any ranks. `linear` is also only approximate:
  (sum w_i B_i)(sum w_i A_i) has cross terms; `cat` reproduces sum w_i B_i A_i exactly.
- the new adapter copies the *first* parent's config (layers_to_transform, use_dora, use_rslora, bias, ...)
  with lora_alpha = r. So: DoRA is refused (magnitude vectors are not combined), rsLoRA is refused (its scale
  would become sqrt(r) instead of 1), trained biases (bias != "none", lora_bias) and modules_to_save are refused
  (they are not combined), and parents adapting different layers are accepted only when one parent's layout
  covers all the others (it is then put first), since modules outside the new layout would be dropped.

A blend used without being saved (the search, the demo) goes through `Runtime.temporary_adapter(blend=...)`.
"""

from zoo.combine.build import combine
from zoo.combine.plan import plan
from zoo.combine.recipe import DENSITY_METHODS, METHODS, Blend, apply_blend

__all__ = ["Blend", "METHODS", "DENSITY_METHODS", "apply_blend", "plan", "combine"]
