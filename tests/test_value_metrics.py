"""Value and churn metrics against hand-computed cases, and the ZILN loss against a direct NLL."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from valuerec.data.schema import DataError
from valuerec.evaluation import value_metrics as vm
from valuerec.models.ziln import ZILNHead, ziln_loss, ziln_predict, ziln_quantile

Y = np.array([0.0, 10.0, 0.0, 50.0, 5.0, 100.0, 0.0, 20.0, 1.0, 3.0])


def test_gini_perfect_and_reversed_ordering():
    assert vm.normalized_gini(Y, Y) == pytest.approx(1.0)
    assert vm.normalized_gini(Y, Y * 3 + 7) == pytest.approx(1.0)  # any monotone map
    assert vm.normalized_gini(Y, -Y) == pytest.approx(-1.0)


def test_gini_hand_computed():
    # y = [4, 0, 0, 0] ranked by pred [1, 2, 3, 4] (the buyer last):
    # gain curve 0, 0, 0, 0, 1 -> trapezoid area = (0 + 0 + 0 + 0.5) / 4 = 0.125, Gini = -0.75.
    # Perfect: 0, 1, 1, 1, 1 -> area = (0.5 + 1 + 1 + 1) / 4 = 0.875, Gini = 0.75.
    y, p = np.array([4.0, 0, 0, 0]), np.array([1.0, 2, 3, 4])
    assert vm.gini(y, p) == pytest.approx(-0.75)
    assert vm.gini(y, y) == pytest.approx(0.75)
    assert vm.normalized_gini(y, p) == pytest.approx(-1.0)
    # Buyer second of four: curve 0, 0, 1, 1, 1 -> area (0 + .5 + 1 + 1)/4 = .625 -> Gini .25 -> normalised 1/3.
    assert vm.normalized_gini(y, np.array([3.0, 4, 2, 1])) == pytest.approx(1 / 3)


def test_gini_ties_are_order_free():
    # A constant prediction carries no information: Gini exactly 0 whatever the row order.
    assert vm.normalized_gini(Y, np.ones_like(Y)) == pytest.approx(0.0)
    assert vm.normalized_gini(Y[::-1], np.ones_like(Y)) == pytest.approx(0.0)


def test_decile_mape_constructed():
    # 20 customers, 10 groups of 2. Actual group means 1..10; predictions = 2 x actual in the top five
    # groups (error 100%) and exact in the rest -> MAPE = 0.5.
    actual = np.repeat(np.arange(10, 0, -1, dtype=float), 2)
    pred = actual.copy()
    pred[:10] *= 2
    mape, skipped = vm.decile_mape(actual, pred)
    assert skipped == 0
    assert mape == pytest.approx(0.5)
    table = vm.decile_table(actual, pred)
    assert [r["mean_actual"] for r in table] == list(np.arange(10, 0, -1, dtype=float))
    assert table[0]["mean_predicted"] == 20.0


def test_decile_mape_skips_zero_groups():
    actual = np.r_[np.ones(10), np.zeros(10)]
    pred = np.r_[np.ones(10) * 1.5, np.zeros(10)]
    mape, skipped = vm.decile_mape(actual, pred)
    assert skipped == 5 and mape == pytest.approx(0.5)


def test_auc_pr_auc_brier_hand_computed():
    y = np.array([1, 0, 1, 0])
    s = np.array([0.9, 0.8, 0.3, 0.1])
    # Pairs (pos, neg): (0.9,0.8) ok, (0.9,0.1) ok, (0.3,0.8) wrong, (0.3,0.1) ok -> 3/4.
    assert vm.roc_auc(y, s) == pytest.approx(0.75)
    # Positives at ranks 1 and 3: precision 1 and 2/3 -> AP = (1 + 2/3) / 2.
    assert vm.pr_auc(y, s) == pytest.approx((1 + 2 / 3) / 2)
    assert vm.brier(y, s) == pytest.approx(np.mean((s - y) ** 2))
    assert vm.roc_auc(y, np.full(4, 0.5)) == pytest.approx(0.5)  # ties count one half


def test_metrics_match_scipy_and_sklearn():
    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.4).astype(float)
    s = np.round(rng.random(300) + 0.3 * y, 2)  # with ties
    sk = pytest.importorskip("sklearn.metrics")
    assert vm.roc_auc(y, s) == pytest.approx(sk.roc_auc_score(y, s))
    assert vm.pr_auc(y, s) == pytest.approx(sk.average_precision_score(y, s))
    v = rng.lognormal(size=300) * y
    assert vm.spearman(v, s) == pytest.approx(stats.spearmanr(v, s).statistic)


def test_bad_inputs_are_errors_not_nans():
    with pytest.raises(DataError, match="non-finite"):
        vm.normalized_gini(Y, np.r_[Y[:-1], np.nan])
    with pytest.raises(DataError, match="predictions for"):
        vm.normalized_gini(Y, Y[:-1])
    with pytest.raises(DataError, match="sum to zero"):
        vm.normalized_gini(np.zeros(5), np.arange(5.0))
    with pytest.raises(DataError, match="both classes"):
        vm.roc_auc(np.ones(4), np.arange(4.0))
    assert vm.spearman(Y, np.ones_like(Y)) == 0.0


def test_value_metrics_bias_and_errors():
    m = vm.value_metrics(Y, Y * 1.1)
    assert m["bias"] == pytest.approx(0.1)
    assert m["mae"] == pytest.approx(np.mean(Y) * 0.1)
    assert m["gini"] == pytest.approx(1.0)


# -- ZILN -----------------------------------------------------------------------------------------
def _numpy_ziln_nll(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    p = 1 / (1 + np.exp(-logits[:, 0]))
    mu = logits[:, 1]
    sigma = np.log1p(np.exp(logits[:, 2])) + 1e-3
    dens = stats.lognorm.pdf(np.where(y > 0, y, 1.0), s=sigma, scale=np.exp(mu))
    return np.where(y > 0, -np.log(p) - np.log(dens), -np.log(1 - p))


def test_ziln_loss_is_the_exact_negative_log_likelihood():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(64, 3))
    y = np.where(rng.random(64) < 0.5, 0.0, rng.lognormal(2, 1, 64))
    expected = _numpy_ziln_nll(logits, y)
    got = ziln_loss(torch.tensor(logits), torch.tensor(y), reduction="none").numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)
    assert float(ziln_loss(torch.tensor(logits), torch.tensor(y))) == pytest.approx(expected.mean())
    mask = torch.tensor(rng.random(64) < 0.5)
    assert float(ziln_loss(torch.tensor(logits), torch.tensor(y), mask=mask)) == pytest.approx(expected[mask.numpy()].mean())


def test_ziln_predict_mean_and_quantiles():
    logits = np.array([[0.0, 1.0, math.log(math.expm1(0.5 - 1e-3))]])  # p = .5, mu = 1, sigma = .5
    out = ziln_predict(logits, (0.1, 0.9))
    assert out["p_buy"][0] == pytest.approx(0.5)
    assert out["expected_value"][0] == pytest.approx(0.5 * math.exp(1 + 0.125))
    assert out["lower"][0] == 0.0  # 10% quantile falls in the zero mass
    # 90% quantile of the mixture = lognormal's 80% quantile.
    assert out["upper"][0] == pytest.approx(math.exp(1 + 0.5 * stats.norm.ppf(0.8)))
    # Monte Carlo check of the quantile function.
    rng = np.random.default_rng(0)
    draws = np.where(rng.random(200_000) < 0.5, 0.0, rng.lognormal(1, 0.5, 200_000))
    assert ziln_quantile(0.5, 1.0, 0.5, 0.9) == pytest.approx(np.quantile(draws, 0.9), rel=0.02)


def test_ziln_head_learns_a_zero_inflated_target():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    y = np.where(rng.random(2000) < 0.3, rng.lognormal(3.0, 0.7, 2000), 0.0)
    head = ZILNHead(1)
    head.init_from_targets(y)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    x, yt = torch.ones(2000, 1), torch.tensor(y, dtype=torch.float32)
    for _ in range(200):
        loss = ziln_loss(head(x), yt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = ziln_predict(head(x[:1]))
    assert out["p_buy"][0] == pytest.approx(0.3, abs=0.03)
    assert out["expected_value"][0] == pytest.approx(y.mean(), rel=0.15)
