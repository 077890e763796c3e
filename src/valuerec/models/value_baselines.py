"""Customer-value models: the ``ValueModel`` contract and the V1 baselines.

The contract (the behaviour transformer's value/churn heads plug in behind it too):

``fit_value(histories, cutoff, horizon_days, catalogue=None) -> self``
    ``histories``: every user's events strictly before ``cutoff`` (a ``Sequences`` with times, event
    types and values; item indices into ``catalogue``). ``cutoff``: unix seconds. The model learns to
    predict purchase revenue in ``[t, t + horizon_days)`` from the events before ``t``; it may only
    build its training labels inside the data it was given (so windows end at or before ``cutoff``).
``predict_value(histories, as_of) -> dict[str, np.ndarray]``
    ``as_of``: unix seconds, one per history (or one for all); events at or after it are ignored.
    Keys, one float per history: ``expected_value`` (revenue over the fitted horizon), ``p_buy``
    (probability of at least one purchase in it), ``churn_prob`` (= 1 - p_buy: V1's churn is "no
    purchase in the holdout"), ``lower`` and ``upper`` (10% and 90% quantiles of the revenue).
    A history with no purchase before its as-of is a ``DataError`` (V1's population has at least one;
    the service decides separately what to say about brand-new users).
``save(dir)`` / ``ValueModel.load(dir)``: ``config.json`` + arrays / text model files, no pickle.
``param_grid()``: the hyperparameter settings the protocol tries on the validation cut-off.
``fitted_params()``: learned parameters worth publishing (BG/NBD's r, alpha, a, b; ...).

Baselines: ``past_spend``, ``bgnbd_gg`` (BG/NBD x Gamma-Gamma, PyMC-Marketing MAP fit), ``lightgbm``
(RFM + tenure features; regressor for value, classifier for churn, quantile models for the interval)
and ``ziln_mlp`` (a small MLP with the ZILN head of ``valuerec.models.ziln``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
from scipy import special, stats

from valuerec.data.dataset import Catalogue, Sequences, unix_seconds
from valuerec.data.schema import DataError
from valuerec.features.labels import labels_from_sequences
from valuerec.features.rfm import DAY, FEATURES, rfm_from_sequences

log = logging.getLogger(__name__)

VALUE_MODEL_REGISTRY: dict[str, type["ValueModel"]] = {}
OUTPUT_KEYS = ("expected_value", "p_buy", "churn_prob", "lower", "upper")
QUANTILES = (0.1, 0.9)


def register_value(name: str):
    def deco(cls):
        cls.name = name
        VALUE_MODEL_REGISTRY[name] = cls
        return cls
    return deco


def as_of_array(as_of, n: int) -> np.ndarray:
    """``as_of`` (unix seconds, timestamps or ISO strings; one or one per history) as int64 unix seconds."""
    return unix_seconds(as_of, n, "predict_value: as_of").astype(np.int64)


class ValueModel:
    name: ClassVar[str] = "value-base"
    stochastic: ClassVar[bool] = False   # trained with randomness: the protocol runs several seeds

    horizon_days_: float
    fitted_as_of_: int

    def __init__(self, seed: int = 0):
        self.seed = seed

    # -- contract ---------------------------------------------------------------------------
    def fit_value(self, histories: Sequences, cutoff: int, horizon_days: float,
                  catalogue: Catalogue | None = None) -> "ValueModel":
        raise NotImplementedError

    def predict_value(self, histories: Sequences, as_of) -> dict[str, np.ndarray]:
        raise NotImplementedError

    @classmethod
    def param_grid(cls) -> list[dict]:
        return [{}]

    def config(self) -> dict:
        return {"seed": self.seed}

    def fitted_params(self) -> dict:
        return {}

    # -- helpers shared by the baselines ------------------------------------------------------
    def _start_fit(self, cutoff: int, horizon_days: float) -> None:
        if not np.isfinite(horizon_days) or horizon_days <= 0:
            raise DataError(f"horizon_days={horizon_days}: must be a positive number of days")
        self.horizon_days_ = float(horizon_days)
        self.fitted_as_of_ = int(cutoff)

    def _features(self, histories: Sequences, as_of) -> pd.DataFrame:
        """RFM features as of each history's as-of; users without a purchase are an error."""
        if not hasattr(self, "horizon_days_"):
            raise DataError(f"{self.name}: predict_value before fit_value/load")
        f = rfm_from_sequences(histories, as_of_array(as_of, len(histories)))
        if not f["has_purchase"].all():
            bad = np.flatnonzero(~f["has_purchase"].to_numpy())
            who = list(f.index[bad[:5]]) if histories.user_ids is not None else bad[:5].tolist()
            raise DataError(f"{len(bad)} user(s) have no purchase before their as-of time (e.g. {who}); "
                            "value models need at least one past purchase")
        return f

    # -- persistence --------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = {"kind": "value", "model": self.name, "config": self.config(),
                "horizon_days": self.horizon_days_, "fitted_as_of": self.fitted_as_of_,
                "fitted_as_of_utc": str(pd.Timestamp(self.fitted_as_of_, unit="s")),
                "fitted_params": self.fitted_params(), "state": self._state()}
        (path / "config.json").write_text(json.dumps(meta, indent=2))
        self._save_files(path)

    def _state(self) -> dict:
        return {}

    def _save_files(self, path: Path) -> None:
        pass

    @classmethod
    def load(cls, path: str | Path) -> "ValueModel":
        from valuerec.models.base import construct, damaged, loading, read_model_config

        path = Path(path)
        meta = read_model_config(path)
        if meta.get("kind") != "value" and cls is ValueModel:
            raise DataError(f"{path}: holds a {meta.get('model')!r} model, not a value model")
        with loading(path):
            target = cls
            if cls is ValueModel:
                if meta.get("model") not in VALUE_MODEL_REGISTRY:
                    raise damaged(path, f"unknown value model {meta.get('model')!r} "
                                        f"(known: {sorted(VALUE_MODEL_REGISTRY)})")
                target = VALUE_MODEL_REGISTRY[meta["model"]]
            obj = construct(path, target, meta)
            obj.horizon_days_ = float(meta["horizon_days"])
            obj.fitted_as_of_ = int(meta["fitted_as_of"])
            obj._load(path, meta.get("state", {}))
        return obj

    def _load(self, path: Path, state: dict) -> None:
        pass


