"""Conversations: OpenAI content parts joined as the reference chat template joins them, every turn closed as it
closes them, and the native question/history turned into the same conversation."""

from __future__ import annotations

import pytest

from model.chat_template import DEFAULT_SYSTEM_PROMPT, IMAGE, conversation_prompt, understanding_prompt
from model.special_tokens import EOS_TOKEN
from service.answer_text import AnswerDetokenizer, cut_at_stop, releasable
from service.conversation import join_parts
from service.processing import InputError, question_conversation

U, A, IMG = "<|User|>", "<|Assistant|>", "<image_placeholder>"


@pytest.mark.parametrize(("parts", "text"), [
    (["  Hello there  "], "Hello there"),
    ([IMAGE, " What is it? "], f"{IMG}\n What is it?"),
    (["Compare ", IMAGE, "with", IMAGE, "Which?"], f"Compare \n{IMG}\nwith\n{IMG}\nWhich?"),
    (["one", "two"], "one two"),
    ([IMAGE, IMAGE], f"{IMG}\n\n{IMG}"),
    (["Look:", IMAGE], f"Look:\n{IMG}"),
])
def test_parts_are_joined_like_the_reference_template(parts, text):
    joined = join_parts(parts)
    assert "".join(s if isinstance(s, str) else s.token for s in joined) == text


def test_a_conversation_closes_user_turns_with_the_separator_and_assistant_turns_with_eos():
    prompt = conversation_prompt([("user", (IMAGE, "\nDescribe it.")), ("assistant", "A car."),
                                  ("user", "And the sky?")], system_prompt="S")
    assert prompt.text == f"S\n\n{U}: {IMG}\nDescribe it.\n\n{A}: A car.{EOS_TOKEN}{U}: And the sky?\n\n{A}:"


def test_turns_of_one_role_in_a_row_and_empty_turns_are_each_closed():
    prompt = conversation_prompt([("user", "a"), ("user", "b"), ("assistant", ""), ("user", "c")], system_prompt="")
    assert prompt.text == f"{U}: a\n\n{U}: b\n\n{A}: {EOS_TOKEN}{U}: c\n\n{A}:"


def test_alternating_turns_render_as_the_understanding_prompt():
    history = [("Describe <image_placeholder>.", "A red car."), ("Why?", "Because.")]
    turns = [t for user, answer in history for t in (("user", user), ("assistant", answer))]
    assert conversation_prompt([*turns, ("user", "Sure?")]).text == understanding_prompt(
        "Sure?", history=history).text


def test_the_native_question_with_one_untagged_image_puts_it_first():
    conversation = question_conversation("What is it?", 1)
    assert conversation.turns[-1].content == (IMAGE, "\n", "What is it?")
    assert conversation.system_prompt is None
    prompt = conversation_prompt([(t.role, t.content) for t in conversation.turns], system_prompt=DEFAULT_SYSTEM_PROMPT)
    assert prompt.text == understanding_prompt("What is it?", num_images=1).text


def test_native_history_places_images_by_their_tags_and_keeps_answers_plain():
    conversation = question_conversation("And now?", 2, "S", [(f"{IMG} first", f"ok {IMG}"), (f"then {IMG}", "fine")])
    assert [t.role for t in conversation.turns] == ["user", "assistant", "user", "assistant", "user"]
    assert conversation.turns[1].content == (f"ok {IMG}",)  # text, not an image
    assert conversation.num_images == 2


def test_native_tags_must_match_the_images():
    with pytest.raises(InputError, match="1 <image_placeholder> tag"):
        question_conversation("q", 2, None, [(f"{IMG} x", "y")])


# stop texts


def test_the_watch_fires_on_the_token_that_completes_a_stop_text_spread_over_several(tiny_tokenizer):
    text = "The quick brown fox jumps over the lazy dog."
    ids = tiny_tokenizer.encode(text, add_bos=False)
    watch = AnswerDetokenizer(tiny_tokenizer, ["zzz", "fox jumps"])
    fired = [watch.push(token)[1] for token in ids]
    first = fired.index(True)
    assert "fox jumps" in tiny_tokenizer.decode(ids[:first + 1])
    assert "fox jumps" not in tiny_tokenizer.decode(ids[:first])


def test_cutting_and_releasing_never_show_part_of_a_stop_text():
    assert cut_at_stop("Hello. END more", ["END"]) == "Hello. "
    assert cut_at_stop("no stop here", ["END"]) == "no stop here"
    assert releasable("Hello E", ["END"]) == len("Hello ")
    assert releasable("Hello EN", ["END", "ENOUGH"]) == len("Hello ")
    assert releasable("Hello ENX", ["END"]) == len("Hello ENX")
    assert releasable("a END b", ["END"]) == len("a ")
