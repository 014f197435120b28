"""A request's uploaded images -> the pictures the model is given, within the server's pixel budget.

First every image's header is read and checked (400/413 before any pixel is decoded); then one image at a time
takes its pixels from the budget, is decoded, turned upright and RGB, and shrunk at once by the image processor's
own resize and pad (the processor then finds it at its size and only copies it: the model sees exactly what a
full-size picture would have given it). A request holds at most one full-size picture at any moment.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

from PIL import Image

from service.api.errors import ApiError
from service.api.images import ImageLimits, decode_base64, load_image, open_image
from service.runtime import Runtime


@dataclass(frozen=True, slots=True)
class ImageInput:
    data: bytes | str  # uploaded bytes, or base64 text (plain or a data URL)
    what: str  # how messages name it: "image 2", "messages[0].content[1]"
    param: str | None = None  # the request field an error about it names (OpenAI's `param`)


async def decode_images(runtime: Runtime, inputs: Sequence[ImageInput]) -> list[Image.Image]:
    if not inputs:
        return []
    settings = runtime.settings
    limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.request_timeout_s
    opened: list[Image.Image | None] = list(await asyncio.to_thread(_open_all, inputs, limits))
    shrink = runtime.preprocessor.images.resize_and_pad
    pictures: list[Image.Image] = []
    try:
        for index, source in enumerate(inputs):
            image, opened[index] = opened[index], None  # from here on load_image frees it
            assert image is not None
            width, height = image.size
            with _naming(source):
                pictures.append(await runtime.image_budget.run(
                    width * height, partial(load_image, image, source.what, limits, shrink), deadline))
    finally:
        for image in opened:  # refused or cancelled on the way: the rest were never decoded
            if image is not None:
                image.close()
    return pictures


def _open_all(inputs: Sequence[ImageInput], limits: ImageLimits) -> list[Image.Image]:
    opened: list[Image.Image] = []
    try:
        for source in inputs:
            with _naming(source):
                data = decode_base64(source.data, source.what, limits) if isinstance(source.data, str) else source.data
                opened.append(open_image(data, source.what, limits))
    except BaseException:
        for image in opened:
            image.close()
        raise
    return opened


@contextmanager
def _naming(source: ImageInput) -> Iterator[None]:
    """Errors about an image name the request field it came in, where the API has one."""
    try:
        yield
    except ApiError as err:
        if source.param is None:
            raise
        raise type(err)(str(err), param=source.param) from None
