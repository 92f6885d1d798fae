"""A circuit breaker per cloud endpoint, shared by every client (and so every request) in the process.

Why: once a request has spent its retries on a dead endpoint, the next requests would each spend them again
(``timeout`` x attempts of dead time per request). After ``failures`` consecutive failed requests the breaker
opens: requests skip the cloud at once (the engine then continues locally or raises, per ``on_failure``).
After ``reset_s`` one request is let through as a half-open probe; its success closes the breaker (the cloud is
used again), its failure re-opens it for another ``reset_s``.

Only transient faults count (connection, timeout, 429, 5xx, malformed replies): a 401 or an unknown model
name is a configuration error that the user must see on every request, not a reason to stop asking.
"""

from __future__ import annotations

import threading
import time
from typing import Literal

from ..errors import CloudUnavailableError

BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """closed -> (``failures`` consecutive failures) -> open -> (``reset_s``) -> half_open -> one probe:
    success -> closed, failure -> open."""

    def __init__(self, endpoint: str, failures: int = 3, reset_s: float = 30.0,
                 clock: object = time.monotonic):
        self.endpoint = endpoint
        self.failures = failures
        self.reset_s = reset_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state: BreakerState = "closed"
        self._consecutive = 0
        self._opened_at = 0.0
        self._probe_in_flight = False
        self.opened = 0  # times the breaker opened (for reports)
        self.rejected = 0  # calls skipped while open

    def _now(self) -> float:
        return self._clock()  # type: ignore[operator,no-any-return]

    @property
    def enabled(self) -> bool:
        return self.failures > 0

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._current()

    def _current(self) -> BreakerState:
        if self._state == "open" and self._now() - self._opened_at >= self.reset_s:
            self._state = "half_open"
        return self._state

    def retry_in(self) -> float:
        """Seconds until the next probe is allowed (0 when the breaker is closed or half-open)."""
        with self._lock:
            if self._current() != "open":
                return 0.0
            return max(0.0, self.reset_s - (self._now() - self._opened_at))

    def before_call(self) -> bool:
        """Admit a call or raise ``CloudUnavailableError``. Returns True when the call is the half-open probe."""
        if not self.enabled:
            return False
        with self._lock:
            state = self._current()
            if state == "closed":
                return False
            if state == "half_open" and not self._probe_in_flight:
                self._probe_in_flight = True
                return True
            self.rejected += 1
            wait = max(0.0, self.reset_s - (self._now() - self._opened_at)) if state == "open" else 0.0
        raise CloudUnavailableError(
            f"cloud endpoint {self.endpoint} is skipped: its circuit breaker is open after {self.failures} "
            f"consecutive failed requests; one probe request will try it again in {wait:.1f} s"
            + (" (a probe is in flight now)" if state == "half_open" else "")
            + ". Fix: start or repair the server (`hybrid-llm cloud status`), set on_failure='local' to continue "
            "on the device meanwhile, or tune breaker_failures / breaker_reset_s (0 failures: no breaker).",
            retry_in_s=wait,
        )

    def record_success(self) -> None:
        with self._lock:
            self._state = "closed"
            self._consecutive = 0
            self._probe_in_flight = False

    def record_failure(self) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._consecutive += 1
            was_probe = self._probe_in_flight
            self._probe_in_flight = False
            if was_probe or self._consecutive >= self.failures:
                if self._state != "open":
                    self.opened += 1
                self._state = "open"
                self._opened_at = self._now()

    def release_probe(self) -> None:
        """A probe that ended without a verdict (e.g. cancelled): let the next call probe instead."""
        with self._lock:
            self._probe_in_flight = False

    def reset(self) -> None:
        with self._lock:
            self._state = "closed"
            self._consecutive = 0
            self._probe_in_flight = False


_BREAKERS: dict[tuple[str, int, float], CircuitBreaker] = {}
_BREAKERS_LOCK = threading.Lock()


def breaker_for(endpoint: str, failures: int, reset_s: float) -> CircuitBreaker:
    """The shared breaker of ``endpoint`` (clients with equal breaker settings share one)."""
    key = (endpoint, failures, reset_s)
    with _BREAKERS_LOCK:
        if key not in _BREAKERS:
            _BREAKERS[key] = CircuitBreaker(endpoint, failures, reset_s)
        return _BREAKERS[key]


def reset_breakers() -> None:
    """Close every breaker (tests, or after repairing a server in a long-lived process)."""
    with _BREAKERS_LOCK:
        for b in _BREAKERS.values():
            b.reset()
