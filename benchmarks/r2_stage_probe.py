"""Probe: alternatives to the purchase stage of ``r2_policies.sh``, scored the same way.

``r2_policies.sh`` ranks the transformer's top 100 candidates by expected revenue, P(buy in the horizon)
x the learned item value, with P from ``PurchaseStage`` (LightGBM over candidate features and, chosen on
validation, ALS and BPR as companions). It reaches about +9.7% revenue@20 against the plain ranking,
short of the +10% floor. This probe asks whether another second stage does better. Every variant reads
the same candidate features (``PurchaseStage.features``, ALS + BPR companions), is trained on the
validation window and ranks by its own estimate of the candidate's expected revenue (the operating
point w = 1 that validation chose for the stage in every seed):

- ``stage``: the committed method, classifier P x learned value (the reference);
- ``stage_bagged``: the mean log P of 3 classifiers on 70% row and feature samples (variance);
- ``stage_user_weighted``: rows weighted 1 / (the user's target items), since revenue@20 averages
  per user and heavy buyers otherwise dominate the loss;
- ``hurdle``: classifier P x exp(a regressor of log revenue fitted on the bought candidates), the
  value learned on the same candidates instead of ``ItemValueModel``;
- ``share_xentropy``: one LightGBM with cross-entropy on the candidate's share of the user's holdout
  spend (an estimate of E[share], the quantity revenue@20 sums);
- ``lambdarank_share``: LambdaRank with the share graded into 0..30;
- ``stage_hurdle_mean``: P x the geometric mean of the learned value and the hurdle's value;
- ``tweedie``: one LightGBM with a Tweedie loss on the candidate's holdout revenue (zeros included);
- ``stage_plus_transformer``: the reference with a second transformer (next seed) as a third
  companion (``--transformer-companion``);
- ``stage_plus_<name>``: the reference with another registered recommender as a third companion
  (``--companion NAME``, e.g. ``tifuknn``, its settings chosen on validation as in ``bench r2``).

With ``--settings`` the probe instead asks whether the stage is short of data or of tuning: the
reference beside the same classifier trained on half of each fold's training users
(``stage_half_users``: a learning curve) and under other LightGBM settings (``stage_<trees>_<rate>_
<leaves>_<min child>``), written to ``r2_stage_probe_settings.json``.

Each variant's validation figure (``validation_metrics``) is out-of-fold (5 folds by user), its test
figure (``metrics``) comes from the variant trained on the whole validation window, applied at the test
cut-off; both with the change against the plain ranking. Validation would choose
among them; the test column shows what the choice is worth. Writes ``r2_stage_probe.json``.

    python benchmarks/r2_stage_probe.py --transformer-companion
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))
from policies import fit_recommender, run_policy, to_unix  # noqa: E402

from valuerec.evaluation.metrics import ranking_metrics_from_ranks  # noqa: E402
from valuerec.evaluation.protocols import load_split_r2  # noqa: E402
from valuerec.evaluation.results import command_line, device_info, git_commit, now_iso, write_result  # noqa: E402
from valuerec.models.item_value import ItemValueModel  # noqa: E402
from valuerec.models.purchase_stage import PurchaseStage, _ItemReference  # noqa: E402
from valuerec.data.schema import event_type_code  # noqa: E402
from valuerec.policies.rerank import build_context  # noqa: E402

console = Console(stderr=True)
REPO = Path(__file__).resolve().parents[1]
K = 20
# (trees, learning rate, leaves, min rows per leaf) tried by --settings; the reference is 300, 0.05, 15, 50
SETTINGS = [(600, 0.025, 15, 50), (150, 0.05, 15, 50), (300, 0.05, 7, 100), (500, 0.03, 31, 100),
            (300, 0.05, 15, 200)]


def transformer_params() -> dict:
    """The transformer settings of ``r2_policies.sh`` (read from it, so the two cannot drift)."""
    text = (REPO / "benchmarks" / "r2_policies.sh").read_text()
    return json.loads(text.split("--model-params '")[1].split("'")[0])


def history_pool(ctx, n_candidates: int, extra: int):
    """``ctx`` (built with the user's past items as candidates) cut to the model's top ``n_candidates``
    plus at most ``extra`` past items outside them, those the user spent most on (purchases net of
    returns), padded to ``n_candidates + extra`` columns."""
    B = len(ctx.candidates)
    cand = np.full((B, n_candidates + extra), -1, dtype=np.int64)
    cand[:, :n_candidates] = ctx.candidates[:, :n_candidates]
    P, R = event_type_code("purchase"), event_type_code("return")
    for u in range(B):
        past = ctx.candidates[u, n_candidates:]
        past = past[past >= 0]
        if not len(past):
            continue
        items, types = ctx.histories.items[u], ctx.histories.event_types[u]
        vals = ctx.histories.values[u].astype(np.float64)
        sign = np.where(types == P, 1.0, np.where(types == R, -1.0, 0.0))
        spend = np.array([float((vals * sign)[items == i].sum()) for i in past])
        keep = past[np.argsort(-spend, kind="stable")[:extra]]
        cand[u, n_candidates:n_candidates + len(keep)] = keep
    idx = torch.as_tensor(np.clip(cand, 0, None))
    sc = torch.gather(ctx.full_scores, 1, idx)
    sc = torch.where(torch.as_tensor(cand >= 0), sc, torch.full_like(sc, -torch.inf))
    return replace(ctx, candidates=cand, scores=sc, extras={"added_from_history": np.zeros(cand.shape, bool)})


def candidate_table(model, task, cut, reference, item_value, companions, n_items, n_candidates=100,
                    history_extra=0):
    """Features (B, C, F), candidates (B, C) and the revenue each user spent on each candidate."""
    st = PurchaseStage(folds=1, companions=companions)
    st.ref_ = _ItemReference(reference, cut, n_items)
    X, cand, rev = [], [], []
    for s in range(0, len(task), 512):
        idx = np.arange(s, min(s + 512, len(task)))
        ctx = build_context(model, task.inputs.subset(idx), n_candidates=n_candidates,
                            as_of=np.full(len(idx), float(cut)), item_value=item_value,
                            history_candidates=history_extra > 0)
        if history_extra:
            ctx = history_pool(ctx, n_candidates, history_extra)
        X.append(st.features(ctx).reshape(len(idx), ctx.candidates.shape[1], -1))
        cand.append(ctx.candidates)
        for r, u in enumerate(idx):
            spent = dict(zip(np.asarray(task.targets[u]).tolist(), np.asarray(task.target_revenue[u]).tolist()))
            rev.append(np.array([spent.get(int(c), 0.0) if c >= 0 else 0.0 for c in ctx.candidates[r]]))
    return {"X": np.concatenate(X), "cand": np.concatenate(cand), "rev": np.stack(rev),
            "total": np.asarray(task.total_revenue, dtype=np.float64),
            "ntarget": np.array([len(t) for t in task.targets]), "names": st.feature_names}


def metrics(d, score) -> dict:
    """NDCG@20 (binary, over the whole target set) and revenue@20 of ranking the candidates by score,
    through ``evaluation.metrics`` (the output also holds the plain ranking scored by ``evaluate``)."""
    s = np.where(d["cand"] >= 0, score, -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")
    ranks = np.empty(s.shape)
    np.put_along_axis(ranks, order, np.arange(1, s.shape[1] + 1, dtype=np.float64)[None, :], axis=1)
    bought = d["rev"] > 0
    m = ranking_metrics_from_ranks(np.where(bought, ranks, np.inf), d["ntarget"], (K,),
                                   target_revenue=np.where(bought, d["rev"], 0.0), total_revenue=d["total"])
    return {"ndcg@20": float(m["ndcg@20"].mean()), "revenue@20": float(m["revenue@20"].mean())}


def main(argv=None) -> int:
    import lightgbm as lgb

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/online-retail")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--transformer-companion", action="store_true",
                    help="also try a second transformer (seed + 1) as a companion (about 5 more CPU minutes)")
    ap.add_argument("--companion", action="append", default=[],
                    help="also try this registered recommender as a third companion (repeatable)")
    ap.add_argument("--settings", action="store_true",
                    help="the reference against half the training users and other classifier settings, instead of "
                         "the other second stages")
    ap.add_argument("--n-candidates", type=int, default=100,
                    help="candidates per user from the transformer (r2_policies.sh re-ranks 100)")
    ap.add_argument("--history-extra", type=int, default=0,
                    help="add up to this many of the user's past items outside the top candidates, those they "
                         "spent most on (a pool of n-candidates + this)")
    ap.add_argument("--out", default=None, help="default: benchmarks/results/r2_stage_probe.json, or "
                    "r2_stage_probe_settings.json with --settings")
    args = ap.parse_args(argv)
    if args.out is None:
        args.out = f"benchmarks/results/r2_stage_probe{'_settings' if args.settings else ''}.json"
    torch.set_num_threads(1)
    started, t_start = now_iso(), time.perf_counter()
    split, meta = load_split_r2(args.data, console=console)
    n = len(split.catalogue)
    cut, vcut = to_unix(split.info["cutoff"]), to_unix(split.info["valid_cutoff"])
    params = transformer_params()
    vm, fm, refit, _ = fit_recommender("transformer", split, params, args.seed)
    price = np.where(np.isfinite(split.catalogue.price), split.catalogue.price, np.nanmedian(split.catalogue.price))
    values = {"valid": ItemValueModel(horizon_days=91.0, seed=args.seed).fit(split.train, vcut, n, price),
              "test": ItemValueModel(horizon_days=91.0, seed=args.seed).fit(split.train_full, cut, n, price)}
    comps = {"valid": {}, "test": {}}
    extra = (["transformer"] if args.transformer_companion else []) + [c for c in args.companion if c != "transformer"]
    comp_names = ["als", "bpr"] + extra
    for c in comp_names:
        cv, cf, _, _ = (fit_recommender(c, split, None, args.seed) if c != "transformer"
                        else fit_recommender(c, split, params, args.seed + 1))
        comps["valid"][c], comps["test"][c] = cv, cf
        console.log(f"companion {c} fitted")
    if args.n_candidates < 20:
        ap.error("--n-candidates must be at least 20 (the metrics' cut-off)")
    D = {"valid": candidate_table(vm, split.valid, vcut, split.train, values["valid"], comps["valid"], n,
                                  args.n_candidates, args.history_extra),
         "test": candidate_table(fm, split.test, cut, split.train_full, values["test"], comps["test"], n,
                                 args.n_candidates, args.history_extra)}
    # how much of the holdout spend the candidates hold at all: the ceiling of any re-ranking of them
    coverage = {k: float(np.mean(np.where(D[k]["total"] > 0, D[k]["rev"].sum(1) / np.maximum(D[k]["total"], 1e-12), 0.0)))
                for k in D}
    console.log(f"share of each user's holdout spend inside the top {args.n_candidates} (mean): {coverage}")
    names = D["valid"]["names"]
    col = {f: k for k, f in enumerate(names)}
    base_cols = [k for k, f in enumerate(names) if not any(f.startswith(f"c_{c}_") for c in extra)]
    Bv, C, F = D["valid"]["X"].shape
    Bt = D["test"]["X"].shape[0]
    Xv, Xt = D["valid"]["X"].reshape(Bv * C, F), D["test"]["X"].reshape(Bt * C, F)
    rv = D["valid"]["rev"].reshape(-1)
    yv = (rv > 0).astype(np.int8)
    share = (D["valid"]["rev"] / np.maximum(D["valid"]["total"][:, None], 1e-12)).reshape(-1)
    logv = {k: np.nan_to_num(D[k]["X"][:, :, col["log_v"]], nan=0.0).reshape(-1) for k in D}
    fold = np.random.default_rng(args.seed).permutation(Bv) % 5
    rowf = np.repeat(fold, C)
    plain = {k: metrics(D[k], D[k]["X"][:, :, col["m_log_p"]]) for k in D}
    plain_evaluate = {k: {m: run_policy(model, task, n, "plain", n_candidates=100, exclude=None)[m]
                          for m in ("ndcg@20", "revenue@20")}
                      for k, model, task in (("valid", vm, split.valid), ("test", fm, split.test))}
    console.log(f"plain: {plain}; through evaluation.metrics: {plain_evaluate}")
    clf = dict(n_estimators=300, learning_rate=0.05, num_leaves=15, min_child_samples=50, n_jobs=1, verbose=-1)

    def oof_and_test(fit_predict, cols):
        """Out-of-fold validation scores and test scores of one variant (flat arrays)."""
        ov = np.zeros(Bv * C)
        for f in range(5):
            tr = rowf != f
            ov[~tr] = fit_predict(Xv[tr][:, cols], tr, Xv[~tr][:, cols])
        return ov, fit_predict(Xv[:, cols], np.ones(Bv * C, bool), Xt[:, cols])

    def classifier(seed=args.seed, weight=None, settings=None, **extra):
        def fp(X, rows, Xp):
            m = lgb.LGBMClassifier(**{**clf, **(settings or {})}, random_state=seed, **extra).fit(
                X, yv[rows], sample_weight=None if weight is None else weight[rows])
            return np.log(np.clip(m.predict_proba(Xp)[:, 1], 1e-12, None))
        return fp

    results = {"plain": {"note": "the transformer's own ranking", "metrics": plain["test"],
                         "validation_metrics": plain["valid"], "seeds": [args.seed], "params": refit}}
    timings = {}

    def add(name, ov, ot, description):
        v = metrics(D["valid"], ov.reshape(Bv, C))
        t = metrics(D["test"], ot.reshape(Bt, C))
        change = (lambda m, k: {"revenue_change": m["revenue@20"] / plain[k]["revenue@20"] - 1,
                                "ndcg_change": m["ndcg@20"] / plain[k]["ndcg@20"] - 1})
        results[name] = {"note": description, "metrics": {**t, **change(t, "test")},
                         "validation_metrics": {**v, **change(v, "valid")}, "seeds": [args.seed], "params": {}}
        r = results[name]
        console.log(f"{name:24s} valid rev {r['validation_metrics']['revenue_change']:+.3f} "
                    f"ndcg {r['validation_metrics']['ndcg_change']:+.3f} | test rev {r['metrics']['revenue_change']:+.3f} "
                    f"ndcg {r['metrics']['ndcg_change']:+.3f}")

    def timed(name, fn):
        t0 = time.perf_counter()
        out = fn()
        timings[name] = time.perf_counter() - t0
        return out

    ov, ot = timed("stage", lambda: oof_and_test(classifier(), base_cols))
    add("stage", ov + logv["valid"], ot + logv["test"], "classifier P x learned value (r2_policies.sh, ALS+BPR)")
    lp_v, lp_t = ov, ot   # reused by the hurdle model
    if args.settings:
        half_user = np.repeat(np.random.default_rng(args.seed + 1).permutation(Bv) % 2 == 0, C)

        def half_users():
            def fp(X, rows, Xp):   # drop half of the training users (rows stay grouped by user)
                keep = half_user[rows]
                m = lgb.LGBMClassifier(**clf, random_state=args.seed).fit(X[keep], yv[rows][keep])
                return np.log(np.clip(m.predict_proba(Xp)[:, 1], 1e-12, None))
            return oof_and_test(fp, base_cols)
        ov, ot = timed("stage_half_users", half_users)
        add("stage_half_users", ov + logv["valid"], ot + logv["test"],
            "the reference trained on half of each fold's training users (and, for test, of the validation users)")
        for ne, lr, nl, mc in SETTINGS:
            name = f"stage_{ne}_{lr:g}_{nl}_{mc}"
            st = dict(n_estimators=ne, learning_rate=lr, num_leaves=nl, min_child_samples=mc)
            ov, ot = timed(name, lambda st=st: oof_and_test(classifier(settings=st), base_cols))
            add(name, ov + logv["valid"], ot + logv["test"],
                f"the reference with {ne} trees, learning rate {lr:g}, {nl} leaves, {mc} rows per leaf at least")

    if not args.settings:
        def bagged():
            parts = [oof_and_test(classifier(seed=args.seed + s, subsample=0.7, subsample_freq=1,
                                             colsample_bytree=0.7), base_cols) for s in range(3)]
            return np.mean([p[0] for p in parts], 0), np.mean([p[1] for p in parts], 0)
        ov, ot = timed("stage_bagged", bagged)
        add("stage_bagged", ov + logv["valid"], ot + logv["test"], "mean log P of 3 subsampled classifiers x learned value")

        uw = np.repeat(1.0 / np.maximum(D["valid"]["ntarget"], 1), C)
        ov, ot = timed("stage_user_weighted", lambda: oof_and_test(classifier(weight=uw / uw.mean()), base_cols))
        add("stage_user_weighted", ov + logv["valid"], ot + logv["test"],
            "classifier with rows weighted 1 / the user's target items, x learned value")

        log_rev = np.log(np.where(rv > 0, rv, 1.0))

        def hurdle():
            def fp(X, rows, Xp):
                pos = yv[rows] == 1
                m = lgb.LGBMRegressor(**clf, random_state=args.seed).fit(X[pos], log_rev[rows][pos])
                return m.predict(Xp)
            return oof_and_test(fp, base_cols)
        ov, ot = timed("hurdle", hurdle)
        add("hurdle", lp_v + ov, lp_t + ot, "classifier P x exp(LightGBM log revenue fitted on the bought candidates)")
        add("stage_hurdle_mean", lp_v + (ov + logv["valid"]) / 2, lp_t + (ot + logv["test"]) / 2,
            "classifier P x the geometric mean of the learned value and the hurdle's value (two value estimates "
            "averaged in log space)")

        def tweedie():
            def fp(X, rows, Xp):
                m = lgb.LGBMRegressor(objective="tweedie", tweedie_variance_power=1.5, **clf,
                                      random_state=args.seed).fit(X, rv[rows])
                return np.log(np.clip(m.predict(Xp), 1e-12, None))
            return oof_and_test(fp, base_cols)
        ov, ot = timed("tweedie", tweedie)
        add("tweedie", ov, ot, "one LightGBM with a Tweedie loss (power 1.5) on the candidate's holdout revenue, "
            "zeros included: E[revenue] directly")

        def share_xent():
            def fp(X, rows, Xp):
                m = lgb.LGBMRegressor(objective="cross_entropy", **clf, random_state=args.seed).fit(X, share[rows])
                return m.predict(Xp)
            return oof_and_test(fp, base_cols)
        ov, ot = timed("share_xentropy", share_xent)
        add("share_xentropy", ov, ot, "LightGBM cross-entropy on the candidate's share of the user's holdout spend")

        grades = np.where(yv == 1, np.maximum(1, np.round(share * 30)), 0).astype(int)

        def lambdarank():
            def fp(X, rows, Xp):
                m = lgb.LGBMRanker(objective="lambdarank", label_gain=list(range(31)), lambdarank_truncation_level=30,
                                   **clf, random_state=args.seed).fit(X, grades[rows], group=np.full(rows.sum() // C, C))
                return m.predict(Xp)
            return oof_and_test(fp, base_cols)
        ov, ot = timed("lambdarank_share", lambdarank)
        add("lambdarank_share", ov, ot, "LambdaRank, the share of holdout spend graded 0..30")

        for c in extra:
            cols = base_cols + [k for k, f in enumerate(names) if f.startswith(f"c_{c}_")]
            ov, ot = timed(f"stage_plus_{c}", lambda cols=cols: oof_and_test(classifier(), cols))
            add(f"stage_plus_{c}", ov + logv["valid"], ot + logv["test"],
                "the reference with a second transformer (seed + 1) as a third companion" if c == "transformer"
                else f"the reference with {c} (settings chosen on validation) as a third companion")

    chosen = max(results, key=lambda k: results[k]["validation_metrics"]["revenue@20"])
    result = {"protocol": "R2-stage-probe", "dataset": meta["dataset"], "data_sha256": meta["data_sha256"],
              "git_commit": git_commit(), "command": command_line(), "device": device_info("cpu"),
              "started_at": started, "wall_seconds": time.perf_counter() - t_start,
              "description": (f"probe (--settings): the purchase stage over the transformer's top {args.n_candidates} R2 candidates "
                              "(ALS+BPR companions) trained on half the users and under other LightGBM settings, "
                              "each ranking by P x learned value; validation out-of-fold, test from the fit on the "
                              "whole validation window") if args.settings else (f"probe: second stages over the transformer's top {args.n_candidates} R2 candidates (features of "
                              "PurchaseStage with ALS+BPR companions), trained on the validation window, each "
                              "ranking by its estimate of expected revenue; validation out-of-fold, test from "
                              "the fit on the whole validation window"),
              "split": split.info, "plain_evaluation_metrics": plain_evaluate,
              "n_candidates": args.n_candidates, "candidate_revenue_coverage": coverage,
              "candidate_rows": {"valid": int(Bv * C), "test": int(Bt * C)}, "features": names,
              "variant_seconds": timings, "chosen_on_validation_revenue": chosen,
              "models": results}
    if args.history_extra:
        result["history_extra"] = args.history_extra
        result["description"] += (f"; the pool adds up to {args.history_extra} of each user's past items outside the "
                                  "top candidates, those they spent most on")
    path = write_result(args.out, result)
    console.log(f"validation would choose {chosen}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
