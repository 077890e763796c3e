"""`valuerec bench recs`: the R1 / R2 ranking protocols on any store (leave-one-out or a cut-off, the
history excluded or kept, the list lengths asked), the transformer beside the baselines; and its errors."""

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from valuerec.cli import app
from valuerec.data.dataset import Sequences
from valuerec.data.splits import EvalTask, with_history_exclusion
from valuerec.data.store import EventStore
from valuerec.demo import demo_data_path

runner = CliRunner()


@pytest.fixture(scope="module")
def retail_store(tmp_path_factory):
    d = tmp_path_factory.mktemp("recs")
    r = runner.invoke(app, ["ingest", str(demo_data_path()), "--store", str(d / "retail.duckdb")])
    assert r.exit_code == 0, r.output
    return d, d / "retail.duckdb"


def _run(args):
    r = runner.invoke(app, ["bench", "recs", *args])
    return r.exit_code, r.output


def test_leave_one_out_with_the_transformer_beside_baselines(retail_store):
    d, store = retail_store
    out = d / "loo.json"
    code, output = _run(["--store", str(store), "--models", "popularity,itemknn,transformer", "--seeds", "1",
                         "--k", "5,10", "--out", str(out), "--params",
                         '{"transformer": {"epochs": 2, "d_model": 16, "n_layers": 1, "use_text": false}}'])
    assert code == 0, output
    res = json.loads(out.read_text())
    assert res["protocol"] == "recs-loo" and res["selection_metric"] == "ndcg@5"
    assert res["split"]["exclude_history"] is True
    assert {"hr@5", "ndcg@5", "hr@10", "ndcg@10", "mrr", "coverage@5"} <= set(res["metric_names"])
    assert set(res["models"]) == {"popularity", "itemknn", "transformer"}
    tr = res["models"]["transformer"]
    # the protocol's defaults reach the transformer: it stops on the metric models are chosen on
    assert tr["params"]["monitor"] == "ndcg@5"
    assert tr["final_fit_on"].startswith("train_full for")        # refitted, as R1 and R2 are
    for m in res["models"].values():
        assert 0.0 <= m["metrics"]["ndcg@5"] <= m["metrics"]["hr@5"] <= m["metrics"]["hr@10"] <= 1.0
    # a popularity list is worse than item-kNN on next order lines (sanity, not a tuned comparison)
    assert res["models"]["itemknn"]["metrics"]["hr@10"] > res["models"]["popularity"]["metrics"]["hr@10"]


@pytest.mark.parametrize("history", ["keep", "exclude"])
def test_cut_off_split_keeps_or_excludes_the_history(retail_store, history):
    d, store = retail_store
    out = d / f"cut_{history}.json"
    code, output = _run(["--store", str(store), "--cutoff", "2011-09-09", "--valid-cutoff", "2011-06-09",
                         f"--{history}-history", "--models", "popularity,repeat", "--k", "20", "--out", str(out)])
    assert code == 0, output
    res = json.loads(out.read_text())
    assert res["protocol"] == "recs-cutoff" and "revenue@20" in res["metric_names"]
    assert res["split"]["exclude_history"] is (history == "exclude")
    rep, pop = res["models"]["repeat"]["metrics"], res["models"]["popularity"]["metrics"]
    if history == "keep":    # repeat buying: the customer's own items beat the best sellers
        assert rep["ndcg@20"] > 2 * pop["ndcg@20"]
    else:                    # past items excluded: 'repeat' has only its popularity fallback left
        assert rep["ndcg@20"] == pytest.approx(pop["ndcg@20"])


def test_leave_one_out_leaves_returns_out(retail_store):
    """A return is not the next interest: on a store with returns, no test target is a returned line."""
    from valuerec.commands.train import load_split
    d, store = retail_store
    split, used = load_split(None, store, "loo", None, None, d / "cache")
    with EventStore(store, read_only=True) as st:
        ev = st.events()
    assert (ev["event_type"] == "return").any() and used == "loo"
    kept = ev[ev["event_type"] != "return"]
    last = kept.groupby("user_id").tail(1).set_index("user_id")["item_id"]
    got = {str(u): str(split.catalogue.item_ids[t[0]]) for u, t in zip(split.test.inputs.user_ids, split.test.targets)}
    assert got == {u: str(last[u]) for u in got}


def test_history_exclusion_drops_reachable_nothing():
    """Excluded items leave the targets; users with no new target leave the task; revenue stays aligned."""
    inputs = Sequences(items=[np.array([0, 1]), np.array([2]), np.array([3, 4])],
                       times=[np.array([1, 2]), np.array([1]), np.array([1, 2])])
    task = EvalTask(inputs=inputs, targets=[np.array([1, 5, -1]), np.array([2]), np.array([6])],
                    target_revenue=[np.array([10.0, 20.0, 30.0]), np.array([5.0]), np.array([7.0])],
                    total_revenue=np.array([60.0, 5.0, 7.0]))
    ex = with_history_exclusion(task, True)
    assert len(ex) == 2                                   # user 1 bought only what they had
    assert [t.tolist() for t in ex.targets] == [[5, -1], [6]]
    assert [r.tolist() for r in ex.target_revenue] == [[20.0, 30.0], [7.0]]
    assert ex.total_revenue.tolist() == [60.0, 7.0]       # the share is still of all holdout spend
    assert [e.tolist() for e in ex.exclude] == [[0, 1], [3, 4]]
    kept = with_history_exclusion(task, False)
    assert len(kept) == 3 and kept.exclude is None


