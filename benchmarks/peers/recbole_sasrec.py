"""RecBole's SASRec on a split exported by valuerec (``valuerec.evaluation.peers``).

Runs inside its own virtual environment (``benchmarks/peers/setup.sh recbole``), so RecBole and its
pinned dependencies never meet valuerec's. It never sees the test targets:

- RecBole's dataset is the test inputs (each user's training items followed by the validation item),
  split by RecBole itself with leave-one-out ``{"LS": "valid_only"}``: it trains on every prefix of the
  training items and validates on the last item, exactly our validation target. RecBole's own trainer
  runs it, with full-ranking validation NDCG@10 every ``eval_step`` epochs and early stopping after
  ``stopping_step`` evaluations without gain, and a wall-clock cap ``max_seconds``; the best
  validation weights are kept in memory.
- Test lists: for every test user, the model scores the whole catalogue from the user's test input
  (its last ``MAX_ITEM_LIST_LENGTH`` items), the input items are excluded (R1 excludes history), and
  the top k are written.

    .venv-recbole/bin/python benchmarks/peers/recbole_sasrec.py DIR
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

# RecBole's SASRec defaults (recbole/properties/model/SASRec.yaml; batch size and learning rate from
# recbole/properties/overall.yaml); early stopping after 3 validations without gain (RecBole: 10).
DEFAULTS = {"n_layers": 2, "n_heads": 2, "hidden_size": 64, "inner_size": 256, "hidden_dropout_prob": 0.5,
            "attn_dropout_prob": 0.5, "hidden_act": "gelu", "layer_norm_eps": 1e-12, "initializer_range": 0.02,
            "loss_type": "CE", "MAX_ITEM_LIST_LENGTH": 50, "learning_rate": 1e-3, "train_batch_size": 2048,
            "eval_step": 1, "stopping_step": 3}
RUN_DEFAULTS = {"max_epochs": 200, "max_seconds": 0.0, "threads": 1, "gpu": -1}   # gpu: CUDA index, -1 = CPU


class TimeUp(Exception):
    pass


def write_atomic(d: Path, inputs: pd.DataFrame) -> Path:
    """RecBole's atomic ``.inter`` file: the input histories, ordered by position."""
    root = d / "recbole_data" / "r1"
    root.mkdir(parents=True, exist_ok=True)
    df = inputs.sort_values(["user", "pos"])
    with open(root / "r1.inter", "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for u, i, p in zip(df["user"].to_numpy(), df["item"].to_numpy(), df["pos"].to_numpy()):
            f.write(f"{u}\t{i}\t{p}\n")
    return root.parent


def main(d: Path) -> None:
    import recbole
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.data.interaction import Interaction
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    d = d.resolve()
    os.chdir(d)   # RecBole writes its logs (log/, log_tensorboard/) under the working directory
    spec = json.loads((d / "spec.json").read_text())
    if not spec.get("exclude_history", True) or spec.get("select_metric", "ndcg@10") != "ndcg@10":
        # RecBole's trainer validates leave-one-out with the history masked: R1's protocol only
        sys.exit(f"recbole_sasrec: runs R1's protocol only (history excluded, NDCG@10), not {spec.get('protocol')}")
    user_params = spec.get("params", {})
    params = {**DEFAULTS, **{k: v for k, v in user_params.items() if k not in RUN_DEFAULTS}}
    run = {**RUN_DEFAULTS, **{k: v for k, v in user_params.items() if k in RUN_DEFAULTS}}
    torch.set_num_threads(int(run["threads"]))
    k = int(spec["k"])
    test_inputs = pd.read_csv(d / "test_inputs.csv")
    valid_targets = pd.read_csv(d / "valid_targets.csv")
    # our validation target must be the last test-input item of each validated user (R1: it is)
    last = test_inputs.sort_values(["user", "pos"]).groupby("user").tail(1).set_index("user")["item"]
    vt = valid_targets.set_index("user")["item"]
    if not (last.reindex(vt.index) == vt).all():
        raise SystemExit("recbole peer: the validation target is not the last test-input item of each user")
    data_path = write_atomic(d, test_inputs)

    config = Config(model="SASRec", dataset="r1", config_dict={
        **params, "data_path": str(data_path), "seed": int(spec["seed"]), "reproducibility": True,
        "gpu_id": "" if int(run["gpu"]) < 0 else str(run["gpu"]),   # RecBole picks the device from gpu_id "epochs": int(run["max_epochs"]), "show_progress": False,
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]}, "train_neg_sample_args": None,
        "eval_args": {"split": {"LS": "valid_only"}, "order": "TO", "mode": "full", "group_by": "user"},
        "metrics": ["NDCG", "Hit"], "topk": [10], "valid_metric": "NDCG@10", "eval_batch_size": 4096,
        "checkpoint_dir": str(d / "recbole_saved"), "log_wandb": False,
        "user_inter_num_interval": "[0,inf)", "item_inter_num_interval": "[0,inf)"})
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, _ = data_preparation(config, dataset)
    # RecBole leaves a user with a single training row in training; then it would train on that user's
    # validation target and never validate them. Our split never gives it such users; refuse if it does.
    n_valid = len(np.unique(valid_data.dataset.inter_feat[config["USER_ID_FIELD"]].numpy()))
    if n_valid != valid_targets["user"].nunique():
        raise SystemExit(f"recbole peer: RecBole validates {n_valid} users, our split {valid_targets['user'].nunique()}")
    device = config["device"]
    model = SASRec(config, train_data.dataset).to(device)

    t0 = time.perf_counter()
    curve: list[dict] = []
    best: dict = {"state": None, "epoch": None, "train_s": None}

    class CappedTrainer(Trainer):
        """RecBole's trainer; the best validation weights stay in memory (torch.load of RecBole's own
        checkpoint needs weights_only=False on torch >= 2.6), and a wall-clock cap stops it."""

        def _train_epoch(self, *a, **kw):
            if run["max_seconds"] and time.perf_counter() - t0 > float(run["max_seconds"]):
                raise TimeUp
            return super()._train_epoch(*a, **kw)

        def _valid_epoch(self, *a, **kw):
            score, result = super()._valid_epoch(*a, **kw)
            curve.append({"epoch": len(curve) * int(params["eval_step"]) + int(params["eval_step"]),
                          "ndcg@10": float(score), "train_seconds": time.perf_counter() - t0})
            print(f"epoch {curve[-1]['epoch']}: valid ndcg@10 {score:.4f} ({curve[-1]['train_seconds']:.0f}s)",
                  flush=True)
            return score, result

        def _save_checkpoint(self, epoch, verbose=True, **kwargs):
            best.update(state=copy.deepcopy(self.model.state_dict()), epoch=epoch + 1,
                        train_s=time.perf_counter() - t0)

    trainer = CappedTrainer(config, model)
    try:
        trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    except TimeUp:
        pass
    train_s = time.perf_counter() - t0
    if best["state"] is None:
        raise SystemExit("recbole peer: no validation run finished within max_seconds")
    model.load_state_dict(best["state"])
    model.eval()

    # Test lists from each user's test input (ids mapped into RecBole's and back).
    ts = time.perf_counter()
    L = int(params["MAX_ITEM_LIST_LENGTH"])
    item_field = config["ITEM_ID_FIELD"]
    tok2id = dataset.field2token_id[item_field]               # our item index (str) -> RecBole's id
    id2tok = np.asarray(dataset.field2id_token[item_field])   # RecBole's id -> token ("[PAD]" at 0)
    ours = np.array([int(t) if t != "[PAD]" else -1 for t in id2tok])
    groups = test_inputs.sort_values(["user", "pos"]).groupby("user")["item"].apply(list)
    users = groups.index.to_numpy()
    rows = []
    with torch.no_grad():
        for s in range(0, len(users), 1024):
            batch = groups.iloc[s:s + 1024]
            seqs = [[tok2id[str(i)] for i in h][-L:] for h in batch]
            lens = torch.tensor([len(x) for x in seqs])
            ids = torch.zeros(len(seqs), L, dtype=torch.long)
            for b, x in enumerate(seqs):
                ids[b, :len(x)] = torch.tensor(x)
            inter = Interaction({model.ITEM_SEQ: ids, model.ITEM_SEQ_LEN: lens}).to(device)
            scores = model.full_sort_predict(inter).view(len(seqs), -1).float().cpu()
            scores[:, 0] = -torch.inf                               # padding
            for b, h in enumerate(batch):                           # R1 excludes the input history
                scores[b, [tok2id[str(i)] for i in h]] = -torch.inf
            top = torch.topk(scores, k, dim=1).indices.numpy()
            for b, u in enumerate(batch.index):
                rows += [(int(u), r + 1, int(ours[top[b, r]])) for r in range(k)]
    pd.DataFrame(rows, columns=["user", "rank", "item"]).to_csv(d / "test_top.csv", index=False)
    epochs = curve[-1]["epoch"] if curve else 0
    report = {"library": f"recbole {recbole.__version__}", "torch": torch.__version__,
              "model": "recbole.model.sequential_recommender.SASRec (item ids only, RecBole's trainer)",
              "params": {**params, **run}, "epochs_run": epochs, "best_epoch": best["epoch"],
              "train_seconds": train_s, "seconds_per_epoch": train_s / max(epochs, 1),
              "seconds_to_best": best["train_s"], "recommend_seconds": time.perf_counter() - ts,
              "wall_seconds": time.perf_counter() - t0,
              "validation": {"selected_by": "ndcg@10", "best": max((c["ndcg@10"] for c in curve), default=None),
                             "curve": curve}}
    (d / "report.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
