"""Chat logprobs describe exactly the returned content: the tokens' bytes, joined, are the answer's text, sampled
answers included (the tiny model samples control tokens such as `<|User|>`, which the text leaves out), streamed or
not, and also when a stop text cuts the answer. Through the official `openai` SDK against a live server."""

from __future__ import annotations

import openai
import pytest

SEEDS = range(6)
MESSAGES = [{"role": "user", "content": "Tell me a story about a fox."}]


def sdk(live) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0)


def _ask(live, seed: int, **fields) -> tuple[str, list]:
    answer = sdk(live).chat.completions.create(model="janus", messages=MESSAGES, temperature=1.0, seed=seed,
                                               max_tokens=40, logprobs=True, top_logprobs=2, **fields)
    return answer.choices[0].message.content, answer.choices[0].logprobs.content


def _stream(live, seed: int, **fields) -> tuple[str, list]:
    text, entries = "", []
    for chunk in sdk(live).chat.completions.create(model="janus", messages=MESSAGES, temperature=1.0, seed=seed,
                                                   max_tokens=40, logprobs=True, top_logprobs=2, stream=True,
                                                   **fields):
        for choice in chunk.choices:
            text += choice.delta.content or ""
            if choice.logprobs is not None:
                entries += choice.logprobs.content
    return text, entries


def _joined(entries: list) -> str:
    return b"".join(bytes(entry.bytes) for entry in entries).decode("utf-8", errors="replace")


def _same(got: list, expected: list) -> None:
    """The same tokens with the same log-probabilities (up to float noise: a prompt reused from the prefix cache
    is not recomputed, which moves the last digits)."""
    assert [(e.token, e.bytes, [t.token for t in e.top_logprobs]) for e in got] == [
        (e.token, e.bytes, [t.token for t in e.top_logprobs]) for e in expected]
    values = [[e.logprob, *(t.logprob for t in e.top_logprobs)] for e in got]
    assert values == [pytest.approx([e.logprob, *(t.logprob for t in e.top_logprobs)], abs=1e-4) for e in expected]


@pytest.fixture(scope="module")
def answers(server) -> dict[int, tuple[str, list]]:
    return {seed: _ask(server, seed) for seed in SEEDS}


def test_the_tokens_bytes_join_to_the_answer(answers):
    for text, entries in answers.values():
        assert _joined(entries) == text
        assert "".join(entry.token for entry in entries) == text or "\ufffd" in text
    # a token the text leaves out (a control token) is listed with no text and no bytes, not with its name
    silent = [entry for _, entries in answers.values() for entry in entries if not entry.bytes]
    assert silent, "no sampled answer held a control token: the test shows nothing"
    assert all(entry.token == "" for entry in silent)
    assert all("<|" not in entry.token and "begin" not in entry.token for _, entries in answers.values()
               for entry in entries)


def test_every_generated_token_is_listed(server, answers):
    for seed, (_, entries) in answers.items():
        usage = sdk(server).chat.completions.create(model="janus", messages=MESSAGES, temperature=1.0, seed=seed,
                                                    max_tokens=40).usage
        assert len(entries) == usage.completion_tokens


def test_streamed_logprobs_are_the_answers_own(server, answers):
    for seed in SEEDS:
        text, entries = _stream(server, seed)
        assert text == answers[seed][0]
        _same(entries, answers[seed][1])
        assert _joined(entries) == text


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
def test_an_answer_cut_by_a_stop_text_lists_its_tokens_up_to_the_cut(server, answers, streamed):
    cuts, inside = 0, 0
    for seed, (full, full_entries) in answers.items():
        # two characters from the middle on (likely starting inside a token), none of them a replacement character
        starts = [i for i in range(len(full) // 2, len(full) - 1) if "\ufffd" not in full[i:i + 2]]
        if not starts:
            continue
        stop = full[starts[0]:starts[0] + 2]
        text, entries = (_stream if streamed else _ask)(server, seed, stop=[stop])
        assert text == full[:full.find(stop)]
        assert _joined(entries) == text
        # the same tokens as the uncut answer, up to where the text ends (the last one may be cut short)
        _same(entries[:-1], full_entries[:len(entries) - 1])
        if entries:
            last, whole = entries[-1], full_entries[len(entries) - 1]
            assert bytes(whole.bytes).startswith(bytes(last.bytes)) and last.bytes
            assert last.logprob == pytest.approx(whole.logprob, abs=1e-4)
            inside += len(last.bytes) < len(whole.bytes)
        cuts += 1
    assert cuts >= 4 and inside >= 1  # some stop text began inside a token
