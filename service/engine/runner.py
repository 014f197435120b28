"""The only serving code that makes tensors: the forward of each step, the sampling of its tokens, block copies,
image decoding.

`run(plan)` computes what the scheduler planned and returns the tokens aligned with the plan's rows. A decode step
is ONE backbone forward over all running rows, whatever their kind: understanding rows feed their last text token
through the text embedding, generation rows their last image token through gen_embed + gen_aligner. Afterwards text
rows go through `lm_head`, image rows through `gen_head`. Keys and values live in a paged pool; each row is read
and written through its block table. The runner reads rows and never writes them: what a step means for them
(tokens, lengths, blocks) is the scheduler's to record.
"""

from __future__ import annotations

import logging

import numpy as np
import paddle

from model.host_memory import to_tensor
from model.janus import JanusModel
from model.kv_cache import RowBatch
from service.engine.feature_cache import FeatureCache
from service.engine.plan import Plan, StepOutput
from service.engine.request import Request
from service.engine.sampler import sample
from service.engine.types import Kind

log = logging.getLogger(__name__)


class Runner:
    def __init__(self, model: JanusModel, num_blocks: int, block_size: int,
                 features: FeatureCache | None = None) -> None:
        self.model = model
        self.place = model.gen_embed.weight.place
        self.cache = model.new_cache(num_blocks, block_size)
        self.features = features or FeatureCache(0)

    def run(self, plan: Plan) -> StepOutput:
        """The plan's forward, then each request's tokens. A request whose prefill or sampling fails is reported in
        the output's `failed` (its rows draw nothing); the others go on."""
        failed: dict[Request, str] = {}
        return self.sample(plan, self.forward(plan, failed), failed)

    def forward(self, plan: Plan, failed: dict[Request, str]) -> dict[Request, np.ndarray | list[np.ndarray]]:
        """Each request's next-token logits [its rows, V] (text or image vocabulary), or in a decode step of a
        speculative request each row's image logits [fed positions, V]; a request whose prefill fails goes into
        `failed` instead."""
        self.cache.copy_blocks(plan.copies)
        if plan.prefill:
            return self._prefill(plan.prefill, failed)
        return self._decode(plan)

    def sample(self, plan: Plan, logits: dict[Request, np.ndarray | list[np.ndarray]],
               failed: dict[Request, str]) -> StepOutput:
        """Each request's tokens from its rows' logits, aligned with the plan's rows (a speculative request's
        decode step passes its logits on: the scheduler verifies its drafts)."""
        out = StepOutput([[] for _ in plan.rows], [[] for _ in plan.rows], failed, [None] * len(plan.rows))
        for request, rows in plan.by_request():
            if request in failed:
                continue
            found = logits[request]
            if isinstance(found, list):
                for i, row_logits in zip(rows, found, strict=True):
                    out.logits[i] = row_logits
                continue
            try:
                tokens, logprobs = sample(request, found)
            except Exception as err:  # noqa: BLE001 - fails this request only
                log.exception("sampling failed for %s", request.id)
                failed[request] = f"processing failed: {err}"
                continue
            for i, token in zip(rows, tokens.tolist(), strict=True):
                out.tokens[i] = [token]
            for i, entry in zip(rows, logprobs, strict=False):
                out.logprobs[i] = [entry]
        return out

    # prefill

    def _prefill(self, requests: list[Request], failed: dict[Request, str]) -> dict[Request, np.ndarray]:
        """First-token logits [rows, V] of each request whose prompts ran (understanding prompts in one batch, a
        generation's one or two prompts in another). A batch that fails is run again request by request, so that
        only the request that breaks it fails."""
        try:
            if requests[0].kind is Kind.GENERATE:
                return {requests[0]: self._prefill_generate(requests[0])}
            return dict(zip(requests, self._prefill_understand(requests), strict=True))
        except Exception as err:  # noqa: BLE001 - fails these requests only
            if len(requests) == 1:
                log.exception("prefill failed for %s", requests[0].id)
                failed[requests[0]] = f"prefill failed: {err}"
                return {}
        logits: dict[Request, np.ndarray] = {}
        for request in requests:
            logits.update(self._prefill([request], failed))
        return logits

    def _prefill_understand(self, requests: list[Request]) -> list[np.ndarray]:
        """Several understanding prompts in one left-padded batch (one vision pass, one backbone pass), each from
        where its cached prefix ends, into its first row's blocks. Every answer starts from the same logits."""
        suffixes, images, tables = [], [], [request.rows[0].table for request in requests]
        for request, table in zip(requests, tables, strict=True):
            params, prompt = request.understand, request.prompts[0]
            suffixes.append(params.prompt_ids[table.length:])
            for index, first in prompt.images_from(table.length):
                images.append((prompt.images[index].content, params.pixel_values[index], first))
        features = self._image_features(images)
        ids, pad = _left_padded(suffixes)
        embeds = self.model.embed_prompt(self._tensor(ids), features, image_id=requests[0].understand.image_id)
        rows = RowBatch.of([t.blocks for t in tables], [t.length for t in tables], pad)
        hidden = self.model.extend(embeds, self.cache, rows, last_only=True)
        logits = self.model.text_logits(hidden[:, -1]).astype("float32").numpy()  # [requests, V]
        return [np.repeat(row[None], len(request.rows), axis=0) for row, request in zip(logits, requests,
                                                                                      strict=True)]

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

    def _prefill_generate(self, request: Request) -> np.ndarray:
        """The conditional prompt and (guided) the unconditional one, each once, into their first rows' blocks;
        the other rows of each share them once the scheduler has recorded the prefill."""
        tables = [row.table for row in request.prompt_rows]
        ids, pad = _left_padded([p.ids[t.length:] for p, t in zip(request.prompts, tables, strict=True)])
        rows = RowBatch.of([t.blocks for t in tables], [t.length for t in tables], pad)
        hidden = self.model.extend(self.model.embed_text(self._tensor(ids)), self.cache, rows, last_only=True)
        logits = self.model.image_logits(hidden[:, -1]).astype("float32").numpy()  # [1 or 2, V]
        return np.repeat(logits, request.generate.parallel_size, axis=0)  # P conditional, then P unconditional

    # decode

    def _decode(self, plan: Plan) -> dict[Request, np.ndarray | list[np.ndarray]]:
        """One backbone forward over every row of the plan; each row writes the positions it feeds (its table has
        blocks for them; rows feeding fewer than others are left-padded) and gives the logits [rows, V] of its
        request's next tokens, or, a row of a speculative request, its image logits at every position it fed."""
        is_image = np.array([row.request.kind is Kind.GENERATE for row in plan.rows], bool)
        widths = np.array([len(ids) for ids in plan.inputs], np.int64)
        T = int(widths.max())
        tokens = np.zeros((len(plan.rows), T), np.int64)
        for b, ids in enumerate(plan.inputs):
            tokens[b, T - len(ids):] = ids
        text_rows, image_rows = np.flatnonzero(~is_image), np.flatnonzero(is_image)
        parts = []
        if len(text_rows):
            parts.append(self.model.embed_text(self._tensor(tokens[text_rows])))
        if len(image_rows):
            parts.append(self.model.embed_image_tokens(self._tensor(tokens[image_rows])))
        embeds = parts[0] if len(parts) == 1 else paddle.concat(parts, axis=0)
        if len(parts) > 1:  # back to row order
            order = np.argsort(np.concatenate([text_rows, image_rows]), kind="stable")
            embeds = paddle.index_select(embeds, self._tensor(order))
        batch = RowBatch.of([row.table.blocks for row in plan.rows], [row.table.length for row in plan.rows],
                            (T - widths).tolist())
        hidden = self.model.extend(embeds, self.cache, batch)  # [B, T, hidden]
        hidden = hidden.reshape([-1, hidden.shape[-1]])  # row b's column t at b * T + t
        last = np.arange(len(plan.rows)) * T + T - 1
        # the positions whose logits are needed: the last of every row, every fed one of a speculative row
        every = np.array([row.request.speculation is not None for row in plan.rows], bool) & is_image
        image_columns = [np.arange(b * T + T - widths[b], b * T + T) if every[b] else last[b:b + 1]
                         for b in image_rows]
        by_kind: dict[bool, np.ndarray] = {}
        if len(text_rows):
            logits = self.model.text_logits(paddle.index_select(hidden, self._tensor(last[text_rows])))
            by_kind[False] = logits.astype("float32").numpy()
        if len(image_rows):
            columns = self._tensor(np.concatenate(image_columns))
            by_kind[True] = self.model.image_logits(paddle.index_select(hidden, columns)).astype("float32").numpy()
        # where each row's logits start in its kind's; a request's rows are consecutive there
        start = np.zeros(len(plan.rows), np.int64)
        start[text_rows] = np.arange(len(text_rows))
        start[image_rows] = np.cumsum([0, *(len(c) for c in image_columns[:-1])])
        out: dict[Request, np.ndarray | list[np.ndarray]] = {}
        for request, rows in plan.by_request():
            kind = by_kind[bool(is_image[rows.start])]
            if every[rows.start]:
                out[request] = [kind[start[b]:start[b] + widths[b]] for b in rows]
            else:
                out[request] = kind[start[rows.start]:start[rows.start] + len(rows)]
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
