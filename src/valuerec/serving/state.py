"""What the service holds between requests: the event store, the loaded model and per-user state.

The model and everything that depends on its catalogue (item index maps, cached histories, item
vectors) live in one ``Runtime`` object. Reload builds a complete new ``Runtime`` and swaps one
reference, so a request that started on the old model finishes on it and no request ever sees half
of each.

Per-user histories are cached in memory (LRU). Every write to a user bumps that user's generation
under the store lock; a cached history remembers the generation it was read at and is re-read from
the store when they differ, so the very next request after an accepted event sees it.
"""

from __future__ import annotations

import datetime
import importlib
import logging
import queue
import re
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from valuerec.data.dataset import Catalogue, Sequences, _natural_key, catalogue_overlap_note, sequences_from
from valuerec.data.schema import EVENT_COLUMNS, DataError, event_type_code
from valuerec.data.store import EventStore, StoredEvent, row_event_id
from valuerec.data.validate import MAX_TIME, MIN_TIME, EventRow
from valuerec.models.base import (Recommender, add_cold_start_items, load_model, ranks_items,
                                  require_next_item_head)
from valuerec.serving.settings import Settings

log = logging.getLogger("valuerec.serving")


class NotAvailable(Exception):
    """The loaded model (or the project) cannot answer this request: HTTP 501."""


class NotFound(Exception):
    """HTTP 404."""


class StorageError(Exception):
    """The service cannot write where it must (e.g. the snapshot folder): HTTP 500 with the reason."""


class ModelLoadError(Exception):
    """A model version the service was asked to load cannot be loaded; the old one still serves: HTTP 409."""


class QueryError(DataError):
    """A bad query parameter: HTTP 422 located at ("query", name)."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.loc = ("query", param)


@dataclass
class UserHistory:
    """One user's events in time order; ``items`` are catalogue indices, -1 where the item is unknown
    to the model (or the event has no item)."""

    items: np.ndarray
    times: np.ndarray
    event_types: np.ndarray
    values: np.ndarray
    gen: int = 0

    @property
    def known_items(self) -> np.ndarray:
        return self.items[self.items >= 0]

    def sequences(self, user_id: str, item_only: bool) -> Sequences:
        s = Sequences(items=[self.items], times=[self.times], event_types=[self.event_types],
                      values=[self.values], user_ids=np.array([user_id], dtype=object))
        return s.item_only() if item_only else s


# as_of accepted by the read routes: the range events may have (pandas' own ends at 1677 and 2262)
AS_OF_RANGE = (MIN_TIME, MAX_TIME)
SNAPSHOT_GRACE_S = 600.0     # snapshots this young are never pruned (a retrain may be reading one)
EMPTY = UserHistory(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))


def _first_attr(obj, names: list[str]):
    for n in names:
        f = getattr(obj, n, None)
        if f is not None:
            return f
    return None


def _module_hook(module: str, names: list[str]) -> Callable | None:
    """A function from an optional project module (lifecycle, explain), or None while it doesn't exist."""
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None
    return _first_attr(mod, names)


@dataclass
class Runtime:
    model: Recommender
    path: Path
    version: str
    loaded_at: float
    histories: "OrderedDict[str, UserHistory]" = field(default_factory=OrderedDict)
    item_vectors: np.ndarray | None = None      # (N, D) unit rows, for /similar, when the model has them
    item_value: object | None = None            # learned item values (MODEL_DIR/item_value), for the policies
    purchase_model: object | None = None        # learned P(buy) (MODEL_DIR/purchase_stage), value_aware p=learned
    complete: bool = False    # every user with events (as of the preload) is cached: a miss means "no events"
    hooks: dict[str, Callable | None] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)   # what /healthz and reload say about model and store

    @property
    def catalogue(self) -> Catalogue:
        return self.model.catalogue_

    @property
    def name(self) -> str:
        return self.model.name

    def describe(self) -> dict:
        return {"name": self.name, "version": self.version, "path": str(self.path),
                "loaded_at": pd.Timestamp(self.loaded_at, unit="s").isoformat() + "Z",
                "n_items": len(self.catalogue),
                "capabilities": {k: v is not None for k, v in self.hooks.items()},
                "retrieval": "index" if getattr(self.model, "ann_", None) is not None else "full",
                "never_recommended": int(len(self.model.blocked_items())) if hasattr(self.model, "blocked_items") else 0,
                "warnings": list(self.warnings)}


def find_hooks(model: Recommender) -> dict[str, Callable | None]:
    """Optional abilities, present when the model or the project provides them; a missing one answers 501.

    - value: ``model.predict_value(histories, as_of)`` -> dict of (B,) arrays (expected_value, churn_prob, ...);
    - stage: ``valuerec.policies.lifecycle.assign_stages(histories, as_of, value_pred)`` -> DataFrame;
    - explain: ``valuerec.explain.influence`` (occlusion influence of each event on a target);
    - policies: ``valuerec.policies.rerank.apply_policy`` and its registry of named policies.
    """
    value = getattr(model, "predict_value", None)
    if getattr(model, "has_value_head", True) is False:   # e.g. a transformer trained without value/churn heads
        value = None
    stage = _module_hook("valuerec.policies.lifecycle", ["assign_stages"])
    influence = None
    try:
        influence = importlib.import_module("valuerec.explain.influence")
        if not all(hasattr(influence, n) for n in ("occlusion", "item_target", "explain_events")):
            influence = None
    except ImportError:
        pass
    return {"value": value if callable(value) else None, "stage": stage, "explain": influence}


def policy_names() -> list[str]:
    """Named re-ranking policies from ``valuerec.policies.rerank`` (empty until it exists)."""
    try:
        mod = importlib.import_module("valuerec.policies.rerank")
        return sorted(getattr(mod, "POLICIES", {}))
    except ImportError:
        return []


