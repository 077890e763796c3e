"""BG/NBD x Gamma-Gamma: parameter recovery from simulated customers (PyMC-Marketing MAP fit), and
the closed-form predictions against Monte Carlo and PyMC-Marketing's own formulas."""

import numpy as np
import pytest

from valuerec.models.value_baselines import (bgnbd_expected_purchases, bgnbd_p_no_purchase, fit_bgnbd,
                                             fit_gamma_gamma, gg_expected_spend)

TRUE_BG = {"r": 0.5, "alpha": 5.0, "a": 1.5, "b": 4.0}
TRUE_GG = {"p": 6.0, "q": 4.0, "v": 15.0}


def simulate_bgnbd(n: int, T: np.ndarray, r, alpha, a, b, rng) -> tuple[np.ndarray, np.ndarray]:
    """Customers from the BG/NBD story: first purchase at 0, Poisson(lambda) purchases, after each
    repeat purchase drop out with probability p. Returns frequency (repeats) and recency."""
    lam = rng.gamma(r, 1.0 / alpha, n)
    p = rng.beta(a, b, n)
    x, tx = np.zeros(n), np.zeros(n)
    clock, alive = np.zeros(n), np.ones(n, dtype=bool)
    while alive.any():
        clock = clock + rng.exponential(1.0, n) / lam
        buy = alive & (clock <= T)
        x += buy
        tx = np.where(buy, clock, tx)
        alive = buy & (rng.random(n) >= p)
    return x, tx


def simulate_gamma_gamma(x: np.ndarray, p, q, v, rng) -> np.ndarray:
    nu = rng.gamma(q, 1.0 / v, len(x))
    total = rng.gamma(np.maximum(x * p, 1e-12), 1.0 / nu)
    return np.where(x > 0, total / np.maximum(x, 1), 0.0)


@pytest.fixture(scope="module")
def simulated():
    rng = np.random.default_rng(42)
    n = 4000
    T = rng.uniform(30, 60, n)
    x, tx = simulate_bgnbd(n, T, rng=rng, **TRUE_BG)
    m = simulate_gamma_gamma(x, rng=rng, **TRUE_GG)
    return x, tx, T, m


@pytest.mark.slow
def test_bgnbd_and_gamma_gamma_recover_known_parameters(simulated):
    x, tx, T, m = simulated
    bg = fit_bgnbd(x, tx, T)
    # Tolerances ~2-3 standard errors at n = 4,000 (a and b are the least identified).
    assert bg["r"] == pytest.approx(TRUE_BG["r"], rel=0.15)
    assert bg["alpha"] == pytest.approx(TRUE_BG["alpha"], rel=0.2)
    assert bg["a"] == pytest.approx(TRUE_BG["a"], rel=0.4)
    assert bg["b"] == pytest.approx(TRUE_BG["b"], rel=0.5)
    # What matters downstream: predicted purchases under fitted vs true parameters.
    fit_pred = bgnbd_expected_purchases(30.0, x, tx, T, **bg)
    true_pred = bgnbd_expected_purchases(30.0, x, tx, T, **TRUE_BG)
    assert fit_pred.sum() == pytest.approx(true_pred.sum(), rel=0.05)
    gg = fit_gamma_gamma(x, m)
    # p, q, v trade off along a ridge; the expected spend per customer is well identified.
    assert gg["p"] == pytest.approx(TRUE_GG["p"], rel=0.35)
    assert gg["q"] == pytest.approx(TRUE_GG["q"], rel=0.35)
    rep = x > 0
    s_fit = gg_expected_spend(x[rep], m[rep], **gg)
    s_true = gg_expected_spend(x[rep], m[rep], **TRUE_GG)
    assert np.median(np.abs(s_fit / s_true - 1)) < 0.05


def test_closed_forms_match_monte_carlo():
    rng = np.random.default_rng(0)
    P = {"r": 0.7, "alpha": 60.0, "a": 0.8, "b": 5.0}
    cases = [(0.0, 0.0, 50.0), (2.0, 30.0, 200.0), (10.0, 250.0, 270.0)]
    t, S = 90.0, 200_000
    for x, tx, T in cases:
        e = bgnbd_expected_purchases(t, x, tx, T, **P)
        p0 = bgnbd_p_no_purchase(t, x, tx, T, **P)
        # Posterior simulation given the history: alive?, lambda, drop-out p; then the future.
        pa = 1 / (1 + (x > 0) * P["a"] / (P["b"] + x - 1) * ((P["alpha"] + T) / (P["alpha"] + tx)) ** (P["r"] + x))
        alive = rng.random(S) < pa
        lam = rng.gamma(P["r"] + x, 1 / (P["alpha"] + T), S)
        pd_ = rng.beta(P["a"], P["b"] + x, S)
        clock, cnt = np.zeros(S), np.zeros(S)
        while alive.any():
            clock += rng.exponential(1, S) / lam
            buy = alive & (clock <= t)
            cnt += buy
            alive = buy & (rng.random(S) >= pd_)
        assert float(e) == pytest.approx(cnt.mean(), rel=0.02, abs=0.005)
        assert float(p0) == pytest.approx((cnt == 0).mean(), abs=0.005)
    # Gamma-Gamma: no repeat history -> the population mean spend p v / (q - 1).
    assert gg_expected_spend(0, 0, p=6, q=4, v=15) == pytest.approx(6 * 15 / 3)
