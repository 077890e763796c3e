"""Splits: leave-one-out and cut-off, on constructed data whose answer is known."""

import numpy as np
import pandas as pd
import pytest

from valuerec.data.schema import DataError
from valuerec.data.splits import cutoff_split, leave_one_out


def ev(rows):
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "event_type", "value"])
    df["timestamp"] = pd.to_datetime(df["timestamp"])
    df["quantity"] = 1.0
    return df


def test_leave_one_out_targets_inputs_and_exclusions():
    rows = [("u", i, f"2024-01-0{d}", "interaction", 0.0) for d, i in enumerate(["a", "b", "c", "d"], start=1)]
    rows += [("v", "b", "2024-01-01", "interaction", 0.0), ("v", "c", "2024-01-02", "interaction", 0.0)]
    sp = leave_one_out(ev(rows))
    cat = sp.catalogue
    ids = lambda xs: [cat.item_ids[i] for i in xs]  # noqa: E731
    assert ids(sp.train.items[0]) == ["a", "b"] and ids(sp.train_full.items[0]) == ["a", "b", "c"]
    assert len(sp.valid) == 1 and ids(sp.valid.targets[0]) == ["c"] and ids(sp.valid.exclude[0]) == ["a", "b"]
    assert len(sp.test) == 2 and ids(sp.test.targets[0]) == ["d"] and ids(sp.test.inputs.items[0]) == ["a", "b", "c"]
    assert ids(sp.test.targets[1]) == ["c"] and ids(sp.test.inputs.items[1]) == ["b"]


def test_cutoff_split_targets_catalogue_and_revenue():
    rows = [
        ("u", "a", "2024-01-05", "purchase", 5.0), ("u", "b", "2024-02-05", "purchase", 1.0),
        ("u", "a", "2024-03-05", "purchase", 2.0), ("u", "a", "2024-03-06", "purchase", 3.0),
        ("u", "new", "2024-03-07", "purchase", 10.0), ("u", "b", "2024-03-08", "return", 1.0),
        ("w", "b", "2024-03-09", "purchase", 4.0),  # no history before the cut-off: not evaluated
        ("x", "c", "2024-01-10", "purchase", 1.0), ("x", "c", "2024-02-10", "view", 0.0),
    ]
    sp = cutoff_split(ev(rows), None, cutoff="2024-03-01", valid_cutoff="2024-02-01")
    cat = sp.catalogue
    assert sorted(cat.item_ids) == ["a", "b", "c"]  # items in purchase history before the cut-off
    assert list(sp.test.inputs.user_ids) == ["u"]
    t = dict(zip([cat.item_ids[i] if i >= 0 else "?" for i in sp.test.targets[0]], sp.test.target_revenue[0]))
    assert t == {"a": 5.0, "?": 10.0}  # repeat purchase counts; the return does not; unknown item kept
    assert sp.test.total_revenue[0] == 15.0
    assert sp.test.exclude is None
    # validation: history before 2024-02-01, targets in [2024-02-01, 2024-03-01)
    assert list(sp.valid.inputs.user_ids) == ["u"] and [cat.item_ids[i] for i in sp.valid.targets[0]] == ["b"]
    assert sum(len(s) for s in sp.train.items) == 2  # u:a and x:c before the validation cut-off


def test_cutoff_outside_data_is_an_error():
    rows = [("u", "a", "2024-01-05", "purchase", 5.0), ("u", "b", "2024-02-05", "purchase", 1.0)]
    with pytest.raises(DataError, match="outside the data"):
        cutoff_split(ev(rows), None, cutoff="2025-01-01", valid_cutoff="2024-01-20")
    with pytest.raises(DataError, match="must be before"):
        cutoff_split(ev(rows), None, cutoff="2024-01-20", valid_cutoff="2024-02-01")


def test_empty_store_is_an_error():
    with pytest.raises(DataError, match="no events"):
        leave_one_out(ev([]))


@pytest.mark.parametrize("unknown", ["drop", "keep"])
@pytest.mark.parametrize("presorted", [True, False])
def test_sequences_from_matches_a_plain_reference(unknown, presorted):
    """The vectorised grouping gives what a row-by-row reading gives: sorted by user, time and
    arrival; unknown or missing items dropped or kept as -1; unknown event types as 'other'."""
    from valuerec.data.dataset import Catalogue, sequences_from
    from valuerec.data.schema import EVENT_TYPE_CODE

    rng = np.random.default_rng(3)
    n = 400
    ev = pd.DataFrame({"user_id": [f"u{i}" for i in rng.integers(0, 30, n)],
                       "item_id": [None if r < 0.05 else f"i{int(r * 100)}" for r in rng.random(n)],
                       "timestamp": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 50, n), unit="h"),
                       "event_type": rng.choice(["view", "purchase", "weird", "cart"], n),
                       "value": rng.random(n).astype(np.float32), "seq": np.arange(n)})
    if presorted:
        ev = ev.sort_values(["user_id", "timestamp", "seq"]).reset_index(drop=True)
    cat = Catalogue(item_ids=np.array([f"i{i}" for i in range(0, 100, 2)], dtype=object))   # half the items
    users = np.array([f"u{i}" for i in range(32)], dtype=object)                              # u30, u31: none
    got = sequences_from(ev, cat, users=users, unknown_items=unknown)
    ref = ev.sort_values(["user_id", "timestamp", "seq"], kind="stable")
    for j, u in enumerate(users):
        rows = ref[ref["user_id"] == u]
        idx = np.array([cat.index.get(i, -1) if i is not None else -1 for i in rows["item_id"]], dtype=np.int64)
        keep = idx >= 0 if unknown == "drop" else np.ones(len(idx), bool)
        np.testing.assert_array_equal(got.items[j], idx[keep])
        np.testing.assert_array_equal(got.times[j], rows["timestamp"].astype("datetime64[s]").astype("int64")
                                      .to_numpy()[keep])
        np.testing.assert_array_equal(got.event_types[j], np.array(
            [EVENT_TYPE_CODE.get(t, EVENT_TYPE_CODE["other"]) for t in rows["event_type"]], dtype=np.int64)[keep])
        np.testing.assert_array_equal(got.values[j], rows["value"].to_numpy(np.float32)[keep])
