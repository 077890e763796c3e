"""The one small contract every model follows (baselines and the transformer alike).

``fit(train, catalogue, valid=None) -> self`` learns; learned state ends in ``_``.
``score(histories) -> (B, n_items) tensor`` gives a relevance score for every catalogue item.
``recommend(histories, k, exclude=...)`` ranks; ``save(dir)`` / ``load(dir)`` round-trip through a
directory of config JSON, arrays (safetensors / npy / parquet) and id maps: no pickle.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import json
import re
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import torch

from valuerec.configcheck import check_value
from valuerec.data.dataset import Catalogue, Sequences
from valuerec.data.schema import DataError

MODEL_REGISTRY: dict[str, type["Recommender"]] = {}


def check_model_params(name: str, cls, params: dict) -> None:
    """Settings the model's constructor does not take are an error naming them, and so is a value whose
    type is not the one the constructor's annotation gives (int, float, bool, str); the transformer
    checks its own, with types, in its configs."""
    sig = inspect.signature(cls.__init__)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return
    known = sorted(p for p in sig.parameters if p not in ("self", "seed"))
    unknown = sorted(set(params) - set(known))
    if unknown:
        extra = " (--device is for the models that train with torch)" if "device" in unknown else ""
        raise DataError(f"{name}: unknown setting(s) {unknown}; known: {known}{extra}")
    for key, v in params.items():
        check_value(key, sig.parameters[key].annotation, v, name)


def register(name: str):
    """Register a model class under ``name``. Its ``fit`` also records the span of the histories it
    learned from (``trained_on_``, saved in config.json), which ``retrain`` compares with the store."""
    def deco(cls):
        cls.name = name
        if not getattr(cls.fit, "_records_span", False):   # its own fit or an unregistered parent's
            cls.fit = _recording_span(cls.fit)
        MODEL_REGISTRY[name] = cls
        return cls
    return deco


def data_span(train: Sequences) -> dict | None:
    """``{"from", "until", "events"}`` of a set of histories (UTC ISO times), or None without times."""
    if train.times is None:
        return None
    times = [t for t in train.times if len(t)]
    if not times:
        return None
    lo, hi = min(int(t.min()) for t in times), max(int(t.max()) for t in times)
    iso = (lambda s: pd.Timestamp(s, unit="s").isoformat())
    return {"from": iso(lo), "until": iso(hi), "events": int(sum(len(t) for t in times))}


def _recording_span(fit):
    @functools.wraps(fit)
    def wrapped(self, train, catalogue, *args, **kwargs):
        out = fit(self, train, catalogue, *args, **kwargs)
        self.trained_on_ = data_span(train)
        return out
    wrapped._records_span = True
    return wrapped


NEVER_RECOMMEND = "never_recommend.txt"


def read_never_recommend(path: Path) -> tuple[str, ...]:
    """Item ids of a never-recommend file: one per line; blank lines and lines starting with '#' are
    skipped, surrounding spaces trimmed."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at position {e.start}); "
                        "expected one item id per line") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or e})") from None
    ids = [line.strip() for line in text.splitlines()]
    return tuple(dict.fromkeys(i for i in ids if i and not i.startswith("#")))


def write_never_recommend(model_dir: Path, item_ids) -> None:
    """Write (or, for no ids, remove) ``MODEL_DIR/never_recommend.txt``; loading the model reads it."""
    f = Path(model_dir) / NEVER_RECOMMEND
    ids = [str(i) for i in item_ids]
    if ids:
        f.write_text("# item ids never recommended (one per line; edit and reload the model to change)\n"
                     + "".join(f"{i}\n" for i in ids), encoding="utf-8")
    elif f.exists():
        f.unlink()


def mask_never_recommended(model, scores: torch.Tensor) -> torch.Tensor:
    """Set the columns of ``model``'s never-recommend items (``blocked_items``) to -inf, in place."""
    blocked = model.blocked_items() if hasattr(model, "blocked_items") else ()
    if len(blocked):
        scores[:, torch.as_tensor(blocked[blocked < scores.shape[1]])] = -torch.inf
    return scores


