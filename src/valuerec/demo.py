"""`valuerec demo`: the whole flow on the bundled Online Retail subset, end to end, on a fresh machine.

ingest -> next purchases after a cut-off (the R2 construction) with the baselines and the behaviour
transformer -> value and churn after the same cut-off (the V1 construction) with the value baselines
and the transformer's value heads -> lifecycle stages -> the HTML report. Every step calls the same
library functions as the benchmarks; the demo only picks small settings and the bundled data.

The model the demo deploys is the multi-task transformer from the value run: one encoder with the
next-item, value and churn heads, trained on everything before the cut-off.
"""

from __future__ import annotations

import json
import logging
import time
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

from valuerec.data.dataset import sequences_from
from valuerec.data.ingest import ONLINE_RETAIL_NON_PRODUCTS, file_sha256, ingest
from valuerec.data.schema import DataError
from valuerec.data.splits import cutoff_split
from valuerec.data.store import EventStore
from valuerec.evaluation.protocols import R2, run_protocol
from valuerec.evaluation.value_protocol import run_value_bench
from valuerec.models import load_model
from valuerec.models.base import write_never_recommend
from valuerec.models.transformer_value import TransformerValue
from valuerec.models.value_baselines import register_value  # noqa: F401  (registry import side effects)

log = logging.getLogger(__name__)
console = Console()

DEMO_CUTOFF = "2011-09-09"
DEMO_VALID_CUTOFF = "2011-06-09"
RANK_METRICS = ["recall@20", "ndcg@20", "hr@20", "revenue@20"]
VALUE_METRICS = ["gini", "spearman", "decile_mape", "auc", "brier"]


def demo_data_path() -> Path:
    return Path(str(resources.files("valuerec") / "demo_data" / "online_retail_sample.csv.gz"))


def transformer_settings(quick: bool, epochs: int | None) -> tuple[dict, dict]:
    """Small settings that train in a few minutes on 2 CPU cores (ranking run, value run)."""
    # repeat term and next-basket target (repeat buying dominates this data)
    rank = {"d_model": 64, "n_layers": 2, "max_len": 50, "dropout": 0.3, "epochs": epochs or (2 if quick else 30),
            "eval_every": 2, "patience": 3, "progress": False, "lr": 2e-3, "repeat": True, "target": "next_basket",
            # the co-occurrence / buy-again prior, weighted on validation (as R2 runs it)
            "cooc_weight": "auto", "cooc_repeat_share": "auto", "cooc_recency_decay": 1.0, "cooc_neighbours": 50}
    # 400 customers and one labelled cut-off give the value heads few steps per epoch: with 10 epochs
    # the churn head stayed in a narrow band around the base rate (no customer at-risk); 30 spread it
    value = {"epochs": epochs or (2 if quick else 30)}
    return rank, value


def make_value_factory(value_params: dict):
    """The registered transformer value model with the demo's epoch count (its other settings are
    the ones the V1 benchmark chose on validation)."""

    class DemoTransformerValue(TransformerValue):
        grid = [{**TransformerValue.chosen, **value_params}]

    DemoTransformerValue.name = "transformer"
    return DemoTransformerValue


def refuse_foreign_store(db: Path, demo_sha256: str) -> None:
    """The demo writes its own store: one that holds anything but the bundled sample (another file's
    events, events sent to a service) is refused untouched, so that the demo never adds to a user's data."""
    if not db.exists():
        return
    with EventStore(db, read_only=True) as st:
        n = st.count_events()
        shas, added = st.con.execute("SELECT list(DISTINCT sha256), sum(added) FROM ingests").fetchall()[0]
    if n and (set(shas or []) != {demo_sha256} or n != int(added or 0)):
        raise DataError(f"--out {db.parent}: its store.duckdb holds {n:,} events that are not (only) the bundled "
                        "sample's; the demo writes a store of its own, so give another --out (or remove that store)")


