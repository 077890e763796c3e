"""The V1 protocol (BENCHMARKS.md), generalised to any store, cut-off and horizon.

1. Test task: population = customers with >= 1 purchase before ``cutoff``; targets = purchase revenue
   and churn in the holdout window (``horizon_days`` after the cut-off, or to the end of the data).
2. Validation task: the same construction at ``val_cutoff``; its window has the test horizon (to the
   end of the data: the gap up to the test cut-off) and must end by the test cut-off.
3. Each model's hyperparameters are chosen on validation only (fitted on events before
   ``val_cutoff``), by validation Gini + churn ROC AUC. The chosen setting is refitted on events
   before ``cutoff`` and predicted once per seed (3 seeds for stochastic models).

Every value model follows ``valuerec.models.value_baselines.ValueModel``; a new one (the behaviour
transformer's heads) joins by registering with ``@register_value(name)`` or via ``extra_models``.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from valuerec.data.dataset import Catalogue, Sequences, catalogue_from, sequences_from
from valuerec.data.schema import DataError
from valuerec.evaluation.value_metrics import churn_metrics, interval_coverage, value_metrics
from valuerec.features.labels import DAY, HoldoutWindow, ValueLabels, holdout_window, value_labels
from valuerec.features.rfm import to_unix
from valuerec.models.value_baselines import VALUE_MODEL_REGISTRY, ValueModel

log = logging.getLogger(__name__)
DEFAULT_MODELS = ("past_spend", "bgnbd_gg", "lightgbm", "ziln_mlp", "transformer")
SCALAR_SKIP = ("decile_table",)
MIN_HOLDOUT_DAYS = 7   # a shorter holdout is warned about


@dataclass
class ValueTask:
    name: str
    histories: Sequences        # the population's events before the cut-off (all event types)
    fit_histories: Sequences    # every user's events before the cut-off: what fit_value sees
    catalogue: Catalogue
    as_of: int                  # the cut-off, unix seconds
    window: HoldoutWindow
    labels: ValueLabels

    def info(self) -> dict:
        rev = self.labels.revenue
        return {**self.window.as_dict(), "population": int(len(rev)),
                "zero_spend_share": float((rev == 0).mean()), "holdout_revenue": float(rev.sum()),
                "churn_rate": float(self.labels.churned.mean()), "fit_users": int(len(self.fit_histories))}


def build_value_task(events: pd.DataFrame, items: pd.DataFrame | None, cutoff, horizon_days: float | None = None,
                     name: str = "test") -> ValueTask:
    window = holdout_window(events, cutoff, horizon_days)
    before = events[events["timestamp"] < window.cutoff]
    pop = np.array(sorted(before.loc[before["event_type"] == "purchase", "user_id"].astype(str).unique()), dtype=object)
    if len(pop) == 0:
        raise DataError(f"{name}: no customer has a purchase before the cut-off {window.cutoff}")
    cat = catalogue_from(before, items)
    fit_h = sequences_from(before, cat, unknown_items="keep")
    hist = sequences_from(before, cat, users=pop, unknown_items="keep")
    labels = value_labels(events, window, pop)
    return ValueTask(name=name, histories=hist, fit_histories=fit_h, catalogue=cat, as_of=to_unix(window.cutoff),
                     window=window, labels=labels)


def build_tasks(events, items, cutoff, val_cutoff, horizon_days: float | None = None) -> tuple[ValueTask, ValueTask]:
    test = build_value_task(events, items, cutoff, horizon_days, "test")
    vc = pd.Timestamp(val_cutoff)
    if vc >= test.window.cutoff:
        raise DataError(f"validation cutoff {vc} must be before the test cutoff {test.window.cutoff}")
    val_h = horizon_days if horizon_days is not None else (test.window.cutoff - vc) / DAY
    val_end = vc + pd.Timedelta(days=float(val_h))
    if val_end > test.window.cutoff:
        raise DataError(f"validation window {vc} + {val_h:g} days ends {val_end}, after the test cutoff "
                        f"{test.window.cutoff}; use an earlier --val-cutoff or a shorter horizon")
    # Validation sees nothing from the test holdout: its data end at the test cut-off.
    before = events[events["timestamp"] < test.window.cutoff]
    lo, hi = pd.Timestamp(before["timestamp"].min()), pd.Timestamp(before["timestamp"].max())
    if not lo < vc <= hi:
        raise DataError(f"validation cutoff (--val-cutoff) {vc} lies outside the data before the test cutoff "
                        f"({lo} to {hi}): it needs events before it (history) and after it (holdout)")
    if val_end - DAY > hi:   # the data must reach into the window's last day (as holdout_window checks)
        raise DataError(f"the validation window ({vc} + {val_h:g} days"
                        + (", up to the test cutoff" if horizon_days is None else "")
                        + f") ends {val_end}, but the data before the test cutoff end {hi}: "
                        + ("use a test cutoff nearer those last events, or give --horizon-days"
                           if horizon_days is None else "use an earlier --val-cutoff or a shorter horizon"))
    valid = build_value_task(before, items, vc, val_h, "valid")
    return valid, test


def evaluate_predictions(pred: dict[str, np.ndarray], labels: ValueLabels) -> dict:
    m = value_metrics(labels.revenue, pred["expected_value"])
    m.update(churn_metrics(labels.churned, pred["churn_prob"]))
    m["interval_coverage_80"] = interval_coverage(labels.revenue, pred["lower"], pred["upper"])
    m["mean_predicted"] = float(np.mean(pred["expected_value"]))
    m["mean_actual"] = float(np.mean(labels.revenue))
    return m


def _fit_predict(factory: Callable[..., ValueModel], params: dict, seed: int, task: ValueTask):
    model = factory(seed=seed, **params)
    t0 = time.perf_counter()
    model.fit_value(task.fit_histories, task.as_of, task.window.horizon_days, catalogue=task.catalogue)
    t1 = time.perf_counter()
    pred = model.predict_value(task.histories, np.full(len(task.histories), task.as_of, dtype=np.int64))
    t2 = time.perf_counter()
    metrics = evaluate_predictions(pred, task.labels)
    t3 = time.perf_counter()
    return model, pred, metrics, {"train_seconds": t1 - t0, "inference_seconds": t2 - t1, "eval_seconds": t3 - t2}


def _summarise(per_seed: list[dict]) -> tuple[dict, dict]:
    keys = [k for k in per_seed[0] if k not in SCALAR_SKIP]
    mean = {k: float(np.mean([m[k] for m in per_seed])) for k in keys}
    std = {k: float(np.std([m[k] for m in per_seed])) for k in keys}
    # Decile table: per group, mean over seeds.
    tables = [m["decile_table"] for m in per_seed]
    mean["decile_table"] = [
        {"decile": rows[0]["decile"], "n": rows[0]["n"],
         **{c: float(np.mean([r[c] for r in rows])) for c in ("mean_predicted", "mean_actual", "share_of_actual")}}
        for rows in zip(*tables)]
    return mean, std


def run_value_benchmark(events: pd.DataFrame, items: pd.DataFrame | None, cutoff, val_cutoff,
                        horizon_days: float | None = None, models=DEFAULT_MODELS, n_seeds: int = 3,
                        extra_models: dict[str, Callable[..., ValueModel]] | None = None,
                        console: Console | None = None, save_dir=None, expect: dict | None = None) -> dict:
    """Run the protocol; returns the ``models`` part of a result file plus the tasks' info.
    ``save_dir``: if given, each final model (seed 0) is saved under ``save_dir/<name>``.
    ``expect``: figures the test task must reproduce (e.g. V1's population 3,362 and 42.9% zero
    spenders), checked before any model runs: a mismatch means the data or its cleaning differ."""
    console = console or Console(stderr=True)
    factories = {**VALUE_MODEL_REGISTRY, **(extra_models or {})}
    unknown = [m for m in models if m not in factories]
    if unknown:
        raise DataError(f"unknown value model(s) {list(unknown)}; known: {sorted(factories)}")
    valid, test = build_tasks(events, items, cutoff, val_cutoff, horizon_days)
    for task in (valid, test):
        i = task.info()
        console.print(f"[bold]{task.name}[/bold]: cutoff {i['cutoff']}, holdout to {i['end']} "
                      f"({i['horizon_days']:.2f} days); population {i['population']:,}, "
                      f"{100 * i['zero_spend_share']:.1f}% spend nothing after it")
        if i["horizon_days"] < MIN_HOLDOUT_DAYS:
            console.print(f"[yellow]warning:[/yellow] the {task.name} holdout is only {i['horizon_days']:.2f} "
                          f"days (under {MIN_HOLDOUT_DAYS}): value and churn over so short a window say little; "
                          "use an earlier cutoff", highlight=False)
    for key, want in (expect or {}).items():
        got = test.info()[key]
        if (round(got, 3) if isinstance(want, float) else got) != want:
            raise DataError(f"test task {key} = {got}, the protocol expects {want}: the data or its cleaning differ")
    results: dict[str, dict] = {}
    failed: dict[str, str] = {}
    with Progress(console=console, transient=False) as progress:
        for name in models:
            try:
                results[name] = _run_one(name, factories[name], valid, test, n_seeds, progress, save_dir)
            except DataError as e:
                if expect:      # a reference protocol (V1) runs every model it names, or is no run of it
                    raise DataError(f"{name}: {e}") from None
                # on a user's own data, one model that cannot fit it (a degenerate BG/NBD) does not sink
                # the others
                failed[name] = str(e)
                console.print(f"[yellow]warning:[/yellow] {name} failed on this data and is left out: {e}",
                              highlight=False)
    if not results:
        raise DataError("every value model failed: " + "; ".join(f"{k}: {v}" for k, v in failed.items()))
    return {"tasks": {"valid": valid.info(), "test": test.info()}, "models": results, "failed": failed}


def _run_one(name: str, factory, valid: ValueTask, test: ValueTask, n_seeds: int, progress: Progress,
             save_dir) -> dict:
    """One model of the protocol: its settings chosen on the validation task, then fitted and scored on
    the test task with each seed (one for a deterministic model)."""
    grid = factory.param_grid() if hasattr(factory, "param_grid") else [{}]
    stochastic = bool(getattr(factory, "stochastic", False))
    seeds = list(range(n_seeds)) if stochastic else [0]
    bar = progress.add_task(f"{name}", total=len(grid) + len(seeds))
    selection = []
    for params in grid:
        _, _, vm, vt = _fit_predict(factory, params, 0, valid)
        score = vm["gini"] + vm["auc"]
        selection.append({"params": params, "score": score, "gini": vm["gini"], "auc": vm["auc"],
                          "spearman": vm["spearman"], "decile_mape": vm["decile_mape"],
                          "train_seconds": vt["train_seconds"]})
        progress.advance(bar)
    best = max(selection, key=lambda s: s["score"])
    per_seed, times, fitted, first = [], [], None, None
    for seed in seeds:
        model, _, tm, tt = _fit_predict(factory, best["params"], seed, test)
        per_seed.append(tm)
        times.append(tt)
        if fitted is None:
            fitted = model.fitted_params()
            full_params = model.config()
            first = model
        progress.advance(bar)
    if save_dir is not None:     # once every seed ran: a model that fails on a later seed leaves nothing
        first.save(os.path.join(str(save_dir), name))
    mean, std = _summarise(per_seed)
    return {
        "metrics": mean, "metrics_std": std if len(seeds) > 1 else None,
        "metrics_per_seed": [{k: v for k, v in m.items() if k not in SCALAR_SKIP} for m in per_seed],
        "seeds": seeds,
        "train_seconds": float(np.median([t["train_seconds"] for t in times])),
        "inference_seconds": float(np.median([t["inference_seconds"] for t in times])),
        "eval_seconds": float(np.median([t["eval_seconds"] for t in times])),
        "params": full_params, "fitted_params": fitted,
        "selection": {"criterion": "validation gini + churn auc", "chosen": best["params"],
                      "grid": selection},
    }


def results_table(models: dict, title: str = "customer value and churn (test cut-off)") -> Table:
    t = Table(title=title)
    for c in ("model", "gini", "spearman", "decile_mape", "rmse", "mae", "bias", "auc", "pr_auc", "brier",
              "cover80", "train s"):
        t.add_column(c, justify="right" if c != "model" else "left")
    for name, r in models.items():
        m, s = r["metrics"], r.get("metrics_std") or {}
        f = (lambda k, d=3: f"{m[k]:.{d}f}" + (f"±{s[k]:.{d}f}" if s.get(k) else ""))
        t.add_row(name, f("gini"), f("spearman"), f("decile_mape"), f("rmse", 0), f("mae", 0), f("bias"),
                  f("auc"), f("pr_auc"), f("brier"), f("interval_coverage_80"), f"{r['train_seconds']:.1f}")
    return t


V1_CUTOFF, V1_VAL_CUTOFF = "2011-09-09", "2011-06-09"
V1_EXPECT = {"population": 3362, "zero_spend_share": 0.429}


def run_value_bench(store_path: str | Path, cutoff, val_cutoff, horizon_days: float | None = None,
                    models=DEFAULT_MODELS, n_seeds: int = 3, out: str | Path | None = None,
                    meta: dict | None = None, save_dir=None, console: Console | None = None,
                    extra_models: dict | None = None, expect: dict | None = None) -> dict:
    """Load a store, run the protocol, write a result file (BENCHMARKS.md format) and print a table."""
    from valuerec.data.store import EventStore
    from valuerec.evaluation.results import command_line, device_info, git_commit, now_iso, write_result

    console = console or Console(stderr=True)
    store_path = Path(store_path)
    if not store_path.exists():
        raise DataError(f"{store_path}: no such store")
    with EventStore(store_path, read_only=True) as st:
        events, items = st.events(), st.items()
    meta = meta or {}
    result = {
        "protocol": meta.get("protocol", "V1" if meta.get("dataset") == "online-retail" else "value-cutoff"),
        "dataset": meta.get("dataset", store_path.stem), "data_sha256": meta.get("data_sha256"),
        "git_commit": git_commit(), "command": command_line(), "device": device_info("cpu"),
        "started_at": now_iso(), "store": str(store_path), "data_path": meta.get("data_path"),
        "description": ("customer value (holdout purchase revenue) and churn (no purchase in the holdout) "
                        "after a cut-off; population = customers with >= 1 purchase before it"),
        "cutoff": str(pd.Timestamp(cutoff)), "val_cutoff": str(pd.Timestamp(val_cutoff)),
        "horizon_days_requested": horizon_days, "n_seeds": n_seeds,
    }
    t0 = time.perf_counter()
    res = run_value_benchmark(events, items, cutoff, val_cutoff, horizon_days, models, n_seeds,
                              extra_models=extra_models, console=console, save_dir=save_dir, expect=expect)
    result["split"] = res["tasks"]
    result["models"] = res["models"]
    if res.get("failed"):
        result["failed_models"] = res["failed"]     # name -> why it could not run on this data
    if expect:
        result["checks"] = {k: {"expected": v, "measured": res["tasks"]["test"][k]} for k, v in expect.items()}
        if "past_spend" in result["models"] and "past_spend_gini" in (meta or {}):
            got = result["models"]["past_spend"]["metrics"]["gini"]
            result["checks"]["past_spend_gini"] = {"expected": meta["past_spend_gini"], "measured": got,
                                                   "ok": abs(got - meta["past_spend_gini"]) <= 0.0005}
    result["wall_seconds"] = time.perf_counter() - t0
    if out:
        write_result(out, result)
        console.log(f"wrote {out}")
    # A log file or pipe gets the whole table, not one cropped to 80 columns.
    wide = console if console.is_terminal else Console(stderr=True, width=170)
    wide.print(results_table(result["models"], f"{result['protocol']} on {result['dataset']}: "
                                                   "customer value and churn (test cut-off)"))
    return result
