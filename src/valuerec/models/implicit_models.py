"""Matrix factorisation baselines through the ``implicit`` library (CPU): ALS and BPR.

Both learn item factors ``V`` (N, F) and score a history by ``u . V^T``. A history the model was
trained on (same user id, same items) uses the learned user factor; any other history gets a user
factor folded in from its items with the item factors held fixed:
- ALS: the exact ALS user step, u = (V'V + V_h'(C_h - I)V_h + lambda I)^-1 V_h' C_h 1, C = 1 + alpha x count;
- BPR: gradient ascent on the BPR objective of the history items against a fixed set of negatives.
So ``score`` works for any history, and a user's score never depends on who else is in the batch.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from valuerec.data.dataset import Catalogue, Sequences
from valuerec.models.base import Recommender, popularity_for_empty_histories, register
from valuerec.models.itemknn import interaction_matrix


def history_key(items: np.ndarray) -> str:
    """A short content hash of one history (item indices in order)."""
    return hashlib.blake2b(np.ascontiguousarray(items, dtype=np.int64).tobytes(), digest_size=8).hexdigest()


class _FactorModel(Recommender):
    """Shared state and scoring of factor models; subclasses implement ``_train`` and ``_fold_in``."""

    num_threads: int = 1

    def _train(self, X) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    # score() uses the learned vector of a history it was trained on (matched by user id and content),
    # fold-in otherwise; explanations score full and edited histories alike (by fold-in)
    scores_trained_users_by_id = True

    def _fold_in(self, histories: list[np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def fit(self, train: Sequences, catalogue: Catalogue, valid=None) -> "_FactorModel":
        self.catalogue_ = catalogue
        X = interaction_matrix(train, len(catalogue), binary=False)   # (U, N) counts
        # implicit is slow with a threaded BLAS: one BLAS thread for the fit, set here rather than in the
        # environment at import (which would also reach every process the caller starts later)
        from threadpoolctl import threadpool_limits
        with threadpool_limits(limits=1, user_api="blas"):
            user_factors, item_factors = self._train(X)
        self.item_factors_ = np.ascontiguousarray(item_factors, dtype=np.float32)
        ids = train.user_ids if train.user_ids is not None else np.array([None] * len(train), dtype=object)
        self.user_factors_ = np.ascontiguousarray(user_factors, dtype=np.float32)
        self.user_keys_ = np.array([f"{u}|{history_key(s)}" for u, s in zip(ids, train.items)], dtype=object)
        self._index_users()
        self.counts_ = np.asarray((X > 0).sum(axis=0), dtype=np.float64).ravel()   # users per item
        return self

    def _index_users(self) -> None:
        self.user_row_ = {k: i for i, k in enumerate(self.user_keys_) if not k.startswith("None|")}

    def user_vectors(self, histories: Sequences) -> np.ndarray:
        """(B, F') user factors: learned where this exact history was trained on, folded in otherwise."""
        ids = histories.user_ids if histories.user_ids is not None else [None] * len(histories)
        out = np.empty((len(histories), self.user_factors_.shape[1]), dtype=np.float32)
        fold = []
        for b, (u, s) in enumerate(zip(ids, histories.items)):
            s = np.asarray(s, dtype=np.int64)
            row = self.user_row_.get(f"{u}|{history_key(s)}") if u is not None else None
            if row is not None:
                out[b] = self.user_factors_[row]
            else:
                fold.append(b)
        if fold:
            hs = []
            for b in fold:
                s = np.asarray(histories.items[b], dtype=np.int64)
                hs.append(s[(s >= 0) & (s < self.n_items)])
            out[fold] = self._fold_in(hs)
        return out

    def score(self, histories: Sequences) -> torch.Tensor:
        U = self.user_vectors(histories)                     # (B, F')
        s = torch.from_numpy(U @ self.item_factors_.T)       # (B, N)
        # a folded-in empty history scores every item 0: training popularity instead
        return popularity_for_empty_histories(s, histories, getattr(self, "counts_", None))

    def _save_state(self, path: Path) -> None:
        np.save(path / "item_factors.npy", self.item_factors_)
        np.save(path / "user_factors.npy", self.user_factors_)
        np.save(path / "counts.npy", self.counts_)
        pd.DataFrame({"key": self.user_keys_.astype(str)}).to_parquet(path / "user_keys.parquet", index=False)

    def _load_state(self, path: Path) -> None:
        self.item_factors_ = np.load(path / "item_factors.npy")
        self.user_factors_ = np.load(path / "user_factors.npy")
        self.counts_ = np.load(path / "counts.npy") if (path / "counts.npy").exists() else None
        self.user_keys_ = pd.read_parquet(path / "user_keys.parquet")["key"].to_numpy(dtype=object)
        self._index_users()


@register("als")
class ALS(_FactorModel):
    """Implicit-feedback ALS (Hu, Koren and Volinsky, 2008) via ``implicit``."""

    def __init__(self, factors: int = 64, regularization: float = 0.01, alpha: float = 1.0,
                 iterations: int = 15, seed: int = 0):
        self.factors = int(factors)
        self.regularization = float(regularization)
        self.alpha = float(alpha)
        self.iterations = int(iterations)
        self.seed = int(seed)

    def config(self) -> dict:
        return {"factors": self.factors, "regularization": self.regularization, "alpha": self.alpha,
                "iterations": self.iterations, "seed": self.seed}

    def _train(self, X):
        from implicit.cpu.als import AlternatingLeastSquares
        m = AlternatingLeastSquares(factors=self.factors, regularization=self.regularization, alpha=self.alpha,
                                    iterations=self.iterations, random_state=self.seed,
                                    num_threads=self.num_threads)
        m.fit(X.tocsr(), show_progress=False)
        return np.asarray(m.user_factors), np.asarray(m.item_factors)

    def _fold_in(self, histories: list[np.ndarray]) -> np.ndarray:
        V = self.item_factors_.astype(np.float64)            # (N, F)
        F = V.shape[1]
        base = V.T @ V + self.regularization * np.eye(F)
        out = np.zeros((len(histories), F), dtype=np.float32)
        for b, h in enumerate(histories):
            if not len(h):
                continue
            items, counts = np.unique(h, return_counts=True)
            c = 1.0 + self.alpha * counts                       # confidence of each history item
            Vh = V[items]                                       # (h, F)
            A = base + Vh.T @ ((c - 1.0)[:, None] * Vh)
            out[b] = np.linalg.solve(A, Vh.T @ c)
        return out


@register("bpr")
class BPR(_FactorModel):
    """Bayesian personalised ranking (Rendle et al., 2009) via ``implicit``. The last factor column
    is implicit's item bias (user side fixed at 1)."""

    fold_in_negatives: int = 512
    fold_in_steps: int = 100

    def __init__(self, factors: int = 64, learning_rate: float = 0.01, regularization: float = 0.01,
                 iterations: int = 100, seed: int = 0):
        self.factors = int(factors)
        self.learning_rate = float(learning_rate)
        self.regularization = float(regularization)
        self.iterations = int(iterations)
        self.seed = int(seed)

    def config(self) -> dict:
        return {"factors": self.factors, "learning_rate": self.learning_rate,
                "regularization": self.regularization, "iterations": self.iterations, "seed": self.seed}

    def _train(self, X):
        from implicit.cpu.bpr import BayesianPersonalizedRanking
        m = BayesianPersonalizedRanking(factors=self.factors, learning_rate=self.learning_rate,
                                        regularization=self.regularization, iterations=self.iterations,
                                        random_state=self.seed, num_threads=self.num_threads)
        X = X.tocsr()
        X.data[:] = 1.0
        m.fit(X, show_progress=False)
        return np.asarray(m.user_factors), np.asarray(m.item_factors)

    def _fold_in(self, histories: list[np.ndarray]) -> np.ndarray:
        V = self.item_factors_.astype(np.float64)            # (N, F+1), last column = item bias
        n, F1 = V.shape
        rng = np.random.default_rng(self.seed)
        neg = V[rng.choice(n, size=min(self.fold_in_negatives, n), replace=False)]  # (M, F+1)
        out = np.zeros((len(histories), F1), dtype=np.float32)
        out[:, -1] = 1.0
        for b, h in enumerate(histories):
            u = np.zeros(F1)
            u[-1] = 1.0
            if len(h):
                pos = V[np.unique(h)]                             # (P, F+1)
                n_pairs = len(pos) * len(neg)
                for _ in range(self.fold_in_steps):
                    # the mean over every (positive, negative) pair of sigmoid(-(pos - neg) . u) (pos - neg),
                    # without the (P*M, F+1) matrix of differences: P*M scalars and two small products
                    w = 1.0 / (1.0 + np.exp((pos @ u)[:, None] - (neg @ u)[None, :]))   # (P, M)
                    g = (pos.T @ w.sum(axis=1) - neg.T @ w.sum(axis=0)) / n_pairs - self.regularization * u
                    g[-1] = 0.0                                   # the bias coordinate stays 1
                    u += 10.0 * g
            out[b] = u
        return out