def item_vectors_of(model: Recommender) -> np.ndarray | None:
    """Unit-normalised item vectors for similarity, when the model has an item table."""
    vec = None
    fn = getattr(model, "item_embeddings", None)
    if callable(fn):
        vec = fn()
    elif getattr(model, "item_factors_", None) is not None:
        vec = model.item_factors_
    else:
        module = getattr(model, "module_", None)
        table = getattr(getattr(module, "encoder", None), "item_table", None)
        if callable(table):
            with torch.no_grad():
                vec = table()
    if vec is None:
        return None
    vec = vec.detach().float().cpu().numpy() if isinstance(vec, torch.Tensor) else np.asarray(vec, np.float32)
    norms = np.linalg.norm(vec, axis=1, keepdims=True)
    return (vec / np.maximum(norms, 1e-12)).astype(np.float32)


def newest_model_dir(root: Path) -> Path:
    """The newest versioned model dir under ``root``: the greatest name in natural order among
    sub-directories holding a ``config.json`` (v2 < v10, 20240101 < 20240102)."""
    if not root.is_dir():
        raise DataError(f"models root {root}: no such directory")
    dirs = [p for p in root.iterdir() if p.is_dir() and (p / "config.json").exists()]
    if not dirs:
        raise DataError(f"models root {root}: no model directory (with config.json) inside")
    return max(dirs, key=lambda p: _natural_key(p.name))


