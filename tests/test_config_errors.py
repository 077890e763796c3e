"""Wrong settings get a DataError naming the setting (not a TypeError from deep inside), and a model
written over an earlier one keeps none of its files."""

import json

import pytest
from typer.testing import CliRunner

from valuerec.cli import app
from valuerec.data.schema import DataError
from valuerec.models.transformer import _split_kwargs
from valuerec.policies.lifecycle import LifecycleConfig
from valuerec.policies.rerank import make_policy

runner = CliRunner()


@pytest.mark.parametrize("key, value, message", [
    ("d_model", "abc", "d_model='abc', expected a whole number"),
    ("d_model", 0, "d_model=0, must be >= 1"),
    ("n_heads", 0, "n_heads=0, must be >= 1"),
    ("max_len", 1.5, "max_len=1.5, expected a whole number"),
    ("dropout", 2, "dropout=2.0, must be in [0, 1)"),
    ("value_weight", "nan", "value_weight='nan', expected a finite number"),
    ("horizon_days", -5, "horizon_days=-5.0, must be > 0"),
    ("use_text", 1, "use_text=1, expected true or false"),
    ("lr", "abc", "train config: lr='abc', expected a finite number"),
    ("epochs", -3, "train config: epochs=-3 (must be >= 0)"),
    ("lr", 0, "train config: lr=0.0 (must be > 0)"),
    ("device", "tpu", "device='tpu', expected auto, cpu, cuda, cuda:N or mps"),
    # no head left to train (value_weight and churn_weight default to 0)
    ("next_item_weight", 0, "next_item_weight, value_weight and churn_weight are all 0"),
    # ranges torch would refuse (beta2, num_threads) or the loop trip over (checkpoint_every, monitor) only
    # after the data are read, and ones that were taken silently
    ("beta2", 1.5, "train config: beta2=1.5 (must be in [0, 1))"),
    ("num_threads", -2, "num_threads=-2 (must be >= 0"),
    ("checkpoint_every", 0, "checkpoint_every=0 (must be >= 1)"),
    ("grad_clip", -1, "grad_clip=-1.0 (must be >= 0"),
    ("weight_decay", -1, "weight_decay=-1.0 (must be >= 0)"),
    ("warmup_steps", -5, "warmup_steps=-5 (must be >= 0)"),
    ("min_epochs", -3, "min_epochs=-3 (must be >= 0)"),
    ("max_seconds", -1, "max_seconds=-1.0 (must be >= 0"),
    ("monitor", "bogus", "train config: monitor='bogus', expected mrr or <metric>@<k>"),
    ("monitor", "ndcg@0", "monitor='ndcg@0'"),
    ("monitor", "loss@10", "monitor='loss@10'"),
])
def test_transformer_settings_are_checked(key, value, message):
    with pytest.raises(DataError) as e:
        _split_kwargs({key: value})
    assert message in str(e.value)


def test_whole_floats_become_ints_and_good_settings_pass():
    mc, tc = _split_kwargs({"max_len": 50.0, "d_model": 32, "n_heads": 2, "dropout": 0, "device": "cuda:1",
                            "cooc_weight": "auto", "lr": 1})
    assert mc.max_len == 50 and isinstance(mc.max_len, int) and isinstance(mc.dropout, float)
    assert tc.device == "cuda:1" and tc.lr == 1.0 and mc.cooc_weight == "auto"


def test_every_monitor_the_validation_computes_is_accepted():
    for monitor in ("ndcg@10", "hr@5", "recall@20", "mrr", "revenue@20"):
        assert _split_kwargs({"monitor": monitor})[1].monitor == monitor


def test_config_files_that_are_missing_or_not_json_are_named(cli_setup):
    tmp, store = cli_setup
    (tmp / "bad.json").write_text('{"d_model": 8,')
    for name, message in (("bad.json", "not a valid JSON file"), ("nofile.json", "cannot read the file (No such file")):
        r = runner.invoke(app, ["train", "--store", str(store), "--model", "transformer", "--out", str(tmp / "mj"),
                                "--config", str(tmp / name)])
        out = " ".join(r.output.split())
        assert r.exit_code == 2 and f"--config {tmp / name}: {message}" in out, r.output
        assert "Traceback" not in r.output and not (tmp / "mj").exists()
    (tmp / "good.json").write_text('{"d_model": 8, "epochs": 1, "progress": false}')
    from valuerec.commands.train import parse_config
    assert parse_config([str(tmp / "good.json"), "lr=0.01"]) == {"d_model": 8, "epochs": 1, "progress": False, "lr": 0.01}


