"""Result files (BENCHMARKS.md "Result files"): run metadata, per-seed aggregation, writing, tables."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

RESULT_KEYS = ("protocol", "dataset", "data_sha256", "git_commit", "command", "device", "started_at", "models")
MODEL_KEYS = ("metrics", "seeds", "train_seconds", "eval_seconds", "params")


def git_commit(repo: str | Path | None = None) -> str:
    """HEAD commit of the project checkout, with '-dirty' when the working tree has changes."""
    repo = Path(repo) if repo else Path(__file__).resolve().parents[3]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not head:
        return "unknown"
    return head + ("-dirty" if dirty else "")


def device_info(device: str = "cpu") -> str:
    """The machine in words: GPU name when evaluating on CUDA, else CPU model and cores/threads used."""
    import torch
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name(0)}"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"CPU {model}, {os.cpu_count()} cores visible, torch threads {torch.get_num_threads()}, "
            f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def command_line() -> str:
    return " ".join(["valuerec" if i == 0 and a.endswith("valuerec") else a for i, a in enumerate(sys.argv)])


def aggregate_seeds(runs: list[dict], metric_names: list[str]) -> dict:
    """Mean / std (population, ddof=0) over per-seed runs ``[{seed, metrics, train_seconds, eval_seconds}]``."""
    out = {"metrics": {}, "metrics_std": {}}
    for m in metric_names:
        vals = np.array([r["metrics"][m] for r in runs if m in r["metrics"]], dtype=float)
        if len(vals):
            out["metrics"][m] = float(vals.mean())
            out["metrics_std"][m] = float(vals.std()) if len(vals) > 1 else 0.0
    out["seeds"] = [r["seed"] for r in runs]
    out["train_seconds"] = float(np.mean([r["train_seconds"] for r in runs]))
    out["eval_seconds"] = float(np.mean([r["eval_seconds"] for r in runs]))
    out["per_seed"] = runs
    return out


def write_result(path: str | Path, result: dict) -> Path:
    missing = [k for k in RESULT_KEYS if k not in result]
    if missing:
        raise ValueError(f"result is missing key(s) {missing}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=_json_default) + "\n")
    tmp.replace(path)
    return path


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def format_metric(mean: float, std: float | None, n_seeds: int) -> str:
    return f"{mean:.4f} ± {std:.4f}" if std is not None and n_seeds > 1 else f"{mean:.4f}"


def results_table(result: dict, metric_names: list[str] | None = None):
    """A rich Table: models x metrics (mean ± std over seeds), fit and eval seconds."""
    from rich.table import Table
    models = result["models"]
    if metric_names is None:
        metric_names = result.get("metric_names") or sorted({m for v in models.values() for m in v["metrics"]})
    t = Table(title=f"{result['protocol']} on {result['dataset']} (test)")
    t.add_column("model")
    for m in metric_names:
        t.add_column(m, justify="right")
    t.add_column("seeds", justify="right")
    t.add_column("fit s", justify="right")
    t.add_column("eval s", justify="right")
    for name, v in models.items():
        n = len(v.get("seeds", []))
        cells = [format_metric(v["metrics"][m], v.get("metrics_std", {}).get(m), n) if m in v["metrics"] else "-"
                 for m in metric_names]
        t.add_row(name, *cells, str(n), f"{v['train_seconds']:.1f}", f"{v['eval_seconds']:.1f}")
    return t
