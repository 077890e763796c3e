"""R2 value headroom: how far can p(item) x value(user, item) re-ranking lift revenue@20 at all?

Value-aware re-ranking over the transformer's candidates ranks by ``log p + beta * log v``. This probe
asks how much of the #5 goal (+10% revenue@20 at <= 5% NDCG@20 loss) the value term can deliver with
the transformer's p, by trying three values on the same candidates (the top 100 of the model):

- ``user_line``: the user's own mean revenue per line of the item, else the item's (r2_policies);
- ``learned``: ``models.item_value.ItemValueModel``, fitted on the history before each cut-off;
- ``oracle``: a ceiling, not a method. For items the user does buy in the test window, the revenue
  they actually spend on it; for the others the learned value. It shows what a perfect estimate of
  "what they would spend if they buy" would give with the same p.

beta is chosen on validation (largest revenue@20 with at most 5% NDCG@20 loss) for ``user_line`` and
``learned``; the oracle is reported over the whole beta grid on test. The transformer is fitted as in
``r2_policies.sh`` (R2 protocol: early stopping on validation, refit on train_full).

    python benchmarks/r2_value_headroom.py --data ../shared/data/online-retail
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch
from rich.console import Console

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from policies import choose_operating_point, fit_recommender, line_value, to_unix, user_line_value  # noqa: E402

from valuerec.evaluation.metrics import evaluate
from valuerec.evaluation.protocols import load_split_r2
from valuerec.evaluation.results import command_line, device_info, git_commit, now_iso, write_result
from valuerec.models.item_value import ItemValueModel

console = Console(stderr=True)
TRANSFORMER = {"repeat": True, "target": "window", "d_model": 64, "n_layers": 2, "max_len": 50, "dropout": 0.3,
               "lr": 0.001, "epochs": 25, "eval_every": 1, "patience": 4, "cooc_weight": "auto",
               "cooc_repeat_share": "auto", "cooc_recency_decay": 1.0, "cooc_neighbours": 50, "progress": False}


def full_scores(model, task) -> np.ndarray:
    out = []
    for s in range(0, len(task), 256):
        b = task.subset(np.arange(s, min(s + 256, len(task))))
        with torch.no_grad():
            out.append(model.score(b.inputs).double().numpy())
    return np.concatenate(out)


def rerank(S: np.ndarray, cand: np.ndarray, V: np.ndarray, beta: float) -> np.ndarray:
    """log softmax(S) + beta log V on the candidates, far below everywhere else."""
    rows = np.arange(len(S))[:, None]
    Z = np.full(S.shape, -1e30)
    Z[rows, cand] = S[rows, cand] + beta * np.log(np.maximum(V, 1e-12))
    return Z


def metrics_of(Z: np.ndarray, task, n_items: int) -> dict:
    row = {u: i for i, u in enumerate(task.inputs.user_ids)}
    fn = (lambda h: torch.as_tensor(Z[[row[u] for u in h.user_ids]], dtype=torch.float32))
    r = evaluate(fn, task, n_items, ks=(20,), coverage_k=20)
    return {k: r[k] for k in ("ndcg@20", "revenue@20", "recall@20")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/online-retail")
    ap.add_argument("--betas", default="0,0.5,1,1.5,2,3,4,6")
    ap.add_argument("--n-candidates", type=int, default=100)
    ap.add_argument("--transformer-params", default="{}", help="JSON overrides of the transformer's settings")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/r2_value_headroom.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    started, commit = now_iso(), git_commit()
    betas = [float(b) for b in args.betas.split(",")]
    split, meta = load_split_r2(args.data, console=console)
    n = len(split.catalogue)
    t0 = time.perf_counter()
    vmodel, model, refit, _ = fit_recommender("transformer", split, {**TRANSFORMER, **json.loads(args.transformer_params)},
                                              args.seed)
    train_s = time.perf_counter() - t0
    price = np.where(np.isfinite(split.catalogue.price), split.catalogue.price, np.nanmedian(split.catalogue.price))
    cut = {"test": to_unix(split.info["cutoff"]), "valid": to_unix(split.info["valid_cutoff"])}
    hist = {"test": split.train_full, "valid": split.train}
    tasks = {"test": split.test, "valid": split.valid}
    models = {"test": model, "valid": vmodel}
    curves: dict[str, dict[str, dict]] = {}
    for part in ("valid", "test"):
        task = tasks[part]
        S = full_scores(models[part], task)
        cand = np.argsort(-S, axis=1, kind="stable")[:, :args.n_candidates]
        rows = np.arange(len(S))[:, None]
        learned = ItemValueModel(seed=args.seed).fit(hist[part], cut[part], n, price)
        values = {"user_line": user_line_value(line_value(hist[part], n, price))(task.inputs)[rows, cand],
                  "learned": learned.candidate_values(task.inputs, cand, np.full(len(S), float(cut[part])))}
        if part == "test":
            oracle = values["learned"].copy()
            for u in range(len(S)):
                spent = dict(zip(task.targets[u].tolist(), task.target_revenue[u].tolist()))
                for j, x in enumerate(cand[u].tolist()):
                    if spent.get(x, 0.0) > 0:
                        oracle[u, j] = spent[x]
            values["oracle"] = oracle
        for name, V in values.items():
            curves.setdefault(name, {})[part] = {f"{b:g}": metrics_of(rerank(S, cand, V, b), task, n) for b in betas}
            console.log(f"{part} {name}: " + ", ".join(f"b={b}: {m['revenue@20']:.4f}/{m['ndcg@20']:.4f}"
                                                     for b, m in curves[name][part].items()))
    plain = {p: curves["learned"][p]["0"] for p in ("valid", "test")}
    summary = {}
    for name, c in curves.items():
        test = c["test"]
        entry = {"test_curve": {b: {**m, "revenue_change": m["revenue@20"] / plain["test"]["revenue@20"] - 1,
                                    "ndcg_change": m["ndcg@20"] / plain["test"]["ndcg@20"] - 1}
                                for b, m in test.items()}}
        if "valid" in c:
            b = choose_operating_point(c["valid"], plain["valid"])
            entry["valid_curve"] = c["valid"]
            entry["beta_chosen_on_valid"] = b
            entry["test_at_chosen_beta"] = entry["test_curve"][b]
        entry["test_best_within_5pct_ndcg_loss"] = (lambda b: {"beta": b, **entry["test_curve"][b]})(
            choose_operating_point(test, plain["test"]))
        summary[name] = entry
    entries = {"transformer": {"metrics": plain["test"], "seeds": [args.seed], "train_seconds": train_s,
                               "eval_seconds": None, "params": {"model": refit, "n_candidates": args.n_candidates}}}
    for name, e in summary.items():
        for b, m in e["test_curve"].items():
            if float(b) > 0:
                entries[f"transformer+{name}@{b}"] = {
                    "metrics": {k: m[k] for k in ("ndcg@20", "revenue@20", "recall@20")}, "seeds": [args.seed],
                    "train_seconds": None, "eval_seconds": None, "params": {"beta": float(b), "item_value": name}}
    result = {"protocol": "R2-value-headroom", "dataset": meta["dataset"], "data_sha256": meta["data_sha256"],
              "git_commit": commit, "command": command_line(), "device": device_info("cpu"), "started_at": started,
              "description": ("Re-ranking the transformer's top "
                              f"{args.n_candidates} by log p + beta log v with three item values; 'oracle' is a "
                              "ceiling (the revenue actually spent on the items the user buys in the test "
                              "window), not a method."),
              "models": entries, "plain": plain, "values": summary}
    path = write_result(args.out, result)
    for name, e in summary.items():
        ch = e.get("test_at_chosen_beta")
        best = e["test_best_within_5pct_ndcg_loss"]
        at = "" if ch is None else f"{ch['revenue_change']:+.1%}"
        console.print(f"{name}: chosen beta {e.get('beta_chosen_on_valid')} -> test revenue {at}; "
                      "best on test within 5% NDCG: "
                      f"beta {best['beta']} {best['revenue_change']:+.1%} (NDCG {best['ndcg_change']:+.1%})")
    console.log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
