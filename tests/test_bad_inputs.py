"""Bad settings of `valuerec bench ...` and `report` fail fast, before any ingest or training,
with a one-line error (exit 2) that names the option."""

import json

import pytest
from typer.testing import CliRunner

from valuerec.cli import app
from valuerec.data.schema import DataError

from test_bench import write_s3rec

runner = CliRunner()


def said(res) -> str:
    """The output as one line (typer's error box and wrapping removed)."""
    return " ".join(res.output.replace("│", " ").replace("╭", " ").replace("╰", " ").split())


@pytest.fixture
def r1_base(tmp_path):
    data = write_s3rec(tmp_path / "Tiny.txt", n_users=10)
    return ["bench", "r1", "--data", str(data), "--cache-dir", str(tmp_path / "stores"), "--models", "popularity",
            "--seeds", "1"], tmp_path


@pytest.mark.parametrize("extra, message", [
    (["--out", "{d}/adir"], "--out {d}/adir: is a directory; give a file path"),
    (["--out", "{d}/afile/r.json"], "cannot write to {d}/afile"),
    (["--out", "/proc/valuerec-m.json"], "cannot write to /proc"),
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "-5"], "--batch-size"),
    (["--threads", "-1"], "--threads"),
    (["--threads", "0"], "--threads"),
    (["--device", "bogus"], "--device 'bogus': expected cpu, cuda, cuda:N or mps"),
    (["--attributes", "{d}/nope.json"], "--attributes {d}/nope.json: no such file"),
    (["--models", ""], "no models given"),
    (["--params", "{d}/nofile.json"], "no such file"),
    (["--models", "itemknn", "--params", '{{"itemknn": {{"neighbors": 8}}}}'], "unknown setting(s) ['neighbors']"),
    (["--models", "popularity,itemknn", "--params", '{{"itemknn": {{"neighbours": "many"}}}}'],
     "neighbours='many', expected a whole number"),
    (["--models", "itemknn", "--params", '{{"itemknn": {{"neighbours": []}}}}'], "neighbours is an empty grid"),
    (["--models", "itemknn", "--params", '{{"itemknn": {{"recency_decay": [1.0, "x"]}}}}'],
     "recency_decay='x', expected a finite number"),
    (["--models", "itemknn", "--params", '{{"itemkn": {{"neighbours": 8}}}}'],
     "--params names model(s) ['itemkn'] not in this run; its models: itemknn"),
    (["--models", "transformer", "--params", '{{"transformer": {{"d_model": "x"}}}}'], "d_model='x'"),
])
def test_r1_bad_settings_fail_before_ingest(r1_base, extra, message):
    base, d = r1_base
    (d / "adir").mkdir()
    (d / "afile").write_text("x")
    res = runner.invoke(app, base + [e.format(d=d) for e in extra])
    assert res.exit_code == 2 and message.format(d=d) in said(res), res.output
    assert not (d / "stores").exists()          # nothing was ingested
    assert not list((d / "adir").iterdir())     # no stray adir/.tmp or result


def test_cuda_when_unavailable_is_refused_up_front(r1_base, monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    base, d = r1_base
    res = runner.invoke(app, base + ["--device", "cuda"])
    assert res.exit_code == 2 and "CUDA is not available" in said(res), res.output
    assert not (d / "stores").exists()


def test_r1_good_params_still_run(r1_base):
    """A params entry for a registered model outside the run (a file shared by several runs) is only
    warned about."""
    base, d = r1_base
    out = d / "sub" / "r1.json"
    res = runner.invoke(app, base[:-4] + ["--models", "popularity,itemknn", "--seeds", "1", "--no-tune", "--params",
                                          '{"itemknn": {"neighbours": [5, 10]}, "als": {"factors": 4}}',
                                          "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "--params entries for ['als'] are ignored" in said(res)
    assert set(json.loads(out.read_text())["models"]) == {"popularity", "itemknn"}


@pytest.mark.parametrize("extra, message", [
    (["--cutoff", "notadate"], "--cutoff 'notadate': not a date/time"),
    (["--valid-cutoff", "2011-13-45"], "--valid-cutoff '2011-13-45': not a date/time"),
    (["--valid-cutoff", "2011-10-01"], "must be before --cutoff"),
    (["--out", "{d}"], "is a directory"),
    (["--peer", "rectools_sasrec"], "--peer 'rectools_sasrec': expected NAME=PYTHON"),
    (["--params", '{{"peer:rectools_sasrec": {{"max_epochs": 2}}}}'],   # a peer's settings without the peer
     "--params names model(s) ['peer:rectools_sasrec'] not in this run"),
])
def test_r2_bad_dates_and_out(tmp_path, extra, message):
    res = runner.invoke(app, ["bench", "r2", "--data", str(tmp_path / "none.csv"), "--models", "popularity",
                              "--cache-dir", str(tmp_path / "stores")] + [e.format(d=tmp_path) for e in extra])
    assert res.exit_code == 2 and message.format(d=tmp_path) in said(res), res.output


def test_r2_peer_settings_pass_the_checks_with_their_peer(tmp_path):
    """--params for a peer named by --peer are accepted (the run then stops at the missing data)."""
    res = runner.invoke(app, ["bench", "r2", "--data", str(tmp_path / "none.csv"), "--models", "popularity",
                              "--cache-dir", str(tmp_path / "stores"), "--peer", "rectools_sasrec=/no/python",
                              "--params", '{"peer:rectools_sasrec": {"max_epochs": 2}}'])
    assert res.exit_code == 2 and "none.csv" in said(res) and "--params" not in said(res), res.output


def test_write_result_refuses_a_directory(tmp_path):
    from valuerec.evaluation.results import RESULT_KEYS, write_result
    with pytest.raises(DataError, match="is a directory"):
        write_result(tmp_path, {k: "x" for k in RESULT_KEYS})
    assert not list(tmp_path.parent.glob(tmp_path.name + ".tmp"))


def test_merge_and_choose_check_out_and_names(tmp_path):
    res = runner.invoke(app, ["bench", "merge", str(tmp_path / "a.json"), "--out", str(tmp_path)])
    assert res.exit_code == 2 and "is a directory; give a file path" in said(res), res.output
    res = runner.invoke(app, ["bench", "choose", str(tmp_path / "a.json"), "--among", "t:a,t:b", "--as", " ",
                              "--out", str(tmp_path / "o.json")])
    assert res.exit_code == 2 and "--as: give the chosen model's name" in said(res), res.output
    res = runner.invoke(app, ["bench", "choose", str(tmp_path / "a.json"), "--among", "t:a,t:b", "--as", "t",
                              "--out", str(tmp_path)])
    assert res.exit_code == 2 and "is a directory; give a file path" in said(res), res.output


def test_report_out_directory(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "store.duckdb").write_text("")
    res = runner.invoke(app, ["report", "--model", str(tmp_path / "model"), "--store", str(tmp_path / "store.duckdb"),
                              "--results", str(tmp_path), "--out", str(tmp_path)])
    assert res.exit_code == 2 and "is a directory; give a file path" in said(res), res.output
