"""OpenAI chat messages -> the service's `Conversation` and the images it places, in order.

system and developer messages make the system prompt (joined by blank lines; none given: the model's default);
user and assistant messages are the turns, in their order; the last turn must be the user's. Images may stand in
any user message, several per message, between text parts. The server fetches nothing: an image must come inline
as a `data:image/...;base64,` URL.
"""

from __future__ import annotations

from dataclasses import dataclass

from model.chat_template import IMAGE
from model.special_tokens import Special
from service.api.openai.chat_protocol import ImagePart, Message, RefusalPart, TextPart
from service.api.openai.errors import InvalidContent, UnsupportedParameter
from service.api.openai.validation import field_error
from service.api.protocol import MAX_IMAGES
from service.conversation import Conversation, Turn, join_parts


@dataclass(frozen=True, slots=True)
class ChatInput:
    conversation: Conversation
    images: list[tuple[str, str]]  # (data URL, where it stands: "messages[i].content[j]") in prompt order


def read_messages(messages: list[Message]) -> ChatInput:
    system: list[str] = []
    turns: list[Turn] = []
    images: list[tuple[str, str]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if message.role in ("tool", "function"):
            raise UnsupportedParameter(f"{where}.role", f"{message.role} messages are not supported: the server "
                                                        "calls no tools")
        for name in ("tool_calls", "function_call", "audio"):
            if getattr(message, name):
                raise UnsupportedParameter(f"{where}.{name}", f"{name} is not supported by this server")
        if message.role in ("system", "developer"):
            system.append(_plain_text(message, where))
        elif message.role == "assistant":
            text = _plain_text(message, where, refusal_parts=True)
            if message.refusal:
                text = (text + " " + message.refusal).strip() if text else message.refusal
            turns.append(Turn("assistant", join_parts([text])))
        else:
            turns.append(Turn("user", _user_content(message, i, images)))
    if not turns or turns[-1].role != "user":
        raise InvalidContent("messages", "the last message (after any system messages) must be the user's: it is "
                                         "the one answered")
    if len(images) > MAX_IMAGES:  # a 422, as for too many images on /understand
        raise field_error(("messages",), f"{len(images)} images; at most {MAX_IMAGES} per conversation", "too_long")
    return ChatInput(Conversation(tuple(turns), "\n\n".join(system) if system else None), images)


def _plain_text(message: Message, where: str, refusal_parts: bool = False) -> str:
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    texts: list[str] = []
    for j, part in enumerate(message.content):
        if isinstance(part, TextPart):
            texts.append(part.text)
        elif refusal_parts and isinstance(part, RefusalPart):
            texts.append(part.refusal)
        else:
            raise InvalidContent(f"{where}.content[{j}]", f"{_article(message.role)} {message.role} message takes "
                                                          f"text parts only, not {part.type}")
    # Adjacent text parts read as one text with a space between them, as in a user message.
    return " ".join(texts)


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _user_content(message: Message, index: int, images: list[tuple[str, str]]) -> tuple:
    # A user turn with nothing in it asks nothing: refused (a 422) as /understand refuses an empty question. An
    # image alone is a question, as a lone image tag is on /understand.
    if not _has_question(message.content):
        raise field_error(("messages", index, "content"), "a user message needs text or an image; this one is empty")
    where = f"messages[{index}]"
    if isinstance(message.content, str):
        return join_parts([message.content])
    parts: list[str | Special] = []
    for j, part in enumerate(message.content):
        at = f"{where}.content[{j}]"
        if isinstance(part, TextPart):
            parts.append(part.text)
        elif isinstance(part, ImagePart):
            images.append((_data_url(part.image_url.url, f"{at}.image_url.url"), at))
            parts.append(IMAGE)
        elif isinstance(part, RefusalPart):
            raise InvalidContent(at, "a user message takes text and image_url parts, not refusal")
        else:
            raise UnsupportedParameter(at, f"{part.type} content is not supported; send text and image_url parts")
    return join_parts(parts)


def _has_question(content: str | list | None) -> bool:
    if isinstance(content, str):
        return bool(content.strip())
    return any(not isinstance(part, TextPart) or part.text.strip() for part in content or [])


def _data_url(url: str, where: str) -> str:
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme in ("http", "https"):
        raise InvalidContent(where, "the server does not fetch images from URLs; send the image inline as a "
                                    "data:image/...;base64,... URL")
    if scheme != "data":
        raise InvalidContent(where, "an image must be a data:image/...;base64,... URL")
    return url
