"""The Prometheus metrics DESIGN.md names, on a registry of their own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.0075, 0.01,
                   0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# Wide on both sides: BaDExpert's -t and STRIP's probabilities live in [-100, 1], the
# exposed margin and the fused evidence in the tens, Mahalanobis distances in the
# hundreds (squared distances in 32 to 512 feature dimensions).
SCORE_BUCKETS = (-100, -10, -5, -2, -1, -0.5, -0.25, -0.1, -0.01, 0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1, 2, 5,
                 10, 20, 50, 100, 200, 500, 1000, 5000)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class FirewallMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("firewall_requests", "ModelInfer requests by verdict", ["model", "verdict"], registry=r)
        self.rejections = Counter("firewall_rejections", "Inputs over a rule's threshold", ["model", "rule"], registry=r)
        self.score = Histogram("firewall_score", "Suspicion scores", ["model", "rule"], buckets=SCORE_BUCKETS, registry=r)
        self.scoring_duration = Histogram("firewall_scoring_duration_seconds", "Time to score a batch",
                                          ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.upstream_duration = Histogram("firewall_upstream_duration_seconds", "Upstream ModelInfer time",
                                           ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.upstream_errors = Counter("firewall_upstream_errors", "Upstream errors by gRPC code",
                                       ["model", "code"], registry=r)
        self.batch_size = Histogram("firewall_batch_size", "Inputs per scored batch", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.artifacts_info = Gauge("firewall_artifacts_info", "The artifacts being served",
                                    ["model", "manifest_sha256"], registry=r)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        start_http_server(port, addr=addr, registry=self.registry)
