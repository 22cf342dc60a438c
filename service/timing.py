"""Where a request's time goes: the model run vs everything else (the in-app overhead).

:class:`~service.middleware.MetricsMiddleware` opens a :class:`RequestTiming` per HTTP request (a context
variable, so the batcher can reach it from inside the request's tasks); the batcher adds the wall time of
every ONNX Runtime run that carried rows of the request (:func:`add_model_time`), and the middleware the
time the app spent waiting for the request body to arrive from the client (:meth:`RequestTiming.receive`).
It then reports ``Server-Timing: app;dur=<ms>, model;dur=<ms>, body;dur=<ms>`` on the response (``app``:
in-app time until the response starts, ``model``: the ONNX Runtime runs, ``body``: waiting for the client's
bytes, part of ``app``) and observes ``trdetr_http_overhead_seconds`` = app - model - body for requests that
ran the model: what the app itself costs, without the model and without the client's or the network's pace.
"""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass, field

from starlette.types import Message, Receive


@dataclass
class RequestTiming:
    """One request's clock: when it arrived, the seconds its model runs took and the seconds spent waiting for
    its body."""

    start: float = field(default_factory=time.perf_counter)
    model_s: float = 0.0
    model_runs: int = 0
    body_s: float = 0.0

    def elapsed_s(self) -> float:
        return time.perf_counter() - self.start

    def overhead_s(self) -> float:
        """In-app time so far minus the model runs and the wait for the request body."""
        return self.elapsed_s() - self.model_s - self.body_s

    def server_timing(self) -> bytes:
        """The ``Server-Timing`` header value (milliseconds)."""
        app_ms = 1000.0 * self.elapsed_s()
        return (f"app;dur={app_ms:.3f}, model;dur={1000.0 * self.model_s:.3f}, "
                f"body;dur={1000.0 * self.body_s:.3f}").encode()

    def receive(self, receive: Receive) -> Receive:
        """``receive`` that adds the time spent in it waiting for request body bytes to :attr:`body_s`."""

        async def timed() -> Message:
            start = time.perf_counter()
            message = await receive()
            if message["type"] == "http.request":
                self.body_s += time.perf_counter() - start
            return message

        return timed


_TIMING: contextvars.ContextVar[RequestTiming | None] = contextvars.ContextVar("trdetr_request_timing", default=None)


def start_request() -> RequestTiming:
    """A fresh timing for the current request (set in the middleware's context)."""
    timing = RequestTiming()
    _TIMING.set(timing)
    return timing


def add_model_time(seconds: float, runs: int) -> None:
    """Count ``runs`` model runs taking ``seconds`` towards the current request (no-op outside one)."""
    timing = _TIMING.get()
    if timing is not None:
        timing.model_s += seconds
        timing.model_runs += runs
