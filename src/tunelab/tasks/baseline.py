"""The classical baseline beside every classification / preference run: TF-IDF n-grams + logistic regression.

- text (classify): word 1-2-grams and character 2-5-grams (within word boundaries) of the text the model
  reads (the task's template rendered without a chat template), sublinear TF-IDF, multinomial logistic
  regression;
- pair (preference): the same TF-IDF features of response A *minus* those of response B, plus length
  features (log char/word length differences, their absolute values, line-count difference). Swap
  symmetric: trained on both orders (A/B and B/A, labels swapped) and predicted as the average of both
  orders (the swapped prediction un-swapped), so the baseline has no position bias.

It is fitted on exactly the rows the model trains on, scored on the same held-out rows, and saved as
`baseline.npz` in the run dir: numpy arrays and a JSON header only (read with allow_pickle=False, so
loading it runs no code), rebuilt into scikit-learn vectorizers without refitting.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from tunelab.errors import UserError

BASELINE_FILE = "baseline.npz"
FORMAT_VERSION = 1
VECTORIZERS = (  # max_features caps the saved model on large corpora (banking77 has 42k features in all)
    {"analyzer": "word", "ngram_range": (1, 2), "sublinear_tf": True, "lowercase": True, "max_features": 200_000},
    {"analyzer": "char_wb", "ngram_range": (2, 5), "sublinear_tf": True, "lowercase": True, "max_features": 200_000},
)
C_TEXT = 20.0   # inverse L2 strength; banking77 (90/10 of train): C 5/10/30 -> log loss 0.51/0.46/0.40, accuracy ~0.90
C_PAIR = 0.3     # hh-rlhf harmless (2000 train / 312 held-out pairs): C 0.1/0.3/1/3 -> log loss 0.631/0.627/0.647/0.695
MAX_ITER = 1000
# Response A and B share the (first) prompt-free features; swapping them maps label a<->b, tie stays.
SWAP = np.array([1, 0, 2])


@dataclass
class TfidfBaseline:
    """A fitted TF-IDF + logistic-regression model over `n_classes` task classes.

    kind "text": inputs are a list of strings; kind "pair": a (responses_a, responses_b) tuple."""

    kind: str
    n_classes: int
    vectorizers: list = field(default_factory=list)
    coef: np.ndarray | None = None
    intercept: np.ndarray | None = None
    classes: np.ndarray | None = None  # task class index of each logistic-regression output
    train_rows: int = 0

    # -- features ---------------------------------------------------------------------------------------
    def _new_vectorizers(self):
        from sklearn.feature_extraction.text import TfidfVectorizer

        return [TfidfVectorizer(dtype=np.float32, **params) for params in VECTORIZERS]

    def _tfidf(self, texts: Sequence[str]):
        import scipy.sparse as sp

        return sp.hstack([v.transform(texts) for v in self.vectorizers], format="csr")

    def _features(self, inputs, swapped: bool = False):
        import scipy.sparse as sp

        if self.kind == "text":
            return self._tfidf(list(inputs))
        a, b = (list(inputs[1]), list(inputs[0])) if swapped else (list(inputs[0]), list(inputs[1]))
        diff = self._tfidf(a) - self._tfidf(b)
        return sp.hstack([diff, sp.csr_matrix(length_features(a, b))], format="csr")

    # -- fit / predict ----------------------------------------------------------------------------------
    def fit(self, inputs, labels: np.ndarray) -> "TfidfBaseline":
        from sklearn.linear_model import LogisticRegression

        labels = np.asarray(labels, dtype=np.int64)
        self.vectorizers = self._new_vectorizers()
        if self.kind == "text":
            texts = list(inputs)
        else:
            texts = list(inputs[0]) + list(inputs[1])
        try:
            for v in self.vectorizers:
                v.fit(texts)
        except ValueError as exc:  # e.g. every text empty
            raise UserError(f"baseline: cannot build TF-IDF features ({exc}); set task.baseline: false") from None
        X = self._features(inputs)
        y = labels
        if self.kind == "pair":  # both orders: the model cannot learn a position preference
            import scipy.sparse as sp

            X = sp.vstack([X, self._features(inputs, swapped=True)], format="csr")
            y = np.concatenate([labels, SWAP[labels]])
        present = np.unique(y)
        self.train_rows = len(labels)
        if len(present) < 2:  # nothing to learn: the (smoothed) training frequencies
            self.classes, self.coef = present, np.zeros((1, X.shape[1]), dtype=np.float32)
            self.intercept = np.zeros(1)
            return self
        model = LogisticRegression(C=C_TEXT if self.kind == "text" else C_PAIR, max_iter=MAX_ITER)
        model.fit(X, y)
        self.classes = model.classes_.astype(np.int64)
        self.coef = model.coef_.astype(np.float32)
        self.intercept = model.intercept_.astype(np.float64)
        return self

    def _proba(self, X) -> np.ndarray:
        from tunelab.metrics.classification import softmax

        z = np.asarray(X @ self.coef.T, dtype=np.float64) + self.intercept
        if len(self.classes) == 1:
            part = np.ones((X.shape[0], 1))
        elif self.coef.shape[0] == 1:  # binary logistic regression: one logit for classes_[1]
            p1 = 1.0 / (1.0 + np.exp(-z[:, 0]))
            part = np.column_stack([1.0 - p1, p1])
        else:
            part = softmax(z)
        full = np.full((X.shape[0], self.n_classes), 1e-6)  # classes training never saw: a tiny floor
        full[:, self.classes] = part
        return full / full.sum(axis=1, keepdims=True)

    def predict_proba(self, inputs) -> np.ndarray:
        """(rows, n_classes) probabilities; pairs are averaged over both orders."""
        n = len(inputs) if self.kind == "text" else len(inputs[0])
        if n == 0:
            return np.zeros((0, self.n_classes))
        probs = self._proba(self._features(inputs))
        if self.kind == "pair":
            swapped = self._proba(self._features(inputs, swapped=True))
            probs = (probs + swapped[:, SWAP[: self.n_classes]]) / 2
        return probs

    # -- persistence ------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        from tunelab.io import atomic_path

        header = {"format": FORMAT_VERSION, "kind": self.kind, "n_classes": self.n_classes,
                  "train_rows": self.train_rows,
                  "vectorizers": [{k: list(v) if isinstance(v, tuple) else v for k, v in p.items()} for p in VECTORIZERS]}
        arrays = {"header": np.array(json.dumps(header)), "coef": self.coef, "intercept": self.intercept,
                  "classes": self.classes}
        for i, v in enumerate(self.vectorizers):
            terms = sorted(v.vocabulary_, key=v.vocabulary_.get)
            arrays[f"vocab_{i}"] = np.array(terms, dtype=str)
            arrays[f"idf_{i}"] = v.idf_.astype(np.float64)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **arrays)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "TfidfBaseline":
        from sklearn.feature_extraction.text import TfidfVectorizer

        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path.parent}: no fitted baseline ({path.name}); the run was trained with "
                            "task.baseline: false or before tunelab saved baselines")
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(str(data["header"]))
            if header.get("format") != FORMAT_VERSION:
                raise UserError(f"{path}: baseline format {header.get('format')} is not supported by this tunelab")
            vectorizers = []
            for i, params in enumerate(header["vectorizers"]):
                params = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
                v = TfidfVectorizer(dtype=np.float32, **params)
                v.vocabulary_ = {str(t): j for j, t in enumerate(data[f"vocab_{i}"].tolist())}
                v.idf_ = data[f"idf_{i}"]
                vectorizers.append(v)
            return cls(kind=header["kind"], n_classes=int(header["n_classes"]), vectorizers=vectorizers,
                       coef=data["coef"], intercept=data["intercept"], classes=data["classes"].astype(np.int64),
                       train_rows=int(header.get("train_rows", 0)))


def length_features(a: Sequence[str], b: Sequence[str]) -> np.ndarray:
    """Verbosity features of a pair; the signed ones flip sign when A and B swap, the absolute ones stay."""
    def stats(texts):
        texts = [str(t) for t in texts]
        return (np.log1p([len(t) for t in texts]), np.log1p([len(t.split()) for t in texts]),
                np.log1p([t.count("\n") for t in texts]))

    (ca, wa, la), (cb, wb, lb) = stats(a), stats(b)
    signed = [ca - cb, wa - wb, la - lb]
    return np.column_stack(signed + [np.abs(s) for s in signed[:2]]).astype(np.float32)
