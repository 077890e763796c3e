"""End-to-end: `valuerec bench r1` on a tiny synthetic S3-Rec file, the result file format, the page,
and `valuerec recommend` on a saved model."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from valuerec.cli import app
from valuerec.evaluation.results import MODEL_KEYS, RESULT_KEYS

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def write_s3rec(path: Path, n_users=80, n_items=25, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for u in range(1, n_users + 1):
            start, n = rng.integers(1, n_items + 1), rng.integers(4, 9)
            seq = (start + np.cumsum(rng.integers(0, 3, size=n))) % n_items + 1
            f.write(" ".join(map(str, [u, *seq.tolist()])) + "\n")
    return path


@pytest.fixture(scope="module")
def r1_result(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    data = write_s3rec(d / "Tiny.txt")
    out = d / "r1.json"
    params = json.dumps({"als": {"factors": [4, 8], "iterations": 3}, "bpr": {"factors": 4, "iterations": 5},
                         "itemknn": {"neighbours": 5, "recency_decay": [1.0, 0.5]},
                         "itemknn:decay0.2": {"neighbours": 5, "recency_decay": 0.2}})
    res = runner.invoke(app, ["bench", "r1", "--data", str(data), "--models",
                              "popularity,itemknn,itemknn:decay0.2,als,bpr,popularity-s3rec",
                              "--seeds", "2", "--out", str(out), "--params", params, "--cache-dir", str(d / "stores"),
                              "--no-tune"])
    assert res.exit_code == 0, res.output
    return json.loads(out.read_text()), d


def test_named_variant_runs_beside_its_model(r1_result):
    """model:variant is the registered model with the variant's own params, in the same run."""
    result, _ = r1_result
    var = result["models"]["itemknn:decay0.2"]
    assert var["params"]["recency_decay"] == 0.2 and var["params"]["neighbours"] == 5
    assert result["models"]["itemknn"]["params"]["recency_decay"] in (1.0, 0.5)
    assert var["metrics"] != result["models"]["itemknn"]["metrics"]


def test_result_file_has_documented_keys(r1_result):
    result, _ = r1_result
    for k in RESULT_KEYS:
        assert k in result, k
    assert result["protocol"] == "R1" and len(result["data_sha256"]) == 64
    assert set(result["models"]) == {"popularity", "itemknn", "itemknn:decay0.2", "als", "bpr", "popularity-s3rec"}
    for name, entry in result["models"].items():
        for k in MODEL_KEYS:
            assert k in entry, (name, k)
        for m in ("hr@10", "ndcg@10", "hr@20", "ndcg@20", "mrr", "coverage@10"):
            assert 0.0 <= entry["metrics"][m] <= 1.0
        assert "seed" not in entry["params"]


def test_seeds_and_selection(r1_result):
    result, _ = r1_result
    models = result["models"]
    assert models["popularity"]["seeds"] == [0] and models["itemknn"]["seeds"] == [0]  # deterministic: once
    assert models["als"]["seeds"] == [0, 1] and len(models["als"]["per_seed"]) == 2
    grid = models["als"]["validation"]["grid"]
    assert sorted(g["params"]["factors"] for g in grid) == [4, 8]
    best = max(grid, key=lambda g: g["metrics"]["ndcg@10"])
    assert models["als"]["params"]["factors"] == best["params"]["factors"]
    assert models["itemknn"]["params"]["neighbours"] == 5
    # The mean really is the mean of the per-seed values.
    vals = [r["metrics"]["ndcg@10"] for r in models["als"]["per_seed"]]
    assert models["als"]["metrics"]["ndcg@10"] == pytest.approx(np.mean(vals))
    assert result["popularity_variants"] and "note" in models["popularity-s3rec"]


