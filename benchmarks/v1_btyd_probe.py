"""V1 probe: do supervised models beat BG/NBD x Gamma-Gamma once they are given its predictions?

On V1 (Online Retail, test cut-off 2011-09-09, validation cut-off 2011-06-09, 91-day horizon) the
label-free BG/NBD x Gamma-Gamma ranks customers better on the test quarter than every supervised
model, the behaviour transformer included, while on the validation quarter it is the other way round
(``v1_online_retail.json``). This probe asks whether the supervised models only lack what BG/NBD
knows. Per cut-off (validation, then test), with every label of a model's training inside the data
before that cut-off:

- ``bgnbd_gg`` and ``lightgbm`` (RFM features): the registered baselines, as in the V1 benchmark;
- ``lightgbm+btyd``: LightGBM (Tweedie) on the RFM features plus BG/NBD's expected purchases,
  P(alive), P(no purchase), the Gamma-Gamma spend and their product, the expected value; for
  training, BG/NBD is fitted on the data before the training window's start and read there;
- ``lightgbm_btyd_offset``: the same features, with log(BG/NBD expected value) as the initial score,
  so the trees learn a multiplicative correction of BG/NBD rather than a value from scratch.

Three seeds for the LightGBM models (bagging); normalized Gini and Spearman on both cut-offs. The
question is answered by the validation column against the test column: what validation prefers.

    python benchmarks/v1_btyd_probe.py --data ../shared/data/online-retail
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from valuerec.evaluation.protocols import cached_store, resolve_online_retail_data
from valuerec.evaluation.results import command_line, device_info, git_commit, now_iso, write_result
from valuerec.evaluation.value_metrics import value_metrics
from valuerec.evaluation.value_protocol import V1_CUTOFF, V1_VAL_CUTOFF, build_tasks
from valuerec.features.labels import labels_from_sequences
from valuerec.features.rfm import FEATURES, rfm_from_sequences
from valuerec.models.value_baselines import (VALUE_MODEL_REGISTRY, bgnbd_expected_purchases, bgnbd_p_alive,
                                             bgnbd_p_no_purchase, fit_bgnbd_gg, gg_expected_spend)

REPO = Path(__file__).resolve().parents[1]
DAY = 86400
BTYD = ["btyd_purchases", "btyd_p_alive", "btyd_p_none", "btyd_spend", "btyd_value"]
METRICS = ("gini", "spearman")


def seed_summary(per: dict[str, list[dict]]) -> dict:
    """Per-seed metric dicts of the "valid" and "test" cut-offs as a result entry: their means under
    ``metrics`` (test) and ``validation_metrics``, the spread over seeds on test under ``metrics_std``."""
    keys = list(per["test"][0])
    mean = {s: {k: float(np.mean([r[k] for r in per[s]])) for k in keys} for s in per}
    return {"metrics": mean["test"], "validation_metrics": mean["valid"],
            "metrics_std": {k: float(np.std([r[k] for r in per["test"]])) for k in keys}}


def btyd_features(histories, as_of: int, horizon_days: float, params: dict | None = None):
    """RFM + BG/NBD x Gamma-Gamma features of every history as of ``as_of`` (BG/NBD fitted on the
    customers with a purchase before it unless ``params`` are given); rows without a purchase dropped."""
    f = rfm_from_sequences(histories, as_of)
    keep = f["has_purchase"].to_numpy()
    f = f[keep]
    x, tx, T, m = (f[c].to_numpy(np.float64) for c in ("frequency", "recency", "T", "monetary_value"))
    P = params or fit_bgnbd_gg(x, tx, T, m)
    bg = (P["r"], P["alpha"], P["a"], P["b"])
    n = bgnbd_expected_purchases(horizon_days, x, tx, T, *bg)
    spend = gg_expected_spend(x, m, P["p"], P["q"], P["v"])
    X = f[FEATURES].reset_index(drop=True).assign(
        btyd_purchases=n, btyd_p_alive=bgnbd_p_alive(x, tx, T, *bg),
        btyd_p_none=bgnbd_p_no_purchase(horizon_days, x, tx, T, *bg), btyd_spend=spend, btyd_value=n * spend)
    return X, keep, P


def fit_predict_lgb(task, seed: int, offset: bool) -> np.ndarray:
    import lightgbm as lgb

    H, cut = task.window.horizon_days, task.as_of
    start = cut - int(round(H * DAY))
    Xtr, keep, _ = btyd_features(task.fit_histories, start, H)
    rev, _ = labels_from_sequences(task.fit_histories, start, cut)
    y = rev[keep]
    Xte, keep_te, _ = btyd_features(task.histories, cut, H)
    cols = FEATURES + BTYD
    params = {"objective": "tweedie", "learning_rate": 0.03, "num_leaves": 15, "min_child_samples": 20,
              "feature_fraction": 0.8, "bagging_fraction": 0.8, "bagging_freq": 1, "seed": seed,
              "num_threads": 1, "verbose": -1, "deterministic": True}
    init = np.log(np.maximum(Xtr["btyd_value"].to_numpy(), 1e-3)) if offset else None
    booster = lgb.train(params, lgb.Dataset(Xtr[cols].to_numpy(np.float64), label=y, init_score=init), 300)
    raw = booster.predict(Xte[cols].to_numpy(np.float64), raw_score=True)
    if offset:
        raw = raw + np.log(np.maximum(Xte["btyd_value"].to_numpy(), 1e-3))
    out = np.zeros(len(task.histories))
    out[keep_te] = np.exp(raw)
    return out


def load_v1_tasks(data) -> tuple[dict, str]:
    """V1's validation and test tasks from the Online Retail file (ingested once into a cached store),
    and the data's sha256."""
    from valuerec.data.store import EventStore

    path = resolve_online_retail_data(data)
    store, sha = cached_store(path, "online-retail", cache_dir=REPO / "runs" / "stores")
    with EventStore(store, read_only=True) as st:
        events, items = st.events(), st.items()
    return dict(zip(("valid", "test"), build_tasks(events, items, V1_CUTOFF, V1_VAL_CUTOFF))), sha


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "online-retail"))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "v1_btyd_probe.json")
    args = ap.parse_args(argv)
    started, t_start = now_iso(), time.perf_counter()
    tasks, sha = load_v1_tasks(args.data)
    per: dict[str, dict[str, list[dict]]] = {}
    fitted = {}
    for name, task in tasks.items():
        for model in ("bgnbd_gg", "lightgbm"):
            t0 = time.perf_counter()
            vm = VALUE_MODEL_REGISTRY[model](seed=0).fit_value(task.fit_histories, task.as_of,
                                                               task.window.horizon_days, catalogue=task.catalogue)
            pred = vm.predict_value(task.histories, np.full(len(task.histories), task.as_of, dtype=np.int64))
            m = value_metrics(task.labels.revenue, pred["expected_value"])
            per.setdefault(model, {}).setdefault(name, []).append({k: m[k] for k in METRICS})
            if model == "bgnbd_gg":
                fitted[name] = vm.fitted_params()
            print(f"{name} {model}: gini {m['gini']:.4f} ({time.perf_counter() - t0:.0f}s)", file=sys.stderr)
        for model, offset in (("lightgbm+btyd", False), ("lightgbm_btyd_offset", True)):
            for seed in range(args.seeds):
                m = value_metrics(task.labels.revenue, fit_predict_lgb(task, seed, offset))
                per.setdefault(model, {}).setdefault(name, []).append({k: m[k] for k in METRICS})
            print(f"{name} {model}: gini {np.mean([r['gini'] for r in per[model][name]]):.4f}", file=sys.stderr)
    models = {}
    for model, d in per.items():
        models[model] = {**seed_summary(d), "seeds": list(range(len(d["test"]))), "params": {}}
    chosen = max(models, key=lambda k: models[k]["validation_metrics"]["gini"])
    result = {"protocol": "V1-probe", "dataset": "online-retail", "data_sha256": sha,
              "git_commit": git_commit(), "command": command_line(), "device": device_info("cpu"),
              "started_at": started, "wall_seconds": time.perf_counter() - t_start,
              "description": ("probe: supervised value models given BG/NBD x Gamma-Gamma's predictions as features "
                              "or as an offset, beside BG/NBD and LightGBM on RFM; metrics on the test cut-off, "
                              "validation_metrics on the validation cut-off"),
              "split": {k: t.info() for k, t in tasks.items()}, "bgnbd_params": fitted,
              "chosen_on_validation_gini": chosen, "models": models}
    write_result(args.out, result)
    for k, v in models.items():
        print(f"{k:22s} valid gini {v['validation_metrics']['gini']:.4f}  test gini {v['metrics']['gini']:.4f}",
              file=sys.stderr)
    print(f"wrote {args.out}; chosen on validation Gini: {chosen}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
