"""Result files (BENCHMARKS.md "Result files"): run metadata, per-seed aggregation, writing, tables."""

from __future__ import annotations

import copy
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


_FIRST_COMMIT: str | None = None


def git_commit(repo: str | Path | None = None) -> str:
    """HEAD commit of the project checkout, with '-dirty' when the working tree has changes. For this
    project's checkout it is read once per process, when this module is first imported: a long run
    records the code it started with, not the commit someone made while it ran."""
    global _FIRST_COMMIT
    if repo is None and _FIRST_COMMIT is not None:
        return _FIRST_COMMIT
    out = _read_commit(Path(repo) if repo else Path(__file__).resolve().parents[3])
    if repo is None:
        _FIRST_COMMIT = out
    return out


def _read_commit(repo: Path) -> str:
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
    return " ".join(["valuerec" if i == 0 and (a.endswith("valuerec") or a.endswith("valuerec/__main__.py")) else a
                     for i, a in enumerate(sys.argv)])


def aggregate_seeds(runs: list[dict], metric_names: list[str]) -> dict:
    """Mean / std (population, ddof=0) over per-seed runs ``[{seed, metrics, train_seconds, eval_seconds}]``,
    and the mean of their ``ablations`` when every run has them."""
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
    if runs and all("ablations" in r for r in runs):   # the same fits scored without a part
        out["ablations"] = {k: {m: float(np.mean([r["ablations"][k][m] for r in runs]))
                                for m in runs[0]["ablations"][k]} for k in runs[0]["ablations"]}
    return out


def write_result(path: str | Path, result: dict) -> Path:
    missing = [k for k in RESULT_KEYS if k not in result]
    if missing:
        raise ValueError(f"result is missing key(s) {missing}")
    path = Path(path)
    if path.is_dir():
        from valuerec.data.schema import DataError
        raise DataError(f"{path}: is a directory; give a file path for the result")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=_json_default) + "\n")
    tmp.replace(path)
    return path


def read_result(path: str | Path) -> dict:
    """A result file, checked for the keys every result and every model entry has."""
    from valuerec.data.schema import DataError
    path = Path(path)
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read a result file ({e})") from None
    missing = [k for k in RESULT_KEYS if not isinstance(result, dict) or k not in result]
    if missing:
        raise DataError(f"{path}: not a result file, missing key(s) {missing}")
    if not isinstance(result["models"], dict):
        raise DataError(f"{path}: 'models' must map model names to entries")
    for name, entry in result["models"].items():
        bad = [k for k in ("metrics", "seeds") if not isinstance(entry, dict) or k not in entry]
        if bad or not entry["seeds"]:
            raise DataError(f"{path}: model {name!r} has no {bad or 'seeds'}; not a result entry")
    return result


# must agree between the parts of one run before they can be merged
MERGE_SAME = ("protocol", "dataset", "data_sha256", "git_commit", "device", "split", "metric_names",
              "selection_metric", "refit_full")
TRAINING_STATS = ("epochs_run", "best_epoch", "seconds_per_epoch", "seconds_to_best")
# decided on the first seed's validation and reused for the others (a refit's epochs, a prior's weight):
# parts that decided differently are not one run
DECIDED_ONCE = ("refit_epochs", "chosen_during_fit")


def _diff_keys(a, b) -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        return ", ".join(f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in keys)
    return f"{a!r} vs {b!r}"


