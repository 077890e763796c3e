"""Benchmark protocols R1 and R2 (../shared/BENCHMARKS.md), generic over every registered model.

For each model: hyperparameters are chosen on the validation split only (a small grid, fitted with the
first seed on ``split.train``, scored on ``split.valid``), then the chosen configuration is fitted on
``split.train_full`` once per seed and the test split is scored once per fitted model. Deterministic
models (class attribute ``deterministic = True``) run once. Any model constructed as
``cls(seed=..., **params)`` with ``fit(train, catalogue, valid=EvalTask)`` plugs in unchanged; models
that early-stop receive ``split.valid`` in both fits (its targets never include a test item).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from valuerec.data.dataset import Sequences
from valuerec.data.ingest import file_sha256, ingest
from valuerec.data.schema import DataError
from valuerec.data.splits import Split, cutoff_split, leave_one_out
from valuerec.data.store import EventStore
from valuerec.evaluation.metrics import evaluate
from valuerec.evaluation.results import (aggregate_seeds, command_line, device_info, git_commit, now_iso,
                                         results_table, write_result)
from valuerec.training.checkpoint import nested_checkpoint

DEFAULT_CACHE = Path("runs/stores")

# Validation grids of the baselines (lists = values to try), chosen on validation NDCG. Each spans
# the values R1 and R2 chose with a smaller grid on both sides (that grid's choices sat at its edges:
# item-kNN's 200 neighbours and decay 0.6 on R1, 50 on R2; ALS's 128 factors and alpha 10 (R1) / 1
# (R2); BPR's 128 factors and learning rate 0.05; TIFU-KNN's alpha 0.4, 100 neighbours and within-
# basket decay 0.95), so that a baseline is not held back by its grid. A CPU run of the R1 baselines
# takes about 20 minutes with them.
DEFAULT_GRIDS: dict[str, dict[str, list]] = {
    "itemknn": {"neighbours": [20, 50, 200, 500], "recency_decay": [1.0, 0.8, 0.6, 0.4]},
    "repeat": {"decay": [1.0, 0.99, 0.95]},
    "tifuknn": {"alpha": [0.2, 0.4, 0.6, 0.8], "neighbours": [50, 100, 300], "basket": ["time", "day"],
                "within_decay": [0.9, 0.95, 0.99], "group_decay": [0.8]},
    "als": {"factors": [64, 128, 256], "regularization": [0.01, 0.1, 1.0], "alpha": [0.3, 1.0, 10.0, 40.0],
            "iterations": [15]},
    "bpr": {"factors": [64, 128, 256], "learning_rate": [0.01, 0.05, 0.1], "regularization": [0.01],
            "iterations": [100, 300]},
}


@dataclass
class ProtocolSpec:
    name: str
    ks: tuple[int, ...]
    coverage_k: int
    metrics: list[str]
    select_metric: str
    description: str = ""
    extra: dict = field(default_factory=dict)
    # Early-stopping models: after choosing the epoch count on validation (fitted on ``train``), refit
    # on ``train_full`` for that many epochs, so that they train on the data the baselines are fitted on.
    # R2's train_full adds a whole period (three months); R1's adds each user's validation item, their
    # most recent event before the test target: measured one step back on validation data only
    # (benchmarks/r1_refit_check.py), the refit scored well above the validation-stopped fit.
    # ``bench r1|r2 --refit/--no-refit`` overrides it.
    refit_full: bool = False


R1 = ProtocolSpec(
    name="R1", ks=(10, 20), coverage_k=10,
    metrics=["hr@10", "ndcg@10", "hr@20", "ndcg@20", "mrr", "coverage@10"], select_metric="ndcg@10",
    description="next item, leave-one-out, full ranking, history excluded", refit_full=True)
R2 = ProtocolSpec(
    name="R2", ks=(20,), coverage_k=20,
    metrics=["recall@20", "ndcg@20", "hr@20", "revenue@20", "mrr", "coverage@20"], select_metric="ndcg@20",
    description="next purchases after cutoff 2011-09-09, full ranking, no exclusion", refit_full=True)


# -- data ----------------------------------------------------------------------------------------------
def resolve_r1_data(data: str | Path) -> Path:
    p = Path(data)
    if p.is_dir():
        cand = p / "Beauty.txt"
        if not cand.exists():
            txt = sorted(p.glob("*.txt"))
            if len(txt) != 1:
                raise DataError(f"{p}: expected Beauty.txt (or exactly one S3-Rec .txt file) in the directory")
            cand = txt[0]
        p = cand
    if not p.exists():
        raise DataError(f"{p}: no such file")
    return p


def cached_store(path: Path, fmt: str, cache_dir: str | Path = DEFAULT_CACHE,
                 attributes: str | Path | None = None, console: Console | None = None) -> tuple[Path, str]:
    """Ingest ``path`` once into ``cache_dir/<sha256[:16]>.duckdb`` (reused on later runs)."""
    sha = file_sha256(path)
    tag = sha[:16] + (("-" + file_sha256(attributes)[:8]) if attributes else "")
    store_path = Path(cache_dir) / f"{tag}.duckdb"
    if not store_path.exists():
        tmp = store_path.with_name(store_path.name + ".partial")
        if tmp.exists():
            tmp.unlink()
        if console:
            console.log(f"ingesting {path} -> {store_path}")
        try:
            with EventStore(tmp) as st:
                ingest(st, path, fmt=fmt, attributes=attributes)
        except BaseException:   # a failed ingest leaves no store behind
            for p in (tmp, tmp.with_name(tmp.name + ".wal")):
                p.unlink(missing_ok=True)
            raise
        tmp.replace(store_path)
    return store_path, sha


def load_split_r1(data: str | Path, attributes: str | Path | None = None,
                  cache_dir: str | Path = DEFAULT_CACHE, console: Console | None = None) -> tuple[Split, dict]:
    path = resolve_r1_data(data)
    store_path, sha = cached_store(path, "s3rec", cache_dir, attributes, console)
    with EventStore(store_path, read_only=True) as st:
        events, items = st.events(), st.items()
    split = leave_one_out(events, items)
    meta = {"dataset": _dataset_name(path), "data_path": str(path), "data_sha256": sha, "store": str(store_path)}
    return split, meta


def resolve_online_retail_data(data: str | Path) -> Path:
    """The Online Retail file: the path itself, or the one .csv(.gz) in a directory."""
    path = Path(data)
    if path.is_dir():
        cands = sorted(path.glob("*.csv*"))
        if len(cands) != 1:
            raise DataError(f"{path}: expected exactly one Online Retail .csv(.gz) in the directory")
        path = cands[0]
    if not path.exists():
        raise DataError(f"{path}: no such file")
    return path


def load_split_r2(data: str | Path, cache_dir: str | Path = DEFAULT_CACHE, cutoff: str = "2011-09-09",
                  valid_cutoff: str = "2011-06-09", console: Console | None = None) -> tuple[Split, dict]:
    path = resolve_online_retail_data(data)
    store_path, sha = cached_store(path, "online-retail", cache_dir, None, console)
    with EventStore(store_path, read_only=True) as st:
        events, items = st.events(), st.items()
    split = cutoff_split(events, items, cutoff=cutoff, valid_cutoff=valid_cutoff)
    meta = {"dataset": "online-retail", "data_path": str(path), "data_sha256": sha, "store": str(store_path)}
    return split, meta


def _dataset_name(path: Path) -> str:
    stem = path.stem.lower()
    return "amazon-beauty" if stem == "beauty" else stem


# -- grids ---------------------------------------------------------------------------------------------
def model_base(name: str) -> str:
    """The registered model of a run name: ``transformer:no_text`` -> ``transformer``."""
    return name.split(":", 1)[0]


def expand_grid(model: str, params: dict | None, tune: bool = True) -> list[dict]:
    """Configurations to try: the default grid of ``model`` overridden by ``params`` (a list value is a
    set to try, a scalar is fixed). ``tune=False`` keeps only the given params (model defaults else)."""
    grid = dict(DEFAULT_GRIDS.get(model, {})) if tune else {}
    for k, v in (params or {}).items():
        grid[k] = v if isinstance(v, list) else [v]
    if not grid:
        return [{}]
    keys = sorted(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


# -- running -------------------------------------------------------------------------------------------
def _evaluate(model, task, n_items: int, spec: ProtocolSpec, batch_size: int, device: str) -> dict:
    r = evaluate(model.score, task, n_items, ks=spec.ks, batch_size=batch_size, device=device,
                 coverage_k=spec.coverage_k)
    return r


def _pick(metrics: dict, names: list[str]) -> dict:
    return {m: float(metrics[m]) for m in names if m in metrics}


def _fit(cls, params: dict, seed: int, train: Sequences, split: Split, pass_valid: bool):
    torch.manual_seed(seed)
    np.random.seed(seed)
    model = cls(seed=seed, **params)
    t0 = time.perf_counter()
    model.fit(train, split.catalogue, valid=split.valid if pass_valid else None)
    return model, time.perf_counter() - t0


def run_model(name: str, split: Split, spec: ProtocolSpec, seeds: list[int], params: dict | None = None,
              tune: bool = True, batch_size: int = 512, device: str = "cpu",
              console: Console | None = None) -> dict:
    """Select on validation, then fit on train_full and test once per seed. Returns the result entry.

    ``name`` is a registered model, or ``model:variant`` for a named variant of one (its own params,
    e.g. an ablation ``transformer:no_text`` beside ``transformer`` in the same run)."""
    import valuerec.models  # noqa: F401  (registers every model)
    from valuerec.models.base import MODEL_REGISTRY
    console = console or Console(stderr=True)
    base = model_base(name)
    if base not in MODEL_REGISTRY:
        raise DataError(f"unknown model {name!r}; registered: {sorted(MODEL_REGISTRY)}")
    cls = MODEL_REGISTRY[base]
    n_items = len(split.catalogue)
    deterministic = bool(getattr(cls, "deterministic", False))
    leaky = getattr(cls, "fit_on", None) == "all_events"
    # Early-stopping models get split.valid in the final fit too (it holds no test item); a model can
    # opt out with ``final_fit_uses_valid = False`` (e.g. to retrain for a fixed, selected epoch count).
    final_valid = bool(getattr(cls, "final_fit_uses_valid", True))
    # ``final_fit = "train"``: an early-stopping model is fitted on ``split.train`` with ``split.valid``
    # deciding when to stop (the SASRec protocol: the validation item is never a training target, and
    # the test input still includes it). The selection fit of the first seed is that seed's final model.
    train_only = getattr(cls, "final_fit", "train_full") == "train"
    grid = expand_grid(base, params, tune)
    if "monitor" in cls(seed=0).config():
        # what a fit chooses on validation itself (its best epoch, the transformer's prior weight) is
        # chosen on the protocol's metric too, unless the run's params name another
        grid = [{"monitor": spec.select_metric, **cfg} for cfg in grid]
    validation: dict = {"selected_by": spec.select_metric, "grid": []}

    # 1. Selection on validation (first seed), unless there is nothing to choose.
    chosen = grid[0]
    chosen_model = None
    if leaky:
        validation["skipped"] = "reproduction-only model fitted on every event; no selection"
    else:
        best = -np.inf
        for i, cfg in enumerate(grid):
            # each fit of the run has its own checkpoint_dir subfolder (nested_checkpoint), so that none
            # resumes another's checkpoint
            model, fit_s = _fit(cls, nested_checkpoint(cfg, f"grid-{i}") if len(grid) > 1 else cfg, seeds[0],
                                split.train, split, True)
            r = _evaluate(model, split.valid, n_items, spec, batch_size, device)
            row = {"params": cfg, "metrics": _pick(r, spec.metrics), "train_seconds": fit_s,
                   "eval_seconds": r["eval_seconds"], **_training_stats(model)}
            validation["grid"].append(row)
            console.log(f"{name} valid {cfg}: {spec.select_metric}={r[spec.select_metric]:.4f} "
                        f"(fit {fit_s:.1f}s, eval {r['eval_seconds']:.1f}s)")
            if r[spec.select_metric] > best:
                best, chosen = r[spec.select_metric], cfg
                chosen_model = (model, fit_s) if train_only else None
        validation["best"] = next(g["metrics"] for g in validation["grid"] if g["params"] == chosen)
    validation["chosen"] = chosen   # the settings asked for (a fit may choose more inside: per_seed)

    # 2. Final fits on train_full, test once per seed.
    runs = []
    run_seeds = seeds[:1] if deterministic or leaky else seeds
    train_full = split.train_full
    if leaky:
        # Every event, test targets included: only for reproducing a published figure.
        train_full = Sequences.concat(split.train_full, _targets_as_history(split))
    refit_epochs = None
    if train_only and spec.refit_full and chosen_model is not None:
        refit_epochs = chosen_epochs(chosen_model[0])
        validation["refit_epochs"] = refit_epochs
    for seed in run_seeds:
        if refit_epochs is not None:
            # settings the selection fit chose on validation (e.g. the co-occurrence prior's weight) are
            # kept: the refit has no validation data to choose them on
            chosen_inside = chosen_model[0].refit_params()
            validation["chosen_during_fit"] = chosen_inside
            model, fit_s = _fit(cls, nested_checkpoint({**chosen, **chosen_inside, "epochs": int(refit_epochs)},
                                                       f"refit-seed{seed}"), seed, train_full, split, False)
        elif train_only and seed == seeds[0] and chosen_model is not None:
            model, fit_s = chosen_model
        elif train_only:
            model, fit_s = _fit(cls, nested_checkpoint(chosen, f"seed{seed}"), seed, split.train, split, True)
        else:
            model, fit_s = _fit(cls, nested_checkpoint(chosen, f"final-seed{seed}"), seed, train_full, split,
                                final_valid)
        r = _evaluate(model, split.test, n_items, spec, batch_size, device)
        runs.append({"seed": seed, "metrics": _pick(r, spec.metrics), "train_seconds": fit_s,
                     "eval_seconds": r["eval_seconds"], "score_seconds": r["score_seconds"]})
        # The same fitted model scored without one of its parts (reported, never used for selection).
        ablations = model.ablation_score_fns()
        if ablations:
            runs[-1]["ablations"] = {
                k: _pick(evaluate(fn, split.test, n_items, ks=spec.ks, batch_size=batch_size, device=device,
                                  coverage_k=spec.coverage_k), spec.metrics) for k, fn in ablations.items()}
        runs[-1].update(model.fit_report())
        runs[-1].update(_training_stats(model))
        console.log(f"{name} test seed {seed}: " + ", ".join(f"{m}={r[m]:.4f}" for m in spec.metrics if m in r)
                    + f" (fit {fit_s:.1f}s, eval {r['eval_seconds']:.1f}s)")
    entry = aggregate_seeds(runs, spec.metrics)
    entry["params"] = {k: v for k, v in model.config().items() if k != "seed"}
    entry["deterministic"] = deterministic
    entry["final_fit_valid"] = final_valid
    entry["final_fit_on"] = ("train (early stopping on valid)" if train_only and refit_epochs is None
                             else f"train_full for {refit_epochs} epochs (chosen on valid)" if refit_epochs
                             else "train_full")
    entry.update(_training_stats(model))  # the last seed's (each seed's are in per_seed)
    entry["validation"] = validation
    if leaky:
        entry["note"] = ("REPRODUCTION ONLY: popularity counted over every event including the test "
                         "targets (a leak); kept only to explain the S3-Rec repository's published figure")
    return entry


def chosen_epochs(model) -> int:
    """The epoch count an early-stopping fit chose on validation (its best epoch, else all it ran):
    what a refit without validation data trains for."""
    return (getattr(model, "best_", None) or {}).get("epoch") or len(model.history_)


def _training_stats(model) -> dict:
    """Epochs run, the best validation epoch, median seconds per epoch and training seconds up to the
    best epoch of an epoch-trained model (empty for the others)."""
    hist = getattr(model, "history_", None)
    if hist is None:
        return {}
    best_epoch = (getattr(model, "best_", None) or {}).get("epoch")
    out = {"epochs_run": len(hist), "best_epoch": best_epoch}
    if hist:
        out["seconds_per_epoch"] = float(np.median([r.get("train_seconds", r.get("seconds", 0.0)) for r in hist]))
        out["seconds_to_best"] = float(sum(r.get("seconds", 0.0) for r in hist[:best_epoch or len(hist)]))
    return out


def _targets_as_history(split: Split) -> Sequences:
    """The test target of each user as a one-event history, aligned with ``split.train_full`` users."""
    by_user = {u: t for u, t in zip(split.test.inputs.user_ids, split.test.targets)}
    empty = np.zeros(0, np.int64)
    return Sequences(items=[np.asarray(by_user.get(u, empty), dtype=np.int64) for u in split.train_full.user_ids])


def popularity_count_variants(split: Split, spec: ProtocolSpec = R1, batch_size: int = 512) -> list[dict]:
    """Which counting / exclusion detail reproduces a published popularity figure? Each variant ranks
    the test split by item counts from a different event set, with and without history exclusion.
    Only ``train_full`` with exclusion is the honest R1 protocol; ``all events`` counts the test targets."""
    from valuerec.data.splits import EvalTask
    n = len(split.catalogue)
    all_events = Sequences.concat(split.train_full, _targets_as_history(split))

    def counts(seqs: Sequences, per_user_once: bool) -> np.ndarray:
        parts = [np.unique(s) if per_user_once else s for s in seqs.items]
        items = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return np.bincount(items[items >= 0], minlength=n).astype(np.float32)

    no_exclusion = EvalTask(inputs=split.test.inputs, targets=split.test.targets, exclude=None, name="test")
    out = []
    for events_name, seqs in (("train", split.train), ("train_full", split.train_full),
                              ("all events (incl. test targets)", all_events)):
        for once in (False, True):
            c = torch.from_numpy(counts(seqs, once))
            for excl_name, task in (("history excluded", split.test), ("nothing excluded", no_exclusion)):
                r = evaluate(lambda h, c=c: c.expand(len(h), -1).clone(), task, n, ks=spec.ks,
                             batch_size=batch_size, coverage_k=spec.coverage_k)
                out.append({"counted_over": events_name, "each_user_once": once, "exclusion": excl_name,
                            "honest": events_name != "all events (incl. test targets)",
                            "metrics": _pick(r, spec.metrics)})
    return out


def run_protocol(spec: ProtocolSpec, split: Split, meta: dict, models: list[str], seeds: int | list[int] = 3,
                 out: str | Path | None = None, params: dict | None = None, tune: bool = True,
                 batch_size: int = 512, device: str = "cpu", command: str | None = None,
                 console: Console | None = None, peers: dict[str, str] | None = None) -> dict:
    """Every model in ``models`` on ``split`` (selection on validation, test per seed); then each peer
    implementation (``{name: its venv's python}``, ``evaluation.peers``) on the same split."""
    console = console or Console(stderr=True)
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not seed_list:
        raise DataError("at least one seed is needed")
    result = {
        "protocol": spec.name, "dataset": meta["dataset"], "data_sha256": meta["data_sha256"],
        "git_commit": git_commit(), "command": command or command_line(), "device": device_info(device),
        "started_at": now_iso(), "models": {},
        "description": spec.description, "metric_names": spec.metrics, "selection_metric": spec.select_metric,
        "split": split.info, "data_path": meta.get("data_path"), "refit_full": spec.refit_full,
    }
    t0 = time.perf_counter()
    console.log(f"{spec.name} on {meta['dataset']}: {split.info}")
    for name in models:
        result["models"][name] = run_model(name, split, spec, seed_list, (params or {}).get(name), tune,
                                           batch_size, device, console)
        result["wall_seconds"] = time.perf_counter() - t0
        if out:
            write_result(out, result)  # after every model, so a long run leaves partial results
    for name, python in (peers or {}).items():
        from valuerec.evaluation.peers import run_peer
        result["models"][f"peer:{name}"] = run_peer(name, python, split, spec, seed_list,
                                                    (params or {}).get(f"peer:{name}"), console=console)
        result["wall_seconds"] = time.perf_counter() - t0
        if out:
            write_result(out, result)
    if spec.name == "R1" and "popularity-s3rec" in models:
        console.log("popularity reproduction: counting variants")
        result["popularity_variants"] = popularity_count_variants(split, spec, batch_size)
    result["wall_seconds"] = time.perf_counter() - t0
    if out:
        write_result(out, result)
        console.log(f"wrote {out}")
    console.print(results_table(result, spec.metrics))
    return result


def custom_spec(kind: str, ks: tuple[int, ...], exclude_history: bool, revenue: bool) -> ProtocolSpec:
    """The ranking protocol of ``bench recs`` on any store: ``kind`` "loo" (R1's construction: each user's
    last event is the test target, the one before it the validation target) or "cutoff" (R2's: the items
    each user buys after a cut-off); metrics at every k of ``ks``, the model chosen on NDCG at the first."""
    ks = tuple(dict.fromkeys(int(k) for k in ks))
    metrics = [f"{m}@{k}" for k in ks for m in (("hr", "ndcg") if kind == "loo" else ("recall", "ndcg", "hr"))]
    metrics += [f"revenue@{k}" for k in ks] if revenue else []
    what = ("next item, leave-one-out" if kind == "loo" else "items bought after a cut-off")
    excl = "each user's past items excluded" if exclude_history else "past items ranked too"
    return ProtocolSpec(name=f"recs-{kind}", ks=ks, coverage_k=ks[0], metrics=metrics + ["mrr", f"coverage@{ks[0]}"],
                        select_metric=f"ndcg@{ks[0]}", description=f"{what}, full ranking, {excl}", refit_full=True)


def run_recs(split: Split, meta: dict, kind: str, ks: tuple[int, ...], exclude_history: bool, models: list[str],
             seeds: int | list[int] = 3, out: str | Path | None = None, params: dict | None = None,
             tune: bool = True, batch_size: int = 512, device: str = "cpu", console: Console | None = None,
             refit_full: bool | None = None, peers: dict[str, str] | None = None) -> dict:
    """``bench recs``: every model on a split of any store, as R1 and R2 run (validation choice, seeds,
    refit), with the history excluded from the ranking as asked."""
    from valuerec.data.splits import with_history_exclusion
    valid, test = (with_history_exclusion(t, exclude_history) for t in (split.valid, split.test))
    if not len(valid) or not len(test):
        raise DataError(f"the {kind} split has {len(valid)} validation and {len(test)} test users"
                        + (" once each user's past items are excluded (no user has a new item to find; try "
                           "--keep-history)" if exclude_history else "") + ": nothing to evaluate")
    info = {**split.info, "exclude_history": exclude_history, "valid_users": len(valid), "test_users": len(test)}
    warnings = []
    if max(ks) >= len(split.catalogue):
        warnings.append(f"k={max(ks)} is at least the catalogue's {len(split.catalogue)} items: every list holds "
                        "(nearly) everything, so hit rates near 1 say little")
    if min(len(valid), len(test)) < 50:
        warnings.append(f"only {len(valid)} validation and {len(test)} test users: the figures and the choice of "
                        "settings are noisy")
    console = console or Console(stderr=True)
    for w in warnings:
        console.print(f"[yellow]warning:[/yellow] {w}", highlight=False, soft_wrap=True)
    if warnings:
        info["warnings"] = warnings
    split = replace(split, valid=valid, test=test, info=info)
    spend = test.target_revenue is not None and test.total_revenue is not None and test.total_revenue.sum() > 0
    spec = custom_spec(kind, ks, exclude_history, bool(spend))
    if refit_full is not None:
        spec = replace(spec, refit_full=refit_full)
    return run_protocol(spec, split, meta, models, seeds, out, params, tune, batch_size, device, None, console, peers)


def run_r1(data_path: str | Path, models: list[str], seeds: int | list[int] = 3, out: str | Path | None = None,
           params: dict | None = None, attributes: str | Path | None = None,
           cache_dir: str | Path = DEFAULT_CACHE, tune: bool = True, batch_size: int = 512,
           device: str = "cpu", command: str | None = None, console: Console | None = None,
           peers: dict[str, str] | None = None, refit_full: bool | None = None) -> dict:
    split, meta = load_split_r1(data_path, attributes, cache_dir, console)
    spec = R1 if refit_full is None else replace(R1, refit_full=refit_full)
    return run_protocol(spec, split, meta, models, seeds, out, params, tune, batch_size, device, command, console,
                        peers)


def run_r2(data_path: str | Path, models: list[str], seeds: int | list[int] = 3, out: str | Path | None = None,
           params: dict | None = None, cache_dir: str | Path = DEFAULT_CACHE, tune: bool = True,
           batch_size: int = 512, device: str = "cpu", command: str | None = None,
           console: Console | None = None, cutoff: str = "2011-09-09", valid_cutoff: str = "2011-06-09",
           refit_full: bool | None = None, peers: dict[str, str] | None = None) -> dict:
    split, meta = load_split_r2(data_path, cache_dir, cutoff, valid_cutoff, console)
    spec = R2 if refit_full is None else replace(R2, refit_full=refit_full)
    return run_protocol(spec, split, meta, models, seeds, out, params, tune, batch_size, device, command, console,
                        peers)
