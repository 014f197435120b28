"""Understanding and generation requests batched together give exactly what each gives alone."""

from __future__ import annotations

from tests.service.helpers import b64, image_bytes, run_in_one_batch

REQUESTS = [
    ("/understand", {"question": "What colour is the car?", "images": [b64(image_bytes(seed=1))],
                     "max_new_tokens": 10}),
    ("/generate", {"prompt": "a red fox", "parallel_size": 2, "seed": 4, "format": "png"}),
    ("/understand", {"question": "How many cats?", "images": [b64(image_bytes(seed=2))], "max_new_tokens": 12,
                     "temperature": 0.9, "top_p": 0.8, "seed": 7}),
    ("/generate", {"prompt": "a harbour at sunset", "parallel_size": 1, "cfg_weight": 1.0, "seed": 5,
                   "format": "png"}),
    ("/understand", {"question": "<image_placeholder> or <image_placeholder>: which is darker?",
                     "images": [b64(image_bytes(seed=3)), b64(image_bytes(seed=4))], "max_new_tokens": 8}),
    ("/generate", {"prompt": "a kite in the park", "parallel_size": 3, "temperature": 0, "seed": 6,
                   "format": "png"}),
]


def _essence(path: str, body: dict) -> object:
    return body["text"] if path == "/understand" else [image["data"] for image in body["images"]]


def test_requests_running_in_one_batch_give_their_solo_results(make_server):
    live = make_server(max_rows=16)
    with live.client() as http:
        solo = [_essence(path, http.post(path, json=payload).json()) for path, payload in REQUESTS]
    replies, steps = run_in_one_batch(live, REQUESTS)
    together = []
    for (path, _), reply in zip(REQUESTS, replies, strict=True):
        assert reply.status_code == 200, reply.text
        together.append(_essence(path, reply.json()))
    assert together == solo
    # They really shared steps: some step ran understanding and generation rows at once.
    assert any(s["running_understand_rows"] and s["running_generate_rows"] for s in steps)
