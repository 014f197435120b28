"""Prometheus metrics, one registry per app instance (tests build many apps in one process).

Also the engine's observer: the engine thread calls `on_step` / `on_queue` / `on_failure`; prometheus_client's
metric updates are thread-safe.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

KINDS = ("understand", "generate")
_STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.queue_waiting = Gauge("janus_queue_waiting_requests", "Requests waiting for free rows.", registry=r)
        self.running_rows = Gauge("janus_running_rows", "KV-cache rows in use, by request kind.", ["kind"],
                                  registry=r)
        self.free_rows = Gauge("janus_free_rows", "KV-cache rows free.", registry=r)
        self.decoding = Gauge("janus_image_decode_requests", "Generation requests whose image tokens are all drawn "
                              "(rows freed) and whose images are being decoded or wait for the decoder.", registry=r)
        self.batch_rows = Histogram("janus_batch_rows", "Rows in one engine decode step.",
                                    buckets=_BATCH_BUCKETS, registry=r)
        self.step_seconds = Histogram("janus_step_seconds", "Duration of one engine step (prefills included).",
                                      buckets=_STEP_BUCKETS, registry=r)
        self.tokens = Counter("janus_generated_tokens", "Tokens produced; rate() gives tokens/s.", ["kind"],
                              registry=r)
        self.request_seconds = Histogram("janus_request_duration_seconds",
                                         "HTTP request latency (streams: until the last event), by route and status.",
                                         ["route", "status"], buckets=_LATENCY_BUCKETS, registry=r)
        self.engine_failures = Counter("janus_engine_failures", "Requests that failed inside the engine, by kind.",
                                       ["kind"], registry=r)
        self.error_responses = Counter("janus_error_responses", "Error responses sent, by error type.",
                                       ["type"], registry=r)
        self.info = Gauge("janus_model_info", "The model being served (value is always 1).",
                          ["model", "dtype", "device", "random_weights"], registry=r)
        self.ready = Gauge("janus_ready", "1 when the engine is warmed up and accepting requests.", registry=r)
        for kind in KINDS:
            self.running_rows.labels(kind)
        for kind in ("text", "image"):
            self.tokens.labels(kind)

    # engine observer

    def on_step(self, batch_rows: int, seconds: float, text_tokens: int, image_tokens: int) -> None:
        if batch_rows:
            self.batch_rows.observe(batch_rows)
        self.step_seconds.observe(seconds)
        self.tokens.labels("text").inc(text_tokens)
        self.tokens.labels("image").inc(image_tokens)

    def on_queue(self, waiting: int, running_rows: Mapping[str, int]) -> None:
        self.queue_waiting.set(waiting)
        for kind, rows in running_rows.items():
            self.running_rows.labels(kind).set(rows)

    def on_failure(self, kind: str) -> None:
        self.engine_failures.labels(kind).inc()

    # API side

    def set_model(self, name: str, dtype: str, device: str, random_weights: bool) -> None:
        self.info.labels(name, dtype, device, str(random_weights).lower()).set(1)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.request_seconds.labels(route, str(status)).observe(seconds)

    def count_error(self, error_type: str) -> None:
        self.error_responses.labels(error_type).inc()

    def refresh(self, stats: Mapping[str, int], ready: bool) -> None:
        """Scrape-time values straight from the engine (the observer only hears about busy steps)."""
        self.queue_waiting.set(stats.get("waiting", 0))
        self.running_rows.labels("understand").set(stats.get("running_understand_rows", 0))
        self.running_rows.labels("generate").set(stats.get("running_generate_rows", 0))
        self.free_rows.set(stats.get("free_rows", 0))
        self.decoding.set(stats.get("decoding", 0))
        self.ready.set(1 if ready else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
