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
        self.kv_blocks = Gauge("janus_kv_blocks", "KV cache blocks by state: used (held by running rows), cached "
                               "(finished requests' blocks kept for prefix reuse, evictable) and free.", ["state"],
                               registry=r)
        self.prompt_tokens = Counter("janus_prompt_tokens", "Prompt positions prefilled (computed) or taken from the "
                                     "prefix cache (reused).", ["source"], registry=r)
        self.prefix_lookups = Counter("janus_prefix_cache_lookups", "Prompts looked up in the prefix cache; "
                                      "janus_prefix_cache_hits / this is the hit rate.", registry=r)
        self.prefix_hits = Counter("janus_prefix_cache_hits", "Prompts that reused at least one cached block.",
                                   registry=r)
        self.evictions = Counter("janus_kv_evictions", "Cached KV blocks evicted to make room.", registry=r)
        self.image_cache = Counter("janus_image_feature_cache_lookups", "Images looked up in the vision-feature "
                                   "cache, by result (hit: the vision encoder was skipped).", ["result"], registry=r)
        self.drafts = Counter("janus_speculative_draft_tokens", "Draft image tokens verified by speculative "
                              "decoding, by result; accepted / all is the acceptance rate.", ["result"], registry=r)
        self.speculative_forwards = Counter("janus_speculative_image_forwards", "Images in speculative decoding "
                                            "steps (one per image and step); janus_speculative_image_tokens / this "
                                            "is the tokens per forward.", registry=r)
        self.speculative_tokens = Counter("janus_speculative_image_tokens", "Image tokens kept by speculative "
                                          "decoding steps.", registry=r)
        self.acceptance = Gauge("janus_speculative_acceptance_rate", "Share of the draft image tokens accepted "
                                "since the start.", registry=r)
        self.tokens_per_forward = Gauge("janus_speculative_tokens_per_forward", "Image tokens per image and step "
                                        "of speculative decoding since the start (1 plainly).", registry=r)
        self._totals: dict[str, int] = {}  # the engine's running totals as last seen, for the counters' increments
        for kind in KINDS:
            self.running_rows.labels(kind)
        for kind in ("text", "image"):
            self.tokens.labels(kind)
        for state in ("used", "cached", "free"):
            self.kv_blocks.labels(state)
        for source in ("computed", "reused"):
            self.prompt_tokens.labels(source)
        for result in ("hit", "miss"):
            self.image_cache.labels(result)
        for result in ("accepted", "rejected"):
            self.drafts.labels(result)
        self._speculation = [0, 0, 0, 0]  # drafted, accepted, forwards, tokens

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

    def on_speculation(self, drafted: int, accepted: int, forwards: int, tokens: int) -> None:
        self.drafts.labels("accepted").inc(accepted)
        self.drafts.labels("rejected").inc(drafted - accepted)
        self.speculative_forwards.inc(forwards)
        self.speculative_tokens.inc(tokens)
        totals = self._speculation
        for i, value in enumerate((drafted, accepted, forwards, tokens)):
            totals[i] += value
        if totals[0]:
            self.acceptance.set(totals[1] / totals[0])
        if totals[2]:
            self.tokens_per_forward.set(totals[3] / totals[2])

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
        for state in ("used", "cached", "free"):
            self.kv_blocks.labels(state).set(stats.get(f"kv_blocks_{state}", 0))
        counters = {"prompt_tokens_computed": self.prompt_tokens.labels("computed"),
                    "prompt_tokens_reused": self.prompt_tokens.labels("reused"),
                    "prefix_lookups": self.prefix_lookups, "prefix_hits": self.prefix_hits,
                    "kv_evictions": self.evictions, "image_cache_hits": self.image_cache.labels("hit"),
                    "image_cache_misses": self.image_cache.labels("miss")}
        for name, counter in counters.items():
            total = stats.get(name, 0)
            if total > self._totals.get(name, 0):
                counter.inc(total - self._totals.get(name, 0))
                self._totals[name] = total

    def render(self) -> bytes:
        return generate_latest(self.registry)
