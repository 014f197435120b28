"""The only serving code that makes tensors: prefill, the shared decode step, image decoding.

Every decode step is ONE backbone forward over all running rows, whatever their kind: understanding rows feed
their last text token through the text embedding, generation rows their last image token through gen_embed +
gen_aligner. Afterwards text rows go through `lm_head`, image rows through `gen_head`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import paddle

from model.backbone import StepInput
from model.janus import JanusModel
from service.engine.request import RequestState
from service.engine.types import Kind


@dataclass(slots=True)
class StepLogits:
    """Host-side logits of one decode step, per request in the order given."""

    text: dict[str, np.ndarray]  # request id -> [vocab]
    image: dict[str, np.ndarray]  # request id -> [rows of the request, image vocab]


class Runner:
    def __init__(self, model: JanusModel, max_rows: int, max_seq_len: int) -> None:
        self.model = model
        self.cache = model.new_cache(max_rows, max_seq_len)
        self.max_seq_len = max_seq_len

    # prefill

    def prefill(self, request: RequestState) -> np.ndarray:
        """Run the prompt into the request's rows. Returns first-token logits: text [1, V] or image [rows, V]."""
        if request.kind is Kind.UNDERSTAND:
            return self._prefill_understand(request)
        return self._prefill_generate(request)

    def _prefill_understand(self, request: RequestState) -> np.ndarray:
        params = request.understand
        ids = paddle.to_tensor([params.prompt_ids], dtype="int64")
        features = None
        if params.pixel_values is not None and len(params.pixel_values):
            features = self.model.encode_images(paddle.to_tensor(params.pixel_values))
        embeds = self.model.embed_prompt(ids, features, image_id=params.image_id)
        hidden = self._run_prompt(embeds, request.slots[:1])
        request.length = ids.shape[1]
        return self.model.text_logits(hidden[:, -1]).astype("float32").numpy()

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
        hidden = self._run_prompt(self.model.embed_text(paddle.to_tensor(np.stack(rows))), sources)
        length = len(cond)
        self.cache.copy(request.slots[0], request.slots[1:P], length)
        if params.guided:
            self.cache.copy(request.slots[P], request.slots[P + 1:], length)
        request.length = length
        logits = self.model.image_logits(hidden[:, -1]).astype("float32").numpy()  # [1 or 2, V]
        return np.repeat(logits, P, axis=0)  # rows in slot order: P conditional, then P unconditional

    def _run_prompt(self, embeds: paddle.Tensor, slots: list[int]) -> paddle.Tensor:
        B, T, _ = embeds.shape
        self.cache.clear(slots)
        positions = paddle.expand(paddle.arange(T, dtype="int64").unsqueeze(0), [B, T])
        step = StepInput(slots, [0] * B, paddle.ones([B, T], "int64"), positions)
        return self.model.forward_backbone(embeds, self.cache, step)

    # decode

    def decode(self, requests: list[RequestState]) -> StepLogits:
        """One backbone forward over every row of every request; each request's rows advance by one token."""
        text = [r for r in requests if r.kind is Kind.UNDERSTAND]
        image = [r for r in requests if r.kind is Kind.GENERATE]
        slots: list[int] = []
        starts: list[int] = []
        for request in text + image:
            slots += request.slots
            starts += [request.length] * request.rows
        parts = []
        if text:
            ids = paddle.to_tensor([[r.next_tokens[0]] for r in text], dtype="int64")
            parts.append(self.model.embed_text(ids))
        if image:
            # both rows of a pair take the same sampled token
            tokens = [t for r in image for t in r.next_tokens * (2 if r.generate.guided else 1)]
            parts.append(self.model.embed_image_tokens(paddle.to_tensor(tokens, dtype="int64")).unsqueeze(1))
        embeds = parts[0] if len(parts) == 1 else paddle.concat(parts, axis=0)
        B = embeds.shape[0]
        positions = paddle.to_tensor(starts, dtype="int64").unsqueeze(1)
        hidden = self.model.forward_backbone(embeds, self.cache,
                                             StepInput(slots, starts, paddle.ones([B, 1], "int64"), positions))
        hidden = hidden[:, 0]
        out = StepLogits({}, {})
        if text:
            logits = self.model.text_logits(hidden[: len(text)]).astype("float32").numpy()
            out.text = {r.id: logits[i] for i, r in enumerate(text)}
        if image:
            logits = self.model.image_logits(hidden[len(text):]).astype("float32").numpy()
            offset = 0
            for r in image:
                out.image[r.id] = logits[offset:offset + r.rows]
                offset += r.rows
        for request in requests:
            request.length += 1
        return out

    # images

    def decode_images(self, tokens: np.ndarray) -> np.ndarray:
        """tokens [N, image tokens] -> uint8 [N, S, S, 3]."""
        return self.model.decode_images(paddle.to_tensor(tokens, dtype="int64"))

    def warmup(self) -> None:
        """Run every kind of kernel once so the first real request does not pay for it."""
        cfg = self.model.cfg
        ids = paddle.to_tensor([[1, 2, 3]], dtype="int64")
        self._run_prompt(self.model.embed_text(ids), [0])
        pixels = paddle.zeros([1, 3, cfg.vision.image_size, cfg.vision.image_size], self.model.dtype)
        self.model.encode_images(pixels)
        step = StepInput([0], [3], paddle.ones([1, 1], "int64"), paddle.to_tensor([[3]], dtype="int64"))
        hidden = self.model.forward_backbone(self.model.embed_image_tokens(paddle.to_tensor([0])).unsqueeze(1),
                                             self.cache, step)
        self.model.text_logits(hidden)
        self.model.image_logits(hidden)
        self.decode_images(np.zeros((1, cfg.gen_vision.num_tokens), np.int64))
        self.cache.clear([0])
