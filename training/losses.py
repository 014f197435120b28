"""The two training objectives, computed with the network's own inference primitives (`model.janus`) so that what
is trained is exactly what the service runs.

- Generation: the prompt, then the image tokens fed back through `gen_embed` + `gen_aligner`; every position from
  `<begin_of_image>` on predicts the next image token through `gen_head`.
- Understanding: the prompt with the picture's aligned vision features at its placeholders, then the answer;
  every position from `<|Assistant|>:` on predicts the next answer token through `lm_head`.
"""

from __future__ import annotations

import paddle
import paddle.nn.functional as F

from model.janus import JanusModel
from training.examples import GenerationBatch, UnderstandingBatch


def generation_loss(model: JanusModel, batch: GenerationBatch,
                    guidance: float = 0.0) -> tuple[paddle.Tensor, paddle.Tensor]:
    """(the cross-entropy of every row's next image token, the twins' term; zero without twins).

    The twins' term, c the conditional row's distribution held fixed (it learns from its tokens alone) and u its
    unconditional twin's (`examples.generation_examples` says why twins):
    - guidance 0: the mean over the twins' positions of KL(c || u);
    - guidance w > 1: the cross-entropy of the picture's tokens under the guided distribution the service samples
      from at that weight, softmax(w log c - (w - 1) log u) (`model.sampling`'s guided logits). It trains u so
      that guidance at w draws the pictures; KL(c || u) hardly sees the tokens that guidance breaks pictures
      with: where c is small but u much smaller, c log(c / u) is small while c^w / u^(w - 1) is not."""
    B, T = batch.ids.shape
    embeds = model.embed_text(paddle.to_tensor(batch.ids))
    C = embeds.shape[-1]
    images = model.embed_image_tokens(paddle.to_tensor(batch.image_inputs))  # [B * (tokens - 1), C]
    flat = paddle.scatter(embeds.reshape([B * T, C]), paddle.to_tensor(batch.image_positions), images)
    hidden = model.causal_forward(flat.reshape([B, T, C])).reshape([B * T, C])
    logits = model.image_logits(paddle.gather(hidden, paddle.to_tensor(batch.target_positions)))
    drawing = F.cross_entropy(logits, paddle.to_tensor(batch.targets)[:, None])
    if not len(batch.twins):
        return drawing, paddle.zeros([])
    vocabulary = logits.shape[-1]
    by_row = logits.reshape([B, -1])  # target positions are row after row, the same number each
    conditional = paddle.gather(by_row, paddle.to_tensor(batch.twins[:, 0])).detach()
    unconditional = paddle.gather(by_row, paddle.to_tensor(batch.twins[:, 1]))
    if guidance:
        guided = (guidance * conditional - (guidance - 1) * unconditional).reshape([-1, vocabulary])
        targets = batch.targets.reshape([B, -1])[batch.twins[:, 0]].reshape([-1, 1])
        return drawing, F.cross_entropy(guided, paddle.to_tensor(targets))
    conditional, unconditional = _log_probs(conditional, vocabulary), _log_probs(unconditional, vocabulary)
    agreement = (conditional.exp() * (conditional - unconditional)).sum(-1).mean()
    return drawing, agreement


def _log_probs(rows: paddle.Tensor, vocabulary: int) -> paddle.Tensor:
    """log-softmax over the last `vocabulary` values, written out: Paddle's CPU log_softmax took 140 ms forward on
    [320, 2048] (and most of a training step with its backward), this 3.5 ms."""
    logits = rows.reshape([-1, vocabulary])
    shifted = logits - logits.max(-1, keepdim=True).detach()
    return shifted - shifted.exp().sum(-1, keepdim=True).log()


def understanding_loss(model: JanusModel, batch: UnderstandingBatch, image_id: int) -> paddle.Tensor:
    B, T = batch.ids.shape
    ids = paddle.to_tensor(batch.ids)
    embeds = model.embed_prompt(ids, model.encode_images(paddle.to_tensor(batch.pixels)), image_id)
    C = embeds.shape[-1]
    hidden = model.causal_forward(embeds).reshape([B * T, C])
    logits = model.text_logits(paddle.gather(hidden, paddle.to_tensor(batch.target_positions)))
    return F.cross_entropy(logits, paddle.to_tensor(batch.targets)[:, None])
