"""Secrets at rest: API tokens and session tokens as sha256 (they are long and random), passwords
with scrypt (they are not).

Checking a token costs one sha256. Checking a password costs tens of milliseconds of CPU and 16 MiB,
on purpose, so `PasswordPool` runs those checks on a few threads of their own with a bounded wait:
a flood of failed logins then fills that pool and gets "busy" answers, instead of taking the shared
thread pool (and the cores) that image queries, uploads and the database driver need.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import secrets
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

from common.ids import new_id

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def new_api_token() -> str:
    """43 url-safe characters after an `io_` prefix; the SDK needs its first 20 to be [A-Za-z0-9_]."""
    while True:
        token = "io_" + secrets.token_urlsafe(32)
        if all(c.isalnum() or c == "_" for c in token[:20]):
            return token


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_session_token() -> str:
    return secrets.token_urlsafe(32)


def new_password() -> str:
    return secrets.token_urlsafe(12)


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return f"scrypt${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str | None) -> bool:
    if not stored or not stored.startswith("scrypt$"):
        return False
    _, salt_hex, digest_hex = stored.split("$", 2)
    digest = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt_hex), dklen=32, **_SCRYPT)
    return hmac.compare_digest(digest.hex(), digest_hex)


def new_user_id() -> str:
    return new_id("usr")


def new_token_id() -> str:
    return new_id("tok")


class PasswordPoolBusy(Exception):
    """Every worker and queue slot of the pool is taken; the caller should try again shortly."""


class PasswordPool:
    """`workers` threads for scrypt, at most `queue` checks waiting for one. Used from one event loop.

    Each worker rests between checks in proportion to the CPU time of the last one, so that it uses at
    most `cpu_share` of a core however many logins arrive: a storm of them costs the rest of the service
    at most `workers x cpu_share` cores. A check that finds its worker rested starts at once, so a login
    on a quiet server waits for nothing but its own scrypt.
    """

    def __init__(self, workers: int, queue: int, cpu_share: float = 1.0) -> None:
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="password")
        self._capacity = workers + queue
        self._held = 0
        self._rest_factor = 1.0 / cpu_share - 1.0
        self._worker = threading.local()

    @property
    def full(self) -> bool:
        return self._held >= self._capacity

    async def verify(self, password: str, stored: str) -> bool:
        if self.full:
            raise PasswordPoolBusy("too many password checks under way")
        loop = asyncio.get_running_loop()
        self._held += 1
        # The slot is released when the check itself ends (not when a cancelled caller stops waiting),
        # so the bound holds for the threads, not only for the callers.
        future: Future[bool] = self._executor.submit(self._paced_verify, password, stored)
        future.add_done_callback(lambda _: self._release_soon(loop))
        return await asyncio.wrap_future(future)

    def _paced_verify(self, password: str, stored: str) -> bool:
        """On a worker thread: rest if the last check asks for it, then check."""
        rest_s = getattr(self._worker, "rested_at", 0.0) - time.monotonic()
        if rest_s > 0:
            time.sleep(rest_s)
        cpu_start = time.thread_time()
        try:
            return verify_password(password, stored)
        finally:
            spent_s = time.thread_time() - cpu_start
            self._worker.rested_at = time.monotonic() + spent_s * self._rest_factor

    def _release_soon(self, loop: asyncio.AbstractEventLoop) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is counting any more
            loop.call_soon_threadsafe(self._release)

    def _release(self) -> None:
        self._held -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