class Recommender:
    name: ClassVar[str] = "base"

    catalogue_: Catalogue
    trained_on_: dict | None = None   # span of the histories fit() learned from (see register)
    # Item ids never to recommend (non-products such as postage, fees, gift cards): every
    # recommendation path leaves them out (recommend, the policies' candidates, the service's popular
    # fallback); scores, explanations and evaluation still see them. Saved as MODEL_DIR/never_recommend.txt.
    never_recommend_: tuple[str, ...] = ()

    def set_never_recommend(self, item_ids) -> list[str]:
        """Never recommend these item ids (replaces any earlier list). Returns the ids that are not in
        the catalogue now: they are kept (an item added later, e.g. at cold start, is left out too)."""
        ids = tuple(dict.fromkeys(str(i).strip() for i in item_ids if str(i).strip()))
        self.never_recommend_ = ids
        index = self.catalogue_.index
        return [i for i in ids if i not in index]

    def blocked_items(self) -> np.ndarray:
        """Catalogue indices of ``never_recommend_`` (those in the catalogue)."""
        if not self.never_recommend_:
            return np.zeros(0, np.int64)
        idx = self.catalogue_.lookup(list(self.never_recommend_), unknown="skip")
        return np.unique(idx[idx >= 0])

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
        the history; a list gives explicit item indices per user; None excludes nothing. Where fewer
        than k items are left, the rest of the row is index -1 with score -inf (never an excluded item)."""
        if int(k) < 1:
            raise DataError(f"recommend: k={k}, must be >= 1")
        scores = self.score(histories).float()
        if isinstance(exclude, str) and exclude == "history":
            exclude = [h[h >= 0] for h in histories.items]
        if exclude is not None:
            apply_exclusions(scores, exclude)
        mask_never_recommended(self, scores)
        k = min(int(k), scores.shape[1])
        top = torch.topk(scores, k, dim=1)
        idx, val = top.indices.cpu().numpy(), top.values.cpu().numpy()
        idx[val == -np.inf] = -1
        return idx, val

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
        if path.exists() and not path.is_dir():
            raise DataError(f"{path}: is a file; a model is saved as a directory")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DataError(f"{path}: cannot create the model directory ({e.strerror or e})") from None
        meta = {"model": self.name, "config": self.config()}
        if getattr(self, "trained_on_", None):
            meta["trained_on"] = self.trained_on_
        (path / "config.json").write_text(json.dumps(meta, indent=2))
        self.catalogue_.save(path)
        self._save_state(path)
        write_never_recommend(path, self.never_recommend_)

    def _save_state(self, path: Path) -> None:
        raise NotImplementedError

    @classmethod
    def load(cls, path: str | Path) -> "Recommender":
        path = Path(path)
        meta = read_model_config(path)
        with loading(path):
            target = cls
            if cls is Recommender:
                name = meta.get("model")
                if meta.get("kind") == "value":
                    raise DataError(f"{path}: holds the value model {name!r}; load it with "
                                    "valuerec.models.value_baselines.load_value_model")
                if name not in MODEL_REGISTRY:
                    raise damaged(path, f"unknown model {name!r} (known: {sorted(MODEL_REGISTRY)})")
                target = MODEL_REGISTRY[name]
            obj = construct(path, target, meta)
            obj.trained_on_ = meta.get("trained_on") if isinstance(meta.get("trained_on"), dict) else None
            obj.catalogue_ = Catalogue.load(path)
            obj._load_state(path)
        if (path / NEVER_RECOMMEND).exists():
            obj.never_recommend_ = read_never_recommend(path / NEVER_RECOMMEND)
        return obj

    def _load_state(self, path: Path) -> None:
        raise NotImplementedError


def predicts_value(model) -> bool:
    """Whether ``model`` gives value predictions: it has ``predict_value`` and, for a transformer, value
    heads (one trained with ``value_weight=0`` has the method but no heads to answer it)."""
    return hasattr(model, "predict_value") and getattr(model, "has_value_head", True) is not False


def ranks_items(model) -> bool:
    """Whether ``model`` can rank items: not a transformer trained without a next-item head (value-only,
    ``next_item_weight=0``)."""
    return getattr(model, "has_next_item_head", True) is not False


def require_next_item_head(model, name: str, hint: str = "") -> None:
    """DataError for a model that cannot rank items (``ranks_items``). ``name`` says which model (its
    directory or version), ``hint`` where its predictions are."""
    if not ranks_items(model):
        raise DataError(f"model {name} was trained without a next-item head (value-only, next_item_weight=0): "
                        f"it predicts customer value and churn, not items{hint}")


def add_cold_start_items(model, model_dir, items) -> tuple[int, str | None]:
    """The store's items (``EventStore.items()``) that have content but no events, added to a model that
    scores items by their content (``add_store_items``: the behaviour transformer), unless its directory
    holds per-item models fitted on its training catalogue (learned item values, a purchase stage).
    What ``recommend``, ``explain`` and the service do at load. Returns how many items were added, and a
    note when items of the table that have text or attributes are still outside the model's catalogue
    (and so never recommended), saying why; None when there are none."""
    from valuerec.models.item_value import ItemValueModel
    from valuerec.models.purchase_stage import PurchaseStage
    added, why = 0, None
    if not hasattr(model, "add_store_items"):
        why = "this model ranks only the items it was trained on"
    elif model_dir is not None and any((Path(model_dir) / d).exists()
                                       for d in (ItemValueModel.DIRNAME, PurchaseStage.DIRNAME)):
        why = "its learned item values / purchase stage cover only the items it was trained on"
    else:
        added = model.add_store_items(items)
        why = "it was trained without item text or attributes, so it cannot score items by them"
    cat = getattr(model, "catalogue_", None)
    if items is None or not len(items) or cat is None:
        return added, None
    has_text = items["text"].map(lambda t: isinstance(t, str) and bool(t.strip()))
    has_attrs = items["attributes"].map(lambda a: isinstance(a, list) and len(a) > 0)
    left = int(((has_text | has_attrs) & ~items["item_id"].astype(str).isin(cat.index)).sum())
    if not left:
        return added, None
    return added, (f"{left} item(s) of the store's item table with text or attributes are not in the model's "
                   f"catalogue and are never recommended: {why}; retrain to include them")


_EMPTY_FALLBACK: contextvars.ContextVar[bool] = contextvars.ContextVar("empty_history_fallback", default=True)


@contextmanager
def raw_scores():
    """Within it, ``score`` gives an empty history the model's own scores (all 0 for item-kNN / ALS)
    instead of the popularity fallback: explanations compare a history with its edits, and an edit
    that empties it must be scored on the same scale as the rest."""
    token = _EMPTY_FALLBACK.set(False)
    try:
        yield
    finally:
        _EMPTY_FALLBACK.reset(token)


def popularity_for_empty_histories(scores: torch.Tensor, histories: Sequences, counts: np.ndarray | None
                                   ) -> torch.Tensor:
    """Rows of ``scores`` whose history holds no item of the catalogue get the training popularity
    (``counts`` scaled to [0, 1]), in place: a model that scores from the history alone (item-kNN,
    ALS's fold-in) would otherwise score every item 0 and rank them in catalogue order. ``counts``
    None (a model saved before it kept them), or inside ``raw_scores()``, leaves the scores as they are."""
    if counts is None or not len(histories) or not _EMPTY_FALLBACK.get():
        return scores
    N = scores.shape[1]
    empty = [b for b, h in enumerate(histories.items) if not ((np.asarray(h) >= 0) & (np.asarray(h) < N)).any()]
    if empty:
        pop = torch.as_tensor(np.asarray(counts, dtype=np.float64) / max(float(np.max(counts, initial=0.0)), 1.0),
                              dtype=scores.dtype, device=scores.device)
        scores[torch.as_tensor(empty, device=scores.device)] = pop
    return scores


def apply_exclusions(scores: torch.Tensor, exclude: list[np.ndarray]) -> torch.Tensor:
    """Set excluded (user, item) entries to -inf, in place. ``exclude`` holds one array of catalogue
    indices per row of ``scores``."""
    if len(exclude) != scores.shape[0]:
        raise DataError(f"exclude has {len(exclude)} entries for {scores.shape[0]} histories; give one array of "
                        "item indices per history (or 'history', or None)")
    exclude = [np.asarray(e) for e in exclude]
    for b, e in enumerate(exclude):
        if e.size and e.dtype.kind not in "iu":
            raise DataError(f"exclude[{b}] holds {e.dtype} {e.ravel()[:3].tolist()}, not catalogue indices "
                            "(integers); map item ids with catalogue.index[item_id]")
    rows = np.concatenate([np.full(len(e), i, dtype=np.int64) for i, e in enumerate(exclude)]) if exclude else []
    cols = np.concatenate([np.asarray(e, dtype=np.int64) for e in exclude]) if exclude else []
    if len(rows):
        cols = np.asarray(cols)
        ok = (cols >= 0) & (cols < scores.shape[1])
        r = torch.as_tensor(np.asarray(rows)[ok], device=scores.device)
        c = torch.as_tensor(cols[ok], device=scores.device)
        scores[r, c] = float("-inf")
    return scores


# -- loading a saved model directory: every failure is a one-line DataError naming it ---------------
def read_model_config(path: Path) -> dict:
    """``path/config.json`` as a dict; a DataError when it is missing, not JSON or not an object."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        raise DataError(f"{path}: not a model directory (no config.json)")
    try:
        meta = json.loads(cfg.read_text())
    except (OSError, ValueError) as e:      # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise damaged(path, "config.json is not valid JSON", e) from None
    if not isinstance(meta, dict):
        raise damaged(path, f"config.json holds a JSON {type(meta).__name__}, not an object")
    return meta


def construct(path: Path, target: type, meta: dict):
    """``target(**meta['config'])``; settings the class does not take are a DataError."""
    config = meta.get("config", {})
    if not isinstance(config, dict):
        raise damaged(path, "config.json's 'config' is not an object")
    try:
        return target(**config)
    except (TypeError, DataError) as e:
        raise damaged(path, f"config.json's settings do not fit model {getattr(target, 'name', target.__name__)!r}",
                      e) from None


def damaged(path: Path, what: str, err: BaseException | None = None) -> DataError:
    """``PATH: model directory is damaged: WHAT (the original error, on one line)``."""
    why = f" ({type(err).__name__}: {' '.join(str(err).split())[:300]})" if err is not None else ""
    return DataError(f"{path}: model directory is damaged: {what}{why}")


def _file_read(path: Path, err: BaseException) -> str | None:
    """The file of ``path`` a failed read was reading: a local naming it in the innermost frame that has one."""
    found, tb = None, err.__traceback__
    while tb is not None:
        for v in list(tb.tb_frame.f_locals.values()):
            if isinstance(v, (str, Path)) and Path(v).parent == Path(path) and Path(v).name:
                found = Path(v).name
        tb = tb.tb_next
    return found


@contextmanager
def loading(path: Path):
    """Turn any failure reading a model directory into ``damaged(...)``; DataErrors pass unchanged."""
    try:
        yield
    except DataError:
        raise
    except FileNotFoundError as e:
        name = Path(e.filename).name if e.filename else _file_read(path, e)
        if name is None:     # pyarrow and safetensors put the path in the message only
            named = re.search(re.escape(str(path)) + r"/([^/\s:'\"]+)", str(e))
            name = named[1] if named else "?"
        raise damaged(path, f"missing file {name}", e) from e
    except Exception as e:  # noqa: BLE001 - a truncated or edited file fails in many libraries' own ways
        if isinstance(e, RuntimeError) and "state_dict" in str(e):
            raise damaged(path, "weights do not match config.json", e) from e
        name = _file_read(path, e)
        raise damaged(path, f"cannot read {name}" if name else "cannot read its files", e) from e


def load_model(path: str | Path) -> Recommender:
    """Load any saved model by the name in its config.json. A missing or damaged directory is a
    DataError naming it and what is wrong."""
    import valuerec.models  # noqa: F401  (registers every model)
    return Recommender.load(path)
