"""One training loop for CPU, one GPU, or several GPUs / processes (DDP under torchrun).

The model is any ``nn.Module`` whose ``forward(batch)`` returns a dict of (already weighted) loss
terms; the loop minimises their sum and logs each. Data comes as ``n_examples`` indices and a
``make_batch(indices) -> batch`` function, so the loop knows nothing about recommendation.

Per epoch: reseed from (seed, epoch) -> shuffle -> length-bucketed batches -> shard across ranks ->
AdamW steps (bf16 autocast on CUDA only) -> optional validation on rank 0 -> early stopping with
patience on ``monitor`` (validation NDCG@10 by default), keeping the best weights -> checkpoint.
Reseeding from (seed, epoch) makes a resumed run replay exactly what an uninterrupted one does.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from valuerec.configcheck import check_types
from valuerec.data.schema import DataError
from valuerec.training import checkpoint as ckpt
from valuerec.training import distributed as dist_utils
from valuerec.training.optim import LazyAdamW, clip_grad_norm, has_sparse_grads

log = logging.getLogger(__name__)


# what early stopping can monitor: a higher-is-better metric the validation pass computes
# (evaluation.metrics; the transformer's validation_ks adds the monitor's k to the pass)
MONITOR_PATTERN = r"mrr|(ndcg|hr|recall|revenue)@[1-9]\d*"


# Train settings a resumed run may change: where and how often it checkpoints, what it runs on, and when
# it stops (a larger epochs continues a finished run). The others, the seed, the number of training
# examples and the model's own settings (``run_info``) must be the checkpoint's: see ``train_model``.
RESUMABLE = frozenset({"epochs", "max_seconds", "patience", "min_epochs", "checkpoint_dir", "checkpoint_every",
                       "progress", "device", "amp", "num_threads"})


@dataclass
class TrainConfig:
    epochs: int = 200
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    beta2: float = 0.98
    schedule: str = "constant"       # "constant" or "cosine" (to 10% of lr), both after linear warmup
    warmup_steps: int = 100
    grad_clip: float = 1.0           # max global grad norm; 0 = off
    # Exponential moving average of the weights (0 = off): validation, the kept best weights and the
    # returned model use the average, updated after every step with decay min(ema_decay, (1+s)/(10+s)).
    ema_decay: float = 0.0
    monitor: str = "ndcg@10"         # validation metric for early stopping (higher is better)
    patience: int = 20               # validations without improvement before stopping
    eval_every: int = 1              # epochs between validations
    min_epochs: int = 0
    max_seconds: float = 0.0         # stop after the epoch that passes this wall-clock budget; 0 = none
    device: str = "auto"             # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    amp: bool = True                 # bf16 autocast; only ever used on CUDA
    num_threads: int = 0             # torch CPU threads; 0 = leave as is
    checkpoint_dir: str | None = None  # resume from / save to here
    checkpoint_every: int = 1        # epochs between checkpoints
    progress: bool = True            # rich progress bar (main rank, interactive terminals)

    def __post_init__(self) -> None:
        check_types(self, "train config")
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise DataError(f"train config: device={self.device!r}, expected auto, cpu, cuda, cuda:N or mps")
        if self.schedule not in ("constant", "cosine"):
            raise DataError(f"train config: schedule={self.schedule!r}, expected 'constant' or 'cosine'")
        if not 0.0 <= self.ema_decay < 1.0:
            raise DataError(f"train config: ema_decay must be in [0, 1) (got {self.ema_decay})")
        if not re.fullmatch(MONITOR_PATTERN, self.monitor):
            raise DataError(f"train config: monitor={self.monitor!r}, expected mrr or <metric>@<k> with metric "
                            "ndcg, hr, recall or revenue and k >= 1 (e.g. ndcg@10)")
        wrong = [f"{name}={getattr(self, name)} (must be {rule})" for name, ok, rule in (
            ("epochs", self.epochs >= 0, ">= 0"), ("batch_size", self.batch_size >= 1, ">= 1"),
            ("lr", self.lr > 0, "> 0"), ("patience", self.patience >= 1, ">= 1"),
            ("eval_every", self.eval_every >= 1, ">= 1"), ("beta2", 0.0 <= self.beta2 < 1.0, "in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"), ("warmup_steps", self.warmup_steps >= 0, ">= 0"),
            ("grad_clip", self.grad_clip >= 0, ">= 0 (0 = off)"), ("min_epochs", self.min_epochs >= 0, ">= 0"),
            ("max_seconds", self.max_seconds >= 0, ">= 0 (0 = no limit)"),
            ("num_threads", self.num_threads >= 0, ">= 0 (0 = torch's default)"),
            ("checkpoint_every", self.checkpoint_every >= 1, ">= 1")) if not ok]
        if wrong:
            raise DataError("train config: " + ", ".join(wrong))


@dataclass
class TrainResult:
    model: nn.Module                  # the unwrapped model holding the best weights
    history: list[dict] = field(default_factory=list)   # one row per epoch
    best: dict | None = None          # {"epoch", monitor, metrics} of the kept weights
    device: str = "cpu"
    seconds: float = 0.0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DataError(f"device {name!r} requested but CUDA is not available")
    if name == "cuda":
        return torch.device(f"cuda:{local_rank}")
    return torch.device(name)


@contextlib.contextmanager
def caller_rng_kept():
    """Run a fit that seeds the global generators (Python's, numpy's, torch's) and give the caller's
    states back afterwards: a fit is reproducible from its own seed, and a notebook's later random
    draws do not become a function of the model's seed."""
    import random
    py, npy = random.getstate(), np.random.get_state()
    # only a CUDA that is already started: asking for a device's state would start CUDA on every GPU
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def seed_everything(seed: int) -> None:
    import random
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def epoch_batches(n: int, batch_size: int, rng: np.random.Generator, lengths: np.ndarray | None,
                  rank: int = 0, world: int = 1, bucket: int = 50) -> list[np.ndarray]:
    """This rank's batches for one epoch. Every rank gets the same number of batches (DDP needs it).
    With ``lengths``, examples are sorted by length inside windows of ``bucket`` batches, so a batch
    pads little, and the batches are then shuffled."""
    order = rng.permutation(n)
    order = order[: (n // world) * world] if n >= world else np.resize(order, world)
    order = order[rank::world]
    if lengths is not None:
        w = bucket * batch_size
        chunks = np.split(order, range(w, len(order), w))
        order = np.concatenate([c[np.argsort(lengths[c], kind="stable")] for c in chunks])
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def train_model(model: nn.Module, n_examples: int, make_batch: Callable[[np.ndarray], Any], cfg: TrainConfig,
                seed: int = 0, evaluate_fn: Callable[[nn.Module], dict] | None = None,
                lengths: np.ndarray | None = None, run_info: dict | None = None) -> TrainResult:
    """Train ``model`` (in place) and return it with the best validation weights loaded.

    ``evaluate_fn(model) -> metrics`` runs on the main rank with the model in eval mode; its
    ``cfg.monitor`` entry drives early stopping. Without it, the last epoch's weights are kept.
    ``run_info``: what else determines the run (the model's settings, JSON-able); a checkpoint keeps it
    with the train settings, seed and example count, and resuming refuses a checkpoint where they differ.
    """
    dist = dist_utils.setup(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = resolve_device(cfg.device, dist.local_rank)
    seed_everything(seed)
    model.to(device)
    use_amp = cfg.amp and device.type == "cuda"
    net: nn.Module = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP
        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                  find_unused_parameters=True)
    # No weight decay on embeddings, norms and biases (the usual split).
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "emb" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    sparse = has_sparse_grads(model)
    if sparse and dist.enabled:
        raise DataError("sparse item gradients (sparse_item_grads=true) train in one process; drop the setting "
                        "to train with several (torchrun)")
    # sparse item-embedding gradients: lazy Adam on the rows of each batch (large catalogues)
    opt = (LazyAdamW if sparse else torch.optim.AdamW)(groups, lr=cfg.lr, betas=(0.9, cfg.beta2))
    steps_per_epoch = math.ceil(max(1, n_examples // dist.world_size) / cfg.batch_size)
    total_steps = steps_per_epoch * max(cfg.epochs, 1)

    history: list[dict] = []
    best: dict | None = None
    best_state: dict[str, torch.Tensor] | None = None
    bad_evals, start_epoch, step = 0, 0, 0
    run = {**(run_info or {}), **{k: v for k, v in asdict(cfg).items() if k not in RESUMABLE},
           "seed": seed, "training_examples": n_examples}
    if ckpt.has_checkpoint(cfg.checkpoint_dir):
        state, best_state = ckpt.load_checkpoint(cfg.checkpoint_dir, model, opt, device, run=run)
        start_epoch, step = state["epoch"], state["step"]
        history, best, bad_evals = state.get("history", []), state.get("best"), state.get("bad_evals", 0)
        if dist.is_main:
            log.info("resumed from %s at epoch %d", cfg.checkpoint_dir, start_epoch)
        if state.get("stopped"):
            start_epoch = cfg.epochs  # it had already stopped early

    ema = WeightAverage(model, cfg.ema_decay, state=ckpt.load_ema(cfg.checkpoint_dir, device)) if cfg.ema_decay else None

    t_start = time.perf_counter()
    progress = _progress(cfg.progress and dist.is_main)
    stop = False
    with progress if progress is not None else contextlib.nullcontext():
        task = progress.add_task("training", total=cfg.epochs, completed=start_epoch) if progress is not None else None
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            rng = np.random.default_rng([seed, epoch])
            torch.manual_seed(seed * 100_003 + epoch + 7_919 * dist.rank)   # dropout differs by rank
            batches = epoch_batches(n_examples, cfg.batch_size, rng, lengths, dist.rank, dist.world_size)
            net.train()
            sums: dict[str, float] = {}
            n_batches = 0
            for idx in batches:
                batch = make_batch(idx).to(device)
                for g in opt.param_groups:
                    g["lr"] = lr_at(step, cfg, total_steps)
                with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_amp):
                    losses = net(batch)
                loss = sum(losses.values())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    (clip_grad_norm if sparse else torch.nn.utils.clip_grad_norm_)(model.parameters(), cfg.grad_clip)
                opt.step()
                step += 1
                if ema is not None:
                    ema.update(step)
                n_batches += 1
                sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
                if task is not None:
                    progress.update(task, description=f"epoch {epoch + 1} loss {sums['loss'] / n_batches:.4f}")
            row: dict = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], "steps": n_batches,
                         "train_seconds": time.perf_counter() - t0}
            for k, v in sums.items():
                name = "train_loss" if k == "loss" else f"train_{k}"
                row[name] = dist_utils.all_reduce_mean(v / max(n_batches, 1), device)
            if not math.isfinite(row["train_loss"]):   # diverged: stop before a checkpoint or a model is saved
                raise DataError(f"training diverged: the training loss is {row['train_loss']} in epoch {epoch + 1} "
                                f"(lr={cfg.lr:g}, grad_clip={cfg.grad_clip:g}); nothing was saved. Train again with "
                                f"a lower lr{', or grad_clip=1' if not cfg.grad_clip else ' or grad_clip'}")

            # -- validation and early stopping (decided on the main rank, shared with the others)
            time_up = bool(dist_utils.broadcast_object(
                bool(cfg.max_seconds) and time.perf_counter() - t_start > cfg.max_seconds))
            if evaluate_fn is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs or time_up):
                decision = None
                if dist.is_main:
                    te = time.perf_counter()
                    model.eval()
                    with ema.swapped() if ema is not None else contextlib.nullcontext():
                        metrics = evaluate_fn(model)
                        if cfg.monitor not in metrics:   # e.g. revenue@k on validation data without revenue
                            raise DataError(f"train config: monitor={cfg.monitor!r} is not among the validation "
                                            f"metrics {sorted(k for k in metrics if k[0].isalpha())}")
                        score = metrics[cfg.monitor]
                        improved = best is None or score > best[cfg.monitor]
                        if improved:   # the weights validated (the average, when kept)
                            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    model.train()
                    row["val"] = {k: v for k, v in metrics.items() if k not in ("eval_seconds", "score_seconds")}
                    row["val_seconds"] = time.perf_counter() - te
                    if improved:
                        best = {"epoch": epoch + 1, cfg.monitor: score, "val": row["val"]}
                        bad_evals = 0
                    else:
                        bad_evals += 1
                    decision = bad_evals >= cfg.patience and epoch + 1 >= cfg.min_epochs
                stop = bool(dist_utils.broadcast_object(decision))
            row["seconds"] = time.perf_counter() - t0
            history.append(row)
            if dist.is_main:
                val = f" val {cfg.monitor} {row['val'][cfg.monitor]:.4f}" if "val" in row else ""
                log.info("epoch %d loss %.4f%s (%.1fs)", epoch + 1, row["train_loss"], val, row["seconds"])
                if task is not None:
                    progress.update(task, advance=1)
            if time_up and not stop:
                stop = True
                row["stopped_by"] = f"time budget max_seconds={cfg.max_seconds:g}"
                if dist.is_main:
                    log.info("stopping after epoch %d: %s", epoch + 1, row["stopped_by"])
            last = stop or epoch + 1 == cfg.epochs
            if cfg.checkpoint_dir and dist.is_main and ((epoch + 1) % cfg.checkpoint_every == 0 or last):
                ckpt.save_checkpoint(cfg.checkpoint_dir, model, opt, epoch + 1, step, best_state,
                                     {"history": history, "best": best, "bad_evals": bad_evals, "stopped": stop,
                                      "seed": seed, "run": run}, ema=ema.state if ema is not None else None)
            if stop:
                if dist.is_main and best is not None:
                    log.info("early stop after epoch %d; best %s %.4f at epoch %d", epoch + 1, cfg.monitor,
                             best[cfg.monitor], best["epoch"])
                break

    if best_state is not None:
        model.load_state_dict(best_state)
    elif ema is not None:
        ema.copy_to_model()
    dist_utils.broadcast_module(model)   # every rank ends with the main rank's kept weights
    model.eval()
    return TrainResult(model=model, history=history, best=best, device=str(device),
                       seconds=time.perf_counter() - t_start)


class WeightAverage:
    """Exponential moving average of a module's floating-point state (parameters and buffers).

    ``update(step)`` after each optimiser step: avg <- d * avg + (1 - d) * w with
    d = min(decay, (1 + step) / (10 + step)), so the first steps do not drag the initial weights along.
    ``swapped()`` puts the average into the module for a ``with`` block (validation) and restores the
    trained weights after it."""

    def __init__(self, model: nn.Module, decay: float, state: dict[str, torch.Tensor] | None = None):
        self.decay = float(decay)
        # the module's own tensors (state_dict shares their storage; load_state_dict copies in place),
        # looked up once rather than on every step
        self.live = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
        self.state = {k: v.detach().clone() for k, v in self.live.items()}
        if state is not None:
            missing = set(self.live) - set(state)
            if missing:
                raise DataError(f"checkpoint: the weight average lacks {sorted(missing)[:3]}")
            for k, v in self.state.items():
                v.copy_(state[k])

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = min(self.decay, (1.0 + step) / (10.0 + step))
        torch._foreach_lerp_(list(self.state.values()), [v.detach() for v in self.live.values()], 1.0 - d)

    @torch.no_grad()
    def copy_to_model(self) -> None:
        torch._foreach_copy_(list(self.live.values()), list(self.state.values()))

    @contextlib.contextmanager
    def swapped(self):
        trained = [v.detach().clone() for v in self.live.values()]
        self.copy_to_model()
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(list(self.live.values()), trained)


def _progress(enabled: bool):
    """A rich progress bar on interactive terminals, else None (logs still say what happens)."""
    if not enabled or not sys.stderr.isatty():
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
