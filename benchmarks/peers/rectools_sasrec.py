"""RecTools' SASRec on a split exported by valuerec (``valuerec.evaluation.peers``).

Runs inside its own virtual environment (``benchmarks/peers/setup.sh rectools``), so RecTools and its
pinned dependencies never meet valuerec's. It reads the split files from DIR, trains with the settings in
DIR/spec.json, stops early on validation NDCG@10 (checked every ``eval_every`` epochs, as valuerec's
transformer does), and writes its top-k list for every test user from the best validation checkpoint.
It never sees the test targets; valuerec scores the lists.

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
RUN_DEFAULTS = {"max_epochs": 200, "eval_every": 5, "patience": 2, "max_seconds": 0.0, "threads": 1}


def dataset(df: pd.DataFrame):
    from rectools import Columns
    from rectools.dataset import Dataset
    d = pd.DataFrame({Columns.User: df["user"].to_numpy(), Columns.Item: df["item"].to_numpy(),
                      Columns.Weight: 1.0,
                      # the position in the user's history orders the events (R1 has no usable times)
                      Columns.Datetime: pd.to_datetime(df["pos"].to_numpy(), unit="s")})
    return Dataset.construct(d)


def top_lists(model, inputs: pd.DataFrame, users: np.ndarray, k: int) -> pd.DataFrame:
    from rectools import Columns
    reco = model.recommend(users=users, dataset=dataset(inputs), k=k, filter_viewed=True,
                           on_unsupported_targets="ignore")
    return pd.DataFrame({"user": reco[Columns.User].to_numpy(), "rank": reco[Columns.Rank].to_numpy(),
                         "item": reco[Columns.Item].to_numpy()})


def ndcg_at(lists: pd.DataFrame, targets: pd.DataFrame, k: int) -> float:
    """Mean NDCG@k with one target per user (leave-one-out), over every target user."""
    hit = lists.merge(targets, on=["user", "item"])
    hit = hit[hit["rank"] <= k]
    return float((1.0 / np.log2(hit["rank"].to_numpy() + 1.0)).sum() / max(targets["user"].nunique(), 1))


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
        score = ndcg_at(top_lists(model, valid_inputs, valid_users, 10), valid_targets, 10)
        curve.append({"epoch": epochs, "ndcg@10": score, "train_seconds": train_s})
        print(f"epoch {epochs}: valid ndcg@10 {score:.4f} ({train_s:.0f}s training)", flush=True)
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
    model.lightning_model.load_state_dict(best_state)
    ts = time.perf_counter()
    top_lists(model, test_inputs, test_users, k).to_csv(d / "test_top.csv", index=False)
    report = {"library": f"rectools {rectools.__version__}", "torch": torch.__version__,
              "model": "rectools.models.SASRecModel (item ids only)", "params": {**params, **run},
              "epochs_run": epochs, "best_epoch": best_epoch, "train_seconds": train_s,
              "seconds_per_epoch": train_s / max(epochs, 1), "seconds_to_best": best_train_s,
              "recommend_seconds": time.perf_counter() - ts, "wall_seconds": time.perf_counter() - t0,
              "validation": {"selected_by": "ndcg@10", "best": best, "curve": curve}}
    (d / "report.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
