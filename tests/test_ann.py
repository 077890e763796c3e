"""Retrieval through a faiss index: the same top k as scoring the whole catalogue (exactly with a brute
force index, nearly always with HNSW), with the repeat term, the co-occurrence prior, exclusions and
empty histories."""

import numpy as np
import pytest
import torch

faiss = pytest.importorskip("faiss")

from valuerec.data.dataset import Catalogue, Sequences  # noqa: E402
from valuerec.models.transformer import BehaviourTransformer  # noqa: E402


def _data(n_users=150, n_items=300, seed=0):
    rng = np.random.default_rng(seed)
    items, times = [], []
    for _ in range(n_users):
        start, n = int(rng.integers(0, n_items)), int(rng.integers(3, 25))
        x = (start + rng.integers(0, 4, n).cumsum()) % n_items      # drifting walks with repeats
        items.append(x.astype(np.int64))
        times.append(np.sort(rng.integers(1.6e9, 1.61e9, n)).astype(np.int64))
    cat = Catalogue(item_ids=np.array([f"i{i}" for i in range(n_items)], dtype=object))
    return Sequences(items=items, times=times), cat


@pytest.fixture(scope="module")
def fitted():
    h, cat = _data()
    plain = BehaviourTransformer(seed=0, d_model=16, n_layers=1, max_len=20, epochs=3, use_text=False,
                                 progress=False).fit(h, cat)
    rich = BehaviourTransformer(seed=0, d_model=16, n_layers=1, max_len=20, epochs=3, use_text=False,
                                progress=False, repeat=True, cooc_weight=0.5, cooc_repeat_share=0.3).fit(h, cat)
    return h, plain, rich


def _same_top(a, b):
    return np.mean([set(x) == set(y) for x, y in zip(a, b)])


@pytest.mark.parametrize("which", ["plain", "rich"])
@pytest.mark.parametrize("exclude", ["history", None])
def test_exact_index_gives_the_full_rankings_top_k(fitted, which, exclude):
    h, plain, rich = fitted
    m = plain if which == "plain" else rich
    ref_i, ref_s = m.recommend(h, k=10, exclude=exclude)
    m.build_ann_index(exact=True)
    try:
        got_i, got_s = m.recommend(h, k=10, exclude=exclude)
    finally:
        m.ann_ = None
    assert _same_top(got_i, ref_i) == 1.0
    if which == "plain":     # no prior: the very same scores
        np.testing.assert_allclose(got_s, ref_s, rtol=1e-4, atol=1e-4)
    else:                    # with the prior: the same order, shifted by one constant per user
        shift = ref_s - got_s
        np.testing.assert_allclose(shift, shift[:, :1].repeat(10, axis=1), atol=1e-3)
    if exclude == "history":
        assert not any(np.isin(got_i[u], h.items[u]).any() for u in range(len(h)))


def test_hnsw_index_nearly_always_agrees_and_empty_histories_get_popularity(fitted):
    h, _, rich = fitted
    ref_i, _ = rich.recommend(h, k=10)
    rich.build_ann_index(m=16, ef_search=64)
    try:
        got_i, _ = rich.recommend(h, k=10)
        assert _same_top(got_i, ref_i) >= 0.95
        empty = Sequences(items=[np.zeros(0, np.int64)], times=[np.zeros(0, np.int64)])
        e_i, e_s = rich.recommend(empty, k=5, exclude=None)
        rich.ann_, saved = None, rich.ann_
        r_i, r_s = rich.recommend(empty, k=5, exclude=None)
        rich.ann_ = saved
        assert e_i.tolist() == r_i.tolist()
        np.testing.assert_allclose(e_s, r_s.astype(np.float32), rtol=1e-5)
    finally:
        rich.ann_ = None


def test_a_new_fit_drops_the_index():
    h, cat = _data(n_users=20, n_items=40)
    m = BehaviourTransformer(seed=0, d_model=8, n_layers=1, max_len=10, epochs=1, use_text=False, progress=False)
    m.fit(h, cat).build_ann_index(exact=True)
    assert m.ann_ is not None
    m.fit(h, cat)
    assert m.ann_ is None
    torch.testing.assert_close(torch.as_tensor(m.recommend(h, k=3)[0]), torch.as_tensor(m.recommend(h, k=3)[0]))


def test_the_index_is_kept_and_read_back_only_for_the_same_vectors(tmp_path, monkeypatch):
    h, cat = _data(n_users=30, n_items=60)
    m = BehaviourTransformer(seed=0, d_model=8, n_layers=1, max_len=10, epochs=1, use_text=False, progress=False)
    m.fit(h, cat)
    ref, _ = m.recommend(h, k=5)
    m.build_ann_index(m=8, cache=tmp_path / "idx")
    assert (tmp_path / "idx" / "index.faiss").exists() and (tmp_path / "idx" / "index.json").exists()
    built = []
    real = faiss.IndexHNSWFlat
    monkeypatch.setattr(faiss, "IndexHNSWFlat", lambda *a: built.append(a) or real(*a))
    m.build_ann_index(m=8, cache=tmp_path / "idx")               # same vectors and settings: read back
    assert built == [] and _same_top(m.recommend(h, k=5)[0], ref) >= 0.95
    m.build_ann_index(m=12, cache=tmp_path / "idx")              # other settings: built again
    assert len(built) == 1
    (tmp_path / "idx" / "index.faiss").write_bytes(b"not an index")
    m.build_ann_index(m=12, cache=tmp_path / "idx")              # damaged: built again
    assert len(built) == 2
    with torch.no_grad():                                         # other vectors: built again
        m.module_.encoder.item_table.id_emb.weight.add_(0.1)
    m.build_ann_index(m=12, cache=tmp_path / "idx")
    assert len(built) == 3


def test_train_ann_index_keeps_the_index_the_service_reads(tmp_path):
    from typer.testing import CliRunner

    from valuerec.cli import app
    from valuerec.demo import demo_data_path
    from valuerec.models import load_model
    out = tmp_path / "m"
    r = CliRunner().invoke(app, ["train", "--data", str(demo_data_path()), "--model", "transformer", "--epochs", "1",
                                 "--config", '{"d_model": 16, "n_layers": 1, "use_text": false}', "--ann-index",
                                 "--out", str(out), "--cache-dir", str(tmp_path / "stores")])
    assert r.exit_code == 0, r.output
    assert (out / "ann_index" / "index.faiss").exists()
    m = load_model(out)
    real, built = faiss.IndexHNSWFlat, []
    try:
        faiss.IndexHNSWFlat = lambda *a: built.append(a) or real(*a)
        m.build_ann_index(cache=out / "ann_index")       # what the service does at load: read, not build
    finally:
        faiss.IndexHNSWFlat = real
    assert built == [] and m.ann_ is not None
    r = CliRunner().invoke(app, ["train", "--data", str(demo_data_path()), "--model", "popularity", "--ann-index",
                                 "--out", str(tmp_path / "p"), "--cache-dir", str(tmp_path / "stores")])
    assert r.exit_code == 2 and "no item vectors to index" in r.output
