"""TIFU-KNN: personal item frequency with time decay, plus the same vectors of the nearest other users.

Hu, He, Wang, Li and Chen, "Modeling Personalized Item Frequency Information for Next-basket
Recommendation" (SIGIR 2020), the simple method that "A Next Basket Recommendation Reality Check"
(Li et al., 2023) found hard to beat on repeat-heavy basket data such as R2.

A user's events form baskets (``basket``: events at the same time, on the same UTC day, or one basket
per event); each basket is a 0/1 item vector. From the most recent basket back, the baskets fall into
groups of ``group_size``; within a group the j-th most recent basket weighs ``within_decay ** j``,
and the group's vector is the weighted sum over its size. The i-th most recent group weighs
``group_decay ** i``; the user's vector is the weighted sum of group vectors over their count. The
score of every item is ``alpha * u + (1 - alpha) * n``, where n is the mean vector of the
``neighbours`` fitted users (other than the user, matched by user id) whose vectors are most
cosine-similar to u, and u and n are each scaled to sum to 1. Items neither the user nor a neighbour had are ordered by
popularity, so every user gets a full ranking.

Differences from the paper's code: cosine similarity picks the neighbours (the paper's uses Euclidean
distance); u and n are scaled to sum 1 before they are mixed, so ``alpha`` weighs two distributions
over items whatever the length of the history; groups are cut from the most recent basket back (the
oldest group is the short one).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from valuerec.data.dataset import Catalogue, Sequences
from valuerec.models.base import Recommender, register
from valuerec.models.itemknn import load_csr, save_csr

BASKETS = ("time", "day", "event")
DAY = 86400


def basket_index(times: np.ndarray | None, n: int, basket: str) -> np.ndarray:
    """Basket number (0 = oldest) of each of a history's ``n`` events, which are in time order."""
    if basket == "event" or times is None or n == 0:
        return np.arange(n, dtype=np.int64)
    key = np.asarray(times, dtype=np.int64)
    if basket == "day":
        key = key // DAY
    return np.concatenate([[0], np.cumsum(np.diff(key) != 0)]).astype(np.int64)


def user_vectors(seqs: Sequences, n_items: int, basket: str, group_size: int, within_decay: float,
                 group_decay: float) -> sp.csr_matrix:
    """(users, items) TIFU vectors of a batch of histories (rows of users with no item are zero)."""
    rows, cols, vals = [], [], []
    for u, items in enumerate(seqs.items):
        items = np.asarray(items, dtype=np.int64)
        b = basket_index(None if seqs.times is None else seqs.times[u], len(items), basket)
        keep = (items >= 0) & (items < n_items)
        items, b = items[keep], b[keep]
        if not len(items):
            continue
        _, b = np.unique(b, return_inverse=True)              # baskets with an item, renumbered
        key = b * n_items + items
        _, first = np.unique(key, return_index=True)            # an item counts once per basket
        items, b = items[first], b[first]
        back = b.max() - b                                      # 0 = the most recent basket
        group, pos = back // group_size, back % group_size
        n_groups = int(group.max()) + 1
        n_baskets = int(b.max()) + 1
        sizes = np.minimum(group_size, n_baskets - np.arange(n_groups) * group_size)   # baskets per group
        w = within_decay ** pos / sizes[group] * group_decay ** group / n_groups
        rows.append(np.full(len(items), u, dtype=np.int64))
        cols.append(items)
        vals.append(w)
    if not rows:
        return sp.csr_matrix((len(seqs), n_items), dtype=np.float32)
    m = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(len(seqs), n_items), dtype=np.float64)
    m.sum_duplicates()
    return m.astype(np.float32)


def _row_normalised(m: sp.csr_matrix) -> sp.csr_matrix:
    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
    return (sp.diags(1.0 / np.where(norms > 0, norms, 1.0)) @ m).tocsr()


