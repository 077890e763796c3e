"""User data with console-markup brackets is shown literally, and more options are checked up front."""

import json

import pandas as pd
from typer.testing import CliRunner

from valuerec.cli import app
from valuerec.data.store import EventStore

runner = CliRunner()


def test_ids_with_brackets_are_shown_literally(cli_setup):
    tmp, store = cli_setup
    r = runner.invoke(app, ["recommend", "--model", str(tmp / "pop"), "--store", str(store), "--user", "[/]"])
    assert r.exit_code == 2 and "user '[/]' has no events" in r.output
    r = runner.invoke(app, ["recommend", "--model", str(tmp / "pop"), "--store", str(store), "--user", "[bold]x"])
    assert r.exit_code == 2 and "'[bold]x'" in r.output
    ev = pd.DataFrame({"user_id": ["[b]vip"], "item_id": ["i0"], "timestamp": [pd.Timestamp("2011-07-01")],
                       "event_type": ["purchase"], "value": [4.0], "quantity": [1.0]})
    with EventStore(store) as st:
        st.add_events(ev)
    r = runner.invoke(app, ["recommend", "--model", str(tmp / "pop"), "--store", str(store), "--user", "[b]vip"])
    assert r.exit_code == 0, r.output
    assert "[b]vip" in r.output


def test_lifecycle_blames_the_right_json_and_dates_before_the_data(cli_setup):
    tmp, store = cli_setup
    bad = tmp / "badmodel"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    r = runner.invoke(app, ["lifecycle", "--model", str(bad), "--store", str(store)])
    assert r.exit_code != 0 and "--config is not valid JSON" not in r.output
    r = runner.invoke(app, ["lifecycle", "--model", str(tmp / "pop"), "--store", str(store), "--config", "{x"])
    assert r.exit_code == 2 and "--config is not valid JSON" in r.output
    r = runner.invoke(app, ["lifecycle", "--model", str(tmp / "pop"), "--store", str(store), "--at", "2005-01-01"])
    out = " ".join(r.output.split())
    assert r.exit_code == 2 and "no event is before it" in out and "2011-01-01" in out


def test_retrain_checks_out_tolerance_and_epochs_first(cli_setup_grown):
    tmp, store = cli_setup_grown
    (tmp / "afile").write_text("x")
    base = ["retrain", "--model", str(tmp / "pop"), "--store", str(store)]
    r = runner.invoke(app, base + ["--out", str(tmp / "afile")])
    assert r.exit_code == 2 and "is a file" in r.output
    for inside in (tmp / "pop", tmp / "pop" / "versions"):
        r = runner.invoke(app, base + ["--out", str(inside)])
        assert r.exit_code == 2 and "is the model directory" in " ".join(r.output.split()), r.output
    assert not (tmp / "pop" / "versions").exists() and not (tmp / "pop" / "v0001").exists()
    for opt, val, msg in (("--tolerance", "nan", "tolerance=nan"), ("--tolerance", "inf", "tolerance=inf"),
                          ("--epochs", "0", "epochs=0")):
        r = runner.invoke(app, base + ["--out", str(tmp / "v"), opt, val])
        assert r.exit_code == 2 and msg in r.output, (opt, val, r.output)
    r = runner.invoke(app, base + ["--out", str(tmp / "v"), "--holdout-days", "5000"])
    assert r.exit_code == 2 and "shorter --holdout-days" in " ".join(r.output.split())
    assert not (tmp / "v").exists()


