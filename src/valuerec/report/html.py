"""One self-contained HTML report: benchmark tables, value and churn charts, lifecycle, training curves
and example users. Plotly's JavaScript is inlined once, so the file opens offline; every chart also has
a table or caption so the page reads in print.

The report only renders what it is given: ``ReportInputs`` collects result files and, where a model and
store are at hand, predictions computed from them. Numbers are never typed in here; each comes from a
result file or a computation on the model and store.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

METRIC_ORDER = ["ndcg@10", "hr@10", "ndcg@20", "hr@20", "recall@20", "revenue@20", "mrr", "coverage@10",
                "gini", "spearman", "decile_mape", "rmse", "mae", "bias", "auc", "pr_auc", "brier",
                "rps", "errors", "freshness_ms"]


@dataclass
class ReportInputs:
    title: str = "valuerec report"
    results: dict[str, dict] = field(default_factory=dict)          # file stem -> result JSON
    value_eval: dict | None = None      # y_true, y_pred, churn_true, churn_prob (arrays), label
    training_curves: dict | None = None  # {"epochs": [...], "train_loss": [...], "val_ndcg@10": [...]}
    lifecycle: dict | None = None       # {"sizes": {stage: n}, "transitions": {from: {to: n}}, "at": ..}
    examples: list[dict] = field(default_factory=list)  # per user: user_id, history, recommendations, value, stage, influences
    notes: list[str] = field(default_factory=list)


def load_results(results_dir: str | Path, skipped: list[str] | None = None) -> dict[str, dict]:
    """The result files (``*.json``) of ``results_dir`` by name. A file that is not a result (not JSON,
    or not an object whose ``models`` maps names to objects) is left out, and said in ``skipped``."""
    out = {}
    d = Path(results_dir)
    if d.exists():
        for p in sorted(d.glob("*.json")):
            try:
                res = json.loads(p.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
                why = f"not readable JSON ({type(e).__name__})"
            else:
                models = res.get("models") if isinstance(res, dict) else None
                if isinstance(models, dict) and all(isinstance(v, dict) for v in models.values()):
                    out[p.stem] = res
                    continue
                why = "not a result file (expected an object whose 'models' maps model names to objects)"
            if skipped is not None:
                skipped.append(f"{p.name}: {why}; left out")
    return out


# -- numbers -----------------------------------------------------------------------------------------
def gain_curve(y_true: np.ndarray, y_pred: np.ndarray, points: int = 101) -> tuple[list[float], list[float], list[float]]:
    """Share of total actual value captured by the top x% of users ranked by prediction (and the ideal)."""
    y_true = np.asarray(y_true, dtype=float)
    order = np.argsort(-np.asarray(y_pred, dtype=float), kind="stable")
    ideal = np.sort(y_true)[::-1]
    tot = max(y_true.sum(), 1e-12)
    cum, cum_ideal = np.cumsum(y_true[order]) / tot, np.cumsum(ideal) / tot
    xs = np.linspace(0, 1, points)
    idx = np.clip((xs * len(y_true)).astype(int) - 1, -1, len(y_true) - 1)
    take = lambda c: [0.0 if i < 0 else float(c[i]) for i in idx]  # noqa: E731
    return xs.tolist(), take(cum), take(cum_ideal)


def roc_points(y: np.ndarray, p: np.ndarray) -> tuple[list[float], list[float]]:
    y = np.asarray(y, dtype=bool)
    order = np.argsort(-np.asarray(p, dtype=float), kind="stable")
    ys = y[order]
    tpr = np.concatenate([[0.0], np.cumsum(ys) / max(ys.sum(), 1)])
    fpr = np.concatenate([[0.0], np.cumsum(~ys) / max((~ys).sum(), 1)])
    step = max(1, len(tpr) // 400)
    return fpr[::step].tolist() + [1.0], tpr[::step].tolist() + [1.0]


def decile_table(y_true: np.ndarray, y_pred: np.ndarray) -> list[dict]:
    order = np.argsort(-np.asarray(y_pred, dtype=float), kind="stable")
    groups = np.array_split(order, 10)
    return [{"decile": i + 1, "predicted": float(np.mean(y_pred[g])), "actual": float(np.mean(y_true[g])),
             "users": int(len(g))} for i, g in enumerate(groups) if len(g)]


# -- rendering -----------------------------------------------------------------------------------------
def _fmt(v) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        return f"{v:.4f}" if abs(v) < 100 else f"{v:,.1f}"
    return html.escape(str(v))


def _metric_cell(entry: dict, m: str) -> str:
    metrics = entry.get("metrics", entry)
    v = metrics.get(m)
    if v is None:
        return "<td>–</td>"
    std = (entry.get("metrics_std") or {}).get(m)
    s = _fmt(float(v)) if isinstance(v, (int, float)) else _fmt(v)
    if isinstance(std, (int, float)) and std > 0:
        s += f" <span class='std'>± {std:.4f}</span>"
    return f"<td class='num' data-metric='{html.escape(m)}'>{s}</td>"


def results_table(name: str, res: dict) -> str:
    models = res.get("models", {})
    if not models:
        return ""
    present = {m for e in models.values() for m, v in (e.get("metrics", e) or {}).items() if isinstance(v, (int, float))}
    cols = [m for m in METRIC_ORDER if m in present] or sorted(present)[:10]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    rows = []
    for model, e in models.items():
        ts = e.get("train_seconds")
        tcell = f"<td class='num'>{ts:.1f}</td>" if isinstance(ts, (int, float)) else "<td>–</td>"
        rows.append(f"<tr><th>{html.escape(model)}</th>" + "".join(_metric_cell(e, c) for c in cols) + tcell + "</tr>")
    meta = " · ".join(html.escape(str(res.get(k))) for k in ("protocol", "dataset", "device", "started_at") if res.get(k))
    return (f"<section class='results' data-result='{html.escape(name)}'><h3>{html.escape(name)}</h3>"
            f"<p class='meta'>{meta}</p><table class='bench'><thead><tr><th>model</th>{head}<th>train s</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></section>")


def _titles(d: dict) -> dict:
    """plotly.js 3 wants ``title: {text: ...}``; the string shorthand is silently ignored."""
    out = {}
    for k, v in d.items():
        if k == "title" and isinstance(v, str):
            v = {"text": v}
        elif isinstance(v, dict):
            v = _titles(v)
        out[k] = v
    return out


def _plot(div_id: str, traces: list[dict], layout: dict) -> str:
    layout = _titles(layout)
    layout = {"margin": {"l": 50, "r": 20, "t": 40, "b": 45}, "height": 360, **layout}
    return (f"<div class='chart' id='{div_id}'></div><script>Plotly.newPlot('{div_id}', {json.dumps(traces)}, "
            f"{json.dumps(layout)}, {{responsive: true, displaylogo: false}});</script>")


def value_section(v: dict) -> str:
    y, p = np.asarray(v["y_true"], float), np.asarray(v["y_pred"], float)
    xs, cum, ideal = gain_curve(y, p)
    parts = ["<section id='value'><h2>Customer value</h2>",
             f"<p>{html.escape(v.get('label', ''))}</p>",
             _plot("gain-chart", [
                 {"x": xs, "y": cum, "name": "model", "type": "scatter"},
                 {"x": xs, "y": ideal, "name": "perfect", "type": "scatter", "line": {"dash": "dot"}},
                 {"x": [0, 1], "y": [0, 1], "name": "random", "type": "scatter", "line": {"dash": "dash"}}],
                 {"title": "Gain curve: share of holdout value in the top x% of customers",
                  "xaxis": {"title": "customers ranked by predicted value"}, "yaxis": {"title": "share of value"}})]
    dec = decile_table(y, p)
    parts.append(_plot("decile-chart", [
        {"x": [d["decile"] for d in dec], "y": [d["predicted"] for d in dec], "name": "mean predicted", "type": "bar"},
        {"x": [d["decile"] for d in dec], "y": [d["actual"] for d in dec], "name": "mean actual", "type": "bar"}],
        {"title": "Deciles by predicted value", "barmode": "group", "xaxis": {"title": "decile (1 = highest predicted)"}}))
    rows = "".join(f"<tr><td>{d['decile']}</td><td class='num'>{d['predicted']:.2f}</td><td class='num'>{d['actual']:.2f}</td>"
                   f"<td class='num'>{d['users']}</td></tr>" for d in dec)
    parts.append(f"<table class='deciles'><thead><tr><th>decile</th><th>mean predicted</th><th>mean actual</th><th>users</th>"
                 f"</tr></thead><tbody>{rows}</tbody></table>")
    if v.get("churn_true") is not None and v.get("churn_prob") is not None:
        fpr, tpr = roc_points(np.asarray(v["churn_true"]), np.asarray(v["churn_prob"]))
        parts.append(_plot("roc-chart", [
            {"x": fpr, "y": tpr, "name": "churn model", "type": "scatter"},
            {"x": [0, 1], "y": [0, 1], "name": "chance", "type": "scatter", "line": {"dash": "dash"}}],
            {"title": "Churn ROC", "xaxis": {"title": "false positive rate"}, "yaxis": {"title": "true positive rate"}}))
    parts.append("</section>")
    return "".join(parts)


def curves_section(c: dict) -> str:
    traces = []
    for key, vals in c.items():
        if key == "epochs" or not isinstance(vals, list) or not vals:
            continue
        traces.append({"x": c.get("epochs", list(range(1, len(vals) + 1))), "y": vals, "name": key, "type": "scatter",
                       "yaxis": "y2" if "loss" not in key else "y"})
    return ("<section id='training'><h2>Training curves</h2>" + _plot("training-chart", traces, {
        "title": "Training loss and validation metrics by epoch", "xaxis": {"title": "epoch"},
        "yaxis": {"title": "loss"}, "yaxis2": {"title": "validation", "overlaying": "y", "side": "right"}}) + "</section>")


def lifecycle_section(lc: dict) -> str:
    sizes = lc.get("sizes", {})
    parts = ["<section id='lifecycle'><h2>Lifecycle stages</h2>",
             _plot("stage-chart", [{"x": list(sizes), "y": list(sizes.values()), "type": "bar", "name": "users"}],
                   {"title": f"Users per stage{(' at ' + str(lc['at'])) if lc.get('at') else ''}"})]
    rows = "".join(f"<tr><th>{html.escape(s)}</th><td class='num'>{n}</td></tr>" for s, n in sizes.items())
    parts.append(f"<table class='stages'><thead><tr><th>stage</th><th>users</th></tr></thead><tbody>{rows}</tbody></table>")
    tr = lc.get("transitions")
    if tr:
        cols = list(dict.fromkeys(t for v in tr.values() for t in v))
        head = "".join(f"<th>{html.escape(s)}</th>" for s in cols)
        body = "".join(f"<tr><th>{html.escape(a)}</th>" + "".join(
            f"<td class='num'>{tr.get(a, {}).get(b, 0)}</td>" for b in cols) + "</tr>" for a in tr)
        parts.append(f"<h3>Transitions {html.escape(str(lc.get('from', '')))} → {html.escape(str(lc.get('to', '')))}</h3>"
                     f"<table class='transitions'><thead><tr><th>from \\ to</th>{head}</tr></thead><tbody>{body}</tbody></table>")
    parts.append("</section>")
    return "".join(parts)


def examples_section(examples: list[dict]) -> str:
    parts = ["<section id='examples'><h2>Example users</h2>"]
    for ex in examples:
        parts.append(f"<article class='user' data-user='{html.escape(str(ex['user_id']))}'>"
                     f"<h3>User {html.escape(str(ex['user_id']))}</h3>")
        facts = []
        if ex.get("stage"):
            facts.append(f"stage <b>{html.escape(ex['stage'])}</b>" + (f" ({html.escape(ex.get('reason', ''))})" if ex.get("reason") else ""))
        if ex.get("value"):
            v = ex["value"]
            facts.append(f"expected value {v.get('expected_value', float('nan')):.2f}, p(buy) {v.get('p_buy', float('nan')):.2f}, "
                         f"churn {v.get('churn_prob', float('nan')):.2f}")
        if facts:
            parts.append("<p>" + " · ".join(facts) + "</p>")
        hist = ex.get("history", [])[-10:]
        parts.append("<div class='cols'><div><h4>Last events</h4><ol class='history'>" + "".join(
            f"<li>{html.escape(str(h.get('time', '')))} {html.escape(str(h.get('event_type', '')))} "
            f"<code>{html.escape(str(h.get('item_id', '')))}</code> {html.escape(str(h.get('text') or ''))}</li>" for h in hist)
            + "</ol></div>")
        parts.append("<div><h4>Recommended next</h4><p class='meta'>Past items are not left out; "
                     "<i>again</i> marks one the user had before.</p><ol class='recs'>" + "".join(
            f"<li><code>{html.escape(str(r['item_id']))}</code> {html.escape(str(r.get('text') or ''))}"
            + (" <i>again</i>" if r.get("again") else "") + "</li>"
            for r in ex.get("recommendations", [])) + "</ol></div>")
        if ex.get("influences"):
            parts.append("<div><h4>Events that influenced it most</h4><ol class='influences'>" + "".join(
                f"<li><code>{html.escape(str(i.get('item_id', '')))}</code> {html.escape(str(i.get('text') or ''))} "
                f"<span class='effect'>{i['effect']:+.4f}</span></li>" for i in ex["influences"]) + "</ol></div>")
        parts.append("</div></article>")
    parts.append("</section>")
    return "".join(parts)


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1150px;color:#1d232b;padding:0 1rem}
h1{margin-bottom:.2rem} h2{border-bottom:2px solid #e3e7ec;padding-bottom:.3rem;margin-top:2.2rem}
table{border-collapse:collapse;margin:.6rem 0 1.2rem;font-size:.9rem} th,td{padding:.3rem .6rem;border-bottom:1px solid #e3e7ec;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums} .std{color:#7a8591;font-size:.8em} .meta{color:#5b6570;font-size:.85rem}
.chart{width:100%;min-height:360px} .cols{display:grid;grid-template-columns:repeat(auto-fit,minmax(300px,1fr));gap:1rem}
article.user{border:1px solid #e3e7ec;border-radius:8px;padding:.3rem 1rem;margin:1rem 0} code{background:#f3f5f7;padding:0 .25rem}
.effect{color:#2f6f4f;font-variant-numeric:tabular-nums} nav a{margin-right:1rem}
@media print{.chart{page-break-inside:avoid} nav{display:none}}
"""


