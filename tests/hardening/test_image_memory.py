"""Large images: refused before any is decoded when they cannot fit, decoded within the server's pixel budget when
they do, shrunk at once to what the model sees, and their memory given back after a burst.

The bursts run against `janus-serve` processes, their resident memory read from /proc: VmHWM (reset through
clear_refs before each burst) is the peak, VmRSS a few seconds after the burst what stays. The images are 6000 x
6000 PNGs (36 MP, under the 40 MP default limit, a few hundred kB each): crossing gradients with shapes on them.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from PIL import Image, ImageDraw, ImageOps

from model.image_processing import ImageProcessor
from service.api import image_inputs
from service.api.image_budget import TRIM_AFTER_PIXELS, PixelBudget
from service.api.images import ImageLimits, decode_image
from tests.hardening.helpers import ServerProcess, assert_error_body, poll_until, send_together, spawn_server

SIDE = 6000
MiB = 2**20
# The tiny model's prompt with the default system prompt: 1 image 138 tokens, 2 images 156, 8 images 264.
CONTEXT = 256
SETTLE_S = 3.0  # after a burst, before reading what stays resident


def large_png(side: int = SIDE, seed: int = 0) -> bytes:
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    red = np.broadcast_to(ramp[None, :], (side, side)).astype(np.uint8)
    green = np.broadcast_to(ramp[:, None], (side, side)).astype(np.uint8)
    image = Image.fromarray(np.stack([red, green, red // 2 + green // 2], axis=-1))
    draw = ImageDraw.Draw(image)
    step = side // 12
    for i in range(12):
        shift = (seed * 97 + i * step) % side
        draw.ellipse((shift, i * step, shift + 2 * step, i * step + step), fill=(255 - 20 * i, 20 * i, 128))
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=6)
    return buffer.getvalue()


def data_url(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64," + base64.b64encode(data).decode("ascii")


def chat_messages(urls: list[str]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"type": "text", "text": "What do these show?"}]
    parts += [{"type": "image_url", "image_url": {"url": url}} for url in urls]
    return [{"role": "user", "content": parts}]


@pytest.fixture(scope="module")
def large_url() -> str:
    png = large_png()
    with Image.open(io.BytesIO(png)) as image:
        assert image.size == (SIDE, SIDE) and image.size[0] * image.size[1] < 40_000_000
    return data_url(png)


@pytest.fixture(scope="module")
def process(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One `janus-serve` with the default image limits and pixel budget, and a 256-token context."""
    started = spawn_server(tiny_dir, tmp_path_factory.mktemp("image-memory"), "--max-seq-len", str(CONTEXT),
                           "--log-level", "warning")
    yield started
    started.kill()


class Memory:
    """The resident memory of a process, from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def _status(self, key: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no {key} in /proc/{self.pid}/status")

    def rss(self) -> int:
        return self._status("VmRSS")

    def reset_peak(self) -> None:
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # VmHWM starts again from the current RSS

    def peak(self) -> int:
        return self._status("VmHWM")


def burst(url: str, messages: list[dict[str, Any]], count: int) -> tuple[list[Any], float]:
    """`count` chat completions at once (max_tokens 2) with the official SDK: each the completion or the SDK's
    error, and the seconds until all had answered."""

    async def run() -> tuple[list[Any], float]:
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)
        async with client:
            started = time.perf_counter()
            calls = [client.chat.completions.create(model="janus", messages=messages, max_tokens=2)  # type: ignore
                     for _ in range(count)]
            answers = await asyncio.gather(*calls, return_exceptions=True)
            return answers, time.perf_counter() - started

    return asyncio.run(run())


def refusal(answer: Any) -> tuple[int, str]:
    assert isinstance(answer, openai.APIStatusError), answer
    return answer.status_code, answer.message


def warm_up(process: ServerProcess) -> None:
    """One small image through the whole path: thread pools and the allocator's arenas exist before measuring."""
    small = data_url(large_png(side=64))
    answers, _ = burst(process.url, chat_messages([small]), 2)
    assert all(not isinstance(a, Exception) for a in answers), answers


