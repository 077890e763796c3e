"""Mean and spread over seeds of the R2 policies runs (``r2_policies.json`` and ``r2_policies_seedN.json``).

For each value-aware variant: the weight (and companion set) validation chose in each seed and the
test change of revenue@20 and NDCG@20 against the plain ranking at that choice, then their mean and
population standard deviation over the seeds. Writes ``r2_policies_seeds.json``.

    python benchmarks/policies_seeds.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from valuerec.evaluation.results import command_line, git_commit, now_iso, write_result

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--pattern", default="r2_policies.json,r2_policies_seed[0-9]*.json")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "r2_policies_seeds.json")
    args = ap.parse_args(argv)
    files = sorted({f for p in args.pattern.split(",") for f in args.results.glob(p)})
    runs = [(f, json.loads(f.read_text())) for f in files]
    if len(runs) < 2:
        raise SystemExit(f"need at least two runs matching {args.pattern} in {args.results}, found {len(runs)}")
    variants: dict[str, dict] = {}
    for f, r in runs:
        seed = r["models"][r["base_model"]]["seeds"][0]
        for key, d in r["selection"].items():
            t = d.get("test_at_chosen_weight")
            if t is None:
                continue
            variants.setdefault(key, {"per_seed": []})["per_seed"].append({
                "seed": seed, "file": f.name, "git_commit": r.get("git_commit"), "device": r.get("device"),
                "weight_chosen_on_valid": d["weight_chosen_on_valid"],
                "companions_chosen_on_valid": d.get("companions_chosen_on_valid"),
                "value_power_chosen_on_valid": d.get("value_power_chosen_on_valid"),
                "bags_chosen_on_valid": d.get("bags_chosen_on_valid"),
                "value_source_chosen_on_valid": d.get("value_source_chosen_on_valid"),
                "revenue_change": t["revenue_change"], "ndcg_change": t["ndcg_change"],
                "revenue@20": t["revenue@20"], "ndcg@20": t["ndcg@20"]})
    keys = ("revenue_change", "ndcg_change", "revenue@20", "ndcg@20")
    models = {}
    for key, v in variants.items():
        ps = v["per_seed"]
        models[key] = {"metrics": {k: float(np.mean([p[k] for p in ps])) for k in keys},
                       "metrics_std": {k: float(np.std([p[k] for p in ps])) for k in keys},
                       "seeds": [p["seed"] for p in ps], "train_seconds": None, "eval_seconds": None,
                       "params": {"weight_chosen_on_valid": [p["weight_chosen_on_valid"] for p in ps],
                                  **({"companions_chosen_on_valid": [p["companions_chosen_on_valid"] for p in ps]}
                                     if any(p["companions_chosen_on_valid"] for p in ps) else {}),
                                  **({"value_power_chosen_on_valid": [p["value_power_chosen_on_valid"] for p in ps]}
                                     if any(p["value_power_chosen_on_valid"] is not None for p in ps) else {}),
                                  **{k: [p[k] for p in ps] for k in ("bags_chosen_on_valid",
                                                                      "value_source_chosen_on_valid")
                                     if any(p[k] is not None for p in ps)}},
                       "per_seed": ps}
    first = runs[0][1]
    devices = sorted({str(r.get("device")) for _, r in runs})
    result = {"protocol": "R2-policies-seeds", "dataset": first.get("dataset"), "data_sha256": first.get("data_sha256"),
              "git_commit": git_commit(), "command": command_line(), "device": "; ".join(devices),
              "started_at": now_iso(), "files": [f.name for f, _ in runs],
              "description": ("R2 value-aware policies over the transformer: each seed's validation-chosen operating "
                              "point; metrics are its test change against the plain ranking (revenue_change, "
                              "ndcg_change) and its test values, mean ± std over seeds"),
              "models": models}
    write_result(args.out, result)
    for key, m in models.items():
        print(f"{key:24s} revenue {m['metrics']['revenue_change']:+.3f} ± {m['metrics_std']['revenue_change']:.3f}  "
              f"ndcg {m['metrics']['ndcg_change']:+.3f} ± {m['metrics_std']['ndcg_change']:.3f}  "
              f"({len(m['seeds'])} seeds)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
