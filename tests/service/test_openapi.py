"""openapi.yaml is generated from the app, committed, and complete enough to generate a client from."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from service.api.export_openapi import DEFAULT_PATH, render

ROOT = Path(__file__).resolve().parents[2]
SPEC = yaml.safe_load(render())
OPERATIONS = {(path, method): op for path, item in SPEC["paths"].items() for method, op in item.items()}
INFERENCE = [("/understand", "post"), ("/generate", "post")]
V1_INFERENCE = [("/v1/chat/completions", "post"), ("/v1/images/generations", "post")]
STREAMS = {
    ("/understand/stream", "post"): {"delta": "TextDelta", "done": "UnderstandResponse", "error": "ErrorResponse"},
    ("/understand/upload/stream", "post"): {"delta": "TextDelta", "done": "UnderstandResponse",
                                            "error": "ErrorResponse"},
    ("/generate/stream", "post"): {"progress": "Progress", "preview": "Preview", "decoding": "Decoding",
                                   "done": "GenerateResponse", "error": "ErrorResponse"},
}


def test_the_committed_openapi_yaml_matches_the_app():
    assert DEFAULT_PATH == ROOT / "openapi.yaml"
    committed = DEFAULT_PATH.read_text(encoding="utf-8") if DEFAULT_PATH.is_file() else ""
    assert committed == render(), "openapi.yaml is out of date: run python -m service.api.export_openapi"


def test_operation_ids_read_well_in_generated_clients():
    assert {op["operationId"] for op in OPERATIONS.values()} == {
        "understand_image", "understand_image_upload", "understand_image_stream", "understand_image_upload_stream",
        "generate_images", "generate_images_stream", "get_health", "get_readiness", "get_metrics", "get_model_info",
        "list_models", "retrieve_model", "create_chat_completion", "create_image"}


@pytest.mark.parametrize("key", sorted(f"{m.upper()} {p}" for p, m in OPERATIONS))
def test_every_route_has_a_summary_a_description_and_examples(key):
    method, path = key.split(" ")
    op = OPERATIONS[(path, method.lower())]
    assert op["summary"] and len(op["description"]) > 40
    for media in op["responses"]["200"]["content"].values():
        assert media.get("example"), f"{key}: a 200 response without an example"


@pytest.mark.parametrize(("path", "method"), [*INFERENCE, *STREAMS])
def test_inference_routes_document_their_errors_and_bodies(path, method):
    op = OPERATIONS[(path, method)]
    assert {"400", "401", "413", "415", "422", "429", "503", "504"} <= set(op["responses"])
    for status in ("429", "503"):
        assert "Retry-After" in op["responses"][status]["headers"]
    for status, response in op["responses"].items():
        if status != "200":
            assert response["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
            assert response["content"]["application/json"]["example"]["error"]["status"] == int(status)
    body = op["requestBody"]["content"]
    if path.startswith("/understand/upload"):
        assert set(body) == {"multipart/form-data"}
    else:
        assert body["application/json"]["examples"]
        assert body["application/json"]["schema"]["$ref"].rsplit("/", 1)[1] in SPEC["components"]["schemas"]
    assert {"type": "http", "scheme": "bearer"}.items() <= SPEC["components"]["securitySchemes"]["HTTPBearer"].items()
    assert op["security"] == [{"HTTPBearer": []}, {"APIKeyHeader": []}]


def test_understand_documents_json_and_its_upload_path_the_multipart_form():
    assert set(OPERATIONS[("/understand", "post")]["requestBody"]["content"]) == {"application/json"}
    body = OPERATIONS[("/understand/upload", "post")]["requestBody"]["content"]
    form = SPEC["components"]["schemas"]["UnderstandForm"]
    assert set(body) == {"multipart/form-data"} and form["properties"]["image"]["items"]["format"] == "binary"
    assert set(SPEC["components"]["schemas"]["UnderstandRequest"]["properties"]) - {"images", "history"} \
        == set(form["properties"]) - {"image"}


def test_field_limits_appear_in_the_schema():
    generate = SPEC["components"]["schemas"]["GenerateRequest"]["properties"]
    assert (generate["parallel_size"]["minimum"], generate["parallel_size"]["maximum"]) == (1, 16)
    understand = SPEC["components"]["schemas"]["UnderstandRequest"]
    assert understand["properties"]["images"]["maxItems"] == 8 and understand["additionalProperties"] is False


def test_probes_document_503_and_need_no_key():
    for path in ("/health", "/ready"):
        op = OPERATIONS[(path, "get")]
        assert "503" in op["responses"] and "security" not in op


def test_v1_routes_document_errors_in_openai_shape():
    v1 = {key: op for key, op in OPERATIONS.items() if key[0].startswith("/v1/")}
    assert v1
    for (path, _), op in v1.items():
        assert "401" in op["responses"], path
        for status, response in op["responses"].items():
            if status != "200":
                assert response["content"]["application/json"]["schema"]["$ref"].endswith("/OpenAIErrorResponse")
                # (a null `param` is left out of the document's examples)
                assert {"message", "type", "code"} <= set(response["content"]["application/json"]["example"]["error"])


@pytest.mark.parametrize(("path", "method"), V1_INFERENCE)
def test_v1_inference_routes_document_their_errors_bodies_and_streams(path, method):
    op = OPERATIONS[(path, method)]
    # the statuses of the native routes: the body limits (408, 411) apply to /v1 too
    assert set(op["responses"]) - {"200"} == set(OPERATIONS[("/generate", "post")]["responses"]) - {"200"}
    for status in ("429", "503"):
        assert "Retry-After" in op["responses"][status]["headers"]
    assert "text/event-stream" in op["responses"]["200"]["content"]
    body = op["requestBody"]["content"]["application/json"]
    assert body["examples"] and body["schema"]["$ref"].rsplit("/", 1)[1] in SPEC["components"]["schemas"]


@pytest.mark.parametrize(("path", "method"), [*INFERENCE, ("/understand/upload", "post")])
def test_plain_operations_document_only_their_json_answer(path, method):
    # one media type for the 200, so that a generated client types the answer as the response model it is
    assert set(OPERATIONS[(path, method)]["responses"]["200"]["content"]) == {"application/json"}


@pytest.mark.parametrize(("path", "method"), sorted(STREAMS))
def test_stream_operations_document_an_event_stream_with_named_event_payloads(path, method):
    content = OPERATIONS[(path, method)]["responses"]["200"]["content"]
    assert set(content) == {"text/event-stream"}
    stream = content["text/event-stream"]
    assert stream["schema"]["type"] == "string"  # what arrives, to a generated client: text to parse as SSE
    events = {name: ref["$ref"].rsplit("/", 1)[1] for name, ref in stream["x-sse-events"].items()}
    assert events == STREAMS[(path, method)]
    assert set(events.values()) <= set(SPEC["components"]["schemas"])
    assert all(f"event: {name}" in stream["example"] for name in events if name != "error")