@pytest.mark.parametrize("concurrent", [1, 6])
def test_images_that_cannot_fit_the_context_are_refused_before_any_is_decoded(process, large_url, concurrent):
    """8 large images take 264 positions of a 256-token context: refused with the same status and message as the
    same conversation with small images, whatever their size, and the server's memory does not move."""
    warm_up(process)
    small = data_url(large_png(side=48))
    [expected], _ = burst(process.url, chat_messages([small] * 8), 1)
    status, message = refusal(expected)
    assert "8 image(s)" in message and f"context is {CONTEXT} tokens" in message, message
    memory = Memory(process.process.pid)
    before = memory.rss()
    memory.reset_peak()
    answers, seconds = burst(process.url, chat_messages([large_url] * 8), concurrent)
    peak = memory.peak()
    time.sleep(SETTLE_S)
    after = memory.rss()
    assert [refusal(a) for a in answers] == [(status, message)] * concurrent
    figures = (f"RSS {before / MiB:.0f} MiB before, peak {peak / MiB:.0f}, after {after / MiB:.0f}; "
               f"{concurrent} refusal(s) in {seconds:.1f} s")
    print(figures)
    # One decoded 36 MP image alone takes 137 MiB: none may have been decoded.
    assert peak - before < 100 * MiB, figures
    assert after - before < 50 * MiB, figures


def test_memory_taken_by_a_burst_of_large_images_is_given_back(process, large_url):
    """Six requests at once with two large images each, which fit: all answered; while they decode the server
    holds about what its pixel budget allows (3 of these images at once by default), and after the burst its
    resident size is back near where it was."""
    warm_up(process)
    messages = chat_messages([large_url] * 2)
    [first], _ = burst(process.url, messages, 1)  # the first large decodes map the decoder's own buffers
    assert not isinstance(first, Exception), first
    memory = Memory(process.process.pid)
    time.sleep(SETTLE_S)
    before = memory.rss()
    memory.reset_peak()
    answers, seconds = burst(process.url, messages, 6)
    peak = memory.peak()
    time.sleep(SETTLE_S)
    after = memory.rss()
    assert all(not isinstance(a, Exception) and a.choices[0].finish_reason for a in answers), answers
    figures = f"RSS {before / MiB:.0f} MiB before, peak {peak / MiB:.0f}, after {after / MiB:.0f}; {seconds:.1f} s"
    print(figures)
    picture = SIDE * SIDE * 4  # Pillow keeps RGB pictures as RGBX
    assert peak - before < 4 * picture, figures
    assert after - before < 64 * MiB, figures


# in-process servers: the budget observed from inside


