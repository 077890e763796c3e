"""RecTools' SASRec on a split exported by valuerec (``valuerec.evaluation.peers``).

Runs inside its own virtual environment (``benchmarks/peers/setup.sh rectools``), so RecTools and its
pinned dependencies never meet valuerec's. It reads the split files from DIR, trains with the settings in
DIR/spec.json, stops early on the protocol's validation metric (NDCG@10 on R1, NDCG@20 over each user's
target set on R2; checked every ``eval_every`` epochs, as valuerec's transformer does). Where the
protocol refits (``refit_full``), it then trains a fresh model on train_full.csv for the best epoch count,
as valuerec's models do; otherwise it keeps the best validation checkpoint. It writes its top-k list for
every test user, with the input history filtered out only where the protocol excludes it (R1; R2 counts
repeat purchases). It never sees the test targets; valuerec scores the lists.

    .venv-rectools/bin/python benchmarks/peers/rectools_sasrec.py DIR
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

DEFAULTS = {"n_blocks": 2, "n_heads": 1, "n_factors": 64, "dropout_rate": 0.5, "session_max_len": 50,
            "loss": "softmax", "lr": 1e-3, "batch_size": 128}
RUN_DEFAULTS = {"max_epochs": 200, "eval_every": 5, "patience": 2, "max_seconds": 0.0, "threads": 1, "refit": True}


def dataset(df: pd.DataFrame):
    from rectools import Columns
    from rectools.dataset import Dataset
    d = pd.DataFrame({Columns.User: df["user"].to_numpy(), Columns.Item: df["item"].to_numpy(),
                      Columns.Weight: 1.0,
                      # the position in the user's history orders the events (R1 has no usable times)
                      Columns.Datetime: pd.to_datetime(df["pos"].to_numpy(), unit="s")})
    return Dataset.construct(d)


def top_lists(model, inputs: pd.DataFrame, users: np.ndarray, k: int, exclude: bool) -> pd.DataFrame:
    from rectools import Columns
    reco = model.recommend(users=users, dataset=dataset(inputs), k=k, filter_viewed=exclude,
                           on_unsupported_targets="ignore")
    return pd.DataFrame({"user": reco[Columns.User].to_numpy(), "rank": reco[Columns.Rank].to_numpy(),
                         "item": reco[Columns.Item].to_numpy()})


def ndcg_at(lists: pd.DataFrame, targets: pd.DataFrame, k: int) -> float:
    """Mean NDCG@k (binary relevance) over every target user: DCG of the hits over the DCG of a perfect
    list of min(k, that user's target count) hits (one target per user on R1, a set on R2)."""
    targets = targets.drop_duplicates(["user", "item"])
    hit = lists.merge(targets, on=["user", "item"])
    hit = hit[hit["rank"] <= k]
    dcg = (1.0 / np.log2(hit["rank"].to_numpy() + 1.0))
    dcg = pd.Series(dcg, index=hit["user"].to_numpy()).groupby(level=0).sum()
    n = targets.groupby("user").size()
    ideal_k = np.cumsum(1.0 / np.log2(np.arange(1, k + 1) + 1.0))
    ideal = pd.Series(ideal_k[np.minimum(n.to_numpy(), k) - 1], index=n.index)
    return float((dcg.reindex(n.index, fill_value=0.0) / ideal).sum() / max(len(n), 1))


def main(d: Path) -> None:
    from rectools.models import SASRecModel
    from rectools.models.nn.item_net import IdEmbeddingsItemNet
    import rectools

    spec = json.loads((d / "spec.json").read_text())
    params = {**DEFAULTS, **{k: v for k, v in spec.get("params", {}).items() if k not in RUN_DEFAULTS}}
    run = {**RUN_DEFAULTS, **{k: v for k, v in spec.get("params", {}).items() if k in RUN_DEFAULTS}}
    torch.set_num_threads(int(run["threads"]))
    torch.manual_seed(spec["seed"])
    np.random.seed(spec["seed"])
    k = int(spec["k"])
    exclude = bool(spec.get("exclude_history", True))
    metric = spec.get("select_metric", "ndcg@10")
    if not metric.startswith("ndcg@"):
        sys.exit(f"rectools_sasrec: early stopping on {metric} is not supported (ndcg@K only)")
    k_sel = int(metric.split("@")[1])
    train = pd.read_csv(d / "train.csv")
    valid_inputs = pd.read_csv(d / "valid_inputs.csv")
    valid_targets = pd.read_csv(d / "valid_targets.csv")
    test_inputs = pd.read_csv(d / "test_inputs.csv")
    valid_users = valid_targets["user"].unique()
    test_users = test_inputs["user"].unique()

    model = SASRecModel(epochs=int(run["eval_every"]), item_net_block_types=(IdEmbeddingsItemNet,),
                        deterministic=False, verbose=0, **params)
    train_ds = dataset(train)
    curve, best, best_state, since = [], -1.0, None, 0
    t0, train_s = time.perf_counter(), 0.0
    epochs = 0
    while epochs < int(run["max_epochs"]):
        ts = time.perf_counter()
        model.fit_partial(train_ds, min_epochs=int(run["eval_every"]), max_epochs=int(run["eval_every"]))
        train_s += time.perf_counter() - ts
        epochs += int(run["eval_every"])
        score = ndcg_at(top_lists(model, valid_inputs, valid_users, k_sel, exclude), valid_targets, k_sel)
        curve.append({"epoch": epochs, metric: score, "train_seconds": train_s})
        print(f"epoch {epochs}: valid {metric} {score:.4f} ({train_s:.0f}s training)", flush=True)
        if score > best:
            best, since = score, 0
            best_state = copy.deepcopy(model.lightning_model.state_dict())
            best_epoch, best_train_s = epochs, train_s
        else:
            since += 1
            if since >= int(run["patience"]):
                break
        if run["max_seconds"] and time.perf_counter() - t0 > float(run["max_seconds"]):
            break
    if not isinstance(run["refit"], bool):
        sys.exit(f"rectools_sasrec: refit must be true or false, got {run['refit']!r}")
    refit = bool(spec.get("refit_full")) and run["refit"]
    refit_s = 0.0
    if refit:
        # as valuerec's models do: a fresh model, the same seed, on everything before the test cut-off,
        # for the epoch count validation chose
        torch.manual_seed(spec["seed"])
        np.random.seed(spec["seed"])
        model = SASRecModel(epochs=best_epoch, item_net_block_types=(IdEmbeddingsItemNet,),
                            deterministic=False, verbose=0, **params)
        ts = time.perf_counter()
        model.fit(dataset(pd.read_csv(d / "train_full.csv")))
        refit_s = time.perf_counter() - ts
        print(f"refit on train_full for {best_epoch} epochs ({refit_s:.0f}s)", flush=True)
    else:
        model.lightning_model.load_state_dict(best_state)
    ts = time.perf_counter()
    top_lists(model, test_inputs, test_users, k, exclude).to_csv(d / "test_top.csv", index=False)
    report = {"library": f"rectools {rectools.__version__}", "torch": torch.__version__,
              "model": "rectools.models.SASRecModel (item ids only)", "params": {**params, **run},
              # train_seconds: the final model's training, as our models report it (the refit, or the
              # validation-stopped fit); the validation fit's own time is selection_seconds
              "epochs_run": epochs, "best_epoch": best_epoch, "refit": refit, "refit_seconds": refit_s,
              "selection_seconds": train_s, "train_seconds": refit_s if refit else train_s,
              "seconds_per_epoch": train_s / max(epochs, 1), "seconds_to_best": best_train_s,
              "recommend_seconds": time.perf_counter() - ts, "wall_seconds": time.perf_counter() - t0,
              "validation": {"selected_by": metric, "best": best, "curve": curve}}
    (d / "report.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
