"""Adapter Zoo's task metrics with `evaluate`'s interface, loadable offline from this file:

    import evaluate
    squad = evaluate.load("zoo/evaluate_module/zoo_metrics.py", "squad")      # or "rouge", "accuracy"
    squad.compute(predictions=["Paris."], references=[["Paris"]])             # {"exact_match": 100.0, "f1": 100.0}
    evaluate.load(..., "accuracy").compute(predictions=["positive"], references=[["positive"]],
                                           labels=["negative", "positive"])

Predictions are raw generated texts (the answer span, label or summary is read out of them); references are
lists of acceptable answers. The numbers come from `zoo.metrics.compute`, so this module and `zoo eval` agree.
"""

import datasets
import evaluate

from zoo.metrics import METRICS, compute

_DESCRIPTION = "Adapter Zoo's task metrics: accuracy and macro-F1 (0-1), SQuAD v1.1 EM/F1 and ROUGE-1/2/L (0-100)."
_INPUTS = """predictions: list of generated texts. references: list of lists of reference texts.
labels (accuracy only): the task's label names; an answer counts as the label it names first."""


class ZooMetrics(evaluate.Metric):
    def _info(self):
        if self.config_name not in METRICS:
            raise KeyError(f"unknown metric {self.config_name!r}; load one of {', '.join(METRICS)}")
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_INPUTS,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Sequence(datasets.Value("string"))}))

    def _compute(self, predictions, references, labels=None):
        return compute(self.config_name, predictions, references, labels)
