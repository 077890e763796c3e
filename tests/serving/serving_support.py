"""A real server on a loopback port over a tiny synthetic store and models trained on it.

Data by construction: items i0..i29 form three clusters of ten (i0-i9, i10-i19, i20-i29); each of 60
users has six items from one cluster. So item-kNN recommends a user's own cluster, and its
similar items of i3 are other items of cluster 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from valuerec.data.dataset import catalogue_from, sequences_from
from valuerec.data.store import EventStore
from valuerec.models.item_value import ItemValueModel
from valuerec.models.itemknn import ItemKNN
from valuerec.models.popularity import Popularity
from valuerec.models.purchase_stage import PurchaseStage
from valuerec.serving.process import ServerProcess

READ_KEY = "reader-key-123"
WRITE_KEY = "writer-key-456"
ADMIN_KEY = "admin-key-7890"
API_KEYS = f"{READ_KEY}:read;{WRITE_KEY}:read,write;{ADMIN_KEY}:admin"


def tiny_events(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    rows = []
    t0 = pd.Timestamp("2024-01-01")
    for u in range(60):
        c = u % 3
        items = rng.choice(np.arange(c * 10, c * 10 + 10), size=6, replace=False)
        for j, i in enumerate(items):
            rows.append({"event_id": f"seed-{u}-{j}", "user_id": f"u{u}", "item_id": f"i{i}",
                         "timestamp": t0 + pd.Timedelta(hours=u * 10 + j), "event_type": "purchase",
                         "value": float(1 + i % 5), "quantity": 1.0})
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(30)], "text": [f"item number {i}" for i in range(30)],
                          "attributes": None, "price": [float(1 + i % 5) for i in range(30)]})
    return pd.DataFrame(rows), items


def build_fixture(root: Path) -> dict:
    """Store + two model versions (v1 itemknn, v2 popularity) under ``root``."""
    events, items = tiny_events()
    store_path = root / "store.duckdb"
    with EventStore(store_path) as st:
        st.add_events(events, items)
        ev, it = st.events(), st.items()
    cat = catalogue_from(ev, it)
    seqs = sequences_from(ev, cat)
    models = root / "models"
    knn = ItemKNN(neighbours=20).fit(seqs, cat)
    knn.save(models / "v1")
    # v1 also has learned item values (what ``train --item-values`` writes), for the value-aware policy.
    cutoff = int(max(t.max() for t in seqs.times if len(t))) + 1
    iv = ItemValueModel(horizon_days=7, n_estimators=20, min_child_samples=5).fit(seqs, cutoff, len(cat), cat.price)
    iv.save(models / "v1" / ItemValueModel.DIRNAME)
    # ... and a purchase stage (what ``train --purchase-stage`` writes): each user's first four items
    # as the history, the last two as what they bought next.
    PurchaseStage(n_estimators=20, min_child_samples=5, folds=1).fit(
        knn, seqs.prefix([4] * len(seqs)), [x[4:] for x in seqs.items], as_of=cutoff, reference=seqs,
        item_value=iv).save(models / "v1" / PurchaseStage.DIRNAME)
    Popularity().fit(seqs, cat).save(models / "v2")
    return {"store": store_path, "models": models, "events": events}


def server_env(fx: dict, model: str = "v1", **extra: str) -> dict[str, str]:
    env = {"VALUEREC_STORE": str(fx["store"]), "VALUEREC_MODEL_DIR": str(fx["models"] / model),
           "VALUEREC_MODELS_ROOT": str(fx["models"]), "VALUEREC_API_KEYS": API_KEYS,
           "VALUEREC_MAX_K": "50", "VALUEREC_MAX_BATCH": "100", "VALUEREC_MAX_BODY_BYTES": "20000",
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    env.update(extra)
    return env


def auth(key: str) -> dict[str, str]:
    return {"X-API-Key": key}