def render(inputs: ReportInputs) -> str:
    from plotly.offline import get_plotlyjs

    present = [("benchmarks", "Benchmarks", True), ("value", "Value", bool(inputs.value_eval)),
               ("lifecycle", "Lifecycle", bool(inputs.lifecycle)), ("training", "Training", bool(inputs.training_curves)),
               ("examples", "Examples", bool(inputs.examples))]
    body = [f"<h1>{html.escape(inputs.title)}</h1>",       # links only to the sections this report has
            "<nav>" + "".join(f"<a href='#{i}'>{t}</a>" for i, t, shown in present if shown) + "</nav>"]
    body += [f"<p class='note'>{html.escape(n)}</p>" for n in inputs.notes]
    body.append("<section id='benchmarks'><h2>Benchmarks beside the baselines</h2>")
    tables = [results_table(name, res) for name, res in inputs.results.items()]
    body += [t for t in tables if t] or ["<p>No result files found.</p>"]
    body.append("</section>")
    if inputs.value_eval:
        body.append(value_section(inputs.value_eval))
    if inputs.lifecycle:
        body.append(lifecycle_section(inputs.lifecycle))
    if inputs.training_curves:
        body.append(curves_section(inputs.training_curves))
    if inputs.examples:
        body.append(examples_section(inputs.examples))
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{html.escape(inputs.title)}</title>"
            f"<style>{CSS}</style><script>{get_plotlyjs()}</script></head><body>{''.join(body)}</body></html>")


def write_report(inputs: ReportInputs, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(inputs), encoding="utf-8")
    return out