def test_policy_and_lifecycle_settings_are_checked():
    with pytest.raises(DataError, match=r"policy 'value_aware': w='abc', expected a finite number"):
        make_policy("value_aware", w="abc")
    assert make_policy("value_aware", w=1).w == 1.0
    with pytest.raises(DataError, match=r"lifecycle config: churn_threshold='abc'"):
        LifecycleConfig.from_dict({"churn_threshold": "abc"})
    with pytest.raises(DataError, match=r"advocate_value_threshold=\[1\]"):
        LifecycleConfig.from_dict({"advocate_value_threshold": [1]})
    assert LifecycleConfig.from_dict({"advocate_value_threshold": None}).advocate_value_threshold is None


def test_train_command_names_bad_settings_dates_and_outputs(cli_setup):
    tmp, store = cli_setup
    base = ["train", "--store", str(store), "--model", "popularity"]
    r = runner.invoke(app, base + ["--out", str(tmp / "m"), "--config", "foo=1"])
    assert r.exit_code == 2 and "popularity: unknown setting(s) ['foo']" in r.output
    for model, setting, message in (("itemknn", "neighbours=0", "itemknn: neighbours must be >= 1 (got 0)"),
                                    ("tifuknn", "basket=week", "tifuknn: basket must be one of")):
        r = runner.invoke(app, ["train", "--store", str(store), "--model", model, "--out", str(tmp / "m"),
                                "--config", setting])
        assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output
        assert not (tmp / "m").exists()
    r = runner.invoke(app, base + ["--out", str(tmp / "m"), "--device", "cpu"])
    assert r.exit_code == 2 and "unknown setting(s) ['device']" in r.output and "--device is for" in r.output
    r = runner.invoke(app, base + ["--out", str(tmp / "m"), "--cutoff", "notadate", "--valid-cutoff", "2011-03-01"])
    assert r.exit_code == 2 and "--cutoff 'notadate': not a date" in r.output
    (tmp / "afile").write_text("x")
    r = runner.invoke(app, base + ["--out", str(tmp / "afile")])
    assert r.exit_code == 2 and "is a file" in r.output and (tmp / "afile").read_text() == "x"
    (tmp / "notes").mkdir()
    (tmp / "notes" / "keep.txt").write_text("mine")
    r = runner.invoke(app, base + ["--out", str(tmp / "notes")])
    assert r.exit_code == 2 and "not a model directory" in r.output and (tmp / "notes" / "keep.txt").exists()
    assert not any(p.name.startswith(".m.partial") or p.name.startswith(".notes.partial") for p in tmp.iterdir())


def test_train_over_an_earlier_model_replaces_it_whole(cli_setup):
    tmp, store = cli_setup
    out, ref = tmp / "m", tmp / "ref"
    for model, where in (("itemknn", out), ("popularity", ref)):
        r = runner.invoke(app, ["train", "--store", str(store), "--model", model, "--out", str(where)])
        assert r.exit_code == 0, r.output
    knn_only = {p.name for p in out.iterdir()} - {p.name for p in ref.iterdir()}
    assert knn_only   # item-kNN writes files a popularity model does not
    r = runner.invoke(app, ["train", "--store", str(store), "--model", "popularity", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "config.json").read_text())["model"] == "popularity"
    assert {p.name for p in out.iterdir()} == {p.name for p in ref.iterdir()}   # nothing of item-kNN's left
    assert not any(".partial" in p.name or ".old" in p.name for p in tmp.iterdir())


