"""Bad inputs that tests/service/test_bad_input.py leaves out, through the real server: each one a clear 4xx with the
one error body, and the server still answering afterwards.

Covered there already (not repeated): undecodable bytes, truncated PNG/JPEG, a PNG bomb, pixel and byte limits,
invalid base64, over-limit JSON bodies (declared and chunked), text/plain and missing content types, malformed JSON,
the range of every option, empty and blank prompts and questions.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.hardening.helpers import assert_error_body
from tests.service.helpers import LiveServer, b64, image_bytes

JSON = {"content-type": "application/json"}
PICTURE = image_bytes(size=(64, 48), seed=3)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(before_data: bytes = b"", data: bytes | None = None) -> bytes:
    """An 8x8 grayscale PNG, optionally with chunks before its pixel data or other (compressed) pixel data."""
    rows = b"".join(b"\0" + b"\x80" * 8 for _ in range(8))
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0)) + before_data
            + _chunk(b"IDAT", zlib.compress(rows) if data is None else data) + _chunk(b"IEND", b""))


def _gif_claiming(width: int, height: int) -> bytes:
    screen = struct.pack("<HHBBB", width, height, 0, 0, 0)
    descriptor = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0)
    return b"GIF89a" + screen + descriptor + b"\x02\x02\x4c\x01\x00;"


def _bmp_claiming(width: int, height: int) -> bytes:
    header = struct.pack("<2sIHHI", b"BM", 54 + 16, 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 16, 2835, 2835, 0, 0)
    return header + info + b"\0" * 16


def _jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(image_bytes(size=(8, 8), fmt="JPEG"))
    frame = data.index(b"\xff\xc0")  # baseline start-of-frame: length, precision, then height and width
    data[frame + 5:frame + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _webp_claiming(width: int, height: int) -> bytes:
    canvas = b"VP8X" + struct.pack("<I", 10) + b"\0" * 4 + (width - 1).to_bytes(3, "little") \
        + (height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 4 + len(canvas)) + b"WEBP" + canvas


def _flipped(data: bytes, start: float, length: int = 40) -> bytes:
    out = bytearray(data)
    first = int(len(out) * start)
    for i in range(first, first + length):
        out[i] ^= 0xFF
    return bytes(out)


def _understand_json(client: httpx.Client, picture: bytes, **options: Any) -> httpx.Response:
    return client.post("/understand", json={"question": "What is it?", "images": [b64(picture)],
                                            "max_new_tokens": 2, **options})


def _understand_form(client: httpx.Client, picture: bytes, **fields: str) -> httpx.Response:
    return client.post("/understand/upload", data={"question": "What is it?", "max_new_tokens": "2", **fields},
                       files={"image": ("picture", picture, "application/octet-stream")})


@pytest.fixture
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as http:
        yield http
        # whatever came before, the server still answers a good request
        assert _understand_json(http, PICTURE).status_code == 200


# truncated and corrupt images


TRUNCATED = [pytest.param(fmt, id=fmt) for fmt in ("GIF", "WEBP", "BMP", "TIFF")]


@pytest.mark.parametrize("fmt", TRUNCATED)
def test_a_truncated_image_of_every_other_format_is_refused_with_400(client, fmt):
    whole = image_bytes(size=(64, 48), fmt=fmt, seed=3)
    assert_error_body(_understand_json(client, whole[: len(whole) // 2]), 400, "bad_request")


# JPEG is left out: its decoder conceals damaged data, which yields a picture rather than an error.
CORRUPT = [
    pytest.param(_png(data=b"\x78\x9c" + b"\xff" * 50), id="png with a broken pixel stream"),
    pytest.param(_png(data=zlib.compress(b"\0" * 10)), id="png with too little pixel data"),
    pytest.param(_flipped(image_bytes(size=(64, 48), seed=3), 0.4), id="png with garbage in the middle"),
    pytest.param(_flipped(image_bytes(size=(64, 48), fmt="GIF", seed=3), 0.4), id="gif with garbage in the middle"),
    pytest.param(_png()[:16] + struct.pack(">II", 0, 8) + _png()[24:], id="png zero pixels wide"),
]


@pytest.mark.parametrize("picture", CORRUPT)
def test_a_corrupt_image_is_refused_with_400_naming_the_image(client, picture):
    error = assert_error_body(_understand_json(client, picture), 400, "bad_request")
    assert "image 1" in error["message"]


def test_a_truncated_upload_is_refused_with_400(client):
    whole = image_bytes(size=(64, 48), fmt="WEBP", seed=3)
    assert_error_body(_understand_form(client, whole[: len(whole) // 2]), 400, "bad_request")


def test_the_bad_image_among_several_is_named(client):
    good, bad = b64(PICTURE), b64(PICTURE[: len(PICTURE) // 2])
    reply = client.post("/understand", json={"question": "<image_placeholder> <image_placeholder> <image_placeholder>?",
                                             "images": [good, good, bad], "max_new_tokens": 2})
    assert "image 3" in assert_error_body(reply, 400, "bad_request")["message"]


# decompression bombs


BOMBS = [
    pytest.param(_gif_claiming(65535, 65535), id="gif 65535x65535"),
    pytest.param(_bmp_claiming(30000, 30000), id="bmp 30000x30000"),
    pytest.param(_jpeg_claiming(65000, 65000), id="jpeg 65000x65000"),
    pytest.param(_webp_claiming(16383, 16383), id="webp 16383x16383"),
    pytest.param(_bmp_claiming(3000, 3000), id="bmp over the server's pixel limit only"),
]


@pytest.mark.parametrize("bomb", BOMBS)
def test_a_bomb_in_every_format_is_refused_with_413_from_its_header(client, bomb):
    assert len(bomb) < 1000  # a few hundred bytes that claim gigapixels
    assert_error_body(_understand_json(client, bomb), 413, "payload_too_large")


@pytest.mark.parametrize("bomb", BOMBS[:2])
def test_a_bomb_uploaded_as_a_file_is_refused_with_413(client, bomb):
    assert_error_body(_understand_form(client, bomb), 413, "payload_too_large")


@pytest.mark.parametrize("kind", [b"zTXt", b"iCCP"])
def test_a_png_whose_compressed_metadata_expands_to_64_mib_is_refused_with_a_4xx(client, kind):
    # 64 MiB of zeros compress to ~64 kB: under every byte limit, so only the decoder's own text-chunk cap stops it.
    bomb = _png(before_data=_chunk(kind, b"name\0\0" + zlib.compress(b"\0" * (64 * 1024 * 1024), 9)))
    reply = _understand_json(client, bomb)
    assert reply.status_code in (400, 413), reply.text
    assert_error_body(reply, reply.status_code)


# huge bodies


def test_an_upload_over_the_body_limit_is_refused_with_413_from_its_content_length(client):
    reply = client.post("/understand/upload", data={"question": "What?"},
                        files={"image": ("big.png", b"\0" * (5 * 1024 * 1024), "image/png")})
    assert_error_body(reply, 413, "payload_too_large")


def test_a_chunked_upload_over_the_body_limit_is_refused_with_413(client):
    boundary = "hardening-boundary"

    def parts() -> Iterator[bytes]:
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
               "Content-Type: image/png\r\n\r\n").encode()
        for _ in range(5):
            yield b"\0" * (1024 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    reply = client.post("/understand/upload", content=parts(),
                        headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert_error_body(reply, 413, "payload_too_large")


def test_json_nested_ten_thousand_deep_is_refused_with_400(client):
    body = b'{"prompt": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    assert_error_body(client.post("/generate", content=body, headers=JSON), 400, "bad_request")


def test_thousands_of_images_under_the_body_limit_are_refused_with_422(client):
    reply = client.post("/understand", json={"question": "What?", "images": ["AAAA"] * 10_000})
    assert assert_error_body(reply, 422, "validation_error")["details"][0]["loc"] == "body.images"


def test_a_form_text_field_over_its_size_limit_is_refused_with_400(client):
    reply = client.post("/understand/upload", data={"question": "q" * 200_000},
                        files={"image": ("a.png", PICTURE, "image/png")})
    assert_error_body(reply, 400, "bad_request")


def test_a_form_with_too_many_fields_is_refused_with_400(client):
    reply = client.post("/understand/upload", data={f"field{i}": "x" for i in range(20)},
                        files={"image": ("a.png", PICTURE, "image/png")})
    assert_error_body(reply, 400, "bad_request")


# content types


@pytest.mark.parametrize(("path", "content_type", "body"), [
    ("/understand/upload", "text/plain", b"What is it?"),
    ("/understand", "application/x-www-form-urlencoded", b"question=What"),
    ("/generate", "application/x-www-form-urlencoded", b"prompt=a+fox"),
    ("/generate", "multipart/form-data; boundary=b", b'--b\r\nContent-Disposition: form-data; name="prompt"\r\n\r\n'
                                                     b"a fox\r\n--b--\r\n"),
    ("/generate", "application/vnd.api+json", b'{"prompt": "a fox"}'),
    ("/generate", "image/png", PICTURE),
    ("/understand", ";;;", b'{"question": "What?"}'),
])
def test_a_content_type_the_route_does_not_read_is_refused_with_415(client, path, content_type, body):
    reply = client.post(path, content=body, headers={"content-type": content_type})
    assert_error_body(reply, 415, "unsupported_media_type")


@pytest.mark.parametrize(("content_type", "body"), [
    ("multipart/form-data", b"--x\r\n"),  # no boundary
    ("multipart/form-data; boundary=abc", b"not a multipart body at all"),
])
def test_a_malformed_multipart_body_is_refused_with_400(client, content_type, body):
    reply = client.post("/understand/upload", content=body, headers={"content-type": content_type})
    assert_error_body(reply, 400, "bad_request")


def test_json_in_a_charset_other_than_utf8_is_refused_with_400(client):
    reply = client.post("/generate", content='{"prompt": "a fox"}'.encode("utf-16"),
                        headers={"content-type": "application/json; charset=utf-16"})
    assert_error_body(reply, 400, "bad_request")


# numbers


@pytest.mark.parametrize(("field", "literal"), [
    ("cfg_weight", "NaN"), ("cfg_weight", "Infinity"), ("temperature", "-Infinity"), ("cfg_weight", "1e400"),
    ("parallel_size", "99999999999999999999999999999999"), ("seed", "1e30"), ("seed", "18446744073709551616"),
    ("parallel_size", "2.5"), ("temperature", '"nan"'), ("cfg_weight", '"inf"'), ("jpeg_quality", "-0.5"),
])
def test_non_finite_and_oversized_generate_numbers_are_refused_with_422(client, field, literal):
    body = f'{{"prompt": "a fox", "{field}": {literal}}}'.encode()
    error = assert_error_body(client.post("/generate", content=body, headers=JSON), 422, "validation_error")
    assert error["details"][0]["loc"] == f"body.{field}"


@pytest.mark.parametrize(("field", "value"), [
    ("temperature", "nan"), ("temperature", "inf"), ("top_p", "NaN"), ("top_p", "-inf"),
    ("seed", "9" * 5000), ("max_new_tokens", "1e3"), ("max_new_tokens", "-1"),
])
def test_non_finite_and_oversized_form_numbers_are_refused_with_422(client, field, value):
    error = assert_error_body(_understand_form(client, PICTURE, **{field: value}), 422, "validation_error")
    assert error["details"][0]["loc"] == f"body.{field}"


def test_a_nan_top_p_in_json_is_refused_with_422(client):
    body = json.dumps({"question": "What?", "images": [b64(PICTURE)], "top_p": float("nan")}).encode()
    assert_error_body(client.post("/understand", content=body, headers=JSON), 422, "validation_error")


# text: unicode, empty, broken


@pytest.mark.parametrize("raw", [
    pytest.param(rb'"a fox \ud800"', id="lone high surrogate"),
    pytest.param(rb'"a fox \udfff x"', id="lone low surrogate"),
    pytest.param(b'"a fox \x00 at night"', id="raw control character"),
    pytest.param(b'"\xff\xfe a fox"', id="invalid utf-8"),
])
def test_a_prompt_that_is_not_valid_unicode_text_is_refused_with_400(client, raw):
    reply = client.post("/generate", content=b'{"prompt": ' + raw + b"}", headers=JSON)
    assert_error_body(reply, 400, "bad_request")


def test_a_question_with_a_lone_surrogate_is_refused_with_400(client):
    body = b'{"question": "What \\ud83e is it?", "images": ["' + b64(PICTURE).encode() + b'"]}'
    assert_error_body(client.post("/understand", content=body, headers=JSON), 400, "bad_request")


@pytest.mark.parametrize("prompt", ["\u3000\u00a0\u2003", "\n\r\t\u2028\u2029"])
def test_a_prompt_of_unicode_whitespace_only_is_refused_with_422(client, prompt):
    assert_error_body(client.post("/generate", json={"prompt": prompt}), 422, "validation_error")


@pytest.mark.parametrize("question", ["", "   "])
def test_an_empty_or_blank_uploaded_question_is_refused_with_422(client, question):
    error = assert_error_body(_understand_form(client, PICTURE, question=question), 422, "validation_error")
    assert error["details"][0]["loc"] == "body.question"


def test_a_prompt_of_4000_emoji_that_overflows_the_context_is_refused_with_422(client):
    # within the 4000-character field limit, but far more tokens than the 512-token context holds
    error = assert_error_body(client.post("/generate", json={"prompt": "🦊" * 4000}), 422, "invalid_request")
    assert "context" in error["message"]


def test_a_system_prompt_that_overflows_the_context_is_refused_with_422(client):
    reply = _understand_json(client, PICTURE, system_prompt="系统" * 4000)
    assert "context" in assert_error_body(reply, 422, "invalid_request")["message"]


UNICODE_PROMPTS = [
    "a fox \u0000 at night",  # an escaped NUL is valid JSON text
    "\u202eright to left\u202c and back",
    "e\u0301\u0301\u0301 combining marks",
    "👩\u200d👩\u200d👧 family, 🇯🇵 flag",
    "𝔣𝔬𝔵 in 中文 и по-русски",
]


@pytest.mark.parametrize("prompt", UNICODE_PROMPTS)
def test_unusual_but_valid_unicode_is_served(client, prompt):
    generated = client.post("/generate", json={"prompt": prompt, "seed": 1})
    assert generated.status_code == 200, generated.text
    answered = client.post("/understand", json={"question": prompt, "images": [b64(PICTURE)], "max_new_tokens": 2})
    assert answered.status_code == 200, answered.text
    uploaded = _understand_form(client, PICTURE, question=prompt)
    assert uploaded.status_code == 200, uploaded.text