class DecodeWatch:
    """Wraps the decoding of one image (`load_image`): counts the pixels being decoded at once, and holds every
    decode at its start until `release()`."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self._lock = threading.Lock()
        self.pixels = 0  # being decoded now
        self.most = 0  # the most ever decoded at once
        self.entered = 0
        self._open = threading.Event()

    def __call__(self, image: Image.Image, *args: Any) -> Image.Image:
        pixels = image.size[0] * image.size[1]
        with self._lock:
            self.pixels += pixels
            self.most = max(self.most, self.pixels)
            self.entered += 1
        try:
            assert self._open.wait(timeout=120), "never released"
            return self.real(image, *args)
        finally:
            with self._lock:
                self.pixels -= pixels

    def release(self) -> None:
        self._open.set()


@pytest.fixture
def decode_watch(monkeypatch: pytest.MonkeyPatch) -> Iterator[DecodeWatch]:
    watch = DecodeWatch(image_inputs.load_image)
    monkeypatch.setattr(image_inputs, "load_image", watch)
    yield watch
    watch.release()


MEDIUM = 1800  # 3.24 MP pictures for the in-process tests (a few tens of kB as PNG)
MEDIUM_PIXELS = MEDIUM * MEDIUM
ROOMY = {"max_image_bytes": 16 * MiB, "max_body_bytes": 64 * MiB, "max_image_pixels": 40_000_000}


def understand_body(png: bytes, seed: int) -> dict[str, Any]:
    return {"question": "What is it?", "images": [base64.b64encode(png).decode("ascii")], "max_new_tokens": 2,
            "seed": seed}


def test_images_wait_for_the_pixel_budget_across_requests_and_routes(make_server, decode_watch):
    """Budget: 2.5 pictures. Six requests at once (four /understand, two /v1), one picture each: two decode, four
    wait; released, all are answered, and never more than two pictures were being decoded at once."""
    live = make_server(**ROOMY, max_decoding_pixels=MEDIUM_PIXELS * 5 // 2)
    budget = live.runtime.image_budget
    pngs = [large_png(MEDIUM, seed) for seed in range(6)]
    requests = [("/understand", understand_body(png, i)) for i, png in enumerate(pngs[:4])]
    requests += [("/v1/chat/completions", {"model": "janus", "messages": chat_messages([data_url(png)]),
                                           "max_tokens": 2}) for png in pngs[4:]]

    async def while_in_flight(tasks: list[asyncio.Task[httpx.Response]]) -> None:
        await poll_until(lambda: decode_watch.entered == 2 and budget.waiting == 4, "two decoding, four waiting")
        await asyncio.sleep(0.2)  # a third decode starting now would be seen
        assert decode_watch.entered == 2 and decode_watch.most == 2 * MEDIUM_PIXELS
        decode_watch.release()

    replies = send_together(live.url, requests, while_in_flight)
    assert [r.status_code for r in replies] == [200] * 6, [r.text for r in replies]
    assert decode_watch.most == 2 * MEDIUM_PIXELS and decode_watch.entered == 6
    assert budget.in_flight == 0 and budget.waiting == 0 and budget.peak <= budget.limit


def test_an_image_larger_than_the_whole_budget_decodes_alone(make_server, decode_watch):
    live = make_server(**ROOMY, max_decoding_pixels=MEDIUM_PIXELS // 3)
    requests = [("/understand", understand_body(large_png(MEDIUM, seed), seed)) for seed in (1, 2)]

    async def while_in_flight(tasks: list[asyncio.Task[httpx.Response]]) -> None:
        await poll_until(lambda: decode_watch.entered == 1 and live.runtime.image_budget.waiting == 1,
                         "one decoding, one waiting")
        decode_watch.release()

    replies = send_together(live.url, requests, while_in_flight)
    assert [r.status_code for r in replies] == [200, 200], [r.text for r in replies]
    assert decode_watch.most == MEDIUM_PIXELS and decode_watch.entered == 2


@pytest.mark.parametrize("overrides", [{"max_waiting": 0}, {"request_timeout_s": 1.0}],
                         ids=["past max_waiting", "past the time limit"])
def test_a_request_the_budget_cannot_take_in_time_gets_429_with_retry_after(make_server, decode_watch, overrides):
    live = make_server(**ROOMY, max_decoding_pixels=MEDIUM_PIXELS, **overrides)
    requests = [("/understand", understand_body(large_png(MEDIUM, seed), seed)) for seed in (1, 2)]
    refused: list[httpx.Response] = []

    async def while_in_flight(tasks: list[asyncio.Task[httpx.Response]]) -> None:
        await poll_until(lambda: any(t.done() for t in tasks), "one request refused")
        refused.extend(t.result() for t in tasks if t.done())
        decode_watch.release()

    replies = send_together(live.url, requests, while_in_flight)
    assert sorted(r.status_code for r in replies) == [200, 429], [r.text for r in replies]
    [reply] = refused
    error = assert_error_body(reply, 429, "overloaded")
    assert "JANUS_MAX_DECODING_PIXELS" in error["message"], error
    assert int(reply.headers["Retry-After"]) >= 1
    assert decode_watch.entered == 1  # the refused request decoded nothing


# the shrunk pictures: what the model is given is unchanged


def photo_like(size: tuple[int, int], seed: int) -> Image.Image:
    """Gradients, shapes and fine grain: detail at every scale, so that any resampling difference shows."""
    width, height = size
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    base = np.stack([200 * x + 40 * y, 120 + 100 * np.sin(9 * x + 5 * y), 250 * y * (1 - x)], axis=-1)
    grain = rng.normal(0, 18, (height, width, 3))
    image = Image.fromarray(np.clip(base + grain, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(40):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        draw.rectangle((x0, y0, x0 + int(rng.integers(2, width // 4)), y0 + int(rng.integers(2, height // 4))),
                       outline=tuple(int(c) for c in rng.integers(0, 256, 3)), width=int(rng.integers(1, 4)))
    return image


def encoded(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def sideways_jpeg(size: tuple[int, int], seed: int) -> bytes:
    """A phone photo: stored sideways with EXIF orientation 6 (rotate 90 degrees clockwise to view)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(photo_like(size, seed), "JPEG", quality=92, exif=exif.tobytes())


@functools.cache
def pictures() -> list[tuple[str, bytes]]:
    rgba = photo_like((1500, 2600), 3).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    return [("sideways jpeg", sideways_jpeg((3000, 2000), 1)),
            ("wide png", encoded(photo_like((4000, 610), 2), "PNG")),
            ("rgba png", encoded(rgba, "PNG")),
            ("palette gif", encoded(photo_like((1000, 700), 4).quantize(64), "GIF")),
            ("small webp", encoded(photo_like((300, 200), 5), "WEBP", quality=90))]


def reference_pixels(processor: ImageProcessor, data: bytes) -> np.ndarray:
    """Pillow's full decode, upright, through the image processor: what the model saw before decoding shrank."""
    with Image.open(io.BytesIO(data)) as image:
        return processor([ImageOps.exif_transpose(image).convert("RGB")])