def test_recommend_value_and_retrain_name_bad_options(cli_setup):
    tmp, store = cli_setup
    r = runner.invoke(app, ["recommend", "--model", str(tmp / "pop"), "--store", str(store), "--user", "u1",
                            "--policy", "value_aware", "--policy-params", "notjson"])
    assert r.exit_code == 2 and "--policy-params 'notjson': not valid JSON" in r.output
    r = runner.invoke(app, ["recommend", "--model", str(tmp / "pop"), "--store", str(store), "--user", "u1",
                            "--policy", "value_aware", "--policy-params", '{"w": "abc"}'])
    assert r.exit_code == 2 and "w='abc', expected a finite number" in r.output
    r = runner.invoke(app, ["recommend", "--model", str(tmp / "pop"), "--store", str(store), "--user", "u1",
                            "--policy-params", '{"w": 5}'])            # plain takes no settings: not ignored
    assert r.exit_code == 2 and "policy 'plain': unknown parameter(s) ['w']" in r.output, r.output
    r = runner.invoke(app, ["value", "--model", str(tmp / "pop"), "--store", str(store), "--top", "0"])
    assert r.exit_code == 2 and "--top" in r.output
    r = runner.invoke(app, ["retrain", "--model", str(tmp / "pop"), "--store", str(store), "--out", str(tmp / "v"),
                            "--metric", "bogus"])
    assert r.exit_code == 2 and "metric 'bogus' is not measured" in r.output and not (tmp / "v").exists()
    r = runner.invoke(app, ["retrain", "--model", str(tmp / "pop"), "--store", str(store), "--out", str(tmp / "v"),
                            "--holdout-days", "-5"])
    assert r.exit_code == 2 and "holdout_days=-5.0, must be > 0" in r.output


def _add_events(store, rows):
    import pandas as pd

    from valuerec.data.store import EventStore
    ev = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "event_type", "value"])
    ev["quantity"] = 1.0
    with EventStore(store) as st:
        st.add_events(ev)


