"""Service settings, read from the environment (``VALUEREC_*``) once at start-up.

API keys never live in code: ``VALUEREC_API_KEYS`` holds ``key:scope,scope;key2:scope`` or
``VALUEREC_API_KEYS_FILE`` names a file with one ``key:scope,scope`` per line (``#`` comments allowed).
"""

from __future__ import annotations

import ipaddress
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from valuerec.data.schema import DataError

SCOPES = ("read", "write", "admin")


def _int(env: dict, name: str, default: int, lo: int = 1) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = int(raw)
    except ValueError:
        raise DataError(f"${name}={raw!r}: expected an integer") from None
    if v < lo:
        raise DataError(f"${name}={raw!r}: must be at least {lo}")
    return v


def _float(env: dict, name: str, default: float, positive: bool = True) -> float:
    """A finite number (above 0 with ``positive``, else at least 0): timeouts and limits, never nan or inf."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = float(raw)
    except ValueError:
        raise DataError(f"${name}={raw!r}: expected a number") from None
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        raise DataError(f"${name}={raw!r}: expected a finite number {'above' if positive else 'of at least'} 0")
    return v


def _bool(env: dict, name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise DataError(f"${name}={raw!r}: expected true/false")


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` only accepts connections from this machine (localhost, 127.0.0.0/8, ::1)."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_api_keys(text: str, source: str) -> dict[str, frozenset[str]]:
    """``key:read,write;key2:admin`` (or one entry per line) -> {key: scopes}. ``admin`` implies all."""
    keys: dict[str, frozenset[str]] = {}
    entries = [e.strip() for line in text.splitlines() for e in line.split(";")]
    for n, entry in enumerate(e for e in entries if e and not e.startswith("#")):
        key, sep, scopes = entry.partition(":")
        key = key.strip()
        if not sep or not key:
            raise DataError(f"{source}: entry {n + 1} has no 'key:scopes' form")
        if len(key) < 8:
            raise DataError(f"{source}: entry {n + 1}: API keys must be at least 8 characters")
        got = {s.strip() for s in scopes.split(",") if s.strip()}
        bad = got - set(SCOPES)
        if bad or not got:
            raise DataError(f"{source}: entry {n + 1}: scopes must be among {list(SCOPES)} (got {sorted(got)})")
        if "admin" in got:
            got |= set(SCOPES)
        keys[key] = frozenset(got)
    return keys


@dataclass
class Settings:
    model_dir: Path | None = None          # artefact dir of the model to serve
    models_root: Path | None = None        # versioned model dirs; reload picks the newest
    store: Path | None = None              # DuckDB event store
    api_keys: dict[str, frozenset[str]] = field(default_factory=dict)
    auth_disabled: bool = False            # only for local experiments: every request gets every scope
    max_k: int = 100
    max_batch: int = 1000                  # events per POST /v1/events
    max_body_bytes: int = 1_000_000
    cache_users: int = 200_000             # per-user histories kept in memory (LRU)
    preload_max_events: int = 5_000_000    # load every history at start-up when the store is this small
    popular_ttl_s: float = 30.0            # how often the new-user fallback re-counts popularity
    write_timeout_s: float = 60.0          # POST /v1/events answers 503 when the store has not committed by then
    max_future_h: float = 24.0             # POST /v1/events rejects events this far past the server clock
    explain_max_events: int = 1000         # /explain occludes a user's most recent events only (cost ~ n^2)
    ann: str = "auto"                      # item index for retrieval: auto (catalogues >= ann_min_items), on, off
    ann_min_items: int = 200_000
    gil_switch_ms: float = 0.5             # Python's thread switch interval in the server (default 5 ms)
    torch_threads: int = 1
    duckdb_threads: int = 1                # the store's query threads (the service is mostly point reads/writes)
    metrics_public: bool = True            # /metrics without a key (it holds no user data)
    host: str | None = None                # where the server listens (valuerec serve sets it from --host)
    snapshot_dir: Path | None = None       # POST /v1/admin/snapshot writes here (default: STORE's folder/snapshots)
    snapshot_keep: int = 3                 # ... and keeps this many of its snapshots, the newest

    @classmethod
    def from_env(cls, env: dict | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)
        keys: dict[str, frozenset[str]] = {}
        if env.get("VALUEREC_API_KEYS"):
            keys.update(parse_api_keys(env["VALUEREC_API_KEYS"], "$VALUEREC_API_KEYS"))
        if env.get("VALUEREC_API_KEYS_FILE"):
            p = Path(env["VALUEREC_API_KEYS_FILE"])
            if not p.exists():
                raise DataError(f"$VALUEREC_API_KEYS_FILE={p}: no such file")
            keys.update(parse_api_keys(p.read_text(encoding="utf-8-sig"), str(p)))   # a BOM is not part of a key
        opt_path = (lambda name: Path(env[name]) if env.get(name) else None)
        s = cls(
            model_dir=opt_path("VALUEREC_MODEL_DIR"),
            models_root=opt_path("VALUEREC_MODELS_ROOT"),
            store=opt_path("VALUEREC_STORE"),
            api_keys=keys,
            auth_disabled=_bool(env, "VALUEREC_AUTH_DISABLED", False),
            max_k=_int(env, "VALUEREC_MAX_K", 100),
            max_batch=_int(env, "VALUEREC_MAX_BATCH", 1000),
            max_body_bytes=_int(env, "VALUEREC_MAX_BODY_BYTES", 1_000_000),
            cache_users=_int(env, "VALUEREC_CACHE_USERS", 200_000),
            preload_max_events=_int(env, "VALUEREC_PRELOAD_MAX_EVENTS", 5_000_000, lo=0),
            popular_ttl_s=_float(env, "VALUEREC_POPULAR_TTL_S", 30.0, positive=False),
            write_timeout_s=_float(env, "VALUEREC_WRITE_TIMEOUT_S", 60.0),
            max_future_h=_float(env, "VALUEREC_MAX_FUTURE_H", 24.0, positive=False),
            explain_max_events=_int(env, "VALUEREC_EXPLAIN_MAX_EVENTS", 1000),
            ann=(env.get("VALUEREC_ANN") or "auto").strip().lower(),
            ann_min_items=_int(env, "VALUEREC_ANN_MIN_ITEMS", 200_000),
            gil_switch_ms=_float(env, "VALUEREC_GIL_SWITCH_MS", 0.5),
            torch_threads=_int(env, "VALUEREC_TORCH_THREADS", 1),
            duckdb_threads=_int(env, "VALUEREC_DUCKDB_THREADS", 1),
            metrics_public=_bool(env, "VALUEREC_METRICS_PUBLIC", True),
            host=env.get("VALUEREC_HOST") or None,
            snapshot_dir=opt_path("VALUEREC_SNAPSHOT_DIR"),
            snapshot_keep=_int(env, "VALUEREC_SNAPSHOT_KEEP", 3),
        )
        s.check()
        return s

    def check(self) -> None:
        if self.store is None:
            raise DataError("no event store: set $VALUEREC_STORE (or valuerec serve --store DB)")
        if self.model_dir is None and self.models_root is None:
            raise DataError("no model: set $VALUEREC_MODEL_DIR or $VALUEREC_MODELS_ROOT "
                            "(or valuerec serve --model DIR / --models-root DIR)")
        if not 0.01 <= self.gil_switch_ms <= 100:
            raise DataError(f"$VALUEREC_GIL_SWITCH_MS={self.gil_switch_ms}: expected 0.01..100 milliseconds")
        if self.ann not in ("auto", "on", "off"):
            raise DataError(f"$VALUEREC_ANN={self.ann!r}: expected auto, on or off")
        for name, v, lo in (("MAX_FUTURE_H", self.max_future_h, 0.0), ("POPULAR_TTL_S", self.popular_ttl_s, 0.0),
                            ("WRITE_TIMEOUT_S", self.write_timeout_s, None)):
            if not (math.isfinite(v) and (v > 0 if lo is None else v >= lo)):
                raise DataError(f"$VALUEREC_{name}={v}: expected a finite number "
                                + ("above 0" if lo is None else "of at least 0"))
        if self.auth_disabled and not is_loopback(self.host):
            raise DataError("serving without API keys (--no-auth, $VALUEREC_AUTH_DISABLED) is only allowed on a "
                            f"loopback host (localhost, 127.0.0.0/8, ::1); the host is "
                            f"{self.host or 'not given: set $VALUEREC_HOST to the host uvicorn listens on'}")
        if not self.api_keys and not self.auth_disabled:
            raise DataError("no API keys: set $VALUEREC_API_KEYS ('key:read,write;key2:admin') or "
                            "$VALUEREC_API_KEYS_FILE; $VALUEREC_AUTH_DISABLED=1 turns auth off for local use")
