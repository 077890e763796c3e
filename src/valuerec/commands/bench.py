"""`valuerec bench r1|r2`: run a ranking benchmark protocol and write its result file."""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from valuerec.commands.errors import print_error
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
    if not os.path.exists(params) and not params.lstrip().startswith("{") and (
            params.endswith(".json") or os.sep in params):
        raise typer.BadParameter(f"--params {params}: no such file (give a JSON object or a JSON file)")
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
    if not names:
        raise typer.BadParameter(f"no models given; registered: {', '.join(sorted(MODEL_REGISTRY))}")
    unknown = [m for m in names if model_base(m) not in MODEL_REGISTRY]
    if unknown:
        raise typer.BadParameter(f"unknown model(s) {unknown}; registered: {', '.join(sorted(MODEL_REGISTRY))}")
    return names


def _setup_threads(threads: int) -> None:
    import torch
    torch.set_num_threads(threads)


def check_out_file(out: Path | None, what: str = "--out") -> None:
    """A result file written at the end of a run: refused before any work when it names a directory
    or its folder cannot be created or written."""
    if out is None:
        return
    out = Path(out)
    if out.is_dir():
        raise DataError(f"{what} {out}: is a directory; give a file path")
    _check_writable_dir(out.parent, what, out)


def check_out_dir(out: Path | None, what: str) -> None:
    """A directory written at the end of a run (e.g. saved models): refused before any work when it
    is a file or cannot be created or written."""
    if out is None:
        return
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{what} {out}: is a file; give a directory")
    _check_writable_dir(out, what, out)


def _check_writable_dir(folder: Path, what: str, shown: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".valuerec-write-check-"):
            pass
    except OSError as e:
        raise DataError(f"{what} {shown}: cannot write to {folder} ({e.strerror or e})") from None


def check_device(device: str) -> None:
    """Where evaluation ranks: cpu, cuda, cuda:N or mps, and available in this torch."""
    import torch
    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", device):
        raise DataError(f"--device {device!r}: expected cpu, cuda, cuda:N or mps")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DataError(f"--device {device}: CUDA is not available (this torch sees no GPU)")
        n = int(device.partition(":")[2] or 0)
        if n >= torch.cuda.device_count():
            raise DataError(f"--device {device}: there are only {torch.cuda.device_count()} CUDA device(s)")
    if device == "mps" and not torch.backends.mps.is_available():
        raise DataError("--device mps: MPS is not available")


def check_params(models: list[str], params: dict | None, tune: bool, peers: dict | None = None) -> None:
    """Every model's --params before anything runs: entries for models not in the run, empty grids,
    settings a model does not take or of the wrong type (each configuration of the grid is built)."""
    import valuerec.models  # noqa: F401
    from valuerec.evaluation.protocols import expand_grid, model_base
    from valuerec.models.base import MODEL_REGISTRY, check_model_params
    params = params or {}
    allowed = set(models) | {f"peer:{p}" for p in (peers or {})}
    extra = sorted(set(params) - allowed)
    unknown = [m for m in extra if model_base(m) not in MODEL_REGISTRY]
    if unknown:
        raise DataError(f"--params names model(s) {unknown} not in this run; its models: {', '.join(sorted(allowed))}")
    if extra:   # registered models of a params file shared by several runs (e.g. parts): said, not an error
        console.print(f"[yellow]warning:[/yellow] --params entries for {extra} are ignored: not in this run "
                      f"(its models: {', '.join(sorted(allowed))})", highlight=False, soft_wrap=True)
    for name in models:
        for key, v in (params.get(name) or {}).items():
            if isinstance(v, list) and not v:
                raise DataError(f"--params {name}: {key} is an empty grid (a list is the values to try; give at "
                                "least one)")
        cls = MODEL_REGISTRY[model_base(name)]
        for cfg in expand_grid(model_base(name), params.get(name), tune):
            try:
                check_model_params(name, cls, cfg)
            except DataError as e:
                raise DataError(f"--params {e}") from None
            try:
                cls(seed=0, **cfg)
            except (TypeError, ValueError) as e:
                raise DataError(f"--params {name}: {e}") from None


