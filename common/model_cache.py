"""LRU cache of loaded models, bounded by entry count and bytes.

- Single-flight: one load per key however many requests wait for it; loads run in an executor.
- An entry in use is never freed: eviction is strict LRU, but an evicted entry that requests still
  hold is only closed when the last of them releases it (memory may briefly exceed the budget).
- Hot swap: `replace` installs a value loaded elsewhere; requests holding the old one finish on it and
  the old one is closed by its last user. A load that was under way meanwhile yields to the swap.
- Shared parts: a value may hold something shared with other values (a split bundle's backbone, named
  by `shared`). The limits count each distinct shared part once, as one entry and its bytes once, for
  as long as a cached value holds it. Evicting values is the only way room is made: the shared part is
  freed by its owner (the backbone pool) when the last value holding it closes. A lone value that fits
  by itself is never evicted for its shared part's sake (max_entries=1 would reload it every request).
- Events go to an observer (metrics) so this module stays free of HTTP and Prometheus.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

log = logging.getLogger("model_cache")


class Closable(Protocol):
    nbytes: int

    def close(self) -> None: ...


V = TypeVar("V", bound=Closable)


class CacheObserver(Protocol):
    def hit(self, key: str) -> None: ...
    def miss(self, key: str) -> None: ...
    def loaded(self, key: str, seconds: float, ok: bool) -> None: ...
    def evicted(self, key: str, reason: str) -> None: ...


class NullObserver:
    def hit(self, key: str) -> None:
        pass

    def miss(self, key: str) -> None:
        pass

    def loaded(self, key: str, seconds: float, ok: bool) -> None:
        pass

    def evicted(self, key: str, reason: str) -> None:
        pass


# What a value shares with others: (key, bytes), e.g. (backbone sha256, backbone bytes); None: nothing.
SharedPart = tuple[str, int] | None


@dataclass(eq=False)
class CacheEntry(Generic[V]):
    key: str
    value: V
    nbytes: int
    shared: SharedPart = None
    refs: int = 0
    evicted: bool = False
    closed: bool = False
    loaded_at: float = field(default_factory=time.time)


class ModelCache(Generic[V]):
    def __init__(
        self,
        loader: Callable[[str], V],
        executor: Executor,
        max_entries: int = 5,
        max_bytes: int = 2 * 1024**3,
        observer: CacheObserver | None = None,
        shared: Callable[[V], SharedPart] | None = None,
    ) -> None:
        self._loader = loader
        self._shared = shared
        self._executor = executor
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._observer: CacheObserver = observer or NullObserver()
        self._entries: OrderedDict[str, CacheEntry[V]] = OrderedDict()
        self._loading: dict[str, asyncio.Future[CacheEntry[V]]] = {}
        self._draining: set[CacheEntry[V]] = set()
        self._replaced: dict[str, int] = {}  # per key: how many times `replace` installed a value

    # -- use -------------------------------------------------------------------------------------
    @asynccontextmanager
    async def use(self, key: str) -> AsyncIterator[V]:
        """Hold a loaded value for the duration of the block; it cannot be freed meanwhile."""
        entry = await self._acquire(key)
        try:
            yield entry.value
        finally:
            entry.refs -= 1
            if entry.refs == 0 and entry.evicted:
                self._close(entry)
            self._enforce_limits()

    async def _acquire(self, key: str) -> CacheEntry[V]:
        while True:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self._observer.hit(key)
            else:
                self._observer.miss(key)
                entry = await self._load_once(key)
            # Between a load finishing and this waiter resuming, the entry may have been evicted
            # and closed by other traffic; a closed entry is never handed out.
            if not entry.closed:
                entry.refs += 1
                return entry

    async def _load_once(self, key: str) -> CacheEntry[V]:
        pending = self._loading.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[CacheEntry[V]] = loop.create_future()
        self._loading[key] = future
        replaced = self._replaced.get(key, 0)
        start = time.perf_counter()
        try:
            value = await loop.run_in_executor(self._executor, self._loader, key)
        except BaseException as exc:
            self._observer.loaded(key, time.perf_counter() - start, False)
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters may be zero
            raise
        finally:
            self._loading.pop(key, None)
        seconds = time.perf_counter() - start
        self._observer.loaded(key, seconds, True)
        swapped_in = self._entries.get(key)
        if swapped_in is not None and self._replaced.get(key, 0) != replaced:
            # A swap installed a value while this load ran: it is the newer one, keep it.
            value.close()
            future.set_result(swapped_in)
            return swapped_in
        entry = self._entry(key, value)
        old = self._entries.pop(key, None)
        if old is not None:
            self._retire(old, "replaced")
        self._entries[key] = entry
        log.info("model loaded", extra={"fields": {"key": key, "seconds": round(seconds, 3)}})
        self._enforce_limits(protect=key)
        future.set_result(entry)
        return entry

    # -- replace (hot swap) ------------------------------------------------------------------------
    def replace(self, key: str, value: V) -> None:
        """Install a value loaded elsewhere; requests holding the old one finish on it."""
        entry = self._entry(key, value)
        old = self._entries.pop(key, None)
        if old is not None:
            self._retire(old, "replaced")
        self._entries[key] = entry
        self._replaced[key] = self._replaced.get(key, 0) + 1
        self._enforce_limits(protect=key)

    def _entry(self, key: str, value: V) -> CacheEntry[V]:
        shared = self._shared(value) if self._shared is not None else None
        return CacheEntry(key=key, value=value, nbytes=int(value.nbytes), shared=shared)

    def invalidate(self, key: str) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._retire(old, "invalidated")

    # -- eviction ----------------------------------------------------------------------------------
    def _enforce_limits(self, protect: str | None = None) -> None:
        # Shared parts count too, but only evicting values frees them (with the last value holding one).
        while self.size > self.max_entries or self.bytes > self.max_bytes:
            if len(self._entries) == 1 and next(iter(self._entries.values())).nbytes <= self.max_bytes:
                return  # a lone value that fits stays with what it shares: evicting it would reload both
            victim = next((e for k, e in self._entries.items() if k != protect), None)
            if victim is None:
                return
            # Strict LRU: an entry in use leaves the cache now but is freed by its last user.
            del self._entries[victim.key]
            self._retire(victim, "capacity")

    def _retire(self, entry: CacheEntry[V], reason: str) -> None:
        entry.evicted = True
        self._observer.evicted(entry.key, reason)
        log.info("model evicted", extra={"fields": {"key": entry.key, "reason": reason, "refs": entry.refs}})
        if entry.refs == 0:
            self._close(entry)
        else:
            self._draining.add(entry)

    def _close(self, entry: CacheEntry[V]) -> None:
        if not entry.closed:
            entry.closed = True
            entry.value.close()
        self._draining.discard(entry)

    # -- introspection -----------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """What `max_entries` bounds: cached values plus the distinct shared parts they hold."""
        return len(self._entries) + len(self.shared())

    @property
    def bytes(self) -> int:
        """What `max_bytes` bounds: the values' own bytes plus each distinct shared part's once."""
        return sum(e.nbytes for e in self._entries.values()) + sum(self.shared().values())

    def shared(self) -> dict[str, int]:
        """The distinct shared parts cached values hold: key -> bytes."""
        return {e.shared[0]: e.shared[1] for e in self._entries.values() if e.shared is not None}

    @property
    def in_use(self) -> int:
        return sum(1 for e in self._entries.values() if e.refs) + len(self._draining)

    def keys(self) -> list[str]:
        """Least recently used first."""
        return list(self._entries)

    def peek(self, key: str) -> V | None:
        entry = self._entries.get(key)
        return entry.value if entry is not None else None

    def close_all(self) -> None:
        for entry in list(self._entries.values()):
            self._close(entry)
        self._entries.clear()