class ServiceState:
    """Store + current runtime + caches. Thread-safe: handlers run in a thread pool."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.store: EventStore | None = None
        self.runtime: Runtime | None = None
        self._store_lock = threading.RLock()      # one DuckDB connection: serialise every use
        self._cache_lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self._snapshot_lock = threading.Lock()
        self._user_gen: dict[str, int] = {}
        self._popular: tuple[float, Runtime | None, np.ndarray, np.ndarray] = (0.0, None, np.zeros(0, np.int64),
                                                                             np.zeros(0))
        self._max_time: pd.Timestamp | None = None
        self._last_seq = 0
        self._local = threading.local()
        self._writes: queue.Queue = queue.Queue()
        self._writer_thread: threading.Thread | None = None
        self._cursors: list = []
        self.started_at = time.time()

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        s = self.settings
        torch.set_num_threads(s.torch_threads)
        # The writer thread and DuckDB hand the GIL back and forth several times per commit; at the
        # default 5 ms switch interval each hand-off can wait that long behind the event loop.
        sys.setswitchinterval(s.gil_switch_ms / 1000)
        self.store = EventStore(s.store)
        self.store.con.execute(f"SET threads = {int(s.duckdb_threads)}")
        path = s.model_dir if s.model_dir is not None else newest_model_dir(s.models_root)
        self.runtime = self._build_runtime(path)
        tr = self._query("SELECT max(ts), max(seq) FROM events")
        self._max_time = pd.Timestamp(tr[0][0]) if tr and tr[0][0] is not None else None
        # the event types the store holds: a log without purchases counts every event as one for the
        # lifecycle stages, as `valuerec lifecycle` does (kept up to date as events are written)
        self._event_types = {r[0] for r in self._query("SELECT DISTINCT event_type FROM events")}
        self._last_seq = int(tr[0][1] or 0)
        self._writer_thread = threading.Thread(target=self._writer, name="valuerec-event-writer", daemon=True)
        self._writer_thread.start()
        log.info("serving model %s (%s) from %s on store %s", self.runtime.name, self.runtime.version, path, s.store)

    def close(self) -> None:
        if self._writer_thread is not None:
            self._writes.put(None)
            self._writer_thread.join(30)
            self._writer_thread = None
        if self.store is not None:
            with self._store_lock:
                for c in self._cursors:
                    try:
                        c.close()
                    except Exception:  # noqa: BLE001 - closing anyway
                        pass
                self.store.close()
            self.store = None

    def _query(self, sql: str, params: list | None = None) -> list[tuple]:
        """On the main connection, serialised with writes."""
        with self._store_lock:
            return self.store.con.execute(sql, params or []).fetchall()

    def _read(self, sql: str, params: list | None = None) -> list[tuple]:
        """A read on this thread's own cursor (DuckDB: one connection per thread reads concurrently,
        each query sees the last committed state), so reads do not queue behind writes."""
        cur = getattr(self._local, "cursor", None)
        if cur is None:
            with self._store_lock:
                cur = self.store.con.cursor()
                self._cursors.append(cur)
            self._local.cursor = cur
        return cur.execute(sql, params or []).fetchall()

    def _build_runtime(self, path: Path) -> Runtime:
        path = Path(path)
        if not (path / "config.json").exists():
            raise DataError(f"{path}: not a model directory (no config.json)")
        t0 = time.time()
        model = load_model(path)
        from valuerec.models.item_value import load_item_values
        from valuerec.models.purchase_stage import load_purchase_stage
        rt = Runtime(model=model, path=path, version=path.name, loaded_at=time.time(), hooks=find_hooks(model),
                     item_value=load_item_values(path), purchase_model=load_purchase_stage(path))
        # cold start: items of the store's item table with no events yet, scored by their content (a
        # model with learned item values or a purchase stage keeps its training catalogue; a model
        # that cannot score them is warned about)
        with self._store_lock:
            items = self.store.items()
        n_new, left_out = add_cold_start_items(model, path, items)
        if n_new:
            log.info("model %s: %d item(s) of the store without events scored from their text / attributes",
                     path, n_new)
        if left_out:
            rt.warnings.append(left_out)
        try:
            rt.item_vectors = item_vectors_of(model)
        except Exception:  # noqa: BLE001 - similarity then falls back to store co-occurrence
            log.warning("model %s: cannot read item vectors; /similar uses co-occurrence", path, exc_info=True)
        self._index(rt)
        self._preload(rt)
        self._check_store_fits(rt)
        log.info("loaded model %s from %s in %.2fs (%d histories preloaded)", rt.name, path, time.time() - t0,
                 len(rt.histories))
        return rt

    def _check_store_fits(self, rt: Runtime) -> None:
        """Warn (log, /healthz, reload's answer) when the store gives the model nothing to read: no
        events yet, or items none of which the model knows (a model trained on other data)."""
        if not self._read("SELECT 1 FROM events LIMIT 1"):
            rt.warnings.append(f"the store {self.settings.store} has no events yet: every user is new and gets "
                               "the model's ranking for an empty history (its training popularity, where it has "
                               "one) until events arrive")
        elif (note := catalogue_overlap_note(rt.catalogue, [r[0] for r in self._read(
                "SELECT DISTINCT item_id FROM events WHERE item_id IS NOT NULL")])) is not None:
            rt.warnings.append(note)
        for w in rt.warnings:
            log.warning("model %s (%s): %s", rt.name, rt.version, w)

    def _index(self, rt: Runtime) -> None:
        """Build the item index recommendations retrieve from ($VALUEREC_ANN: 'auto' for catalogues of
        $VALUEREC_ANN_MIN_ITEMS items or more and for models saved with one, 'on', 'off'), when the
        model can use one."""
        s, build = self.settings, getattr(rt.model, "build_ann_index", None)
        kept = (rt.path / "ann_index" / "index.faiss").exists()       # built by train --ann-index
        want = s.ann == "on" or (s.ann == "auto" and (len(rt.catalogue) >= s.ann_min_items or kept))
        if not want or build is None:
            if s.ann == "on" and build is None:
                log.warning("$VALUEREC_ANN=on: model %s has no item index; it scores the whole catalogue", rt.name)
            return
        try:
            import faiss  # noqa: F401
        except ImportError:
            if s.ann == "on":
                raise DataError("$VALUEREC_ANN=on needs faiss: pip install 'valuerec[ann]' (faiss-cpu)") from None
            log.warning("%d items but faiss is not installed: recommendations score the whole catalogue "
                        "(pip install 'valuerec[ann]')", len(rt.catalogue))
            return
        t0 = time.time()
        build(cache=rt.path / "ann_index")    # kept with the model: a reload reads it instead of rebuilding
        log.info("item index (HNSW) over %d items ready in %.1fs", len(rt.catalogue), time.time() - t0)

    def _preload(self, rt: Runtime) -> None:
        """Read every history once when the store is small enough (saves a store read per first request)."""
        with self._store_lock:
            n = self.store.count_events()
            if n == 0 or n > self.settings.preload_max_events:
                return
            events = self.store.events()
            gens = dict(self._user_gen)
        seqs = sequences_from(events, rt.catalogue, unknown_items="keep")
        users = seqs.user_ids[-self.settings.cache_users:]
        rt.complete = len(users) == len(seqs)
        off = len(seqs) - len(users)
        for j, u in enumerate(users):
            i = off + j
            rt.histories[str(u)] = UserHistory(seqs.items[i], seqs.times[i], seqs.event_types[i], seqs.values[i],
                                               gen=gens.get(str(u), 0))

    def reload(self, path: str | Path | None = None) -> tuple[dict, dict]:
        """Load a model fully, then swap it in. Returns (old, new) descriptions."""
        s = self.settings
        with self._reload_lock:
            if path is None:
                if s.models_root is None:
                    raise DataError("no path given and the service has no models root ($VALUEREC_MODELS_ROOT)")
                try:
                    target = newest_model_dir(s.models_root)
                except DataError as e:
                    raise ModelLoadError(f"{e}; still serving {self.runtime.version}") from None
            else:
                target = Path(path)
                if s.models_root is not None:
                    root = s.models_root.resolve()
                    if root not in target.resolve().parents and target.resolve() != root:
                        raise DataError(f"{target}: outside the models root {s.models_root}")
            try:
                new = self._build_runtime(target)
            except DataError as e:
                raise ModelLoadError(f"{e}; still serving {self.runtime.version}") from None
            except Exception as e:  # noqa: BLE001 - a broken artefact must not take the service down
                log.exception("reload from %s failed; still serving %s", target, self.runtime.version)
                raise ModelLoadError(f"{target}: cannot load the model ({type(e).__name__}: {e}); "
                                     f"still serving {self.runtime.version}") from None
            old = self.runtime
            self.runtime = new   # one reference swap: in-flight requests keep the runtime they started with
        log.info("reloaded: %s (%s) -> %s (%s)", old.name, old.version, new.name, new.version)
        return old.describe(), new.describe()

    def snapshot(self) -> dict:
        """Copy the store, as committed now, to a new file in the snapshot folder (writes go on
        meanwhile), and delete this store's older snapshots beyond ``settings.snapshot_keep``. The loop
        while serving: snapshot, ``valuerec retrain --store SNAPSHOT``, then ``POST /v1/admin/reload``."""
        s = self.settings
        folder = s.snapshot_dir or Path(s.store).resolve().parent / "snapshots"
        stem = Path(s.store).stem
        with self._snapshot_lock:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StorageError(f"cannot create the snapshot folder {folder} ({e.strerror or e}); "
                                   "$VALUEREC_SNAPSHOT_DIR names where snapshots go") from None
            t0 = time.time()
            stamp = pd.Timestamp.now(tz="UTC").strftime("%Y%m%dT%H%M%S%fZ")
            try:
                path = self.store.snapshot(folder / f"{stem}-{stamp}.duckdb")
            except OSError as e:
                raise StorageError(f"cannot write a snapshot to {folder} ({e.strerror or e})") from None
            seconds = time.time() - t0
            with EventStore(path, read_only=True) as snap:
                events, newest = snap.count_events(), snap.time_range()
            # this store's snapshots only (an exact name, not a pattern: another store's name may start with
            # this one's); the newest snapshot_keep stay, and so does any of the last 10 minutes, which a
            # retrain may be reading
            own = re.compile(re.escape(stem) + r"-\d{8}T\d{12}Z\.duckdb")
            mine = sorted(p for p in folder.iterdir() if own.fullmatch(p.name))
            recent = time.time() - SNAPSHOT_GRACE_S
            removed = []
            for old in mine[:max(0, len(mine) - s.snapshot_keep)]:
                if old == path or old.stat().st_mtime > recent:
                    continue
                old.unlink(missing_ok=True)
                old.with_name(old.name + ".wal").unlink(missing_ok=True)
                removed.append(str(old))
        log.info("snapshot of %s: %s (%d events, %.2fs)", s.store, path, events, seconds)
        return {"path": str(path), "events": events, "seconds": seconds, "removed": removed,
                "newest_event": None if newest is None else newest[1].isoformat()}

    # -- per-user state ------------------------------------------------------------------------
    def history(self, rt: Runtime, user_id: str) -> UserHistory | None:
        """The user's history (None for a user with no events), from cache or the store."""
        with self._cache_lock:
            gen = self._user_gen.get(user_id, 0)
            h = rt.histories.get(user_id)
            if h is not None and h.gen == gen:
                rt.histories.move_to_end(user_id)
                return h if len(h.items) else None
            if h is None and gen == 0 and rt.complete:
                return None       # every user with events was preloaded, and nobody wrote for this one since
        # A miss reads the store under the write lock, so no write interleaves between reading the
        # generation, reading the events and caching them.
        with self._store_lock:
            gen = self._user_gen.get(user_id, 0)
            ev = self.store.user_events(user_id)
            if len(ev):
                s = sequences_from(ev, rt.catalogue, users=np.array([user_id], dtype=object), unknown_items="keep")
                h = UserHistory(s.items[0], s.times[0], s.event_types[0], s.values[0], gen=gen)
            else:
                h = UserHistory(EMPTY.items, EMPTY.times, EMPTY.event_types, EMPTY.values, gen=gen)
            self._cache_put(rt, user_id, h)
        return h if len(h.items) else None

    def in_memory(self, user_id: str, popular: bool = True) -> bool:
        """Whether an answer for this user needs no store read: the history is cached (or known to be
        empty) and, with ``popular``, the popularity list is fresh. The routes answer such requests on
        the event loop and send the others to the thread pool."""
        rt = self.runtime
        with self._cache_lock:
            gen = self._user_gen.get(user_id, 0)
            h = rt.histories.get(user_id)
            cached = (h.gen == gen) if h is not None else (gen == 0 and rt.complete)
        if not cached:
            return False
        if popular:
            at, for_rt, _, _ = self._popular
            return for_rt is rt and time.time() - at < self.settings.popular_ttl_s
        return True

    def _cache_put(self, rt: Runtime, user_id: str, h: UserHistory) -> None:
        with self._cache_lock:
            rt.histories[user_id] = h
            rt.histories.move_to_end(user_id)
            while len(rt.histories) > self.settings.cache_users:
                rt.histories.popitem(last=False)
                rt.complete = False

    def add_events(self, events: pd.DataFrame, timeout: float = 60.0) -> tuple[int, int, list[str]]:
        """Store a validated event frame; returns (accepted, duplicates, conflicting event ids) once it
        is committed (see ``_write_group``)."""
        cols = [events[c].tolist() if c in events.columns else [None] * len(events) for c in EVENT_COLUMNS]
        rows = [EventRow(eid, u, None if i is None or i != i else i, pd.Timestamp(t), et, v, q)
                for eid, u, i, t, et, v, q in zip(*cols)]
        return self.add_rows(rows, timeout)

    def add_rows(self, rows: list[EventRow], timeout: float = 60.0) -> tuple[int, int, list[str]]:
        """Store validated rows (blocking); returns (accepted, duplicates, conflicting event ids) once
        they are committed."""
        done = threading.Event()
        slot = self.submit_rows(rows, done.set)
        if not done.wait(timeout):
            raise TimeoutError("the event store did not commit within the time limit")
        return self.write_result(slot)

    def submit_rows(self, rows: list[EventRow], notify: Callable[[], None]) -> dict:
        """Queue validated rows for the writer thread; ``notify()`` is called (on that thread) once
        they are committed or failed; then ``write_result(slot)`` gives (accepted, duplicates, conflicting
        event ids) or raises.

        Batches from concurrent requests are committed together (group commit)."""
        rows = [r if r.event_id is not None else r._replace(event_id=row_event_id(*r[1:])) for r in rows]
        slot: dict = {"rows": rows, "notify": notify}
        self._writes.put(slot)
        return slot

    @staticmethod
    def write_result(slot: dict) -> tuple[int, int, list[str]]:
        if "error" in slot:
            raise slot["error"]
        return slot["result"]

    def _writer(self) -> None:
        """The one thread that writes events: takes every waiting batch, commits them in one transaction."""
        while True:
            first = self._writes.get()
            if first is None:
                return
            group = [first]
            n = len(first["rows"])
            while n < 10_000:
                try:
                    nxt = self._writes.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._writes.put(None)
                    break
                group.append(nxt)
                n += len(nxt["rows"])
            try:
                results = self._write_group([slot["rows"] for slot in group])
                for slot, res in zip(group, results):
                    slot["result"] = res
            except BaseException as e:  # noqa: BLE001 - every waiting request gets the error
                log.exception("writing %d event batch(es) failed", len(group))
                for slot in group:
                    slot["error"] = e
            for slot in group:
                try:
                    slot["notify"]()
                except Exception:  # noqa: BLE001 - e.g. the request's event loop is gone
                    log.warning("could not notify a writer of its result", exc_info=True)

    def _write_group(self, batches: list[list[EventRow]]) -> list[tuple[int, int, list[str]]]:
        """One transaction for several batches; then fold the newly stored events into the cached
        histories of their users (so the next request needs no store read).

        Per batch: (accepted, duplicates, conflicts). An event whose id is already stored is skipped
        either way; it is a duplicate when the stored event has the same content (an idempotent
        re-send), a conflict (its id listed) when the content differs. The stored event never changes."""
        rt = self.runtime
        rows = [r for b in batches for r in b]
        with self._store_lock:
            stored, _ = self.store.add_event_rows(rows)
            held = {}       # what the store holds for the ids it skipped, to tell re-sends from conflicts
            if len(stored) < len(rows):
                held = {g[0]: g[1:] for g in self.store.con.execute(
                    "SELECT event_id, user_id, item_id, ts, event_type, value, quantity FROM events "
                    "WHERE event_id IN (SELECT unnest(?::VARCHAR[]))", [list({r.event_id for r in rows})]).fetchall()}
            if stored:     # only what was stored moves the default as_of (a skipped conflict does not)
                self._event_types.update(e.event_type for e in stored)
                self._last_seq = max(self._last_seq, stored[-1].seq)
                t = pd.Timestamp(max(e.ts for e in stored))
                if self._max_time is None or t > self._max_time:
                    self._max_time = t
            by_user: dict[str, list] = {}
            for e in stored:
                by_user.setdefault(e.user_id, []).append(e)
            with self._cache_lock:
                for u in dict.fromkeys(r.user_id for r in rows):
                    gen = self._user_gen.get(u, 0) + 1
                    self._user_gen[u] = gen
                    h = rt.histories.get(u)
                    if h is None:
                        if not (rt.complete and gen == 1):
                            continue    # not cached: the next read fetches it from the store
                        base = EMPTY    # preloaded everyone and never written: a brand-new user
                    elif h.gen == gen - 1:
                        base = h
                    else:               # a stale entry: drop it, the next read refetches
                        rt.histories.pop(u, None)
                        continue
                    rt.histories[u] = _merge(base, by_user.get(u), rt.catalogue, gen)
        # Per request: an event counts as accepted if it was newly stored and no earlier request of
        # the group claimed the same id (the store keeps the first).
        fresh = {e.event_id for e in stored}
        out = []
        for b in batches:
            added, dups, conflicts = 0, 0, []
            for r in b:
                if r.event_id in fresh:
                    fresh.discard(r.event_id)
                    added += 1
                elif _same_event(held.get(r.event_id), r):
                    dups += 1
                else:
                    conflicts.append(r.event_id)
            out.append((added, dups, conflicts))
        return out

    def delete_user(self, user_id: str) -> int:
        rt = self.runtime
        with self._store_lock:
            n = self.store.delete_user(user_id)
            if n:   # the newest event may have been theirs: the default as_of follows what is stored
                tr = self._query("SELECT max(ts) FROM events")
                self._max_time = pd.Timestamp(tr[0][0]) if tr and tr[0][0] is not None else None
                self._popular = (0.0, None, *self._popular[2:])    # nor do their events count as popularity
            with self._cache_lock:
                self._user_gen[user_id] = self._user_gen.get(user_id, 0) + 1
                rt.histories.pop(user_id, None)
        return n

    # -- answers -------------------------------------------------------------------------------
    def popular(self, rt: Runtime) -> tuple[np.ndarray, np.ndarray]:
        """Catalogue indices by store popularity (how many users had the item: one client sending an
        item many times counts once), most popular first; re-counted every ``popular_ttl_s`` seconds
        and after an erasure. A store with none of the model's items yet gives the model's own
        ranking for an empty history (its training popularity)."""
        at, for_rt, idx, counts = self._popular
        if for_rt is rt and time.time() - at < self.settings.popular_ttl_s:
            return idx, counts
        limit = max(1000, 10 * self.settings.max_k)
        rows = self._read("SELECT item_id, count(DISTINCT user_id) AS n FROM events WHERE item_id IS NOT NULL "
                           "GROUP BY item_id ORDER BY n DESC, item_id LIMIT ?", [limit * 2])
        ids = [r[0] for r in rows]
        cidx = rt.catalogue.lookup(ids, unknown="skip") if ids else np.zeros(0, np.int64)
        ok = cidx >= 0
        idx = cidx[ok][:limit]
        counts = np.array([r[1] for r in rows], dtype=np.float64)[ok][:limit]
        if not len(idx) and len(rt.catalogue) and ranks_items(rt.model):
            with torch.no_grad():
                prior = np.asarray(rt.model.score(EMPTY.sequences("", item_only=True)), dtype=np.float64)[0]
            finite = prior[np.isfinite(prior)]
            if len(finite) and finite.max() > finite.min():        # not for a model that scores all alike
                idx = np.argsort(-prior, kind="stable")[:limit]
                counts = prior[idx]
        blocked = rt.model.blocked_items() if hasattr(rt.model, "blocked_items") else ()
        if len(blocked):
            keep = ~np.isin(idx, blocked)
            idx, counts = idx[keep], counts[keep]
        self._popular = (time.time(), rt, idx, counts)
        return idx, counts

    def recommend(self, user_id: str, k: int, policy: str, exclude_history: bool) -> dict:
        rt = self.runtime
        try:
            require_next_item_head(rt.model, f"'{rt.name}' ({rt.version})",
                                   f"; GET /v1/users/{user_id}/value gives its predictions")
        except DataError as e:
            raise NotAvailable(str(e)) from None
        h = self.history(rt, user_id)
        known = h.known_items if h is not None else EMPTY.items
        if policy not in ("auto", "model", "popular") and len(known):
            return self._recommend_policy(rt, h, user_id, k, policy, exclude_history)
        if policy == "popular" or len(known) == 0:
            idx, counts = self.popular(rt)
            if exclude_history and len(known):
                keep = ~np.isin(idx, known)
                idx, counts = idx[keep], counts[keep]
            used = "popular" if policy == "popular" else "new_user"
            idx, scores = idx[:k], counts[:k]
        else:
            seqs = h.sequences(user_id, item_only=True)
            with torch.no_grad():
                top, sc = rt.model.recommend(seqs, k=k, exclude="history" if exclude_history else None)
            idx, scores = top[0], sc[0]
            used = "model"
        return {"runtime": rt, "policy": used, "items": self.describe_items(rt, idx, scores),
                "history_length": 0 if h is None else int(len(h.items))}

    def _recommend_policy(self, rt: Runtime, h: UserHistory, user_id: str, k: int, policy: str,
                          exclude_history: bool) -> dict:
        """A named re-ranking policy (valuerec.policies.rerank) over the model's candidates."""
        from valuerec.policies.rerank import apply_policy

        seqs = h.sequences(user_id, item_only=True)
        pop_idx, pop_counts = self.popular(rt)
        popularity = np.zeros(len(rt.catalogue))
        popularity[pop_idx] = pop_counts
        t = self.as_of(None)
        value_model = rt.model if rt.hooks.get("value") is not None else None
        stage = None
        try:
            with torch.no_grad():
                stages = None
                if policy == "stage":
                    # assigned here so that the answer says which stage (and so which policy) ranked it
                    from valuerec.policies.rerank import DEFAULT_STAGE_POLICIES, policy_stages
                    stages = policy_stages(rt.model, seqs, self._unix(t), value_model=value_model,
                                           lifecycle_config=self.lifecycle_config(rt, value_model is not None))
                    stage = {"stage": str(stages[0]),
                             "stage_policy": DEFAULT_STAGE_POLICIES.get(str(stages[0]), "plain")}
                # "auto": as the CLI, the policies built on past items keep them (favourites; stage, for
                # its stages whose policy is favourites)
                top, sc = apply_policy(policy, rt.model, seqs, k=k, exclude="auto" if exclude_history else None,
                                       as_of=self._unix(t), value_model=value_model, item_popularity=popularity,
                                       item_vectors=rt.item_vectors, item_value=rt.item_value,
                                       purchase_model=rt.purchase_model, stages=stages)
        except DataError as e:   # the policy needs a part this model lacks (purchase stage, value head, prices)
            raise NotAvailable(f"policy={policy}: model '{rt.name}' ({rt.version}) cannot answer it: {e}") from None
        ok = top[0] >= 0
        return {"runtime": rt, "policy": policy, "items": self.describe_items(rt, top[0][ok], sc[0][ok]),
                "history_length": int(len(h.items)), "stage": stage}

    @staticmethod
    def describe_items(rt: Runtime, idx: np.ndarray, scores: np.ndarray) -> list[dict]:
        cat = rt.catalogue
        out = []
        for i, s in zip(np.asarray(idx).tolist(), np.asarray(scores, dtype=np.float64).tolist()):
            if not np.isfinite(s):      # excluded items (-inf) when k exceeds what is left
                continue
            price = None if cat.price is None else float(cat.price[i])
            out.append({"item_id": str(cat.item_ids[i]), "score": float(s),
                        "text": None if cat.text is None else cat.text[i],
                        "price": price if price is not None and np.isfinite(price) else None})
        return out

    def as_of(self, as_of: str | None) -> pd.Timestamp:
        """Prediction time: the given one, else one second after the newest event in the store (data may
        be historical; the models read the events strictly before their as_of, so every stored event
        counts)."""
        if as_of is not None:
            try:
                t = pd.Timestamp(as_of)
            except (ValueError, TypeError, OverflowError):
                raise QueryError("as_of", f"unparseable date {as_of!r}, expected ISO 8601") from None
            if t is pd.NaT:
                raise QueryError("as_of", f"unparseable date {as_of!r}, expected ISO 8601")
            t = t.tz_convert("UTC").tz_localize(None) if t.tzinfo is not None else t
            if not AS_OF_RANGE[0] <= t <= AS_OF_RANGE[1]:
                raise QueryError("as_of", f"{as_of!r} is outside {AS_OF_RANGE[0].date()}..{AS_OF_RANGE[1].date()}")
            return t
        if self._max_time is not None:
            return self._max_time + pd.Timedelta(seconds=1)
        return pd.Timestamp.utcnow().tz_localize(None)

    @staticmethod
    def _unix(t: pd.Timestamp) -> np.ndarray:
        return np.array([t.value / 1e9], dtype=np.float64)    # (1,) unix seconds, the models' as_of

    def _value_row(self, rt: Runtime, seqs: Sequences, t: pd.Timestamp) -> tuple[dict | None, dict | None]:
        """(first row of predict_value, its raw batch answer) or (None, None) without a value head."""
        fn = rt.hooks.get("value")
        if fn is None:
            return None, None
        try:
            with torch.no_grad():
                raw = fn(seqs, self._unix(t))
        except NotImplementedError as e:
            raise NotAvailable(f"model '{rt.name}' ({rt.version}) cannot predict value: {e}") from None
        row = first_row(raw)
        return (row if isinstance(row, dict) else {"value": row}), raw

    def _stage_row(self, rt: Runtime, seqs: Sequences, t: pd.Timestamp, raw_value) -> dict | None:
        fn = rt.hooks.get("stage")
        if fn is None:
            return None
        # One user at a time has no population to rank against: the "top value" bar for advocates is
        # the one the model measured on its training population (when it has one).
        valued = isinstance(raw_value, dict)
        cfg = self.lifecycle_config(rt, valued)
        df = fn(seqs, self._unix(t), raw_value if isinstance(raw_value, dict) else None, cfg)
        return first_row(df)

    def lifecycle_config(self, rt: Runtime, valued: bool):
        """The stages' settings for one user at a time: the model's own "top value" bar and horizon (when
        it predicts value), and every event counted as a purchase in a log without purchases."""
        from valuerec.policies.lifecycle import config_for_few_users
        return config_for_few_users(rt.model if valued else None, getattr(self, "_event_types", ()))

    def value(self, user_id: str, as_of: str | None) -> dict:
        rt = self.runtime
        if rt.hooks.get("value") is None:
            raise NotAvailable(f"model '{rt.name}' ({rt.version}) has no value head: it does not implement "
                               "predict_value(histories, as_of); serve a model with one (the behaviour transformer "
                               "with value/churn heads) to use this endpoint")
        h = self.history(rt, user_id) or EMPTY
        t = self.as_of(as_of)
        seqs = h.sequences(user_id, item_only=False)
        value, raw = self._value_row(rt, seqs, t)
        stage = self._stage_row(rt, seqs, t, raw)
        n = _events_until(h, t)
        return {"runtime": rt, "as_of": t, "value": value, "stage": None if stage is None else stage.get("stage"),
                "stage_reason": None if stage is None else stage.get("reason"),
                "history_length": n, "known_user": n > 0}

    def stage(self, user_id: str, as_of: str | None) -> dict:
        rt = self.runtime
        if rt.hooks.get("stage") is None:
            raise NotAvailable("lifecycle stages are not available: valuerec.policies.lifecycle.assign_stages "
                               "is missing from this installation")
        h = self.history(rt, user_id) or EMPTY
        t = self.as_of(as_of)
        seqs = h.sequences(user_id, item_only=False)
        value, raw = self._value_row(rt, seqs, t)
        row = self._stage_row(rt, seqs, t, raw)
        features = {k: v for k, v in row.items() if k not in ("user_id", "stage", "rule", "reason")}
        return {"runtime": rt, "as_of": t, "stage": str(row["stage"]), "reason": str(row.get("reason")),
                "features": features, "value": value, "history_length": _events_until(h, t)}

    def explain(self, user_id: str, target: str | None, as_of: str | None, top: int, greedy: int = 0,
                greedy_direction: str = "auto") -> dict:
        """Occlusion influence of each of the user's events on a target: an item's score (default: the
        top recommendation), or 'value' / 'churn' when the model predicts them. Only the most recent
        ``settings.explain_max_events`` events are occluded. ``greedy`` > 0 adds the set of that many
        events whose deletion together lowers the target most, or moves it most either way
        (``greedy_direction``; "auto": either way for churn; ``influence.greedy_deletion``)."""
        rt = self.runtime
        inf = rt.hooks.get("explain")
        if inf is None:
            raise NotAvailable(f"explanations are not available for model '{rt.name}' ({rt.version}): "
                               "valuerec.explain.influence is missing from this installation")
        h = self.history(rt, user_id)
        if h is None:
            raise NotFound(f"user {user_id!r} has no events to explain")
        t = self.as_of(as_of)
        # what the target knows as of t: the events before it (as the models' as_of and the CLI read it)
        h = _until(h, t)
        if not len(h.items):
            raise NotFound(f"user {user_id!r} has no events before {t.isoformat()}")
        if target is None and not ranks_items(rt.model) and rt.hooks.get("value") is not None:
            target = "value"    # a value-only model: no item scores to explain, its value by default
        if target not in ("value", "churn"):
            try:
                require_next_item_head(rt.model, f"'{rt.name}' ({rt.version})", "; explain target=value or churn")
            except DataError as e:
                raise NotAvailable(str(e)) from None
        if target in ("value", "churn"):
            if rt.hooks.get("value") is None:
                raise NotAvailable(f"target {target!r} needs a value head; model '{rt.name}' has no predict_value")
            seqs = h.sequences(user_id, item_only=False)
            fn = (inf.value_target if target == "value" else inf.churn_target)(rt.model, self._unix(t))
            kind = target
        else:
            seqs = h.sequences(user_id, item_only=True)
            if not len(seqs.items[0]):
                raise NotFound(f"user {user_id!r} has no events before {t.isoformat()} with items the model knows")
            if target is None:
                with torch.no_grad():
                    top_i, top_s = rt.model.recommend(seqs, k=1, exclude="history")
                if len(top_i[0]) == 0 or not np.isfinite(top_s[0][0]):
                    raise NotFound(f"user {user_id!r}: every item of the model's catalogue is in their history, so "
                                   "nothing is recommended to explain; give target=ITEM_ID")
                idx = int(top_i[0][0])
            else:
                idx = rt.catalogue.index.get(target)
                if idx is None:
                    raise NotFound(f"target {target!r}: not an item of the model's catalogue, nor 'value' / 'churn'")
            fn = inf.item_target(rt.model, [idx])
            kind, target = "item", str(rt.catalogue.item_ids[idx])
        last = self.settings.explain_max_events
        with torch.no_grad():
            full, infl = inf.occlusion(fn, seqs, last=last)
        every = inf.explain_events(seqs, infl[0], rt.catalogue, top=None)
        every = every.drop(columns=[c for c in ("item_index",) if c in every.columns])
        rows = (lambda df: [{k: _plain(v) for k, v in r.items()} for r in df.to_dict("records")])
        n = len(seqs.items[0])
        explanation = {"target_kind": kind, "target_score": _plain(full[0]),
                       "method": "occlusion: score(full history) - score(history without the event)",
                       "events_total": n, "events_occluded": min(n, last),
                       "events": rows(every.head(top))}
        if greedy > 0:
            direction = inf.resolve_greedy_direction(greedy_direction, kind)
            with torch.no_grad():
                _, chosen, after = inf.greedy_deletion(fn, seqs, k=greedy, direction=direction, last=last,
                                                       stop_without_gain=True)
            explanation["greedy"] = inf.greedy_explanation(every, float(full[0]), chosen[0], after[0], greedy,
                                                           rows, scalar=_plain, direction=direction)
        return {"runtime": rt, "as_of": t, "target": target, "explanation": explanation}

    def similar(self, item_id: str, k: int) -> dict:
        """Nearest items by the model's item similarity (kNN rows, item factors / embeddings);
        otherwise by co-occurrence in the store (users who had both)."""
        rt = self.runtime
        i = rt.catalogue.index.get(item_id)
        blocked = rt.model.blocked_items() if hasattr(rt.model, "blocked_items") else np.zeros(0, np.int64)

        def allowed(idx, scores):     # the model's never-recommend items are no similar items either
            idx, scores = np.asarray(idx), np.asarray(scores)
            keep = ~np.isin(idx, blocked)
            return idx[keep][:k], scores[keep][:k]
        if i is not None:
            fn = getattr(rt.model, "similar_items", None)
            sim = getattr(rt.model, "sim_", None)
            if callable(fn):
                idx, scores = fn(np.array([i]), k + len(blocked))
                return {"runtime": rt, "method": "model", "items": self.describe_items(rt, *allowed(idx[0], scores[0]))}
            if sim is not None:
                row = sim.getrow(i)
                order = np.lexsort((row.indices, -row.data))
                return {"runtime": rt, "method": "model",
                        "items": self.describe_items(rt, *allowed(row.indices[order], row.data[order]))}
            if rt.item_vectors is not None:
                s = rt.item_vectors @ rt.item_vectors[i]          # (N,) cosine
                s[i] = -np.inf
                s[blocked] = -np.inf
                top = np.argpartition(-s, min(k, len(s) - 1))[:k]
                top = top[np.lexsort((top, -s[top]))]
                return {"runtime": rt, "method": "model", "items": self.describe_items(rt, top, s[top])}
        rows = self._read(
            """
            WITH u AS (SELECT DISTINCT user_id FROM events WHERE item_id = ?)
            SELECT e.item_id, count(DISTINCT e.user_id) AS n FROM events e JOIN u ON e.user_id = u.user_id
            WHERE e.item_id IS NOT NULL AND e.item_id <> ? GROUP BY e.item_id ORDER BY n DESC, e.item_id LIMIT ?
            """, [item_id, item_id, k * 4 + len(blocked)])
        if i is None and not rows:
            known = self._read("SELECT count(*) FROM events WHERE item_id = ?", [item_id])[0][0]
            if not known:
                raise NotFound(f"unknown item {item_id!r}: not in the model's catalogue and no events in the store")
        cidx = rt.catalogue.lookup([r[0] for r in rows], unknown="skip") if rows else np.zeros(0, np.int64)
        counts = np.array([r[1] for r in rows], dtype=np.float64)
        ok = (cidx >= 0) & ~np.isin(cidx, blocked)
        return {"runtime": rt, "method": "cooccurrence", "items": self.describe_items(rt, cidx[ok][:k], counts[ok][:k])}

    def health(self) -> dict:
        rt = self.runtime
        return {"status": "ok", "model": rt.describe() if rt else None,
                "cached_users": len(rt.histories) if rt else 0, "uptime_s": round(time.time() - self.started_at, 1)}


_EPOCH = datetime.datetime(1970, 1, 1)


def _same_event(held: tuple | None, r: EventRow) -> bool:
    """Whether a stored event (user_id, item_id, ts, event_type, value, quantity) has ``r``'s content."""
    if held is None:
        return True
    return (held[0], held[1], pd.Timestamp(held[2]), held[3], float(held[4]), float(held[5])) == (
        r.user_id, r.item_id, pd.Timestamp(r.timestamp).floor("us"), r.event_type, float(r.value), float(r.quantity))


def _events_until(h: UserHistory, t: pd.Timestamp) -> int:
    """How many of the history's events are before ``t`` (what an answer "as of t" can know: the models
    read the events strictly before their as_of)."""
    return int(np.searchsorted(h.times.astype(np.float64), t.value / 1e9, side="left"))


def _until(h: UserHistory, t: pd.Timestamp) -> UserHistory:
    """``h`` cut to its events before ``t``."""
    n = _events_until(h, t)
    return h if n == len(h.items) else UserHistory(h.items[:n], h.times[:n], h.event_types[:n], h.values[:n],
                                                   gen=h.gen)


def _merge(h: UserHistory, new: list[StoredEvent] | None, catalogue: Catalogue, gen: int) -> UserHistory:
    """``h`` plus newly stored events, in (time, arrival) order like the store's."""
    if not new:
        return UserHistory(h.items, h.times, h.event_types, h.values, gen=gen)
    items = np.array([catalogue.index.get(e.item_id, -1) if e.item_id is not None else -1 for e in new],
                     dtype=np.int64)
    times = np.array([(e.ts - _EPOCH) // datetime.timedelta(seconds=1) for e in new], dtype=np.int64)
    types = np.array([event_type_code(e.event_type) for e in new], dtype=np.int64)
    values = np.array([e.value for e in new], dtype=np.float32)
    all_times = np.concatenate([h.times, times])
    order = np.argsort(all_times, kind="stable")     # stable: earlier arrivals first at equal times
    return UserHistory(np.concatenate([h.items, items])[order], all_times[order],
                       np.concatenate([h.event_types, types])[order], np.concatenate([h.values, values])[order],
                       gen=gen)


def first_row(result: Any) -> Any:
    """The first row of a batch answer, as plain JSON-able values."""
    if isinstance(result, pd.DataFrame):
        return {k: _plain(v) for k, v in result.iloc[0].to_dict().items()}
    if isinstance(result, dict):
        return {str(k): _plain(v[0] if isinstance(v, (np.ndarray, list, tuple, torch.Tensor)) else v)
                for k, v in result.items()}
    if isinstance(result, (np.ndarray, torch.Tensor, list, tuple)):
        v = result[0]
        return {"value": _plain(v)} if not isinstance(v, dict) else {k: _plain(x) for k, x in v.items()}
    return _plain(result)


def _plain(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu().numpy()
    if isinstance(v, np.ndarray):
        return [_plain(x) for x in v.tolist()] if v.ndim else _plain(v.item())
    if isinstance(v, (np.floating, float)):
        return float(v) if np.isfinite(v) else None
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if v is pd.NaT or v is pd.NA:
        return None
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, pd.Timestamp):
        return v.isoformat()
    return v
