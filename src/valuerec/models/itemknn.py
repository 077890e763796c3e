"""Item-item kNN: cosine similarity between item columns of the user-item matrix.

A user's score for item j is the sum, over the items i of their history, of sim(i, j), where each
item keeps only its ``neighbours`` most similar items. With ``recency_decay`` d < 1, the history item
t steps before the last one weighs d**t, so recent items count more (d = 1: a plain sum).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from valuerec.data.dataset import Catalogue, Sequences
from valuerec.models.base import Recommender, popularity_for_empty_histories, register


def interaction_matrix(seqs: Sequences, n_items: int, binary: bool = True) -> sp.csr_matrix:
    """(users, items) CSR matrix of interaction counts (1/0 with ``binary``); item -1 is dropped."""
    rows = np.concatenate([np.full(len(s), u, dtype=np.int64) for u, s in enumerate(seqs.items)]) \
        if len(seqs) else np.zeros(0, np.int64)
    cols = np.concatenate(seqs.items).astype(np.int64) if len(seqs) else np.zeros(0, np.int64)
    keep = (cols >= 0) & (cols < n_items)
    m = sp.csr_matrix((np.ones(int(keep.sum()), dtype=np.float32), (rows[keep], cols[keep])),
                      shape=(len(seqs), n_items))
    m.sum_duplicates()
    if binary:
        m.data[:] = 1.0
    return m


def history_weights(seqs: Sequences, n_items: int, decay: float = 1.0) -> sp.csr_matrix:
    """(B, items) matrix of history weights: d**(steps before the last event), summed per item."""
    rows, cols, vals = [], [], []
    for u, s in enumerate(seqs.items):
        s = np.asarray(s, dtype=np.int64)
        s = s[(s >= 0) & (s < n_items)]
        if not len(s):
            continue
        w = decay ** np.arange(len(s) - 1, -1, -1, dtype=np.float64) if decay != 1.0 else np.ones(len(s))
        rows.append(np.full(len(s), u, dtype=np.int64))
        cols.append(s)
        vals.append(w.astype(np.float32))
    if not rows:
        return sp.csr_matrix((len(seqs), n_items), dtype=np.float32)
    m = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(len(seqs), n_items))
    m.sum_duplicates()
    return m


@register("itemknn")
class ItemKNN(Recommender):
    """Cosine item-item kNN. Deterministic; ``seed`` is accepted for a uniform constructor."""

    deterministic = True

    def __init__(self, neighbours: int = 100, shrink: float = 0.0, recency_decay: float = 1.0,
                 binary: bool = True, seed: int = 0):
        if neighbours < 1:
            raise ValueError(f"itemknn: neighbours must be >= 1 (got {neighbours})")
        if not 0.0 < recency_decay <= 1.0:
            raise ValueError(f"itemknn: recency_decay must be in (0, 1] (got {recency_decay})")
        if shrink < 0:
            raise ValueError(f"itemknn: shrink must be >= 0 (got {shrink})")
        self.neighbours = int(neighbours)
        self.shrink = float(shrink)
        self.recency_decay = float(recency_decay)
        self.binary = bool(binary)
        self.seed = int(seed)

    def config(self) -> dict:
        return {"neighbours": self.neighbours, "shrink": self.shrink, "recency_decay": self.recency_decay,
                "binary": self.binary, "seed": self.seed}

    def fit(self, train: Sequences, catalogue: Catalogue, valid=None) -> "ItemKNN":
        self.catalogue_ = catalogue
        n = len(catalogue)
        X = interaction_matrix(train, n, binary=self.binary).tocsc()   # (U, N)
        co = (X.T @ X).tocsr().astype(np.float32)                      # (N, N) co-occurrence
        norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=0)).ravel()).astype(np.float32)  # (N,)
        co.setdiag(0.0)
        co.eliminate_zeros()
        coo = co.tocoo()
        denom = norms[coo.row] * norms[coo.col] + self.shrink
        sim = sp.csr_matrix((coo.data / np.maximum(denom, 1e-12), (coo.row, coo.col)), shape=(n, n))
        self.sim_ = _keep_top_per_row(sim, self.neighbours)            # row i: i's neighbours
        self.counts_ = np.asarray((X > 0).sum(axis=0), dtype=np.float64).ravel()   # users per item
        return self

    def score(self, histories: Sequences) -> torch.Tensor:
        H = history_weights(histories, self.n_items, self.recency_decay)   # (B, N)
        s = (H @ self.sim_).toarray().astype(np.float32)                   # (B, N)
        # an empty history (or one of unknown items only) has no neighbours: training popularity
        return popularity_for_empty_histories(torch.from_numpy(s), histories, getattr(self, "counts_", None))

    def _save_state(self, path: Path) -> None:
        save_csr(path, "sim", self.sim_)
        np.save(path / "counts.npy", self.counts_)

    def _load_state(self, path: Path) -> None:
        self.sim_ = load_csr(path, "sim")
        self.counts_ = np.load(path / "counts.npy") if (path / "counts.npy").exists() else None


def save_csr(path: Path, prefix: str, m: sp.spmatrix) -> None:
    """A float32 CSR matrix as ``{prefix}_data/indices/indptr.npy`` and its shape in ``state.json``."""
    m = m.tocsr()
    np.save(path / f"{prefix}_data.npy", m.data.astype(np.float32))
    np.save(path / f"{prefix}_indices.npy", m.indices.astype(np.int64))
    np.save(path / f"{prefix}_indptr.npy", m.indptr.astype(np.int64))
    (path / "state.json").write_text(json.dumps({"shape": list(m.shape)}))


def load_csr(path: Path, prefix: str) -> sp.csr_matrix:
    shape = tuple(json.loads((path / "state.json").read_text())["shape"])
    return sp.csr_matrix((np.load(path / f"{prefix}_data.npy"), np.load(path / f"{prefix}_indices.npy"),
                          np.load(path / f"{prefix}_indptr.npy")), shape=shape)


def _keep_top_per_row(m: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep the k largest entries of each row (ties: lower column index first)."""
    m = m.tocsr()
    m.sort_indices()
    indptr, indices, data = m.indptr, m.indices, m.data
    keep = np.zeros(len(data), dtype=bool)
    for r in range(m.shape[0]):
        a, b = indptr[r], indptr[r + 1]
        if b - a <= k:
            keep[a:b] = True
        else:
            order = np.lexsort((indices[a:b], -data[a:b]))[:k]
            keep[a + order] = True
    rows = np.repeat(np.arange(m.shape[0]), np.diff(indptr))
    return sp.csr_matrix((data[keep], (rows[keep], indices[keep])), shape=m.shape)