def merge_results(results: list[dict], names: list[str] | None = None, across_commits: bool = False,
                  replace: bool = False) -> dict:
    """One result from parts of one protocol run (the same data, split, code and device), e.g. one seed per
    process. A model in one part is copied; a model in several parts must have the same settings and
    different seeds, and gets its seeds pooled: mean / std and the ablations over all of them, the
    validation of the part with the first seed (the others' under ``validation_parts``), the training
    statistics of the last seed (as a single run reports them). A deterministic model (run once per
    part) must have the same figures in each and is kept once. Top-level extras (e.g.
    ``popularity_variants``) come from the first part that has them. ``across_commits`` accepts parts
    run at different commits (the caller vouches that the code they ran is the same); the merged
    ``git_commit`` then lists each distinct commit, and each part keeps its own. ``replace``: a model in
    several parts is a rerun (e.g. a baseline rerun with a wider grid) and is taken from the last part
    that has it; ``replaced`` records which entries were dropped."""
    from valuerec.data.schema import DataError
    names = names or [f"part {i + 1}" for i in range(len(results))]
    if len(results) < 2:
        raise DataError("merge needs at least two result files")
    first = results[0]
    for i, (name, r) in enumerate(zip(names, results)):
        for other, o in zip(names[:i], results[:i]):
            if r == o:
                raise DataError(f"{name} is the same result as {other}; each part must be its own run")
    for name, r in zip(names[1:], results[1:]):
        for k in MERGE_SAME:
            if k == "git_commit" and across_commits:
                continue
            if r.get(k) != first.get(k):
                raise DataError(f"{name}: {k} differs from {names[0]} ({r.get(k)!r} vs {first.get(k)!r}); "
                                "only parts of one run can be merged")
    metric_names = first.get("metric_names") or sorted({m for r in results for v in r["models"].values()
                                                        for m in v["metrics"]})
    merged: dict = {}
    for r in results:   # every top-level key, from the first part that has it
        for k, v in r.items():
            if k not in merged and k not in ("models", "wall_seconds"):
                merged[k] = v
    merged["command"] = ("valuerec bench merge " + ("--across-commits " if across_commits else "")
                         + ("--replace " if replace else "") + " ".join(names))
    merged["started_at"] = min(r["started_at"] for r in results)
    commits = list(dict.fromkeys(str(r.get("git_commit")) for r in results))
    if len(commits) > 1:
        merged["git_commit"] = ", ".join(commits)
    merged["parts"] = [{"file": n, "command": r["command"], "started_at": r["started_at"],
                        "git_commit": r.get("git_commit"),
                        "wall_seconds": r.get("wall_seconds"), "models": list(r["models"])}
                       for n, r in zip(names, results)]
    merged["models"] = {}
    order = list(dict.fromkeys(m for r in results for m in r["models"]))
    for model in order:
        parts = [(n, r["models"][model]) for n, r in zip(names, results) if model in r["models"]]
        if replace and len(parts) > 1:
            merged.setdefault("replaced", []).extend({"model": model, "file": n, "by": parts[-1][0]}
                                                     for n, _ in parts[:-1])
            parts = parts[-1:]
        if len(parts) == 1:
            merged["models"][model] = parts[0][1]
            continue
        entries = [e for _, e in parts]
        if all(e.get("deterministic") for e in entries):
            # a deterministic model runs once per part (whatever its seed): the same run repeated
            for n, e in parts[1:]:
                for what in ("params", "metrics"):
                    if e.get(what) != entries[0].get(what):
                        raise DataError(f"{n}: {model} is deterministic, yet its {what} differ from "
                                        f"{parts[0][0]} ({_diff_keys(entries[0].get(what), e.get(what))})")
            merged["models"][model] = entries[0]
            continue

        def asked(e: dict):   # the settings asked for; a fit may choose more inside (e.g. a prior's weight)
            return (e.get("validation") or {}).get("chosen", e.get("params"))
        for n, e in parts[1:]:
            if asked(e) != asked(entries[0]):
                raise DataError(f"{n}: {model} has other settings than in {parts[0][0]} "
                                f"({_diff_keys(asked(entries[0]), asked(e))}); cannot pool its seeds")
            for k in DECIDED_ONCE:
                a, b = (entries[0].get("validation") or {}).get(k), (e.get("validation") or {}).get(k)
                if a != b:
                    raise DataError(f"{n}: {model}'s {k} ({b!r}) differs from {parts[0][0]} ({a!r}): a single "
                                    "run decides it once on the first seed's validation, so these parts are "
                                    "not one run")
        seeds = [s for e in entries for s in e["seeds"]]
        if len(seeds) != len(set(seeds)):
            raise DataError(f"{model}: seed(s) {sorted({s for s in seeds if seeds.count(s) > 1})} occur in more "
                            "than one part (run each part with its own --first-seed)")
        if any("per_seed" not in e for e in entries):
            raise DataError(f"{model}: a part has no per_seed runs to pool")
        runs = sorted((run for e in entries for run in e["per_seed"]), key=lambda run: run["seed"])
        entry = aggregate_seeds(runs, metric_names)
        by_first = sorted(parts, key=lambda p: min(p[1]["seeds"]))
        head, tail = by_first[0][1], by_first[-1][1]
        for k, v in head.items():
            # (ablations are pooled above only when every seed has them; a part's own mean is not copied)
            if k not in entry and k not in TRAINING_STATS and k not in ("validation", "ablations"):
                entry[k] = v
        # the last seed's training statistics: from its own run, else from its part's entry (peers
        # report them per entry)
        last = runs[-1]
        entry.update({k: last[k] if k in last else tail[k] for k in TRAINING_STATS if k in last or k in tail})
        entry["validation"] = head.get("validation")
        entry["validation_parts"] = {n: e.get("validation") for n, e in by_first[1:]}
        merged["models"][model] = entry
    return merged


