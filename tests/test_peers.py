"""Peer implementations: the exported split hides the test targets, top-k lists are scored exactly as
full rankings are, and a peer script runs in another Python beside our models."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from valuerec.data.dataset import Catalogue, Sequences
from valuerec.data.schema import DataError
from valuerec.data.splits import EvalTask, Split
from valuerec.evaluation.metrics import evaluate
from valuerec.evaluation.peers import export_split, run_peer, score_top_lists
from valuerec.evaluation.protocols import R1

N = 40


def catalogue() -> Catalogue:
    return Catalogue(item_ids=np.array([f"i{i}" for i in range(N)], dtype=object))


def top_frame(lists) -> pd.DataFrame:
    """A peer's test_top.csv from each user's ranked items (user = row number, rank from 1)."""
    return pd.DataFrame([(u, r + 1, int(it)) for u, lst in enumerate(lists) for r, it in enumerate(lst)],
                        columns=["user", "rank", "item"])


def loo_split(n_users=60, seed=0) -> Split:
    rng = np.random.default_rng(seed)
    full = [rng.choice(N, size=int(rng.integers(3, 9)), replace=False).astype(np.int64) for _ in range(n_users)]
    ids = np.array([f"u{i}" for i in range(n_users)], dtype=object)
    seqs = (lambda xs: Sequences(items=xs, user_ids=ids))
    train = seqs([s[:-2] for s in full])
    valid = EvalTask(inputs=train, targets=[s[-2:-1] for s in full], exclude=[s[:-2] for s in full])
    test_in = seqs([s[:-1] for s in full])
    test = EvalTask(inputs=test_in, targets=[s[-1:] for s in full], exclude=[s[:-1] for s in full])
    return Split(catalogue=catalogue(), train=train, valid=valid, test=test, train_full=test_in, info={})


def test_top_lists_score_like_full_rankings():
    split = loo_split()
    task = split.test
    scores = torch.randn(len(task), N, generator=torch.Generator().manual_seed(1))
    excluded = scores.clone()
    for i, ex in enumerate(task.exclude):
        excluded[i, ex] = -torch.inf
    order = torch.argsort(excluded, dim=1, descending=True)[:, :20].numpy()
    top = top_frame(order)
    # a peer that (wrongly) lists a history item first: the protocol's exclusion drops it
    first_hist = pd.DataFrame([(u, 0, int(task.exclude[u][0])) for u in range(len(task))], columns=top.columns)
    top = pd.concat([first_hist, top])
    got = score_top_lists(top, task, np.arange(len(task)), N, ks=(10, 20), coverage_k=10)
    ref = evaluate(lambda h: scores[[int(u[1:]) for u in h.user_ids]], task, N, ks=(10, 20))
    for m in ("hr@10", "ndcg@10", "hr@20", "ndcg@20", "coverage@10"):
        assert got[m] == pytest.approx(ref[m], abs=1e-12), m
    assert "mrr" not in got


def test_export_hides_test_targets(tmp_path):
    split = loo_split()
    export_split(split, tmp_path, k=20, seed=3, params={"a": 1})
    test_in = pd.read_csv(tmp_path / "test_inputs.csv")
    users = np.load(tmp_path / "test_users.npy")
    # every test input is there, in order, and no test target is anywhere in the peer's files
    for i, s in enumerate(split.test.inputs.items):
        assert test_in[test_in.user == users[i]].sort_values("pos")["item"].tolist() == s.tolist()
    train = pd.read_csv(tmp_path / "train.csv")
    for i, t in enumerate(split.test.targets):
        u = users[i]
        assert t[0] not in set(train[train.user == u]["item"]) | set(test_in[test_in.user == u]["item"])
    assert json.loads((tmp_path / "spec.json").read_text()) == {"k": 20, "n_items": N, "seed": 3, "params": {"a": 1}}


POPULARITY_PEER = '''
import json, sys
from pathlib import Path
import pandas as pd
d = Path(sys.argv[1])
spec = json.loads((d / "spec.json").read_text())
train = pd.read_csv(d / "train.csv")
order = train["item"].value_counts().sort_index().sort_values(ascending=False, kind="stable").index.tolist()
inputs = pd.read_csv(d / "test_inputs.csv")
rows = []
for u, g in inputs.groupby("user"):
    seen = set(g["item"])
    rows += [(u, r + 1, it) for r, it in enumerate([i for i in order if i not in seen][: spec["k"]])]
pd.DataFrame(rows, columns=["user", "rank", "item"]).to_csv(d / "test_top.csv", index=False)
(d / "report.json").write_text(json.dumps({"library": "pandas", "params": spec["params"], "train_seconds": 0.1}))
'''


def test_run_peer_end_to_end(tmp_path):
    peers = tmp_path / "peers"
    peers.mkdir()
    (peers / "pop.py").write_text(POPULARITY_PEER)
    (peers / "broken.py").write_text("import sys; print('no luck'); sys.exit(3)")
    split = loo_split()
    entry = run_peer("pop", sys.executable, split, R1, seeds=[0, 1], params={"x": 1}, work_dir=tmp_path / "w",
                     peers_dir=peers)
    assert entry["seeds"] == [0, 1] and entry["params"] == {"x": 1} and "mrr" not in entry["metrics"]
    assert "peer implementation" in entry["note"]
    # the same lists scored directly
    top = pd.read_csv(tmp_path / "w" / "pop-seed0" / "test_top.csv")
    ref = score_top_lists(top, split.test, np.load(tmp_path / "w" / "pop-seed0" / "test_users.npy"), N, (10, 20), 10)
    assert entry["metrics"]["ndcg@10"] == pytest.approx(ref["ndcg@10"]) and ref["hr@20"] > 0
    with pytest.raises(DataError, match="exit 3"):
        run_peer("broken", sys.executable, split, R1, seeds=[0], work_dir=tmp_path / "w", peers_dir=peers)
    with pytest.raises(DataError, match="unknown peer"):
        run_peer("nope", sys.executable, split, R1, seeds=[0], peers_dir=peers)
    with pytest.raises(DataError, match="no Python"):
        run_peer("pop", tmp_path / "missing-python", split, R1, seeds=[0], peers_dir=peers)


def window_split(n_users=50, seed=0) -> Split:
    """R2-like: a target *set* per user with revenue, nothing excluded, and a train_full."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"u{i}" for i in range(n_users)], dtype=object)
    seqs = (lambda xs: Sequences(items=xs, user_ids=ids))
    early = [rng.integers(0, N, size=int(rng.integers(2, 8))).astype(np.int64) for _ in range(n_users)]
    later = [rng.integers(0, N, size=int(rng.integers(1, 6))).astype(np.int64) for _ in range(n_users)]
    train, full = seqs(early), seqs([np.concatenate([a, b]) for a, b in zip(early, later)])
    targets = [np.unique(rng.integers(0, N, size=int(rng.integers(1, 30)))) for _ in range(n_users)]
    revenue = [rng.uniform(1, 50, size=len(t)) for t in targets]
    total = np.array([r.sum() + rng.uniform(0, 20) for r in revenue])   # some spend on other items
    valid = EvalTask(inputs=train, targets=[s[-1:] for s in later], exclude=None)
    test = EvalTask(inputs=full, targets=targets, exclude=None, target_revenue=revenue, total_revenue=total)
    return Split(catalogue=catalogue(), train=train, valid=valid, test=test, train_full=full, info={})


