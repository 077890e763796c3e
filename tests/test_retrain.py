"""Retraining: fine-tune from the current model on new events, grow the catalogue, accept only if no
worse, write a new version directory whole."""

import numpy as np
import pandas as pd
import pytest

from valuerec.data.dataset import catalogue_from, sequences_from
from valuerec.data.schema import DataError
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
    model.set_never_recommend(["i3", "POST"])
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
    assert v.never_recommend_ == ("i3", "POST")      # the new version keeps the list of items never recommended
    rep2 = retrain(tmp_path / "m0", store_path, tmp_path / "versions", holdout_days=3, epochs=1, tolerance=1.0)
    assert rep2.version_dir.endswith("v0002")


def test_retrain_rejects_a_worse_candidate(tmp_path):
    ev = cyclic_events(20, 12)
    seen = ev[ev["timestamp"] < T0 + pd.Timedelta(days=10)]
    cat = catalogue_from(seen, None)
    from valuerec.models.popularity import Popularity
    Popularity().fit(sequences_from(seen, cat), cat).save(tmp_path / "pop")
    with EventStore(tmp_path / "s.duckdb") as st:
        st.add_events(ev)
    # an impossible bar: the candidate must beat the base by 1.0 NDCG
    rep = retrain(tmp_path / "pop", tmp_path / "s.duckdb", tmp_path / "versions", holdout_days=2, tolerance=-1.0)
    assert not rep.accepted and rep.version_dir is None
    assert not (tmp_path / "versions").exists() or not any((tmp_path / "versions").iterdir())


def _pop_and_store(tmp_path, model_days, store_days):
    from valuerec.models.popularity import Popularity
    seen = cyclic_events(10, model_days)
    cat = catalogue_from(seen, None)
    Popularity().fit(sequences_from(seen, cat), cat).save(tmp_path / "pop")
    with EventStore(tmp_path / "s.duckdb") as st:
        st.add_events(cyclic_events(10, store_days))
    return tmp_path / "pop", tmp_path / "s.duckdb"


def test_a_saved_model_records_the_events_it_learned_from(tmp_path):
    model, _ = _pop_and_store(tmp_path, 5, 5)
    span = load_model(model).trained_on_
    last = cyclic_events(10, 5)["timestamp"].max()
    assert span == {"from": T0.isoformat(), "until": last.isoformat(), "events": 50}
    # every registered model records it, also those whose fit comes from an unregistered parent
    from valuerec.models import MODEL_REGISTRY
    ev = cyclic_events(10, 5)
    cat = catalogue_from(ev, None)
    for name in ("als", "bpr", "itemknn", "repeat", "popularity-s3rec"):
        m = MODEL_REGISTRY[name]().fit(sequences_from(ev, cat), cat)
        assert m.trained_on_ == span, name


def test_retrain_with_nothing_new_trains_and_writes_nothing(tmp_path):
    model, store = _pop_and_store(tmp_path, 8, 8)
    rep = retrain(model, store, tmp_path / "versions", holdout_days=2)
    assert not rep.accepted and rep.version_dir is None and rep.base == {} and rep.candidate == {}
    assert rep.notes and rep.notes[0].startswith("nothing new") and rep.model_data_until == rep.store_until
    assert not (tmp_path / "versions").exists()


def test_retrain_refuses_a_store_that_ends_before_the_model(tmp_path):
    model, store = _pop_and_store(tmp_path, 8, 6)
    with pytest.raises(DataError, match=r"ends at 2024-01-06 04:00:00, before the events the model .* learned "
                                        r"from \(up to 2024-01-08 04:00:00\)"):
        retrain(model, store, tmp_path / "versions", holdout_days=2)
    assert not (tmp_path / "versions").exists()


def test_retrain_says_when_the_holdout_reaches_into_the_models_data(tmp_path):
    model, store = _pop_and_store(tmp_path, 8, 10)
    rep = retrain(model, store, tmp_path / "versions", holdout_days=4)
    # the store ends on 2024-01-10 04:00 and the model's data on 2024-01-08 04:00: 4 days back reach
    # into what the model learned from
    held = cyclic_events(10, 10)
    start = held["timestamp"].max() - pd.Timedelta(days=4)
    seen = int(((held["timestamp"] >= start) & (held["timestamp"] < T0 + pd.Timedelta(days=8))).sum())
    assert seen > 0
    assert any(f"learned from {seen} of the held-out events" in n and "--holdout-days below 2 holds" in n
               for n in rep.notes), rep.notes
    clean = retrain(model, store, tmp_path / "versions", holdout_days=1.9, tolerance=1.0)
    assert not any("held-out" in n for n in clean.notes) and clean.holdout_users == 10


def test_retrain_notes_a_store_of_items_the_model_never_saw(tmp_path):
    model, _ = _pop_and_store(tmp_path, 8, 8)
    other = cyclic_events(10, 12)
    other["item_id"] = "x" + other["item_id"]                  # the same shape of data, other items
    with EventStore(tmp_path / "other.duckdb") as st:
        st.add_events(other)
    rep = retrain(model, tmp_path / "other.duckdb", tmp_path / "versions", holdout_days=2)
    assert any("none of the store's 8 items is in the model's catalogue" in n for n in rep.notes), rep.notes