def test_histories_the_model_cannot_use_are_said_so(cli_setup):
    import pandas as pd
    tmp, store = cli_setup
    r = runner.invoke(app, ["train", "--store", str(store), "--model", "itemknn", "--out", str(tmp / "knn")])
    assert r.exit_code == 0, r.output
    t = pd.Timestamp("2011-07-01")
    _add_events(store, [("u9", "new1", t, "purchase", 3.0), ("u9", "new2", t, "purchase", 4.0)])
    r = runner.invoke(app, ["recommend", "--model", str(tmp / "knn"), "--store", str(store), "--user", "u9",
                            "--json", "-k", "3"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert "none of the user's events is an item the model knows" in res["note"]
    assert "most popular" in res["note"] and res["history_items_in_catalogue"] == 0
    scores = [it["score"] for it in res["items"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True) and scores[0] >= 4   # event counts
    r = runner.invoke(app, ["recommend", "--model", str(tmp / "knn"), "--store", str(store), "--user", "u1",
                            "--history-types", "nosuchtype"])
    assert r.exit_code == 2 and "no events of type(s) ['nosuchtype']" in r.output and "'purchase'" in r.output
    r = runner.invoke(app, ["explain", "--model", str(tmp / "knn"), "--store", str(store), "--user", "u9"])
    assert r.exit_code == 2 and "none of their 2 event(s) is an item in the model's catalogue" in r.output


def test_value_only_store_errors_say_what_to_do(tmp_path):
    import pandas as pd
    store = tmp_path / "pay.duckdb"
    t = pd.Timestamp("2011-01-01")
    _add_events(store, [(f"c{i}", None, t + pd.Timedelta(days=i), "interaction", 5.0) for i in range(5)])
    r = runner.invoke(app, ["train", "--store", str(store), "--model", "itemknn", "--out", str(tmp_path / "m"),
                            "--cutoff", "2011-01-05", "--valid-cutoff", "2011-01-03"])
    assert r.exit_code == 2 and "no events with an item_id" in r.output and not (tmp_path / "m").exists()
    from valuerec.commands.value import predict_population
    from valuerec.data.store import EventStore
    with EventStore(store, read_only=True) as st:
        events = st.events()
    with pytest.raises(DataError, match=r"events are of type\(s\) \['interaction'\].*--event-type purchase"):
        predict_population(None, events, pd.Timestamp("2011-02-01"))
    with pytest.raises(DataError, match=r"25 unknown user\(s\): \['x0', .*'x19'\] and 5 more"):
        predict_population(None, events, pd.Timestamp("2011-02-01"), [f"x{i}" for i in range(25)])


def test_lifecycle_since_after_at_names_dates(cli_setup):
    tmp, store = cli_setup
    r = runner.invoke(app, ["lifecycle", "--model", str(tmp / "pop"), "--store", str(store),
                            "--since", "2011-06-01", "--at", "2011-03-01"])
    out = " ".join(r.output.split())   # the console wraps long lines
    assert r.exit_code == 2 and "first date 2011-06-01" in out and "before the second 2011-03-01" in out


def test_report_names_a_missing_results_directory_and_negative_examples(cli_setup):
    tmp, store = cli_setup
    base = ["report", "--model", str(tmp / "pop"), "--store", str(store), "--out", str(tmp / "r.html")]
    r = runner.invoke(app, base + ["--results", str(tmp / "nosuch")])
    assert r.exit_code == 2 and "--results directory" in r.output and not (tmp / "r.html").exists()
    r = runner.invoke(app, base + ["--examples", "-3"])
    assert r.exit_code == 2 and "--examples" in r.output


@pytest.mark.parametrize("args, words", [
    (["--protocol", "bogus"], "--protocol 'bogus': expected one of auto, r1, loo, r2, cutoff"),
    (["--device", "cuda:7"], "--device cuda:7"),
    (["--stage-companions", "nope", "--purchase-stage"], "--stage-companions: unknown model(s) ['nope']"),
    (["--stage-companions", "transformer", "--purchase-stage"], "the transformer is the model itself"),
    (["--stage-companions", "als"], "add --purchase-stage"),
    (["--stage-value", "magic", "--purchase-stage"], "--stage-value 'magic': expected one of item, stage, mean"),
    (["--stage-bags", "0", "--purchase-stage"], "--stage-bags 0: expected a count of at least 1"),
    (["--stage-value", "stage"], "--stage-bags and --stage-value are for the purchase stage"),
])
def test_train_options_are_checked_before_the_data_is_read(tmp_path, args, words):
    """The store does not even exist: each option error comes first."""
    r = runner.invoke(app, ["train", "--store", str(tmp_path / "missing.duckdb"), "--model", "transformer",
                            "--out", str(tmp_path / "m"), *args])
    assert r.exit_code == 2 and words in " ".join(r.output.split()), r.output
    assert "no such store" not in r.output


def test_train_refuses_a_transformer_with_every_head_off(cli_setup):
    """next_item_weight=0 without a value or churn head trained nothing (loss 0.0000) and saved it."""
    tmp, store = cli_setup
    r = runner.invoke(app, ["train", "--store", str(store), "--model", "transformer", "--out", str(tmp / "m0"),
                            "--config", "next_item_weight=0", "--config", "d_model=8"])
    out = " ".join(r.output.split())
    assert r.exit_code == 2 and "next_item_weight, value_weight and churn_weight are all 0" in out, r.output
    assert "split" not in r.output and not (tmp / "m0").exists()
    assert _split_kwargs({"next_item_weight": 0, "churn_weight": 1})[0].churn_weight == 1.0   # one head is enough


def test_numpy_scalars_are_accepted_as_settings():
    """A grid built with numpy (np.arange, np.linspace) passes numpy scalars: the transformer refused
    them ('expected a whole number (got a int64)') where the baselines took them."""
    import numpy as np

    from valuerec.models import BehaviourTransformer

    m = BehaviourTransformer(d_model=np.int64(16), dropout=np.float32(0.25), use_text=np.bool_(False))
    cfg = m.model_config
    assert (cfg.d_model, cfg.use_text) == (16, False) and type(cfg.d_model) is int
    assert cfg.dropout == pytest.approx(0.25) and type(cfg.dropout) is float
    with pytest.raises(DataError, match="d_model"):
        BehaviourTransformer(d_model=np.float64(16.5))