def load_value_model(path: str | Path) -> ValueModel:
    return ValueModel.load(path)


def _training_windows(histories: Sequences, cutoff: int, horizon_days: float, n_windows: int,
                      step_days: float) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Stack (features as of t, revenue and churn in [t, t + horizon)) for t = cutoff - horizon -
    k x step, k < n_windows: every label lies inside the data before ``cutoff``."""
    H = int(round(horizon_days * DAY))
    frames, revs, churns = [], [], []
    for k in range(n_windows):
        t0 = cutoff - H - int(round(k * step_days * DAY))
        f = rfm_from_sequences(histories, t0)
        keep = f["has_purchase"].to_numpy()
        if keep.sum() == 0:
            continue
        rev, churn = labels_from_sequences(histories, t0, t0 + H)
        frames.append(f[keep][FEATURES].reset_index(drop=True))
        revs.append(rev[keep])
        churns.append(churn[keep])
    if not frames:
        raise DataError(f"no customer has a purchase before {pd.Timestamp(cutoff - H, unit='s')} "
                        f"(cut-off minus the {horizon_days:g}-day horizon): no training window fits in the data")
    return pd.concat(frames, ignore_index=True), np.concatenate(revs), np.concatenate(churns)


def _finalise(out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Clip to valid ranges and fail loudly on non-finite output."""
    out = {k: np.asarray(out[k], dtype=np.float64) for k in OUTPUT_KEYS}
    out["expected_value"] = np.maximum(out["expected_value"], 0.0)
    out["p_buy"] = np.clip(out["p_buy"], 0.0, 1.0)
    out["churn_prob"] = 1.0 - out["p_buy"]
    out["lower"] = np.maximum(out["lower"], 0.0)
    out["upper"] = np.maximum(out["upper"], out["lower"])
    for k, v in out.items():
        if not np.isfinite(v).all():
            raise DataError(f"value model produced {int((~np.isfinite(v)).sum())} non-finite {k!r} value(s)")
    return out


