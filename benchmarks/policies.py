"""R2 policies: NDCG@20 vs revenue@20 of value-aware re-ranking and the lifecycle stage policies.

Protocol R2 (../shared/BENCHMARKS.md, Online Retail, cutoff 2011-09-09, no exclusion). One recommender
(default: item-kNN, its configuration chosen on the validation split by NDCG@20) gives the top-N
candidates; every policy re-ranks them. Reported on test, for every user of R2:

- ``<model>``: the plain ranking;
- ``<model>+value_aware@w`` over a sweep of w (the trade-off curve; item value = catalogue price), and
  ``<model>+value_aware_line@w`` with item value = mean revenue of one purchase line of the item in
  the training history (what a customer actually spends on the item in one order), and
  ``<model>+value_aware_user_line@w``: the user's own mean line revenue for items they bought before
  (shrunk to the item's line value), the item's line value otherwise; and
  ``<model>+value_aware_learned@w``: ``models.item_value.ItemValueModel``, a LightGBM estimate of what
  this user will spend on this item in the horizon if they buy it, learned from the pairs bought in
  the last 91 days before each cut-off (features from the history before that window);
- ``<model>+value_aware_stage@w``: the same expected revenue with p = P(buy in the horizon) from a
  learned second stage (``models.purchase_stage.PurchaseStage``, LightGBM over the recommender's
  top-N candidates with the recommender's scores, the learned item value, repeat timing and item
  trends) trained on the validation window: the validation recommender's candidates for the
  validation users, labelled by what they bought in it. Its weight, and the power of the value in
  p x value ** power (``--stage-value-powers``; > 1 leans towards big spend), are chosen on out-of-fold
  predictions for the validation users (5 folds by user); each power's test curve is reported
  (``+value_aware_stage_pow<power>@w``; power 1 is ``+value_aware_stage@w``); the stage trained on all of them, with
  item statistics moved to the test cut-off, re-ranks the test model's candidates. The stage may read
  companion recommenders' scores of the candidates (``--stage-companions``: sets to try, e.g.
  ``none;als;als+bpr``; each companion is fitted as the R2 harness does, grid on validation, refit on
  train_full); the set with the best out-of-fold validation revenue@20 at its chosen weight is kept.
  At that set, the stage's bag count (``--stage-bags``: one classifier, or the geometric mean of n on
  row and feature samples) and value source (``--stage-value-sources``: the learned item value, the
  stage's own hurdle value learned on the bought candidates, or their geometric mean) are chosen the
  same way (out-of-fold validation revenue@20 at each one's chosen power and weight), and that stage is
  tested;
- ``<model>+<policy>`` for each stage policy, and ``<model>+stage`` (each user's stage picks the policy);
- per stage: stage policy vs plain on the users of that stage.

The softmax temperature and the reported operating weight are chosen on the validation split (largest
revenue@20 gain with at most 5% NDCG@20 loss); the whole test curve is reported too. The stage
policies use the item-value variant with the best validation revenue. Stages and the
value-uplift policy use a value model (default: the LightGBM RFM baseline of V1) fitted on the history
before each cut-off.

    python benchmarks/policies.py --data ../shared/data/online-retail
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

from valuerec.data.splits import Split
from valuerec.evaluation.metrics import evaluate
from valuerec.evaluation.protocols import DEFAULT_GRIDS, chosen_epochs, load_split_r2
from valuerec.evaluation.results import command_line, device_info, git_commit, now_iso, write_result
from valuerec.models.base import MODEL_REGISTRY
from valuerec.models.item_value import ItemValueModel
from valuerec.models.purchase_stage import VALUE_SOURCES, PurchaseStage
from valuerec.policies.lifecycle import LifecycleConfig, assign_stages, predict_value_safe, stage_sizes
from valuerec.policies.rerank import (DEFAULT_STAGE_POLICIES, item_feature_vectors, model_item_vectors,
                                      policy_score_fn)

console = Console(stderr=True)
METRICS = ["ndcg@20", "revenue@20", "recall@20", "hr@20"]
STAGE_POLICY_NAMES = ["popular_diverse", "favourites_winback", "cross_sell_value", "value_uplift"]


def to_unix(ts) -> int:
    return int(pd.Timestamp(ts).value // 10**9)


def line_value(train, n_items: int, price: np.ndarray) -> np.ndarray:
    """Mean revenue per purchase line of each item in ``train`` (catalogue price where unseen)."""
    items = np.concatenate([x for x in train.items]) if len(train) else np.zeros(0, np.int64)
    vals = np.concatenate([v for v in train.values]).astype(np.float64) if len(train) else np.zeros(0)
    ok = (items >= 0) & (vals > 0)
    s = np.bincount(items[ok], weights=vals[ok], minlength=n_items)
    c = np.bincount(items[ok], minlength=n_items)
    p = np.where(np.isfinite(price), price, np.nanmedian(price))
    return np.where(c > 0, s / np.maximum(c, 1), p)


def user_line_value(global_line: np.ndarray, shrink: float = 1.0):
    """Per-user item value: the user's own mean revenue per purchase line of the item (from the
    history being ranked for, so before the cut-off), shrunk towards the item's global line value
    with ``shrink`` pseudo-lines; the global value for items the user never bought."""
    def f(h) -> np.ndarray:
        out = np.tile(global_line, (len(h), 1))
        for u in range(len(h)):
            it, v = h.items[u], np.asarray(h.values[u], dtype=np.float64)
            ok = (it >= 0) & (v > 0)
            if ok.any():
                s = np.bincount(it[ok], weights=v[ok], minlength=len(global_line))
                c = np.bincount(it[ok], minlength=len(global_line))
                seen = c > 0
                out[u, seen] = (s[seen] + shrink * global_line[seen]) / (c[seen] + shrink)
        return out
    return f


def fit_recommender(name: str, split: Split, params: dict | None, seed: int, grid: dict | None = None):
    """Choose params on validation (grid from the R1/R2 harness), fit on train (for validation; the model
    sees the validation split, for early stopping and the settings it chooses inside its fit) and refit on
    train_full (for test) with what the validation fit chose, as the R2 protocol does: its in-fit choices
    (``refit_params``, e.g. the co-occurrence prior's weight) and, for a model trained in epochs, its best
    epoch count. ``grid``: {setting: values} in place of the harness's grid."""
    cls = MODEL_REGISTRY[name]
    grid = [params] if params is not None else _grid(name, grid)
    best, best_p, best_model = -1.0, None, None
    for p in grid:
        m = cls(seed=seed, **p).fit(split.train, split.catalogue, valid=split.valid)
        s = evaluate(m.score, split.valid, len(split.catalogue), ks=(20,), coverage_k=20)["ndcg@20"]
        console.log(f"{name} {p}: valid ndcg@20 {s:.4f}")
        if s > best:
            best, best_p, best_model = s, p, m
    refit = {**best_p, **best_model.refit_params()}
    if getattr(best_model, "history_", None):
        refit["epochs"] = chosen_epochs(best_model)
    t0 = time.perf_counter()
    full = cls(seed=seed, **refit).fit(split.train_full, split.catalogue)
    return best_model, full, refit, time.perf_counter() - t0


def _grid(name: str, grid: dict | None = None) -> list[dict]:
    import itertools
    g = {k: v if isinstance(v, list) else [v] for k, v in (grid or DEFAULT_GRIDS.get(name, {})).items()}
    keys = sorted(g)
    return [dict(zip(keys, v)) for v in itertools.product(*(g[k] for k in keys))] or [{}]


def fit_value_model(name: str, histories, cutoff: int, horizon_days: float, catalogue, seed: int):
    from valuerec.models.value_baselines import VALUE_MODEL_REGISTRY
    vm = VALUE_MODEL_REGISTRY[name](seed=seed)
    return vm.fit_value(histories, cutoff, horizon_days, catalogue=catalogue)


def run_policy(model, task, n_items, policy, **kw) -> dict:
    t0 = time.perf_counter()
    eval_batch = kw.pop("eval_batch", 512)
    r = evaluate(policy_score_fn(policy, model, n_items, **kw), task, n_items, ks=(20,), coverage_k=20,
                 batch_size=eval_batch)
    r["eval_seconds"] = time.perf_counter() - t0
    return r


def choose_operating_point(curve: dict[float, dict], plain: dict, max_ndcg_loss: float = 0.05) -> float | None:
    """The weight with the largest revenue@20 whose NDCG@20 is within ``max_ndcg_loss`` of plain."""
    ok = [(m["revenue@20"], w) for w, m in curve.items() if m["ndcg@20"] >= (1 - max_ndcg_loss) * plain["ndcg@20"]]
    return max(ok)[1] if ok else None


def choose_power_and_weight(curves: dict[float, dict[float, dict]], plain: dict,
                            max_ndcg_loss: float = 0.05) -> tuple[float, float | None]:
    """(value power, weight) with the largest revenue@20 within ``max_ndcg_loss`` of plain's NDCG@20,
    over every power's curve; the first power (and no weight) when no point qualifies. Ties go to the
    earlier power in the grid."""
    best = None
    for pw, curve in curves.items():
        w = choose_operating_point(curve, plain, max_ndcg_loss)
        if w is not None and (best is None or curve[w]["revenue@20"] > best[0]):
            best = (curve[w]["revenue@20"], pw, w)
    return (best[1], best[2]) if best else (next(iter(curves)), None)


def curve_summary(curve: dict[float, dict], weights: list[float]) -> dict:
    """NDCG@20 and revenue@20 of a curve, keyed by weight as text (what the result files keep)."""
    return {f"{w:g}": {k: curve[w][k] for k in ("ndcg@20", "revenue@20")} for w in weights}


class MemoPredict:
    """A purchase model whose ``predict(ctx)`` is remembered per batch of candidates: the weight and value
    power sweeps re-rank the same candidates many times, and P(buy) does not depend on either."""

    def __init__(self, model):
        self.model, self._cache = model, {}

    def predict(self, ctx) -> np.ndarray:
        return self.predict_with_value(ctx)[0]

    def predict_with_value(self, ctx):
        """(P, the stage's own value or None), remembered as ``predict``."""
        h = ctx.histories
        key = hashlib.sha1(b"".join([np.ascontiguousarray(ctx.candidates).tobytes(),
                                     ctx.scores.detach().cpu().numpy().tobytes(),
                                     b"" if ctx.as_of is None else np.asarray(ctx.as_of, np.float64).tobytes(),
                                     repr(list(h.user_ids) if h.user_ids is not None else len(h)).encode()])
                           ).hexdigest()
        if key not in self._cache:
            m = self.model
            self._cache[key] = m.predict_with_value(ctx) if hasattr(m, "predict_with_value") else (m.predict(ctx), None)
        return self._cache[key]


def selection_entry(valid_curve: dict, w_valid, test_curve: dict, plain: dict, weights: list[float]) -> dict:
    """What a value-aware variant's validation chose and how that point and the best test point within
    5% NDCG@20 loss compare with the plain ranking on test."""
    sel = test_curve[w_valid] if w_valid is not None else None
    base = plain["test"]
    return {
        "weight_chosen_on_valid": w_valid,
        "valid_curve": curve_summary(valid_curve, weights),
        "valid_revenue_at_chosen_weight": None if w_valid is None else valid_curve[w_valid]["revenue@20"],
        "test_at_chosen_weight": None if sel is None else {
            "ndcg@20": sel["ndcg@20"], "revenue@20": sel["revenue@20"],
            "ndcg_change": sel["ndcg@20"] / base["ndcg@20"] - 1,
            "revenue_change": sel["revenue@20"] / base["revenue@20"] - 1},
        "test_best_within_5pct_ndcg_loss": (lambda w: None if w is None else {
            "weight": w, "ndcg_change": test_curve[w]["ndcg@20"] / base["ndcg@20"] - 1,
            "revenue_change": test_curve[w]["revenue@20"] / base["revenue@20"] - 1})(
            choose_operating_point(test_curve, base)),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/online-retail")
    ap.add_argument("--model", default="itemknn", help="registered recommender to fit (ignored with --model-dir)")
    ap.add_argument("--model-params", default=None, help="JSON params (skips the validation grid)")
    ap.add_argument("--model-dir", default=None, help="a saved recommender fitted on R2 train_full (test)")
    ap.add_argument("--valid-model-dir", default=None, help="the same recommender fitted on R2 train (validation)")
    ap.add_argument("--value-model", default="lightgbm", help="value baseline for stages and value_uplift")
    ap.add_argument("--weights", default="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1")
    ap.add_argument("--temperatures", default="0.1,0.3,1,3", help="softmax temperatures tried on validation")
    ap.add_argument("--n-candidates", type=int, default=100)
    ap.add_argument("--uplift-candidates", type=int, default=50,
                    help="value_uplift re-scores the top n (more than 20, so it can change the top-20 set)")
    ap.add_argument("--stage-companions", default="none",
                    help="companion recommender sets tried for the purchase stage, ';'-separated, models in a set "
                         "'+'-separated, e.g. 'none;als;als+bpr' (chosen on out-of-fold validation revenue@20)")
    ap.add_argument("--stage-value-powers", default="1",
                    help="value powers tried for the purchase stage's expected revenue p x value ** power (',' "
                         "separated; chosen on out-of-fold validation with the weight)")
    ap.add_argument("--companion-grids", default="{}",
                    help="JSON {model: {setting: [values]}}: validation grids for the stage's companions in place of "
                         "the R2 harness's (DEFAULT_GRIDS)")
    ap.add_argument("--stage-bags", default="1",
                    help="bag counts tried for the purchase stage's classifier (',' separated; 1 = one classifier "
                         "on every row, n > 1 = the geometric mean of n on 70%% row and feature samples)")
    ap.add_argument("--stage-value-sources", default="item",
                    help="value sources tried for the purchase stage (',' separated among item, stage, mean: the "
                         "learned item value, the stage's own hurdle value, their geometric mean)")
    ap.add_argument("--stage-folds", type=int, default=5, help="folds (by user) for the purchase stage's "
                    "out-of-fold validation curve")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/r2_policies.json")
    args = ap.parse_args(argv)
    try:
        powers = [float(x) for x in args.stage_value_powers.split(",")]
    except ValueError:
        ap.error(f"--stage-value-powers: expected comma-separated numbers, got {args.stage_value_powers!r}")
    if not all(np.isfinite(x) and x > 0 for x in powers):
        ap.error(f"--stage-value-powers: every power must be > 0, got {args.stage_value_powers!r}")
    try:
        companion_grids = json.loads(args.companion_grids)
    except ValueError as e:
        ap.error(f"--companion-grids: not JSON ({e})")
    if not isinstance(companion_grids, dict) or not all(isinstance(v, dict) for v in companion_grids.values()):
        ap.error("--companion-grids: expected a JSON object {model: {setting: [values]}}")
    try:
        bags_grid = [int(x) for x in args.stage_bags.split(",")]
    except ValueError:
        ap.error(f"--stage-bags: expected comma-separated integers, got {args.stage_bags!r}")
    if not all(b >= 1 for b in bags_grid):
        ap.error(f"--stage-bags: every count must be >= 1, got {args.stage_bags!r}")
    sources = [x.strip() for x in args.stage_value_sources.split(",")]
    if not set(sources) <= set(VALUE_SOURCES):
        ap.error(f"--stage-value-sources: expected some of {VALUE_SOURCES}, got {args.stage_value_sources!r}")
    if args.stage_folds < 2:
        ap.error("--stage-folds must be at least 2 (the stage's weight is chosen on out-of-fold predictions)")
    if args.model_dir and not args.valid_model_dir:
        ap.error("--model-dir needs --valid-model-dir: the validation-window stages (learned item value, purchase "
                 "stage) must not see a model fitted on the validation window itself")
    torch.set_num_threads(1)
    started = now_iso()
    weights = [float(w) for w in args.weights.split(",")]
    temps = [float(t) for t in args.temperatures.split(",")]

    split, meta = load_split_r2(args.data, console=console)
    cat, n = split.catalogue, len(split.catalogue)
    console.log(f"R2: {split.info}")
    if args.model_dir:
        from valuerec.models.base import load_model
        model = load_model(args.model_dir)
        vmodel = load_model(args.valid_model_dir) if args.valid_model_dir else model
        mparams, train_s = model.config(), None
        mname = model.name
        if len(model.catalogue_) != n:
            raise SystemExit(f"{args.model_dir}: catalogue of {len(model.catalogue_)} items, R2 has {n}")
    else:
        mname = args.model
        vmodel, model, mparams, train_s = fit_recommender(args.model, split, json.loads(args.model_params)
                                                          if args.model_params else None, args.seed)
    cutoff, vcutoff = to_unix(split.info["cutoff"]), to_unix(split.info["valid_cutoff"])
    horizon = 91.0
    cfg = LifecycleConfig(horizon_days=horizon)
    # Value model per cut-off: fitted on the history before it (R2 history = purchases).
    t0 = time.perf_counter()
    value_test = fit_value_model(args.value_model, split.train_full, cutoff, horizon, cat, args.seed)
    value_valid = fit_value_model(args.value_model, split.train, vcutoff, horizon, cat, args.seed)
    value_train_s = time.perf_counter() - t0
    price = np.where(np.isfinite(cat.price), cat.price, np.nanmedian(cat.price))
    lines = {"test": line_value(split.train_full, n, price), "valid": line_value(split.train, n, price)}
    pop = {"test": np.bincount(np.concatenate(split.train_full.items), minlength=n).astype(float),
           "valid": np.bincount(np.concatenate(split.train.items), minlength=n).astype(float)}
    vectors = model_item_vectors(model)
    vectors = vectors if vectors is not None else item_feature_vectors(cat)

    models: dict[str, dict] = {}

    def record(name, res, params=None, train_seconds=None):
        models[name] = {"metrics": {k: res[k] for k in METRICS + ["coverage@20", "mrr", "users"] if k in res},
                        "seeds": [args.seed], "train_seconds": train_seconds,
                        "eval_seconds": res.get("eval_seconds"), "params": params or {}}

    common = dict(n_candidates=args.n_candidates, exclude=None)
    # -- plain -------------------------------------------------------------------------------------
    plain = {"test": run_policy(model, split.test, n, "plain", **common),
             "valid": run_policy(vmodel, split.valid, n, "plain", **common)}
    record(mname, plain["test"], {"model": mparams, "n_candidates": args.n_candidates}, train_s)
    console.log(f"plain: test ndcg@20 {plain['test']['ndcg@20']:.4f} revenue@20 {plain['test']['revenue@20']:.4f}")

    # -- value-aware: temperature and operating weight on validation, whole curve on test ----------
    selection = {}
    user_lines = {k: user_line_value(v) for k, v in lines.items()}
    t0 = time.perf_counter()
    learned = {"test": ItemValueModel(horizon_days=horizon, seed=args.seed).fit(split.train_full, cutoff, n, price),
               "valid": ItemValueModel(horizon_days=horizon, seed=args.seed).fit(split.train, vcutoff, n, price)}
    learned_fit_s = time.perf_counter() - t0
    console.log(f"learned item values: fitted in {learned_fit_s:.1f}s on {learned['test'].train_rows_} (test) / "
                f"{learned['valid'].train_rows_} (valid) user-item pairs")
    variants = {"price": {"test": price, "valid": price}, "line": lines, "user_line": user_lines, "learned": learned}
    # "Now" for the re-rankers is the cut-off (not each user's last event): the learned item values
    # read recency from it, as they were trained to.
    at = {"test": lambda h: np.full(len(h), float(cutoff)), "valid": lambda h: np.full(len(h), float(vcutoff))}
    for variant, ivals in variants.items():
        tag = "" if variant == "price" else f"_{variant}"
        best_t, best_gain = None, -np.inf
        valid_curves = {}
        for T in temps:
            curve = {w: run_policy(vmodel, split.valid, n, "value_aware", params={"w": w, "temperature": T},
                                   item_value=ivals["valid"], as_of=at["valid"], **common) for w in weights}
            valid_curves[T] = curve
            w_star = choose_operating_point(curve, plain["valid"])
            gain = curve[w_star]["revenue@20"] if w_star is not None else -np.inf
            console.log(f"value_aware{tag} T={T}: valid best w={w_star} revenue@20 {gain:.4f}")
            if gain > best_gain:
                best_t, best_gain = T, gain
        w_valid = choose_operating_point(valid_curves[best_t], plain["valid"])
        test_curve = {}
        for w in weights:
            r = run_policy(model, split.test, n, "value_aware", params={"w": w, "temperature": best_t},
                           item_value=ivals["test"], as_of=at["test"], **common)
            test_curve[w] = r
            record(f"{mname}+value_aware{tag}@{w:g}", r,
                   {"w": w, "temperature": best_t, "item_value": variant, "n_candidates": args.n_candidates})
        selection[f"value_aware{tag}"] = {
            "temperature_chosen_on_valid": best_t, "item_value": variant,
            **selection_entry(valid_curves[best_t], w_valid, test_curve, plain, weights)}

    # -- value-aware with a learned P(buy): a second stage trained on the validation window ---------
    comp_sets = [[] if x.strip() in ("", "none") else sorted(x.strip().split("+"))
                 for x in args.stage_companions.split(";")]
    comp_models, comp_info = {}, {}
    for c in sorted({c for cs in comp_sets for c in cs}):
        t0 = time.perf_counter()
        cv, cf, cparams, _ = fit_recommender(c, split, None, args.seed, companion_grids.get(c))
        comp_models[c] = {"valid": cv, "test": cf}
        comp_info[c] = {"params": cparams, "fit_seconds": time.perf_counter() - t0,
                        "grid": companion_grids.get(c, DEFAULT_GRIDS.get(c, {}))}
        console.log(f"stage companion {c}: {cparams} ({comp_info[c]['fit_seconds']:.0f}s with its validation grid)")
    learn_value = sources != ["item"]   # the hurdle's value regressor, learned only when it is tried

    def fit_stage(cs, bags):
        return PurchaseStage(folds=args.stage_folds, seed=args.seed, bags=bags,
                             companions={c: comp_models[c]["valid"] for c in cs}).fit(
            vmodel, split.valid.inputs, split.valid.targets, as_of=vcutoff, reference=split.train,
            item_value=learned["valid"], n_candidates=args.n_candidates,
            target_revenue=split.valid.target_revenue if learn_value else None)

    def stage_curves(st):
        oof = MemoPredict(st.out_of_fold())
        curves = {pw: {w: run_policy(vmodel, split.valid, n, "value_aware",
                                     params={"w": w, "p": "learned", "value_power": pw},
                                     item_value=learned["valid"], purchase_model=oof, as_of=at["valid"], **common)
                       for w in weights} for pw in powers}
        pw_c, w_c = choose_power_and_weight(curves, plain["valid"])
        return curves, pw_c, w_c, (curves[pw_c][w_c]["revenue@20"] if w_c is not None else -np.inf)

    # companions first (one classifier, the first value source), then bags and value sources at that set
    stage_sets, stage, best_valid = {}, None, -np.inf
    for cs in comp_sets:
        key = "+".join(cs) or "none"
        t0 = time.perf_counter()
        st_c = fit_stage(cs, bags_grid[0]).with_value_source(sources[0])
        fit_s = time.perf_counter() - t0
        curves, pw_c, w_c, rev_c = stage_curves(st_c)
        stage_sets[key] = {"companions": cs, "fit_seconds": fit_s, "weight_chosen_on_valid": w_c,
                           "value_power_chosen_on_valid": pw_c,
                           "valid_revenue_at_chosen_weight": None if w_c is None else rev_c,
                           "valid_curve": curve_summary(curves[pw_c], weights),
                           **({"valid_curves_by_value_power": {f"{pw:g}": curve_summary(curves[pw], weights)
                                                               for pw in powers}} if len(powers) > 1 else {})}
        console.log(f"purchase stage [{key}]: {st_c.train_rows_} candidate rows of {st_c.train_users_} validation "
                    f"users (positive rate {st_c.positive_rate_:.3f}), fitted in {fit_s:.1f}s; out-of-fold valid "
                    f"best value power {pw_c:g}, w={w_c} revenue@20 {rev_c:.4f}")
        if stage is None or rev_c > best_valid:   # the first set stands when none gets an operating point
            stage, stage_cs, stage_fit_s, valid_curve, w_valid, pw_valid, best_valid = (
                st_c, cs, fit_s, curves[pw_c], w_c, pw_c, rev_c)
    variants_valid = {f"{bags_grid[0]}_{sources[0]}": {
        "bags": bags_grid[0], "value_source": sources[0], "value_power_chosen_on_valid": pw_valid,
        "weight_chosen_on_valid": w_valid, "valid_revenue_at_chosen_weight": None if w_valid is None else best_valid}}
    for b in bags_grid:
        st_b = None
        for src in sources:
            if (b, src) == (bags_grid[0], sources[0]):
                continue
            if st_b is None:
                t0 = time.perf_counter()
                st_b = stage if b == bags_grid[0] else fit_stage(stage_cs, b)
                fit_b = stage_fit_s if b == bags_grid[0] else time.perf_counter() - t0
            st_v = st_b.with_value_source(src)
            curves, pw_c, w_c, rev_c = stage_curves(st_v)
            variants_valid[f"{b}_{src}"] = {
                "bags": b, "value_source": src, "value_power_chosen_on_valid": pw_c, "weight_chosen_on_valid": w_c,
                "valid_revenue_at_chosen_weight": None if w_c is None else rev_c,
                "valid_curve": curve_summary(curves[pw_c], weights)}
            console.log(f"purchase stage [{'+'.join(stage_cs) or 'none'}] bags {b}, value {src}: out-of-fold valid "
                        f"best value power {pw_c:g}, w={w_c} revenue@20 {rev_c:.4f}")
            if rev_c > best_valid:
                stage, stage_fit_s, valid_curve, w_valid, pw_valid, best_valid = (
                    st_v, fit_b, curves[pw_c], w_c, pw_c, rev_c)
    stage_test = MemoPredict(stage.at(split.train_full, cutoff,
                                      companions={c: comp_models[c]["test"] for c in stage_cs}))
    console.log(f"value_aware_stage: companions chosen on validation: {stage_cs or 'none'}, bags {stage.bags}, "
                f"value {stage.value_source}, value power {pw_valid:g}, w={w_valid}")
    test_curves = {}
    for pw in powers:
        tag = "" if pw == 1.0 else f"_pow{pw:g}"
        test_curves[pw] = {}
        for w in weights:
            r = run_policy(model, split.test, n, "value_aware", params={"w": w, "p": "learned", "value_power": pw},
                           item_value=learned["test"], purchase_model=stage_test, as_of=at["test"], **common)
            test_curves[pw][w] = r
            record(f"{mname}+value_aware_stage{tag}@{w:g}", r,
                   {"w": w, "p": "learned", "item_value": "learned", "value_power": pw,
                    "companions": stage_cs, "bags": stage.bags, "value_source": stage.value_source,
                    "n_candidates": args.n_candidates})
            console.log(f"value_aware_stage{tag} w={w:g}: test ndcg@20 {r['ndcg@20']:.4f} "
                        f"revenue@20 {r['revenue@20']:.4f}")
    selection["value_aware_stage"] = {
        "temperature_chosen_on_valid": None, "p": "learned", "item_value": "learned",
        "valid_curve_is_out_of_fold": True, "companions_chosen_on_valid": stage_cs,
        "value_power_chosen_on_valid": pw_valid, "value_powers": powers,
        "companion_sets_on_valid": stage_sets,
        "bags_chosen_on_valid": stage.bags, "value_source_chosen_on_valid": stage.value_source,
        "bags_and_value_sources_on_valid": variants_valid,
        **selection_entry(valid_curve, w_valid, test_curves[pw_valid], plain, weights)}
    purchase_stage_info = {"fit_seconds": stage_fit_s, "params": stage.params, "folds": stage.folds,
                           "bags": stage.bags, "value_source": stage.value_source,
                           "companions": stage_cs, "companion_models": comp_info,
                           "train_rows": stage.train_rows_, "train_users": stage.train_users_,
                           "positive_rate": stage.positive_rate_,
                           "trained_on": "validation window (R2 train histories, labels 2011-06-09 to 2011-09-09)"}

    # -- lifecycle stages at the test cut-off ------------------------------------------------------
    inputs = split.test.inputs
    pred = predict_value_safe(value_test, inputs, np.full(len(inputs), cutoff))
    stages_df = assign_stages(inputs, np.full(len(inputs), cutoff), pred, cfg)
    stage_of = dict(zip(stages_df["user_id"], stages_df["stage"]))
    stage_fn = (lambda h: np.array([stage_of[u] for u in h.user_ids], dtype=object))
    as_of_fn = (lambda h: np.full(len(h), float(cutoff)))
    # Item value for the stage policies: the value_aware variant with the best validation revenue.
    best_key = max((k for k in selection if k != "value_aware_stage"),
                   key=lambda k: selection[k]["valid_revenue_at_chosen_weight"] or -1.0)
    best_variant = selection[best_key]["item_value"]
    console.log(f"stage policies use item value {best_variant!r} (best value_aware variant on validation)")
    side = dict(item_value=variants[best_variant]["test"], item_vectors=vectors, item_popularity=pop["test"], value_model=value_test,
                as_of=as_of_fn, stages=stage_fn)
    policy_params = {"value_uplift": {"n_eval": args.uplift_candidates, "batch_size": 20000},
                     "value_aware": {"w": selection[best_key]["weight_chosen_on_valid"] or 0.0,
                                     "temperature": selection[best_key]["temperature_chosen_on_valid"]}}
    for pname in STAGE_POLICY_NAMES + ["stage"]:
        params = policy_params.get(pname, {})
        if pname == "stage":
            params = {"policy_params": policy_params}
        console.log(f"policy {pname} ...")
        r = run_policy(model, split.test, n, pname, params=params, **side, **common)
        record(f"{mname}+{pname}", r, {"policy_params": params, "n_candidates": args.n_candidates,
                                        "item_value": best_variant, "value_model": args.value_model,
                                        **({"stage_policies": DEFAULT_STAGE_POLICIES} if pname == "stage" else {})})
        console.log(f"{pname}: ndcg@20 {r['ndcg@20']:.4f} revenue@20 {r['revenue@20']:.4f} ({r['eval_seconds']:.0f}s)")

    # -- per stage: stage policy vs plain ---------------------------------------------------------
    per_stage = {}
    stage_arr = stages_df["stage"].to_numpy()
    for st in stage_sizes(stages_df)["stage"]:
        idx = np.flatnonzero(stage_arr == st)
        if len(idx) == 0:
            per_stage[st] = {"users": 0}
            continue
        sub = split.test.subset(idx)
        pol = DEFAULT_STAGE_POLICIES[st]
        a = run_policy(model, sub, n, "plain", **common)
        b = run_policy(model, sub, n, pol, params=policy_params.get(pol, {}), **side, **common)
        per_stage[st] = {"users": int(len(idx)), "policy": pol,
                         "plain": {k: a[k] for k in METRICS}, "stage_policy": {k: b[k] for k in METRICS}}

    result = {"protocol": "R2-policies", "dataset": meta["dataset"], "data_sha256": meta["data_sha256"],
              "git_commit": git_commit(), "command": command_line(), "device": device_info("cpu"),
              "started_at": started,
              "description": ("R2 test (cutoff 2011-09-09, no exclusion): policies re-rank the top "
                              f"{args.n_candidates} candidates of {mname}; value model {args.value_model} "
                              "fitted on the history before each cut-off; temperature and operating weight "
                              "of value_aware chosen on validation (cutoff 2011-06-09)."),
              "base_model": mname, "value_model": args.value_model, "value_model_train_seconds": value_train_s,
              "split": split.info, "models": models, "selection": selection,
              "stage_policies_item_value": best_variant,
              "learned_item_value": {"fit_seconds": learned_fit_s, "horizon_days": horizon,
                                     "train_pairs": {k: m.train_rows_ for k, m in learned.items()},
                                     "params": learned["test"].params},
              "purchase_stage": purchase_stage_info,
              "stages": {"sizes": stage_sizes(stages_df).to_dict(orient="records"), "per_stage": per_stage,
                         "lifecycle_config": cfg.to_dict()}}
    path = write_result(args.out, result)
    t = Table(title=f"R2 policies over {mname} (test, {plain['test']['users']} users)")
    for c in ("model", "ndcg@20", "revenue@20", "recall@20"):
        t.add_column(c, justify="left" if c == "model" else "right")
    for name, m in models.items():
        t.add_row(name, *[f"{m['metrics'][k]:.4f}" for k in ("ndcg@20", "revenue@20", "recall@20")])
    Console().print(t)
    t2 = Table(title="per stage: stage policy vs plain (test)")
    for c in ("stage", "users", "policy", "ndcg plain", "ndcg policy", "rev plain", "rev policy"):
        t2.add_column(c)
    for st, d in per_stage.items():
        if d["users"]:
            t2.add_row(st, str(d["users"]), d["policy"], f"{d['plain']['ndcg@20']:.4f}",
                       f"{d['stage_policy']['ndcg@20']:.4f}", f"{d['plain']['revenue@20']:.4f}",
                       f"{d['stage_policy']['revenue@20']:.4f}")
    Console().print(t2)
    for key, d in selection.items():
        console.print(f"{key}: T={d['temperature_chosen_on_valid']} w(valid)={d['weight_chosen_on_valid']} "
                      f"test at w: {d['test_at_chosen_weight']}; best test within 5% NDCG loss: "
                      f"{d['test_best_within_5pct_ndcg_loss']}", markup=False)
    console.log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
