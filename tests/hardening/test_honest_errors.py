"""Each mistake gets the status and message of what is really wrong: a client leaving mid-upload is a 499 (no
traceback), a body that never arrives is a 408, the pixel limit quoted is the server's, JSON types are strict, too
many images are a 422 on both routes, a cut-short form and a body without Content-Length say so."""

from __future__ import annotations

import json
import logging
import socket
import struct
import time
import zlib
from collections.abc import Iterator

import httpx
import pytest

from tests.hardening.helpers import assert_error_body
from tests.service.helpers import LiveServer, b64, image_bytes, sse_events, wait_until

JSON = {"content-type": "application/json"}
PICTURE = image_bytes(size=(64, 48), seed=3)


@pytest.fixture
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as http:
        yield http


def _png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _raw_exchange(port: int, request: bytes, close_after_send: bool = False) -> bytes:
    """Send bytes on a fresh connection; return everything the server sends until it closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as raw:
        raw.sendall(request)
        if close_after_send:
            return b""
        received = b""
        while chunk := raw.recv(65536):
            received += chunk
        return received


def _status_and_json(response: bytes) -> tuple[int, dict]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


# a client leaving mid-upload


@pytest.mark.parametrize("content_type", ["application/json", "multipart/form-data; boundary=xyz"])
def test_a_client_leaving_mid_upload_is_a_499_without_a_traceback(make_server, caplog, content_type):
    live = make_server()
    head = (f"POST /understand HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}\r\n"
            "Content-Length: 100000\r\n\r\n").encode()
    with caplog.at_level(logging.INFO):
        _raw_exchange(live.port, head + b'{"qu' if content_type == "application/json" else head + b"--xyz\r\n",
                      close_after_send=True)
        wait_until(lambda: live.metric("janus_request_duration_seconds_count", route="/understand", status="499"),
                   "the abandoned upload to be counted")
    assert live.metric("janus_request_duration_seconds_count", route="/understand", status="500") == 0
    assert live.metric("janus_error_responses_total", type="internal_error") == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], caplog.text


# a body that does not arrive


def test_a_body_that_does_not_arrive_in_time_gets_408_and_the_connection_is_closed(make_server):
    live = make_server(body_timeout_s=1.0)
    reply = _raw_exchange(live.port, b"POST /generate HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                                     b"Content-Length: 100000\r\n\r\n{\"p")
    status, body = _status_and_json(reply)  # and the server closed the connection: _raw_exchange returned
    assert status == 408 and body["error"]["type"] == "request_timeout"
    assert "JANUS_BODY_TIMEOUT_S" in body["error"]["message"] and "3 bytes came" in body["error"]["message"]
    with live.client() as http:
        assert http.post("/generate", json={"prompt": "a fox", "format": "png"}).status_code == 200


def test_the_body_deadline_does_not_cut_a_stream_that_outlasts_it(make_server):
    live = make_server(body_timeout_s=1.0)
    gate = live.gate()
    with live.client() as http, http.stream("POST", "/generate", json={"prompt": "a fox", "stream": True}) as reply:
        wait_until(lambda: gate.seen, "the request to run")
        time.sleep(1.5)  # past the body deadline, with the stream open and waiting on the client's disconnect
        gate.release()
        events = list(sse_events(reply.iter_lines()))
    assert reply.status_code == 200 and events[-1].event == "done", events[-1]


# the pixel limit


@pytest.mark.parametrize("side", [5_000, 20_000])  # over our 4 M limit; and over Pillow's own (2 x 179 M) as well
def test_the_pixel_limit_quoted_is_always_the_servers(client, side):
    reply = client.post("/understand", json={"question": "What?", "images": [b64(_png_claiming(side, side))]})
    message = assert_error_body(reply, 413, "payload_too_large")["message"]
    assert "4000000 pixels" in message and "JANUS_MAX_IMAGE_PIXELS" in message
    assert "178956970" not in message and "357913940" not in message and "decompression bomb" not in message


# strict JSON types


@pytest.mark.parametrize(("path", "field", "value"), [
    ("/generate", "seed", "7"), ("/generate", "parallel_size", True), ("/generate", "stream", 1),
    ("/generate", "cfg_weight", "5"), ("/generate", "jpeg_quality", 90.0),
    ("/understand", "seed", "7"), ("/understand", "max_new_tokens", True), ("/understand", "stream", 1),
    ("/understand", "temperature", "0.5"),
])
def test_json_values_of_the_wrong_type_are_refused_not_coerced(client, path, field, value):
    body = ({"prompt": "a fox"} if path == "/generate" else {"question": "What?", "images": [b64(PICTURE)]})
    error = assert_error_body(client.post(path, json={**body, field: value}), 422, "validation_error")
    assert error["details"][0]["loc"] == f"body.{field}"


def test_form_fields_are_text_and_still_converted(client):
    reply = client.post("/understand/upload", files={"image": ("a.png", PICTURE, "image/png")},
                        data={"question": "What?", "seed": "7", "max_new_tokens": "2", "stream": "false"})
    assert reply.status_code == 200 and reply.json()["seed"] == 7


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize(("path", "body"), [("/generate", '{"prompt": "a fox", "temperature": %s}'),
                                            ("/understand", '{"question": "What?", "images": ["%%s"], '
                                                            '"temperature": %s}')])
def test_non_finite_numbers_are_refused_as_such(client, path, body, literal):
    text = body % literal
    if "%s" in text:
        text = text % b64(PICTURE)
    error = assert_error_body(client.post(path, content=text.encode(), headers=JSON), 422, "validation_error")
    assert error["details"] == [{"loc": "body.temperature", "message": "must be a finite number"}]


def test_a_nan_in_a_form_field_is_refused_as_such(client):
    reply = client.post("/understand/upload", files={"image": ("a.png", PICTURE, "image/png")},
                        data={"question": "What?", "temperature": "nan"})
    assert assert_error_body(reply, 422, "validation_error")["details"][0]["message"] == "must be a finite number"


# too many images


@pytest.mark.parametrize("count", [9, 12])
def test_too_many_images_get_the_same_422_on_both_routes(client, count):
    question = "<image_placeholder>" * count + "Which?"
    as_json = client.post("/understand", json={"question": question, "images": [b64(PICTURE)] * count})
    as_form = client.post("/understand/upload", data={"question": question},
                          files=[("image", (f"{i}.png", PICTURE, "image/png")) for i in range(count)])
    for reply in (as_json, as_form):
        error = assert_error_body(reply, 422, "validation_error")
        assert error["details"][0]["loc"] == "body.images" and "at most 8" in error["message"]


# bodies cut short or without a length


def test_a_multipart_body_without_its_closing_boundary_says_so(client):
    body = (b'--xyz\r\nContent-Disposition: form-data; name="question"\r\n\r\nWhat?\r\n'
            b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + PICTURE)
    reply = client.post("/understand/upload", content=body,
                        headers={"content-type": "multipart/form-data; boundary=xyz"})
    message = assert_error_body(reply, 400, "bad_request")["message"]
    assert "closing boundary" in message


@pytest.mark.parametrize(("path", "content_type", "body"), [
    ("/generate", "application/json", b'{"prompt": "a fox"}'),
    ("/understand/upload", "multipart/form-data; boundary=xyz",
     b'--xyz\r\nContent-Disposition: form-data; name="question"\r\n\r\nWhat?\r\n--xyz--\r\n'),
])
def test_an_http_1_0_post_without_content_length_is_told_to_send_one(server, path, content_type, body):
    reply = _raw_exchange(server.port, f"POST {path} HTTP/1.0\r\nContent-Type: {content_type}\r\n\r\n".encode()
                          + body)
    status, error = _status_and_json(reply)
    assert status == 411 and error["error"]["type"] == "length_required", error
    assert "Content-Length" in error["error"]["message"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/images/generations"])
def test_a_v1_http_1_0_post_without_content_length_gets_the_documented_411_in_openai_shape(server, path):
    reply = _raw_exchange(server.port, f"POST {path} HTTP/1.0\r\nContent-Type: application/json\r\n\r\n".encode()
                          + b'{"prompt": "a fox"}')
    status, error = _status_and_json(reply)
    assert status == 411 and error["error"]["code"] == "length_required", error
    assert error["error"]["type"] == "invalid_request_error" and "Content-Length" in error["error"]["message"]


def test_an_empty_json_body_says_it_is_empty(client):
    reply = client.post("/generate", content=b"", headers=JSON)
    assert "empty" in assert_error_body(reply, 400, "bad_request")["message"]
