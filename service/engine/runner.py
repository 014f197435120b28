"""The only serving code that makes tensors: prefill, the shared decode step, block copies, image decoding.

Every decode step is ONE backbone forward over all running rows, whatever their kind: understanding rows feed
their last text token through the text embedding, generation rows their last image token through gen_embed +
gen_aligner. Afterwards text rows go through `lm_head`, image rows through `gen_head`. Keys and values live in a
paged pool; each row is read and written through its block table, which the scheduler's block manager keeps. The
runner reads request state and never writes it: what a forward means for the rows (lengths, blocks) is the
scheduler's to record.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import paddle

from model.host_memory import to_tensor
from model.janus import JanusModel
from model.kv_cache import RowBatch
from service.engine.feature_cache import FeatureCache
from service.engine.request import RequestState
from service.engine.types import Kind


@dataclass(slots=True)
class StepLogits:
    """Host-side logits of one decode step, per request."""

    text: dict[str, np.ndarray]  # request id -> [rows of the request (its table order), vocab]
    image: dict[str, np.ndarray]  # request id -> [rows of the request (its table order), image vocab]


class Runner:
    def __init__(self, model: JanusModel, num_blocks: int, block_size: int,
                 features: FeatureCache | None = None) -> None:
        self.model = model
        self.place = model.gen_embed.weight.place
        self.cache = model.new_cache(num_blocks, block_size)
        self.features = features or FeatureCache(0)

    # prefill

    def prefill(self, request: RequestState) -> np.ndarray:
        """Run the prompt into the request's rows. Returns first-token logits [rows, V] (text or image)."""
        if request.kind is Kind.UNDERSTAND:
            return self.prefill_understand([request])[0]
        return self._prefill_generate(request)

    def prefill_understand(self, requests: list[RequestState]) -> list[np.ndarray]:
        """Several understanding prompts in one left-padded batch (one vision pass, one backbone pass), each from
        where its cached prefix ends, into its first row's blocks.

        Returns each request's first-token logits [rows, V] (every answer starts from the same distribution)."""
        suffixes, images = [], []
        for request in requests:
            params, prompt, table = request.understand, request.prompts[0], request.tables[0]
            suffixes.append(params.prompt_ids[table.length:])
            for index, first in prompt.images_from(table.length):
                images.append((prompt.images[index].content, params.pixel_values[index], first))
        features = self._image_features(images)
        ids, pad = _left_padded(suffixes)
        embeds = self.model.embed_prompt(self._tensor(ids), features, image_id=requests[0].understand.image_id)
        rows = RowBatch.of([r.tables[0].blocks for r in requests], [r.tables[0].length for r in requests], pad)
        hidden = self.model.extend(embeds, self.cache, rows, last_only=True)
        logits = self.model.text_logits(hidden[:, -1]).astype("float32").numpy()  # [requests, V]
        return [np.repeat(row[None], request.understand.n, axis=0)
                for row, request in zip(logits, requests, strict=True)]

    def _image_features(self, images: list[tuple[bytes, np.ndarray, int]]) -> paddle.Tensor | None:
        """Aligned features [positions, hidden] of (content hash, pixels, first position) images in order, each
        from its first position on, through the feature cache."""
        if not images:
            return None
        found = [self.features.get(content) for content, _, _ in images]
        missing = [i for i, f in enumerate(found) if f is None]
        if missing:
            encoded = self.model.encode_images(self._tensor(np.stack([images[i][1] for i in missing])))
            for slot, i in enumerate(missing):
                found[i] = encoded[slot]
                self.features.put(images[i][0], encoded[slot])
        parts = [f if first == 0 else f[first:] for f, (_, _, first) in zip(found, images, strict=True)]
        return paddle.concat(parts, axis=0) if len(parts) > 1 else parts[0]

    def _prefill_generate(self, request: RequestState) -> np.ndarray:
        """The conditional prompt and (guided) the unconditional one, each once, into their first rows' blocks;
        the other rows of each share them after `Scheduler.prefilled`."""
        ids, pad = _left_padded([p.ids[t.length:] for p, t in zip(request.prompts, request.tables, strict=True)])
        rows = RowBatch.of([t.blocks for t in request.tables], [t.length for t in request.tables], pad)
        hidden = self.model.extend(self.model.embed_text(self._tensor(ids)), self.cache, rows, last_only=True)
        logits = self.model.image_logits(hidden[:, -1]).astype("float32").numpy()  # [1 or 2, V]
        return np.repeat(logits, request.generate.parallel_size, axis=0)  # P conditional, then P unconditional

    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        """Apply the block manager's copies (source, destination): rows that split off a shared prompt."""
        self.cache.copy_blocks(copies)

    # decode

    def decode(self, requests: list[RequestState]) -> StepLogits:
        """One backbone forward over every row of every request; each row writes one position (its table has a
        block for it) and gives the logits of the next token."""
        kind_of, token_of, tables, lengths = [], [], [], []
        for request in requests:
            image = request.kind is Kind.GENERATE
            # every row of a generation pair takes the token sampled for its image
            tokens = request.next_tokens * (2 if image and request.generate.guided else 1)
            for table, token in zip(request.tables, tokens, strict=True):
                kind_of.append(image)
                token_of.append(token)
                tables.append(table.blocks)
                lengths.append(table.length)
        is_image, token_array = np.asarray(kind_of, bool), np.asarray(token_of, np.int64)
        B = len(token_of)
        text_rows, image_rows = np.flatnonzero(~is_image), np.flatnonzero(is_image)
        parts = []
        if len(text_rows):
            parts.append(self.model.embed_text(self._tensor(token_array[text_rows][:, None])))
        if len(image_rows):
            parts.append(self.model.embed_image_tokens(self._tensor(token_array[image_rows])).unsqueeze(1))
        embeds = parts[0] if len(parts) == 1 else paddle.concat(parts, axis=0)
        if len(parts) > 1:  # back to row order
            order = np.argsort(np.concatenate([text_rows, image_rows]), kind="stable")
            embeds = paddle.index_select(embeds, self._tensor(order))
        hidden = self.model.extend(embeds, self.cache, RowBatch.of(tables, lengths))[:, 0]  # [B, hidden]

        row_in_kind = np.zeros(B, np.int64)
        row_in_kind[text_rows] = np.arange(len(text_rows))
        row_in_kind[image_rows] = np.arange(len(image_rows))
        text_logits = image_logits = None
        if len(text_rows):
            text_logits = self.model.text_logits(paddle.index_select(hidden, self._tensor(text_rows)))
            text_logits = text_logits.astype("float32").numpy()
        if len(image_rows):
            image_logits = self.model.image_logits(paddle.index_select(hidden, self._tensor(image_rows)))
            image_logits = image_logits.astype("float32").numpy()
        out = StepLogits({}, {})
        first = 0
        for request in requests:
            rows = row_in_kind[first:first + len(request.tables)]
            first += len(request.tables)
            if request.kind is Kind.UNDERSTAND:
                out.text[request.id] = text_logits[rows]
            else:
                out.image[request.id] = image_logits[rows]
        return out

    # images

    def decode_images(self, tokens: np.ndarray) -> np.ndarray:
        """tokens [N, image tokens] -> uint8 [N, S, S, 3]."""
        return self.model.decode_images(self._tensor(np.asarray(tokens, np.int64)))

    def _tensor(self, array: np.ndarray) -> paddle.Tensor:
        return to_tensor(array, self.place)

    def warmup(self) -> None:
        """Run every kind of kernel once so the first real request does not pay for it (in block 0, which no row
        holds yet: what it writes there is never read)."""
        cfg = self.model.cfg
        ids = paddle.to_tensor([[1, 2, 3]], dtype="int64")
        self.model.extend(self.model.embed_text(ids), self.cache, RowBatch.of([[0] * 4], [0]))
        pixels = paddle.zeros([1, 3, cfg.vision.image_size, cfg.vision.image_size], self.model.dtype)
        self.model.encode_images(pixels)
        embeds = self.model.embed_image_tokens(paddle.to_tensor([0])).unsqueeze(1)
        hidden = self.model.extend(embeds, self.cache, RowBatch.of([[0] * 4], [3]))
        self.model.text_logits(hidden)
        self.model.image_logits(hidden)
        self.decode_images(np.zeros((1, cfg.gen_vision.num_tokens), np.int64))


def _left_padded(rows: list[list[int]]) -> tuple[np.ndarray, list[int]]:
    """Token rows -> ids [B, T] with each row at the right end, and each row's padding."""
    width = max(len(r) for r in rows)
    ids = np.zeros((len(rows), width), np.int64)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = row
    return ids, [width - len(r) for r in rows]