def test_leaky_popularity_counts_test_targets(r1_result):
    """Counting the test targets can only help popularity find them: the leak shows as >= HR."""
    result, _ = r1_result
    variants = {(v["counted_over"], v["each_user_once"], v["exclusion"]): v["metrics"]
                for v in result["popularity_variants"]}
    honest = result["models"]["popularity"]["metrics"]
    assert variants[("train_full", False, "history excluded")]["hr@10"] == pytest.approx(honest["hr@10"])
    leaky = result["models"]["popularity-s3rec"]["metrics"]
    assert leaky["hr@10"] == pytest.approx(
        variants[("all events (incl. test targets)", False, "history excluded")]["hr@10"])


def test_store_is_cached(r1_result):
    _, d = r1_result
    assert len(list((d / "stores").glob("*.duckdb"))) == 1


def test_bad_inputs_give_clear_errors(tmp_path):
    res = runner.invoke(app, ["bench", "r1", "--data", str(tmp_path / "missing.txt")])
    assert res.exit_code == 2 and "no such file" in " ".join(res.output.split())
    data = write_s3rec(tmp_path / "Tiny.txt")
    res = runner.invoke(app, ["bench", "r1", "--data", str(data), "--models", "nope"])
    assert res.exit_code != 0 and "unknown model" in " ".join(res.output.split())


def test_make_page(r1_result, tmp_path):
    result, d = r1_result
    results = tmp_path / "results"
    results.mkdir()
    shown = json.loads(json.dumps(result))   # a model scored without one of its parts renders beside it
    shown["models"]["als"]["ablations"] = {"no_part": {"ndcg@10": 0.1234, "hr@10": 0.2345}}
    shown["models"]["als"].update({"seconds_per_epoch": 12.5, "epochs_run": 7, "best_epoch": 5, "seconds_to_best": 61.0})
    shown["models"]["als"]["validation_metrics"] = {"ndcg@10": 0.4321, "hr@10": 0.5432}   # a probe's layout
    shown["chosen_on_validation"] = "als"
    (results / "r1_tiny.json").write_text(json.dumps(shown))
    out = tmp_path / "README.md"
    project_readme = (REPO / "README.md").read_text()
    readme = tmp_path / "PROJECT.md"
    readme.write_text("intro\n<!-- benchmarks:start -->\nold\n<!-- benchmarks:end -->\nrest\n")
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "make_page.py"), "--results", str(results),
                    "--out", str(out), "--readme", str(readme)], check=True, capture_output=True)
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "make_page.py"), "--results", str(results),
                    "--out", str(out)], check=True, capture_output=True)
    assert (REPO / "README.md").read_text() == project_readme    # a test never rewrites the project README
    assert "old" not in readme.read_text() and readme.read_text().startswith("intro")
    page = out.read_text()
    assert "r1_tiny.json" in page and "`als`" in page
    assert f"{result['models']['als']['metrics']['ndcg@10']:.4f} ± " in page
    assert result["git_commit"] in page
    assert "popularity-s3rec" in page
    assert "`als` without the `part`" in page and "ndcg@10 0.1234" in page
    assert "`als`: 12.5 s per epoch, 7 epochs run, best validation at epoch 5, 61 s of training to reach it" in page
    assert "| `als` (chosen) | 0.4321 | 0.5432 |" in page