def test_a_content_log_without_purchases_is_split_on_every_event(tmp_path):
    """Views only: a cut-off split takes every event type as history and target (before, it found no
    purchase and had nobody to evaluate)."""
    rng = np.random.default_rng(0)
    rows = []
    for u in range(60):
        t0 = pd.Timestamp("2024-01-01") + pd.Timedelta(days=int(rng.integers(0, 30)))
        for j in range(8):
            rows.append((f"u{u}", f"i{(u + j) % 15}", t0 + pd.Timedelta(days=20 * j), "view"))
    ev = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "event_type"])
    ev["value"], ev["quantity"] = 0.0, 1.0
    with EventStore(tmp_path / "views.duckdb") as st:
        st.add_events(ev)
    code, output = _run(["--store", str(tmp_path / "views.duckdb"), "--cutoff", "2024-04-01", "--valid-cutoff",
                         "2024-03-01", "--exclude-history", "--models", "popularity,itemknn", "--seeds", "1",
                         "--out", str(tmp_path / "v.json")])
    assert code == 0, output
    res = json.loads((tmp_path / "v.json").read_text())
    assert res["split"]["test_users"] > 20
    assert "revenue@10" not in res["metric_names"]        # no spend in the log: no revenue share to report
    # the default k=10,20 against 15 items: said so, in the run and in the file
    assert any("k=20 is at least the catalogue's 15 items" in w for w in res["split"]["warnings"])
    code, output = _run(["--store", str(tmp_path / "views.duckdb"), "--cutoff", "2024-06-10", "--valid-cutoff",
                         "2024-04-01", "--models", "popularity", "--k", "5", "--out", str(tmp_path / "few.json")])
    few = json.loads((tmp_path / "few.json").read_text())["split"]
    assert code == 0 and few["test_users"] < 50 and any("test users: the figures" in w for w in few["warnings"])
    assert res["models"]["itemknn"]["metrics"]["hr@10"] > 0


@pytest.mark.parametrize("args, message", [
    (["--cutoff", "2011-09-09"], "needs --cutoff and --valid-cutoff"),
    (["--protocol", "cutoff", "--valid-cutoff", "2011-06-09"], "needs --cutoff and --valid-cutoff"),
    (["--cutoff", "2011-06-09", "--valid-cutoff", "2011-09-09"], "must be before --cutoff"),
    (["--protocol", "loo", "--cutoff", "2011-09-09"], "belong to --protocol cutoff"),
    (["--protocol", "random"], "expected loo or cutoff"),
    (["--k", "0"], "expected comma-separated positive integers"),
    (["--k", "ten"], "expected comma-separated positive integers"),
    (["--cutoff", "2030-01-01", "--valid-cutoff", "2011-06-09"], "outside the data"),
])
def test_bad_options_are_refused_before_any_training(retail_store, args, message):
    d, store = retail_store
    code, output = _run(["--store", str(store), "--models", "popularity", "--seeds", "1", *args])
    assert code == 2 and message in " ".join(output.split()), output


def test_a_value_only_log_has_nothing_to_rank(tmp_path):
    ev = pd.DataFrame({"user_id": ["a", "a", "b", "b", "c", "c"], "item_id": [None] * 6,
                       "timestamp": pd.to_datetime(["2024-01-01", "2024-02-01"] * 3), "event_type": "purchase",
                       "value": 5.0, "quantity": 1.0})
    with EventStore(tmp_path / "pay.duckdb") as st:
        st.add_events(ev)
    code, output = _run(["--store", str(tmp_path / "pay.duckdb"), "--models", "popularity"])
    assert code == 2 and "no item ids" in output and "bench value" in output, output


def test_train_leave_one_out_counts_only_reachable_targets_as_bench_recs(tmp_path):
    """train's leave-one-out excluded each user's past items from the ranking but kept users whose next
    item was one of them: a target no model can reach, counted as a miss (48 users against bench recs'
    14 on a content log). Those users now leave train's validation and test, as in bench recs."""
    t = pd.Timestamp("2024-01-01")
    rows = []
    for u in range(12):
        seq = [f"i{(u + j) % 7}" for j in range(4)]
        if u % 3 == 0:
            seq.append(seq[0])                        # the last (test) item repeats the history
        rows += [(f"u{u}", it, t + pd.Timedelta(days=j), "view") for j, it in enumerate(seq)]
    ev = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "event_type"])
    store = tmp_path / "s.duckdb"
    with EventStore(store) as st:
        st.add_events(ev)
    r = runner.invoke(app, ["train", "--store", str(store), "--model", "popularity", "--out", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    test = json.loads((tmp_path / "m" / "metrics.json").read_text())["test"]
    assert test["users"] == 8                         # 12 users, 4 of whose next item repeats their history
    code, output = _run(["--store", str(store), "--models", "popularity", "--seeds", "1", "--out",
                         str(tmp_path / "b.json")])
    assert code == 0, output
    assert json.loads((tmp_path / "b.json").read_text())["split"]["test_users"] == test["users"]


def test_train_keeps_excluding_history_when_only_validation_is_empty(tmp_path):
    """Users with two events take part in test only: an empty validation task is no reason to rank past
    items in test (train fell back for both tasks and said every next item repeated the history)."""
    t = pd.Timestamp("2024-01-01")
    rows = [(f"u{u}", f"i{(u + j) % 9}", t + pd.Timedelta(days=j), "view") for u in range(30) for j in range(2)]
    store = tmp_path / "s.duckdb"
    with EventStore(store) as st:
        st.add_events(pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "event_type"]))
    r = runner.invoke(app, ["train", "--store", str(store), "--model", "itemknn", "--out", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    assert "is new to them" not in r.output
    assert json.loads((tmp_path / "m" / "metrics.json").read_text())["test"]["users"] == 30
