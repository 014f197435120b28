"""What the /v1 routes promise across server restarts, on two real `janus-serve` processes one after the other:
completion ids never repeat, and the model's `created` stays what it was."""

from __future__ import annotations

import os
from pathlib import Path

import openai

from tests.hardening.helpers import ServerProcess, spawn_server


def _seen(process: ServerProcess) -> tuple[list[str], list[str], int]:
    """Chat completion ids (plain and streamed), their X-Request-Id headers and the model's `created`."""
    client = openai.OpenAI(base_url=f"{process.url}/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": "Hi"}]
    ids, request_ids = [], []
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(model="janus", max_tokens=2, messages=messages)
        ids.append(raw.parse().id)
        request_ids.append(raw.headers["x-request-id"])
    with client.chat.completions.with_streaming_response.create(model="janus", max_tokens=2, messages=messages,
                                                                stream=True) as streamed:
        chunks = list(streamed.parse())
        ids.append(chunks[0].id)
        request_ids.append(streamed.headers["x-request-id"])
    assert all(chunk.id == chunks[0].id for chunk in chunks)
    created = {model.created for model in client.models.list().data}
    assert len(created) == 1
    return ids, request_ids, created.pop()


def test_completion_ids_are_new_and_the_model_created_time_is_the_same_after_a_restart(tiny_dir: Path,
                                                                                       tmp_path: Path):
    runs = []
    for _ in range(2):
        process = spawn_server(tiny_dir, tmp_path)
        try:
            runs.append(_seen(process))
        finally:
            process.kill()
    (first_ids, first_requests, first_created), (second_ids, second_requests, second_created) = runs
    assert len(set(first_ids + second_ids)) == 6, (first_ids, second_ids)
    assert all(chat_id.startswith("chatcmpl-") for chat_id in first_ids + second_ids)
    # the id a client sees leads to the server's log lines: it holds the request id the server logs and returns
    for chat_id, request_id in zip(first_ids + second_ids, first_requests + second_requests, strict=True):
        assert chat_id.endswith(request_id)
    # the checkpoint's time, not the start time: the same for every start of the same checkpoint
    assert first_created == second_created == int(os.stat(tiny_dir / "config.json").st_mtime)