def test_recommend_command(tmp_path):
    from valuerec.data.splits import leave_one_out
    from valuerec.data.store import EventStore
    from valuerec.models.itemknn import ItemKNN
    data = write_s3rec(tmp_path / "Tiny.txt")
    store = tmp_path / "s.duckdb"
    assert runner.invoke(app, ["ingest", str(data), "--store", str(store)]).exit_code == 0
    with EventStore(store, read_only=True) as st:
        split = leave_one_out(st.events(), st.items())
    ItemKNN(neighbours=5).fit(split.train_full, split.catalogue).save(tmp_path / "model")
    res = runner.invoke(app, ["recommend", "--model", str(tmp_path / "model"), "--user", "3", "--store", str(store),
                              "-k", "4", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout[res.stdout.index("{"):])
    hist = {l.split()[i] for l in data.read_text().splitlines() if l.split()[0] == "3" for i in range(1, len(l.split()))}
    assert out["items"] and len(out["items"]) <= 4
    assert not {it["item_id"] for it in out["items"]} & hist
    res = runner.invoke(app, ["recommend", "--model", str(tmp_path / "model"), "--user", "3", "--store", str(store),
                              "-k", "4", "--json", "--no-exclude-history"])
    assert res.exit_code == 0
    res = runner.invoke(app, ["recommend", "--model", str(tmp_path / "model"), "--user", "nobody",
                              "--store", str(store)])
    assert res.exit_code == 2 and "no events" in " ".join(res.output.split())
    res = runner.invoke(app, ["recommend", "--model", str(tmp_path / "model"), "--user", "nobody",
                              "--store", str(store), "--fallback", "--json"])
    assert res.exit_code == 0 and "unknown user" in res.stdout


@pytest.mark.slow
@pytest.mark.shared_data
def test_r1_popularity_golden_numbers(shared_data):
    """Golden numbers on the real R1 file: our honest popularity, and the leaky variant that
    reproduces the S3-Rec repository's published 0.0152 / 0.0068 exactly (to 4 decimals)."""
    from valuerec.data.dataset import Sequences
    from valuerec.data.ingest import read_s3rec
    from valuerec.data.splits import leave_one_out
    from valuerec.evaluation.metrics import evaluate
    from valuerec.evaluation.protocols import _targets_as_history
    from valuerec.models.popularity import Popularity, PopularityS3Rec
    beauty = shared_data / "amazon-beauty" / "Beauty.txt"
    if not beauty.exists():
        pytest.skip(f"{beauty} not found")
    events, items, _ = read_s3rec(beauty)
    split = leave_one_out(events, items)
    assert split.info["users"] == 22363 and split.info["items"] == 12101 and split.info["events"] == 198502
    n = len(split.catalogue)
    honest = evaluate(Popularity().fit(split.train_full, split.catalogue).score, split.test, n, ks=(10,))
    every_event = Sequences.concat(split.train_full, _targets_as_history(split))
    leaky = evaluate(PopularityS3Rec().fit(every_event, split.catalogue).score, split.test, n, ks=(10,))
    assert round(honest["hr@10"], 4) == 0.0135 and round(honest["ndcg@10"], 4) == 0.0061
    assert round(leaky["hr@10"], 4) == 0.0152 and round(leaky["ndcg@10"], 4) == 0.0068


def test_seeds_in_parts_merge_to_the_whole_run(tmp_path):
    """`--first-seed` runs a protocol's seeds in separate processes; `bench merge` pools them into the
    result a single run gives: the same per-seed figures, mean and std."""
    data = write_s3rec(tmp_path / "Tiny.txt")
    params = json.dumps({"als": {"factors": 4, "iterations": 3}, "itemknn": {"neighbours": 5, "recency_decay": 1.0}})
    common = ["bench", "r1", "--data", str(data), "--params", params, "--cache-dir", str(tmp_path / "stores"),
              "--no-tune"]
    outs = {}
    for name, extra in {"whole": ["--models", "als", "--seeds", "3"],
                        "a": ["--models", "itemknn,als", "--seeds", "2"],
                        "b": ["--models", "itemknn,als", "--seeds", "1", "--first-seed", "2"]}.items():
        outs[name] = tmp_path / f"{name}.json"
        res = runner.invoke(app, common + extra + ["--out", str(outs[name])])
        assert res.exit_code == 0, res.output
    assert json.loads(outs["b"].read_text())["models"]["als"]["seeds"] == [2]
    merged_path = tmp_path / "merged.json"
    res = runner.invoke(app, ["bench", "merge", str(outs["a"]), str(outs["b"]), "--out", str(merged_path)])
    assert res.exit_code == 0, res.output
    merged = json.loads(merged_path.read_text())
    whole = json.loads(outs["whole"].read_text())["models"]["als"]
    als = merged["models"]["als"]
    assert als["seeds"] == [0, 1, 2] and len(als["per_seed"]) == len(whole["per_seed"]) == 3
    for got, want in zip(als["per_seed"], whole["per_seed"]):
        assert got["seed"] == want["seed"]
        assert got["metrics"] == pytest.approx(want["metrics"])
    for m, v in whole["metrics"].items():
        assert als["metrics"][m] == pytest.approx(v) and als["metrics_std"][m] == pytest.approx(whole["metrics_std"][m])
    assert merged["models"]["itemknn"]["seeds"] == [0]          # deterministic: the same run kept once
    assert [p["file"] for p in merged["parts"]] == [str(outs["a"]), str(outs["b"])]
    for k in RESULT_KEYS:
        assert k in merged

    # Parts that are not of one run are refused with the reason.
    res = runner.invoke(app, ["bench", "merge", str(outs["a"]), str(outs["a"]), "--out", str(tmp_path / "x.json")])
    assert res.exit_code == 2 and "is the same result as" in res.output
    again = json.loads(outs["a"].read_text())
    again["started_at"] = "2000-01-01T00:00:00+00:00"          # the same seeds from another run
    (tmp_path / "again.json").write_text(json.dumps(again))
    res = runner.invoke(app, ["bench", "merge", str(outs["a"]), str(tmp_path / "again.json"), "--out", str(tmp_path / "x.json")])
    assert res.exit_code == 2 and "occur in more than one part" in res.output
    other = json.loads(outs["b"].read_text())
    other["data_sha256"] = "0" * 64
    (tmp_path / "other.json").write_text(json.dumps(other))
    res = runner.invoke(app, ["bench", "merge", str(outs["a"]), str(tmp_path / "other.json"), "--out", str(tmp_path / "x.json")])
    assert res.exit_code == 2 and "data_sha256 differs" in res.output
    other = json.loads(outs["b"].read_text())
    other["models"]["als"]["validation"]["chosen"]["factors"] = 8
    (tmp_path / "other.json").write_text(json.dumps(other))
    res = runner.invoke(app, ["bench", "merge", str(outs["a"]), str(tmp_path / "other.json"), "--out", str(tmp_path / "x.json")])
    assert res.exit_code == 2 and "other settings" in res.output and "factors" in res.output
    (tmp_path / "bad.json").write_text("{}")
    res = runner.invoke(app, ["bench", "merge", str(outs["a"]), str(tmp_path / "bad.json"), "--out", str(tmp_path / "x.json")])
    assert res.exit_code == 2 and "not a result file" in res.output
    assert not (tmp_path / "x.json").exists()

    # --replace: a model in a later part is a rerun of it (e.g. a baseline with a wider grid), taken whole
    res = runner.invoke(app, ["bench", "merge", str(outs["a"]), str(tmp_path / "other.json"), "--replace",
                              "--out", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    replaced = json.loads((tmp_path / "r.json").read_text())
    later = json.loads((tmp_path / "other.json").read_text())["models"]
    assert replaced["models"] == later            # both models were rerun in the later part
    assert [r["model"] for r in replaced["replaced"]] == ["itemknn", "als"]
    assert {"model": "als", "file": str(outs["a"]), "by": str(tmp_path / "other.json")} in replaced["replaced"]
    assert replaced["command"].startswith("valuerec bench merge --replace ")   # the command reproduces it


def test_python_dash_m_runs_the_cli_and_records_it_as_valuerec(monkeypatch):
    """`python -m valuerec` is the same command line (for machines where the package is only on
    PYTHONPATH), and result files record it as `valuerec ...`."""
    from valuerec.evaluation.results import command_line
    res = subprocess.run([sys.executable, "-m", "valuerec", "bench", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert "merge" in res.stdout and "r1" in res.stdout
    main = str(REPO / "src" / "valuerec" / "__main__.py")
    monkeypatch.setattr(sys, "argv", [main, "bench", "r1", "--seeds", "1"])
    assert command_line() == "valuerec bench r1 --seeds 1"


def _part(seed: int, started: str, **entry_extra) -> dict:
    run = {"seed": seed, "metrics": {"ndcg@10": 0.1 * (seed + 1)}, "train_seconds": 1.0, "eval_seconds": 1.0}
    entry = {"metrics": dict(run["metrics"]), "seeds": [seed], "per_seed": [run], "params": {"x": 1},
             "train_seconds": 1.0, "eval_seconds": 1.0, "validation": {"chosen": {"x": 1}}, **entry_extra}
    return {"protocol": "R2", "dataset": "d", "data_sha256": "0" * 64, "git_commit": "c", "command": "valuerec bench",
            "device": "cpu", "started_at": started, "metric_names": ["ndcg@10"], "models": {"m": entry}}


def test_merge_keeps_extras_and_peer_statistics_and_refuses_other_decisions():
    from valuerec.data.schema import DataError
    from valuerec.evaluation.results import merge_results
    a = _part(0, "t0", epochs_run=7, best_epoch=5, seconds_per_epoch=2.0, seconds_to_best=10.0)
    b = _part(1, "t1", epochs_run=9, best_epoch=6, seconds_per_epoch=3.0, seconds_to_best=18.0)
    b["popularity_variants"] = [{"counted_over": "train_full"}]
    merged = merge_results([a, b])
    m = merged["models"]["m"]
    assert m["seeds"] == [0, 1] and m["metrics"]["ndcg@10"] == pytest.approx(0.15)
    # statistics kept per entry only (as a peer reports them) come from the last seed's part
    assert (m["epochs_run"], m["best_epoch"], m["seconds_per_epoch"]) == (9, 6, 3.0)
    assert merged["popularity_variants"] == [{"counted_over": "train_full"}]
    # a refit's epochs are decided once, on the first seed's validation: parts deciding otherwise differ
    a["models"]["m"]["validation"]["refit_epochs"] = 4
    b["models"]["m"]["validation"]["refit_epochs"] = 6
    with pytest.raises(DataError, match="refit_epochs"):
        merge_results([a, b])
    # a deterministic model with other figures in another part is refused, naming the metric
    for r, v in ((a, 0.1), (b, 0.2)):
        r["models"]["d"] = {"metrics": {"ndcg@10": v}, "seeds": [0], "deterministic": True, "params": {}}
    a["models"]["m"]["validation"].pop("refit_epochs"); b["models"]["m"]["validation"].pop("refit_epochs")
    with pytest.raises(DataError, match="ndcg@10: 0.1 vs 0.2"):
        merge_results([a, b])
    # parts of different commits: refused, unless the caller vouches for them; then every commit is kept
    del a["models"]["d"], b["models"]["d"]
    b["git_commit"] = "c2"
    with pytest.raises(DataError, match="git_commit differs"):
        merge_results([a, b])
    merged = merge_results([a, b], across_commits=True)
    assert merged["git_commit"] == "c, c2" and [p["git_commit"] for p in merged["parts"]] == ["c", "c2"]


def tiny_beauty_dir(data: Path) -> Path:
    """A folder laid out like the R1 data: a tiny Beauty.txt and its item attributes beside it."""
    data.mkdir()
    write_s3rec(data / "Beauty.txt", n_users=60, n_items=20)
    (data / "Beauty_item2attributes.json").write_text(json.dumps({str(i): [i % 4 + 1] for i in range(1, 21)}))
    return data


def test_gpu_script_runs_its_parts_and_merges_them_on_cpu(tmp_path):
    """benchmarks/r1_gpu.sh (parallel seed processes + merge) end to end on a tiny file, on the CPU."""
    import os
    data = tiny_beauty_dir(tmp_path / "data")
    out = tmp_path / "out"
    env = {**os.environ, "EPOCHS": "1", "MAX_SECONDS": "5", "DEVICE": "cpu", "OMP_NUM_THREADS": "1",
           "VARIANT": "tiny", "EXTRA": '"d_model": 16', "VALUEREC": f"{sys.executable} -m valuerec"}
    res = subprocess.run(["bash", str(REPO / "benchmarks" / "r1_gpu.sh"), str(data), str(out)], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    merged = json.loads((out / "r1_beauty_gpu_tiny.json").read_text())
    entry = merged["models"]["transformer:tiny"]
    assert entry["seeds"] == [0, 1, 2] and entry["params"]["d_model"] == 16 and entry["params"]["n_attributes"] > 0
    assert len(merged["parts"]) == 3 and (out / "r1_gpu_tiny_parts.tar.gz").exists()


def test_sweep_script_runs_configurations_and_chooses_on_validation(tmp_path):
    """benchmarks/r1_gpu_sweep.sh: two configurations (3 seed processes each) and the baselines on a tiny
    file on the CPU, then `choose`: the copy named `transformer` is the candidate with the best mean
    validation NDCG@10, whatever the test says."""
    import os
    data = tiny_beauty_dir(tmp_path / "data")
    parts = tmp_path / "parts"
    env = {**os.environ, "EPOCHS": "1", "MAX_SECONDS": "5", "DEVICE": "cpu", "BASELINES": "1",
           "VALUEREC": f"{sys.executable} -m valuerec"}
    script = str(REPO / "benchmarks" / "r1_gpu_sweep.sh")
    res = subprocess.run(["bash", script, "run", str(data), str(parts), "base", "l3"], cwd=tmp_path,
                         env={**env, "PACK": str(tmp_path / "parts.tar.gz")}, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    import tarfile
    with tarfile.open(tmp_path / "parts.tar.gz") as tar:
        packed = {Path(n).name for n in tar.getnames()}
    assert {"baselines.json", "transformer_base_seed0.json", "transformer_l3_seed2.json"} <= packed
    res = subprocess.run(["bash", script, "run", str(data), str(parts), "nonsense"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "unknown configuration nonsense" in res.stderr
    out = tmp_path / "sweep.json"
    res = subprocess.run(["bash", script, "choose", str(parts), str(out)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    result = json.loads(out.read_text())
    models = result["models"]
    assert {"transformer:base", "transformer:l3", "transformer", "itemknn", "als"} <= set(models)
    assert models["transformer:l3"]["params"]["n_layers"] == 3 and models["transformer:base"]["params"]["n_layers"] == 2
    choice = models["transformer"]["choice"]
    means = {m: np.mean([models[m]["validation"]["best"]["ndcg@10"]]
                        + [v["best"]["ndcg@10"] for v in models[m]["validation_parts"].values()])
             for m in ("transformer:base", "transformer:l3")}
    assert choice["chosen"] == max(means, key=lambda m: (means[m], m == "transformer:base"))
    for m, v in choice["candidates"].items():
        assert v["valid_mean"] == pytest.approx(means[m]) and len(v["valid_per_part"]) == 3
    assert models["transformer"]["metrics"] == models[choice["chosen"]]["metrics"]


def _entry(valid: list[float], test: float, seeds=(0, 1, 2)) -> dict:
    parts = {f"p{i}": {"best": {"ndcg@10": v}} for i, v in enumerate(valid[1:], 1)}
    return {"metrics": {"ndcg@10": test}, "seeds": list(seeds), "validation": {"best": {"ndcg@10": valid[0]}},
            "validation_parts": parts}


def test_choose_variant_uses_validation_only_and_refuses_unlike_candidates():
    from valuerec.data.schema import DataError
    from valuerec.evaluation.results import choose_variant
    result = {"protocol": "R1", "selection_metric": "ndcg@10", "command": "valuerec bench merge a b",
              "models": {"t:a": _entry([0.10, 0.11, 0.12], test=0.9),      # best on test, not on validation
                         "t:b": _entry([0.12, 0.12, 0.12], test=0.1)}}
    out = choose_variant(result, ["t:a", "t:b"], "t")
    assert out["models"]["t"]["choice"]["chosen"] == "t:b" and out["models"]["t"]["metrics"]["ndcg@10"] == 0.1
    assert out["models"]["t"]["choice"]["candidates"]["t:a"]["valid_mean"] == pytest.approx(0.11)
    assert "t" not in result["models"]                                     # the input is left as it was
    with pytest.raises(DataError, match="already has a model"):
        choose_variant(out, ["t:a", "t:b"], "t")
    with pytest.raises(DataError, match=r"no model \['t:c'\]"):
        choose_variant(result, ["t:a", "t:c"], "t")
    with pytest.raises(DataError, match="at least two"):
        choose_variant(result, ["t:a"], "t")
    with pytest.raises(DataError, match=r"would file configurations of \['t'\] under another model's name"):
        choose_variant(result, ["t:a", "t:b"], "popularity")
    result["models"]["t:c"] = _entry([0.2, 0.2], test=0.5, seeds=(0, 1))
    with pytest.raises(DataError, match="different seeds"):
        choose_variant(result, ["t:a", "t:c"], "t")
    result["models"]["t:d"] = _entry([0.2], test=0.5)                       # 3 seeds, one validation run
    with pytest.raises(DataError, match="1 validation run"):
        choose_variant(result, ["t:a", "t:d"], "t")


def test_choose_cli_refuses_with_a_clear_error_and_writes_nothing(tmp_path):
    result = {"protocol": "R1", "dataset": "d", "data_sha256": "0" * 64, "git_commit": "c", "command": "valuerec x",
              "device": "cpu", "started_at": "t", "selection_metric": "ndcg@10",
              "models": {"t:a": _entry([0.1, 0.1, 0.1], test=0.2), "t:b": _entry([0.2, 0.2], test=0.1, seeds=(0, 1))}}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(result))
    out = tmp_path / "out.json"
    res = runner.invoke(app, ["bench", "choose", str(path), "--among", "t:a,t:b", "--as", "t", "--out", str(out)])
    assert res.exit_code == 2 and "different seeds" in " ".join(res.output.split()) and not out.exists()
    res = runner.invoke(app, ["bench", "choose", str(tmp_path / "missing.json"), "--among", "t:a,t:b", "--as", "t",
                              "--out", str(out)])
    assert res.exit_code == 2 and "cannot read a result file" in " ".join(res.output.split()) and not out.exists()


def test_lifecycle_v1_params_from_a_v1_result(tmp_path):
    """lifecycle_v1.py --params-from takes the chosen model's full parameters (seed aside) from a V1
    result file, and stops with a message naming the file for a missing model or an unreadable file."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("lifecycle_v1", REPO / "benchmarks" / "lifecycle_v1.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = tmp_path / "v1.json"
    res.write_text(json.dumps({"models": {"transformer": {"params": {"seed": 2, "value_features": "rfm", "epochs": 6}}}}))
    assert mod.chosen_params(res, "transformer") == {"value_features": "rfm", "epochs": 6}
    with pytest.raises(SystemExit, match="no model 'lightgbm'"):
        mod.chosen_params(res, "lightgbm")
    with pytest.raises(SystemExit, match="cannot read"):
        mod.chosen_params(tmp_path / "missing.json", "transformer")
    res.write_text(json.dumps({"models": {"transformer": {"metrics": {}}}}))
    with pytest.raises(SystemExit, match="no 'params'"):
        mod.chosen_params(res, "transformer")
    res.write_text("[1, 2]")
    with pytest.raises(SystemExit, match="no model 'transformer'"):
        mod.chosen_params(res, "transformer")


def test_r1_refit_trains_every_seed_on_train_full_for_the_epochs_validation_chose(tmp_path):
    """`bench r1 --refit`: the first seed's validation fit chooses the epoch count (and the prior's weight);
    each seed is then fitted on train_full, where each user's validation item is a training target, for
    that many epochs (R1's default). With --no-refit it keeps the validation-stopped fit. Parts run with different
    settings are not one run."""
    data = write_s3rec(tmp_path / "Tiny.txt")
    tiny = {"d_model": 16, "n_layers": 1, "n_heads": 1, "max_len": 8, "dropout": 0.0, "epochs": 6,
            "eval_every": 2, "patience": 1, "batch_size": 32, "progress": False, "warmup_steps": 0,
            "cooc_weight": "auto"}
    common = ["bench", "r1", "--data", str(data), "--models", "transformer", "--params",
              json.dumps({"transformer": tiny}), "--cache-dir", str(tmp_path / "stores"), "--no-tune"]
    outs = {}
    for name, extra in {"refit": ["--seeds", "2"], "stopped": ["--seeds", "1", "--first-seed", "2", "--no-refit"]}.items():
        outs[name] = tmp_path / f"{name}.json"
        res = runner.invoke(app, common + extra + ["--out", str(outs[name])])
        assert res.exit_code == 0, res.output
    refit, stopped = (json.loads(outs[n].read_text()) for n in ("refit", "stopped"))
    assert refit["refit_full"] is True and stopped["refit_full"] is False
    e = refit["models"]["transformer"]
    epochs = e["validation"]["refit_epochs"]
    assert 1 <= epochs <= 6 and e["final_fit_on"] == f"train_full for {epochs} epochs (chosen on valid)"
    assert e["params"]["epochs"] == epochs
    # the prior's weight chosen on validation is carried into every seed's refit
    assert e["params"]["cooc_weight"] == e["validation"]["chosen_during_fit"]["cooc_weight"] != "auto"
    for run in e["per_seed"]:
        assert run["epochs_run"] == epochs and run["best_epoch"] is None   # no validation in a refit
    sel = e["validation"]["grid"][0]      # the selection fit's own training statistics
    assert sel["best_epoch"] == epochs and sel["epochs_run"] >= epochs and sel["seconds_per_epoch"] > 0
    s = stopped["models"]["transformer"]
    assert s["final_fit_on"] == "train (early stopping on valid)" and "refit_epochs" not in s["validation"]
    res = runner.invoke(app, ["bench", "merge", str(outs["refit"]), str(outs["stopped"]), "--out", str(tmp_path / "x.json")])
    assert res.exit_code == 2 and "refit_full differs" in res.output and not (tmp_path / "x.json").exists()


def test_bench_fits_with_a_checkpoint_dir_resume_only_their_own(tmp_path):
    """Every fit of a bench run (each grid point, each seed's refit) shared the params' checkpoint_dir: a refit
    resumed the selection fit's finished checkpoint and trained nothing. Each now has its own subfolder."""
    data = write_s3rec(tmp_path / "Tiny.txt")
    ck = tmp_path / "ck"
    tiny = {"d_model": 16, "n_layers": 1, "max_len": 8, "epochs": 3, "batch_size": 32, "progress": False,
            "warmup_steps": 0, "dropout": [0.0, 0.2], "checkpoint_dir": str(ck)}
    res = runner.invoke(app, ["bench", "r1", "--data", str(data), "--models", "transformer", "--params",
                              json.dumps({"transformer": tiny}), "--cache-dir", str(tmp_path / "stores"), "--no-tune",
                              "--seeds", "2", "--out", str(tmp_path / "r1.json")])
    assert res.exit_code == 0, res.output
    e = json.loads((tmp_path / "r1.json").read_text())["models"]["transformer"]
    epochs = e["validation"]["refit_epochs"]
    for run in e["per_seed"]:
        assert run["epochs_run"] == epochs and run["best_epoch"] is None   # trained afresh, no validation
    assert sorted(p.name for p in ck.iterdir()) == ["grid-0", "grid-1", "refit-seed0", "refit-seed1"]


def test_a_run_records_the_commit_it_started_from(monkeypatch):
    """A result file recorded HEAD when it was written: a commit made while a long run went on was
    named as the code it ran. The project's commit is now read once, when results is first imported."""
    from valuerec.evaluation import results

    first = results.git_commit()
    monkeypatch.setattr(results, "_read_commit", lambda repo: "a-later-commit")
    assert results.git_commit() == first
    assert results.git_commit(repo=REPO) == "a-later-commit"      # another checkout is read as asked
