"""Probe: does a different item value or a larger candidate pool lift the purchase stage on R2?

``r2_policies.sh`` ranks the transformer's top 100 candidates by expected revenue, P(buy in the horizon)
from ``PurchaseStage`` x the learned item value (``ItemValueModel``), and reaches about +9.7% revenue@20
against the plain ranking, short of the +10% floor. The oracle probe (``r2_value_headroom.py``) says the
item value is what limits it. This probe changes one thing at a time, with the stage's ALS+BPR
companions:

- ``reference``: the committed setting (log-revenue target, the newest window, 100 candidates);
- ``mean_target``: ``ItemValueModel(target="mean")``, the mean spend given a purchase (gamma objective)
  instead of the typical (geometric mean) spend;
- ``windows3`` / ``windows6``: the value model also learns from 2 or 5 earlier windows, 14 days apart;
- ``candidates200``: the reference value, stage and re-ranking over the top 200 candidates;
- ``text_neighbours``: the value model also reads how much the customer spends, relative to each item's
  usual line, on the 5 items they bought before whose descriptions are nearest the candidate's
  (all-MiniLM-L6-v2 embeddings; weighted by similarity), and that nearest similarity: a customer's
  order size within a kind of product, where the reference knows only their overall order size;
- ``rates``: the value model also reads how often the customer buys: their tenure and purchase days,
  the distinct days they bought the candidate, days since the first of them, and the orders of it and
  the spend on it that their past rate implies over one horizon. The target sums every line of the
  pair in the window, so a customer who reorders an item each fortnight spends several lines' worth;
  the reference has line counts but no tenure to turn them into a rate;
- ``within_user``: the value model's target is the pair's log spend minus the mean log spend of the
  customer's pairs in the same window. Re-ranking compares items within one customer, so only the
  item-to-item differences of the value matter; the reference's loss is dominated by differences
  between customers (order sizes span three orders of magnitude), which no within-customer ranking uses.

Each variant's weight is chosen on out-of-fold validation predictions (5 folds by user; at most 5%
NDCG@20 loss), then the stage trained on the whole validation window re-ranks the test candidates
once. ``validation_metrics`` are the out-of-fold figures at that weight, ``metrics`` the test ones,
each with the change against the plain ranking. Writes ``r2_value_probe[_seedN].json``.

    python benchmarks/r2_value_probe.py --seed 0
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))
from policies import (MemoPredict, choose_operating_point, curve_summary, fit_recommender,  # noqa: E402
                      run_policy, to_unix)
from r2_stage_probe import transformer_params  # noqa: E402

from valuerec.evaluation.protocols import load_split_r2  # noqa: E402
from valuerec.evaluation.results import command_line, device_info, git_commit, now_iso, write_result  # noqa: E402
from valuerec.models.item_value import ItemValueModel  # noqa: E402
from valuerec.models.purchase_stage import PurchaseStage  # noqa: E402

console = Console(stderr=True)
WEIGHTS = [0.0, 0.5, 0.8, 0.9, 1.0]
# name: (ItemValueModel options, number of candidates)
VARIANTS = {"reference": ({}, 100), "mean_target": ({"target": "mean"}, 100),
            "windows3": ({"n_windows": 3, "step_days": 14.0}, 100),
            "windows6": ({"n_windows": 6, "step_days": 14.0}, 100), "candidates200": ({}, 200),
            "text_neighbours": ({"neighbours": 5}, 100), "rates": ({"rates": True}, 100),
            "within_user": ({"within_user": True}, 100)}


class NeighbourValueModel(ItemValueModel):
    """``ItemValueModel`` plus two features from the items the customer bought before: the
    similarity-weighted mean of their log spend ratio (line revenue over the item's mean line) on the
    ``neighbours`` items whose text vectors are nearest the candidate's (the candidate itself left
    out: the reference already reads it), and the nearest similarity."""

    def __init__(self, vectors: np.ndarray, neighbours: int = 5, **kw):
        super().__init__(**kw)
        self.vectors, self.neighbours = np.asarray(vectors, np.float32), int(neighbours)

    def _features(self, lines, n_users, as_of, stats, users, items):
        X = super()._features(lines, n_users, as_of, stats, users, items)
        extra = np.full((len(users), 2), np.nan)
        lines = lines[lines["t"].to_numpy() < as_of[lines["u"].to_numpy()]]
        li = lines["item"].to_numpy()
        ok = li < min(len(stats.line), len(self.vectors))
        lines = lines[ok]
        ratio = np.log(lines["value"].to_numpy()) - np.log(stats.line[lines["item"].to_numpy()])
        per = pd.DataFrame({"u": lines["u"].to_numpy(), "item": lines["item"].to_numpy(), "r": ratio}
                           ).groupby(["u", "item"])["r"].mean().reset_index()
        bought = {u: (g["item"].to_numpy(), g["r"].to_numpy()) for u, g in per.groupby("u")}
        order = np.argsort(users, kind="stable")
        bounds = np.flatnonzero(np.diff(users[order])) + 1
        for rows in np.split(order, bounds):
            got = bought.get(int(users[rows[0]]))
            cand = items[rows]
            known = cand < len(self.vectors)
            if got is None or not known.any():
                continue
            b_items, b_r = got
            sim = self.vectors[cand[known]] @ self.vectors[b_items].T           # (rows, bought)
            sim[cand[known][:, None] == b_items[None, :]] = -np.inf           # not the item itself
            k = min(self.neighbours, sim.shape[1])
            top = np.argpartition(-sim, k - 1, axis=1)[:, :k] if k < sim.shape[1] else np.tile(
                np.arange(sim.shape[1]), (len(sim), 1))
            s_top = np.take_along_axis(sim, top, axis=1)
            w = np.where(np.isfinite(s_top), np.clip(s_top, 0.0, None), 0.0)
            with np.errstate(invalid="ignore", divide="ignore"):
                val = (w * b_r[top]).sum(1) / w.sum(1)
            best = np.where(np.isfinite(s_top), s_top, -np.inf).max(1)
            r = rows[known]
            extra[r, 0] = np.where(w.sum(1) > 0, val, np.nan)
            extra[r, 1] = np.where(np.isfinite(best), best, np.nan)
        return np.hstack([X, extra])


class RateValueModel(ItemValueModel):
    """``ItemValueModel`` plus purchase-rate features of the customer and of the (customer, item) pair:
    tenure (days since the first purchase), purchase days, purchase days per horizon; distinct days of
    the pair, days since its first, its days per horizon since the customer's first purchase, and the
    log of the spend that rate implies over one horizon (rate x mean line revenue of the pair)."""

    N_EXTRA = 6

    def __init__(self, rates: bool = True, **kw):
        super().__init__(**kw)

    def _features(self, lines, n_users, as_of, stats, users, items):
        X = super()._features(lines, n_users, as_of, stats, users, items)
        extra = np.full((len(users), self.N_EXTRA), np.nan)
        lines = lines[lines["t"].to_numpy() < as_of[lines["u"].to_numpy()]]
        if len(lines) == 0:
            return np.hstack([X, extra])
        H = self.horizon_days
        lu, li = lines["u"].to_numpy(), lines["item"].to_numpy()
        day = lines["t"].to_numpy() // int(DAY_S)
        v = lines["value"].to_numpy()
        ug = pd.DataFrame({"u": lu, "day": day}).groupby("u")
        first = np.full(n_users, np.nan)
        ndays = np.full(n_users, np.nan)
        f = ug["day"].min()
        first[f.index.to_numpy()] = f.to_numpy(np.float64)
        nd = ug["day"].nunique()
        ndays[nd.index.to_numpy()] = nd.to_numpy(np.float64)
        today = as_of / DAY_S
        tenure = np.maximum(today - first, 1.0)                       # days, per user
        extra[:, 0] = tenure[users]
        extra[:, 1] = ndays[users]
        extra[:, 2] = (ndays / tenure * H)[users]
        n_it = int(max(len(stats.line), li.max() + 1, items.max() + 1 if len(items) else 0))
        g = pd.DataFrame({"k": lu * n_it + li, "day": day, "v": v}).groupby("k")
        agg = pd.DataFrame({"days": g["day"].nunique(), "first": g["day"].min(), "mean": g["v"].mean()})
        pos = agg.index.get_indexer(users * n_it + items)
        hit = pos >= 0
        a = agg.iloc[pos[hit]]
        uh = users[hit]
        pair_days = a["days"].to_numpy(np.float64)
        rate = pair_days / tenure[uh] * H                              # orders of the item per horizon
        extra[hit, 3] = pair_days
        extra[hit, 4] = today[uh] - a["first"].to_numpy(np.float64)
        extra[hit, 5] = np.log(np.maximum(rate, 1.0) * a["mean"].to_numpy())
        extra[~hit, 3] = 0.0
        return np.hstack([X, extra])


DAY_S = 86400.0


class WithinUserValueModel(ItemValueModel):
    """``ItemValueModel`` trained on log spend relative to the customer's mean log spend over their
    pairs in the window: its exp is a relative value, fit only for ranking one customer's candidates."""

    def __init__(self, within_user: bool = True, **kw):
        super().__init__(**kw)

    def _training_target(self, revenue, group):
        y = np.log(revenue)
        return y - pd.Series(y).groupby(group).transform("mean").to_numpy()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/online-retail")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {list(VARIANTS)}")
    ap.add_argument("--out", default=None, help="default: benchmarks/results/r2_value_probe[_seedN].json")
    args = ap.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",")]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}")
    out = args.out or f"benchmarks/results/r2_value_probe{'' if args.seed == 0 else f'_seed{args.seed}'}.json"
    torch.set_num_threads(1)
    started, t_start = now_iso(), time.perf_counter()
    split, meta = load_split_r2(args.data, console=console)
    n = len(split.catalogue)
    cut, vcut = to_unix(split.info["cutoff"]), to_unix(split.info["valid_cutoff"])
    price = np.where(np.isfinite(split.catalogue.price), split.catalogue.price, np.nanmedian(split.catalogue.price))
    vm, fm, refit, _ = fit_recommender("transformer", split, transformer_params(), args.seed)
    comps = {c: fit_recommender(c, split, None, args.seed)[:2] for c in ("als", "bpr")}
    at = {"valid": lambda h: np.full(len(h), float(vcut)), "test": lambda h: np.full(len(h), float(cut))}
    plain = {"valid": run_policy(vm, split.valid, n, "plain", n_candidates=100, exclude=None),
             "test": run_policy(fm, split.test, n, "plain", n_candidates=100, exclude=None)}
    keys = ("ndcg@20", "revenue@20")

    def with_change(m, split_name):
        return {**{k: m[k] for k in keys},
                "revenue_change": m["revenue@20"] / plain[split_name]["revenue@20"] - 1,
                "ndcg_change": m["ndcg@20"] / plain[split_name]["ndcg@20"] - 1}

    models = {"plain": {"note": "the transformer's own ranking", "metrics": with_change(plain["test"], "test"),
                        "validation_metrics": with_change(plain["valid"], "valid"), "seeds": [args.seed],
                        "params": refit}}
    for name in names:
        opts, n_cand = VARIANTS[name]
        t0 = time.perf_counter()
        if "neighbours" in opts:
            from valuerec.features.text import embed_texts
            vectors = embed_texts(list(split.catalogue.text))

            def make(**kw):
                return NeighbourValueModel(vectors, **opts, **kw)
        elif "within_user" in opts:
            def make(**kw):
                return WithinUserValueModel(**opts, **kw)
        elif "rates" in opts:
            def make(**kw):
                return RateValueModel(**opts, **kw)
        else:
            def make(**kw):
                return ItemValueModel(**opts, **kw)
        value = {"valid": make(horizon_days=91.0, seed=args.seed).fit(split.train, vcut, n, price),
                 "test": make(horizon_days=91.0, seed=args.seed).fit(split.train_full, cut, n, price)}
        stage = PurchaseStage(folds=5, seed=args.seed, companions={c: m[0] for c, m in comps.items()}).fit(
            vm, split.valid.inputs, split.valid.targets, as_of=vcut, reference=split.train,
            item_value=value["valid"], n_candidates=n_cand)
        p = {"valid": MemoPredict(stage.out_of_fold()),
             "test": MemoPredict(stage.at(split.train_full, cut, companions={c: m[1] for c, m in comps.items()}))}
        curves = {s: {w: run_policy(model, task, n, "value_aware", params={"w": w, "p": "learned"},
                                    item_value=value[s], purchase_model=p[s], as_of=at[s], n_candidates=n_cand,
                                    exclude=None)
                      for w in WEIGHTS}
                  for s, model, task in (("valid", vm, split.valid), ("test", fm, split.test))}
        w = choose_operating_point(curves["valid"], plain["valid"])
        if w is None:
            console.log(f"{name}: no weight within 5% NDCG@20 of plain on validation")
            continue
        models[name] = {
            "note": f"item value {opts or 'as committed'}, {n_cand} candidates",
            "metrics": with_change(curves["test"][w], "test"),
            "validation_metrics": with_change(curves["valid"][w], "valid"), "seeds": [args.seed],
            "train_seconds": time.perf_counter() - t0, "eval_seconds": None,
            "params": {"item_value": opts, "n_candidates": n_cand, "weight_chosen_on_valid": w,
                       "value_train_pairs": {s: int(v.train_rows_) for s, v in value.items()},
                       "curves": {s: curve_summary(c, WEIGHTS) for s, c in curves.items()}}}
        v, t = models[name]["validation_metrics"], models[name]["metrics"]
        console.log(f"{name:14s} w={w:g} valid rev {v['revenue_change']:+.4f} ndcg {v['ndcg_change']:+.4f} | "
                    f"test rev {t['revenue_change']:+.4f} ndcg {t['ndcg_change']:+.4f}")
    chosen = max((k for k in models if k != "plain"), key=lambda k: models[k]["validation_metrics"]["revenue@20"])
    result = {"protocol": "R2-value-probe", "dataset": meta["dataset"], "data_sha256": meta["data_sha256"],
              "git_commit": git_commit(), "command": command_line(), "device": device_info("cpu"),
              "started_at": started, "wall_seconds": time.perf_counter() - t_start,
              "description": ("probe: the purchase stage (ALS+BPR companions) over the transformer's R2 candidates with "
                              "other item values or 200 candidates, each at its weight chosen on out-of-fold "
                              "validation; test from the stage trained on the whole validation window"),
              "split": split.info, "chosen_on_validation_revenue": chosen, "models": models}
    path = write_result(out, result)
    console.log(f"validation would choose {chosen}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
