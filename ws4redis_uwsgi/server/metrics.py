"""What a websocket worker counts, and how Prometheus reads it: one endpoint per worker.

Why not prometheus-client's multiprocess mode: it writes every increment to
a memory-mapped file under a lock, about a microsecond each, and a worker
delivers a message to a websocket in a few. Here each worker counts in
plain integers (the hub adds one figure per message, not one per
websocket), and a :class:`WorkerCollector` turns them into metric families
only when scraped, on the worker's own loopback port
(:mod:`ws4redis_uwsgi.server.ops_endpoint`). Prometheus scrapes every
worker and sums (``sum by (job)``); the ``worker`` label tells them apart.

Labels stay bounded: ``outcome`` is a few HTTP statuses, and ``facility``
names the first :data:`MAX_FACILITY_LABELS` facilities a worker serves,
then ``other``.
"""

from __future__ import annotations

import bisect
import gc
import itertools
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .. import process

#: Facilities a worker labels by name; the others count as ``other``.
MAX_FACILITY_LABELS = 50
OTHER = "other"

#: Handshake latency buckets, seconds: a logged-in handshake takes a few hundred microseconds of CPU.
HANDSHAKE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class PlainHistogram:
    """A histogram in plain numbers, as the counters are: prometheus-client's takes a lock per bucket and sum.

    That is 2-3.5 µs per observation under gevent (its lock is gevent's),
    once per handshake; this is a list index and two additions.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        #: Observations per bucket (not cumulative), the last past every bound (+Inf).
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1  # a value equal to a bound goes in its bucket (le)
        self.sum += value

    def family(self, name: str, documentation: str, worker: str) -> HistogramMetricFamily:
        """The histogram as Prometheus reads it: cumulative buckets, ``le`` written as prometheus-client writes it."""
        family = HistogramMetricFamily(name, documentation, labels=["worker"])
        cumulative = list(itertools.accumulate(self.counts))
        bounds = [floatToGoString(bound) for bound in self.bounds] + ["+Inf"]
        family.add_metric([worker], buckets=list(zip(bounds, cumulative, strict=True)), sum_value=self.sum)
        return family


class WorkerMetrics:
    """This worker's counters; the loop and the sessions add to them, the collector reads them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.handshake_seconds = PlainHistogram(HANDSHAKE_BUCKETS)
        self.handshakes: dict[str, int] = {}
        self.identities: dict[str, int] = {}
        self.open_by_facility: dict[str, int] = {}
        self.client_messages = 0
        self.heartbeats = 0
        self.slow_consumer_closes = 0
        self.resumes = 0
        self.gaps = 0
        self.registry.register(WorkerCollector(self))

    def handshake(self, outcome: str) -> None:
        """A handshake ended: ``'accepted'`` or the refusal's HTTP status (``'403'``...)."""
        self.handshakes[outcome] = self.handshakes.get(outcome, 0) + 1

    def facility_label(self, facility: str | None) -> str:
        if facility in self.open_by_facility:
            return facility  # type: ignore[return-value]
        return facility if facility and len(self.open_by_facility) < MAX_FACILITY_LABELS else OTHER

    def identity(self, source: str) -> None:
        """A handshake got its session and user from ``source`` (one of :data:`~ws4redis_uwsgi.django.identity.SOURCES`)."""
        self.identities[source] = self.identities.get(source, 0) + 1

    def opened(self, facility: str | None) -> None:
        """A websocket opened on ``facility``."""
        label = self.facility_label(facility)
        self.open_by_facility[label] = self.open_by_facility.get(label, 0) + 1

    def closed(self, facility: str | None) -> None:
        """A websocket on ``facility`` closed (its label is the one :meth:`opened` gave: labels never go away)."""
        label = self.facility_label(facility)
        self.open_by_facility[label] = max(0, self.open_by_facility.get(label, 0) - 1)


