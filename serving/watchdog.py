"""The launcher's watchdog: checks a ``TritonServer``'s health in a thread and recovers.

It reloads the model whose stub died when model control is explicit, and otherwise restarts the server on the same
ports, so clients that retry UNAVAILABLE recover by themselves. A model whose stub hangs (alive, ready, but never
answering) is found by an inference probe with a deadline plus the server's own statistics (no successful inference
of that model since the previous probe), and recovered the same way. Failures that may pass (not live, not ready, a
failed probe) must repeat: a ``serving.health.HealthStreak`` adds them up.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from fmdetect.core.names import ENSEMBLE, IMAGE_BYTES, PROB_FAKE
from fmdetect.serving.health import HealthStreak
from fmdetect.serving.tritonserver import ServerError, TritonServer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recovery:
    """One recovery made by ``watch()`` (a model reload or a server restart): why, when it was detected
    (``time.monotonic()``), how long until serving again, and whether it worked."""

    reason: str
    detected_at: float
    recovered_s: float
    ok: bool


@dataclass(frozen=True)
class InferenceProbe:
    """One request through the served ensemble, answered within ``deadline_s``: a small PNG must come back with
    a score. Raises when it does not (an error answer, no answer in time, or no score)."""

    model: str = ENSEMBLE
    deadline_s: float = 10.0

    def __call__(self, server: TritonServer) -> None:
        import numpy as np
        import tritonclient.http as httpclient

        data = np.array([[_probe_png()]], dtype=object)
        tensor = httpclient.InferInput(IMAGE_BYTES, list(data.shape), "BYTES")
        tensor.set_data_from_numpy(data, binary_data=True)
        with httpclient.InferenceServerClient(
            server.http_url, connection_timeout=self.deadline_s, network_timeout=self.deadline_s
        ) as client:
            result = client.infer(
                self.model,
                [tensor],
                outputs=[httpclient.InferRequestedOutput(PROB_FAKE)],
                timeout=int(self.deadline_s * 1e6),
            )
        score = result.as_numpy(PROB_FAKE)
        if score is None or score.size != 1:
            raise RuntimeError(f"probe got no score ({None if score is None else score.shape})")


def _probe_png() -> bytes:
    """A 32x32 gradient as PNG: valid for every preprocessing limit, cheap to score."""
    import io

    import numpy as np
    from PIL import Image

    ramp = np.linspace(0, 255, 32, dtype=np.uint8)
    pixels = np.stack([np.tile(ramp, (32, 1)), np.tile(ramp[:, None], (1, 32)), np.full((32, 32), 128, np.uint8)], -1)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


class Watchdog(threading.Thread):
    """Checks a server's health every ``interval_s`` and recovers it (see ``watch``); ``recoveries`` lists every
    recovery it made."""

    def __init__(
        self,
        server: TritonServer,
        interval_s: float,
        probe: Callable[[TritonServer], None] | None,
        failures_to_restart: int,
        hang_probe: InferenceProbe | None = None,
    ) -> None:
        super().__init__(name="triton-watchdog", daemon=True)
        self.server = server
        self.interval_s = interval_s
        self.probe = probe
        self.hang_probe = hang_probe
        self.streak = HealthStreak(fall=max(1, failures_to_restart), rise=1)
        self.recoveries: list[Recovery] = []
        self.round_starts: collections.deque[float] = collections.deque(maxlen=10_000)  # time.monotonic() of each check
        self._stopping = threading.Event()
        self._last_counts: dict[str, int] | None = None  # success counts read at the previous probe
        self._hung: list[str] = []

    def stop(self) -> None:
        self._stopping.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=self.server.config.ready_timeout_s + 30)

    def _problem(self) -> tuple[str | None, bool]:
        """(what is wrong, whether it warrants recovery at once); skips the round while another thread starts,
        restarts or stops the server."""
        if not self.server.lock.acquire(blocking=False):
            return None, False
        try:
            problem = self.server.check_health()
        finally:
            self.server.lock.release()
        if problem is not None:
            return problem, "died" in problem or "exited" in problem
        self._hung = []
        if self.hang_probe is not None:
            problem = self._hang_problem()
            if problem is not None:
                return problem, False
        if self.probe is not None:
            try:
                self.probe(self.server)
            except Exception as exc:  # noqa: BLE001 - any probe failure counts
                return f"probe failed: {exc}", False
        return None, False

    def _hang_problem(self) -> str | None:
        """Run the hang probe; when it fails, name the models that cannot answer: those whose stub the python
        backend reports "not healthy" (alive but unresponsive: stopped, or stuck), else those with no successful
        inference since the previous probe (a stub that never returns leaves its model's counters still, while
        an overloaded model's keep rising)."""
        try:
            self.hang_probe(self.server)
        except Exception as exc:  # noqa: BLE001 - judged below
            message = str(exc)
            stalled = sorted({m.group(1) for m in re.finditer(r"Stub process '(.+?)_\d+_\d+' is not healthy", message)})
            if not stalled:
                counts, previous = self.server.success_counts(), self._last_counts
                self._last_counts = counts
                if counts is None or previous is None:
                    return None  # no statistics, or nothing to compare with yet: the health checks decide
                stalled = sorted(m for m, n in counts.items() if n <= previous.get(m, 0))
            if not stalled:
                logger.info("probe failed but every model is answering (overload?): %s", exc)
                return None
            self._hung = stalled
            return f"model(s) {', '.join(stalled)} hung ({message})"
        self._last_counts = self.server.success_counts()
        return None

    def run(self) -> None:
        while not self._stopping.wait(self.interval_s):
            self.round_starts.append(time.monotonic())
            problem, urgent = self._problem()
            healthy = self.streak.observe(problem is None)
            if problem is None or (healthy and not urgent):
                continue
            self.streak.reset()
            if self._stopping.is_set():
                return
            detected = time.monotonic()
            if self._hung:
                self._kill_stubs(self._hung)  # a killed stub is a dead one: reloaded or restarted below
            ok = self.server.reload_models_of_dead_stubs() or self._restart(problem)
            self._last_counts = None
            self.recoveries.append(Recovery(problem, detected, time.monotonic() - detected, ok))

    def _kill_stubs(self, models: list[str]) -> None:
        for stub in self.server.stubs():
            if stub.model in models and stub.state not in ("Z", "X"):
                logger.warning("python stub of model '%s' (pid %d) hung; killing it", stub.model, stub.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(stub.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and any(
            s.model in models and s.state not in ("Z", "X") for s in self.server.stubs()
        ):
            time.sleep(0.02)

    def _restart(self, problem: str) -> bool:
        logger.warning("tritonserver unhealthy (%s); restarting it", problem)
        try:
            self.server.restart(graceful=False)
            return True
        except ServerError as exc:
            logger.error("restart failed: %s", exc)
            return False


def watch(
    server: TritonServer,
    interval_s: float = 1.0,
    probe: Callable[[TritonServer], None] | None = None,
    failures_to_restart: int = 2,
    hang_probe: InferenceProbe | None = InferenceProbe(),
) -> Watchdog:
    """Check ``server``'s health every ``interval_s`` in a thread and recover when it fails: with explicit model
    control a model whose stub died (or hung, then is killed) is reloaded; anything else (or a failed reload)
    restarts the server on its ports.

    A dead stub or a dead process is acted on at once; not live / not ready / a failing ``probe`` / a hung
    model must repeat ``failures_to_restart`` times in a row (a model being loaded is briefly not ready).
    ``server.stop()`` (or the watchdog's ``stop()``) ends it; ``Watchdog.recoveries`` records what it did.

    A model is HUNG when ``hang_probe`` (one inference through the ensemble with a deadline) fails and the
    python backend reports that model's stub "not healthy", or the statistics show no successful inference of
    it since the previous probe. An overloaded server also fails probes (its queues time out), but its models
    keep answering, so it is left alone.

    Args:
        probe: optional end-to-end check run after the built-in ones; it raises when the server cannot
            serve, and any failure counts (unlike ``hang_probe``, which counts only stalled models).
        hang_probe: the hung-model check; None turns it off.
    """
    if server.watchdog is not None:
        raise RuntimeError("this server is already watched")
    server.watchdog = Watchdog(server, interval_s, probe, failures_to_restart, hang_probe)
    server.watchdog.start()
    return server.watchdog
