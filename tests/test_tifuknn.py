"""TIFU-KNN (models/tifuknn.py): the paper's vectors computed by hand, and the neighbour term."""

import numpy as np
import pytest
import torch

from valuerec.data.dataset import Catalogue, Sequences
from valuerec.models.tifuknn import TIFUKNN, basket_index, user_vectors

DAY = 86400


def cat(n):
    return Catalogue(item_ids=np.array([f"i{j}" for j in range(n)], dtype=object))


def test_baskets_by_time_day_and_event():
    t = np.array([0, 0, 10, DAY + 5, DAY + 5, 3 * DAY])
    assert basket_index(t, 6, "time").tolist() == [0, 0, 1, 2, 2, 3]
    assert basket_index(t, 6, "day").tolist() == [0, 0, 0, 1, 1, 2]
    assert basket_index(t, 6, "event").tolist() == [0, 1, 2, 3, 4, 5]
    assert basket_index(None, 3, "time").tolist() == [0, 1, 2]      # no times: one basket per event


def test_user_vector_matches_the_papers_formula():
    # Baskets, oldest first: {0, 1}, {1}, {2}, {1, 1 (same basket: counts once), 3}.
    items = np.array([0, 1, 1, 2, 1, 1, 3])
    times = np.array([0, 0, DAY, 2 * DAY, 3 * DAY, 3 * DAY, 3 * DAY])
    seqs = Sequences(items=[items], times=[times])
    rb, rg, m = 0.5, 0.25, 2
    v = user_vectors(seqs, 5, "day", group_size=m, within_decay=rb, group_decay=rg).toarray()[0]
    # Groups from the most recent basket back: g0 = {basket 3 (weight 1), basket 2 (rb)}, g1 = {1, 0}.
    g0 = np.zeros(5)
    g0[[1, 3]] += 1.0
    g0[2] += rb
    g1 = np.zeros(5)
    g1[1] += 1.0
    g1[[0, 1]] += rb
    expected = (g0 / 2 + rg * g1 / 2) / 2
    assert np.allclose(v, expected, atol=1e-7)
    # A short oldest group is averaged over its own size: three baskets, groups of two.
    s3 = Sequences(items=[np.array([0, 1, 2])], times=[np.array([0, DAY, 2 * DAY])])
    v3 = user_vectors(s3, 3, "day", group_size=2, within_decay=rb, group_decay=rg).toarray()[0]
    assert np.allclose(v3, [(rg * 1.0 / 1) / 2, (rb / 2) / 2, (1.0 / 2) / 2])


def test_own_term_ranks_by_decayed_frequency_then_popularity():
    train = Sequences(items=[np.array([4, 4, 5]), np.array([4, 6])], user_ids=np.array(["a", "b"], dtype=object))
    m = TIFUKNN(alpha=1.0, basket="event", group_size=10, within_decay=0.5, group_decay=1.0).fit(train, cat(8))
    h = Sequences(items=[np.array([2, 3])])                  # 3 is the most recent: it weighs more
    top, _ = m.recommend(h, k=4, exclude=None)
    assert top[0].tolist() == [3, 2, 4, 5] or top[0].tolist() == [3, 2, 4, 6]
    assert top[0][2] == 4                                     # then the most popular item


def test_neighbour_term_uses_the_most_similar_other_user():
    train = Sequences(items=[np.array([0, 1, 2]), np.array([0, 1, 3]), np.array([5, 6, 7])],
                      user_ids=np.array(["a", "b", "c"], dtype=object))
    m = TIFUKNN(neighbours=1, alpha=0.0, basket="event").fit(train, cat(8))
    # User "a" scored with their own history: their nearest *other* user is b (not themselves).
    s = m.score(train.subset([0]))[0]
    assert int(torch.argmax(s)) in (0, 1, 3) and s[3] > s[2] and s[3] > 0
    assert s[2] < 1e-9                                        # only a bought 2; a is not their own neighbour
    # Without an id the same history matches a itself, whose items then score.
    anon = Sequences(items=[np.array([0, 1, 2])])
    assert m.score(anon)[0][2] > 1e-6
    # A history like nobody's gets no neighbour term: popularity order only.
    odd = m.score(Sequences(items=[np.array([4])]))[0]
    assert odd.max() < 1e-9


def test_save_load_keeps_the_self_exclusion(tmp_path):
    from valuerec.models.base import load_model
    train = Sequences(items=[np.array([0, 1, 2]), np.array([0, 1, 3])], user_ids=np.array(["a", "b"], dtype=object))
    m = TIFUKNN(neighbours=1, alpha=0.3, basket="event").fit(train, cat(5))
    m.save(tmp_path / "t")
    loaded = load_model(tmp_path / "t")
    assert torch.equal(m.score(train), loaded.score(train))


@pytest.mark.parametrize("kw, msg", [({"neighbours": 0}, "neighbours"), ({"alpha": 1.5}, "alpha"),
                                     ({"group_size": 0}, "group_size"), ({"within_decay": 0.0}, "within_decay"),
                                     ({"group_decay": 1.2}, "group_decay"), ({"basket": "week"}, "basket")])
def test_bad_settings_are_refused(kw, msg):
    with pytest.raises(ValueError, match=msg):
        TIFUKNN(**kw)