# ==================================================================================================
@register_value("past_spend")
class PastSpend(ValueModel):
    """Calibration revenue x (horizon days / calibration days) (BENCHMARKS.md V1).

    The calibration period runs from the first event in the fitted data to the as-of time. It has no
    churn model of its own; for p_buy it treats purchase days as a Poisson process at the past rate,
    and its interval is that Poisson count's 10%/90% quantiles x the mean spend per purchase day.
    """

    def fit_value(self, histories, cutoff, horizon_days, catalogue=None):
        self._start_fit(cutoff, horizon_days)
        starts = [t.min() for t in histories.times if len(t)]
        if not starts:
            raise DataError("past spend: no events before the cut-off")
        self.data_start_ = int(min(starts))
        return self

    def predict_value(self, histories, as_of):
        f = self._features(histories, as_of)
        a = as_of_array(as_of, len(histories))
        cal_days = (a - self.data_start_) / DAY
        scale = self.horizon_days_ / cal_days
        lam = f["n_purchase_days"].to_numpy() * scale
        per_day = f["total_revenue"].to_numpy() / f["n_purchase_days"].to_numpy()
        return _finalise({
            "expected_value": f["total_revenue"].to_numpy() * scale,
            "p_buy": 1.0 - np.exp(-lam), "churn_prob": np.exp(-lam),
            "lower": stats.poisson.ppf(QUANTILES[0], lam) * per_day,
            "upper": stats.poisson.ppf(QUANTILES[1], lam) * per_day,
        })

    def fitted_params(self):
        return {"calibration_start_utc": str(pd.Timestamp(self.data_start_, unit="s"))}

    def _state(self):
        return {"data_start": self.data_start_}

    def _load(self, path, state):
        self.data_start_ = int(state["data_start"])


# ==================================================================================================
def bgnbd_expected_purchases(t, frequency, recency, T, r, alpha, a, b) -> np.ndarray:
    """E[purchases in (T, T + t] | x, t_x, T] (Fader, Hardie & Lee 2005, eq. 10)."""
    x, tx, T = (np.asarray(v, dtype=np.float64) for v in (frequency, recency, T))
    z = t / (alpha + T + t)
    hyp = special.hyp2f1(r + x, b + x, a + b + x - 1, z)
    num = (a + b + x - 1) / (a - 1) * (1 - ((alpha + T) / (alpha + T + t)) ** (r + x) * hyp)
    return num / (1 + (x > 0) * a / np.maximum(b + x - 1, 1e-12) * ((alpha + T) / (alpha + tx)) ** (r + x))


def bgnbd_p_alive(frequency, recency, T, r, alpha, a, b) -> np.ndarray:
    x, tx, T = (np.asarray(v, dtype=np.float64) for v in (frequency, recency, T))
    return 1.0 / (1 + (x > 0) * a / np.maximum(b + x - 1, 1e-12) * ((alpha + T) / (alpha + tx)) ** (r + x))


def bgnbd_p_no_purchase(t, frequency, recency, T, r, alpha, a, b) -> np.ndarray:
    """P(no purchase in (T, T + t]): dead, or alive with a Poisson(lambda t) count of 0, where
    lambda | data ~ Gamma(r + x, alpha + T) (drop-out only happens right after a purchase)."""
    x, T = np.asarray(frequency, dtype=np.float64), np.asarray(T, dtype=np.float64)
    pa = bgnbd_p_alive(frequency, recency, T, r, alpha, a, b)
    return (1 - pa) + pa * ((alpha + T) / (alpha + T + t)) ** (r + x)


def gg_expected_spend(frequency, monetary_value, p, q, v) -> np.ndarray:
    """E[mean spend per transaction | x, m] of the Gamma-Gamma model (Fader & Hardie 2013)."""
    x, m = np.asarray(frequency, dtype=np.float64), np.asarray(monetary_value, dtype=np.float64)
    return p * (v + x * m) / (p * x + q - 1)


