"""The router as a scikit-learn estimator: prompt features -> multinomial logistic regression -> route.

Fitting uses scikit-learn's LogisticRegression; what is kept is only its weights (`coef_`, `intercept_`), so
prediction is one sparse-dense product and a softmax, and the saved router is JSON + one safetensors file.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from router.features import KINDS, embed_features, ngram_features
from zoo.errors import ZooError

NONE = "none"


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class Router(ClassifierMixin, BaseEstimator):
    """Maps prompts to a task name or `none`; below `threshold` confidence the answer is `none` too.

    Learned attributes: `classes_` (route names), `coef_` (n_classes, n_features), `intercept_` (n_classes,).
    """

    def __init__(self, features: str = "ngrams", n_features: int = 2**17, head_chars: int = 400,
                 tail_chars: int = 400, embed_chars: int = 160, C: float = 10.0, threshold: float = 0.5,
                 embed_weight: float = 1.0,
                 seed: int = 0):
        self.features = features
        self.n_features = n_features
        self.head_chars = head_chars
        self.tail_chars = tail_chars
        self.embed_chars = embed_chars
        self.C = C
        self.threshold = threshold
        self.embed_weight = embed_weight
        self.seed = seed

    # features ------------------------------------------------------------------------------
    def embed(self, prompts: list[str]) -> np.ndarray | None:
        """The MiniLM part of the features (None for n-grams only): timed apart from the classifier."""
        if self.features == "ngrams":
            return None
        return embed_features(prompts, self.embed_chars) * np.float32(self.embed_weight)

    def transform(self, prompts: list[str], embeddings: np.ndarray | None = None):
        if self.features not in KINDS:
            raise ZooError(f"unknown router features {self.features!r}; choose one of {', '.join(KINDS)}")
        if self.features != "ngrams" and embeddings is None:
            embeddings = self.embed(prompts)
        if self.features == "minilm":
            return embeddings
        X = ngram_features(prompts, self.n_features, self.head_chars, self.tail_chars)
        if self.features == "mix":
            import scipy.sparse as sp

            X = sp.hstack([X, sp.csr_matrix(embeddings)], format="csr")
        return X

    # estimator -----------------------------------------------------------------------------
    def fit(self, prompts: list[str], y: list[str]) -> "Router":
        from sklearn.linear_model import LogisticRegression

        if not 0.0 <= self.threshold < 1.0:
            raise ZooError(f"router threshold must be in [0, 1), got {self.threshold}")
        if len(set(y)) < 2:
            raise ZooError("the router needs prompts of at least two routes to learn from")
        clf = LogisticRegression(C=self.C, max_iter=3000, class_weight="balanced", random_state=self.seed)
        clf.fit(self.transform(list(prompts)), np.asarray(y))
        self.classes_ = np.asarray(clf.classes_)
        coef, intercept = clf.coef_.astype(np.float32), clf.intercept_.astype(np.float32)
        if len(self.classes_) == 2:  # binary LR keeps one row: sigmoid(z) == softmax([0, z])
            coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
        self.coef_, self.intercept_ = coef, intercept.astype(np.float32)
        return self

    def proba_from_features(self, X) -> np.ndarray:
        return softmax(np.asarray(X @ self.coef_.T) + self.intercept_)

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
