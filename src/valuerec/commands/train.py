"""`valuerec train`: split a data set, fit a model with validation early stopping, save the artefact.

    valuerec train --data ../shared/data/amazon-beauty/Beauty.txt --model transformer --out runs/beauty
    valuerec train --store shop.duckdb --model transformer --out runs/shop --cutoff 2011-09-09 \
        --valid-cutoff 2011-06-09 --config d_model=128 --config '{"n_layers": 4}'
    torchrun --nproc_per_node 2 -m valuerec.cli train ...      # several processes / GPUs (DDP)

The artefact directory holds config.json, the weights (safetensors), items.parquet (the id map) and
metrics.json (per-epoch training curves, the validation metrics of the kept weights, test metrics).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.console import Console

from valuerec.commands.errors import print_error
from valuerec.commands.lifecycle import parse_time
from valuerec.data.schema import DataError
from valuerec.models.base import check_model_params

console = Console(stderr=True)

R2_CUTOFF, R2_VALID_CUTOFF = "2011-09-09", "2011-06-09"


def parse_config(items: list[str]) -> dict:
    """Each item: a JSON object, a path to a JSON file, or ``key=value`` (value parsed as JSON if it
    can be, else kept as a string)."""
    out: dict = {}
    for item in items:
        item = item.strip()
        if not item:
            continue
        if item.startswith("{"):
            try:
                obj = json.loads(item)
            except json.JSONDecodeError as e:
                raise DataError(f"--config {item!r}: not valid JSON ({e})") from None
        elif item.endswith(".json") and ("=" not in item or os.path.exists(item)):
            try:
                obj = json.loads(Path(item).read_text())
            except OSError as e:
                raise DataError(f"--config {item}: cannot read the file ({e.strerror or e})") from None
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise DataError(f"--config {item}: not a valid JSON file ({e})") from None
        elif "=" in item:
            key, value = item.split("=", 1)
            try:
                obj = {key.strip(): json.loads(value)}
            except json.JSONDecodeError:
                obj = {key.strip(): value}
        else:
            raise DataError(f"--config {item!r}: expected key=value, a JSON object or a .json file")
        if not isinstance(obj, dict):
            raise DataError(f"--config {item!r}: must be a JSON object")
        out.update(obj)
    return out


PROTOCOLS = ("auto", "r1", "loo", "r2", "cutoff")


def load_split(data: Path | None, store: Path | None, protocol: str, cutoff: str | None,
               valid_cutoff: str | None, cache_dir: Path):
    """Events from a file (ingested once into a cached store) or a store, split by the protocol.

    ``auto``: leave-one-out for S3-Rec sequence files, the R2 cut-off split for Online Retail, a
    cut-off split when ``--cutoff`` is given, else leave-one-out."""
    from valuerec.data.ingest import MAP_COLUMNS_HINT, detect_format, find_attributes_file
    from valuerec.data.splits import cutoff_split, leave_one_out
    from valuerec.data.store import EventStore
    from valuerec.evaluation.protocols import cached_store

    if (data is None) == (store is None):
        raise DataError("give exactly one of --data PATH or --store DB")
    fmt = None
    if data is not None:
        if not data.exists():
            raise DataError(f"{data}: no such file")
        if data.is_dir():   # a dataset folder (e.g. ../shared/data/online-retail): its one data file
            from valuerec.evaluation.protocols import resolve_online_retail_data, resolve_r1_data
            data = resolve_r1_data(data) if list(data.glob("*.txt")) else resolve_online_retail_data(data)
        fmt = detect_format(data)
        attrs = find_attributes_file(data) if fmt == "s3rec" else None
        try:
            store, _ = cached_store(data, fmt, cache_dir, attrs, console)
        except DataError as e:   # ingest's hint names options that `ingest` has and `train` does not
            if MAP_COLUMNS_HINT not in str(e):
                raise
            raise DataError(str(e).replace(MAP_COLUMNS_HINT, " `--data` reads the standard column names; for other "
                                           "names run `valuerec ingest FILE --store DB --user-col ...` and train "
                                           "with --store DB.")) from None
    elif not store.exists():
        raise DataError(f"{store}: no such store")
    with EventStore(store, read_only=True) as st:
        events, items = st.events(), st.items()
    if len(events) and events["item_id"].isna().all():
        return value_only_split(events), "value-only"
    if protocol == "auto":
        protocol = ("r2" if fmt == "online-retail" and cutoff is None else
                    "cutoff" if cutoff is not None else "loo")
    if protocol in ("r1", "loo"):
        # a return is no next interest: the next item is the next one the user did not return
        split = leave_one_out(events[events["event_type"] != "return"], items)
        if fmt != "s3rec":
            # the ranking excludes each user's past items, so a target among them cannot be found: those
            # users leave validation (early stopping) and test, as in `bench recs` (R1's own data keeps
            # the published protocol, every user counted)
            from dataclasses import replace

            from valuerec.data.splits import with_history_exclusion
            tasks = {}
            for name, task in (("valid", split.valid), ("test", split.test)):
                kept = with_history_exclusion(task, True)
                if len(kept) or not len(task):
                    tasks[name] = kept
                else:   # every next item of this task repeats the history: rank past items for it
                    tasks[name] = with_history_exclusion(task, False)
                    console.print(f"[yellow]note:[/yellow] no {name} user's next item is new to them, so the "
                                  f"{name} figures rank past items too; for repeat buying, --protocol cutoff "
                                  "fits better", highlight=False)
            split = replace(split, **tasks)
        return split, "loo"
    if protocol in ("r2", "cutoff"):
        if protocol == "cutoff" and (cutoff is None or valid_cutoff is None):
            raise DataError("a cut-off split needs --cutoff and --valid-cutoff")
        # purchases where the log has them (R2); else every event is history and target (a content log)
        types = (("purchase",) if (events["event_type"] == "purchase").any()
                 else tuple(sorted(events["event_type"].astype(str).unique())))
        return cutoff_split(events, items, cutoff or R2_CUTOFF, valid_cutoff or R2_VALID_CUTOFF,
                            target_types=types, history_types=types), protocol
    raise DataError(f"--protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")


def value_only_split(events):
    """Data without items (a transaction log of customer, date, amount): nothing to rank, so no
    ranking split. Every event is training data for the value and churn heads, which make their own
    labelled windows inside it; ``valid`` and ``test`` are None."""
    from valuerec.data.dataset import catalogue_from, sequences_from
    from valuerec.data.splits import Split

    cat = catalogue_from(events, None)
    seqs = sequences_from(events, cat, unknown_items="keep")
    info = {"users": int(len(seqs)), "items": 0, "events": int(seqs.lengths().sum()),
            "note": "value-only data: the value and churn heads train on every event; no ranking evaluation"}
    return Split(catalogue=cat, train=seqs, valid=None, test=None, train_full=seqs, info=info)


def train_cmd(
    data: Optional[Path] = typer.Option(None, "--data",
                                        help="Event file (S3-Rec .txt, Online Retail CSV, CSV/Parquet/JSONL)"),
    store: Optional[Path] = typer.Option(None, "--store", help="DuckDB event store"),
    model_name: str = typer.Option("transformer", "--model", help="Registered model name"),
    out: Path = typer.Option(..., "--out", help="Artefact directory to write"),
    protocol: str = typer.Option("auto", "--protocol", help="auto, r1/loo (leave-one-out), r2, cutoff"),
    cutoff: Optional[str] = typer.Option(None, "--cutoff", help="Test cut-off time (cut-off split)"),
    valid_cutoff: Optional[str] = typer.Option(None, "--valid-cutoff", help="Validation cut-off time"),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Maximum epochs (early stopping may stop sooner)"),
    config: list[str] = typer.Option([], "--config", help="key=value, JSON object or .json file; repeatable"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:N (default: cuda if available)"),
    seed: int = typer.Option(0, "--seed"),
    threads: int = typer.Option(0, "--threads", min=0, help="torch CPU threads (0: torch default)"),
    no_test: bool = typer.Option(False, "--no-test", help="Skip the test evaluation"),
    cache_dir: Path = typer.Option(Path("runs/stores"), "--cache-dir", help="Where ingested files are cached"),
    item_values: bool = typer.Option(False, "--item-values", help="Also learn what each user spends on an item "
                                     "(models.item_value, LightGBM) for the value-aware policies; saved in OUT/item_value"),
    item_value_horizon: float = typer.Option(91.0, "--item-value-horizon", help="Horizon of the learned item values, days"),
    purchase_stage: bool = typer.Option(False, "--purchase-stage", help="Also learn P(buy in the horizon) over the "
                                        "model's candidates on the validation window (models.purchase_stage), for "
                                        "value_aware with p=learned; saved in OUT/purchase_stage (implies --item-values; "
                                        "needs a cut-off split)"),
    stage_companions: str = typer.Option("", "--stage-companions", help="Comma-separated registered recommenders "
                                         "(default settings) fitted on the same history whose scores the purchase "
                                         "stage also reads, e.g. als,bpr"),
    stage_bags: int = typer.Option(1, "--stage-bags", help="Classifiers the purchase stage averages (geometric "
                                   "mean of P), each on 70% of the rows and features; 1: one on everything"),
    stage_value: str = typer.Option("item", "--stage-value", help="What the purchase stage multiplies P(buy) by: "
                                    "'item' (the learned item value), 'stage' (a value learned on the bought "
                                    "candidates of the validation window) or 'mean' (their geometric mean)"),
    stage_exclude_history: bool = typer.Option(True, "--stage-exclude-history/--stage-keep-history",
                                               help="Build the purchase stage's training candidates without the "
                                                    "items each user already had, as recommend and serve do by "
                                                    "default (keep them for data dominated by repeat buying when "
                                                    "you recommend with the history kept)"),
    never_recommend: str = typer.Option("", "--never-recommend", help="Item ids never to recommend (postage, fees, "
                                         "gift cards): comma-separated, @FILE (one id per line), or "
                                         "'online-retail' (its non-product stock codes). Saved as "
                                         "OUT/never_recommend.txt, which you can edit later; the model still "
                                         "learns from these events"),
    ann_index: bool = typer.Option(False, "--ann-index", help="Also build the HNSW item index the service "
                                   "retrieves from (large catalogues; needs faiss) and keep it in OUT/ann_index, so "
                                   "that serve does not build it at load"),
    refit: bool = typer.Option(False, "--refit", help="After early stopping on validation, fit a fresh model on "
                               "everything before the test (train_full: the validation events become training "
                               "data) for the epochs and with the settings validation chose, and save that one, "
                               "as bench r1/r2 do. metrics.json keeps the validation fit's figures"),
) -> None:
    """Train a model with validation early stopping and save it as an artefact directory."""
    import torch

    import valuerec.models  # noqa: F401  (registers every model)
    from valuerec.evaluation.metrics import evaluate
    from valuerec.evaluation.results import finite_json
    from valuerec.models.base import MODEL_REGISTRY
    from valuerec.training import distributed

    if threads:
        torch.set_num_threads(threads)
    final_out = out
    try:
        if model_name not in MODEL_REGISTRY:
            raise DataError(f"unknown model {model_name!r}; registered: {sorted(MODEL_REGISTRY)}")
        params = parse_config(config)
        if epochs is not None:
            params["epochs"] = epochs
        if isinstance(params.get("epochs"), int) and params["epochs"] < 1:
            # the library accepts 0 (an untrained model, e.g. for tests); saving one as a trained model is an error
            raise DataError(f"--config epochs={params['epochs']}: train needs at least 1 epoch")
        if device is not None:
            params["device"] = device
        check_model_params(model_name, MODEL_REGISTRY[model_name], params)
        try:   # its own checks (the transformer's configs, the baselines' ranges) before any data
            MODEL_REGISTRY[model_name](seed=seed, **params)
        except DataError:
            raise
        except ValueError as e:
            raise DataError(f"--config: {e}") from None
        if not (math.isfinite(item_value_horizon) and item_value_horizon > 0):
            raise DataError(f"--item-value-horizon {item_value_horizon}: must be a number of days > 0")
        cutoff_t, valid_t = parse_time(cutoff, "--cutoff"), parse_time(valid_cutoff, "--valid-cutoff")
        # the rest of the options, before any data is read
        if protocol not in PROTOCOLS:
            raise DataError(f"--protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")
        if params.get("device", "auto") != "auto":
            from valuerec.commands.bench import check_device
            check_device(params["device"])
        companions = [c.strip() for c in stage_companions.split(",") if c.strip()]
        unknown = sorted(set(companions) - set(MODEL_REGISTRY))
        if unknown:
            raise DataError(f"--stage-companions: unknown model(s) {unknown}; registered: {sorted(MODEL_REGISTRY)}")
        if "transformer" in companions:
            raise DataError("--stage-companions: the companions are fitted with their default settings and no "
                            "validation; the transformer is the model itself (give baselines, e.g. als,bpr)")
        if companions and not purchase_stage:
            raise DataError("--stage-companions is for the purchase stage: add --purchase-stage")
        blocked_ids = parse_never_recommend(never_recommend)
        from valuerec.models.purchase_stage import VALUE_SOURCES
        if stage_value not in VALUE_SOURCES:
            raise DataError(f"--stage-value {stage_value!r}: expected one of {', '.join(VALUE_SOURCES)}")
        if stage_bags < 1:
            raise DataError(f"--stage-bags {stage_bags}: expected a count of at least 1")
        if (stage_bags != 1 or stage_value != "item") and not purchase_stage:
            raise DataError("--stage-bags and --stage-value are for the purchase stage: add --purchase-stage")
        if out.exists() and not out.is_dir():
            raise DataError(f"--out {out}: is a file, expected a directory to write the model to")
        if out.is_dir() and any(out.iterdir()) and not (out / "config.json").exists():
            raise DataError(f"--out {out}: exists and is not a model directory (no config.json); choose a new "
                            "--out or empty it")
        # write into a fresh sibling directory, then swap it in: a model written over an earlier one
        # keeps none of the earlier files, and a failed run leaves the earlier model as it was
        out = out.parent / f".{out.name}.partial-{os.getpid()}"
        dist = distributed.setup(params.get("device", "auto"))
        if dist.enabled and not dist.is_main:
            torch.distributed.barrier()   # let the main rank ingest (and cache) the data first
        split, used = load_split(data, store, protocol, cutoff_t and str(cutoff_t), valid_t and str(valid_t),
                                 cache_dir)
        if purchase_stage and "valid_cutoff" not in split.info:
            raise DataError(f"--purchase-stage learns from the validation window of a cut-off split; the {used!r} "
                            "split has none (use --protocol r2 or cutoff)")
        if purchase_stage and stage_value != "item" and not any(
                np.any(np.asarray(r) > 0) for r in (split.valid.target_revenue or [])):
            raise DataError(f"--stage-value {stage_value}: the validation window has no purchase with a positive "
                            "value to learn the stage's value from; use --stage-value item")
        if len(split.catalogue) == 0 and not (model_name == "transformer" and params.get("next_item_weight") == 0):
            raise DataError(f"the data have no events with an item_id: {model_name} ranks items and has nothing "
                            "to learn from (a value-only transformer trains without items: --config "
                            "next_item_weight=0 with value_weight or churn_weight > 0)")
        value_only = used == "value-only"
        if value_only and (refit or purchase_stage or item_values or ann_index):
            raise DataError("value-only data (no items): --refit, --purchase-stage, --item-values and --ann-index "
                            "need items to rank")
        if dist.enabled and dist.is_main:
            torch.distributed.barrier()
        if dist.is_main:
            console.log(f"split ({used}): {split.info}")
        model = MODEL_REGISTRY[model_name](seed=seed, **params)
        if ann_index and not hasattr(model, "build_ann_index"):
            raise DataError(f"--ann-index: {model_name!r} has no item vectors to index (the transformer has)")
        if ann_index:
            try:
                import faiss  # noqa: F401
            except ImportError:
                raise DataError("--ann-index needs faiss: pip install 'valuerec[ann]' (faiss-cpu)") from None
        if refit and getattr(model, "final_fit", None) != "train":
            raise DataError(f"--refit: {model_name!r} does not stop early on validation (it is fitted on all the "
                            "data before the test already); nothing to refit")
        t0 = time.perf_counter()
        model.fit(split.train, split.catalogue, valid=split.valid)
        train_seconds = time.perf_counter() - t0
        ks = (10, 20)
        # validation figures come from the fit that validation stopped (a refit trains on the validation events)
        val = evaluate(model.score, split.valid, model.n_items, ks=ks) if dist.is_main and not value_only else None
        valid_model, selection = model, None
        if refit:
            from valuerec.evaluation.protocols import chosen_epochs
            from valuerec.training.checkpoint import nested_checkpoint
            # the main rank tracked validation (and chose the prior's weight): every rank refits as it says
            n_epochs, inside = distributed.broadcast_object((chosen_epochs(model), model.refit_params()))
            selection = {"epochs": n_epochs, "chosen_during_fit": inside, "train_seconds": train_seconds,
                         "best": model.best_, "history": model.history_}
            # a fresh fit: with a checkpoint_dir, its own (DIR/refit), not the validation fit's finished one
            model = MODEL_REGISTRY[model_name](seed=seed, **nested_checkpoint({**params, **inside, "epochs": n_epochs},
                                                                               "refit"))
            t0 = time.perf_counter()
            model.fit(split.train_full, split.catalogue)
            train_seconds = time.perf_counter() - t0
            if dist.is_main:
                console.log(f"refitted on train_full for {n_epochs} epochs (chosen on validation) with {inside or 'no'} "
                            f"settings chosen during the fit ({train_seconds:.0f}s)")
        if dist.is_main:
            test = None if no_test or value_only else evaluate(model.score, split.test, model.n_items, ks=ks)
            if blocked_ids:
                if valid_model is not model:     # the purchase stage learns on the candidates it will serve
                    valid_model.set_never_recommend(blocked_ids)
                absent = model.set_never_recommend(blocked_ids)
                console.log(f"never recommended: {len(blocked_ids) - len(absent)} item(s) of the catalogue"
                            + (f"; not in it (kept in the list, left out if they appear): {absent[:10]}"
                               + (f" and {len(absent) - 10} more" if len(absent) > 10 else "") if absent else ""))
            model.save(out)
            if ann_index:
                t_ann = time.perf_counter()
                model.build_ann_index(cache=out / "ann_index")
                console.log(f"item index over {model.n_items} items built in {time.perf_counter() - t_ann:.0f}s")
            if item_values or purchase_stage:
                save_item_values(split, item_value_horizon, seed, out)
            if purchase_stage:
                # the stage learns on the validation window, from candidates of the model fitted before it
                save_purchase_stage(valid_model, split, item_value_horizon, seed, out, companions,
                                    stage_exclude_history, bags=stage_bags, value_source=stage_value)
            mpath = out / "metrics.json"
            metrics = json.loads(mpath.read_text()) if mpath.exists() else {}
            metrics.update({"protocol": used, "split": split.info, "train_seconds": train_seconds,
                            "valid": val, "test": test, "seed": seed,
                            "data": str(data) if data else None, "store": str(store) if store else None})
            if selection:
                metrics["refit"] = {"trained_on": "train_full", "valid_from": "the validation-stopped fit", **selection}
            mpath.write_text(json.dumps(finite_json(metrics), indent=2, default=float, allow_nan=False))
            replace_dir(out, final_out)
            shown = {k: round(v, 4) for k, v in (test or val or {}).items() if "@" in k or k == "mrr"}
            console.log(f"saved {final_out} (trained {train_seconds:.0f}s); "
                        + ("value and churn heads only (no items to rank)" if value_only
                           else f"{'test' if test else 'valid'}: {shown}"))
        del model, valid_model
        distributed.cleanup()
    except DataError as e:
        print_error(console, e)
        raise typer.Exit(code=2) from None
    finally:
        if out != final_out and out.exists():   # a run that failed before the swap
            shutil.rmtree(out, ignore_errors=True)


def parse_never_recommend(spec: str) -> list[str]:
    """``--never-recommend``: comma-separated ids, ``@FILE`` (one id per line, '#' comments) or
    'online-retail' (``ONLINE_RETAIL_NON_PRODUCTS``); several joined by commas."""
    from valuerec.data.ingest import ONLINE_RETAIL_NON_PRODUCTS
    from valuerec.models.base import read_never_recommend

    out: list[str] = []
    for part in (x.strip() for x in spec.split(",")):
        if not part:
            continue
        if part.startswith("@"):
            f = Path(part[1:])
            if not f.is_file():
                raise DataError(f"--never-recommend {part}: no such file")
            out += read_never_recommend(f)
        elif part == "online-retail":
            out += ONLINE_RETAIL_NON_PRODUCTS
        else:
            out.append(part)
    return list(dict.fromkeys(out))


def replace_dir(new: Path, final: Path) -> None:
    """Move the directory ``new`` to ``final``, replacing a model directory there."""
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        final.rename(old)
        new.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        final.parent.mkdir(parents=True, exist_ok=True)
        new.rename(final)


def save_item_values(split, horizon_days: float, seed: int, out: Path) -> None:
    """Fit ``ItemValueModel`` on the whole history of the split (train_full), with its newest event as
    the cut-off, and save it in ``OUT/item_value`` (``recommend``, ``serve`` and the policies read it)."""
    from valuerec.models.item_value import ItemValueModel

    h = split.train_full
    if h.times is None or not any(len(t) for t in h.times):
        raise DataError("--item-values needs event times and values")
    cutoff = max(int(t.max()) for t in h.times if len(t)) + 1
    price = split.catalogue.price if split.catalogue.price is not None else None
    m = ItemValueModel(horizon_days=horizon_days, seed=seed).fit(h, cutoff, len(split.catalogue), price)
    m.save(out / ItemValueModel.DIRNAME)
    console.log(f"item values: learned from {m.train_rows_} user-item pairs of the last {horizon_days:g} days")


def save_purchase_stage(model, split, horizon_days: float, seed: int, out: Path,
                        companions: list[str] | None = None, exclude_history: bool = True, bags: int = 1,
                        value_source: str = "item") -> None:
    """Learn ``PurchaseStage`` on the validation window: ``model`` (fitted on the history before the
    validation cut-off) gives the candidates, what the validation users bought after the cut-off the
    labels, item values learned as of that cut-off the value features. Its item statistics then move
    to the whole history (newest event + 1 s) and it is saved in ``OUT/purchase_stage``. ``companions``:
    registered recommenders fitted, with default settings, on the same history as ``model``.
    ``exclude_history``: build the candidates without each user's past items, as they will be served.
    ``bags`` and ``value_source``: as ``PurchaseStage``'s (the value regressor is learned from what the
    validation users spent on each item when the split has it)."""
    import pandas as pd

    from valuerec.models.base import MODEL_REGISTRY
    from valuerec.models.item_value import ItemValueModel
    from valuerec.models.purchase_stage import PurchaseStage

    vcut = int(pd.Timestamp(split.info["valid_cutoff"]).value // 10**9)
    price = split.catalogue.price if split.catalogue.price is not None else None
    iv = ItemValueModel(horizon_days=horizon_days, seed=seed).fit(split.train, vcut, len(split.catalogue), price)
    fitted = {c: MODEL_REGISTRY[c](seed=seed).fit(split.train, split.catalogue) for c in companions or []}
    revenue = split.valid.target_revenue
    stage = PurchaseStage(folds=1, seed=seed, companions=fitted, bags=bags, value_source=value_source).fit(
        model, split.valid.inputs, split.valid.targets, as_of=vcut, reference=split.train, item_value=iv,
        exclude=[h[h >= 0] for h in split.valid.inputs.items] if exclude_history else None,
        target_revenue=revenue if value_source != "item" else None)
    newest = max(int(t.max()) for t in split.train_full.times if len(t)) + 1
    stage.at(split.train_full, newest).save(out / PurchaseStage.DIRNAME)
    console.log(f"purchase stage: learned from {stage.train_rows_} candidates of {stage.train_users_} validation "
                f"users (positive rate {stage.positive_rate_:.3f})")


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)