def run_demo(out: Path, epochs: int | None = None, seed: int = 0, quick: bool = False) -> dict:
    """Run the demo into ``out``; returns a summary (also written to ``out/demo_summary.json``)."""
    t_start = time.perf_counter()
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise DataError(f"epochs={epochs!r}: must be a whole number >= 1")
    if not isinstance(seed, int) or seed < 0:
        raise DataError(f"seed={seed!r}: must be a whole number >= 0")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out}: is a file; give a directory for the demo's store, models and report")
    results_dir = out / "results"
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"--out {out}: cannot create it ({e.strerror or e})") from None
    torch.manual_seed(seed)
    np.random.seed(seed)
    summary: dict = {"out": str(out)}
    data = demo_data_path()
    meta = {"dataset": "online-retail-demo-sample", "data_sha256": file_sha256(data), "data_path": str(data)}

    console.rule("[bold]1. ingest the bundled data into a DuckDB event store")
    db = out / "store.duckdb"
    refuse_foreign_store(db, meta["data_sha256"])
    with EventStore(db) as store:
        rep = ingest(store, data)
        info = store.summary()
        events, items = store.events(), store.items()
    console.print(f"{rep.rows_read:,} invoice lines -> {info['events']:,} events ({rep.added:,} new), "
                  f"{info['users']} customers, {info['items_with_events']:,} products, {info['first']} .. {info['last']}")
    summary["store"] = info

    rank_params, value_params = transformer_settings(quick, epochs)
    console.rule(f"[bold]2. next purchases after {DEMO_CUTOFF}: baselines and the transformer, full catalogue")
    split = cutoff_split(events, items, cutoff=DEMO_CUTOFF, valid_cutoff=DEMO_VALID_CUTOFF)
    rank_models = (["popularity", "repeat", "itemknn", "transformer"] if quick
                   else ["popularity", "repeat", "itemknn", "als", "transformer"])
    ranking = run_protocol(R2, split, meta, rank_models, seeds=[seed], out=results_dir / "demo_ranking.json",
                           params={"transformer": rank_params}, tune=not quick, console=Console(stderr=True, quiet=True))
    _table("Next purchases after the cut-off (R2 construction on the sample)", ranking["models"], RANK_METRICS)
    summary["ranking"] = {n: e["metrics"] for n, e in ranking["models"].items()}

    console.rule(f"[bold]3. customer value and churn after {DEMO_CUTOFF}: value baselines and the transformer's heads")
    value_models = ("past_spend", "lightgbm", "transformer") if quick else ("past_spend", "bgnbd_gg", "lightgbm", "transformer")
    value = run_value_bench(db, DEMO_CUTOFF, DEMO_VALID_CUTOFF, None, models=value_models, n_seeds=1,
                            out=results_dir / "demo_value.json", meta={**meta, "protocol": "V1 construction"},
                            save_dir=out / "models", console=Console(stderr=True, quiet=True),
                            extra_models={"transformer": make_value_factory(value_params)})
    _table("Holdout value and churn (V1 construction on the sample)", value["models"], VALUE_METRICS)
    summary["value"] = {n: {m: e["metrics"].get(m) for m in VALUE_METRICS} for n, e in value["models"].items()}

    console.rule("[bold]4. one model: recommendations, value, stage and the events behind them")
    model_dir = out / "models" / "transformer"
    # postage, carriage, discounts and manual lines are items of the protocols, not things to recommend
    write_never_recommend(model_dir, ONLINE_RETAIL_NON_PRODUCTS)
    model = load_model(model_dir)
    from valuerec.policies.lifecycle import predict_value_safe, stage_sizes, stages_at

    cut = pd.Timestamp(DEMO_CUTOFF).timestamp()
    users = np.array(sorted(events["user_id"].unique()), dtype=object)
    seqs = sequences_from(events, model.catalogue_, users=users, unknown_items="keep")
    stages = stages_at(seqs, cut, lambda h, a: predict_value_safe(model, h, a))
    sizes = stage_sizes(stages)
    t = Table(title=f"Lifecycle stages on {DEMO_CUTOFF}")
    t.add_column("stage")
    t.add_column("customers", justify="right")
    for r in sizes.itertuples():
        t.add_row(r.stage, str(r.users))
    console.print(t)
    summary["stages"] = dict(zip(sizes["stage"], sizes["users"].astype(int).tolist()))
    _sample_user(model, events, seqs, stages, cut, summary)

    console.rule("[bold]5. report")
    from valuerec.report.build import build_inputs
    from valuerec.report.html import write_report

    inputs = build_inputs(model_dir, db, results_dir, title="valuerec demo: Online Retail sample")
    report = write_report(inputs, out / "report.html")
    summary["report"] = str(report)
    summary["seconds"] = time.perf_counter() - t_start
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    console.rule()
    console.print(f"done in {summary['seconds']:.0f}s. Report: {report.resolve()}")
    console.print("Serve this model (recommendations, value, stage, explanations over HTTP):")
    console.print(f"  VALUEREC_API_KEYS='change-me-long-key:read,write,admin' valuerec serve --model {model_dir} --store {db}")
    return summary


