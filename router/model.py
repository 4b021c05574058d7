"""The router as a scikit-learn estimator: prompt features -> multinomial logistic regression -> route.

Fitting uses scikit-learn's LogisticRegression; what is kept is only its weights (`coef_`, `intercept_`), so
prediction is one sparse-dense product and a softmax, and the saved router is JSON + one safetensors file.

Why these features (docs/router.md has the whole table): measured on the different-generator held-out set
(`router.heldout`: wording and shapes written apart from the training generator), 150 fit rows per task:

    features                                      accuracy  none   qa     sentiment  summarization
    n-grams + shape                               0.743     0.707  0.92   0.81       0.56   (before the 2nd round)
    MiniLM (first + last segment) alone           0.772     0.776  0.78   0.93       0.60
    mix: n-grams + shape + MiniLM                 0.901     0.828  0.96   0.98       0.89
    mix, MiniLM of the request only (`request_ends`, the default; 3rd-round training prompts)
                                                  0.907     0.862  0.99   0.96       0.85

n-grams know the look of the inputs and the templates' words; the embedding of the request's first and last
sentence carries its meaning to wording no training prompt has. Weighting the embedding up (2, 3, 4) lost
(0.888, 0.859, 0.831), as did shorter n-gram windows (100+100 characters: 0.871), structure weight 1 (0.897)
and an MLP on the embeddings added to the logits (0.888). C=1 was even (0.903). Augmentations: without the
bare inputs sentiment fell to 0.63 (and `none` rose to 0.93): a linear model adds the evidence of the
request and of the input, and those two pull apart on task inputs put to other jobs.

Threshold and temperature: fit on the calibration split by `router.calibration` (see there for the policy).
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from router.features import EMBED_DIM, KINDS, N_SHAPE, embed_features, ngram_blocks, structure_features
from zoo.errors import ZooError
from zoo.serving.runtime import NONE  # the plain base's route is its adapter name


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class Router(ClassifierMixin, BaseEstimator):
    """Maps prompts to a task name or `none`; below `threshold` confidence the answer is `none` too.

    Learned attributes: `classes_` (route names), `coef_` (n_classes, n_features_in_), `intercept_`,
    `temperature_` (the softmax temperature fit on the calibration split; 1.0 before).
    """

    def __init__(self, features: str = "mix", n_features: int = 2**17, head_chars: int = 200,
                 tail_chars: int = 200, embed_chars: int = 160, C: float = 3.0, threshold: float = 0.4,
                 structure_weight: float = 3.0, embed_weight: float = 1.0, seed: int = 0):
        self.features = features
        self.n_features = n_features
        self.head_chars = head_chars
        self.tail_chars = tail_chars
        self.embed_chars = embed_chars
        self.C = C
        self.threshold = threshold
        self.structure_weight = structure_weight
        self.embed_weight = embed_weight
        self.seed = seed

    # features ------------------------------------------------------------------------------
    def feature_dim(self) -> int:
        ngrams = 2 * self.n_features + N_SHAPE
        return {"ngrams": ngrams, "minilm": 2 * EMBED_DIM, "mix": ngrams + 2 * EMBED_DIM}[self.features]

    def embed(self, prompts: list[str]) -> np.ndarray | None:
        """The MiniLM part of the features (None for n-grams only): timed apart from the classifier."""
        if self.features == "ngrams":
            return None
        return embed_features(prompts, self.embed_chars)

    def transform(self, prompts: list[str], embeddings: np.ndarray | None = None):
        """Prompts -> feature matrix (sparse unless `features="minilm"`); `embeddings` from `embed()`."""
        import scipy.sparse as sp

        if self.features not in KINDS:
            raise ZooError(f"unknown router features {self.features!r}; choose one of {', '.join(KINDS)}")
        if self.features != "ngrams" and embeddings is None:
            embeddings = self.embed(prompts)
        if self.features == "minilm":
            return embeddings * np.float32(self.embed_weight)
        blocks = [*ngram_blocks(prompts, self.n_features, self.head_chars, self.tail_chars),
                  sp.csr_matrix(structure_features(prompts, self.embed_chars) * np.float32(self.structure_weight))]
        if self.features == "mix":
            blocks.append(sp.csr_matrix(embeddings * np.float32(self.embed_weight)))
        return sp.hstack(blocks, format="csr")

    # estimator -----------------------------------------------------------------------------
    def fit(self, prompts: list[str], y: list[str]) -> "Router":
        from sklearn.linear_model import LogisticRegression

        if not 0.0 <= self.threshold < 1.0:
            raise ZooError(f"router threshold must be in [0, 1), got {self.threshold}")
        if len(set(y)) < 2:
            raise ZooError("the router needs prompts of at least two routes to learn from")
        X = self.transform(list(prompts))
        # newton-cg: 9 iterations, 7 s on the full training set where lbfgs took 24 s, same accuracy
        clf = LogisticRegression(C=self.C, solver="newton-cg", max_iter=500, class_weight="balanced",
                                 random_state=self.seed)
        clf.fit(X, np.asarray(y))
        self.classes_ = np.asarray(clf.classes_)
        self.n_features_in_ = X.shape[1]
        coef, intercept = clf.coef_.astype(np.float32), clf.intercept_.astype(np.float32)
        if len(self.classes_) == 2:  # binary LR keeps one row: sigmoid(z) == softmax([0, z])
            coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
        self.coef_, self.intercept_ = np.ascontiguousarray(coef), intercept.astype(np.float32)
        self.temperature_ = 1.0
        return self

    def logits_from_features(self, X) -> np.ndarray:
        return np.asarray(X @ self._weights()) + self.intercept_

    def proba_from_features(self, X) -> np.ndarray:
        """Softmax of the logits over `temperature_` (1 until `router.calibration` fits it)."""
        return softmax(self.logits_from_features(X) / np.float32(getattr(self, "temperature_", 1.0)))

    def _weights(self) -> np.ndarray:
        """coef_.T, C-contiguous and cached: a strided view costs a 4 MB copy inside every sparse product."""
        cached = getattr(self, "_coef_t", None)
        if cached is None or cached[0] is not self.coef_:
            self._coef_t = (self.coef_, np.ascontiguousarray(self.coef_.T))
        return self._coef_t[1]

    def predict_proba(self, prompts: list[str]) -> np.ndarray:
        return self.proba_from_features(self.transform(list(prompts)))

    def decide(self, proba: np.ndarray) -> list[str]:
        """Top route per row, or `none` when its probability is under the threshold."""
        top = proba.argmax(axis=1)
        return [str(self.classes_[i]) if p[i] >= self.threshold else NONE for i, p in zip(top, proba)]

    def predict(self, prompts: list[str]) -> np.ndarray:
        return np.asarray(self.decide(self.predict_proba(prompts)))

    def route(self, prompts: list[str]) -> list[dict]:
        """`[{"route": name | "none", "probs": {route: p}}]`, one per prompt."""
        if isinstance(prompts, str) or any(not isinstance(p, str) for p in prompts):
            raise ZooError("route() takes a list of prompt strings")
        if not prompts:
            return []
        proba = self.predict_proba(prompts)
        names = [str(c) for c in self.classes_]
        return [{"route": r, "probs": {c: round(float(p), 6) for c, p in zip(names, row)}}
                for r, row in zip(self.decide(proba), proba)]