@register_value("bgnbd_gg")
class BGNBDGammaGamma(ValueModel):
    """BG/NBD (purchase days) x Gamma-Gamma (spend per purchase day), fitted by maximum a posteriori
    with flat priors (= maximum likelihood) through PyMC-Marketing's CLV module. Predictions use the
    closed forms above (no PyMC at serving time); the interval comes from simulating each customer's
    posterior: alive or not, lambda, drop-out p, Poisson purchases with drop-out after each, spend."""

    def __init__(self, seed: int = 0, n_sim: int = 400):
        super().__init__(seed)
        self.n_sim = n_sim

    def config(self):
        return {"seed": self.seed, "n_sim": self.n_sim}

    def fit_value(self, histories, cutoff, horizon_days, catalogue=None):
        self._start_fit(cutoff, horizon_days)
        f = rfm_from_sequences(histories, cutoff)
        f = f[f["has_purchase"]]
        if len(f) < 10:
            raise DataError(f"BG/NBD: {len(f)} customers with a purchase before the cut-off; need at least 10")
        self.params_ = fit_bgnbd_gg(f["frequency"].to_numpy(), f["recency"].to_numpy(), f["T"].to_numpy(),
                                    f["monetary_value"].to_numpy())
        return self

    def fitted_params(self):
        return dict(self.params_)

    def _state(self):
        return {"params": self.params_}

    def _load(self, path, state):
        self.params_ = {k: float(v) for k, v in state["params"].items()}

    def predict_value(self, histories, as_of):
        f = self._features(histories, as_of)
        P, t = self.params_, self.horizon_days_
        x, tx, T, m = (f[c].to_numpy() for c in ("frequency", "recency", "T", "monetary_value"))
        bg = (P["r"], P["alpha"], P["a"], P["b"])
        n_exp = bgnbd_expected_purchases(t, x, tx, T, *bg)
        spend = gg_expected_spend(x, m, P["p"], P["q"], P["v"])
        p0 = bgnbd_p_no_purchase(t, x, tx, T, *bg)
        lo, hi = self._simulate_interval(x, tx, T, m)
        try:
            return _finalise({"expected_value": n_exp * spend, "p_buy": 1 - p0, "churn_prob": p0,
                              "lower": lo, "upper": hi})
        except DataError as e:
            fitted = ", ".join(f"{k}={v:.3g}" for k, v in P.items())
            raise DataError(f"BG/NBD x Gamma-Gamma: {e}; its fit degenerated ({fitted}): too few customers with "
                            "repeat purchases, or too short a calibration period, to fit it") from None

    def _simulate_interval(self, x, tx, T, m) -> tuple[np.ndarray, np.ndarray]:
        P, t = self.params_, self.horizon_days_
        rng = np.random.default_rng(self.seed)
        n, S = len(x), self.n_sim
        pa = bgnbd_p_alive(x, tx, T, P["r"], P["alpha"], P["a"], P["b"])
        alive = rng.random((n, S)) < pa[:, None]
        lam = rng.gamma(P["r"] + x[:, None], 1.0 / (P["alpha"] + T[:, None]), size=(n, S))
        pdrop = rng.beta(P["a"], P["b"] + x[:, None], size=(n, S))
        nu = rng.gamma(P["p"] * x[:, None] + P["q"], 1.0 / (P["v"] + x[:, None] * m[:, None]), size=(n, S))
        clock = np.zeros((n, S))
        count = np.zeros((n, S))
        while alive.any():
            clock = clock + rng.exponential(1.0, size=(n, S)) / lam
            buy = alive & (clock <= t)
            count += buy
            alive = buy & (rng.random((n, S)) >= pdrop)
        # Sum of `count` Gamma(p, nu) spends is Gamma(count * p, nu).
        value = np.where(count > 0, rng.gamma(np.maximum(count * P["p"], 1e-12), 1.0 / nu), 0.0)
        return np.quantile(value, QUANTILES[0], axis=1), np.quantile(value, QUANTILES[1], axis=1)


