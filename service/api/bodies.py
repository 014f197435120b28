"""Reading request bodies: JSON for both endpoints, multipart uploads for /understand.

Routes read bodies here rather than through FastAPI's body parameters so that authentication and readiness are
checked before a byte of the body is read, and a wrong content type gets a clear 415.

JSON bodies are validated strictly (`"seed": "7"`, `"stream": 1` are refused: a client that sends those has a bug);
multipart form fields are text by nature and are converted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from service.api.errors import BadInput, LengthRequired, UnsupportedMediaType
from service.api.protocol import MAX_IMAGES, UnderstandOptions, UnderstandRequest

M = TypeVar("M", bound=BaseModel)
IMAGE_FIELDS = ("image", "images")
MAX_FORM_FIELDS = 16
MAX_FORM_TEXT_BYTES = 128 * 1024  # per text field: questions and system prompts are at most 16k characters


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def validation_error(err: ValidationError) -> RequestValidationError:
    return RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in err.errors(include_url=False)])


def check_not_empty(request: Request, body: bytes) -> None:
    """An empty body: either the client sent none, or (HTTP/1.0 without Content-Length) none could be read."""
    if body:
        return
    if "content-length" not in request.headers and "transfer-encoding" not in request.headers:
        raise LengthRequired("the request has no Content-Length header (nor chunked Transfer-Encoding), so no body "
                             "was read: send Content-Length with the body (HTTP/1.0 clients must)")
    raise BadInput("the request body is empty")


async def read_json(request: Request, model: type[M], strict: bool = True) -> M:
    kind = media_type(request)
    if kind != "application/json":
        raise UnsupportedMediaType(f"expected an application/json body, got {kind or 'no content type'}")
    body = await request.body()
    check_not_empty(request, body)
    try:
        return model.model_validate_json(body, strict=strict)
    except ValidationError as err:
        raise validation_error(err) from None


@dataclass(slots=True)
class UnderstandInput:
    options: UnderstandOptions
    images: list[bytes | str]  # uploaded bytes, or base64 text from a JSON body


async def read_understand(request: Request) -> UnderstandInput:
    kind = media_type(request)
    if kind == "application/json":
        parsed = await read_json(request, UnderstandRequest)
        return UnderstandInput(parsed, list(parsed.images))
    if kind == "multipart/form-data":
        return await _read_form(request)
    raise UnsupportedMediaType(f"expected application/json or multipart/form-data, got {kind or 'no content type'}")


class _FormParser(MultiPartParser):
    """Starlette's parser, noting whether the body reached its closing boundary (`--boundary--`): the parser
    itself accepts a body cut short and returns the parts it saw."""

    closed = False

    def on_end(self) -> None:
        self.closed = True


async def _parse_form(request: Request) -> FormData:
    received = 0

    async def counted() -> AsyncIterator[bytes]:
        nonlocal received
        async for chunk in request.stream():
            received += len(chunk)
            yield chunk

    try:
        async with aclosing(counted()) as stream:
            # One file more than allowed is read, so that too many images get the same 422 as in a JSON body.
            parser = _FormParser(request.headers, stream, max_files=MAX_IMAGES + 1, max_fields=MAX_FORM_FIELDS,
                                 max_part_size=MAX_FORM_TEXT_BYTES)
            form = await parser.parse()
    except MultiPartException as err:
        if err.message.startswith("Too many files"):
            raise RequestValidationError([{"type": "too_long", "loc": ("body", "images"),
                                           "msg": f"List should have at most {MAX_IMAGES} items"}]) from None
        raise BadInput(f"malformed multipart form: {err.message}") from None
    if not parser.closed:
        await form.close()
        check_not_empty(request, b"-" if received else b"")
        raise BadInput("the multipart body ends before its closing boundary (--BOUNDARY--): the upload was cut "
                       "short or the client did not finish the form")
    return form


async def _read_form(request: Request) -> UnderstandInput:
    fields: dict[str, str] = {}
    images: list[bytes | str] = []
    form = await _parse_form(request)
    try:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name not in IMAGE_FIELDS:
                    raise BadInput(f"unexpected file field {name!r}; send images as 'image'")
                images.append(await value.read())
            elif name in IMAGE_FIELDS:
                raise BadInput(f"{name!r} must be a file upload (for base64 images send a JSON body)")
            elif name in fields:
                raise BadInput(f"form field {name!r} was given twice")
            else:
                fields[name] = value
    finally:
        await form.close()
    try:
        options = UnderstandOptions.model_validate(fields)
        # The same cross-field check as the JSON body's, with the uploaded images standing in.
        UnderstandRequest.model_validate({**fields, "images": [""] * len(images)})
    except ValidationError as err:
        raise validation_error(err) from None
    return UnderstandInput(options, images)
