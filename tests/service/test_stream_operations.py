"""POST /understand/stream and /generate/stream: the documented event-stream operations answer as documented."""

from __future__ import annotations

from tests.service.helpers import b64, image_bytes, sse_events

UNDERSTAND = {"question": "What is it?", "images": [b64(image_bytes(seed=4))], "max_new_tokens": 5, "seed": 3}


def test_understand_stream_sends_deltas_then_the_answer_of_the_plain_operation(client):
    plain = client.post("/understand", json=UNDERSTAND).json()
    with client.stream("POST", "/understand/stream", json=UNDERSTAND) as reply:
        assert reply.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(reply.iter_lines()))
    assert {e.event for e in events[:-1]} <= {"delta"} and events[-1].event == "done"
    assert "".join(e.data["text"] for e in events[:-1]) == events[-1].data["text"] == plain["text"]


def test_the_upload_stream_takes_the_form_and_answers_as_the_json_stream(client):
    with client.stream("POST", "/understand/stream", json=UNDERSTAND) as reply:
        json_events = [(e.event, e.data.get("text")) for e in sse_events(reply.iter_lines())]
    form = {key: str(value) for key, value in UNDERSTAND.items() if key != "images"}
    files = {"image": ("picture.png", image_bytes(seed=4), "image/png")}
    with client.stream("POST", "/understand/upload/stream", data=form, files=files) as reply:
        assert reply.headers["content-type"].startswith("text/event-stream")
        form_events = [(e.event, e.data.get("text")) for e in sse_events(reply.iter_lines())]
    assert form_events == json_events and form_events[-1][0] == "done"


def test_generate_stream_sends_progress_then_the_images_even_without_stream_true(client):
    body = {"prompt": "a fox", "seed": 2, "format": "png", "stream": False}
    plain = client.post("/generate", json=body).json()
    with client.stream("POST", "/generate/stream", json=body) as reply:
        assert reply.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(reply.iter_lines()))
    assert [e.event for e in events[:-2]] == ["progress"] * (len(events) - 2)
    assert [e.event for e in events[-2:]] == ["decoding", "done"]
    assert events[-3].data["steps_done"] == events[-3].data["steps_total"]
    assert events[-1].data["images"] == plain["images"]


def test_a_stream_operation_refuses_bad_input_with_the_error_body(client):
    reply = client.post("/generate/stream", json={"prompt": "a fox", "parallel_size": 0})
    assert reply.status_code == 422 and reply.json()["error"]["type"] == "validation_error"
