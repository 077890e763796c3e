"""Faithfulness of occlusion explanations: deleting the top-3 influential events vs 3 random events.

For each sampled user: influence of every past event on the target by exact occlusion (all
leave-one-out histories in one batch); then |target(full) - target(without the 3 most influential
events)| vs the mean of |target(full) - target(without 3 random events)| over 5 draws. Averaged over
users. A faithful explanation moves the target more (issue floor: top3 >= 2 x random3). "Most
influential" is reported both ways: the 3 largest positive influences (headline: the events that
raised the target) and the 3 largest |influence| (``rank_abs``). ``greedy`` deletes instead the 3 events
``valuerec explain --greedy 3`` lists: chosen one at a time, each the event that, with those chosen
before it, lowers the target most (occlusion scores every event alone). ``greedy_abs`` chooses each
step by how far it moves the target either way (``--greedy-direction abs``, the default for churn,
whose probability a customer's purchases mostly hold down).

- R1 (Amazon Beauty, leave-one-out test inputs): target = the recommender's score of its own top
  item (history excluded). Recommenders: a saved model (``--r1-model-dir``, e.g. one from
  ``valuerec train --protocol r1``), the behaviour transformer trained here for
  ``--r1-transformer-epochs`` epochs on R1 train_full, and item-kNN (always, on train_full). With the transformer, gradient x input is compared against occlusion as well.
- V1 (Online Retail, cutoff 2011-09-09): target = predicted holdout value (and churn probability)
  of a value model fitted on the history before the cut-off (default: the LightGBM RFM baseline).

Users: a seeded random sample of the evaluated population with more than 3 events (V1: at most
``--v1-max-events`` events, because occlusion costs n + 1 histories of n events per user); the sample
sizes and limits are written into the result.

    python benchmarks/explain_faithfulness.py --r1-data ../shared/data/amazon-beauty \
        --v1-data ../shared/data/online-retail
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from valuerec.evaluation.protocols import cached_store, load_split_r1
from valuerec.evaluation.results import command_line, device_info, git_commit, now_iso, write_result
from valuerec.explain.influence import (churn_target, faithfulness, greedy_deletion, item_target, occlusion,
                                        value_target)

console = Console(stderr=True)


def greedy_entry(args, fn, sub, lens, edges, direction: str = "supporting") -> dict:
    """The deletion test for the greedy set of 3 (same users, same random draws as the headline);
    ``direction`` as in ``greedy_deletion``: the set that lowers the target most, or moves it most."""
    t0 = time.perf_counter()
    _, chosen, _ = greedy_deletion(fn, sub, k=3, direction=direction, batch_size=args.batch_size)
    seconds = time.perf_counter() - t0
    res = faithfulness(fn, sub, k=3, n_random=args.n_random, seed=args.seed, batch_size=args.batch_size,
                       orders=chosen)
    return {**res.as_dict(), "by_history_length": by_length(res, lens, edges=edges), "seconds": seconds}


RANKING = ("headline: the 3 events with the largest positive occlusion influence (those that raised the target: "
           "for an item's score, the reasons it is recommended); 'rank_abs': the 3 largest |influence| in either "
           "direction, where a supporting and an opposing event deleted together partly cancel")


def sample_users(lengths: np.ndarray, n: int, seed: int, min_events: int, max_events: int | None) -> np.ndarray:
    ok = lengths > min_events
    if max_events is not None:
        ok &= lengths <= max_events
    cand = np.flatnonzero(ok)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(cand, size=min(n, len(cand)), replace=False)), int(len(cand))


def by_length(res, lengths: np.ndarray, edges=(4, 7, 11, 21)) -> dict:
    """top3 / random3 per history-length bucket: with few events, 3 random deletions remove most of
    the history, so the attainable ratio grows with length."""
    out = {}
    bounds = list(edges) + [None]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        m = (lengths >= lo) & (lengths < hi) if hi is not None else lengths >= lo
        if m.any():
            t, r = float(res.per_user_top[m].mean()), float(res.per_user_random[m].mean())
            out[f"{lo}-{hi - 1}" if hi is not None else f">={lo}"] = {
                "users": int(m.sum()), "top3": t, "random3": r, "ratio": t / r if r > 0 else None}
    return out


def r1_models(args, split) -> list[tuple[str, object, float | None, str]]:
    """(name, model, train seconds, description) for every R1 model asked for."""
    out = []
    if args.r1_model_dir:
        from valuerec.models.base import load_model
        m = load_model(args.r1_model_dir)
        out.append((m.name, m, None, f"saved model {args.r1_model_dir}"))
    if args.r1_transformer_epochs > 0:
        from valuerec.models.transformer import BehaviourTransformer
        t0 = time.perf_counter()
        m = BehaviourTransformer(seed=args.seed, epochs=args.r1_transformer_epochs, progress=False, device="cpu",
                                 num_threads=1).fit(split.train_full, split.catalogue)
        out.append(("transformer", m, time.perf_counter() - t0,
                    f"behaviour transformer, default config, {args.r1_transformer_epochs} epochs on R1 train_full "
                    "(CPU, no early stopping): a short run, not the tuned benchmark model"))
    from valuerec.models.itemknn import ItemKNN
    t0 = time.perf_counter()
    m = ItemKNN().fit(split.train_full, split.catalogue)
    out.append(("itemknn", m, time.perf_counter() - t0, "item-kNN, default config, fitted on R1 train_full"))
    return out


def run_r1(args, split, meta, name, model, train_s, desc) -> dict:
    task = split.test
    h = task.inputs
    users, pool = sample_users(h.lengths(), args.r1_users, args.seed, 3, None)
    sub = h.subset(users)
    top, _ = model.recommend(sub, k=1, exclude="history")
    fn = item_target(model, top[:, 0])
    t0 = time.perf_counter()
    full, infl = occlusion(fn, sub, batch_size=args.batch_size)
    occ_s = time.perf_counter() - t0
    res = faithfulness(fn, sub, k=3, n_random=args.n_random, seed=args.seed, batch_size=args.batch_size,
                       influences=infl, rank="supporting")
    res_abs = faithfulness(fn, sub, k=3, n_random=args.n_random, seed=args.seed, batch_size=args.batch_size,
                           influences=infl, rank="abs")
    lens = sub.lengths()[np.array([len(x) > 3 for x in sub.items])]
    out = {**res.as_dict(), "ranking": RANKING, "by_history_length": by_length(res, lens),
           "rank_abs": {**res_abs.as_dict(), "by_history_length": by_length(res_abs, lens)},
           "greedy": greedy_entry(args, fn, sub, lens, (4, 7, 11, 21)),
           "greedy_abs": greedy_entry(args, fn, sub, lens, (4, 7, 11, 21), direction="abs"),
           "model": name, "model_description": desc,
           "target": "score of the model's top item (history excluded)",
           "population_with_more_than_3_events": pool, "occlusion_seconds": occ_s, "train_seconds": train_s,
           "dataset": meta["dataset"], "data_sha256": meta["data_sha256"]}
    if hasattr(model, "module_"):
        from valuerec.explain.gradients import attribution_agreement, transformer_gradient_x_input
        t0 = time.perf_counter()
        grads = []
        for s in range(0, len(sub), 256):
            grads += transformer_gradient_x_input(model, sub.subset(np.arange(s, min(s + 256, len(sub)))),
                                                  items=top[s:s + 256, 0])
        out["gradient_x_input"] = {**attribution_agreement(infl, grads), "seconds": time.perf_counter() - t0,
                                   "occlusion_seconds": occ_s}
        gres = faithfulness(fn, sub, k=3, n_random=args.n_random, seed=args.seed, batch_size=args.batch_size,
                            influences=grads)
        out["gradient_x_input"]["faithfulness"] = gres.as_dict()
    return out


def run_v1(args) -> dict:
    from valuerec.data.store import EventStore
    from valuerec.evaluation.value_protocol import build_value_task
    from valuerec.models.value_baselines import VALUE_MODEL_REGISTRY
    from pathlib import Path
    path = Path(args.v1_data)
    if path.is_dir():
        path = sorted(path.glob("*.csv*"))[0]
    store, sha = cached_store(path, "online-retail", console=console)
    with EventStore(store, read_only=True) as st:
        events, items = st.events(), st.items()
    task = build_value_task(events, items, "2011-09-09")
    t0 = time.perf_counter()
    import json
    params = json.loads(args.value_params)
    if args.value_params_from:
        from valuerec.evaluation.results import chosen_params
        params = {**chosen_params(args.value_params_from, args.value_model), **params}
    vm = VALUE_MODEL_REGISTRY[args.value_model](seed=args.seed, **params).fit_value(
        task.fit_histories, task.as_of, task.window.horizon_days, catalogue=task.catalogue)
    train_s = time.perf_counter() - t0
    h = task.histories
    users, pool = sample_users(h.lengths(), args.v1_users, args.seed, 3, args.v1_max_events)
    sub = h.subset(users)
    out = {"model": args.value_model, "value_params": params, "value_params_from": args.value_params_from,
           "dataset": "online-retail",
           "data_sha256": sha,
           "population": int(len(h)), "eligible_users": pool,
           "eligible": f"V1 users with 4..{args.v1_max_events} events before the cut-off", "train_seconds": train_s}
    for name, fn in (("value", value_target(vm, task.as_of)), ("churn", churn_target(vm, task.as_of))):
        t0 = time.perf_counter()
        _, infl = occlusion(fn, sub, batch_size=args.batch_size)
        res = faithfulness(fn, sub, k=3, n_random=args.n_random, seed=args.seed, batch_size=args.batch_size,
                           influences=infl, rank="supporting")
        res_abs = faithfulness(fn, sub, k=3, n_random=args.n_random, seed=args.seed, batch_size=args.batch_size,
                               influences=infl, rank="abs")
        lens = sub.lengths()[sub.lengths() > 3]
        d = res.as_dict()
        d["ranking"] = RANKING
        d["by_history_length"] = by_length(res, lens, edges=(4, 11, 31, 101))
        d["rank_abs"] = {**res_abs.as_dict(), "by_history_length": by_length(res_abs, lens, edges=(4, 11, 31, 101))}
        d["greedy"] = greedy_entry(args, fn, sub, lens, (4, 11, 31, 101))
        d["greedy_abs"] = greedy_entry(args, fn, sub, lens, (4, 11, 31, 101), direction="abs")
        d["seconds"] = time.perf_counter() - t0
        if name == "value":
            out.update(d)
            out["target"] = "predicted holdout value (expected_value)"
        else:
            out["churn"] = {**d, "target": "predicted churn probability"}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--r1-data", default="../shared/data/amazon-beauty")
    ap.add_argument("--r1-model-dir", default=None, help="saved recommender fitted on R1 train_full")
    ap.add_argument("--r1-transformer-epochs", type=int, default=0,
                    help="also train the behaviour transformer for this many epochs on R1 train_full (CPU)")
    ap.add_argument("--v1-data", default="../shared/data/online-retail")
    ap.add_argument("--value-model", default="lightgbm")
    ap.add_argument("--value-params", default="{}", help="JSON: the value model's parameters")
    ap.add_argument("--value-params-from", default=None,
                    help="a V1 result file: the parameters its validation chose for --value-model "
                         "(--value-params entries override them)")
    ap.add_argument("--r1-users", type=int, default=1000)
    ap.add_argument("--v1-users", type=int, default=300)
    ap.add_argument("--v1-max-events", type=int, default=300)
    ap.add_argument("--n-random", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: r1,v1")
    ap.add_argument("--out", default="benchmarks/results/explain_faithfulness.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    started = now_iso()
    skip = set(filter(None, args.skip.split(",")))
    result = {"protocol": "explain-faithfulness", "dataset": "amazon-beauty (r1), online-retail (v1)",
              "git_commit": git_commit(), "command": command_line(), "device": device_info("cpu"),
              "started_at": started, "k": 3, "n_random": args.n_random, "seed": args.seed, "models": {}}
    if "r1" not in skip:
        split, meta = load_split_r1(args.r1_data, console=console)
        result["r1_models"] = {}
        for name, model, train_s, desc in r1_models(args, split):
            console.log(f"R1 {name} ...")
            d = run_r1(args, split, meta, name, model, train_s, desc)
            result["r1_models"][name] = d
            result["models"][f"r1:{name}"] = {"metrics": {k: d[k] for k in ("top3", "random3", "ratio")},
                                              "seeds": [args.seed], "train_seconds": train_s,
                                              "eval_seconds": d["occlusion_seconds"], "params": {}}
            for how in ("greedy", "greedy_abs"):
                result["models"][f"r1:{name}+{how}"] = {
                    "metrics": {k: d[how][k] for k in ("top3", "random3", "ratio")}, "seeds": [args.seed],
                    "train_seconds": train_s, "eval_seconds": d[how]["seconds"], "params": {}}
        # The headline R1 entry: the first model asked for (the transformer when trained or given).
        result["r1"] = next(iter(result["r1_models"].values()))
    if "v1" not in skip:
        console.log("V1 ...")
        result["v1"] = run_v1(args)
        result["models"][f"v1:{result['v1']['model']}"] = {"metrics": {k: result["v1"][k] for k in ("top3", "random3", "ratio")},
                                                           "seeds": [args.seed], "train_seconds": result["v1"]["train_seconds"],
                                                           "eval_seconds": result["v1"]["seconds"], "params": {}}
        v1, name = result["v1"], result["v1"]["model"]
        for part, d in (("v1", v1), ("v1_churn", v1["churn"])):
            for how in ("", "rank_abs", "greedy", "greedy_abs"):
                if part == "v1" and how == "":
                    continue    # the headline row, above
                e = d[how] if how else d
                result["models"][f"{part}:{name}" + (f"+{how}" if how else "")] = {
                    "metrics": {k: e[k] for k in ("top3", "random3", "ratio")}, "seeds": [args.seed],
                    "train_seconds": v1["train_seconds"], "eval_seconds": e.get("seconds", d["seconds"]),
                    "params": {}}
    result["data_sha256"] = {p: result[p]["data_sha256"] for p in ("r1", "v1") if p in result}
    path = write_result(args.out, result)
    t = Table(title="faithfulness: |target change| deleting 3 events")
    for c in ("part, events deleted", "model", "users", "top3", "random3", "ratio"):
        t.add_column(c)
    rows = [(f"r1", d) for d in result.get("r1_models", {}).values()] + ([("v1", result["v1"])] if "v1" in result else [])
    if "v1" in result:
        rows.append(("v1 churn", {**result["v1"]["churn"], "model": result["v1"]["model"]}))
    for part, d in rows:
        for how, e in (("occlusion", d), ("greedy", d["greedy"]), ("greedy either way", d["greedy_abs"])):
            t.add_row(f"{part} {how}", d["model"], str(e["users"]), f"{e['top3']:.4g}", f"{e['random3']:.4g}",
                      f"{e['ratio']:.2f}")
    Console().print(t)
    for name, d in result.get("r1_models", {}).items():
        if "gradient_x_input" in d:
            console.print(f"R1 {name} gradient x input vs occlusion: {d['gradient_x_input']}", markup=False)
    console.log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
