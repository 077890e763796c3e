"""R2 probe: how much better can the buy-again order get? A learned repeat-timing ranker beside ``repeat``.

R2 (Online Retail, BENCHMARKS.md) is dominated by repeat buying: the plain buy-again baseline
(``repeat``: the customer's own items by purchase count) is level with every learned model. This probe
asks whether the order of the customer's own items can be learned much better from timing, as the
repeat-consumption literature suggests (counts, recency, the customer's own interval for the item,
"is it due", the item's popularity trend).

- Candidates: every item the customer bought before the cut-off (scored by the ranker), then the
  rest of the catalogue by ``repeat``'s popularity tie-break, so the lists cover the full catalogue.
- Training examples: (customer, own item) pairs with features as of an earlier cut-off and label
  "bought again in the window up to the evaluated cut-off", so every label lies before it:
  validation trains at 2011-03-09 (labels to 2011-06-09); test trains at 2011-06-09 (labels to
  2011-09-09), on the train_full histories.
- Models: LightGBM binary classifier and LambdaRank, each fixed (no search); ``repeat`` and a
  recency-decayed ``repeat`` beside them. The variant for test is chosen on validation NDCG@20.

    python benchmarks/r2_repeat_probe.py --data ../shared/data/online-retail
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from valuerec.data.dataset import Sequences
from valuerec.data.schema import EVENT_TYPE_CODE
from valuerec.evaluation.metrics import evaluate
from valuerec.evaluation.protocols import load_split_r2
from valuerec.evaluation.results import command_line, device_info, git_commit, now_iso, write_result
from valuerec.features.rfm import flatten
from valuerec.models.popularity import RepeatPopularity

REPO = Path(__file__).resolve().parents[1]
DAY = 86_400
PURCHASE = EVENT_TYPE_CODE["purchase"]
FEATURES = ["n_days", "since_last", "since_first", "interval", "due", "u_days", "share", "u_rec", "u_ten",
            "u_rate", "pop90", "pop30", "popall", "trend"]
METRICS = ("ndcg@20", "recall@20", "hr@20", "revenue@20")


def flat(seqs: Sequences) -> pd.DataFrame:
    """Purchase events with an item: u (row), i (item index), t (unix s)."""
    d = flatten(seqs)
    return d[(d["item"] >= 0) & (d["type"] == PURCHASE)].rename(columns={"item": "i"})


def pair_features(d: pd.DataFrame, cutoff: float) -> pd.DataFrame:
    """One row per (customer, item bought before ``cutoff``): counts, timing and the item's trend."""
    d = d[d["t"] < cutoff].assign(day=lambda x: x["t"] // DAY)
    days = d[["u", "i", "day"]].drop_duplicates()
    g = days.groupby(["u", "i"])["day"]
    f = pd.DataFrame({"n_days": g.size(), "last": g.max(), "first": g.min()}).reset_index()
    now = cutoff / DAY
    f["since_last"], f["since_first"] = now - f["last"], now - f["first"]
    f["interval"] = np.where(f["n_days"] > 1, (f["last"] - f["first"]) / (f["n_days"] - 1).clip(lower=1), np.nan)
    f["due"] = f["since_last"] / f["interval"]
    ud = days.groupby("u")["day"]
    f = f.join(ud.nunique().rename("u_days"), on="u").join(ud.max().rename("u_last"), on="u")
    f = f.join(ud.min().rename("u_first"), on="u")
    f["share"], f["u_rec"], f["u_ten"] = f["n_days"] / f["u_days"], now - f["u_last"], now - f["u_first"]
    f["u_rate"] = f["u_days"] / (f["u_ten"] + 1)
    for name, span in (("pop90", 90), ("pop30", 30), ("popall", None)):
        recent = d if span is None else d[d["t"] >= cutoff - span * DAY]
        f = f.join(recent.groupby("i")["u"].nunique().rename(name), on="i")
    f[["pop90", "pop30"]] = f[["pop90", "pop30"]].fillna(0)
    f["trend"] = (f["pop30"] + 1) / (f["pop90"] / 3 + 1)
    return f


def training_pairs(history: Sequences, start: float, end: float) -> pd.DataFrame:
    """Features as of ``start``, label = the item is bought again in [start, end)."""
    d = flat(history)
    f = pair_features(d, start)
    bought = d[(d["t"] >= start) & (d["t"] < end)][["u", "i"]].drop_duplicates().assign(y=1)
    return f.merge(bought, on=["u", "i"], how="left").fillna({"y": 0}).sort_values(["u", "i"])


def fit_models(pairs: pd.DataFrame, seed: int) -> dict:
    import lightgbm as lgb
    kw = dict(n_estimators=300, learning_rate=0.05, num_leaves=31, min_child_samples=50, verbose=-1,
              random_state=seed)
    clf = lgb.LGBMClassifier(**kw).fit(pairs[FEATURES], pairs["y"])
    rank = lgb.LGBMRanker(**kw).fit(pairs[FEATURES], pairs["y"], group=pairs.groupby("u", sort=False).size().to_numpy())
    return {"repeat_gbdt_classifier": lambda X: clf.predict_proba(X)[:, 1], "repeat_gbdt_lambdarank": rank.predict}


def score_fn(predict, base: RepeatPopularity, cutoff: float):
    def score(hs: Sequences) -> torch.Tensor:
        out = base.score(hs).double() * 1e-6            # the rest of the catalogue, in repeat's order
        f = pair_features(flat(hs), cutoff)
        if len(f):
            s = torch.as_tensor(predict(f[FEATURES]), dtype=torch.float64)
            out[torch.as_tensor(f["u"].to_numpy()), torch.as_tensor(f["i"].to_numpy())] = s + 10.0
        return out
    return score


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "online-retail"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "r2_repeat_probe.json")
    args = ap.parse_args(argv)
    started = now_iso()
    split, meta = load_split_r2(args.data)
    cuts = {k: pd.Timestamp(v).timestamp() for k, v in
            {"train_valid": "2011-03-09", "valid": "2011-06-09", "test": "2011-09-09"}.items()}
    stages = {"valid": (split.train, cuts["train_valid"], cuts["valid"], split.valid),
              "test": (split.train_full, cuts["valid"], cuts["test"], split.test)}
    models: dict[str, dict] = {}
    curves: dict[str, dict] = {}
    for stage, (history, start, end, task) in stages.items():
        t0 = time.perf_counter()
        pairs = training_pairs(history, start, end)
        fitted = fit_models(pairs, args.seed)
        train_s = time.perf_counter() - t0
        variants = {"repeat": (RepeatPopularity().fit(history, split.catalogue), None),
                    "repeat_decay_0.97": (RepeatPopularity(decay=0.97).fit(history, split.catalogue), None)}
        base = variants["repeat"][0]
        for name, predict in fitted.items():
            variants[name] = (base, predict)
        for name, (model, predict) in variants.items():
            fn = model.score if predict is None else score_fn(predict, base, end)
            t1 = time.perf_counter()
            m = evaluate(fn, task, base.n_items, ks=(20,))
            curves.setdefault(name, {})[stage] = {k: float(m[k]) for k in METRICS}
            if stage == "test":
                models[name] = {"metrics": curves[name]["test"], "metrics_std": None, "seeds": [args.seed],
                                "train_seconds": train_s if predict is not None else 0.0,
                                "eval_seconds": time.perf_counter() - t1,
                                "params": {} if predict is not None else {"decay": model.decay},
                                "validation_metrics": curves[name]["valid"]}
        print(stage, {n: round(c[stage]["ndcg@20"], 4) for n, c in curves.items()}, f"pairs {len(pairs)}",
              f"repeat share {pairs['y'].mean():.3f}", file=sys.stderr)
    chosen = max(curves, key=lambda n: curves[n]["valid"]["ndcg@20"])
    result = {"protocol": "R2", "dataset": meta["dataset"], "data_sha256": meta["data_sha256"],
              "git_commit": git_commit(), "command": command_line(), "device": device_info("cpu"),
              "started_at": started,
              "description": ("probe: the buy-again order learned from repeat timing (LightGBM on each customer's "
                              "own items) beside repeat; validation trains at 2011-03-09, test at 2011-06-09"),
              "split": split.info, "chosen_on_validation": chosen, "models": models}
    write_result(args.out, result)
    print(f"wrote {args.out}; chosen on validation: {chosen}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
