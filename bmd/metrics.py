"""The instruments bmd's parts keep for ``GET /metrics`` (bmd/api/metrics.py serves them).

Each part owns its instruments, created unregistered (``registry=None``): the API builds one
``CollectorRegistry`` per application and collects them from the parts at scrape time, so the many
applications a test process builds never share a series (prometheus_client's default registry is global).
Counts a part already keeps (the runner's records, the scheduler's claims, the bus's drops) are read at
scrape time instead; latencies and new labelled counts are prometheus_client histograms and counters.

Names follow Prometheus conventions: the ``bmd_`` prefix, the unit in the name (``_seconds``, ``_bytes``),
``_total`` on counters. Label values are bounded sets (a driver, a verb, an error kind, a route template).
"""

from __future__ import annotations

import asyncio
import time

from prometheus_client import Counter, Histogram

from bmd.errors import BmdError

__all__ = [
    "API_BUCKETS",
    "BMC_BUCKETS",
    "DEPLOY_BUCKETS",
    "LOOP_BUCKETS",
    "DeployMeter",
    "error_kind",
]

# Bucket bounds in seconds, each spanning what its operation takes on a healthy and on a sick fleet.
API_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BMC_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
LOOP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
DEPLOY_BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1200.0, 1800.0, 2700.0, 3600.0, 7200.0)


def error_kind(err: BaseException) -> str:
    """A bounded label for an error: bmd's own ``code`` (``bmc_timeout``, ``bmc_auth_error``, ...),
    ``timeout`` for a caller's deadline, ``cancelled``, else ``unexpected`` (a driver bug)."""
    if isinstance(err, BmdError):
        return err.code
    if isinstance(err, TimeoutError):
        return "timeout"
    if isinstance(err, asyncio.CancelledError):
        return "cancelled"
    return "unexpected"


class DeployMeter:
    """Deploy outcomes and durations, from the spawn's start to ``active`` or a failure.

    ``outcome`` is ``active`` or where it failed: ``spawn_failed`` (a step before the boot, or a restart
    in the middle of one), ``agent_failed`` (the agent reported an error), ``timed_out`` (no callback before
    the deadline), ``finish_failed`` (the switch to disk boot). The duration is known for deploys this
    process started; an outcome after a restart is counted without one."""

    OUTCOMES = ("active", "spawn_failed", "agent_failed", "timed_out", "finish_failed")

    def __init__(self) -> None:
        self.outcomes = Counter("bmd_deploys_total", "Deploys that ended, by outcome.", ["outcome"], registry=None)
        self.duration = Histogram(
            "bmd_deploy_duration_seconds",
            "Time from a deploy's spawn to its outcome (deploys this process started).",
            ["outcome"],
            buckets=DEPLOY_BUCKETS,
            registry=None,
        )
        for outcome in self.OUTCOMES:  # every series from the start: rate() and alerts see a zero, not nothing
            self.outcomes.labels(outcome=outcome)
            self.duration.labels(outcome=outcome)
        self._started: dict[int, float] = {}  # node id -> perf_counter at its spawn

    def started(self, node_id: int) -> None:
        self._started[node_id] = time.perf_counter()

    def ended(self, node_id: int, outcome: str) -> None:
        self.outcomes.labels(outcome=outcome).inc()
        began = self._started.pop(node_id, None)
        if began is not None:
            self.duration.labels(outcome=outcome).observe(time.perf_counter() - began)
