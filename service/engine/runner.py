"""The only serving code that makes tensors: prefill, the shared decode step, cache moves, image decoding.

Every decode step is ONE backbone forward over all running rows, whatever their kind: understanding rows feed
their last text token through the text embedding, generation rows their last image token through gen_embed +
gen_aligner. Afterwards text rows go through `lm_head`, image rows through `gen_head`. Running rows occupy cache
slots 0..B-1 (the scheduler keeps them compact), and row i of the batch is slot i.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import paddle

from model.host_memory import to_tensor
from model.janus import JanusModel
from service.engine.request import RequestState
from service.engine.types import Kind


@dataclass(slots=True)
class StepLogits:
    """Host-side logits of one decode step, per request."""

    text: dict[str, np.ndarray]  # request id -> [rows of the request (its slot order), vocab]
    image: dict[str, np.ndarray]  # request id -> [rows of the request (its slot order), image vocab]


class Runner:
    def __init__(self, model: JanusModel, max_rows: int, max_seq_len: int) -> None:
        self.model = model
        self.place = model.gen_embed.weight.place
        self.cache = model.new_cache(max_rows, max_seq_len)
        self.max_seq_len = max_seq_len

    # prefill

    def prefill(self, request: RequestState) -> np.ndarray:
        """Run the prompt into the request's rows. Returns first-token logits [rows, V] (text or image)."""
        if request.kind is Kind.UNDERSTAND:
            return self.prefill_understand([request])[0]
        return self._prefill_generate(request)

    def prefill_understand(self, requests: list[RequestState]) -> list[np.ndarray]:
        """Several understanding prompts in one left-padded batch (one vision pass, one backbone pass); a request's
        other rows (several answers to one prompt) get a copy of its first row's keys and values.

        Returns each request's first-token logits [rows, V]."""
        width = max(len(r.understand.prompt_ids) for r in requests)
        ids = np.zeros((len(requests), width), np.int64)
        mask = np.zeros((len(requests), width), np.int64)
        pixels = []
        for i, request in enumerate(requests):
            params = request.understand
            ids[i, width - len(params.prompt_ids):] = params.prompt_ids
            mask[i, width - len(params.prompt_ids):] = 1
            if params.pixel_values is not None and len(params.pixel_values):
                pixels.append(params.pixel_values)
        features = self.model.encode_images(self._tensor(np.concatenate(pixels))) if pixels else None
        embeds = self.model.embed_prompt(self._tensor(ids), features, image_id=requests[0].understand.image_id)
        hidden = self.model.prefill(embeds, self.cache, [r.slots[0] for r in requests], self._tensor(mask),
                                    last_only=True)
        for request in requests:
            self.cache.copy(request.slots[0], request.slots[1:])
            request.length = width
            request.pad = width - len(request.understand.prompt_ids)
        logits = self.model.text_logits(hidden[:, -1]).astype("float32").numpy()  # [requests, V]
        return [np.repeat(row[None], len(request.slots), axis=0) for row, request in zip(logits, requests,
                                                                                         strict=True)]

    def _prefill_generate(self, request: RequestState) -> np.ndarray:
        params = request.generate
        cond = np.asarray(params.prompt_ids, np.int64)
        rows = [cond]
        if params.guided:
            uncond = cond.copy()
            uncond[1:-1] = params.pad_id
            rows.append(uncond)
        P = params.parallel_size
        # One prefill per distinct prompt; the other rows get a copy of its keys and values.
        sources = [request.slots[0]] + ([request.slots[P]] if params.guided else [])
        hidden = self.model.prefill(self.model.embed_text(self._tensor(np.stack(rows))), self.cache, sources,
                                    last_only=True)
        self.cache.copy(request.slots[0], request.slots[1:P])
        if params.guided:
            self.cache.copy(request.slots[P], request.slots[P + 1:])
        request.length = len(cond)
        logits = self.model.image_logits(hidden[:, -1]).astype("float32").numpy()  # [1 or 2, V]
        return np.repeat(logits, P, axis=0)  # rows in request order: P conditional, then P unconditional

    def move(self, moves: list[tuple[int, int]]) -> None:
        """Apply the scheduler's compaction moves (from slot, to slot), in order."""
        for src, dst in moves:
            self.cache.copy(src, [dst])

    # decode

    def decode(self, requests: list[RequestState]) -> StepLogits:
        """One backbone forward over every row of every request; each request's rows advance by one token.

        `requests` must own exactly the slots 0..B-1."""
        B = sum(r.rows for r in requests)
        kind_of = np.zeros(B, bool)  # True: image row
        token_of = np.zeros(B, np.int64)
        length_of = [0] * B
        position_of = [0] * B
        for request in requests:
            image = request.kind is Kind.GENERATE
            # every row of a generation pair takes the token sampled for its image
            tokens = request.next_tokens * (2 if image and request.generate.guided else 1)
            for slot, token in zip(request.slots, tokens, strict=True):
                kind_of[slot], token_of[slot], length_of[slot] = image, token, request.length
                position_of[slot] = request.length - request.pad
        text_slots = np.flatnonzero(~kind_of)
        image_slots = np.flatnonzero(kind_of)
        parts = []
        if len(text_slots):
            parts.append(self.model.embed_text(self._tensor(token_of[text_slots][:, None])))
        if len(image_slots):
            parts.append(self.model.embed_image_tokens(self._tensor(token_of[image_slots])).unsqueeze(1))
        embeds = parts[0] if len(parts) == 1 else paddle.concat(parts, axis=0)
        if len(parts) > 1:  # back to slot order
            order = np.argsort(np.concatenate([text_slots, image_slots]), kind="stable")
            embeds = paddle.index_select(embeds, self._tensor(order))
        hidden = self.model.decode_step(embeds, self.cache, length_of, position_of)[:, 0]  # [B, hidden]

        out = StepLogits({}, {})
        row_in_kind = np.zeros(B, np.int64)
        row_in_kind[text_slots] = np.arange(len(text_slots))
        row_in_kind[image_slots] = np.arange(len(image_slots))
        text_logits = image_logits = None
        if len(text_slots):
            text_logits = self.model.text_logits(paddle.index_select(hidden, self._tensor(text_slots)))
            text_logits = text_logits.astype("float32").numpy()
        if len(image_slots):
            image_logits = self.model.image_logits(paddle.index_select(hidden, self._tensor(image_slots)))
            image_logits = image_logits.astype("float32").numpy()
        for request in requests:
            rows = row_in_kind[request.slots]
            if request.kind is Kind.UNDERSTAND:
                out.text[request.id] = text_logits[rows]
            else:
                out.image[request.id] = image_logits[rows]
            request.length += 1
        return out

    # images

    def decode_images(self, tokens: np.ndarray) -> np.ndarray:
        """tokens [N, image tokens] -> uint8 [N, S, S, 3]."""
        return self.model.decode_images(self._tensor(np.asarray(tokens, np.int64)))

    def _tensor(self, array: np.ndarray) -> paddle.Tensor:
        return to_tensor(array, self.place)

    def warmup(self) -> None:
        """Run every kind of kernel once so the first real request does not pay for it."""
        cfg = self.model.cfg
        ids = paddle.to_tensor([[1, 2, 3]], dtype="int64")
        self.model.prefill(self.model.embed_text(ids), self.cache, [0])
        pixels = paddle.zeros([1, 3, cfg.vision.image_size, cfg.vision.image_size], self.model.dtype)
        self.model.encode_images(pixels)
        embeds = self.model.embed_image_tokens(paddle.to_tensor([0])).unsqueeze(1)
        hidden = self.model.decode_step(embeds, self.cache, [3])
        self.model.text_logits(hidden)
        self.model.image_logits(hidden)
        self.decode_images(np.zeros((1, cfg.gen_vision.num_tokens), np.int64))
        self.cache.clear([0])
