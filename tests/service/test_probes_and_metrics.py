"""GET /health, /ready, /info and /metrics on a running server."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.service.helpers import b64, image_bytes, start_server, test_settings


def test_health_and_ready_answer_200_on_a_warm_server(client):
    for path in ("/health", "/ready"):
        reply = client.get(path)
        assert reply.status_code == 200
        assert reply.json()["random_weights"] is True and reply.headers["x-random-weights"] == "true"


def test_info_names_the_model_and_its_limits(client, server, tiny_model):
    info = client.get("/info").json()
    cfg = tiny_model.cfg
    assert info["model"] == cfg.name and info["random_weights"] is True
    assert (info["dtype"], info["weights"], info["device"]) == ("float32", "float32", "cpu")
    assert info["understanding"] == {"image_size": cfg.vision.image_size, "image_tokens": cfg.vision.num_tokens}
    assert info["generation"] == {"image_size": cfg.gen_vision.image_size, "image_tokens": cfg.gen_vision.num_tokens}
    assert info["limits"]["max_rows"] == server.runtime.settings.max_rows
    assert info["limits"]["max_parallel_size"] == server.runtime.settings.max_rows // 2  # two rows per image


def test_metrics_cover_queue_rows_steps_tokens_latency_and_errors(client):
    client.post("/understand", json={"question": "What?", "images": [b64(image_bytes())], "max_new_tokens": 3,
                                     "temperature": 1, "seed": 2})
    client.post("/generate", json={"prompt": "a fox", "seed": 1})
    client.post("/generate", json={"prompt": ""})
    reply = client.get("/metrics")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    value = _reader(reply.text)
    assert value("janus_model_info", model="janus-tiny-random", dtype="float32", device="cpu",
                 random_weights="true") == 1
    assert value("janus_queue_waiting_requests") == 0
    assert value("janus_running_rows", kind="generate") == 0 and value("janus_free_rows") > 0
    assert value("janus_image_decode_requests") == 0
    assert value("janus_batch_rows_count") > 0 and value("janus_step_seconds_count") > 0
    assert value("janus_generated_tokens_total", kind="image") >= 1
    assert value("janus_generated_tokens_total", kind="text") >= 1
    assert value("janus_request_duration_seconds_count", route="/generate", status="200") >= 1
    assert value("janus_request_duration_seconds_count", route="/generate", status="422") >= 1
    assert value("janus_error_responses_total", type="validation_error") >= 1
    assert value("janus_ready") == 1


def test_metrics_count_the_work_the_caches_saved(make_server):
    live = make_server()  # a server of its own: the counts start at zero
    picture = b64(image_bytes(seed=77))
    prompts = 0
    with live.client() as http:
        # a question, the same again, then with another system prompt
        for system_prompt in ("Be brief and precise.", "Be brief and precise.", "Say it in verse."):
            reply = http.post("/understand", json={"question": "What?", "images": [picture], "max_new_tokens": 2,
                                                   "system_prompt": system_prompt})
            assert reply.status_code == 200, reply.text
            prompts += reply.json()["usage"]["prompt_tokens"]
        value = _reader(http.get("/metrics").text)
    engine = live.runtime.engine
    assert value("janus_prefix_cache_lookups_total") == 3
    assert value("janus_prefix_cache_hits_total") >= 1  # the repeat
    reused = value("janus_prompt_tokens_total", source="reused")
    computed = value("janus_prompt_tokens_total", source="computed")
    assert reused > 0 and computed > 0 and reused + computed == prompts
    # the image is encoded once; the third question's other system prompt puts it elsewhere (no block matches past
    # it) and its features come from the image cache (so may the repeat's, when its match stops at the image)
    assert value("janus_image_feature_cache_lookups_total", result="miss") == 1
    assert value("janus_image_feature_cache_lookups_total", result="hit") >= 1
    assert value("janus_kv_blocks", state="used") == 0  # nothing runs
    assert value("janus_kv_blocks", state="cached") > 0
    assert value("janus_kv_blocks", state="free") + value("janus_kv_blocks", state="cached") == \
        engine.blocks.num_blocks


def _reader(text: str):
    samples = {(s.name, frozenset(s.labels.items())): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}

    def value(name: str, **labels: str) -> float:
        return samples[(name, frozenset(labels.items()))]

    return value


def test_each_app_gets_its_own_metrics_registry():
    from service.metrics import Metrics

    first, second = Metrics(), Metrics()  # a shared global registry would refuse the second set of names
    first.on_failure("model")
    assert first.registry.get_sample_value("janus_engine_failures_total", {"kind": "model"}) == 1
    assert second.registry.get_sample_value("janus_engine_failures_total", {"kind": "model"}) is None


def test_generated_token_counter_counts_every_image_token_once(client, tiny_model):
    def image_tokens() -> float:
        return _reader(client.get("/metrics").text)("janus_generated_tokens_total", kind="image")

    before = image_tokens()
    assert client.post("/generate", json={"prompt": "a fox", "seed": 3, "parallel_size": 2}).status_code == 200
    assert image_tokens() - before == 2 * tiny_model.cfg.gen_vision.num_tokens


def test_info_says_bf16_weights_are_kept_on_cpu_with_dtype_auto(tmp_path):
    from model.tiny_checkpoint import build_tiny_checkpoint

    directory = build_tiny_checkpoint(tmp_path / "bf16", dtype="bfloat16")
    answers = {}
    for dtype in ("auto", "float32"):
        live = start_server(test_settings(directory, dtype=dtype))
        try:
            with live.client() as http:
                info = http.get("/info").json()
                answers[dtype] = http.post("/understand", json={"question": "What?", "images": [b64(image_bytes())],
                                                               "max_new_tokens": 6, "temperature": 0}).json()["text"]
        finally:
            live.stop()
        assert (info["dtype"], info["weights"]) == ("float32", "bfloat16" if dtype == "auto" else "float32")
    assert answers["auto"] == answers["float32"]