PEER_HELP = ("NAME=PYTHON: also run the peer implementation benchmarks/peers/NAME.py with that Python (its own "
             "venv) on the same split, e.g. rectools_sasrec=.venv-rectools/bin/python; its settings go under "
             "\"peer:NAME\" in --params")


# Options every ranking protocol command takes (r1, r2, recs)
FIRST_SEED_OPTION = typer.Option(0, "--first-seed", min=0, help=FIRST_SEED_HELP)
OUT_OPTION = typer.Option(None, "--out", help="Result JSON path")
PARAMS_OPTION = typer.Option(None, "--params", help=PARAMS_HELP)
BATCH_SIZE_OPTION = typer.Option(512, "--batch-size", min=1)
DEVICE_OPTION = typer.Option("cpu", "--device", help="Where evaluation ranks (cpu, cuda, cuda:N, mps)")
THREADS_OPTION = typer.Option(1, "--threads", min=1, help="torch threads")
REFIT_OPTION = typer.Option(None, "--refit/--no-refit", help=REFIT_HELP)
PEER_OPTION = typer.Option(None, "--peer", help=PEER_HELP)


def run_inputs(models: str, params: str | None, tune: bool, peer: list[str] | None, device: str, out: Path | None,
               defaults: dict[str, dict] | None = None) -> tuple[list[str], dict | None, dict[str, str]]:
    """A protocol run's options, checked before any data is read: (model names, their params, peers).
    ``defaults``: settings per registered model that the run's --params override."""
    from valuerec.evaluation.protocols import model_base
    peers = _peers(peer)
    names, hyper = _models(models), _parse_params(params)
    if defaults:
        hyper = dict(hyper or {})
        for name in names:
            if model_base(name) in defaults:
                hyper[name] = {**defaults[model_base(name)], **hyper.get(name, {})}
    check_params(names, hyper, tune, peers)
    check_device(device)
    check_out_file(out)
    return names, hyper, peers


def _peers(specs: list[str] | None) -> dict[str, str]:
    """--peer NAME=PYTHON options as {name: python}."""
    peers = {}
    for spec in specs or []:
        name, sep, python = spec.partition("=")
        if not sep or not name or not python:
            raise DataError(f"--peer {spec!r}: expected NAME=PYTHON")
        peers[name] = python
    return peers


@bench_app.command("r1")
def r1_cmd(
    data: Path = typer.Option(..., "--data", help="S3-Rec format file (user item item ...) or a directory with Beauty.txt"),
    models: str = typer.Option("popularity,itemknn,als,bpr", "--models", help=MODELS_HELP),
    seeds: int = typer.Option(3, "--seeds", min=1, help="Seeds for trained models (deterministic ones run once)"),
    first_seed: int = FIRST_SEED_OPTION,
    out: Optional[Path] = OUT_OPTION,
    params: Optional[str] = PARAMS_OPTION,
    attributes: Optional[Path] = typer.Option(None, "--attributes", help="item2attributes JSON (optional)"),
    cache_dir: Path = typer.Option(Path("runs/stores"), "--cache-dir", help="Where the ingested DuckDB store is cached"),
    tune: bool = typer.Option(True, "--tune/--no-tune", help="Search the default validation grid"),
    batch_size: int = BATCH_SIZE_OPTION,
    device: str = DEVICE_OPTION,
    threads: int = THREADS_OPTION,
    refit: Optional[bool] = REFIT_OPTION,
    peer: Optional[list[str]] = PEER_OPTION,
) -> None:
    """R1: next item, leave-one-out, full ranking (Amazon Beauty)."""
    from valuerec.evaluation.protocols import run_r1
    _setup_threads(threads)
    try:
        names, hyper, peers = run_inputs(models, params, tune, peer, device, out)
        if attributes is not None and not attributes.is_file():
            raise DataError(f"--attributes {attributes}: no such file")
        run_r1(data, names, list(range(first_seed, first_seed + seeds)), out, hyper, attributes, cache_dir, tune,
               batch_size, device, console=console, peers=peers, refit_full=refit)
    except DataError as e:
        print_error(console, e)
        raise typer.Exit(code=2) from None


