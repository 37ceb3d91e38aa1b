"""Loaded detectors for a serving face (the daemon, the HTTP API): an LRU cache of Scorers bounded by bytes, the latest version of each name,
and the background refresh that notices a newly saved version.

Two dicts serve the per-request lookups without awaiting anything: ``hot`` maps (name,
requested version or None) to a Scorer, ``native`` maps the same keys to the Scorer's
``ServedForest`` for the daemon's native path. Both are emptied whenever a cached entry or a
latest version changes and refilled by :meth:`ModelCache.cached`; ``native_sink`` (the native
connection loop, when it runs) mirrors ``native``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Optional

from pynomaly.domain import DetectorNotReadyError
from pynomaly.serving.sources import DetectorNotFound, DetectorUnavailable

log = logging.getLogger("pynomaly.serving")


class _Latest:
    __slots__ = ("version", "checked", "refreshing", "warned_for", "changed_meanwhile")

    def __init__(self, version: int, checked: float):
        self.version = version
        self.checked = checked
        self.refreshing = False
        self.warned_for = None  # the older version a refresh found (logged once)
        self.changed_meanwhile = False  # told of a change during a refresh: refresh again after it


WATCHED_REFRESH_S = 30.0  # the periodic check's interval once the source tells of changes


class ModelCache:
    """Scorers of one source, loaded in a thread pool and kept while they fit in ``max_bytes``."""

    def __init__(self, source, run, *, max_bytes: int, refresh_interval: float, counters):
        self.source = source
        self._run = run  # run(fn, *args) -> awaitable, in the face's thread pool
        self.max_bytes = max_bytes
        self.refresh_interval = refresh_interval
        self.counters = counters
        self.entries: "collections.OrderedDict[tuple, object]" = collections.OrderedDict()
        self.size = 0
        self.latest: dict = {}
        self.hot: dict = {}
        self.native: dict = {}
        # Versions some request named by number; any other version is dropped as soon as a
        # newer latest one is served (it used to stay until the byte bound: 107 superseded
        # versions after 107 saves).
        self.pinned: set = set()
        self.native_sink = None  # set_model(name, version, served) / clear_models(): netloop.NetPump
        self._loading: dict = {}

    def __len__(self) -> int:
        return len(self.entries)

    def _forget_lookups(self) -> None:
        self.hot.clear()
        self.native.clear()
        if self.native_sink is not None:
            self.native_sink.clear_models()

    def cached(self, name: str, version: Optional[int]):
        """The Scorer for (name, version) if it is loaded, else None (remembered in ``hot``)."""
        v = version
        if v is None:
            lt = self.latest.get(name)
            if lt is None:
                return None
            v = lt.version
        s = self.entries.get((name, v))
        if s is not None:
            self.hot[(name, version)] = s
            if s.native is not None and (name, version) not in self.native:
                self.native[(name, version)] = s.native
                if self.native_sink is not None:
                    self.native_sink.set_model(name, version, s.native)
        return s

    def used(self, name: str, version: int, n_requests: int, now: float) -> None:
        """Bookkeeping for requests served from the cache: hits, LRU order, freshness."""
        self.counters["cache_hits"] += n_requests
        key = (name, version)
        if key in self.entries:
            self.entries.move_to_end(key)  # LRU: once per batch, not per request
        lt = self.latest.get(name)
        if lt is not None and not lt.refreshing and now - lt.checked > self.refresh_interval:
            lt.refreshing = True
            asyncio.get_running_loop().create_task(self._refresh(name, lt))

    async def resolve(self, name: str, version: Optional[int]):
        """The Scorer for (name, version or latest), loading it if needed."""
        s = self.cached(name, version)
        if s is not None:
            return s
        explicit = version is not None
        if version is None:
            v = await self._run(self.source.latest_version, name)
            lt = self.latest.get(name)
            if lt is None or lt.version != v:
                self.latest[name] = _Latest(v, time.monotonic())
                self._forget_lookups()
            version = v
        s = self.entries.get((name, version))
        if s is None:
            s = await self._load(name, version)
        if explicit:  # only versions that exist: a client cannot grow this set with made-up numbers
            self.pinned.add((name, version))
        return s

    async def _load(self, name: str, version: int):
        key = (name, version)
        fut = self._loading.get(key)
        if fut is not None:
            return await asyncio.shield(fut)
        self.counters["cache_misses"] += 1
        fut = self._run(self._load_sync, name, version)
        self._loading[key] = fut
        try:
            s = await fut
        finally:
            del self._loading[key]
        self._insert(s)
        return s

    def _load_sync(self, name: str, version: int):
        s = self.source.get(name, version)
        s.size_bytes  # computed here, in the pool, not on the event loop
        return s

    def _insert(self, s) -> None:
        self._forget_lookups()
        key = (s.version.name, s.version.version)
        old = self.entries.pop(key, None)
        if old is not None:
            self.size -= old.size_bytes
        self.entries[key] = s
        self.size += s.size_bytes
        while self.size > self.max_bytes and len(self.entries) > 1:
            (name, v), ev = self.entries.popitem(last=False)
            self.size -= ev.size_bytes
            self.pinned.discard((name, v))
            log.info("cache: evicted %s v%d (%d bytes)", name, v, ev.size_bytes)
        if key in self.entries:
            # Served natively from now on, not from the next request that looks it up: frames
            # the native loop has already read would otherwise all take the Python path.
            self.cached(key[0], key[1])
            lt = self.latest.get(key[0])
            if lt is not None and lt.version == key[1]:
                self.cached(key[0], None)

    def adopt(self, scorer, replaces) -> None:
        """Serve ``scorer`` as its name's latest version from now on: a version this process
        saved from a model it serves (a learner's checkpoint), kept in hand rather than loaded
        back, since the model has learned more since. ``replaces``: the Scorer it took over
        from (same model, older number), dropped, since its model no longer holds that
        version's state; a request naming that version loads the stored one."""
        old = (replaces.version.name, replaces.version.version)
        gone = self.entries.pop(old, None)
        if gone is not None:
            self.size -= gone.size_bytes
        self.pinned.discard(old)
        s = scorer.version
        self.latest[s.name] = _Latest(s.version, time.monotonic())
        self._insert(scorer)

    async def _refresh(self, name: str, lt: _Latest) -> None:
        try:
            v = await self._run(self.source.latest_version, name)
            if v < lt.version:
                # The source went back (its database lost versions, a backup was restored):
                # never switch to an older model silently. Keep serving what was asked for,
                # say so once, and let an operator decide (doctor, then reload).
                if lt.warned_for != v:
                    lt.warned_for = v
                    log.error("detector %r: the latest version went back from %d to %d; still serving v%d. "
                              "Run `pynomaly doctor`, then reload to serve v%d", name, lt.version, v, lt.version, v)
            elif v != lt.version:
                await self._load(name, v)  # load first, switch after: requests never wait
                log.info("detector %r: now serving version %d (was %d)", name, v, lt.version)
                old, lt.version = lt.version, v
                self._forget_lookups()
                if (name, old) not in self.pinned:
                    gone = self.entries.pop((name, old), None)
                    if gone is not None:
                        self.size -= gone.size_bytes
                        log.info("cache: dropped superseded %s v%d (%d bytes)", name, old, gone.size_bytes)
        except (DetectorNotFound, DetectorUnavailable, DetectorNotReadyError) as e:
            # Deleted or archived: stop serving it; the next request gets the error.
            log.info("detector %r: no longer served: %s", name, e)
            self.invalidate(name)
        except Exception as e:  # noqa: BLE001 - a refresh failure keeps the current version
            log.warning("detector %r: refresh failed, keeping v%d: %s", name, lt.version, e)
        finally:
            lt.checked = time.monotonic()
            lt.refreshing = False
            if lt.changed_meanwhile and self.latest.get(name) is lt:
                lt.changed_meanwhile = False
                self.changed(name)

    def follow_source(self, loop) -> bool:
        """Be told of other processes' changes when the source can tell (a database home:
        see ``RepositorySource.watch``), so a new version is served within about a second
        without a shorter ``refresh_interval``; a folder home keeps polling. ``loop``: the
        face's running event loop (the cache is confined to it)."""
        watch = getattr(self.source, "watch", None)
        if watch is None:
            return False
        if not watch(lambda name: loop.call_soon_threadsafe(self.changed, name)):
            return False
        # Told, rather than asking: the periodic check becomes a slow safety net (changes missed
        # while the listener reconnected are covered by its refresh-everything call).
        self.refresh_interval = max(self.refresh_interval, WATCHED_REFRESH_S)
        return True

    def changed(self, name: Optional[str]) -> None:
        """``name`` changed elsewhere (None: perhaps every name): refresh its latest version
        now, in the background, as the periodic refresh would (load first, then switch;
        deleted or archived: stop serving it). On the event loop; the hot path is untouched."""
        names = list(self.latest) if name is None else [name]
        for n in names:
            lt = self.latest.get(n)
            if lt is None:
                continue
            if lt.refreshing:  # it may have read the source before this change committed
                lt.changed_meanwhile = True
            else:
                lt.refreshing = True
                asyncio.get_running_loop().create_task(self._refresh(n, lt))

    def invalidate(self, name: Optional[str]) -> list:
        """Drop the cached versions of ``name`` (all names when None); returns "name@version"s."""
        self._forget_lookups()
        keys = [k for k in self.entries if name is None or k[0] == name]
        for k in keys:
            self.size -= self.entries.pop(k).size_bytes
            self.pinned.discard(k)
        if name is None:
            self.latest.clear()
        else:
            self.latest.pop(name, None)
        return sorted({f"{k[0]}@{k[1]}" for k in keys})
