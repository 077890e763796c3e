"""`valuerec bench r1|r2`: run a ranking benchmark protocol and write its result file."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from valuerec.data.schema import DataError

# Logs and the final table go to stderr; when that is a file or pipe, keep the table unwrapped.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
bench_app = typer.Typer(help="Run a benchmark protocol (../shared/BENCHMARKS.md) and write a result JSON.",
                        no_args_is_help=True)

MODELS_HELP = ("Comma-separated registered models, e.g. popularity,itemknn,als,bpr; model:variant runs a named "
               "variant with its own --params entry (e.g. an ablation transformer:no_text)")
PARAMS_HELP = ('Hyperparameters as JSON (or a path to a JSON file): {"als": {"factors": [64, 128]}, ...}; '
               "a list is a grid searched on validation, a scalar is fixed")

FIRST_SEED_HELP = ("Seeds run are first-seed .. first-seed+seeds-1, so that one protocol's seeds can run in parallel "
                   "processes (or machines) and be joined with `valuerec bench merge` (not for a model that is refitted "
                   "for the epochs its first seed chose, see --refit: each part would choose its own)")
REFIT_HELP = ("Early-stopping models (the transformer): after choosing the epoch count on the first seed's "
              "validation, refit every seed on train_full for that many epochs. Default: on (R1 and R2). With it, "
              "run a model's seeds in one process: parts would each choose their own; --no-refit keeps each "
              "seed's validation-stopped fit, so its seeds can run as parts")


def _parse_params(params: str | None) -> dict | None:
    if not params:
        return None
    text = Path(params).read_text() if os.path.exists(params) else params
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise typer.BadParameter(f"--params is not valid JSON: {e}") from None
    if not isinstance(obj, dict) or not all(isinstance(v, dict) for v in obj.values()):
        raise typer.BadParameter('--params must map model names to objects, e.g. {"als": {"factors": 64}}')
    return obj


def _models(models: str) -> list[str]:
    import valuerec.models  # noqa: F401
    from valuerec.models.base import MODEL_REGISTRY
    from valuerec.evaluation.protocols import model_base
    names = [m.strip() for m in models.split(",") if m.strip()]
    unknown = [m for m in names if model_base(m) not in MODEL_REGISTRY]
    if unknown or not names:
        raise typer.BadParameter(f"unknown model(s) {unknown}; registered: {', '.join(sorted(MODEL_REGISTRY))}")
    return names


def _setup_threads(threads: int) -> None:
    import torch
    torch.set_num_threads(threads)


@bench_app.command("r1")
def r1_cmd(
    data: Path = typer.Option(..., "--data", help="S3-Rec format file (user item item ...) or a directory with Beauty.txt"),
    models: str = typer.Option("popularity,itemknn,als,bpr", "--models", help=MODELS_HELP),
    seeds: int = typer.Option(3, "--seeds", min=1, help="Seeds for trained models (deterministic ones run once)"),
    first_seed: int = typer.Option(0, "--first-seed", min=0, help=FIRST_SEED_HELP),
    out: Optional[Path] = typer.Option(None, "--out", help="Result JSON path"),
    params: Optional[str] = typer.Option(None, "--params", help=PARAMS_HELP),
    attributes: Optional[Path] = typer.Option(None, "--attributes", help="item2attributes JSON (optional)"),
    cache_dir: Path = typer.Option(Path("runs/stores"), "--cache-dir", help="Where the ingested DuckDB store is cached"),
    tune: bool = typer.Option(True, "--tune/--no-tune", help="Search the default validation grid"),
    batch_size: int = typer.Option(512, "--batch-size"),
    device: str = typer.Option("cpu", "--device", help="Where evaluation ranks (cpu, cuda)"),
    threads: int = typer.Option(1, "--threads", help="torch threads"),
    refit: Optional[bool] = typer.Option(None, "--refit/--no-refit", help=REFIT_HELP),
    peer: Optional[list[str]] = typer.Option(
        None, "--peer", help="NAME=PYTHON: also run the peer implementation benchmarks/peers/NAME.py with that "
                             "Python (its own venv) on the same split, e.g. rectools_sasrec=.venv-rectools/bin/python; "
                             "its settings go under \"peer:NAME\" in --params"),
) -> None:
    """R1: next item, leave-one-out, full ranking (Amazon Beauty)."""
    from valuerec.evaluation.protocols import run_r1
    _setup_threads(threads)
    try:
        peers = {}
        for spec in peer or []:
            name, sep, python = spec.partition("=")
            if not sep or not name or not python:
                raise DataError(f"--peer {spec!r}: expected NAME=PYTHON")
            peers[name] = python
        run_r1(data, _models(models), list(range(first_seed, first_seed + seeds)), out, _parse_params(params), attributes, cache_dir, tune,
               batch_size, device, console=console, peers=peers, refit_full=refit)
    except DataError as e:
        console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None


@bench_app.command("r2")
def r2_cmd(
    data: Path = typer.Option(..., "--data", help="Online Retail csv(.gz) or a directory holding it"),
    models: str = typer.Option("popularity,itemknn,als,bpr", "--models", help=MODELS_HELP),
    seeds: int = typer.Option(3, "--seeds", min=1),
    first_seed: int = typer.Option(0, "--first-seed", min=0, help=FIRST_SEED_HELP),
    out: Optional[Path] = typer.Option(None, "--out", help="Result JSON path"),
    params: Optional[str] = typer.Option(None, "--params", help=PARAMS_HELP),
    cache_dir: Path = typer.Option(Path("runs/stores"), "--cache-dir"),
    tune: bool = typer.Option(True, "--tune/--no-tune"),
    cutoff: str = typer.Option("2011-09-09", "--cutoff"),
    valid_cutoff: str = typer.Option("2011-06-09", "--valid-cutoff"),
    batch_size: int = typer.Option(512, "--batch-size"),
    device: str = typer.Option("cpu", "--device"),
    threads: int = typer.Option(1, "--threads"),
    refit: Optional[bool] = typer.Option(None, "--refit/--no-refit", help=REFIT_HELP),
) -> None:
    """R2: next purchases after a cutoff (Online Retail)."""
    from valuerec.evaluation.protocols import run_r2
    _setup_threads(threads)
    try:
        run_r2(data, _models(models), list(range(first_seed, first_seed + seeds)), out, _parse_params(params), cache_dir, tune, batch_size, device,
               console=console, cutoff=cutoff, valid_cutoff=valid_cutoff, refit_full=refit)
    except DataError as e:
        console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")


@bench_app.command("choose")
def choose_cmd(
    result_path: Path = typer.Argument(..., help="A result file holding the candidate models (e.g. merged parts)"),
    among: str = typer.Option(..., "--among", help="Comma-separated candidate model names, e.g. transformer:base,transformer:l3"),
    as_name: str = typer.Option(..., "--as", help="Name of the chosen model's copy in the output, e.g. transformer"),
    out: Path = typer.Option(..., "--out", help="Output result JSON path (may be the input)"),
    metric: Optional[str] = typer.Option(None, "--metric", help="Validation metric (default: the protocol's selection metric)"),
) -> None:
    """Choose between configurations run as separate models, on validation only: the candidate with the
    best mean validation score over its seeds is copied under --as, with every candidate's figures."""
    from valuerec.evaluation.results import choose_variant, read_result, results_table, write_result
    try:
        chosen = choose_variant(read_result(result_path), [m.strip() for m in among.split(",") if m.strip()],
                                as_name, metric)
    except DataError as e:
        console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None
    write_result(out, chosen)
    c = chosen["models"][as_name]["choice"]
    for m, v in c["candidates"].items():
        console.print(f"{m}: mean validation {v['valid_mean']:.4f}" + ("  <- chosen" if m == c["chosen"] else ""),
                      highlight=False)
    console.print(results_table(chosen, chosen.get("metric_names")))
    console.log(f"wrote {out}")


@bench_app.command("merge")
def merge_cmd(
    inputs: list[Path] = typer.Argument(..., help="Result files of the same protocol, data and split"),
    out: Path = typer.Option(..., "--out", help="Merged result JSON path"),
    across_commits: bool = typer.Option(False, "--across-commits",
                                        help="Accept parts run at different commits (you vouch that the code they "
                                             "ran is the same); every commit is recorded"),
) -> None:
    """Join result files of one protocol run in parts (e.g. one seed per process, `--first-seed`): a model
    in several parts gets its seeds pooled and its mean / std recomputed over all of them."""
    from valuerec.evaluation.results import merge_results, read_result, results_table, write_result
    try:
        merged = merge_results([read_result(p) for p in inputs], [str(p) for p in inputs], across_commits)
    except DataError as e:
        console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None
    write_result(out, merged)
    console.print(results_table(merged, merged.get("metric_names")))
    console.log(f"wrote {out}")