@bench_app.command("r2")
def r2_cmd(
    data: Path = typer.Option(..., "--data", help="Online Retail csv(.gz) or a directory holding it"),
    models: str = typer.Option("popularity,itemknn,als,bpr", "--models", help=MODELS_HELP),
    seeds: int = typer.Option(3, "--seeds", min=1),
    first_seed: int = FIRST_SEED_OPTION,
    out: Optional[Path] = OUT_OPTION,
    params: Optional[str] = PARAMS_OPTION,
    cache_dir: Path = typer.Option(Path("runs/stores"), "--cache-dir"),
    tune: bool = typer.Option(True, "--tune/--no-tune"),
    cutoff: str = typer.Option("2011-09-09", "--cutoff"),
    valid_cutoff: str = typer.Option("2011-06-09", "--valid-cutoff"),
    batch_size: int = BATCH_SIZE_OPTION,
    device: str = DEVICE_OPTION,
    threads: int = THREADS_OPTION,
    refit: Optional[bool] = REFIT_OPTION,
    peer: Optional[list[str]] = PEER_OPTION,
) -> None:
    """R2: next purchases after a cutoff (Online Retail)."""
    from valuerec.evaluation.protocols import run_r2
    _setup_threads(threads)
    from valuerec.commands.lifecycle import parse_time
    try:
        names, hyper, peers = run_inputs(models, params, tune, peer, device, out)
        cutoff_t, valid_t = parse_time(cutoff, "--cutoff"), parse_time(valid_cutoff, "--valid-cutoff")
        if valid_t >= cutoff_t:
            raise DataError(f"--valid-cutoff {valid_cutoff} must be before --cutoff {cutoff}")
        run_r2(data, names, list(range(first_seed, first_seed + seeds)), out, hyper, cache_dir, tune, batch_size, device,
               console=console, cutoff=cutoff, valid_cutoff=valid_cutoff, refit_full=refit, peers=peers)
    except DataError as e:
        print_error(console, e)
        raise typer.Exit(code=2) from None


RECS_MODELS = {"loo": "popularity,itemknn,als,bpr,transformer",
               "cutoff": "popularity,repeat,itemknn,tifuknn,als,bpr,transformer"}


def recs_transformer_defaults(kind: str, exclude_history: bool) -> dict:
    """The transformer's settings in ``bench recs`` unless --params sets them: the co-occurrence prior
    chosen on validation, and on a cut-off split whose past items are ranked, the buy-again term and
    what each user buys in the following window (as R2 runs). Like every protocol run, it stops on the
    protocol's metric."""
    d = {"cooc_weight": "auto", "progress": False}
    if kind == "cutoff" and not exclude_history:
        d.update(repeat=True, target="window", cooc_repeat_share="auto")
    return d


