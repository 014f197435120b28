"""Reading request bodies: JSON for both endpoints, multipart uploads for /understand.

Routes read bodies here rather than through FastAPI's body parameters so that authentication and readiness are
checked before a byte of the body is read, and a wrong content type gets a clear 415.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from service.api.errors import BadInput, UnsupportedMediaType
from service.api.protocol import MAX_IMAGES, UnderstandOptions, UnderstandRequest

M = TypeVar("M", bound=BaseModel)
IMAGE_FIELDS = ("image", "images")
MAX_FORM_FIELDS = 16
MAX_FORM_TEXT_BYTES = 128 * 1024  # per text field: questions and system prompts are at most 16k characters


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def validation_error(err: ValidationError) -> RequestValidationError:
    return RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in err.errors(include_url=False)])


async def read_json(request: Request, model: type[M]) -> M:
    kind = media_type(request)
    if kind != "application/json":
        raise UnsupportedMediaType(f"expected an application/json body, got {kind or 'no content type'}")
    body = await request.body()
    try:
        return model.model_validate_json(body)
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


async def _read_form(request: Request) -> UnderstandInput:
    fields: dict[str, str] = {}
    images: list[bytes | str] = []
    async with request.form(max_files=MAX_IMAGES, max_fields=MAX_FORM_FIELDS,
                            max_part_size=MAX_FORM_TEXT_BYTES) as form:
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
    try:
        options = UnderstandOptions.model_validate(fields)
        # The same cross-field check as the JSON body's, with the uploaded images standing in.
        UnderstandRequest.model_validate({**fields, "images": [""] * len(images)})
    except ValidationError as err:
        raise validation_error(err) from None
    return UnderstandInput(options, images)
