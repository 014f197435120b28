"""Does a request fit this server's KV memory, and if not, which setting stops it, the value it would need, and what
the client is told.

The one place that knows how a request maps onto the KV cache, and the one set of refusals. The preprocessor asks
before any image of a request is decoded (in the client's terms: the fields of its API), `GET /info` asks what it
may promise, and the engine asks the same before it queues anything (a request the API let through by mistake would
otherwise block the queue). A request fits when each row stays within `max_seq_len`, its rows within `max_rows`, and
the blocks its rows could hold at their longest (prompt blocks shared, see `block_manager.worst_case_blocks`)
within the whole KV pool. Pure Python, no tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.engine.block_manager import worst_case_blocks
from service.engine.types import GenerateParams, Params

CONTEXT_SETTING = "JANUS_MAX_SEQ_LEN"
ROWS_SETTING = "JANUS_MAX_ROWS"
KV_SETTING = "JANUS_KV_CACHE_MB"
MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Shortfall:
    """The server setting that keeps a request out, its value now and the least value that would let it in."""

    setting: str
    limit: int
    needed: int

    @property
    def advice(self) -> str:
        return f"raise {self.setting} to at least {self.needed}"


@dataclass(frozen=True, slots=True)
class KVPool:
    blocks: int
    block_size: int  # positions per block
    block_bytes: int  # one block over all layers, keys and values

    def mib(self, blocks: int) -> int:
        return -(-blocks * self.block_bytes // MiB)


@dataclass(frozen=True, slots=True)
class Capacity:
    max_seq_len: int  # positions per row: prompt + new tokens
    max_rows: int | None = None  # rows running at once (None: not checked here)
    pool: KVPool | None = None  # the KV blocks (None: not checked here)

    def room(self, prompt_tokens: int) -> int:
        """The most new tokens a row can add after a prompt this long (0 or less: the prompt alone does not fit)."""
        return self.max_seq_len - prompt_tokens

    def shortfall(self, prompt_tokens: int, new_tokens: int, rows: int = 1, prompts: int = 1) -> Shortfall | None:
        """None when a request fits: `rows` rows that share `prompts` prompts of `prompt_tokens` (a guided
        generation: two, the conditional and the unconditional) and each add `new_tokens`. Otherwise what stops it
        (the context first, then the rows, then the KV memory)."""
        if prompt_tokens + new_tokens > self.max_seq_len:
            return Shortfall(CONTEXT_SETTING, self.max_seq_len, prompt_tokens + new_tokens)
        if self.max_rows is not None and rows > self.max_rows:
            return Shortfall(ROWS_SETTING, self.max_rows, rows)
        if self.pool is not None:
            blocks = self.kv_blocks(prompt_tokens, new_tokens, rows, prompts)
            if blocks > self.pool.blocks:
                return Shortfall(KV_SETTING, self.pool.mib(self.pool.blocks), self.pool.mib(blocks))
        return None

    def refusal(self, params: Params) -> Refusal | None:
        """`answer_refusal` or `image_refusal` for the engine's own parameters, in the native API's terms."""
        prompt = len(params.prompt_ids)
        if isinstance(params, GenerateParams):
            return image_refusal(self, prompt, params.image_tokens, params.parallel_size, params.guided)
        images = 0 if params.pixel_values is None else len(params.pixel_values)
        positions = params.prompt_ids.count(params.image_id) // images + 2 if images else 0
        return answer_refusal(self, prompt, params.max_new_tokens, params.n, images=images,
                              image_positions=positions)

    def kv_blocks(self, prompt_tokens: int, new_tokens: int, rows: int = 1, prompts: int = 1) -> int:
        """KV blocks such a request could hold at once, with nothing reused from other requests."""
        assert self.pool is not None
        return prompts * worst_case_blocks(self.pool.block_size, prompt_tokens, rows // prompts,
                                           prompt_tokens + new_tokens)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request cannot fit, said once for every caller: what to change in the request, then the setting to
    raise (`message`), and the request field to change in the client's own terms (`param`)."""

    message: str
    shortfall: Shortfall
    param: str | None = None


def answer_refusal(capacity: Capacity, prompt_tokens: int, max_new_tokens: int, n: int = 1, *, images: int = 0,
                   image_positions: int = 0, length_asked: bool = True, length_field: str = "max_new_tokens",
                   prompt_field: str | None = None) -> Refusal | None:
    """None when `n` answers of up to `max_new_tokens` after a prompt of `prompt_tokens` (holding `images` images of
    `image_positions` positions each) fit; `length_asked`: whether the client chose max_new_tokens (else the
    server picked what fits, and only the prompt can be shortened). The field names are the client API's."""
    short = capacity.shortfall(prompt_tokens, max_new_tokens, rows=n)
    if short is None:
        return None
    if short.setting == ROWS_SETTING:
        return _refusal(f"n {n} needs {n} rows (one per answer) but the server runs at most {short.limit}: lower n",
                        short, "n")
    if short.setting == KV_SETTING:
        return _refusal(f"the prompt of {prompt_tokens} tokens with {n} answer(s) of up to {max_new_tokens} tokens "
                        f"needs up to {short.needed} MiB of KV cache but the server's whole cache is {short.limit} "
                        f"MiB: lower {length_field} or n, or send fewer images", short, length_field)
    held = f" ({images} image(s) of {image_positions} positions each)" if images else ""
    shorten = "send fewer images or a shorter conversation" if images else "shorten the conversation"
    room = capacity.room(prompt_tokens)
    if not length_asked or room < 1:
        return _refusal(f"the prompt is {prompt_tokens} tokens{held} and the server's context is {short.limit} "
                        f"tokens, which leaves no room for an answer: {shorten}", short, prompt_field)
    return _refusal(f"the prompt is {prompt_tokens} tokens{held} and {length_field} {max_new_tokens} would take it "
                    f"to {short.needed}, but the server's context is {short.limit} tokens: lower {length_field} to "
                    f"at most {room}, {shorten}", short, length_field)


def image_refusal(capacity: Capacity, prompt_tokens: int, image_tokens: int, parallel_size: int, guided: bool,
                  count_field: str = "parallel_size") -> Refusal | None:
    """None when `parallel_size` images of `image_tokens` tokens after a prompt of `prompt_tokens` fit (guided:
    two rows and two prompts each); `count_field`: what the client's API calls parallel_size."""
    rows = parallel_size * (2 if guided else 1)
    short = capacity.shortfall(prompt_tokens, image_tokens, rows=rows, prompts=2 if guided else 1)
    if short is None:
        return None
    if short.setting == CONTEXT_SETTING:
        return _refusal(f"the prompt is {prompt_tokens} tokens and an image {image_tokens} more, but the server's "
                        f"context is {short.limit} tokens: shorten the prompt", short, "prompt")
    if short.setting == KV_SETTING:
        return _refusal(f"{count_field} {parallel_size} needs up to {short.needed} MiB of KV cache but the server's "
                        f"whole cache is {short.limit} MiB: lower {count_field}", short, count_field)
    per_image = "two per image with guidance" if guided else "one per image"
    cure = f"lower {count_field} (or set cfg_weight 1: one row per image)" if guided else f"lower {count_field}"
    return _refusal(f"{count_field} {parallel_size} needs {rows} rows ({per_image}) but the server runs at most "
                    f"{short.limit}: {cure}", short, count_field)


def _refusal(message: str, short: Shortfall, param: str | None) -> Refusal:
    return Refusal(f"{message}, or {short.advice}", short, param)