def _sample_user(model, events, seqs, stages, cut, summary) -> None:
    from valuerec.explain.influence import explain_events, item_target, occlusion

    before = seqs.prefix([int(np.searchsorted(t, cut)) for t in seqs.times])
    n_buy = np.array([int(((ty == 3) & (t < cut)).sum()) for ty, t in zip(seqs.event_types, seqs.times)])
    u = int(np.argsort(n_buy)[len(n_buy) * 3 // 4])  # a typical repeat customer
    hist = before.subset([u])
    top, _ = model.recommend(hist.item_only(), k=5, exclude=None)
    pv = model.predict_value(hist, as_of=cut)
    cat = model.catalogue_
    st = stages.iloc[u]
    console.print(f"customer {hist.user_ids[0]}: {n_buy[u]} purchase lines before {DEMO_CUTOFF}; stage "
                  f"[bold]{st['stage']}[/bold] ({st['reason']})")
    console.print(f"  expected spend next {model.model_config.horizon_days:.0f} days: {pv['expected_value'][0]:.2f} "
                  f"(80% interval {pv['lower'][0]:.2f}..{pv['upper'][0]:.2f}), churn probability {pv['churn_prob'][0]:.2f}")
    recs = []
    for rank, i in enumerate(top[0], start=1):
        text = cat.text[i] if cat.text is not None and cat.text[i] else ""
        console.print(f"  {rank}. {cat.item_ids[i]:<8} {text}")
        recs.append({"item_id": str(cat.item_ids[i]), "text": text})
    recent = hist.item_only()
    n = len(recent.items[0])
    if n > 40:
        recent = recent.prefix([n]).subset([0])
        recent = type(recent)(items=[recent.items[0][-40:]], times=[recent.times[0][-40:]],
                              event_types=[recent.event_types[0][-40:]], values=[recent.values[0][-40:]],
                              user_ids=recent.user_ids)
    _, infl = occlusion(item_target(model, int(top[0][0])), recent)
    console.print(why_line(cat.item_ids[top[0][0]], explain_events(recent, infl[0], cat, top=None)))
    summary["sample_user"] = {"user_id": str(hist.user_ids[0]), "stage": st["stage"],
                              "expected_value": float(pv["expected_value"][0]), "recommendations": recs}


def why_line(item_id, influences: pd.DataFrame, top: int = 3) -> str:
    """The events that raised the item's score most (positive occlusion effect), largest first; events
    that lowered it are counter-evidence, not a reason. Says so when no event raised it."""
    up = influences[influences["effect"] > 0].sort_values("effect", ascending=False, kind="stable").head(top)
    if up.empty:
        return f"  why {item_id} first: no event in the recent history raised its score"
    text = lambda t: f" {t}" if isinstance(t, str) and t else ""  # noqa: E731  (missing text: None or NaN)
    return f"  why {item_id} first: " + "; ".join(
        f"{r.item_id}{text(r.text)} ({r.effect:+.3f})" for r in up.itertuples())


def _table(title: str, models: dict, metrics: list[str]) -> None:
    t = Table(title=title)
    t.add_column("model")
    for m in metrics + ["train s"]:
        t.add_column(m, justify="right")
    for name, e in models.items():
        vals = [e["metrics"].get(m) for m in metrics]
        t.add_row(name, *["–" if v is None else f"{v:.4f}" for v in vals], f"{e.get('train_seconds', 0):.1f}")
    console.print(t)
