"""Probe: does the V1 transformer gain from a longer history or a wider encoder?

``TransformerValue.chosen`` (the setting V1 chose on validation) keeps each customer's last 50 events
(order lines: about two or three invoices) and a 64-wide encoder; its value and churn heads also read
the 22 RFM features of the whole history. This probe fits that setting and variants of it on both V1
cut-offs with the same seeds and reports Gini, Spearman, decile MAPE and churn ROC AUC on each:

- ``chosen``: the committed setting (the reference);
- ``max_len150``: the last 150 events;
- ``d_model128``: a 128-wide encoder;
- ``ensemble3``: the chosen setting fitted with 3 seeds and their predictions averaged (expected value,
  p(buy), churn probability, interval ends), a deep ensemble. Its seed s uses members 3s..3s+2, and each
  member's own figures are kept (``members``), so one run also gives the single models it averages.

``validation_metrics`` come from the validation cut-off (where a choice is made), ``metrics`` from the
test cut-off. Writes ``benchmarks/results/v1_transformer_probe.json``.

    python benchmarks/v1_transformer_probe.py --variants chosen,max_len150 --seeds 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from v1_btyd_probe import load_v1_tasks, seed_summary  # noqa: E402

from valuerec.evaluation.results import command_line, device_info, git_commit, now_iso, write_result  # noqa: E402
from valuerec.evaluation.value_protocol import evaluate_predictions  # noqa: E402
from valuerec.models.transformer_value import TransformerValue  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
METRICS = ("gini", "spearman", "decile_mape", "auc")
VARIANTS = {"chosen": {}, "max_len150": {"max_len": 150}, "d_model128": {"d_model": 128}, "ensemble3": {}}
MEMBERS = {"ensemble3": 3}   # variants that average several fits of their setting
DESCRIBE = {"chosen": "the setting V1 chose", "max_len150": "the last 150 events", "d_model128": "a 128-wide encoder",
            "ensemble3": "3 seeds of the chosen setting, predictions averaged; its members' own figures under members"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "online-retail"))
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {list(VARIANTS)}")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "v1_transformer_probe.json")
    args = ap.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",")]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}")
    if args.seeds < 1:
        ap.error("--seeds must be >= 1")
    torch.set_num_threads(1)
    started, t_start = now_iso(), time.perf_counter()
    tasks, sha = load_v1_tasks(args.data)
    models = {}
    for name in names:
        params = {**TransformerValue.chosen, **VARIANTS[name]}
        n_members = MEMBERS.get(name, 1)
        per = {s: [] for s in tasks}
        members = {s: [] for s in tasks}
        seconds = []
        for seed in range(args.seeds):
            for split, task in tasks.items():
                t0 = time.perf_counter()
                preds = []
                for member_seed in range(seed * n_members, (seed + 1) * n_members):
                    vm = TransformerValue(seed=member_seed, **params).fit_value(
                        task.fit_histories, task.as_of, task.window.horizon_days, catalogue=task.catalogue)
                    preds.append(vm.predict_value(task.histories,
                                                  np.full(len(task.histories), task.as_of, dtype=np.int64)))
                    if n_members > 1:
                        mm = evaluate_predictions(preds[-1], task.labels)
                        members[split].append({"seed": member_seed, **{k: float(mm[k]) for k in METRICS}})
                pred = {k: np.mean([p[k] for p in preds], axis=0) for k in preds[0]}
                m = evaluate_predictions(pred, task.labels)
                per[split].append({k: float(m[k]) for k in METRICS})
                seconds.append(time.perf_counter() - t0)
                print(f"{name} seed {seed} {split}: " + " ".join(f"{k} {m[k]:.4f}" for k in METRICS)
                      + f" ({seconds[-1]:.0f}s)", file=sys.stderr)
        models[name] = {**seed_summary(per), "metrics_per_seed": per, "seeds": list(range(args.seeds)),
                        "train_seconds": float(np.median(seconds)), "params": params}
        if n_members > 1:
            models[name]["members"] = members
    score = lambda k: models[k]["validation_metrics"]["gini"] + models[k]["validation_metrics"]["auc"]  # noqa: E731
    chosen = max(models, key=score) if len(models) > 1 else None   # a choice needs two or more variants
    result = {"protocol": "V1-probe", "dataset": "online-retail", "data_sha256": sha,
              "git_commit": git_commit(), "command": command_line(), "device": device_info("cpu"),
              "started_at": started, "wall_seconds": time.perf_counter() - t_start,
              "description": (f"probe: the V1 transformer setting and variants of it ({', '.join(names)}; "
                              + "; ".join(f"{n}: {DESCRIBE[n]}" for n in names)
                              + "); metrics on the test cut-off, validation_metrics on the validation cut-off"),
              "split": {k: t.info() for k, t in tasks.items()},
              "chosen_on_validation_gini_plus_auc": chosen, "models": models}
    write_result(args.out, result)
    for k, v in models.items():
        print(f"{k:12s} valid gini {v['validation_metrics']['gini']:.4f} auc {v['validation_metrics']['auc']:.4f} | "
              f"test gini {v['metrics']['gini']:.4f} auc {v['metrics']['auc']:.4f}", file=sys.stderr)
    print(f"wrote {args.out}" + (f"; validation (Gini + churn AUC) would choose {chosen}" if chosen else ""),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
