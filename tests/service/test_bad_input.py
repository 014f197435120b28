"""Every kind of bad request gets the right status and the one error body, through the real server."""

from __future__ import annotations

import struct
import zlib

import httpx
import pytest

from tests.service.helpers import b64, image_bytes

GOOD_IMAGE = b64(image_bytes(seed=0))


def assert_error(reply: httpx.Response, status: int, kind: str, mentions: str = "") -> dict:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    assert reply.headers["x-random-weights"] == "true"  # errors say it too, in the header
    body = reply.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert error["status"] == status and error["type"] == kind and error["message"]
    assert mentions.lower() in error["message"].lower(), error["message"]
    return error


def png_claiming(width: int, height: int) -> bytes:
    """A small, well-formed PNG header that claims a huge grayscale image (a decompression bomb's shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 4096))
            + chunk(b"IEND", b""))


def understand(client, images, **options):
    return client.post("/understand", json={"question": "What is it?", "images": images, **options})


# images


def test_bytes_that_are_no_image_are_refused_with_400(client):
    assert_error(understand(client, [b64(b"definitely not an image" * 10)]), 400, "bad_request",
                 "image 1 is not an image")


def test_a_truncated_png_is_refused_with_400(client):
    whole = image_bytes(size=(64, 64), seed=1)
    assert_error(understand(client, [b64(whole[: len(whole) // 2])]), 400, "bad_request", "truncated")


def test_a_truncated_jpeg_is_refused_with_400(client):
    whole = image_bytes(size=(64, 64), fmt="JPEG", seed=1)
    assert_error(understand(client, [b64(whole[: len(whole) // 3])]), 400, "bad_request", "image 1")


def test_a_decompression_bomb_is_refused_with_413_before_decoding(client):
    assert_error(understand(client, [b64(png_claiming(100_000, 100_000))]), 413, "payload_too_large", "image 1")


def test_an_image_over_the_pixel_limit_is_refused_with_413(client):
    # 3000 x 3000 = 9 M pixels: under Pillow's own bomb threshold, over this server's 4 M limit.
    assert_error(understand(client, [b64(png_claiming(3000, 3000))]), 413, "payload_too_large", "pixels")


def test_an_image_over_the_byte_limit_is_refused_with_413(client):
    assert_error(understand(client, [b64(b"\0" * (1024 * 1024 + 10))]), 413, "payload_too_large", "limit")


def test_invalid_base64_is_refused_with_400(client):
    assert_error(understand(client, ["not*base64!"]), 400, "bad_request", "base64")


def test_an_empty_upload_is_refused_with_400(client):
    reply = client.post("/understand", data={"question": "What?"}, files={"image": ("a.png", b"", "image/png")})
    assert_error(reply, 400, "bad_request", "empty")


# bodies and content types


def test_a_body_over_the_limit_is_refused_with_413_from_its_content_length(client):
    reply = client.post("/generate", content=b"x" * (4 * 1024 * 1024 + 1), headers={"content-type": "application/json"})
    assert_error(reply, 413, "payload_too_large", "limit")


def test_a_chunked_body_over_the_limit_is_refused_with_413(client):
    def chunks():
        for _ in range(5):
            yield b"x" * (1024 * 1024)

    reply = client.post("/generate", content=chunks(), headers={"content-type": "application/json"})
    assert_error(reply, 413, "payload_too_large", "limit")


@pytest.mark.parametrize("path", ["/understand", "/generate"])
def test_a_wrong_content_type_is_refused_with_415(client, path):
    reply = client.post(path, content=b"prompt=a fox", headers={"content-type": "text/plain"})
    assert_error(reply, 415, "unsupported_media_type", "text/plain")


def test_a_missing_content_type_is_refused_with_415(client):
    assert_error(client.post("/generate", content=b'{"prompt": "x"}'), 415, "unsupported_media_type")


@pytest.mark.parametrize("path", ["/understand", "/generate"])
def test_malformed_json_is_refused_with_400(client, path):
    reply = client.post(path, content=b'{"prompt": "a fox",', headers={"content-type": "application/json"})
    assert_error(reply, 400, "bad_request", "json")


# fields


@pytest.mark.parametrize(("field", "value"), [
    ("max_new_tokens", 0), ("max_new_tokens", 5000), ("temperature", -0.1), ("temperature", 2.5),
    ("top_p", 0), ("top_p", 1.5), ("seed", -1), ("seed", 2**32), ("max_new_tokens", "many"), ("stream", "maybe"),
])
def test_out_of_range_understand_options_are_refused_with_422(client, field, value):
    error = assert_error(understand(client, [GOOD_IMAGE], **{field: value}), 422, "validation_error", field)
    assert error["details"][0]["loc"] == f"body.{field}"


@pytest.mark.parametrize(("field", "value"), [
    ("parallel_size", 0), ("parallel_size", 17), ("cfg_weight", 0.5), ("cfg_weight", 21), ("temperature", -1),
    ("seed", -5), ("format", "gif"), ("jpeg_quality", 0), ("jpeg_quality", 101),
])
def test_out_of_range_generate_options_are_refused_with_422(client, field, value):
    error = assert_error(client.post("/generate", json={"prompt": "a fox", field: value}), 422, "validation_error",
                         field)
    assert error["details"][0]["loc"] == f"body.{field}"


@pytest.mark.parametrize("prompt", ["", "   \n\t "])
def test_an_empty_prompt_is_refused_with_422(client, prompt):
    assert_error(client.post("/generate", json={"prompt": prompt}), 422, "validation_error", "prompt")


@pytest.mark.parametrize("question", ["", "  "])
def test_an_empty_question_is_refused_with_422(client, question):
    reply = client.post("/understand", json={"question": question, "images": [GOOD_IMAGE]})
    assert_error(reply, 422, "validation_error", "question")


def test_an_unknown_option_is_refused_rather_than_ignored(client):
    assert_error(client.post("/generate", json={"prompt": "a fox", "n": 4}), 422, "validation_error", "n")


def test_jpeg_quality_with_png_is_refused_with_422(client):
    reply = client.post("/generate", json={"prompt": "a fox", "format": "png", "jpeg_quality": 80})
    assert_error(reply, 422, "validation_error", "jpeg_quality")


def test_tags_that_do_not_match_the_images_are_refused_with_422(client):
    reply = client.post("/understand", json={"question": "<image_placeholder> and <image_placeholder>?",
                                             "images": [GOOD_IMAGE]})
    assert_error(reply, 422, "validation_error", "2 <image_placeholder> tag(s) but 1 image")


def test_several_images_without_tags_are_refused_with_422(client):
    assert_error(understand(client, [GOOD_IMAGE, GOOD_IMAGE]), 422, "validation_error", "<image_placeholder>")


def test_more_new_tokens_than_the_context_holds_is_refused_with_422(client):
    # 4000 is within the field's range but not within this server's 512-token context.
    assert_error(understand(client, [GOOD_IMAGE], max_new_tokens=4000), 422, "invalid_request", "context")


def test_a_question_longer_than_the_context_is_refused_with_422(client):
    long_question = "describe every pixel of the picture in great detail " * 100
    reply = client.post("/understand", json={"question": long_question, "images": [GOOD_IMAGE]})
    assert_error(reply, 422, "invalid_request", "context")


def test_more_rows_than_the_server_has_is_refused_with_422(client):
    # 16 images with guidance need 32 rows; this server runs 16.
    assert_error(client.post("/generate", json={"prompt": "a fox", "parallel_size": 16}), 422, "invalid_request",
                 "parallel_size")


# multipart specifics


def test_a_multipart_image_sent_as_text_is_refused_with_400(client):
    reply = client.post("/understand", data={"question": "What?", "image": GOOD_IMAGE},
                        files={"other": ("x.txt", b"x", "text/plain")})
    assert_error(reply, 400, "bad_request")


def test_a_non_numeric_multipart_option_is_refused_with_422(client):
    reply = client.post("/understand", data={"question": "What?", "max_new_tokens": "lots"},
                        files={"image": ("a.png", image_bytes(), "image/png")})
    assert_error(reply, 422, "validation_error", "max_new_tokens")


def test_more_files_than_allowed_are_refused_with_422_as_in_json(client):
    files = [("image", (f"{i}.png", image_bytes(size=(8, 8)), "image/png")) for i in range(9)]
    assert_error(client.post("/understand", data={"question": "What?"}, files=files), 422, "validation_error",
                 "images")


# routing


def test_unknown_routes_and_methods_use_the_same_error_body(client):
    assert_error(client.get("/nowhere"), 404, "not_found")
    assert_error(client.get("/generate"), 405, "method_not_allowed")
