"""Retraining: fine-tune from the current model on new events, grow the catalogue, accept only if no
worse, write a new version directory whole."""

import numpy as np
import pandas as pd
import pytest

from valuerec.data.dataset import catalogue_from, sequences_from
from valuerec.data.store import EventStore
from valuerec.models import load_model
from valuerec.models.transformer import BehaviourTransformer
from valuerec.training.retrain import grow_catalogue, retrain

T0 = pd.Timestamp("2024-01-01")


def cyclic_events(n_users, days, n_items=8, start=0, seed=0):
    """Each user walks a cycle of items, one a day: the next item is predictable from the last."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        k = int(rng.integers(0, n_items))
        for d in range(start, days):
            rows.append((f"u{u}", f"i{(k + d) % n_items}", T0 + pd.Timedelta(days=d, hours=u % 5), "purchase", 1.0, 1.0))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "event_type", "value", "quantity"])


def test_grow_catalogue_keeps_old_indices():
    old = catalogue_from(cyclic_events(3, 5, n_items=4), None)
    ev = pd.concat([cyclic_events(3, 5, n_items=4), pd.DataFrame(
        [("u9", "new1", T0, "purchase", 1.0, 1.0)], columns=["user_id", "item_id", "timestamp", "event_type", "value", "quantity"])])
    items = pd.DataFrame({"item_id": ["new1"], "text": ["a brand new mug"], "attributes": [None], "price": [3.0]})
    cat = grow_catalogue(old, ev, items)
    assert list(cat.item_ids[: len(old)]) == list(old.item_ids)
    assert cat.item_ids[-1] == "new1" and cat.text[-1] == "a brand new mug" and cat.price[-1] == 3.0


def test_retrain_transformer_accepts_and_versions(tmp_path):
    first = cyclic_events(30, 20)
    cat = catalogue_from(first, None)
    model = BehaviourTransformer(seed=0, d_model=16, n_layers=1, max_len=10, dropout=0.0, epochs=15, lr=5e-3,
                                 progress=False, use_text=False).fit(sequences_from(first, cat), cat)
    model.save(tmp_path / "m0")
    # New behaviour since training: more days, and a new item joins the cycle for new users.
    new = cyclic_events(30, 30, start=20)
    store_path = tmp_path / "s.duckdb"
    with EventStore(store_path) as st:
        st.add_events(pd.concat([first, new]))
    rep = retrain(tmp_path / "m0", store_path, tmp_path / "versions", holdout_days=3, epochs=3)
    assert rep.holdout_users == 30
    assert rep.accepted and rep.candidate["ndcg@20"] >= rep.base["ndcg@20"]
    v = load_model(rep.version_dir)
    assert rep.version_dir.endswith("v0001") and (tmp_path / "versions" / "v0001" / "retrain.json").exists()
    assert v.n_items == model.n_items
    rep2 = retrain(tmp_path / "m0", store_path, tmp_path / "versions", holdout_days=3, epochs=1, tolerance=1.0)
    assert rep2.version_dir.endswith("v0002")


def test_retrain_rejects_a_worse_candidate(tmp_path):
    ev = cyclic_events(20, 12)
    cat = catalogue_from(ev, None)
    from valuerec.models.popularity import Popularity
    Popularity().fit(sequences_from(ev, cat), cat).save(tmp_path / "pop")
    with EventStore(tmp_path / "s.duckdb") as st:
        st.add_events(ev)
    # an impossible bar: the candidate must beat the base by 1.0 NDCG
    rep = retrain(tmp_path / "pop", tmp_path / "s.duckdb", tmp_path / "versions", holdout_days=2, tolerance=-1.0)
    assert not rep.accepted and rep.version_dir is None
    assert not (tmp_path / "versions").exists() or not any((tmp_path / "versions").iterdir())
