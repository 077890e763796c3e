"""Lifecycle stages on V1 (Online Retail): every customer's stage with its reason at the validation
and test cut-offs, the stage table, the transition matrix between the two dates, and what each
stage's customers actually did in the following holdout (does the stage mean anything?).

At each cut-off the value model is fitted on the events before that cut-off only (the V1 tasks of
``valuerec.evaluation.value_protocol``), so a stage never uses the future it is checked against.
Population: the V1 customers of the test cut-off (>= 1 purchase before 2011-09-09); at the
validation cut-off the same customers are staged from their events before 2011-06-09 (a customer
without events then is ``new``).

    python benchmarks/lifecycle_v1.py --data ../shared/data/online-retail                 # LightGBM value model
    python benchmarks/lifecycle_v1.py --value-model transformer --params '{"epochs": 6}'   # the transformer's heads
    python benchmarks/lifecycle_v1.py --value-model transformer \
        --params-from benchmarks/results/v1_online_retail.json   # the setting V1 chose on validation
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from valuerec.data.store import EventStore
from valuerec.evaluation.protocols import cached_store, resolve_online_retail_data
from valuerec.data.schema import DataError
from valuerec.evaluation.results import chosen_params as chosen_model_params
from valuerec.evaluation.results import command_line, device_info, git_commit, now_iso, write_result
from valuerec.evaluation.value_protocol import V1_CUTOFF, V1_VAL_CUTOFF, build_tasks
from valuerec.policies.lifecycle import (STAGES, LifecycleConfig, assign_stages, predict_value_safe, stage_sizes,
                                         truncate)

REPO = Path(__file__).resolve().parents[1]
console = Console(stderr=True)


def value_factory(name: str):
    if name == "transformer":
        from valuerec.models.transformer_value import TransformerValue
        return TransformerValue
    import valuerec.models  # noqa: F401  (registers every value model)
    from valuerec.models.value_baselines import VALUE_MODEL_REGISTRY as VALUE_REGISTRY
    if name not in VALUE_REGISTRY:
        raise SystemExit(f"unknown value model {name!r}; known: transformer, {', '.join(sorted(VALUE_REGISTRY))}")
    return VALUE_REGISTRY[name]


def outcomes(df: pd.DataFrame, revenue: np.ndarray, churned: np.ndarray) -> list[dict]:
    """Per stage: size, mean predicted value and churn, and what happened in the holdout, also against
    each user's own past spend rate per horizon (did they grow, as "expanding" predicts?)."""
    d = df.assign(actual_revenue=revenue, bought=~churned.astype(bool))
    rate = pd.to_numeric(d["past_rate_h"], errors="coerce").to_numpy(dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        d["growth"] = np.where(rate > 0, d["actual_revenue"].to_numpy(dtype=np.float64) / rate, np.nan)
    d["grew"] = np.where(rate > 0, (d["growth"] > 1.0).astype(float), np.nan)
    rows = []
    for s in STAGES:
        g = d[d["stage"] == s]
        growth = g["growth"].to_numpy(dtype=np.float64)
        growth = growth[np.isfinite(growth)]
        rows.append({"stage": s, "users": int(len(g)), "share": float(len(g) / max(len(d), 1)),
                     "mean_predicted_value": _mean(g["expected_value"]), "mean_churn_prob": _mean(g["churn_prob"]),
                     "mean_actual_revenue": _mean(g["actual_revenue"]),
                     "share_bought_in_holdout": _mean(g["bought"].astype(float)),
                     "mean_past_spend": _mean(g["past_spend"]), "mean_recency_days": _mean(g["recency_days"]),
                     "mean_past_rate_h": _mean(g["past_rate_h"]),
                     "median_growth": float(np.median(growth)) if len(growth) else None,
                     "share_grew": _mean(g["grew"])})
    return rows


def _mean(x: pd.Series) -> float | None:
    x = pd.to_numeric(x, errors="coerce").to_numpy(dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else None


def chosen_params(result_path: Path, model: str) -> dict:
    """``--params-from``: the parameters a V1 result file's validation chose for ``model``."""
    try:
        return chosen_model_params(result_path, model)
    except DataError as e:
        raise SystemExit(f"--params-from {e}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "online-retail")
    ap.add_argument("--value-model", default="lightgbm", help="registered value model, or 'transformer'")
    ap.add_argument("--params", default="{}", help="JSON: the value model's parameters")
    ap.add_argument("--params-from", type=Path, default=None,
                    help="a V1 result file: use the parameters its validation chose for --value-model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", default="{}", help="JSON: LifecycleConfig thresholds (defaults otherwise)")
    ap.add_argument("--cache-dir", type=Path, default=REPO / "runs" / "stores")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "v1_lifecycle.json")
    args = ap.parse_args(argv)

    started = now_iso()
    path = resolve_online_retail_data(args.data)
    store, sha = cached_store(path, "online-retail", args.cache_dir, None, console)
    with EventStore(store, read_only=True) as st:
        events, items = st.events(), st.items()
    valid, test = build_tasks(events, items, V1_CUTOFF, V1_VAL_CUTOFF)
    cfg = LifecycleConfig.from_dict({"horizon_days": float(test.window.horizon_days), **json.loads(args.config)})
    factory, params = value_factory(args.value_model), json.loads(args.params)
    if args.params_from is not None:
        params = {**chosen_params(args.params_from, args.value_model), **params}

    fitted, staged, timings = {}, {}, {}
    for task in (valid, test):
        t0 = time.perf_counter()
        with console.status(f"fitting {args.value_model} before {task.window.cutoff}"):
            model = factory(seed=args.seed, **params)
            model.fit_value(task.fit_histories, task.as_of, task.window.horizon_days, catalogue=task.catalogue)
        timings[task.name] = {"train_seconds": time.perf_counter() - t0}
        fitted[task.name] = model
    # Test cut-off: the V1 population as of 2011-09-09.
    at_test = np.full(len(test.histories), float(test.as_of))
    pred = predict_value_safe(fitted["test"], test.histories, at_test)
    staged["test"] = assign_stages(test.histories, at_test, pred, cfg)
    # Validation cut-off, same customers: their events before 2011-06-09, the model fitted before it.
    h_val = truncate(test.histories, float(valid.as_of))
    at_val = np.full(len(h_val), float(valid.as_of))
    staged["valid_same_customers"] = assign_stages(h_val, at_val, predict_value_safe(fitted["valid"], h_val, at_val), cfg)
    # Validation cut-off, its own population (customers then) with its own holdout outcomes.
    at_vpop = np.full(len(valid.histories), float(valid.as_of))
    staged["valid"] = assign_stages(valid.histories, at_vpop,
                                    predict_value_safe(fitted["valid"], valid.histories, at_vpop), cfg)

    a, b = staged["valid_same_customers"], staged["test"]
    assert list(a["user_id"]) == list(b["user_id"])
    m = pd.crosstab(pd.Categorical(a["stage"], categories=STAGES), pd.Categorical(b["stage"], categories=STAGES),
                    dropna=False).reindex(index=STAGES, columns=STAGES, fill_value=0)
    df = staged["test"]
    checks = {"population": int(len(df)), "expected_population": 3362,
              "one_stage_per_user": bool(df["user_id"].is_unique and len(df) == len(test.histories)),
              "every_stage_known": bool(df["stage"].isin(STAGES).all()),
              "every_reason_names_its_rule": bool(all(str(r).startswith(f"{s}: ")
                                                      for s, r in zip(df["stage"], df["reason"])))}
    examples = {s: df.loc[df["stage"] == s, ["user_id", "reason"]].head(3).to_dict(orient="records") for s in STAGES}
    result = {
        "protocol": "V1-lifecycle", "dataset": "online-retail", "data_sha256": sha, "git_commit": git_commit(),
        "command": command_line(), "device": device_info("cpu"), "started_at": started,
        "value_model": args.value_model, "value_params": params,
        "value_params_from": None if args.params_from is None else str(args.params_from), "seed": args.seed, "config": cfg.to_dict(),
        "cutoffs": {"valid": str(valid.window.cutoff), "test": str(test.window.cutoff)},
        "horizon_days": float(test.window.horizon_days), "timings": timings, "checks": checks,
        "models": {args.value_model: {"metrics": {"population": checks["population"],
                                                  "one_stage_per_user": float(checks["one_stage_per_user"])},
                                      "seeds": [args.seed], "train_seconds": sum(v["train_seconds"] for v in timings.values()),
                                      "eval_seconds": None, "params": params}},
        "advocate_value_threshold": {k: _plain(v.attrs.get("advocate_value_threshold")) for k, v in staged.items()},
        "stages": {"test": stage_sizes(staged["test"]).to_dict(orient="records"),
                   "valid_same_customers": stage_sizes(staged["valid_same_customers"]).to_dict(orient="records")},
        "outcomes": {"test": outcomes(staged["test"], test.labels.revenue, test.labels.churned),
                     "valid": outcomes(staged["valid"], valid.labels.revenue, valid.labels.churned)},
        "transitions": {"from": str(valid.window.cutoff), "to": str(test.window.cutoff), "rows": "stage at 'from'",
                        "matrix": {s: {t: int(m.loc[s, t]) for t in STAGES} for s in STAGES}},
        "examples": examples,
        "users_test": json.loads(df[["user_id", "stage", "reason", "expected_value", "churn_prob", "n_purchases",
                                     "recency_days", "tenure_days", "past_spend"]].to_json(orient="records")),
    }
    write_result(args.out, result)

    t = Table(title=f"V1 stages at {test.window.cutoff.date()} ({args.value_model}) and what followed")
    for c in ("stage", "users", "share", "pred value", "churn p", "actual revenue", "bought"):
        t.add_column(c, justify="left" if c == "stage" else "right")
    for r in result["outcomes"]["test"]:
        f = (lambda x, p=1: "-" if x is None else f"{x:.{p}f}")
        t.add_row(r["stage"], str(r["users"]), f(r["share"], 3), f(r["mean_predicted_value"]),
                  f(r["mean_churn_prob"], 2), f(r["mean_actual_revenue"]), f(r["share_bought_in_holdout"], 2))
    console.print(t)
    t2 = Table(title=f"transitions {valid.window.cutoff.date()} (rows) -> {test.window.cutoff.date()} (columns)")
    t2.add_column("from")
    for s in STAGES:
        t2.add_column(s, justify="right")
    for s in STAGES:
        t2.add_row(s, *[str(int(m.loc[s, c])) for c in STAGES])
    console.print(t2)
    console.print(f"checks: {checks} -> {args.out}")
    return 0


def _plain(v):
    return None if v is None or not np.isfinite(v) else float(v)


if __name__ == "__main__":
    sys.exit(main())