@register("tifuknn")
class TIFUKNN(Recommender):
    """Time-decayed personal item frequency + user kNN (Hu et al., 2020). Deterministic."""

    deterministic = True

    def __init__(self, neighbours: int = 300, alpha: float = 0.7, group_size: int = 5, within_decay: float = 0.9,
                 group_decay: float = 0.8, basket: str = "time", batch_size: int = 1024, seed: int = 0):
        if neighbours < 1:
            raise ValueError(f"tifuknn: neighbours must be >= 1 (got {neighbours})")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"tifuknn: alpha must be in [0, 1] (got {alpha})")
        if group_size < 1:
            raise ValueError(f"tifuknn: group_size must be >= 1 (got {group_size})")
        for name, d in (("within_decay", within_decay), ("group_decay", group_decay)):
            if not 0.0 < d <= 1.0:
                raise ValueError(f"tifuknn: {name} must be in (0, 1] (got {d})")
        if basket not in BASKETS:
            raise ValueError(f"tifuknn: basket must be one of {list(BASKETS)} (got {basket!r})")
        if batch_size < 1:
            raise ValueError(f"tifuknn: batch_size must be >= 1 (got {batch_size})")
        self.neighbours = int(neighbours)
        self.alpha = float(alpha)
        self.group_size = int(group_size)
        self.within_decay = float(within_decay)
        self.group_decay = float(group_decay)
        self.basket = basket
        self.batch_size = int(batch_size)
        self.seed = int(seed)

    def config(self) -> dict:
        return {"neighbours": self.neighbours, "alpha": self.alpha, "group_size": self.group_size,
                "within_decay": self.within_decay, "group_decay": self.group_decay, "basket": self.basket,
                "batch_size": self.batch_size, "seed": self.seed}

    def _vectors(self, seqs: Sequences) -> sp.csr_matrix:
        return user_vectors(seqs, self.n_items, self.basket, self.group_size, self.within_decay, self.group_decay)

    def fit(self, train: Sequences, catalogue: Catalogue, valid=None) -> "TIFUKNN":
        self.catalogue_ = catalogue
        self.ref_ = self._vectors(train)
        self.ref_ids_ = (np.asarray(train.user_ids).astype(str) if train.user_ids is not None else None)
        items = np.concatenate([s[s >= 0] for s in train.items]) if len(train) else np.zeros(0, np.int64)
        self.counts_ = np.bincount(items[items < len(catalogue)], minlength=len(catalogue)).astype(np.float32)
        self._index()
        return self

    def _index(self) -> None:
        """What every score() call reads: the unit-length reference vectors and each user id's row."""
        self.ref_unit_ = _row_normalised(self.ref_).T.tocsr()   # (items, ref users)
        self.ref_pos_ = {u: k for k, u in enumerate(self.ref_ids_)} if self.ref_ids_ is not None else {}

    def score(self, histories: Sequences) -> torch.Tensor:
        out = torch.empty((len(histories), self.n_items), dtype=torch.float32)
        ref_n, ref_pos = self.ref_unit_, self.ref_pos_
        pop = torch.from_numpy(self.counts_ / max(float(self.counts_.max(initial=0.0)), 1.0) * 1e-12)
        n_ref = self.ref_.shape[0]
        for s in range(0, len(histories), self.batch_size):
            part = histories.subset(np.arange(s, min(s + self.batch_size, len(histories))))
            U = self._vectors(part)
            own = torch.from_numpy(U.toarray())
            sim = torch.from_numpy((_row_normalised(U) @ ref_n).toarray())     # (b, ref users)
            if part.user_ids is not None and ref_pos:                          # other users only
                for r, uid in enumerate(np.asarray(part.user_ids).astype(str)):
                    k = ref_pos.get(uid)
                    if k is not None:
                        sim[r, k] = -1.0
            k = min(self.neighbours, n_ref)
            neigh = torch.zeros_like(own)
            if k > 0:
                top = torch.topk(sim, k, dim=1)
                w = (top.values > 0).float() / k                # no similar user: no neighbour term
                W = sp.csr_matrix((w.reshape(-1).numpy(), (np.repeat(np.arange(len(part)), k),
                                                           top.indices.reshape(-1).numpy())),
                                  shape=(len(part), n_ref))
                neigh = torch.from_numpy((W @ self.ref_).toarray())
            own = own / own.sum(dim=1, keepdim=True).clamp_min(1e-30)
            neigh = neigh / neigh.sum(dim=1, keepdim=True).clamp_min(1e-30)
            out[s:s + len(part)] = self.alpha * own + (1.0 - self.alpha) * neigh + pop
        return out

    def _save_state(self, path: Path) -> None:
        save_csr(path, "ref", self.ref_)
        np.save(path / "counts.npy", self.counts_)
        if self.ref_ids_ is not None:
            np.save(path / "ref_user_ids.npy", self.ref_ids_.astype(str))

    def _load_state(self, path: Path) -> None:
        self.ref_ = load_csr(path, "ref")
        self.counts_ = np.load(path / "counts.npy")
        ids = path / "ref_user_ids.npy"
        self.ref_ids_ = np.load(ids) if ids.exists() else None
        self._index()
