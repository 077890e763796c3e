"""Items never to recommend (postage, fees): every recommendation path leaves them out; scores and
evaluation still see them; the list lives in MODEL_DIR/never_recommend.txt."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from valuerec.cli import app
from valuerec.data.dataset import catalogue_from, sequences_from
from valuerec.data.schema import DataError
from valuerec.data.store import EventStore
from valuerec.models import load_model
from valuerec.models.base import NEVER_RECOMMEND, write_never_recommend
from valuerec.models.itemknn import ItemKNN
from valuerec.policies.rerank import apply_policy

sys.path.insert(0, str(Path(__file__).parent / "serving"))
from serving_support import API_KEYS, build_fixture, tiny_events  # noqa: E402

runner = CliRunner()


def _data():
    events, items = tiny_events()
    cat = catalogue_from(events, items)
    return events, items, cat, sequences_from(events, cat)


def test_blocked_items_leave_every_ranking_but_not_the_scores(tmp_path):
    events, items, cat, seqs = _data()
    model = ItemKNN(neighbours=20).fit(seqs, cat)
    users = seqs.subset(np.arange(12))
    top, _ = model.recommend(users, k=5)
    blocked = sorted({str(cat.item_ids[i]) for i in top[:, 0]})       # every user's favourite
    before = model.score(users).clone()
    assert model.set_never_recommend(blocked + ["POST"]) == ["POST"]   # unknown ids are kept and named
    assert set(cat.item_ids[model.blocked_items()]) == set(blocked)
    bidx = model.blocked_items()
    assert np.array_equal(model.score(users).numpy(), before.numpy())   # scores (evaluation) unchanged
    top, sc = model.recommend(users, k=5)
    assert not np.isin(top, bidx).any() and np.isfinite(sc).all()
    # the policies' candidates, even those built from the user's own past items
    for name in ("plain", "favourites_winback", "value_aware"):
        t, _ = apply_policy(name, model, users, k=5, as_of=None, exclude=None, item_value=np.ones(len(cat)))
        assert not np.isin(t, bidx).any(), name
    # a blocked item the user bought is not won back either
    own = int(users.items[0][0])
    model.set_never_recommend([str(cat.item_ids[own])])
    t, _ = apply_policy("favourites_winback", model, users.subset([0]), k=30, exclude=None)
    assert own not in t and (t >= 0).sum() > 0
    # save / load keeps the list; editing the file changes it; an empty list removes the file
    model.set_never_recommend(blocked)
    model.save(tmp_path / "m")
    assert load_model(tmp_path / "m").never_recommend_ == tuple(blocked)
    (tmp_path / "m" / NEVER_RECOMMEND).write_text("# a comment\n\n  i3  \ni4\ni3\n")
    assert load_model(tmp_path / "m").never_recommend_ == ("i3", "i4")
    model.set_never_recommend([])
    model.save(tmp_path / "m")
    assert not (tmp_path / "m" / NEVER_RECOMMEND).exists() and load_model(tmp_path / "m").never_recommend_ == ()
    (tmp_path / "m" / NEVER_RECOMMEND).write_bytes(b"\xff\xfei\x003\x00")
    with pytest.raises(DataError, match="never_recommend.txt: not UTF-8"):
        load_model(tmp_path / "m")


def test_an_item_index_leaves_blocked_items_out_too(tmp_path):
    pytest.importorskip("faiss")
    from valuerec.models.transformer import BehaviourTransformer

    events, items, cat, seqs = _data()
    model = BehaviourTransformer(seed=0, d_model=16, n_layers=1, max_len=10, epochs=2, use_text=False,
                                 progress=False).fit(seqs, cat)
    users = seqs.subset(np.arange(10))
    full, _ = model.recommend(users, k=5)
    model.build_ann_index()
    model.set_never_recommend([str(cat.item_ids[i]) for i in set(full[:, 0])])
    for ex in ("history", None):
        got, _ = model.recommend(users, k=5, exclude=ex)
        assert not np.isin(got, model.blocked_items()).any()
        model_plain = model.ann_
        model.ann_ = None
        want, _ = model.recommend(users, k=5, exclude=ex)
        model.ann_ = model_plain
        np.testing.assert_array_equal(got, want)


def test_train_and_recommend_cli_and_the_service(tmp_path):
    events, items = tiny_events()
    a, b = "i5", "i7"          # made the two most popular items: popularity recommends them first
    extra = pd.DataFrame([{"user_id": f"u{u}", "item_id": i, "timestamp": pd.Timestamp("2023-12-01") + pd.Timedelta(hours=u),
                           "event_type": "purchase", "value": 1.0, "quantity": 1.0} for u in range(30) for i in (a, b)])
    data = tmp_path / "events.csv"
    pd.concat([events.drop(columns=["event_id"]), extra]).to_csv(data, index=False)
    ids = tmp_path / "ids.txt"
    ids.write_text(f"# fees\n{b}\n")
    out = tmp_path / "pop"
    r = runner.invoke(app, ["train", "--data", str(data), "--model", "popularity", "--out", str(out), "--no-test",
                            "--cache-dir", str(tmp_path / "stores"), "--never-recommend", f"{a},@{ids},online-retail"])
    assert r.exit_code == 0, r.output
    saved = load_model(out).never_recommend_
    assert saved[:2] == (a, b) and "POST" in saved
    assert "not in it" in " ".join(r.output.split())      # POST and the rest are not in this catalogue
    store = next((tmp_path / "stores").glob("*.duckdb"))
    import json
    def recommend(user, k):
        r = runner.invoke(app, ["recommend", "--model", str(out), "--store", str(store), "--user", user, "--k", str(k),
                                "--json", "--fallback"])
        assert r.exit_code == 0, r.output
        return [i["item_id"] for i in json.loads(r.output)["items"]]
    # u46 buys from items 10-19 only: a and b are not in their history, so only the list keeps them out
    got = recommend("u46", 10)
    assert len(got) == 10 and not {a, b} & set(got)
    # an unknown user gets the store's most popular items, without the blocked ones
    got = recommend("nobody", 5)
    assert len(got) == 5 and not {a, b} & set(got)
    (out / NEVER_RECOMMEND).unlink()            # without the list they come first
    assert {a, b} <= set(recommend("nobody", 5)) and {a, b} <= set(recommend("u46", 10))
    bad = runner.invoke(app, ["train", "--data", str(data), "--model", "popularity", "--out", str(tmp_path / "p2"),
                              "--cache-dir", str(tmp_path / "stores"), "--never-recommend", "@nosuch.txt"])
    assert bad.exit_code == 2 and "--never-recommend @nosuch.txt: no such file" in bad.output

    # the service: new users' popular fallback, the model's ranking and a policy
    from fastapi.testclient import TestClient

    from valuerec.serving.app import create_app
    from valuerec.serving.settings import Settings

    fx = build_fixture(tmp_path / "svc")
    key = {"X-API-Key": "admin-key-7890"}
    settings = Settings.from_env({"VALUEREC_STORE": str(fx["store"]), "VALUEREC_MODEL_DIR": str(fx["models"] / "v1"),
                                  "VALUEREC_API_KEYS": API_KEYS})
    with TestClient(create_app(settings)) as c:
        first = {p: [i["item_id"] for i in c.get(f"/v1/users/{u}/recommendations?k=3{q}", headers=key).json()["items"]]
                 for p, u, q in (("new", "newcomer", ""), ("model", "u0", ""),
                                 ("policy", "u0", "&policy=favourites_winback"))}
        first["similar"] = [i["item_id"] for i in c.get("/v1/items/i1/similar?k=3", headers=key).json()["items"]]
    blocked = sorted({i for v in first.values() for i in v})
    write_never_recommend(fx["models"] / "v1", blocked)
    with TestClient(create_app(settings)) as c:
        assert c.get("/healthz").json()["model"]["never_recommended"] == len(blocked)
        for p, u, q in (("new", "newcomer", ""), ("model", "u0", ""), ("policy", "u0", "&policy=favourites_winback")):
            got = [i["item_id"] for i in c.get(f"/v1/users/{u}/recommendations?k=3{q}", headers=key).json()["items"]]
            assert got and not set(got) & set(blocked), (p, got, blocked)
        got = [i["item_id"] for i in c.get("/v1/items/i1/similar?k=3", headers=key).json()["items"]]
        assert len(got) == 3 and not set(got) & set(blocked)