@pytest.mark.parametrize("image_size", [384, 336, 32])
def test_a_shrunk_picture_gives_the_processor_exactly_the_full_size_pictures_pixels(image_size):
    """336 sides truncate to sizes the processor would not give again (51/336*336 < 51): the shrunk picture is
    the processor's padded square, which it keeps as it is, so every size is exact."""
    processor = ImageProcessor(image_size=image_size, image_mean=(0.5,) * 3, image_std=(0.5,) * 3)
    limits = ImageLimits(max_bytes=64 * MiB, max_pixels=40_000_000)
    for name, data in pictures():
        shrunk = decode_image(data, name, limits, processor.resize_and_pad)
        assert shrunk.size == (image_size, image_size), name
        assert np.array_equal(processor([shrunk]), reference_pixels(processor, data)), name


def test_answers_about_large_pictures_see_the_full_size_pixels_on_every_route(make_server, tiny_dir):
    """The engine is handed, on /understand (JSON and upload) and /v1, the pixels the image processor makes of
    Pillow's full-size decode."""
    live = make_server(**ROOMY)
    processor = ImageProcessor.from_dir(tiny_dir)
    submitted: list[Any] = []
    submit = live.runtime.engine.submit

    def recording(params: Any, **kwargs: Any) -> Any:
        submitted.append(params)
        return submit(params, **kwargs)

    live.runtime.engine.submit = recording  # type: ignore[method-assign]
    try:
        data = [data for _, data in pictures()]
        expected = np.concatenate([reference_pixels(processor, one) for one in data])
        question = "".join("<image_placeholder>" for _ in data) + "What are these?"
        with live.client() as http:
            as_json = http.post("/understand", json={
                "question": question, "images": [base64.b64encode(one).decode() for one in data],
                "max_new_tokens": 3, "seed": 1})
            as_form = http.post("/understand/upload", data={"question": question, "max_new_tokens": "3", "seed": "1"},
                                files=[("image", (f"{i}", one)) for i, one in enumerate(data)])
        client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0)
        chat = client.chat.completions.create(model="janus", max_tokens=3, seed=1, messages=chat_messages(
            [data_url(one, "image/" + kind) for one, kind in zip(data, ("jpeg", "png", "png", "gif", "webp"),
                                                                  strict=True)]))  # type: ignore[arg-type]
    finally:
        del live.runtime.engine.submit
    assert as_json.status_code == 200 and as_form.status_code == 200, (as_json.text, as_form.text)
    assert as_form.json()["text"] == as_json.json()["text"]
    assert chat.choices[0].message.content is not None
    assert len(submitted) == 3
    for params in submitted:
        assert np.array_equal(params.pixel_values, expected)


# the budget itself, on an event loop of its own


def test_the_budget_serves_in_arrival_order_and_a_cancelled_caller_keeps_its_pixels_until_its_work_ends():
    """A large image at the head of the queue is not overtaken by smaller ones behind it; a caller cancelled
    while its work runs leaves the pixels taken until the thread has finished; a caller cancelled while waiting
    leaves the queue; the allocator is asked to give memory back once the budget is idle."""
    gave_back: list[int] = []

    async def scenario() -> list[str]:
        budget = PixelBudget(10, max_waiting=8, give_back=lambda: gave_back.append(1))
        order: list[str] = []
        gates = {name: threading.Event() for name in ("a", "b", "c", "d")}

        def work(name: str) -> str:
            assert gates[name].wait(timeout=30)
            order.append(name)
            return name

        deadline = asyncio.get_running_loop().time() + 30
        a = asyncio.create_task(budget.run(6, lambda: work("a"), deadline))
        await poll_until(lambda: budget.in_flight == 6, "a running")
        b = asyncio.create_task(budget.run(TRIM_AFTER_PIXELS, lambda: work("b"), deadline))  # all of it, alone
        await poll_until(lambda: budget.waiting == 1, "b waiting")
        c = asyncio.create_task(budget.run(2, lambda: work("c"), deadline))  # would fit now, but b came first
        d = asyncio.create_task(budget.run(1, lambda: work("d"), deadline))
        await poll_until(lambda: budget.waiting == 3, "c and d waiting")
        d.cancel()
        await poll_until(lambda: budget.waiting == 2, "d gone")
        a.cancel()  # its thread still runs: its pixels stay taken
        await asyncio.sleep(0.05)
        assert budget.in_flight == 6 and budget.waiting == 2
        gates["a"].set()
        await poll_until(lambda: budget.in_flight == 10, "b running once a's thread ended")
        assert budget.waiting == 1 and not c.done()
        gates["b"].set()
        gates["c"].set()
        assert await b == "b" and await c == "c"
        await poll_until(lambda: bool(gave_back), "memory given back once idle")
        assert budget.in_flight == 0 and budget.waiting == 0 and budget.peak == 10
        for task in (a, d):
            assert task.cancelled()
        return order

    assert asyncio.run(scenario()) == ["a", "b", "c"]
