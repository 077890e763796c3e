"""Probe: how much of V1's ranking of models rests on a handful of customers?

Normalized Gini sums holdout revenue along each model's ordering, so a customer who spends a large share
of the quarter's revenue moves it far by where a model places them. On V1's test quarter two customers
spend 8% of the population's holdout revenue between them, and both looked small before the cut-off.
One of them has a single order of a few pounds before it and one order line of 168,469.60 on the last
day of the data, returned in full the same day. V1 counts purchases only, so that line is holdout
revenue. This probe refits each V1 model with the parameters V1 chose (read from
``v1_online_retail.json``), on both cut-offs, and reports beside the protocol's Gini:

- ``gini_without_top<k>``: Gini over the population less the k largest holdout spenders;
- ``gini_net``: Gini against holdout revenue net of the holdout's returns (floored at 0), which
  removes orders cancelled inside the window;
- ``top_spenders``: for the 5 largest holdout spenders, their share of the holdout revenue, their
  spend before the cut-off and the percentile each model places them at (1 = predicted highest).

It changes no protocol and chooses nothing: V1's figures stay as they are. It says how far a test-quarter
Gini can be read as a ranking of models. Writes ``benchmarks/results/v1_outlier_probe.json``.

    python benchmarks/v1_outlier_probe.py --seeds 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import rankdata

sys.path.insert(0, str(Path(__file__).resolve().parent))
from v1_btyd_probe import load_v1_tasks, seed_summary  # noqa: E402

from valuerec.data.store import EventStore  # noqa: E402
from valuerec.evaluation.protocols import cached_store, resolve_online_retail_data  # noqa: E402
from valuerec.evaluation.results import command_line, device_info, git_commit, now_iso, write_result  # noqa: E402
from valuerec.evaluation.value_metrics import normalized_gini, roc_auc, spearman  # noqa: E402
from valuerec.features.rfm import rfm_from_sequences  # noqa: E402
from valuerec.models.value_baselines import VALUE_MODEL_REGISTRY  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DROP = (1, 2, 5, 10)
DETERMINISTIC = ("past_spend", "bgnbd_gg")   # one run: their predictions do not depend on the seed


def net_revenue(events, task) -> np.ndarray:
    """Holdout purchases less holdout returns per customer of ``task``, floored at 0."""
    w = task.window
    ev = events[w.contains(events["timestamp"])]
    users = task.labels.user_ids
    sign = np.where(ev["event_type"] == "purchase", 1.0, np.where(ev["event_type"] == "return", -1.0, 0.0))
    net = (ev.assign(v=sign * ev["value"].to_numpy()).groupby(ev["user_id"].astype(str))["v"].sum()
           .reindex(users, fill_value=0.0).to_numpy(np.float64))
    return np.maximum(net, 0.0)


def past_spend(task) -> np.ndarray:
    """Purchase revenue before the cut-off, per customer of ``task`` (in the order of its labels)."""
    return rfm_from_sequences(task.histories, task.as_of)["total_revenue"].to_numpy(np.float64)


def scores(pred: np.ndarray, rev: np.ndarray, net: np.ndarray, churned: np.ndarray, churn_prob: np.ndarray) -> dict:
    order = np.argsort(-rev, kind="stable")
    out = {"gini": normalized_gini(rev, pred), "spearman": spearman(rev, pred), "auc": roc_auc(churned, churn_prob),
           "gini_net": normalized_gini(net, pred)}
    for k in DROP:
        keep = np.ones(len(rev), bool)
        keep[order[:k]] = False
        out[f"gini_without_top{k}"] = normalized_gini(rev[keep], pred[keep])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "online-retail"))
    ap.add_argument("--params-from", type=Path, default=REPO / "benchmarks" / "results" / "v1_online_retail.json")
    ap.add_argument("--models", default="past_spend,bgnbd_gg,lightgbm,ziln_mlp,transformer")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "v1_outlier_probe.json")
    args = ap.parse_args(argv)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    chosen = json.loads(args.params_from.read_text())["models"]
    unknown = [m for m in names if m not in VALUE_MODEL_REGISTRY or m not in chosen]
    if unknown:
        ap.error(f"model(s) {unknown} not in the registry or not in {args.params_from}")
    if args.seeds < 1:
        ap.error("--seeds must be >= 1")
    torch.set_num_threads(1)
    started, t_start = now_iso(), time.perf_counter()
    tasks, sha = load_v1_tasks(args.data)
    store, _ = cached_store(resolve_online_retail_data(args.data), "online-retail", cache_dir=REPO / "runs" / "stores")
    with EventStore(store, read_only=True) as st:
        events = st.events()
    nets = {s: net_revenue(events, t) for s, t in tasks.items()}
    top5 = {s: np.argsort(-t.labels.revenue, kind="stable")[:5] for s, t in tasks.items()}
    split_info = {}
    for s, t in tasks.items():
        rev = t.labels.revenue
        before = past_spend(t)
        split_info[s] = {
            **t.info(), "net_holdout_revenue": float(nets[s].sum()),
            "top_spenders": [{"user_id": str(t.labels.user_ids[i]), "holdout_revenue": float(rev[i]),
                              "share_of_holdout_revenue": float(rev[i] / rev.sum()),
                              "net_holdout_revenue": float(nets[s][i]), "revenue_before_cutoff": float(before[i])}
                             for i in top5[s]]}
    models = {}
    for name in names:
        params = {k: v for k, v in chosen[name]["params"].items() if k != "seed"}
        seeds = [0] if name in DETERMINISTIC else list(range(args.seeds))
        per = {s: [] for s in tasks}
        pct = {s: [] for s in tasks}
        secs = []
        for seed in seeds:
            for s, t in tasks.items():
                t0 = time.perf_counter()
                m = VALUE_MODEL_REGISTRY[name](seed=seed, **params)
                m.fit_value(t.fit_histories, t.as_of, t.window.horizon_days, catalogue=t.catalogue)
                p = m.predict_value(t.histories, np.full(len(t.histories), t.as_of, dtype=np.int64))
                secs.append(time.perf_counter() - t0)
                ev = np.asarray(p["expected_value"], dtype=np.float64)
                per[s].append(scores(ev, t.labels.revenue, nets[s], t.labels.churned, np.asarray(p["churn_prob"])))
                # percentile rank of each top spender in this model's ordering (ties share the mean rank)
                r = (rankdata(ev) - 1) / max(len(ev) - 1, 1)
                pct[s].append([float(r[i]) for i in top5[s]])
                print(f"{name} seed {seed} {s}: " + " ".join(f"{k} {v:.4f}" for k, v in per[s][-1].items())
                      + f" ({secs[-1]:.0f}s)", file=sys.stderr)
        models[name] = {
            **seed_summary(per), "metrics_per_seed": per,
            "top_spender_percentiles": {s: np.mean(pct[s], axis=0).round(4).tolist() for s in pct},
            "seeds": seeds, "train_seconds": float(np.median(secs)), "params": chosen[name]["params"]}
    result = {"protocol": "V1-probe", "dataset": "online-retail", "data_sha256": sha,
              "git_commit": git_commit(), "command": command_line(), "device": device_info("cpu"),
              "started_at": started, "wall_seconds": time.perf_counter() - t_start,
              "description": ("probe: V1's models with the parameters V1 chose, scored with and without the largest "
                              "holdout spenders and against holdout revenue net of returns; metrics on the test "
                              "cut-off, validation_metrics on the validation cut-off"),
              "params_from": str(args.params_from.relative_to(REPO) if args.params_from.is_relative_to(REPO)
                                 else args.params_from),
              "split": split_info, "models": models}
    write_result(args.out, result)
    for k, v in models.items():
        m = v["metrics"]
        print(f"{k:12s} test gini {m['gini']:.4f} without top2 {m['gini_without_top2']:.4f} "
              f"net {m['gini_net']:.4f} | top-5 percentiles {v['top_spender_percentiles']['test']}", file=sys.stderr)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