class WorkerCollector(Collector):
    """The worker's figures as metric families, read when scraped."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        from ..bus.resources import get_hub
        from .authority import get_authority

        m, hub = self.metrics, get_hub()
        worker = str(worker_id())
        open_now = GaugeMetricFamily("ws4redis_websockets_open", "Open websockets.", labels=["worker", "facility"])
        for facility, count in m.open_by_facility.items():
            open_now.add_metric([worker, facility], count)
        yield open_now
        handshakes = CounterMetricFamily("ws4redis_handshakes", "Websocket handshakes by outcome.", labels=["worker", "outcome"])
        for outcome, count in m.handshakes.items():
            handshakes.add_metric([worker, outcome], count)
        yield handshakes
        yield m.handshake_seconds.family(
            "ws4redis_handshake_seconds", "Time from a websocket request to its upgrade (accepted handshakes).", worker
        )
        identities = CounterMetricFamily(
            "ws4redis_handshake_identities",
            "Handshakes by where their session and user came from (database, cache, claim, token, hook, none).",
            labels=["worker", "source"],
        )
        for source, count in m.identities.items():
            identities.add_metric([worker, source], count)
        yield identities
        deliveries = CounterMetricFamily(
            "ws4redis_deliveries",
            "Messages handed to websockets: written at once by the hub (fast, repeats skipped included) or queued.",
            labels=["worker", "path"],
        )
        deliveries.add_metric([worker, "fast"], max(0, hub.deliveries - hub.queued))
        deliveries.add_metric([worker, "queued"], hub.queued)
        yield deliveries
        counter, gauge = CounterMetricFamily, GaugeMetricFamily
        for family, name, documentation, value in (
            (counter, "ws4redis_client_messages", "Messages clients sent to publish.", m.client_messages),
            (counter, "ws4redis_heartbeats", "Heartbeats clients sent.", m.heartbeats),
            (
                CounterMetricFamily,
                "ws4redis_slow_consumer_closes",
                "Websockets closed for falling behind.",
                m.slow_consumer_closes,
            ),
            (counter, "ws4redis_resumes", "Websockets that resumed from a token.", m.resumes),
            (counter, "ws4redis_gaps", "Resuming websockets told of a gap (!gap).", m.gaps),
            (counter, "ws4redis_redis_reconnects", "Pub/sub connections to Redis lost.", hub.disconnects),
            (
                GaugeMetricFamily,
                "ws4redis_redis_subscribed",
                "1 while the Redis subscriptions are up.",
                int(subscribed(hub)),
            ),
            (gauge, "ws4redis_subscribed_channels", "Channels the worker's hub subscribes.", hub.channel_count()),
            (
                CounterMetricFamily,
                "ws4redis_sessions_ended",
                "Websockets closed: session ended (4001).",
                get_authority().ended,
            ),
        ):
            metric = family(name, documentation, labels=["worker"])
            metric.add_metric([worker], value)
            yield metric
        yield from self._made_elsewhere(worker)
        yield from self._garbage_collector(worker)

    def _garbage_collector(self, worker: str) -> Iterator[Metric]:
        """Python's collections by generation (prometheus-client's ``python_gc_*`` figures, by worker).

        A full collection (generation 2) walks every open websocket's objects and pauses the
        worker meanwhile (:mod:`~ws4redis_uwsgi.server.collector`).
        """
        labels = ["worker", "generation"]
        families = (
            CounterMetricFamily("ws4redis_gc_collections", "Times the worker collected this generation.", labels=labels),
            CounterMetricFamily("ws4redis_gc_objects_collected", "Objects this generation's collections freed.", labels=labels),
            CounterMetricFamily(
                "ws4redis_gc_objects_uncollectable", "Uncollectable objects this generation's collections found.", labels=labels
            ),
        )
        for generation, stats in enumerate(gc.get_stats()):
            for family, key in zip(families, ("collections", "collected", "uncollectable"), strict=True):
                family.add_metric([worker, str(generation)], stats[key])
        yield from families

    def _made_elsewhere(self, worker: str) -> Iterator[Metric]:
        """Figures of the presence board and the outbox drain, when this worker has them."""
        board = process.existing("presence board")
        if board is not None:
            metric = GaugeMetricFamily(
                "ws4redis_presence_connections", "Connections to facilities with presence.", labels=["worker"]
            )
            metric.add_metric([worker], board.connections())
            yield metric
        drain = process.existing("outbox drain")
        if drain is not None:
            published = CounterMetricFamily(
                "ws4redis_outbox_published", "Messages the outbox drain published (a publisher died first).", labels=["worker"]
            )
            published.add_metric([worker], drain.published)
            yield published
            failed = CounterMetricFamily(
                "ws4redis_outbox_failed_rounds", "Outbox drain rounds a database or Redis failed.", labels=["worker"]
            )
            failed.add_metric([worker], drain.failed_rounds)
            yield failed


def subscribed(hub: Any) -> bool:
    """Whether the worker holds a Redis subscription and every one it needs is up (what health reports)."""
    connections = hub.connections()
    return bool(connections) and all(connections.values()) and hub.connected


def worker_id() -> int:
    """uWSGI's worker number (1, 2, ...), or 0 outside uWSGI."""
    try:
        import uwsgi

        return int(uwsgi.worker_id())
    except ImportError:
        return 0


def get_metrics() -> WorkerMetrics:
    """This process's :class:`WorkerMetrics`."""
    return process.resource("metrics", WorkerMetrics)
