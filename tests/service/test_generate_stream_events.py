"""The native generation stream's `decoding` event (every image token drawn, the images being decoded) and its opt-in
`preview` events (the images as drawn so far), against a live server on the tiny checkpoint."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import paddle
import pytest
from PIL import Image

from service.engine.previews import GREY
from tests.service.helpers import LiveServer, SSEEvent, decode_b64_image, sse_events, wait_until
from tests.service.openai.test_images import _expected_preview, _reference_tokens

PROMPT = "a red fox in the snow"


def jpeg_round_trip(pixels: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def stream(live: LiveServer, body: dict[str, Any], on_event=None) -> list[SSEEvent]:
    events = []
    with live.client() as http, http.stream("POST", "/generate/stream", json=body) as reply:
        assert reply.status_code == 200, reply.read()
        for event in sse_events(reply.iter_lines()):
            events.append(event)
            if on_event is not None:
                on_event(event)
    return events


def test_a_decoding_event_follows_the_last_step_and_comes_before_the_images(server):
    total = server.runtime.info.output_image_tokens
    events = stream(server, {"prompt": PROMPT, "seed": 3, "parallel_size": 2})
    names = [event.event for event in events]
    assert names[-2:] == ["decoding", "done"] and names.count("decoding") == 1, names
    last_progress = events[-3]
    assert last_progress.event == "progress" and last_progress.data["steps_done"] == total
    assert events[-2].data == {"id": events[-1].data["id"], "images": 2}


def test_a_stream_without_previews_sends_none(server):
    names = [event.event for event in stream(server, {"prompt": PROMPT, "seed": 4})]
    assert "preview" not in names and names[-1] == "done", names


@pytest.fixture
def paced(server: LiveServer) -> Iterator[dict[int, threading.Event]]:
    """Holds the engine, in the step after each preview point, until the client has seen that preview: previews
    decode at low priority and a newer one (or the final images) may replace them, which a loaded machine must not
    turn into a different sequence of events here. Maps steps done -> seen."""
    seen: dict[int, threading.Event] = {}

    def hook(request: Any) -> None:
        if request.steps_done in request.preview_steps:
            seen.setdefault(request.steps_done, threading.Event()).wait(timeout=120)

    server.runtime.engine.fault_hook = hook
    yield seen
    server.runtime.engine.fault_hook = None


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_previews_show_the_images_as_drawn_so_far(server, paced, tiny_model, tiny_tokenizer, fmt):
    total = server.runtime.info.output_image_tokens
    steps = (total // 3, 2 * total // 3)  # two previews: evenly spaced inside the drawing
    for point in steps:
        paced.setdefault(point, threading.Event())

    def note(event: SSEEvent) -> None:
        if event.event == "preview":
            paced[event.data["steps_done"]].set()

    quality = {"jpeg_quality": 95} if fmt == "jpeg" else {}
    events = stream(server, {"prompt": PROMPT, "seed": 8, "parallel_size": 2, "previews": 2, "format": fmt,
                             "cfg_weight": 5, "temperature": 1, **quality}, note)
    previews = [event.data for event in events if event.event == "preview"]
    assert [p["steps_done"] for p in previews] == list(steps)
    done = events[-1].data
    assert events[-1].event == "done"
    media_type = {"png": "image/png", "jpeg": "image/jpeg"}[fmt]
    tokens = _reference_tokens(tiny_model, tiny_tokenizer, PROMPT, 2, seed=8)
    final = tiny_model.decode_images(paddle.to_tensor(tokens))
    for preview in previews:
        assert preview["id"] == done["id"] and preview["steps_total"] == total
        assert preview["format"] == fmt and preview["media_type"] == media_type
        assert [image["index"] for image in preview["images"]] == [0, 1]
        expected = _expected_preview(tiny_model, tokens, preview["steps_done"])
        for image in preview["images"]:
            shown = decode_b64_image(image["data"])
            assert shown.format == fmt.upper()
            got = np.asarray(shown.convert("RGB"))
            assert got.shape == expected[image["index"]].shape
            if fmt == "png":  # lossless: exactly the partial drawing, grey where nothing is drawn yet
                np.testing.assert_array_equal(got, expected[image["index"]])
            else:  # the partial drawing as a JPEG of the asked quality
                np.testing.assert_array_equal(got, jpeg_round_trip(expected[image["index"]], quality=95))
            assert (np.abs(got.astype(int) - GREY).max(axis=-1) <= 8).any()  # undrawn positions stay grey
            assert not np.array_equal(got, final[image["index"]])
    # previews come before the end of the drawing
    names = [event.event for event in events]
    assert max(i for i, name in enumerate(names) if name == "preview") < names.index("decoding")


def test_previews_are_refused_out_of_range(server):
    with server.client() as http:
        reply = http.post("/generate/stream", json={"prompt": PROMPT, "previews": 4})
    assert reply.status_code == 422
    assert reply.json()["error"]["details"][0]["loc"] == "body.previews"


def test_previews_are_ignored_by_the_plain_operation(server):
    with server.client() as http:
        plain = http.post("/generate", json={"prompt": PROMPT, "seed": 5, "previews": 3, "format": "png"})
        reference = http.post("/generate", json={"prompt": PROMPT, "seed": 5, "format": "png"})
    assert plain.status_code == 200, plain.text
    assert plain.json()["images"] == reference.json()["images"]


def test_the_decoding_event_arrives_while_the_decoder_is_still_busy(make_server):
    live = make_server()
    gate = live.decode_gate()
    names: list[str] = []
    out: dict = {}

    def read() -> None:
        out["events"] = stream(live, {"prompt": PROMPT, "seed": 6}, lambda event: names.append(event.event))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    wait_until(gate.entered.is_set, "the images to be in the decoder")
    wait_until(lambda: "decoding" in names, "the decoding event while the decoder is held")
    assert "done" not in names
    gate.release()
    reader.join(60)
    assert [event.event for event in out["events"]][-2:] == ["decoding", "done"]
