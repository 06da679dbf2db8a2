"""Prometheus metrics of `ocimirror proxy`, served on `/metrics`.

- `ocimirror_proxy_requests_total{upstream,kind,method,status}`: requests answered.
- `ocimirror_proxy_cache_hits_total{kind}` / `..._cache_misses_total{kind}`: answers from
  the cache, and requests it could not answer (`kind`: `manifest` or `blob`).
- `ocimirror_proxy_cache_coalesced_total{kind}`: misses that joined a fetch in flight.
- `ocimirror_proxy_cache_stale_total{kind}`: stale copies served as the upstream failed.
- `ocimirror_proxy_bytes_total{upstream,source}`: body bytes served, `source` being
  `upstream` (as they come from the upstream, a cache fetch's included) or `cache`.
- `ocimirror_proxy_upstream_errors_total{upstream,reason}`: unreachable upstreams,
  5xx answers, refused credentials, bodies broken midway (`broken_body`) or not matching
  the digest asked for (`digest_mismatch`).
- `ocimirror_proxy_upstream_requests_total{upstream}` and
  `ocimirror_proxy_upstream_throttled_total{upstream}`: requests sent upstream, 429s seen.
- `ocimirror_proxy_store_requests_total{op}` and `ocimirror_proxy_store_errors_total{op}`:
  requests to an object-store cache (`get`, `put`, `head`, `list`, `delete`, `sign`; a
  multipart put counts once), and those that failed.
"""

from __future__ import annotations

from collections import Counter as CounterType
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from .upstream import Upstream


class _UpstreamCollector(Collector):
    def __init__(self, upstreams: Callable[[], Iterable[Upstream]]) -> None:
        self._upstreams = upstreams

    def collect(self) -> Iterable[Metric]:
        sent = CounterMetricFamily(
            "ocimirror_proxy_upstream_requests", "Requests sent upstream", labels=["upstream"]
        )
        throttled = CounterMetricFamily(
            "ocimirror_proxy_upstream_throttled",
            "HTTP 429 answers from upstream",
            labels=["upstream"],
        )
        for u in self._upstreams():
            sent.add_metric([u.label], sum(sum(c.requests.values()) for c in u.clients))
            throttled.add_metric([u.label], sum(c.statuses[429] for c in u.clients))
        return [sent, throttled]


StoreCounts = tuple[CounterType[str], CounterType[str]]


class _StoreCollector(Collector):
    def __init__(self, counts: Callable[[], StoreCounts | None]) -> None:
        self._counts = counts

    def collect(self) -> Iterable[Metric]:
        counts = self._counts()
        if counts is None:
            return []
        sent = CounterMetricFamily(
            "ocimirror_proxy_store_requests", "Requests to the cache's object store", labels=["op"]
        )
        failed = CounterMetricFamily(
            "ocimirror_proxy_store_errors", "Failed requests to the cache's object store",
            labels=["op"],
        )  # fmt: skip
        requests, failures = counts
        for op in sorted(requests):
            sent.add_metric([op], requests[op])
            failed.add_metric([op], failures[op])
        return [sent, failed]


class ProxyMetrics:
    """The proxy's metrics, in a registry of their own."""

    def __init__(
        self,
        upstreams: Callable[[], Iterable[Upstream]] = tuple,
        store: Callable[[], StoreCounts | None] = lambda: None,
    ) -> None:
        """Make the metrics; `upstreams` and `store` are read at every scrape."""
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "ocimirror_proxy_requests", "Requests answered by the proxy",
            ["upstream", "kind", "method", "status"], registry=r,
        )  # fmt: skip
        self.cache_hits = Counter(
            "ocimirror_proxy_cache_hits", "Answers served from the cache", ["kind"], registry=r
        )
        self.cache_misses = Counter(
            "ocimirror_proxy_cache_misses", "Cache lookups that went upstream", ["kind"], registry=r
        )
        self.cache_coalesced = Counter(
            "ocimirror_proxy_cache_coalesced", "Cache misses that joined a fetch in flight",
            ["kind"], registry=r,
        )  # fmt: skip
        self.cache_stale = Counter(
            "ocimirror_proxy_cache_stale", "Stale cached copies served as the upstream failed",
            ["kind"], registry=r,
        )  # fmt: skip
        self.bytes = Counter(
            "ocimirror_proxy_bytes", "Body bytes served, by source (upstream or cache)",
            ["upstream", "source"], registry=r,
        )  # fmt: skip
        self.upstream_errors = Counter(
            "ocimirror_proxy_upstream_errors", "Upstream failures by reason",
            ["upstream", "reason"], registry=r,
        )  # fmt: skip
        r.register(_UpstreamCollector(upstreams))
        r.register(_StoreCollector(store))

    def render(self) -> bytes:
        """Return the text exposition format of everything."""
        return generate_latest(self.registry)