def test_top_lists_score_sets_and_revenue_like_full_rankings():
    from valuerec.evaluation.protocols import R2
    split = window_split()
    task = split.test
    scores = torch.randn(len(task), N, generator=torch.Generator().manual_seed(2))
    order = torch.argsort(scores, dim=1, descending=True)[:, :20].numpy()
    top = top_frame(order)
    got = score_top_lists(top, task, np.arange(len(task)), N, ks=R2.ks, coverage_k=R2.coverage_k)
    ref = evaluate(lambda h: scores[[int(u[1:]) for u in h.user_ids]], task, N, ks=R2.ks, coverage_k=R2.coverage_k)
    for m in ("recall@20", "ndcg@20", "hr@20", "revenue@20", "coverage@20"):
        assert got[m] == pytest.approx(ref[m], abs=1e-12), m
    assert 0 < got["revenue@20"] < 1


def test_export_states_the_protocol_and_the_refit_histories(tmp_path):
    from valuerec.evaluation.protocols import R2
    split = window_split()
    export_split(split, tmp_path, k=20, seed=1, params={}, spec=R2)
    spec = json.loads((tmp_path / "spec.json").read_text())
    assert spec == {"k": 20, "n_items": N, "seed": 1, "params": {}, "protocol": "R2", "exclude_history": False,
                    "select_metric": "ndcg@20", "refit_full": True}
    full = pd.read_csv(tmp_path / "train_full.csv")
    users = np.load(tmp_path / "test_users.npy")
    for i, s in enumerate(split.train_full.items):
        assert full[full.user == users[i]].sort_values("pos")["item"].tolist() == s.tolist()
    # train_full in another order and with a user the evaluation does not have: rows map by user id
    order = np.arange(len(split.train_full))[::-1]
    shuffled = Sequences(items=[split.train_full.items[i] for i in order] + [np.array([1, 2, 3])],
                         user_ids=np.array([split.train_full.user_ids[i] for i in order] + ["new"], dtype=object))
    split.train_full = shuffled
    export_split(split, tmp_path / "ids", k=20, seed=1, params={}, spec=R2)
    full = pd.read_csv(tmp_path / "ids" / "train_full.csv")
    users = np.load(tmp_path / "ids" / "test_users.npy")
    for i, uid in enumerate(split.test.inputs.user_ids):
        j = list(shuffled.user_ids).index(uid)
        assert full[full.user == users[i]].sort_values("pos")["item"].tolist() == shuffled.items[j].tolist()
    assert full.user.nunique() == len(shuffled) and full.user.max() == len(shuffled) - 1   # the new user: a new id
    # R1 excludes the history; without a train_full there is nothing to refit on
    export_split(loo_split(), tmp_path / "r1", k=20, seed=0, params={}, spec=R1)
    assert json.loads((tmp_path / "r1" / "spec.json").read_text())["exclude_history"] is True
    no_full = window_split()
    no_full.train_full = None
    export_split(no_full, tmp_path / "nf", k=20, seed=0, params={}, spec=R2)
    assert json.loads((tmp_path / "nf" / "spec.json").read_text())["refit_full"] is False
    assert not (tmp_path / "nf" / "train_full.csv").exists()


