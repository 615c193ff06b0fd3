"""Load generation and latency statistics, independent of what is being called.

- Closed loop: ``concurrency`` workers, each sending its next request when the previous one is answered.
- Open loop: requests start at scheduled arrival times (Poisson or constant) whatever the answers do; latency is
  measured from the *scheduled* time, so a saturated server cannot hide its queueing (no coordinated omission).

Each level is measured in windows until stable, as perf_analyzer does: the last ``stable_windows`` windows agree
on throughput and p50 latency within ``stability`` of their mean, or ``max_windows`` is reached. The reported
figures merge the samples of the last windows.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

# A sender answers one request (its argument: the request's index); it raises on error. It is called from many
# threads at once, so it keeps any client that is not thread-safe per thread.
Sender = Callable[[int], None]
# An async starter begins one request and returns at once; ``done(error_or_None)`` is called when it is answered.
AsyncStarter = Callable[[int, Callable[[BaseException | None], None]], None]


class Arrivals(str, Enum):
    POISSON = "poisson"
    CONSTANT = "constant"


@dataclass(frozen=True)
class WindowPolicy:
    window_s: float = 2.0
    warmup_s: float = 1.0
    stability: float = 0.10
    stable_windows: int = 3
    max_windows: int = 8


@dataclass
class Samples:
    """Latencies (s) of answered requests and the errors of one measurement."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    error_messages: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def add_error(self, exc: BaseException) -> None:
        self.errors += 1
        key = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        self.error_messages[key] = self.error_messages.get(key, 0) + 1

    def merge(self, other: Samples) -> Samples:
        merged = dict(self.error_messages)
        for key, count in other.error_messages.items():
            merged[key] = merged.get(key, 0) + count
        return Samples(
            self.latencies + other.latencies, self.errors + other.errors, merged, self.elapsed_s + other.elapsed_s
        )

    @property
    def throughput_rps(self) -> float:
        return len(self.latencies) / self.elapsed_s if self.elapsed_s > 0 else 0.0


def latency_summary_ms(latencies: list[float]) -> dict[str, float]:
    """avg, p50, p90, p95, p99 in milliseconds (nearest-rank percentiles, as perf_analyzer)."""
    if not latencies:
        return {k: float("nan") for k in ("avg", "p50", "p90", "p95", "p99")}
    ordered = np.sort(np.asarray(latencies)) * 1e3
    n = len(ordered)

    def rank(p: float) -> float:
        return float(ordered[min(n - 1, max(0, int(np.ceil(p / 100 * n)) - 1))])

    return {"avg": float(ordered.mean()), "p50": rank(50), "p90": rank(90), "p95": rank(95), "p99": rank(99)}


class _Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.samples = Samples()

    def ok(self, latency: float) -> None:
        with self.lock:
            self.samples.latencies.append(latency)

    def error(self, exc: BaseException) -> None:
        with self.lock:
            self.samples.add_error(exc)

    def take(self, elapsed: float) -> Samples:
        with self.lock:
            taken, self.samples = self.samples, Samples()
        taken.elapsed_s = elapsed
        return taken


def _stable(windows: list[Samples], policy: WindowPolicy) -> bool:
    if len(windows) < policy.stable_windows:
        return False
    last = windows[-policy.stable_windows :]
    rates = np.array([w.throughput_rps for w in last])
    p50s = np.array([np.median(w.latencies) if w.latencies else np.nan for w in last])
    if not np.all(np.isfinite(p50s)) or rates.mean() == 0:
        return False
    return bool(
        np.all(np.abs(rates - rates.mean()) <= policy.stability * rates.mean())
        and np.all(np.abs(p50s - p50s.mean()) <= policy.stability * p50s.mean())
    )


@dataclass
class LevelResult:
    samples: Samples
    windows: int
    stable: bool


def _measure_windows(recorder: _Recorder, policy: WindowPolicy, stop: threading.Event) -> LevelResult:
    time.sleep(policy.warmup_s)
    recorder.take(policy.warmup_s)  # discard warm-up samples
    windows: list[Samples] = []
    while len(windows) < policy.max_windows:
        start = time.perf_counter()
        time.sleep(policy.window_s)
        windows.append(recorder.take(time.perf_counter() - start))
        if _stable(windows, policy):
            break
    stop.set()
    merged = Samples()
    for window in windows[-policy.stable_windows :]:
        merged = merged.merge(window)
    return LevelResult(merged, len(windows), _stable(windows, policy))


def closed_loop(send: Sender, concurrency: int, policy: WindowPolicy) -> LevelResult:
    """``concurrency`` workers back to back until the measurement is stable."""
    recorder, stop = _Recorder(), threading.Event()
    counter = iter(range(1 << 62))
    counter_lock = threading.Lock()

    def worker() -> None:
        while not stop.is_set():
            with counter_lock:
                request = next(counter)
            start = time.perf_counter()
            try:
                send(request)
            except Exception as exc:  # noqa: BLE001 - every failure is counted, none stops the run
                recorder.error(exc)
                continue
            recorder.ok(time.perf_counter() - start)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    result = _measure_windows(recorder, policy, stop)
    for thread in threads:
        thread.join(timeout=60)
    return result


def closed_loop_async(start: AsyncStarter, concurrency: int, policy: WindowPolicy) -> LevelResult:
    """Closed loop without a thread per worker: each answer's callback starts that worker's next request.

    Keeps the harness's own CPU cost per request low, which matters when it shares the machine with the server.
    """
    recorder, stop = _Recorder(), threading.Event()
    counter = iter(range(1 << 62))
    lock = threading.Lock()
    idle = threading.Semaphore(0)

    def launch() -> None:
        with lock:
            request = next(counter)
        began = time.perf_counter()

        def done(error: BaseException | None) -> None:
            if error is None:
                recorder.ok(time.perf_counter() - began)
            else:
                recorder.error(error)
            if stop.is_set():
                idle.release()
            else:
                launch()

        try:
            start(request, done)
        except Exception as exc:  # noqa: BLE001 - a request that cannot even start ends this worker
            recorder.error(exc)
            idle.release()

    for _ in range(concurrency):
        launch()
    result = _measure_windows(recorder, policy, stop)
    for _ in range(concurrency):
        idle.acquire(timeout=60)
    return result


def open_loop(
    send: Sender, rate: float, arrivals: Arrivals, policy: WindowPolicy, max_in_flight: int = 256, seed: int = 0
) -> LevelResult:
    """Requests started at ``rate`` per second on schedule; latency counted from the scheduled start."""
    recorder, stop = _Recorder(), threading.Event()
    rng = random.Random(seed)
    pool = ThreadPoolExecutor(max_workers=max_in_flight)
    in_flight = threading.Semaphore(max_in_flight)

    def run(request: int, scheduled: float) -> None:
        try:
            send(request)
            recorder.ok(time.perf_counter() - scheduled)
        except Exception as exc:  # noqa: BLE001
            recorder.error(exc)
        finally:
            in_flight.release()

    def dispatcher() -> None:
        next_time = time.perf_counter()
        request = 0
        while not stop.is_set():
            gap = rng.expovariate(rate) if arrivals is Arrivals.POISSON else 1.0 / rate
            next_time += gap
            delay = next_time - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            if not in_flight.acquire(timeout=5):
                recorder.error(RuntimeError(f"more than {max_in_flight} requests in flight"))
                continue
            pool.submit(run, request, next_time)
            request += 1

    thread = threading.Thread(target=dispatcher, daemon=True)
    thread.start()
    result = _measure_windows(recorder, policy, stop)
    thread.join(timeout=10)
    pool.shutdown(wait=True)
    return result
