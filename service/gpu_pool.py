"""The KV pool on the gpu, sized from the card: after the weights are loaded, a warm-up at the largest batch runs on
a probe cache, and the pool takes what is left of `JANUS_GPU_MEMORY_FRACTION` of the card at its peak.

The warm-up is the server's worst step of each kind: the prefill of one prompt of max_seq_len positions, a decode
step of max_rows rows whose context is max_seq_len (every row reads the probe's one row of blocks, so the probe
needs one row's blocks only), the vision encoder on a full question's images, and the image decoder on as many
images as one request can ask for. Measured, not estimated: the planner's figures (`service/memory_plan.py`) are
for before there is a card.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from service.memory_plan import MAX_IMAGES, MAX_PARALLEL_SIZE, MiB, pool_blocks, pool_from_card

if TYPE_CHECKING:
    from model.janus import JanusModel

log = logging.getLogger(__name__)


class DeviceMemory(Protocol):
    """The card's allocator, as the sizing needs it."""

    total_bytes: int

    def reset_peak(self) -> None: ...

    def peak_bytes(self) -> int: ...

    def release(self) -> None: ...


class CudaMemory:
    """Paddle's allocator statistics on the current card."""

    def __init__(self, total_bytes: int) -> None:
        self.total_bytes = total_bytes

    def reset_peak(self) -> None:
        import paddle

        paddle.device.cuda.synchronize()
        paddle.device.cuda.reset_max_memory_allocated()

    def peak_bytes(self) -> int:
        import paddle

        paddle.device.cuda.synchronize()
        return int(paddle.device.cuda.max_memory_allocated())

    def release(self) -> None:
        import paddle

        paddle.device.cuda.empty_cache()


@dataclass(frozen=True, slots=True)
class WarmUp:
    """What the warm-up ran: the shapes its peak stands for."""

    prompt_positions: int
    decode_rows: int
    decode_context: int
    vision_images: int
    decoded_images: int


@dataclass(frozen=True, slots=True)
class PoolSizing:
    blocks: int
    pool_bytes: int  # what the blocks take
    in_use_bytes: int  # the warm-up's peak without its probe cache: weights, activations, decoder
    warm_up: WarmUp
    source: str  # for the log and /info

    def describe(self) -> str:
        return (f"{self.blocks} blocks ({self.pool_bytes / MiB:.0f} MiB), {self.source}; weights and the largest "
                f"step peaked at {self.in_use_bytes / MiB:.0f} MiB")


class PoolTooSmall(RuntimeError):
    """Nothing or almost nothing is left for the KV pool: says what to change."""


def warm_up_at_largest_batch(model: JanusModel, block_size: int, max_rows: int, max_seq_len: int) -> WarmUp:
    """Run the server's largest step of each kind once on a probe cache of one row's blocks (freed on return)."""
    import paddle

    from model.kv_cache import RowBatch

    cfg = model.cfg
    blocks = -(-max_seq_len // block_size)
    cache = model.new_cache(blocks, block_size)
    table = list(range(blocks))
    prompt = max_seq_len - 1
    with paddle.no_grad():
        ids = paddle.to_tensor(np.ones((1, prompt), np.int64))
        hidden = model.extend(model.embed_text(ids), cache, RowBatch.of([table], [0]), last_only=True)
        model.text_logits(hidden)
        # every row reads the same blocks, as long as the longest row would; their writes land in one slot
        tokens = paddle.to_tensor(np.zeros(max_rows, np.int64))
        embeds = model.embed_image_tokens(tokens).unsqueeze(1)
        hidden = model.extend(embeds, cache, RowBatch.of([table] * max_rows, [prompt] * max_rows))
        model.text_logits(hidden)
        model.image_logits(hidden)
        del cache, hidden, embeds
        size = cfg.vision.image_size
        model.encode_images(paddle.zeros([MAX_IMAGES, 3, size, size], "float32"))
        images = min(MAX_PARALLEL_SIZE, max(1, max_rows // 2))
        model.decode_pixels(paddle.to_tensor(np.zeros((images, cfg.gen_vision.num_tokens), np.int64)))
    return WarmUp(prompt, max_rows, max_seq_len, MAX_IMAGES, images)


def size_pool(model: JanusModel, memory: DeviceMemory, *, fraction: float, block_bytes: int, block_size: int,
              max_rows: int, max_seq_len: int) -> PoolSizing:
    """The pool's blocks from what the card has left after the weights and the warm-up at the largest batch."""
    probe_bytes = -(-max_seq_len // block_size) * block_bytes
    memory.release()
    memory.reset_peak()
    try:
        warm_up = warm_up_at_largest_batch(model, block_size, max_rows, max_seq_len)
    except MemoryError as err:
        raise PoolTooSmall(_advice(f"the warm-up at the largest batch ran out of memory ({err})", fraction)) from err
    except RuntimeError as err:  # Paddle's out-of-memory is a RuntimeError subclass naming it
        if "memory" not in str(err).lower():
            raise
        raise PoolTooSmall(_advice(f"the warm-up at the largest batch ran out of memory ({err})", fraction)) from err
    in_use = max(0, memory.peak_bytes() - probe_bytes)
    memory.release()
    budget = pool_from_card(memory.total_bytes, fraction, in_use)
    blocks = pool_blocks(budget, block_bytes, block_size, max_rows, max_seq_len)
    source = (f"what is left of {fraction:g} x the card's {memory.total_bytes / 2**30:.1f} GiB after the weights "
              f"and a warm-up at {max_rows} rows and {max_seq_len} positions")
    if blocks < budget // block_bytes:
        source += f", capped at what {max_rows} rows of {max_seq_len} positions use"
    if blocks * block_size < max_seq_len:
        raise PoolTooSmall(_advice(
            f"the KV pool would hold {blocks * block_size} positions, less than one request of max_seq_len "
            f"{max_seq_len} (the weights and the warm-up's peak take {in_use / MiB:.0f} MiB of the card's "
            f"{memory.total_bytes / MiB:.0f} MiB)", fraction))
    return PoolSizing(blocks, blocks * block_bytes, in_use, warm_up, source)


def _advice(problem: str, fraction: float) -> str:
    return (f"{problem}: lower JANUS_MAX_SEQ_LEN (a prompt's attention grows with its square) or JANUS_MAX_ROWS, "
            f"raise JANUS_GPU_MEMORY_FRACTION (now {fraction:g}), or see `janus-serve plan` for what fits")