def _validation_scores(entry: dict, metric: str) -> dict[str, float]:
    """Validation score of each part (seed process) of an entry: its own ``validation`` and, after a
    merge, ``validation_parts``."""
    out = {}
    for name, v in [("validation", entry.get("validation"))] + list((entry.get("validation_parts") or {}).items()):
        best = (v or {}).get("best") or {}
        if metric in best:
            out[name] = float(best[metric])
    return out


def choose_variant(result: dict, among: list[str], as_name: str, metric: str | None = None) -> dict:
    """Model choice between configurations run as separate entries (e.g. ``transformer:l3`` beside
    ``transformer:base``, each its own processes, merged): the one whose validation ``metric`` (the
    protocol's selection metric by default), averaged over its seeds' validation runs, is highest is
    copied to ``as_name``; every candidate's validation and test figures are recorded under
    ``choice``. Test figures play no part in the choice. The candidates must have run the same seeds."""
    from valuerec.data.schema import DataError
    metric = metric or result.get("selection_metric")
    if not metric:
        raise DataError("choose: the result names no selection_metric; give --metric")
    if len(among) < 2 or len(set(among)) != len(among):
        raise DataError(f"choose: give at least two different candidates, got {among}")
    if as_name in result["models"]:
        raise DataError(f"choose: the result already has a model {as_name!r}; choose into a new name")
    bases = {m.split(":", 1)[0] for m in among}
    if bases != {as_name.split(":", 1)[0]}:
        raise DataError(f"choose: --as {as_name!r} would file configurations of {sorted(bases)} under another "
                        f"model's name; name it after them (e.g. {sorted(bases)[0]!r})")
    missing = [m for m in among if m not in result["models"]]
    if missing:
        raise DataError(f"choose: no model {missing} in the result (it has {sorted(result['models'])})")
    scores, seeds = {}, {}
    for m in among:
        entry = result["models"][m]
        scores[m] = _validation_scores(entry, metric)
        seeds[m] = sorted(entry["seeds"])
        if not scores[m]:
            raise DataError(f"choose: {m} has no validation {metric} to choose on")
        if len(scores[m]) != len(entry["seeds"]):
            raise DataError(f"choose: {m} has {len(scores[m])} validation run(s) for {len(entry['seeds'])} seed(s); "
                            "each seed must have been chosen on its own validation (one seed per part)")
    if any(seeds[m] != seeds[among[0]] for m in among):
        raise DataError(f"choose: the candidates ran different seeds ({seeds}); compare like with like")
    means = {m: float(np.mean(list(v.values()))) for m, v in scores.items()}
    chosen = max(among, key=lambda m: (means[m], -among.index(m)))   # ties: the first listed (--among order)
    out = copy.deepcopy(result)
    entry = copy.deepcopy(result["models"][chosen])
    entry["choice"] = {
        "chosen": chosen, "selected_by": f"mean validation {metric} over seeds",
        "candidates": {m: {"valid_mean": means[m], "valid_per_part": scores[m],
                           "test": result["models"][m]["metrics"]} for m in among}}
    out["models"][as_name] = entry
    out["command"] = f"{result.get('command', '')} && {command_line()}".lstrip(" &")
    return out


def finite_json(obj):
    """``obj`` with every NaN or infinity as None and numpy numbers as Python ones, for JSON files
    (json.dumps writes a bare NaN, which is not JSON: strict readers refuse the whole file)."""
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    return obj


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


def chosen_params(result_path: str | Path, model: str) -> dict:
    """The full parameters ``model`` ran with in a result file (for a model chosen on validation, the
    chosen setting), seed aside. Raises DataError naming the file when it cannot give them."""
    from valuerec.data.schema import DataError
    try:
        entry = json.loads(Path(result_path).read_text())["models"][model]
    except (OSError, ValueError) as e:
        raise DataError(f"{result_path}: cannot read it ({e})")
    except (KeyError, TypeError):
        raise DataError(f"{result_path}: no model {model!r} in it")
    if not isinstance(entry, dict) or not isinstance(entry.get("params"), dict):
        raise DataError(f"{result_path}: model {model!r} has no 'params' to take")
    return {k: v for k, v in entry["params"].items() if k != "seed"}


git_commit()     # the commit a run starts from (see git_commit)
