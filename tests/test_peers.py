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


def loo_split(n_users=60, seed=0) -> Split:
    rng = np.random.default_rng(seed)
    full = [rng.choice(N, size=int(rng.integers(3, 9)), replace=False).astype(np.int64) for _ in range(n_users)]
    ids = np.array([f"u{i}" for i in range(n_users)], dtype=object)
    seqs = (lambda xs: Sequences(items=xs, user_ids=ids))
    train = seqs([s[:-2] for s in full])
    valid = EvalTask(inputs=train, targets=[s[-2:-1] for s in full], exclude=[s[:-2] for s in full])
    test_in = seqs([s[:-1] for s in full])
    test = EvalTask(inputs=test_in, targets=[s[-1:] for s in full], exclude=[s[:-1] for s in full])
    cat = Catalogue(item_ids=np.array([f"i{i}" for i in range(N)], dtype=object))
    return Split(catalogue=cat, train=train, valid=valid, test=test, train_full=test_in, info={})


def test_top_lists_score_like_full_rankings():
    split = loo_split()
    task = split.test
    scores = torch.randn(len(task), N, generator=torch.Generator().manual_seed(1))
    excluded = scores.clone()
    for i, ex in enumerate(task.exclude):
        excluded[i, ex] = -torch.inf
    order = torch.argsort(excluded, dim=1, descending=True)[:, :20].numpy()
    top = pd.DataFrame([(u, r + 1, int(it)) for u in range(len(task)) for r, it in enumerate(order[u])],
                       columns=["user", "rank", "item"])
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
