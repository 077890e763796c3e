"""The one small contract every model follows (baselines and the transformer alike).

``fit(train, catalogue, valid=None) -> self`` learns; learned state ends in ``_``.
``score(histories) -> (B, n_items) tensor`` gives a relevance score for every catalogue item.
``recommend(histories, k, exclude=...)`` ranks; ``save(dir)`` / ``load(dir)`` round-trip through a
directory of config JSON, arrays (safetensors / npy / parquet) and id maps: no pickle.
"""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from valuerec.data.dataset import Catalogue, Sequences

MODEL_REGISTRY: dict[str, type["Recommender"]] = {}


def check_model_params(name: str, cls, params: dict) -> None:
    """Settings the model's constructor does not take are an error naming them, and so is a value whose
    type is not the one the constructor's annotation gives (int, float, bool, str); the transformer
    checks its own, with types, in its configs."""
    from valuerec.data.schema import DataError

    sig = inspect.signature(cls.__init__)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return
    known = sorted(p for p in sig.parameters if p not in ("self", "seed"))
    unknown = sorted(set(params) - set(known))
    if unknown:
        extra = " (--device is for the models that train with torch)" if "device" in unknown else ""
        raise DataError(f"{name}: unknown setting(s) {unknown}; known: {known}{extra}")
    for key, v in params.items():
        want = str(sig.parameters[key].annotation).replace(" ", "")
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        ok = {"int": number and math.isfinite(float(v)) and float(v).is_integer(),
              "float": number and math.isfinite(float(v)),
              "bool": isinstance(v, bool), "str": isinstance(v, str)}.get(want, True)
        if not ok:
            kind = {"int": "a whole number", "float": "a finite number", "bool": "true or false",
                    "str": "a string"}[want]
            raise DataError(f"{name}: {key}={v!r}, expected {kind}")


def register(name: str):
    def deco(cls):
        cls.name = name
        MODEL_REGISTRY[name] = cls
        return cls
    return deco


class Recommender:
    name: ClassVar[str] = "base"

    catalogue_: Catalogue

    def fit(self, train: Sequences, catalogue: Catalogue, valid=None) -> "Recommender":
        raise NotImplementedError

    @property
    def n_items(self) -> int:
        return len(self.catalogue_)

    def score(self, histories: Sequences) -> torch.Tensor:
        """(B, n_items) float scores; higher is better."""
        raise NotImplementedError

    def recommend(self, histories: Sequences, k: int = 10, exclude: list[np.ndarray] | str | None = "history",
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item indices and scores per history. ``exclude='history'`` removes items already in
        the history; a list gives explicit item indices per user; None excludes nothing."""
        scores = self.score(histories).float()
        if isinstance(exclude, str) and exclude == "history":
            exclude = [h[h >= 0] for h in histories.items]
        if exclude is not None:
            apply_exclusions(scores, exclude)
        k = min(k, scores.shape[1])
        top = torch.topk(scores, k, dim=1)
        return top.indices.cpu().numpy(), top.values.cpu().numpy()

    def config(self) -> dict:
        return {}

    # -- what a benchmark reports beside the scores (defaults: nothing) --------------------------
    def refit_params(self) -> dict:
        """Config values this fit chose on its validation data, to reuse in a refit without any."""
        return {}

    def ablation_score_fns(self) -> dict:
        """``{part: score_fn}``: the same fitted model scored without one of its parts."""
        return {}

    def fit_report(self) -> dict:
        """Extra facts about this fit for a result file's per-seed entry."""
        return {}

    # -- persistence ------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps({"model": self.name, "config": self.config()}, indent=2))
        self.catalogue_.save(path)
        self._save_state(path)

    def _save_state(self, path: Path) -> None:
        raise NotImplementedError

    @classmethod
    def load(cls, path: str | Path) -> "Recommender":
        path = Path(path)
        meta = json.loads((path / "config.json").read_text())
        target = MODEL_REGISTRY[meta["model"]] if cls is Recommender else cls
        obj = target(**meta["config"])
        obj.catalogue_ = Catalogue.load(path)
        obj._load_state(path)
        return obj

    def _load_state(self, path: Path) -> None:
        raise NotImplementedError


def apply_exclusions(scores: torch.Tensor, exclude: list[np.ndarray]) -> torch.Tensor:
    """Set excluded (user, item) entries to -inf, in place."""
    rows = np.concatenate([np.full(len(e), i, dtype=np.int64) for i, e in enumerate(exclude)]) if exclude else []
    cols = np.concatenate([np.asarray(e, dtype=np.int64) for e in exclude]) if exclude else []
    if len(rows):
        cols = np.asarray(cols)
        ok = (cols >= 0) & (cols < scores.shape[1])
        r = torch.as_tensor(np.asarray(rows)[ok], device=scores.device)
        c = torch.as_tensor(cols[ok], device=scores.device)
        scores[r, c] = float("-inf")
    return scores


def load_model(path: str | Path) -> Recommender:
    """Load any saved model by the name in its config.json."""
    import valuerec.models  # noqa: F401  (registers every model)
    return Recommender.load(path)
