"""The edge's Prometheus endpoint (``--metrics-port``): every edge metric is defined here.

The values live where the work happens (the stream loop's counts, the forwarder, the spool); a collector
reads them at scrape time, so the hot path does no metric calls and a failing scrape cannot touch a frame.

====================================  =======  ===============================================================
metric                                type     what
====================================  =======  ===============================================================
``fpnlink_edge_frames_encoded_total``  counter  frames coded and spooled
``fpnlink_edge_frames_sent_total``     counter  frames handed to gRPC (resends included)
``fpnlink_edge_frames_acked_total``    counter  frames answered (``result`` label: ``ok`` / ``error``)
``fpnlink_edge_frames_dropped_total``  counter  frames the spool dropped (full or expired)
``fpnlink_edge_bytes_acked_total``     counter  bytes of the answered frames
``fpnlink_edge_reconnects_total``      counter  link calls opened after a failure
``fpnlink_edge_spool_frames``          gauge    frames waiting in the spool
``fpnlink_edge_spool_bytes``           gauge    bytes waiting in the spool
``fpnlink_edge_link_kbps``             gauge    throughput of answered frames
``fpnlink_edge_phi``                   gauge    phi of the last frame, per ``scale``
====================================  =======  ===============================================================
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .stream import StreamLoop

PREFIX = "fpnlink_edge"


class EdgeCollector(Collector):
    """Reads one :class:`StreamLoop`'s state at every scrape."""

    def __init__(self, loop: StreamLoop) -> None:
        self.loop = loop

    def collect(self) -> Iterator[Metric]:
        loop, counts = self.loop, self.loop.counts
        frames, size = loop.spool.depth()
        yield CounterMetricFamily(f"{PREFIX}_frames_encoded", "frames coded and spooled", value=counts.encoded)
        yield CounterMetricFamily(f"{PREFIX}_frames_sent", "frames handed to gRPC (resends included)",
                                  value=loop.forwarder.sent)
        acked = CounterMetricFamily(f"{PREFIX}_frames_acked", "frames answered", labels=["result"])
        acked.add_metric(["ok"], counts.ok)
        acked.add_metric(["error"], counts.failed)
        yield acked
        yield CounterMetricFamily(f"{PREFIX}_frames_dropped", "frames the spool dropped (full or expired)",
                                  value=counts.dropped)
        yield CounterMetricFamily(f"{PREFIX}_bytes_acked", "bytes of the answered frames", value=counts.bytes)
        yield CounterMetricFamily(f"{PREFIX}_reconnects", "link calls opened after a failure",
                                  value=loop.forwarder.reconnects)
        yield GaugeMetricFamily(f"{PREFIX}_spool_frames", "frames waiting in the spool", value=frames)
        yield GaugeMetricFamily(f"{PREFIX}_spool_bytes", "bytes waiting in the spool", value=size)
        yield GaugeMetricFamily(f"{PREFIX}_link_kbps", "throughput of answered frames",
                                value=loop.forwarder.link_kbps)
        phi = GaugeMetricFamily(f"{PREFIX}_phi", "phi of the last frame per scale", labels=["scale"])
        for scale, value in sorted(loop.last_phi.items()):
            phi.add_metric([scale], value)
        yield phi


def registry_for(loop: StreamLoop) -> CollectorRegistry:
    """A registry holding the loop's metrics (and nothing else)."""
    registry = CollectorRegistry()
    registry.register(EdgeCollector(loop))
    return registry


def serve_metrics(loop: StreamLoop, port: int, host: str = "0.0.0.0") -> int:
    """Serve ``/metrics`` for ``loop`` on ``host:port`` in a daemon thread; returns the bound port.

    Raises:
        OSError: the port is taken.
    """
    server, _ = start_http_server(port, addr=host, registry=registry_for(loop))
    return int(server.server_port)