def test_rectools_peer_validation_ndcg_matches_ours():
    """The RecTools peer stops early on its own NDCG; on target sets it must be the protocol's NDCG."""
    import importlib.util
    from valuerec.evaluation.metrics import ranking_metrics_from_ranks
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "peers" / "rectools_sasrec.py"
    mod_spec = importlib.util.spec_from_file_location("rectools_sasrec_peer", path)
    peer = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(peer)
    rng = np.random.default_rng(4)
    targets = [np.unique(rng.integers(0, N, size=int(rng.integers(1, 25)))) for _ in range(30)]
    lists = [rng.permutation(N)[:20] for _ in range(30)]
    lists[0] = np.array([t for t in range(N) if t not in set(targets[0])][:20])   # a user with no hit
    top = top_frame(lists)
    tgt = pd.DataFrame([(u, int(t)) for u, ts in enumerate(targets) for t in ts], columns=["user", "item"])
    ranks = np.full((30, max(map(len, targets))), np.inf)
    for u, ts in enumerate(targets):
        pos = {int(it): r + 1 for r, it in enumerate(lists[u])}
        ranks[u, :len(ts)] = [pos.get(int(t), np.inf) for t in ts]
    n_t = np.array([len(t) for t in targets])
    for k in (10, 20):
        ref = ranking_metrics_from_ranks(ranks, n_t, (k,))[f"ndcg@{k}"].mean()
        assert peer.ndcg_at(top, pd.concat([tgt, tgt.head(3)]), k) == pytest.approx(ref, abs=1e-12)