@bench_app.command("recs")
def recs_cmd(
    store: Optional[Path] = typer.Option(None, "--store", help="DuckDB event store (or --data FILE)"),
    data: Optional[Path] = typer.Option(None, "--data", help="An event file, ingested once into --cache-dir "
                                        "(standard column names; for others run `valuerec ingest` and give --store)"),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="loo: each user's last event is the test "
                                           "target, the one before it the validation target (R1's construction); "
                                           "cutoff: the items each user buys after --cutoff (R2's). Default: "
                                           "cutoff when --cutoff is given, else loo"),
    cutoff: Optional[str] = typer.Option(None, "--cutoff", help="Test cut-off (cutoff protocol)"),
    valid_cutoff: Optional[str] = typer.Option(None, "--valid-cutoff", help="Validation cut-off (model choice only)"),
    k: str = typer.Option("10,20", "--k", help="Comma-separated list lengths; models are chosen on NDCG at the first"),
    exclude_history: Optional[bool] = typer.Option(
        None, "--exclude-history/--keep-history", help="Leave each user's past items out of the ranking (and "
        "out of the targets). Default: excluded for loo, kept for cutoff (repeat buying)"),
    models: Optional[str] = typer.Option(None, "--models", help=MODELS_HELP + ". Default: "
                                         f"{RECS_MODELS['loo']} (loo); {RECS_MODELS['cutoff']} (cutoff)"),
    seeds: int = typer.Option(3, "--seeds", min=1),
    first_seed: int = FIRST_SEED_OPTION,
    out: Optional[Path] = OUT_OPTION,
    params: Optional[str] = PARAMS_OPTION,
    cache_dir: Path = typer.Option(Path("runs/stores"), "--cache-dir", help="Where a --data file's store is cached"),
    tune: bool = typer.Option(True, "--tune/--no-tune", help="Search the default validation grids"),
    batch_size: int = BATCH_SIZE_OPTION,
    device: str = DEVICE_OPTION,
    threads: int = THREADS_OPTION,
    refit: Optional[bool] = REFIT_OPTION,
    peer: Optional[list[str]] = PEER_OPTION,
) -> None:
    """Next-item or next-purchase ranking on any store (the R1 and R2 protocols, parameterised): the
    transformer beside the baselines, chosen on validation, 3 seeds, full-catalogue ranking."""
    from valuerec.commands.lifecycle import parse_time
    from valuerec.commands.train import load_split
    from valuerec.data.ingest import file_sha256
    from valuerec.evaluation.protocols import run_recs
    _setup_threads(threads)
    try:
        kind = protocol or ("cutoff" if cutoff is not None else "loo")
        if kind not in ("loo", "cutoff"):
            raise DataError(f"--protocol {protocol!r}: expected loo or cutoff")
        if kind == "cutoff":
            if cutoff is None or valid_cutoff is None:
                raise DataError("--protocol cutoff needs --cutoff and --valid-cutoff (the validation cut-off, "
                                "before it, chooses the models' settings)")
            cutoff_t, valid_t = parse_time(cutoff, "--cutoff"), parse_time(valid_cutoff, "--valid-cutoff")
            if valid_t >= cutoff_t:
                raise DataError(f"--valid-cutoff {valid_cutoff} must be before --cutoff {cutoff}")
        elif cutoff is not None or valid_cutoff is not None:
            raise DataError("--cutoff / --valid-cutoff belong to --protocol cutoff; loo splits each user's own "
                            "sequence")
        try:
            ks = tuple(int(x) for x in k.split(",") if x.strip())
        except ValueError:
            raise DataError(f"--k {k!r}: expected comma-separated positive integers, e.g. 10,20") from None
        if not ks or min(ks) < 1:
            raise DataError(f"--k {k!r}: expected comma-separated positive integers, e.g. 10,20")
        excl = (kind == "loo") if exclude_history is None else exclude_history
        names, hyper, peers = run_inputs(models or RECS_MODELS[kind], params, tune, peer, device, out,
                                         defaults={"transformer": recs_transformer_defaults(kind, excl)})
        split, used = load_split(data, store, kind, cutoff and str(cutoff_t), valid_cutoff and str(valid_t),
                                 cache_dir)
        if used == "value-only":
            raise DataError(f"{data or store}: its events have no item ids, so there is nothing to rank (a value-only "
                            "log: see `valuerec bench value`)")
        src = Path(data or store)
        meta = {"dataset": src.stem.split(".")[0], "data_path": str(src),
                "data_sha256": file_sha256(src) if src.is_file() and data is not None else None, "store": str(store or "")}
        run_recs(split, meta, kind, ks, excl, names, list(range(first_seed, first_seed + seeds)), out, hyper, tune,
                 batch_size, device, console=console, refit_full=refit, peers=peers)
    except DataError as e:
        print_error(console, e)
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
        if not as_name.strip():
            raise DataError("--as: give the chosen model's name (it is empty)")
        check_out_file(out)
        chosen = choose_variant(read_result(result_path), [m.strip() for m in among.split(",") if m.strip()],
                                as_name, metric)
    except DataError as e:
        print_error(console, e)
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
    replace: bool = typer.Option(False, "--replace",
                                 help="A model in several parts is a rerun: take it from the last part that has it "
                                      "(recorded under 'replaced') instead of pooling its seeds"),
) -> None:
    """Join result files of one protocol run in parts (e.g. one seed per process, `--first-seed`): a model
    in several parts gets its seeds pooled and its mean / std recomputed over all of them (or, with
    --replace, is taken from the last part that has it)."""
    from valuerec.evaluation.results import merge_results, read_result, results_table, write_result
    try:
        check_out_file(out)
        merged = merge_results([read_result(p) for p in inputs], [str(p) for p in inputs], across_commits, replace)
    except DataError as e:
        print_error(console, e)
        raise typer.Exit(code=2) from None
    write_result(out, merged)
    console.print(results_table(merged, merged.get("metric_names")))
    console.log(f"wrote {out}")