def test_retrain_json_names_its_version(cli_setup_grown):
    tmp, store = cli_setup_grown
    r = runner.invoke(app, ["retrain", "--model", str(tmp / "pop"), "--store", str(store), "--out", str(tmp / "v"),
                            "--holdout-days", "60", "--tolerance", "1", "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["accepted"] and rep["version_dir"].endswith("v0001")
    saved = json.loads((tmp / "v" / "v0001" / "retrain.json").read_text())
    assert saved["version_dir"] == rep["version_dir"]


def test_a_store_of_other_items_is_said_so(cli_setup, tmp_path):
    tmp, store = cli_setup
    r = runner.invoke(app, ["train", "--store", str(store), "--model", "itemknn", "--out", str(tmp / "knn")])
    assert r.exit_code == 0, r.output
    other = tmp_path / "other.duckdb"
    t = pd.Timestamp("2011-03-01")
    ev = pd.DataFrame({"user_id": ["x1", "x1", "x2"], "item_id": ["zz1", "zz2", "zz1"],
                       "timestamp": [t, t + pd.Timedelta(days=3), t + pd.Timedelta(days=5)],
                       "event_type": ["purchase"] * 3, "value": [2.0, 3.0, 4.0], "quantity": [1.0] * 3})
    with EventStore(other) as st:
        st.add_events(ev)
    r = runner.invoke(app, ["recommend", "--model", str(tmp / "knn"), "--store", str(other), "--user", "x1", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["items"] == [] and "none of the store's items is in the model's catalogue" in res["note"]
    r = runner.invoke(app, ["lifecycle", "--model", str(tmp / "pop"), "--store", str(other), "--json"])
    assert r.exit_code == 0, r.output
    assert "none of the store's 2 items is in the model's catalogue of 3" in json.loads(r.stdout)["note"]
    r = runner.invoke(app, ["lifecycle", "--model", str(tmp / "pop"), "--store", str(store), "--json"])
    assert json.loads(r.stdout)["note"] is None


def test_explain_value_names_items_added_after_training(cli_setup):
    from valuerec.commands.explain import explain_user
    from valuerec.commands.lifecycle import load_context
    tmp, store = cli_setup
    t = pd.Timestamp("2011-07-25")
    ev = pd.DataFrame({"user_id": ["u1"], "item_id": ["brand_new"], "timestamp": [t], "event_type": ["purchase"],
                       "value": [9.0], "quantity": [1.0]})
    with EventStore(store) as st:
        st.add_events(ev)
    ctx = load_context(tmp / "pop", store, users=["u1"])
    stored = ctx.stored_items["u1"]
    assert len(stored) == len(ctx.histories.items[0]) == 11 and stored[-1] == "brand_new"
    assert ctx.histories.items[0][-1] == -1     # the model's catalogue does not hold it
    # the explanation lists it under its stored id, marked as outside the catalogue
    from valuerec.explain.influence import explain_events
    df = explain_events(ctx.histories, [0.0] * 11, ctx.catalogue, top=None, stored_item_ids=stored)
    row = df[df["position"] == 10].iloc[0]
    assert row["item_id"] == "brand_new" and not row["in_catalogue"]
    assert df[df["position"] == 0].iloc[0]["in_catalogue"]
    assert callable(explain_user)


def test_retrain_with_no_new_events_says_so(cli_setup):
    tmp, store = cli_setup    # the popularity model learned from every event of the store
    r = runner.invoke(app, ["retrain", "--model", str(tmp / "pop"), "--store", str(store), "--out", str(tmp / "v")])
    assert r.exit_code == 0, r.output
    assert "nothing new" in r.output and "nothing was trained or written" in " ".join(r.output.split())
    assert not (tmp / "v").exists()
    r = runner.invoke(app, ["retrain", "--model", str(tmp / "pop"), "--store", str(store), "--out", str(tmp / "v"),
                            "--json"])
    rep = json.loads(r.stdout)
    assert not rep["accepted"] and rep["notes"][0].startswith("nothing new")


def test_a_data_file_given_as_the_store_is_refused_untouched(tmp_path):
    """DuckDB opens e.g. a CSV file as an empty in-memory database: the ingest used to report success,
    write nothing, and every later command failed. Now the store path is checked first."""
    import hashlib

    ev = tmp_path / "ev.csv"
    ev.write_text("user_id,item_id,timestamp\nA,X,2023-01-01\n")
    victim = tmp_path / "victim.csv"
    victim.write_bytes(ev.read_bytes())
    before = hashlib.sha256(victim.read_bytes()).hexdigest()
    r = runner.invoke(app, ["ingest", str(ev), "--store", str(victim)])
    assert r.exit_code == 2 and "not a DuckDB store (a CSV file" in r.output
    assert hashlib.sha256(victim.read_bytes()).hexdigest() == before
    r = runner.invoke(app, ["store-info", str(victim)])
    assert r.exit_code == 2 and "not a DuckDB store" in r.output
    # a real store still opens (new, then existing)
    assert runner.invoke(app, ["ingest", str(ev), "--store", str(tmp_path / "s.duckdb")]).exit_code == 0
    assert runner.invoke(app, ["ingest", str(ev), "--store", str(tmp_path / "s.duckdb")]).exit_code == 0


def test_ingest_missing_inputs_and_unusable_store_folder_are_errors(tmp_path):
    ev = tmp_path / "ev.csv"
    ev.write_text("user_id,item_id,timestamp\nA,X,2023-01-01\n")
    r = runner.invoke(app, ["ingest", str(tmp_path / "nope.csv"), "--store", str(tmp_path / "n.duckdb")])
    assert r.exit_code == 2 and "nope.csv: no such file" in r.output and not (tmp_path / "n.duckdb").exists()
    r = runner.invoke(app, ["ingest", str(ev), "--store", str(tmp_path / "k.duckdb"), "--pseudonymise",
                            "--pseudonymise-key-file", str(tmp_path / "nokey.txt")])
    assert r.exit_code == 2 and "cannot read it" in r.output
    (tmp_path / "afile").touch()
    r = runner.invoke(app, ["ingest", str(ev), "--store", str(tmp_path / "afile" / "x.duckdb")])
    assert r.exit_code == 2 and "cannot create the store's folder" in r.output


def test_train_item_value_horizon_must_be_positive_days(cli_setup):
    tmp, store = cli_setup
    for bad in ("nan", "0", "-3"):
        r = runner.invoke(app, ["train", "--store", str(store), "--model", "popularity", "--out", str(tmp / "m9"),
                                "--item-value-horizon", bad])
        assert r.exit_code == 2 and "must be a number of days > 0" in r.output, r.output
    assert not (tmp / "m9").exists()


def test_train_checks_the_transformers_settings_before_reading_data(cli_setup):
    """A setting only the model's own config can judge (d_model not divisible by n_heads) is refused
    before the split is built and logged."""
    tmp, store = cli_setup
    r = runner.invoke(app, ["train", "--store", str(store), "--model", "transformer", "--out", str(tmp / "mx"),
                            "--config", '{"d_model": 15, "n_heads": 2}'])
    assert r.exit_code == 2 and "d_model=15 is not divisible by n_heads=2" in r.output
    assert "split" not in r.output and not (tmp / "mx").exists()
    r = runner.invoke(app, ["train", "--store", str(store), "--model", "popularity", "--out", str(tmp / "mx"),
                            "--epochs", "0"])
    assert r.exit_code == 2 and "--epochs" in r.output and not (tmp / "mx").exists()   # trained nothing, saved it


def test_train_refuses_zero_epochs_given_through_config(cli_setup):
    """``--epochs 0`` was refused while ``--config epochs=0`` saved an untrained model as if trained."""
    tmp, store = cli_setup
    for cfg in ("epochs=0", '{"epochs": 0}'):
        r = runner.invoke(app, ["train", "--store", str(store), "--model", "transformer", "--out", str(tmp / "m0"),
                                "--config", cfg, "--config", "d_model=8"])
        assert r.exit_code == 2 and "epochs=0: train needs at least 1 epoch" in " ".join(r.output.split()), r.output
    assert not (tmp / "m0").exists()


def test_train_data_with_other_column_names_points_at_ingest(tmp_path):
    """``train --data`` has no column options, so its error must not tell the user to pass them."""
    f = tmp_path / "events.csv"
    pd.DataFrame({"customer": ["a", "b"], "sku": ["x", "y"], "ts": ["2020-01-01", "2020-01-02"]}).to_csv(f, index=False)
    r = runner.invoke(app, ["train", "--data", str(f), "--model", "popularity", "--out", str(tmp_path / "m"),
                            "--cache-dir", str(tmp_path / "cache")])
    out = " ".join(r.output.split())
    assert r.exit_code == 2 and "missing column(s)" in out, r.output
    assert "Map columns with" not in out and "valuerec ingest FILE --store DB --user-col" in out
    assert not (tmp_path / "m").exists()


def test_lifecycle_and_report_fall_back_for_a_transformer_without_value_heads(cli_setup):
    """A plain transformer (value_weight 0, the default) has ``predict_value`` but no heads to answer
    it: lifecycle and report treat it as a recommender without a value model, as they do popularity,
    instead of failing with "this transformer has no value head"."""
    tmp, store = cli_setup
    r = runner.invoke(app, ["train", "--store", str(store), "--model", "transformer", "--out", str(tmp / "tx"),
                            "--epochs", "1", "--threads", "1", "--device", "cpu",
                            "--config", '{"d_model": 8, "n_layers": 1, "max_len": 10, "use_text": false}'])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["lifecycle", "--model", str(tmp / "tx"), "--store", str(store), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["value_model"] is None and {u["user_id"] for u in res["users"]} == {"u1", "u2", "u3"}
    r = runner.invoke(app, ["lifecycle", "--model", str(tmp / "tx"), "--store", str(store)])
    assert r.exit_code == 0 and "no value model: at-risk and expanding are not assigned" in r.output, r.output
    r = runner.invoke(app, ["lifecycle", "--model", str(tmp / "pop"), "--store", str(store),
                            "--value-model", str(tmp / "tx")])
    assert r.exit_code == 2 and "not a value model" in r.output and "value_weight=0" in " ".join(r.output.split())
    r = runner.invoke(app, ["report", "--model", str(tmp / "tx"), "--store", str(store), "--out", str(tmp / "r.html")])
    assert r.exit_code == 0, r.output
    assert "has no value head" in (tmp / "r.html").read_text()


def test_retrain_rejection_says_why_under_a_negative_tolerance(cli_setup_grown):
    """A negative tolerance asks the candidate to beat the current model by that much; a rejected
    candidate that is better must not be called "worse"."""
    tmp, store = cli_setup_grown
    r = runner.invoke(app, ["retrain", "--model", str(tmp / "pop"), "--store", str(store), "--out", str(tmp / "v"),
                            "--holdout-days", "60", "--tolerance", "-1000"])
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    cur = float(out.split("current ndcg@20 = ")[1].split()[0])
    cand = float(out.split("candidate ndcg@20 = ")[1].split()[0])
    assert "rejected" in out and not (tmp / "v" / "v0001").exists()
    if cand >= cur:
        assert "does not beat the current model by 1000 (--tolerance -1000)" in out and "is worse" not in out
    else:
        assert "the candidate is worse; nothing written" in out


def test_train_that_diverges_saves_nothing(cli_setup):
    """--config lr=1e9 saved a model trained to NaN and a metrics.json with a bare NaN in it."""
    tmp, store = cli_setup
    r = runner.invoke(app, ["train", "--store", str(store), "--model", "transformer", "--out", str(tmp / "mn"),
                            "--config", '{"d_model": 8, "epochs": 4, "lr": 1e9, "grad_clip": 0, "warmup_steps": 0, '
                                        '"progress": false}'])
    out = " ".join(r.output.split())
    assert r.exit_code == 2 and "training diverged: the training loss is nan in epoch" in out, r.output
    assert "lower lr" in out and "Traceback" not in r.output
    assert not (tmp / "mn").exists() and not any(".partial" in p.name for p in tmp.iterdir())
