"""The training loop: it learns a real sequential pattern, stops early, resumes, and runs under DDP."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from valuerec.data.dataset import Catalogue, Sequences
from valuerec.data.splits import EvalTask
from valuerec.evaluation.metrics import evaluate
from valuerec.models.transformer import BehaviourTransformer
from valuerec.training import checkpoint as ckpt
from valuerec.data.schema import DataError
from valuerec.training.loop import TrainConfig, WeightAverage, epoch_batches, lr_at, train_model

N = 30


def pattern_data(n_users=300, seed=0):
    """Next item = previous + 1 (mod N), from a random start: trivial to a sequence model, impossible
    for popularity (every item is equally frequent)."""
    rng = np.random.default_rng(seed)
    full = [(rng.integers(N) + np.arange(rng.integers(4, 12))) % N for _ in range(n_users)]
    mk = (lambda xs: Sequences(items=xs, times=[np.arange(len(x)) * 3600 for x in xs],
                               event_types=[np.zeros(len(x), np.int64) for x in xs]))
    train = mk([s[:-1] for s in full])
    task = EvalTask(inputs=train, targets=[s[-1:] for s in full], exclude=None, name="valid")
    cat = Catalogue(item_ids=np.array([str(i) for i in range(N)], dtype=object))
    return train, task, cat


SMALL = dict(d_model=32, n_layers=1, n_heads=1, max_len=12, dropout=0.1, batch_size=32, progress=False,
             warmup_steps=10, lr=3e-3)


def test_learns_an_obvious_sequential_pattern():
    train, task, cat = pattern_data()
    model = BehaviourTransformer(seed=0, epochs=12, **SMALL).fit(train, cat, valid=task)
    m = evaluate(model.score, task, N, ks=(1, 10))
    assert m["hr@1"] > 0.9, m                 # popularity would score ~1/30
    # on fresh users the model never saw
    _, fresh, _ = pattern_data(50, seed=7)
    assert evaluate(model.score, fresh, N, ks=(1,))["hr@1"] > 0.9
    curve = [r["train_loss"] for r in model.history_]
    assert curve[-1] < curve[0] and all("val" in r and "seconds" in r for r in model.history_)


def state_of(model: BehaviourTransformer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.module_.state_dict().items()}


def test_checkpoint_resume_continues_from_the_saved_epoch(tmp_path):
    train, task, cat = pattern_data(120)
    cfg = dict(SMALL, schedule="cosine")
    straight = BehaviourTransformer(seed=3, epochs=4, checkpoint_dir=str(tmp_path / "a"), **cfg)
    straight.fit(train, cat, valid=task)
    # stop after 2 epochs, then a new process-equivalent continues to 4 from the checkpoint
    first = BehaviourTransformer(seed=3, epochs=2, checkpoint_dir=str(tmp_path / "b"), **cfg)
    first.fit(train, cat, valid=task)
    assert (tmp_path / "b" / "state.json").exists()
    resumed = BehaviourTransformer(seed=3, epochs=4, checkpoint_dir=str(tmp_path / "b"), **cfg)
    resumed.fit(train, cat, valid=task)
    assert [r["epoch"] for r in resumed.history_] == [1, 2, 3, 4]
    assert resumed.best_ == straight.best_
    a, b = state_of(straight), state_of(resumed)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    # the epoch-2 model is not the epoch-4 model: resuming really trained on
    assert first.history_[-1]["epoch"] == 2
    c = state_of(first)
    assert any(not torch.allclose(a[k], c[k]) for k in a if a[k].is_floating_point())


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3))

    def forward(self, batch):
        return {"mse": ((self.w - batch) ** 2).mean()}


def test_early_stopping_keeps_the_best_weights():
    model = _Toy()
    seen = []

    def evaluate_fn(m):
        seen.append(m.w.detach().clone())
        return {"ndcg@10": [0.5, 0.4, 0.3, 0.2, 0.1, 0.0][len(seen) - 1]}   # best at epoch 1

    cfg = TrainConfig(epochs=6, batch_size=4, lr=0.1, warmup_steps=0, patience=2, progress=False)
    res = train_model(model, 8, lambda idx: torch.ones(len(idx), 3), cfg, seed=0, evaluate_fn=evaluate_fn)
    assert len(res.history) == 3 and res.best["epoch"] == 1             # stopped after 2 bad validations
    assert torch.equal(res.model.w.detach(), seen[0])                    # epoch-1 weights restored


def test_weight_average_follows_its_formula_and_validation_sees_it():
    """SGD on (w - 1)^2 from w = 0; the average is checked against a loop written out by hand, the
    validation function sees the average (not the trained weights), and training continues from the
    trained weights, not from the average."""
    model = _Toy()
    seen = []

    def evaluate_fn(m):
        seen.append(m.w.detach().clone())
        return {"ndcg@10": float(len(seen))}          # always improving: the last average is kept

    cfg = TrainConfig(epochs=3, batch_size=4, lr=0.1, warmup_steps=0, grad_clip=0.0, beta2=0.999,
                      ema_decay=0.9, patience=5, progress=False)
    res = train_model(model, 8, lambda idx: torch.ones(len(idx), 3), cfg, seed=0, evaluate_fn=evaluate_fn)
    # the same optimiser by hand, with the average beside it
    w = nn.Parameter(torch.zeros(3))
    opt = torch.optim.AdamW([w], lr=0.1, betas=(0.9, 0.999), weight_decay=0.0)
    avg, trained, averages = torch.zeros(3), [], []
    for step in range(1, 7):                          # 2 batches x 3 epochs
        opt.zero_grad()
        ((w - 1) ** 2).mean().backward()
        opt.step()
        d = min(0.9, (1 + step) / (10 + step))
        avg = d * avg + (1 - d) * w.detach()
        if step % 2 == 0:
            trained.append(w.detach().clone())
            averages.append(avg.clone())
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(seen, averages))
    assert not torch.allclose(seen[-1], trained[-1], atol=1e-3)          # the average lags the weights
    assert torch.allclose(res.model.w.detach(), averages[-1], atol=1e-6)  # the kept (best) weights
    # without validation (a refit for a chosen epoch count) the returned weights are the average too
    res = train_model(_Toy(), 8, lambda idx: torch.ones(len(idx), 3), cfg, seed=0)
    assert torch.allclose(res.model.w.detach(), averages[-1], atol=1e-6)
    with pytest.raises(DataError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)


def test_weight_average_round_trips_through_a_checkpoint(tmp_path):
    train, task, cat = pattern_data(120)
    cfg = dict(SMALL, ema_decay=0.95)
    straight = BehaviourTransformer(seed=5, epochs=4, checkpoint_dir=str(tmp_path / "a"), **cfg).fit(train, cat, valid=task)
    assert (tmp_path / "a" / "ema.safetensors").exists()
    BehaviourTransformer(seed=5, epochs=2, checkpoint_dir=str(tmp_path / "b"), **cfg).fit(train, cat, valid=task)
    resumed = BehaviourTransformer(seed=5, epochs=4, checkpoint_dir=str(tmp_path / "b"), **cfg).fit(train, cat, valid=task)
    assert resumed.best_ == straight.best_
    a, b = state_of(straight), state_of(resumed)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    # and it differs from training without the average
    plain = BehaviourTransformer(seed=5, epochs=4, **SMALL).fit(train, cat, valid=task)
    c = state_of(plain)
    assert any(not torch.allclose(a[k], c[k], atol=1e-4) for k in a if a[k].is_floating_point())


def test_schedule_and_batches():
    cfg = TrainConfig(lr=1.0, warmup_steps=10, schedule="cosine")
    assert lr_at(0, cfg, 110) == pytest.approx(0.1) and lr_at(10, cfg, 110) == pytest.approx(1.0)
    assert lr_at(110, cfg, 110) == pytest.approx(0.1)
    rng = np.random.default_rng(0)
    lengths = np.arange(101)
    per_rank = [epoch_batches(101, 8, np.random.default_rng(1), lengths, rank=r, world=2) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1])                          # DDP needs equal counts
    seen = np.concatenate([np.concatenate(b) for b in per_rank])
    assert len(seen) == 100 and len(set(seen.tolist())) == 100          # disjoint shards
    assert sorted(np.concatenate(epoch_batches(10, 3, rng, None)).tolist()) == list(range(10))


def test_optimizer_state_round_trips_without_pickle(tmp_path):
    model = _Toy()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(3))["mse"].backward()
    opt.step()
    ckpt.save_checkpoint(tmp_path / "c", model, opt, epoch=1, step=1, best_state=None, trainer_state={})
    model2 = _Toy()
    opt2 = torch.optim.AdamW(model2.parameters(), lr=0.1)
    state, best = ckpt.load_checkpoint(tmp_path / "c", model2, opt2)
    assert state["epoch"] == 1 and best is None
    assert torch.equal(model.w, model2.w)
    s1, s2 = opt.state_dict()["state"][0], opt2.state_dict()["state"][0]
    assert all(torch.equal(torch.as_tensor(s1[k]), torch.as_tensor(s2[k])) for k in s1)
    assert not any(p.suffix in (".pt", ".pkl") for p in (tmp_path / "c").iterdir())


DDP_SCRIPT = textwrap.dedent("""
    import os, sys
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, os.path.dirname(__file__))
    from test_training import pattern_data, SMALL
    from valuerec.models.transformer import BehaviourTransformer
    from valuerec.training import distributed

    train, task, cat = pattern_data(80)
    # with the weight average on: every rank keeps one, the main rank validates with it
    model = BehaviourTransformer(seed=0, epochs=2, ema_decay=0.9, **SMALL).fit(train, cat, valid=task)
    rank = distributed.info().rank
    model.save(os.path.join(sys.argv[1], f"rank{rank}"))
    del model
    distributed.cleanup()
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_gloo(tmp_path):
    script = tmp_path / "ddp_worker.py"
    script.write_text(DDP_SCRIPT.replace("os.path.dirname(__file__)", repr(str(Path(__file__).parent))))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(script),
                           str(tmp_path)], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from safetensors.torch import load_file
    a = load_file(str(tmp_path / "rank0" / "model.safetensors"))
    b = load_file(str(tmp_path / "rank1" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)   # ranks agree


def write_events_csv(path: Path, n_users: int, seed: int) -> Path:
    """A small purchase log: each user walks 4-8 consecutive items (mod N), one a day."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        start = int(rng.integers(N))
        for t in range(int(rng.integers(4, 9))):
            rows.append(f"u{u},i{(start + t) % N},2024-01-{1 + t:02d} 10:00:00,purchase,1.5")
    path.write_text("user_id,item_id,timestamp,event_type,value\n" + "\n".join(rows) + "\n")
    return path


def test_train_command_writes_an_artefact(tmp_path):
    from typer.testing import CliRunner

    from valuerec.cli import app
    from valuerec.models import load_model

    data = write_events_csv(tmp_path / "events.csv", n_users=60, seed=0)
    out = tmp_path / "model"
    res = CliRunner().invoke(app, ["train", "--data", str(data), "--out", str(out), "--epochs", "2",
                                   "--cache-dir", str(tmp_path / "stores"), "--config", "d_model=16",
                                   "--config", '{"n_layers": 1, "progress": false}', "--device", "cpu"])
    assert res.exit_code == 0, res.output
    metrics = __import__("json").loads((out / "metrics.json").read_text())
    assert metrics["protocol"] == "loo" and len(metrics["history"]) == 2
    assert 0 <= metrics["test"]["ndcg@10"] <= 1 and "val" in metrics["history"][-1]
    model = load_model(out)
    assert model.model_config.d_model == 16 and model.model_config.n_layers == 1
    bad = CliRunner().invoke(app, ["train", "--data", str(data), "--out", str(out), "--config", "d_modle=3",
                                   "--cache-dir", str(tmp_path / "stores")])
    assert bad.exit_code == 2 and "unknown config key" in bad.output
    # --refit: the validation fit chooses the epochs; a fresh fit on train_full for that many is saved, and
    # metrics.json keeps the validation-stopped fit's figures beside it
    out2 = tmp_path / "refit"
    res = CliRunner().invoke(app, ["train", "--data", str(data), "--out", str(out2), "--epochs", "4", "--refit",
                                   "--cache-dir", str(tmp_path / "stores"), "--config", "d_model=16",
                                   "--config", '{"n_layers": 1, "progress": false, "eval_every": 1, "patience": 1}',
                                   "--device", "cpu"])
    assert res.exit_code == 0, res.output
    m2 = __import__("json").loads((out2 / "metrics.json").read_text())
    n = m2["refit"]["epochs"]
    assert 1 <= n <= 4 and m2["refit"]["trained_on"] == "train_full" and len(m2["history"]) == n
    assert all("val" not in h for h in m2["history"]) and "val" in m2["refit"]["history"][-1]
    assert m2["valid"] and m2["test"]
    refitted = load_model(out2)
    assert refitted.config()["epochs"] == n
    from valuerec.commands.train import load_split as _ls
    sp, _ = _ls(data, None, "auto", None, None, tmp_path / "stores")
    assert not torch.equal(refitted.score(sp.test.inputs), model.score(sp.test.inputs))
    bad = CliRunner().invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "x"), "--model", "itemknn",
                                   "--refit", "--cache-dir", str(tmp_path / "stores")])
    assert bad.exit_code == 2 and "nothing to refit" in bad.output and not (tmp_path / "x").exists()
    # a dataset folder stands for its one data file (as in ``bench``); an empty one is a clear error
    from valuerec.commands.train import load_split
    from valuerec.data.schema import DataError
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(DataError, match="exactly one"):
        load_split(folder, None, "auto", None, None, tmp_path / "stores")
    (folder / "events.csv").write_text(data.read_text())
    split, used = load_split(folder, None, "auto", None, None, tmp_path / "stores")
    assert used == "loo" and len(split.test) == 60


def test_train_refit_under_torchrun_two_processes(tmp_path):
    """`train --refit` under torchrun (gloo, 2 CPU processes): only the main rank tracks validation, so the
    epoch count and the prior's weight it chose must reach every rank before the collective refit (a rank
    refitting for another count would hang or fail). The saved model is the refit."""
    data = write_events_csv(tmp_path / "events.csv", n_users=80, seed=1)
    out = tmp_path / "model"
    config = '{"d_model": 16, "n_layers": 1, "progress": false, "eval_every": 1, "patience": 1, "cooc_weight": "auto"}'
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "valuerec.cli",
                           "train", "--data", str(data), "--out", str(out), "--epochs", "5", "--refit",
                           "--cache-dir", str(tmp_path / "stores"), "--config", config, "--device", "cpu"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    r = m["refit"]
    assert r["epochs"] == (r["best"] or {}).get("epoch", len(r["history"]))
    assert len(m["history"]) == r["epochs"] and r["chosen_during_fit"]["cooc_weight"] != "auto"


def test_a_monitor_the_validation_does_not_compute_is_a_data_error():
    """revenue@k passes the settings check but needs validation targets with revenue: said at the first
    validation, not a KeyError."""
    train, task, cat = pattern_data(60)
    with pytest.raises(DataError, match=r"monitor='revenue@10' is not among the validation metrics \[.*ndcg@10"):
        BehaviourTransformer(seed=0, epochs=1, monitor="revenue@10", **SMALL).fit(train, cat, valid=task)


def test_diverged_training_stops_before_anything_is_saved(tmp_path):
    """lr=1e9 used to log 'loss nan', save the model and write a bare NaN into metrics.json."""
    train, task, cat = pattern_data(60)
    cfg = dict(SMALL, lr=1e9, grad_clip=0.0, warmup_steps=0)
    with pytest.raises(DataError, match=r"training diverged: the training loss is nan in epoch 1 \(lr=1e\+09.*"
                                        r"nothing was saved.*lower lr"):
        BehaviourTransformer(seed=0, epochs=3, checkpoint_dir=str(tmp_path / "ck"), **cfg).fit(train, cat, valid=task)
    assert not (tmp_path / "ck").exists()


def test_metrics_json_holds_no_bare_nan(tmp_path):
    from valuerec.evaluation.results import finite_json
    assert finite_json({"a": [np.float32("nan"), 1.5, float("inf")], "b": np.int64(3), "c": True}) == \
        {"a": [None, 1.5, None], "b": 3, "c": True}
    train, task, cat = pattern_data(60)
    model = BehaviourTransformer(seed=0, epochs=1, **SMALL).fit(train, cat, valid=task)
    model.history_[0]["train_loss"] = float("nan")
    model.save(tmp_path / "m")

    def refuse(c):
        raise ValueError(f"not JSON: {c}")
    m = json.loads((tmp_path / "m" / "metrics.json").read_text(), parse_constant=refuse)
    assert m["history"][0]["train_loss"] is None


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path):
    """A checkpoint_dir reused with other settings resumed the first run's finished state, trained nothing and
    handed back its weights (or died on a size mismatch); now it names what differs."""
    train, task, cat = pattern_data(60)
    ck = str(tmp_path / "ck")
    BehaviourTransformer(seed=1, epochs=2, checkpoint_dir=ck, **SMALL).fit(train, cat, valid=task)
    for change, message in ((dict(lr=0.01), "lr=0.003 there, 0.01 now"), (dict(dropout=0.2), "dropout=0.1 there"),
                            (dict(d_model=16), "d_model=32 there, 16 now"), (dict(seed=2), "seed=1 there, 2 now")):
        kw = {**SMALL, "seed": 1, **change}
        with pytest.raises(DataError, match=rf"checkpoint_dir {ck}: the checkpoint there is another run's \(.*"
                                            rf"{re.escape(message)}.*Use another checkpoint_dir, or delete {ck}"):
            BehaviourTransformer(epochs=2, checkpoint_dir=ck, **kw).fit(train, cat, valid=task)
    other, other_task, _ = pattern_data(40, seed=5)     # other data: another number of training windows
    with pytest.raises(DataError, match=r"training_examples=\d+ there, \d+ now"):
        BehaviourTransformer(seed=1, epochs=2, checkpoint_dir=ck, **SMALL).fit(other, cat, valid=other_task)
    # as many windows, other events (each history one event longer, as in a refit on train + validation)
    longer = Sequences(items=[np.append(x, (x[-1] + 1) % N) for x in train.items],
                       times=[np.append(t, t[-1] + 3600) for t in train.times],
                       event_types=[np.append(e, 0) for e in train.event_types])
    with pytest.raises(DataError, match=r"another run's \(training_data='\w+' there, '\w+' now\)"):
        BehaviourTransformer(seed=1, epochs=2, checkpoint_dir=ck, **SMALL).fit(longer, cat, valid=task)
    # what may change on resume: more epochs (training continues), stopping rules, where it runs
    more = BehaviourTransformer(seed=1, epochs=3, checkpoint_dir=ck, patience=5, checkpoint_every=2, device="cpu",
                                **SMALL).fit(train, cat, valid=task)
    assert [r["epoch"] for r in more.history_] == [1, 2, 3]
    # a checkpoint from before runs were recorded is still checked on its weights' shapes
    state = json.loads((tmp_path / "ck" / "state.json").read_text())
    del state["run"]
    (tmp_path / "ck" / "state.json").write_text(json.dumps(state))
    with pytest.raises(DataError, match=r"its weights do not fit this model \(.*\[.*32\] there, \[.*16\] now"):
        BehaviourTransformer(seed=1, epochs=4, checkpoint_dir=ck, **{**SMALL, "d_model": 16}).fit(train, cat, valid=task)


def test_train_refit_with_a_checkpoint_dir_is_a_fresh_fit(tmp_path):
    """The refit inherited checkpoint_dir, resumed the validation fit's finished checkpoint, trained 0 epochs and
    saved the validation fit's weights as the refit. It now checkpoints in DIR/refit, so a killed refit resumes
    its own fit."""
    from safetensors.torch import load_file
    from typer.testing import CliRunner

    from valuerec.cli import app

    data = write_events_csv(tmp_path / "events.csv", n_users=60, seed=0)
    ck = tmp_path / "ck"
    outs = [tmp_path / "m1", tmp_path / "m2"]
    for out in outs:    # the second run resumes both finished checkpoints: the same model again
        res = CliRunner().invoke(app, ["train", "--data", str(data), "--out", str(out), "--epochs", "3", "--refit",
                                       "--cache-dir", str(tmp_path / "stores"), "--device", "cpu", "--config",
                                       json.dumps({"d_model": 16, "n_layers": 1, "progress": False,
                                                   "checkpoint_dir": str(ck)})])
        assert res.exit_code == 0, res.output
    m = json.loads((outs[0] / "metrics.json").read_text())
    n = m["refit"]["epochs"]
    assert len(m["history"]) == n and all("val" not in h for h in m["history"])   # the refit's own epochs
    assert json.loads((ck / "refit" / "state.json").read_text())["epoch"] == n
    saved = [load_file(str(out / "model.safetensors")) for out in outs]
    valid_fit = load_file(str(ck / "best.safetensors"))
    assert any(not torch.equal(saved[0][k], valid_fit[k]) for k in valid_fit if valid_fit[k].is_floating_point())
    assert all(torch.equal(saved[0][k], saved[1][k]) for k in saved[0])
