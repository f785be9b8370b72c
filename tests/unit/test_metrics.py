"""A worker's counters and their exposition (ws4redis_uwsgi.server.metrics): values in, text out."""

from __future__ import annotations

import re

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ws4redis_uwsgi.server.metrics import MAX_FACILITY_LABELS, OTHER, WorkerMetrics


def samples(metrics: WorkerMetrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        tuple(sorted((k, v) for k, v in s.labels.items() if k != "worker")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


def test_facility_labels_stay_bounded_and_a_facility_keeps_its_label():
    metrics = WorkerMetrics()
    for n in range(MAX_FACILITY_LABELS + 10):
        metrics.opened(f"f{n}")
    metrics.opened("f0")
    open_now = samples(metrics, "ws4redis_websockets_open")
    assert len(open_now) == MAX_FACILITY_LABELS + 1  # the named ones, and "other"
    assert open_now[(("facility", "f0"),)] == 2
    assert open_now[(("facility", OTHER),)] == 10
    for n in range(MAX_FACILITY_LABELS + 10):
        metrics.closed(f"f{n}")
    metrics.closed("f0")
    open_now = samples(metrics, "ws4redis_websockets_open")
    assert set(open_now.values()) == {0}
    metrics.closed("never opened")  # never below zero
    assert samples(metrics, "ws4redis_websockets_open")[(("facility", OTHER),)] == 0


def test_handshakes_by_outcome_and_the_latency_histogram():
    metrics = WorkerMetrics()
    for outcome in ["accepted", "accepted", "403", "503"]:
        metrics.handshake(outcome)
    metrics.handshake_seconds.observe(0.0004)
    metrics.handshake_seconds.observe(0.003)
    assert samples(metrics, "ws4redis_handshakes_total") == {
        (("outcome", "accepted"),): 2,
        (("outcome", "403"),): 1,
        (("outcome", "503"),): 1,
    }
    buckets = samples(metrics, "ws4redis_handshake_seconds_bucket")
    assert buckets[(("le", "0.0005"),)] == 1 and buckets[(("le", "0.005"),)] == 2


def test_the_handshake_histogram_reads_as_prometheus_clients_own_would():
    from prometheus_client import CollectorRegistry, Histogram

    from ws4redis_uwsgi.server.metrics import HANDSHAKE_BUCKETS

    registry = CollectorRegistry()
    theirs = Histogram("ws4redis_handshake_seconds", "", labelnames=["worker"], buckets=HANDSHAKE_BUCKETS, registry=registry)
    ours = WorkerMetrics()
    values = [0.0001, 0.0005, 0.00051, 0.003, 0.003, 1.0, 4.9, 5.0, 7.5, 60.0]  # bounds themselves, and past the last
    for value in values:
        theirs.labels(worker="0").observe(value)
        ours.handshake_seconds.observe(value)

    def exposed(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {
            (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "worker"))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name.startswith("ws4redis_handshake_seconds") and not s.name.endswith("_created")
        }

    mine = exposed(generate_latest(ours.registry).decode())
    assert mine == exposed(generate_latest(registry).decode())
    assert mine["ws4redis_handshake_seconds_bucket", (("le", "0.0005"),)] == 2
    assert mine["ws4redis_handshake_seconds_count", ()] == len(values)


def test_handshakes_by_where_their_user_came_from():
    metrics = WorkerMetrics()
    for source in ["claim", "database", "claim", "none"]:
        metrics.identity(source)
    assert samples(metrics, "ws4redis_handshake_identities_total") == {
        (("source", "claim"),): 2,
        (("source", "database"),): 1,
        (("source", "none"),): 1,
    }


def test_every_sample_carries_the_worker_label(monkeypatch):
    from ws4redis_uwsgi.server import metrics as module

    monkeypatch.setattr(module, "worker_id", lambda: 3)
    metrics = WorkerMetrics()
    metrics.handshake("accepted")
    metrics.identity("none")
    metrics.opened("chat")
    metrics.handshake_seconds.observe(0.001)
    text = generate_latest(metrics.registry).decode()
    unlabelled = {
        s.name for family in text_string_to_metric_families(text) for s in family.samples if s.labels.get("worker") != "3"
    }
    assert not unlabelled


def exposed_and_charted() -> tuple[set[str], set[str]]:
    """The metrics a worker (with presence and an outbox drain) and a Django process expose, and those the dashboard charts."""
    import json
    from types import SimpleNamespace

    from prometheus_client import REGISTRY

    from tests.servers import REPO
    from ws4redis_uwsgi import process
    from ws4redis_uwsgi.server.outbox_drain import OutboxDrain

    metrics = WorkerMetrics()
    metrics.handshake("accepted")
    metrics.identity("claim")
    metrics.opened("chat")
    # The figures of the presence board and the outbox drain appear once the worker has them.
    process.resource("presence board", lambda: SimpleNamespace(connections=lambda: 1))
    process.resource("outbox drain", lambda: OutboxDrain(1.0))
    try:
        families = [*metrics.registry.collect(), *(f for f in REGISTRY.collect() if f.name.startswith("ws4redis_"))]
    finally:
        process.forget("presence board")
        process.forget("outbox drain")
    exposed = {s.name for family in families for s in family.samples}
    dashboard = json.loads((REPO / "deploy" / "grafana-dashboard.json").read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for expr in expressions for name in re.findall(r"ws4redis_[a-z_]+", expr)}
    return exposed, used


def family_of(sample: str) -> str:
    return re.sub(r"_(total|bucket|count|sum|created)$", "", sample)


def test_the_grafana_dashboard_shows_only_metrics_that_exist():
    exposed, used = exposed_and_charted()
    assert used and used <= exposed, used - exposed


def test_the_grafana_dashboard_has_a_panel_for_every_metric():
    exposed, used = exposed_and_charted()
    missing = {family_of(name) for name in exposed} - {family_of(name) for name in used}
    assert not missing, f"no panel shows {sorted(missing)}"
