"""`valuerec demo`: the whole flow on the bundled Online Retail subset, end to end, on a fresh machine.

ingest -> cut-off split (R2 construction on the sample) -> baselines and the behaviour transformer ->
full-ranking evaluation -> value and churn -> lifecycle stages -> report. Each stage uses the library
functions the CLI exposes; nothing here is demo-only logic except the choice of small settings.
"""

from __future__ import annotations

import json
import logging
import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from valuerec.data.ingest import ingest
from valuerec.data.splits import cutoff_split
from valuerec.data.store import EventStore
from valuerec.evaluation.metrics import evaluate
from valuerec.models import MODEL_REGISTRY

log = logging.getLogger(__name__)
console = Console()

DEMO_CUTOFF = "2011-09-09"
DEMO_VALID_CUTOFF = "2011-06-09"
RANK_METRICS = ["recall@20", "ndcg@20", "hr@20", "revenue@20"]


def demo_data_path() -> Path:
    return Path(str(resources.files("valuerec") / "demo_data" / "online_retail_sample.csv.gz"))


def run_demo(out: Path, epochs: int | None = None, seed: int = 0, quick: bool = False) -> dict:
    """Run the demo into ``out``; returns a summary dict (also written to ``out/demo_summary.json``)."""
    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    np.random.seed(seed)
    summary: dict = {"out": str(out)}

    console.rule("[bold]1. ingest")
    db = out / "store.duckdb"
    with EventStore(db) as store:
        rep = ingest(store, demo_data_path())
        info = store.summary()
        events, items = store.events(), store.items()
    console.print(f"{rep.rows_read:,} rows -> {info['events']:,} events ({rep.added:,} new), "
                  f"{info['users']} customers, {info['items_with_events']:,} products, {info['first']} .. {info['last']}")
    summary["store"] = info

    console.rule("[bold]2. split and fit")
    split = cutoff_split(events, items, cutoff=DEMO_CUTOFF, valid_cutoff=DEMO_VALID_CUTOFF)
    console.print(f"cut-off {DEMO_CUTOFF}: {split.info['test_users']} customers to rank for, "
                  f"{split.info['items']:,} products in the catalogue")
    names = [n for n in ("popularity", "itemknn", "als", "bpr", "transformer") if n in MODEL_REGISTRY]
    results, fitted = {}, {}
    for name in names:
        params = demo_params(name, epochs, quick)
        t0 = time.perf_counter()
        model = MODEL_REGISTRY[name](seed=seed, **params) if name != "popularity" else MODEL_REGISTRY[name]()
        if name == "transformer":
            model.fit(split.train, split.catalogue, valid=split.valid)
        else:
            model.fit(split.train_full, split.catalogue)
        fit_s = time.perf_counter() - t0
        res = evaluate(model.score, split.test, len(split.catalogue), ks=(10, 20))
        res["train_seconds"] = fit_s
        results[name], fitted[name] = res, model
        model.save(out / "models" / name)
        console.print(f"  {name:<12} fitted in {fit_s:6.1f}s  ndcg@20={res['ndcg@20']:.4f}")
    table = Table(title="Next purchases after the cut-off (full catalogue ranking)")
    table.add_column("model")
    for m in RANK_METRICS + ["train_seconds"]:
        table.add_column(m, justify="right")
    for name, res in results.items():
        table.add_row(name, *[f"{res[m]:.4f}" for m in RANK_METRICS], f"{res['train_seconds']:.1f}")
    console.print(table)
    summary["ranking"] = {n: {m: r[m] for m in RANK_METRICS + ["train_seconds"]} for n, r in results.items()}

    console.rule("[bold]3. recommendations for a sample customer")
    best = max(results, key=lambda n: results[n]["ndcg@20"])
    model = fitted[best]
    u = int(np.argmax([len(s) for s in split.test.inputs.items]))
    hist = split.test.inputs.subset([u])
    cat = split.catalogue
    top, scores = model.recommend(hist, k=10, exclude=None)
    user = str(hist.user_ids[0])
    console.print(f"customer {user} ({len(hist.items[0])} purchases before {DEMO_CUTOFF}), model: {best}")
    recs = []
    for rank, (i, s) in enumerate(zip(top[0], scores[0]), start=1):
        text = cat.text[i] if cat.text is not None and cat.text[i] else ""
        console.print(f"  {rank:>2}. {cat.item_ids[i]:<8} {text}")
        recs.append({"item_id": str(cat.item_ids[i]), "text": text, "score": float(s)})
    summary["sample_user"] = {"user_id": user, "model": best, "recommendations": recs}

    summary["seconds"] = time.perf_counter() - t_start
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    console.rule()
    console.print(f"done in {summary['seconds']:.0f}s; artefacts in {out}/ (store.duckdb, models/, demo_summary.json)")
    console.print(f"serve the best model: valuerec serve --model {out / 'models' / best} --store {db}")
    return summary


def demo_params(name: str, epochs: int | None, quick: bool) -> dict:
    """Small settings that train in minutes on 2 CPU cores."""
    if name == "transformer":
        p = {"max_epochs": epochs or (3 if quick else 40)}
        return p
    return {}
