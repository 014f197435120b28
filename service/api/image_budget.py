"""How many pixels of uploaded images are being decoded at once, across requests: a budget, taken in turn.

A decoded picture takes about 4 bytes a pixel (Pillow keeps RGB as RGBX), up to twice that while it is converted
to RGB: a 36 MP upload is about 140 MiB. Each image takes its pixels from the budget while it is decoded and shrunk,
and gives them back as soon as only the shrunk picture is left; requests that find the budget spent wait their
turn, first come first served (past `max_waiting` waiting images, or past their time limit, they get 429 like any
other overload). An image larger than the whole budget decodes alone.

Giving the memory back to the system: glibc keeps freed blocks in the heap of the thread that freed them (after
one large block is freed it raises its mmap threshold, up to 32 MiB, and later blocks come from the heaps), so
every worker thread that once decoded a large picture kept that much resident. Pillow's blocks are therefore made
larger than that threshold (mapped for themselves, unmapped when freed), and once the budget is idle after large
decodes the allocator returns what its heaps still hold (`malloc_trim`).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from PIL import Image

from service.engine.errors import Overloaded

log = logging.getLogger(__name__)

T = TypeVar("T")
SETTING = "JANUS_MAX_DECODING_PIXELS"
# Decoded pixels since the allocator last gave memory back before it is asked again: a few large pictures' worth.
TRIM_AFTER_PIXELS = 4_000_000
# Before anything was measured: seconds to decode one pixel (a 36 MP PNG takes about half a second).
FIRST_SECONDS_PER_PIXEL = 15e-9
MIN_RETRY_AFTER_S, MAX_RETRY_AFTER_S = 1.0, 60.0
PICTURE_BLOCK_BYTES = 64 * 2**20


@dataclass(eq=False, slots=True)
class _Waiter:
    cost: int
    granted: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class PixelBudget:
    """Pixels being decoded at once, at most `limit`. Used from the event loop only (no lock needed): the work
    runs on worker threads, and its pixels are given back from the loop when the work has finished."""

    def __init__(self, limit: int, max_waiting: int, give_back: Callable[[], None] | None = None) -> None:
        if limit < 1:
            raise ValueError(f"the pixel budget must be positive, got {limit}")
        self.limit = limit
        self.max_waiting = max_waiting
        self.in_flight = 0  # pixels taken, by work running or about to run
        self.peak = 0  # the most ever taken at once
        self._queue: deque[_Waiter] = deque()
        self._give_back = give_back if give_back is not None else trim_allocator
        self._since_give_back = 0  # pixels decoded since memory was last given back
        self._seconds_per_pixel = FIRST_SECONDS_PER_PIXEL
        map_large_pictures()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    async def run(self, pixels: int, work: Callable[[], T], deadline: float) -> T:
        """`work()` on a worker thread once `pixels` of the budget are free; `deadline` (the loop's clock) bounds
        the wait. The pixels are given back when the work ends, even if the caller is cancelled before."""
        cost = await self._take(pixels, deadline)
        started = time.perf_counter()
        task = asyncio.ensure_future(asyncio.to_thread(work))

        def finished(done: asyncio.Future[T]) -> None:
            if not done.cancelled() and done.exception() is None:
                self._learn(pixels, time.perf_counter() - started)
            self._put_back(cost, pixels)

        task.add_done_callback(finished)
        # Shielded: a cancelled caller leaves the thread running, and its pixels stay taken until it has finished.
        return await asyncio.shield(task)

    async def _take(self, pixels: int, deadline: float) -> int:
        cost = min(max(pixels, 1), self.limit)  # larger than the whole budget: runs alone
        if not self._queue and self.in_flight + cost <= self.limit:
            self._grant(cost)
            return cost
        if len(self._queue) >= self.max_waiting:
            raise Overloaded(f"the server is decoding other requests' images ({self.in_flight} pixels at once, "
                             f"{len(self._queue)} images waiting; its budget is {self.limit} pixels, {SETTING}); "
                             "retry later", retry_after_s=self._retry_after())
        waiter = _Waiter(cost)
        self._queue.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                await asyncio.shield(waiter.granted)
        except TimeoutError:
            if waiter.granted.done():  # granted at the very moment the time ran out: go ahead
                return cost
            self._leave(waiter)
            raise Overloaded(f"the server is decoding other requests' images: this request waited its whole time "
                             f"limit for {cost} of the {self.limit} pixels it decodes at once ({SETTING}); retry "
                             "later", retry_after_s=self._retry_after()) from None
        except BaseException:  # cancelled: give back what was granted meanwhile, or leave the queue
            if waiter.granted.done():
                self._put_back(cost, 0)
            else:
                self._leave(waiter)
            raise
        return cost

    def _grant(self, cost: int) -> None:
        self.in_flight += cost
        self.peak = max(self.peak, self.in_flight)

    def _leave(self, waiter: _Waiter) -> None:
        self._queue.remove(waiter)
        self._wake()  # the one that left may have kept smaller ones behind it waiting

    def _put_back(self, cost: int, decoded: int) -> None:
        self.in_flight -= cost
        self._since_give_back += decoded
        self._wake()
        if self.in_flight == 0 and self._since_give_back >= TRIM_AFTER_PIXELS:
            self._since_give_back = 0
            asyncio.get_running_loop().run_in_executor(None, self._give_back)

    def _wake(self) -> None:
        """Grant waiters in their order while their pixels fit."""
        while self._queue and self.in_flight + self._queue[0].cost <= self.limit:
            waiter = self._queue.popleft()
            self._grant(waiter.cost)
            waiter.granted.set_result(None)

    def _learn(self, pixels: int, seconds: float) -> None:
        if pixels > 0:
            self._seconds_per_pixel = 0.8 * self._seconds_per_pixel + 0.2 * seconds / pixels

    def _retry_after(self) -> float:
        """About when the images decoding and waiting now will have been decoded."""
        ahead = self.in_flight + sum(waiter.cost for waiter in self._queue)
        seconds = ahead * self._seconds_per_pixel
        return min(max(math.ceil(seconds), MIN_RETRY_AFTER_S), MAX_RETRY_AFTER_S)


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none (musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _malloc_trim()


def trim_allocator() -> None:
    """Return the C allocator's free memory to the system (the pages of freed pictures)."""
    if _TRIM is not None:
        started = time.perf_counter()
        _TRIM(0)
        log.debug("allocator trimmed in %.1f ms", (time.perf_counter() - started) * 1000)


def map_large_pictures() -> None:
    """Have Pillow allocate pictures in blocks of PICTURE_BLOCK_BYTES (its own default is 16 MiB): blocks above glibc's
    largest mmap threshold (32 MiB) are mapped for themselves and unmapped when freed, so that the memory of a
    large picture goes back to the system at once, whichever thread decoded it, instead of staying in that
    thread's heap. Process-wide; pictures smaller than a block take only what they need, as before."""
    set_block_size = getattr(Image.core, "set_block_size", None)
    if set_block_size is not None and Image.core.get_block_size() < PICTURE_BLOCK_BYTES:
        set_block_size(PICTURE_BLOCK_BYTES)
