"""Peer implementations run on our split, in their own virtual environments, beside our models.

A peer is a script ``benchmarks/peers/<name>.py`` run by another Python (its own venv, so its
dependencies never meet ours). It gets the split as files and returns top-k lists; it never sees the
test targets, and our code scores its lists with the protocol's metrics:

- in ``DIR``: ``train.csv`` (user, item, pos: what it fits on), ``valid_inputs.csv`` and
  ``valid_targets.csv`` (for its own early stopping; a target set per user, one row per item),
  ``test_inputs.csv`` (the histories to recommend for), ``spec.json``: ``k``, ``n_items``, ``seed``,
  ``params``, and the protocol's rules: ``protocol`` (R1, R2), ``exclude_history`` (whether the input
  history is excluded from the ranking: R1 yes, R2 no, repeat buying counts), ``select_metric`` (what
  its early stopping reads, e.g. ``ndcg@20``) and ``refit_full``;
- with ``refit_full``: ``train_full.csv``, the histories our models refit on after choosing their epoch
  count on validation (R2: everything before the test cut-off). A peer does the same: it refits a fresh
  model on it for its best validation epoch count before recommending for the test users;
- out: ``test_top.csv`` (user, rank, item: its top-k per test user) and ``report.json`` (library
  version, params, training seconds, validation curve).

Users and items are valuerec's integer indices; ``pos`` orders each user's events. Ranks beyond k are
unknown, so MRR is not reported for a peer; HR, NDCG, recall and revenue at k' <= k and coverage are
exact. Items a peer lists that the protocol excludes (the input history on R1) are dropped from its
list before scoring.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console

from valuerec.data.dataset import Sequences
from valuerec.data.schema import DataError
from valuerec.data.splits import EvalTask, Split
from valuerec.evaluation.metrics import ranking_metrics_from_ranks
from valuerec.evaluation.results import aggregate_seeds

PEERS_DIR = Path(__file__).resolve().parents[3] / "benchmarks" / "peers"


def _history_frame(seqs: Sequences, users: np.ndarray) -> pd.DataFrame:
    rows = [(int(users[u]), int(it), p) for u, s in enumerate(seqs.items) for p, it in enumerate(s) if it >= 0]
    return pd.DataFrame(rows, columns=["user", "item", "pos"])


def export_split(split: Split, d: Path, k: int, seed: int, params: dict, spec=None) -> None:
    """Write the split files of the peer protocol into ``d`` (user ids are row numbers of
    ``split.train`` / the evaluation tasks, shared where the user id matches). ``spec``, the
    ``ProtocolSpec``, adds its rules to spec.json (and train_full.csv when it refits)."""
    d.mkdir(parents=True, exist_ok=True)
    ids: dict[str, int] = {}

    def index_of(seqs: Sequences) -> np.ndarray:
        names = seqs.user_ids if seqs.user_ids is not None else [f"row{i}" for i in range(len(seqs))]
        return np.array([ids.setdefault(str(u), len(ids)) for u in names], dtype=np.int64)

    _history_frame(split.train, index_of(split.train)).to_csv(d / "train.csv", index=False)
    vu = index_of(split.valid.inputs)
    _history_frame(split.valid.inputs, vu).to_csv(d / "valid_inputs.csv", index=False)
    pd.DataFrame([(int(vu[i]), int(t)) for i, ts in enumerate(split.valid.targets) for t in ts],
                 columns=["user", "item"]).to_csv(d / "valid_targets.csv", index=False)
    tu = index_of(split.test.inputs)
    _history_frame(split.test.inputs, tu).to_csv(d / "test_inputs.csv", index=False)
    np.save(d / "test_users.npy", tu)   # ours, to map the lists back; the peer does not read it
    rules = {}
    if spec is not None:
        refit = bool(spec.refit_full) and split.train_full is not None
        rules = {"protocol": spec.name, "exclude_history": split.test.exclude is not None,
                 "select_metric": spec.select_metric, "refit_full": refit}
        if refit:
            _history_frame(split.train_full, index_of(split.train_full)).to_csv(d / "train_full.csv", index=False)
    (d / "spec.json").write_text(json.dumps({"k": k, "n_items": len(split.catalogue), "seed": seed,
                                             "params": params, **rules}))


def score_top_lists(top: pd.DataFrame, task: EvalTask, task_users: np.ndarray, n_items: int,
                    ks: tuple[int, ...], coverage_k: int) -> dict:
    """Protocol metrics of per-user top-k lists (ranks beyond the list are 'not found')."""
    k_max = max(ks)
    lists: dict[int, list[int]] = {}
    for u, it in top.sort_values(["user", "rank"])[["user", "item"]].itertuples(index=False):
        lists.setdefault(int(u), []).append(int(it))
    T = max(1, max(len(t) for t in task.targets))
    ranks = np.full((len(task), T), np.inf)
    seen = set()
    n_t = np.array([len(t) for t in task.targets])
    for i, u in enumerate(task_users):
        excl = set(map(int, task.exclude[i])) if task.exclude is not None else set()
        lst = [it for it in lists.get(int(u), []) if it not in excl][:k_max]
        seen.update(lst[:coverage_k])
        pos = {it: r + 1 for r, it in enumerate(lst)}
        for j, t in enumerate(task.targets[i]):
            ranks[i, j] = pos.get(int(t), np.inf)
    rev = None
    if task.target_revenue is not None and task.total_revenue is not None:
        rev = np.zeros(ranks.shape)
        for i, r in enumerate(task.target_revenue):
            rev[i, :len(r)] = r
    per_user = ranking_metrics_from_ranks(ranks, n_t, ks, rev, task.total_revenue if rev is not None else None)
    out = {m: float(v.mean()) for m, v in per_user.items() if m != "mrr"}
    out[f"coverage@{coverage_k}"] = len(seen) / max(n_items, 1)
    return out


def run_peer(name: str, python: str | Path, split: Split, spec, seeds: list[int], params: dict | None = None,
             work_dir: str | Path = "runs/peers", console: Console | None = None,
             peers_dir: str | Path = PEERS_DIR) -> dict:
    """Run peer ``name`` once per seed on ``split``; the result entry has the same layout as ours."""
    console = console or Console(stderr=True)
    peers_dir = Path(peers_dir)
    script = peers_dir / f"{name}.py"
    if not script.exists():
        known = sorted(p.stem for p in peers_dir.glob("*.py"))
        raise DataError(f"unknown peer {name!r}: no {script}; known: {known}")
    if not Path(python).exists():
        raise DataError(f"peer {name}: no Python at {python} (create its venv, e.g. "
                        f"benchmarks/peers/setup.sh rectools)")
    k = max(spec.ks)
    metrics = [m for m in spec.metrics if m != "mrr"]
    runs, reports = [], []
    for seed in seeds:
        d = Path(work_dir) / f"{name}-seed{seed}"
        export_split(split, d, k, seed, params or {}, spec)
        console.log(f"peer {name} seed {seed}: {python} {script} {d}")
        t0 = time.perf_counter()
        with open(d / "peer.log", "w") as log_file:   # written as it runs: follow it with tail -f
            proc = subprocess.run([str(python), str(script), str(d)], stdout=log_file, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise DataError(f"peer {name} seed {seed} failed (exit {proc.returncode}); last output:\n"
                            + (d / "peer.log").read_text()[-2000:])
        report = json.loads((d / "report.json").read_text())
        r = score_top_lists(pd.read_csv(d / "test_top.csv"), split.test, np.load(d / "test_users.npy"),
                            len(split.catalogue), spec.ks, spec.coverage_k)
        runs.append({"seed": seed, "metrics": {m: r[m] for m in metrics if m in r},
                     "train_seconds": float(report.get("train_seconds", wall)),
                     "eval_seconds": float(report.get("recommend_seconds", 0.0)), "wall_seconds": wall})
        reports.append(report)
        console.log(f"peer {name} test seed {seed}: " + ", ".join(f"{m}={r[m]:.4f}" for m in metrics if m in r)
                    + f" (wall {wall:.0f}s)")
    entry = aggregate_seeds(runs, metrics)
    first = reports[0]
    entry.update({
        "params": first.get("params", {}), "peer": {"script": f"benchmarks/peers/{script.name}" if peers_dir == PEERS_DIR else str(script),
                                                   "library": first.get("library"), "torch": first.get("torch"),
                                                   "model": first.get("model")},
        "epochs_run": first.get("epochs_run"), "best_epoch": first.get("best_epoch"), "refit": first.get("refit"),
        "seconds_per_epoch": first.get("seconds_per_epoch"), "seconds_to_best": first.get("seconds_to_best"),
        "validation": {"peer_curves": [r.get("validation") for r in reports]},
        "note": (f"peer implementation ({first.get('library')}, {first.get('model')}) in its own virtual "
                 f"environment, on the same split; it stops early on validation {spec.select_metric} itself"
                 + (", then refits on train_full for its best epoch count, as ours do" if first.get("refit") else
                    ", and does not refit on train_full" if spec.refit_full else "")
                 + "; metrics are "
                 f"computed by valuerec from its top-{k} lists (MRR is not reported: ranks beyond {k} are unknown)"),
    })
    return entry
