"""Training checkpoints without pickle: safetensors for tensors, JSON for everything else.

A checkpoint directory holds ``model.safetensors`` (current weights), ``best.safetensors`` (the best
weights so far, by the validation metric), ``optimizer.safetensors`` + the optimizer's non-tensor
state, the epoch and the training history in ``state.json``. It is written to a temporary directory
and renamed into place, so a crash mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from valuerec.data.schema import DataError


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into tensors (``state.<param>.<name>``) and a JSON-able rest."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for name, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{pid}.{name}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{name}"] = v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_from_flat(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = v
    for key, v in meta.get("scalars", {}).items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    opt.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    epoch: int, step: int, best_state: dict[str, torch.Tensor] | None, trainer_state: dict,
                    ema: dict[str, torch.Tensor] | None = None) -> None:
    """Write everything needed to continue after ``epoch`` (1-based count of finished epochs), the
    weight average (``ema``) included when training keeps one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file(_cpu(model.state_dict()), str(tmp / "model.safetensors"))
    if best_state is not None:
        save_file(_cpu(best_state), str(tmp / "best.safetensors"))
    if ema is not None:
        save_file(_cpu(ema), str(tmp / "ema.safetensors"))
    opt_tensors, opt_meta = optimizer_to_flat(optimizer)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    state = {"epoch": epoch, "step": step, "optimizer": opt_meta, **trainer_state}
    (tmp / "state.json").write_text(json.dumps(state, indent=2, default=float))
    old = path.with_name(path.name + ".old")
    if path.exists():
        if old.exists():
            shutil.rmtree(old)
        path.rename(old)
    tmp.rename(path)
    if old.exists():
        shutil.rmtree(old)


def nested_checkpoint(params: dict, name: str) -> dict:
    """``params`` with their checkpoint_dir (if any) moved to its subfolder ``name``, for another fit of the
    same command (a refit, another seed or grid point): it resumes its own checkpoint, never the other
    fit's. A parent checkpoint written again (its training went on) drops them: they start afresh."""
    if not params.get("checkpoint_dir"):
        return params
    return {**params, "checkpoint_dir": str(Path(params["checkpoint_dir"]) / name)}


def has_checkpoint(path: str | Path | None) -> bool:
    return path is not None and (Path(path) / "state.json").exists()


def load_ema(path: str | Path | None, device="cpu") -> dict[str, torch.Tensor] | None:
    """The weight average a checkpoint holds, or None (no checkpoint, or trained without one)."""
    if path is None or not (Path(path) / "ema.safetensors").exists() or not has_checkpoint(path):
        return None
    return load_file(str(Path(path) / "ema.safetensors"), device=str(device))


def check_run(path: Path, state: dict, run: dict) -> None:
    """Refuse a checkpoint another run wrote: resuming it would carry on that run (a finished one trains
    nothing and hands back its weights) under this run's settings. ``run``: the settings, seed and data
    size the checkpoint must share; one saved before checkpoints kept them is checked on its seed."""
    saved = state.get("run") or {k: state[k] for k in ("seed",) if k in state}
    now = json.loads(json.dumps(run, default=str))     # as saved: tuples are lists
    diff = [f"{k}={saved[k]!r} there, {now[k]!r} now" for k in now if k in saved and saved[k] != now[k]]
    if diff:
        raise DataError(f"checkpoint_dir {path}: the checkpoint there is another run's ({'; '.join(diff)}). "
                        f"Use another checkpoint_dir, or delete {path} to train from the start")


def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    device="cpu", run: dict | None = None) -> tuple[dict, dict[str, torch.Tensor] | None]:
    """Restore model and optimizer in place; return the trainer state and the best weights. With
    ``run``, the checkpoint must be of that run (``check_run``); its weights must fit ``model`` in any case."""
    path = Path(path)
    state = json.loads((path / "state.json").read_text())
    if run is not None:
        check_run(path, state, run)
    weights = load_file(str(path / "model.safetensors"), device=str(device))
    own = model.state_dict()
    wrong = ([f"{k} missing" for k in own if k not in weights]
             + [f"{k} not in the model" for k in weights if k not in own]
             + [f"{k} {list(v.shape)} there, {list(own[k].shape)} now" for k, v in weights.items()
                if k in own and v.shape != own[k].shape])
    if wrong:
        raise DataError(f"checkpoint_dir {path}: its weights do not fit this model ({'; '.join(wrong[:3])}"
                        f"{'; ...' if len(wrong) > 3 else ''}). Use another checkpoint_dir, or delete {path} to "
                        "train from the start")
    model.load_state_dict(weights)
    optimizer_from_flat(optimizer, load_file(str(path / "optimizer.safetensors"), device=str(device)),
                        state["optimizer"])
    best = load_file(str(path / "best.safetensors")) if (path / "best.safetensors").exists() else None
    return state, best
