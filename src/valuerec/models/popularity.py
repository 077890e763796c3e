"""Most-popular baseline: every user gets the items with the most training interactions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from valuerec.data.dataset import Catalogue, Sequences
from valuerec.models.base import Recommender, popularity_for_empty_histories, register
from valuerec.models.itemknn import history_weights


@register("popularity")
class Popularity(Recommender):
    deterministic = True

    def __init__(self, seed: int = 0):
        self.seed = int(seed)  # deterministic; accepted so every model takes the same constructor

    def config(self) -> dict:
        return {"seed": self.seed}

    def fit(self, train: Sequences, catalogue: Catalogue, valid=None) -> "Popularity":
        self.catalogue_ = catalogue
        items = np.concatenate([s[s >= 0] for s in train.items]) if len(train) else np.zeros(0, np.int64)
        self.counts_ = np.bincount(items, minlength=len(catalogue)).astype(np.float32)
        return self

    def score(self, histories: Sequences) -> torch.Tensor:
        return torch.from_numpy(self.counts_).expand(len(histories), -1).clone()

    def _save_state(self, path: Path) -> None:
        np.save(path / "counts.npy", self.counts_)

    def _load_state(self, path: Path) -> None:
        self.counts_ = np.load(path / "counts.npy")


@register("popularity-s3rec")
class PopularityS3Rec(Popularity):
    """Reproduction-only variant of the S3-Rec repository's popularity figure on R1.

    Identical to ``popularity``; the difference is what the R1 protocol feeds ``fit``: every event
    of the data set, including each user's held-out test item (``fit_on = "all_events"``). Counting
    the test targets is a leak, so this model exists only to show where the published 0.0152 / 0.0068
    comes from; never compare it with honest models.
    """

    fit_on = "all_events"


@register("repeat")
class RepeatPopularity(Popularity):
    """Buy-again baseline ("personal top frequency"): the user's own items by how often they had
    them (optionally recency-decayed), then the most popular other items. Strong wherever repeat
    consumption dominates (groceries, wholesale: R2), useless where history is excluded (R1)."""

    def __init__(self, decay: float = 1.0, seed: int = 0):
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"repeat: decay must be in (0, 1] (got {decay})")
        super().__init__(seed)
        self.decay = float(decay)

    def config(self) -> dict:
        return {"decay": self.decay, "seed": self.seed}

    def score(self, histories: Sequences) -> torch.Tensor:
        # Popularity only breaks ties: it is scaled below decay ** 1000, under the weight of any of the
        # last 1,000 events (at least 1e-30: a steep decay, 0.9 ** 1000, would vanish in float32 and
        # leave ties in index order; events further back may then weigh less than it)
        pop = torch.from_numpy(self.counts_)
        pop = pop / (pop.max().clamp(min=1.0) * 2.0) * max(self.decay ** 1000, 1e-30)
        counts = torch.from_numpy(history_weights(histories, self.n_items, self.decay).toarray())
        return popularity_for_empty_histories(counts.float() + pop, histories, self.counts_)