def fit_bgnbd(frequency, recency, T) -> dict[str, float]:
    """BG/NBD r, alpha, a, b by maximum a posteriori with flat priors (the likelihood's maximum) via
    PyMC-Marketing. PyMC compiles the model to C on first use (tens of seconds, cached after)."""
    import warnings

    from pymc_extras.prior import Prior
    from pymc_marketing.clv import BetaGeoModel

    data = pd.DataFrame({"customer_id": np.arange(len(frequency)), "frequency": np.asarray(frequency, float),
                         "recency": np.asarray(recency, float), "T": np.asarray(T, float)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bg = BetaGeoModel(model_config={k: Prior("HalfFlat") for k in ("r", "alpha", "a", "b")})
        bg.fit(data=data, method="map", progressbar=False)
    post = bg.idata.posterior
    return {k: float(post[k].values.ravel()[0]) for k in ("r", "alpha", "a", "b")}


def fit_gamma_gamma(frequency, monetary_value) -> dict[str, float]:
    """Gamma-Gamma p, q, v (flat priors, MAP) on repeat customers (frequency > 0) via PyMC-Marketing."""
    import warnings

    from pymc_marketing.clv import GammaGammaModel

    frequency, monetary_value = np.asarray(frequency, float), np.asarray(monetary_value, float)
    rep = frequency > 0
    if rep.sum() < 3:
        raise DataError(f"Gamma-Gamma: {int(rep.sum())} repeat customers; need at least 3")
    data = pd.DataFrame({"customer_id": np.arange(int(rep.sum())), "frequency": frequency[rep],
                         "monetary_value": monetary_value[rep]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gg = GammaGammaModel()
        gg.fit(data=data, method="map", progressbar=False)
    post = gg.idata.posterior
    params = {k: float(post[k].values.ravel()[0]) for k in ("p", "q", "v")}
    if params["q"] <= 1:
        raise DataError(f"Gamma-Gamma fit gave q={params['q']:.3g} <= 1: the expected spend is unbounded")
    return params


def fit_bgnbd_gg(frequency, recency, T, monetary_value) -> dict[str, float]:
    return {**fit_bgnbd(frequency, recency, T), **fit_gamma_gamma(frequency, monetary_value)}


# ==================================================================================================
@register_value("lightgbm")
class LightGBMValue(ValueModel):
    """Gradient-boosted trees on RFM + tenure features: a regressor for holdout revenue, a classifier
    for churn and two quantile regressors (10%, 90%) for the interval. Training rows are windows
    inside the fitted data (features as of t, labels in [t, t + horizon))."""

    stochastic = True

    def __init__(self, seed: int = 0, objective: str = "tweedie", num_leaves: int = 15,
                 n_estimators: int = 300, learning_rate: float = 0.03, n_windows: int = 1,
                 step_days: float = 30.0, min_child_samples: int = 20):
        super().__init__(seed)
        self.objective, self.num_leaves, self.n_estimators = objective, num_leaves, n_estimators
        self.learning_rate, self.n_windows, self.step_days = learning_rate, n_windows, step_days
        self.min_child_samples = min_child_samples

    @classmethod
    def param_grid(cls):
        return [{"objective": o, "num_leaves": nl, "n_windows": w}
                for o in ("regression", "tweedie") for nl in (7, 31) for w in (1, 3)]

    def config(self):
        return {"seed": self.seed, "objective": self.objective, "num_leaves": self.num_leaves,
                "n_estimators": self.n_estimators, "learning_rate": self.learning_rate,
                "n_windows": self.n_windows, "step_days": self.step_days,
                "min_child_samples": self.min_child_samples}

    def _params(self, **extra) -> dict:
        p = {"learning_rate": self.learning_rate, "num_leaves": self.num_leaves,
             "min_child_samples": self.min_child_samples, "feature_fraction": 0.8, "bagging_fraction": 0.8,
             "bagging_freq": 1, "seed": self.seed, "num_threads": 1, "verbose": -1, "deterministic": True}
        p.update(extra)
        return p

    def fit_value(self, histories, cutoff, horizon_days, catalogue=None):
        import lightgbm as lgb

        self._start_fit(cutoff, horizon_days)
        X, rev, churn = _training_windows(histories, cutoff, horizon_days, self.n_windows, self.step_days)
        self.n_train_rows_ = len(X)
        ds = lambda y: lgb.Dataset(X.to_numpy(np.float64), label=y, feature_name=FEATURES, free_raw_data=False)  # noqa: E731
        self.boosters_ = {
            "value": lgb.train(self._params(objective=self.objective), ds(rev), self.n_estimators),
            "churn": lgb.train(self._params(objective="binary"), ds(churn), self.n_estimators),
            "q_lower": lgb.train(self._params(objective="quantile", alpha=QUANTILES[0]), ds(rev), self.n_estimators),
            "q_upper": lgb.train(self._params(objective="quantile", alpha=QUANTILES[1]), ds(rev), self.n_estimators),
        }
        return self

    def predict_value(self, histories, as_of):
        X = self._features(histories, as_of)[FEATURES].to_numpy(np.float64)
        pred = {k: b.predict(X) for k, b in self.boosters_.items()}
        return _finalise({"expected_value": pred["value"], "p_buy": 1 - pred["churn"], "churn_prob": pred["churn"],
                          "lower": pred["q_lower"], "upper": pred["q_upper"]})

    def fitted_params(self):
        return {"train_rows": int(getattr(self, "n_train_rows_", 0))}

    def _state(self):
        return {"train_rows": int(getattr(self, "n_train_rows_", 0))}

    def _save_files(self, path):
        for k, b in self.boosters_.items():
            b.save_model(str(path / f"lgb_{k}.txt"))

    def _load(self, path, state):
        import lightgbm as lgb

        self.n_train_rows_ = state.get("train_rows", 0)
        self.boosters_ = {k: lgb.Booster(model_file=str(path / f"lgb_{k}.txt"))
                          for k in ("value", "churn", "q_lower", "q_upper")}


# ==================================================================================================
# Money and counts are heavy-tailed: the MLP sees log1p of them, then standardised.
_LOG_FEATURES = [c for c in FEATURES if c not in ("recency_days", "tenure_days", "recency", "T", "mean_gap_days")]


def _mlp_inputs(f: pd.DataFrame) -> np.ndarray:
    X = f[FEATURES].copy()
    X[_LOG_FEATURES] = np.log1p(np.maximum(X[_LOG_FEATURES].to_numpy(), 0.0))
    return X.to_numpy(np.float32)


@register_value("ziln_mlp")
class ZILNMLP(ValueModel):
    """A small MLP on the RFM features with the ZILN head (Wang, Liu & Miao 2019): one network gives
    p(buy), the expected revenue and its quantiles. Trained with Adam on ``ziln_loss``."""

    stochastic = True

    def __init__(self, seed: int = 0, hidden: int = 64, epochs: int = 100, lr: float = 1e-3,
                 weight_decay: float = 1e-4, batch_size: int = 256, n_windows: int = 1, step_days: float = 30.0):
        super().__init__(seed)
        self.hidden, self.epochs, self.lr, self.weight_decay = hidden, epochs, lr, weight_decay
        self.batch_size, self.n_windows, self.step_days = batch_size, n_windows, step_days

    @classmethod
    def param_grid(cls):
        return [{"epochs": e, "n_windows": w, "hidden": h} for e in (30, 100) for w in (1, 3) for h in (32, 64)]

    def config(self):
        return {"seed": self.seed, "hidden": self.hidden, "epochs": self.epochs, "lr": self.lr,
                "weight_decay": self.weight_decay, "batch_size": self.batch_size,
                "n_windows": self.n_windows, "step_days": self.step_days}

    def _build(self):
        import torch
        from torch import nn

        from valuerec.models.ziln import ZILNHead

        torch.manual_seed(self.seed)
        head = ZILNHead(self.hidden)
        net = nn.Sequential(nn.Linear(len(FEATURES), self.hidden), nn.ReLU(),
                            nn.Linear(self.hidden, self.hidden), nn.ReLU(), head)
        return net, head

    def fit_value(self, histories, cutoff, horizon_days, catalogue=None):
        from valuerec.training.loop import caller_rng_kept
        with caller_rng_kept():      # seeded from self.seed; the caller's generators left as they were
            return self._fit_value(histories, cutoff, horizon_days)

    def _fit_value(self, histories, cutoff, horizon_days):
        import torch

        from valuerec.models.ziln import ziln_loss

        self._start_fit(cutoff, horizon_days)
        F_, rev, _ = _training_windows(histories, cutoff, horizon_days, self.n_windows, self.step_days)
        X = _mlp_inputs(F_)
        self.mean_, self.std_ = X.mean(0), X.std(0) + 1e-6
        Xt = torch.from_numpy((X - self.mean_) / self.std_)
        yt = torch.from_numpy(rev.astype(np.float32))
        self.net_, head = self._build()
        head.init_from_targets(rev)
        opt = torch.optim.Adam(self.net_.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        gen = torch.Generator().manual_seed(self.seed)
        self.net_.train()
        for _ in range(self.epochs):
            perm = torch.randperm(len(Xt), generator=gen)
            for i in range(0, len(Xt), self.batch_size):
                b = perm[i:i + self.batch_size]
                loss = ziln_loss(self.net_(Xt[b]), yt[b])
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.net_.parameters(), 5.0)
                opt.step()
        self.final_loss_ = float(loss.detach())
        self.net_.eval()
        return self

    def predict_value(self, histories, as_of):
        import torch

        from valuerec.models.ziln import ziln_predict

        X = (_mlp_inputs(self._features(histories, as_of)) - self.mean_) / self.std_
        with torch.no_grad():
            logits = self.net_(torch.from_numpy(X.astype(np.float32)))
        return _finalise(ziln_predict(logits, QUANTILES))

    def fitted_params(self):
        return {"final_batch_loss": getattr(self, "final_loss_", None)}

    def _state(self):
        return {"mean": self.mean_.tolist(), "std": self.std_.tolist(), "features": FEATURES}

    def _save_files(self, path):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in self.net_.state_dict().items()}, str(path / "model.safetensors"))

    def _load(self, path, state):
        from safetensors.torch import load_file

        if state.get("features") != FEATURES:
            raise DataError(f"{path}: saved with a different feature list; refit the model")
        self.mean_ = np.asarray(state["mean"], dtype=np.float32)
        self.std_ = np.asarray(state["std"], dtype=np.float32)
        from valuerec.training.loop import caller_rng_kept
        with caller_rng_kept():     # _build seeds torch; loading must not move the caller's generator
            self.net_, _ = self._build()
        self.net_.load_state_dict(load_file(str(path / "model.safetensors")))
        self.net_.eval()


# ==================================================================================================
class RecommenderValueModel(ValueModel):
    """Adapter: any ``Recommender`` that has ``predict_value(histories, as_of)`` (the behaviour
    transformer with its ZILN/churn heads) becomes a ``ValueModel``. Subclass and set
    ``recommender_cls`` (and ``grid`` for the validation search), then ``@register_value(name)``::

        @register_value("transformer")
        class TransformerValue(RecommenderValueModel):
            recommender_cls = BehaviourTransformer
            grid = [{"value_weight": 1.0, "churn_weight": 1.0, "epochs": 50}]

    ``fit_value`` builds ``recommender_cls(seed=seed, <horizon_key>=horizon_days, **params)`` and calls
    ``fit(histories, catalogue)``; ``save`` writes the recommender's own artefact (``valuerec value``
    loads it through ``models.base.load_model``).
    """

    stochastic = True
    recommender_cls: ClassVar[type | None] = None
    grid: ClassVar[list[dict]] = [{}]
    horizon_key: ClassVar[str] = "horizon_days"
    # Where the fitted data end (unix s): value labels exist only for windows ending by then. Set
    # this to the recommender's keyword for it if it has one; else it sees only the histories.
    cutoff_key: ClassVar[str | None] = None

    def __init__(self, seed: int = 0, **params):
        super().__init__(seed)
        self.params = params

    @classmethod
    def param_grid(cls):
        return [dict(g) for g in cls.grid]

    def config(self):
        return {"seed": self.seed, **self.params}

    def fit_value(self, histories, cutoff, horizon_days, catalogue=None):
        if self.recommender_cls is None:
            raise DataError(f"{type(self).__name__}: set recommender_cls")
        if catalogue is None:
            raise DataError(f"{self.name}: fit_value needs the catalogue")
        self._start_fit(cutoff, horizon_days)
        kw = {self.horizon_key: float(horizon_days), **self.params}
        if self.cutoff_key:
            kw[self.cutoff_key] = int(cutoff)
        self.model_ = self.recommender_cls(seed=self.seed, **kw).fit(histories, catalogue)
        return self

    def predict_value(self, histories, as_of):
        self._features(histories, as_of)  # same population rule as the baselines (>= 1 past purchase)
        return _finalise(self.model_.predict_value(histories, as_of_array(as_of, len(histories))))

    def fitted_params(self):
        fp = getattr(self.model_, "fitted_params", None)
        return fp() if callable(fp) else {}

    def save(self, path):
        self.model_.save(path)


def timed_fit(model: ValueModel, *args, **kw) -> float:
    t = time.perf_counter()
    model.fit_value(*args, **kw)
    return time.perf_counter() - t


__all__ = ["ValueModel", "VALUE_MODEL_REGISTRY", "register_value", "load_value_model", "PastSpend",
           "BGNBDGammaGamma", "LightGBMValue", "ZILNMLP", "RecommenderValueModel", "fit_bgnbd", "fit_gamma_gamma", "fit_bgnbd_gg", "bgnbd_expected_purchases",
           "bgnbd_p_alive", "bgnbd_p_no_purchase", "gg_expected_spend", "OUTPUT_KEYS"]
