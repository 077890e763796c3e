"""A missing or damaged model directory is a one-line DataError naming it and what is wrong, in the
library (``load_model``, ``ValueModel.load``) and in the commands that load a model (exit 2)."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from typer.testing import CliRunner

from valuerec.cli import app
from valuerec.data.dataset import catalogue_from, sequences_from
from valuerec.data.schema import DataError
from valuerec.data.store import EventStore
from valuerec.models import load_model
from valuerec.models.itemknn import ItemKNN
from valuerec.models.transformer import BehaviourTransformer
from valuerec.models.value_baselines import ZILNMLP, load_value_model

TINY = dict(d_model=16, n_layers=1, n_heads=2, max_len=8, dropout=0.0, epochs=1, batch_size=16,
            progress=False, warmup_steps=0)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Tiny popularity, itemknn, transformer and ZILN value models saved from one small store."""
    root = tmp_path_factory.mktemp("models")
    t = pd.Timestamp("2011-01-01")
    rows = [(f"u{u}", f"i{(u + d) % 5}", t + pd.Timedelta(days=d * 10 + u), "purchase", 5.0 + d)
            for u in range(6) for d in range(8)]
    ev = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "event_type", "value"])
    ev["quantity"] = 1.0
    with EventStore(root / "s.duckdb") as st:
        st.add_events(ev)
        events = st.events()
    cat = catalogue_from(events, None)
    seqs = sequences_from(events, cat)
    from valuerec.models.popularity import Popularity
    Popularity().fit(seqs, cat).save(root / "popularity")
    ItemKNN().fit(seqs, cat).save(root / "itemknn")
    BehaviourTransformer(seed=0, **TINY).fit(seqs, cat).save(root / "transformer")
    cutoff = int((t + pd.Timedelta(days=90)).timestamp())
    ZILNMLP(hidden=4, epochs=1).fit_value(seqs, cutoff, 30).save(root / "ziln")
    return root


def copy(saved, name, tmp_path):
    return shutil.copytree(saved / name, tmp_path / name)


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def edit_config(d, fn):
    meta = json.loads((d / "config.json").read_text())
    fn(meta)
    (d / "config.json").write_text(json.dumps(meta))


LOADERS = {"popularity": load_model, "itemknn": load_model, "transformer": load_model, "ziln": load_value_model}
WEIGHTS = {"popularity": "counts.npy", "itemknn": "sim_data.npy", "transformer": "model.safetensors",
           "ziln": "model.safetensors"}


@pytest.mark.parametrize("name", list(LOADERS))
def test_intact_directories_load(saved, name):
    assert LOADERS[name](saved / name) is not None


@pytest.mark.parametrize("name", list(LOADERS))
@pytest.mark.parametrize("damage, expect", [
    (lambda d: (d / "config.json").write_text('{"model": "popul'), "config.json is not valid JSON"),
    (lambda d: (d / "config.json").write_text(""), "config.json is not valid JSON"),
    (lambda d: (d / "config.json").write_text("[1, 2]"), "config.json holds a JSON list"),
    (lambda d: edit_config(d, lambda m: m.update(model="nosuch")), "unknown (value )?model 'nosuch' \\(known: "),
    (lambda d: edit_config(d, lambda m: m.pop("model")), "unknown (value )?model None"),
    (lambda d: edit_config(d, lambda m: m["config"].update(nosuch_setting=1)), "config.json.s settings do not fit model"),
])
def test_damaged_config(saved, tmp_path, name, damage, expect):
    d = copy(saved, name, tmp_path)
    damage(d)
    with pytest.raises(DataError, match=f"^{d}: model directory is damaged: {expect}") as e:
        LOADERS[name](d)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", list(LOADERS))
def test_missing_weights_file(saved, tmp_path, name):
    d = copy(saved, name, tmp_path)
    (d / WEIGHTS[name]).unlink()
    with pytest.raises(DataError, match=f"^{d}: model directory is damaged: missing file {WEIGHTS[name]} "):
        LOADERS[name](d)


@pytest.mark.parametrize("name", list(LOADERS))
def test_truncated_weights_file(saved, tmp_path, name):
    d = copy(saved, name, tmp_path)
    truncate(d / WEIGHTS[name])
    with pytest.raises(DataError, match=f"^{d}: model directory is damaged: cannot read {WEIGHTS[name]} \\("):
        LOADERS[name](d)


@pytest.mark.parametrize("name", ["popularity", "itemknn", "transformer"])
@pytest.mark.parametrize("damage, expect", [
    (lambda d: (d / "items.parquet").unlink(), "missing file items.parquet"),
    (lambda d: truncate(d / "items.parquet"), "cannot read items.parquet"),
])
def test_damaged_catalogue(saved, tmp_path, name, damage, expect):
    d = copy(saved, name, tmp_path)
    damage(d)
    with pytest.raises(DataError, match=f"^{d}: model directory is damaged: {expect} \\("):
        load_model(d)


def test_other_damage(saved, tmp_path):
    d = copy(saved, "itemknn", tmp_path)
    (d / "state.json").unlink()
    with pytest.raises(DataError, match="damaged: missing file state.json"):
        load_model(d)
    d = copy(saved, "transformer", tmp_path)
    edit_config(d, lambda m: m.update(model="itemknn"))
    with pytest.raises(DataError, match="damaged: config.json's settings do not fit model 'itemknn'"):
        load_model(d)
    for key in ("d_model", "n_items"):
        d = copy(saved, "transformer", tmp_path / key)
        edit_config(d, lambda m: m["config"].update({key: m["config"][key] * 2}))
        with pytest.raises(DataError, match="damaged: weights do not match config.json \\(RuntimeError: .*size mismatch"):
            load_model(d)
    with pytest.raises(DataError, match="holds the value model 'ziln_mlp'; load it with"):
        load_model(saved / "ziln")


@pytest.mark.parametrize("loader", [load_model, load_value_model])
def test_not_a_model_directory(tmp_path, loader):
    with pytest.raises(DataError, match=f"^{tmp_path / 'nonexist'}: not a model directory \\(no config.json\\)$"):
        loader(tmp_path / "nonexist")


@pytest.mark.parametrize("argv", [
    ["recommend", "--user", "u0", "--model", "{m}", "--store", "{s}"],
    ["lifecycle", "--model", "{m}", "--store", "{s}"],
    ["value", "--model", "{m}", "--store", "{s}"],
    ["explain", "--user", "u0", "--model", "{m}", "--store", "{s}"],
    ["report", "--model", "{m}", "--store", "{s}", "--out", "{o}.html"],
    ["serve", "--model", "{m}", "--store", "{s}", "--no-auth"],
    ["retrain", "--model", "{m}", "--store", "{s}", "--out", "{o}"],
])
def test_commands_answer_damage_with_one_line(saved, tmp_path, argv):
    d = copy(saved, "transformer", tmp_path)
    (d / "model.safetensors").unlink()
    args = [a.format(m=d, s=saved / "s.duckdb", o=tmp_path / "out") for a in argv]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2, r.output
    assert "modeldirectoryisdamaged:missingfilemodel.safetensors" in "".join(r.output.split())  # rich wraps lines
    assert "Traceback" not in r.output
