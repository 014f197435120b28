"""Token bytes: a token's exact bytes, even when it holds part of a UTF-8 character."""

from __future__ import annotations

from model.token_bytes import token_bytes


def test_the_bytes_of_an_answer_token_by_token_are_its_utf8_text(tiny_tokenizer):
    text = "Grüße, 東京 — naïve café!"
    ids = tiny_tokenizer.encode(text, add_bos=False)
    assert b"".join(token_bytes(tiny_tokenizer, i) for i in ids) == text.encode("utf-8")
    # some token splits a character: decoding it alone cannot show it, its bytes still add up
    assert any("\ufffd" in tiny_tokenizer.decode([i]) for i in ids)


def test_a_special_token_is_its_text(tiny_tokenizer):
    assert token_bytes(tiny_tokenizer, tiny_tokenizer.eos_id) == tiny_tokenizer.eos_token.encode("utf-8")
