"""What a model and its settings need of a card's memory, from `config.json` alone: weights, the KV pool, the
activations of the largest step, the image decoder, and what the pool then holds.

Pure arithmetic (no Paddle, no weights), shared by `janus-serve plan` and the gpu's pool sizing
(`service/gpu_pool.py`), which measures the activations instead of estimating them. The weights and the KV bytes
are exact counts of the network's tensors; the activations and the decoder are estimates of the peak of Paddle's
own ops on the gpu (the path without the CPU kernels): attention as two matmuls around a float32 softmax over the
gathered keys, the VQ decoder's feature maps at full resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

from model.config import JanusConfig

GiB = 2**30
MiB = 2**20
INT8_GROUP = 64  # int8 weights: one float32 scale per output channel per group of this many input columns
MAX_IMAGES = 8  # per question (service.processing.MAX_IMAGES)
MAX_PARALLEL_SIZE = 16  # per generation request (service.api.protocol.MAX_PARALLEL_SIZE)
MIN_ANSWER_TOKENS = 16  # the answer room a question's images must leave (service.processing)
# Prompt positions around a question's images (the default system prompt, roles, a short question) and of a short
# generation prompt with its template: the planner has no tokenizer, so these are the round figures of Janus-Pro's.
QUESTION_TOKENS = 80
GENERATION_PROMPT_TOKENS = 32
DECODER_LIVE_MAPS = 4  # full-resolution feature maps alive at once in a decoder ResnetBlock (input, two convs, norm)
SCORE_COPIES = 3  # float32 attention scores, with the mask added, and the softmax's output


def worst_case_blocks(block_size: int, prompt_len: int, rows: int, max_len: int) -> int:
    """The block manager's count (`service.engine.block_manager.worst_case_blocks`, held equal by a test), here
    because importing the engine imports Paddle, which the plan command does without."""
    prompt_blocks = -(-prompt_len // block_size)
    partial = 1 if prompt_len % block_size else 0
    return prompt_blocks + (rows - 1) * partial + rows * (-(-max_len // block_size) - prompt_blocks)


def element_bytes(dtype: str) -> int:
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype {dtype!r}: choose float32, bfloat16 or float16")
    return 4 if dtype == "float32" else 2


def quantizable_linears(cfg: JanusConfig) -> list[tuple[int, int, int]]:
    """(input columns, output channels, how many) of the weights int8 quantization holds as int8: the language
    model's Linear weights (every layer's projections and lm_head) and the generation head's two."""
    lang, head = cfg.language, cfg.gen_head
    h, i, layers = lang.hidden_size, lang.intermediate_size, lang.num_hidden_layers
    q_width, kv_width = lang.num_attention_heads * lang.head_dim, lang.num_key_value_heads * lang.head_dim
    return [(h, q_width, layers), (h, kv_width, 2 * layers), (q_width, h, layers), (h, i, 2 * layers),
            (i, h, layers), (h, lang.vocab_size, 1), (head.n_embed, head.image_token_embed, 1),
            (head.image_token_embed, head.image_token_size, 1)]


def other_parameters(cfg: JanusConfig) -> int:
    """Every parameter that is not a quantizable Linear weight: embeddings, norms, biases, the vision tower, the
    aligners and the VQ decoder."""
    lang, vis, vq = cfg.language, cfg.vision, cfg.gen_vision
    h = lang.hidden_size
    language = lang.vocab_size * h + (2 * lang.num_hidden_layers + 1) * h  # token embeddings, RMSNorms
    head = cfg.gen_head.image_token_embed + cfg.gen_head.image_token_size  # its biases
    gen_embed = vq.image_token_size * vq.n_embed
    w, mlp = vis.width, int(vis.width * vis.mlp_ratio)
    block = 4 * w + (3 * w * w + 3 * w) + (w * w + w) + (w * mlp + mlp) + (mlp * w + w)
    vision = vis.num_tokens * w + (3 * vis.patch_size**2 * w + w) + vis.used_layers * block + 2 * w
    return language + head + gen_embed + vision + _projector(cfg.aligner) + _projector(cfg.gen_aligner) + \
        _vq_decoder(cfg)


def _projector(p) -> int:  # noqa: ANN001 - a ProjectorConfig
    return p.input_dim * p.n_embed + p.n_embed + (p.depth - 1) * (p.n_embed * p.n_embed + p.n_embed)


def _vq_decoder(cfg: JanusConfig) -> int:
    vq = cfg.gen_vision

    def conv(cin: int, cout: int, k: int) -> int:
        return cin * cout * k * k + cout

    def resnet(cin: int, cout: int) -> int:
        shortcut = conv(cin, cout, 1) if cin != cout else 0
        return 2 * cin + conv(cin, cout, 3) + 2 * cout + conv(cout, cout, 3) + shortcut

    def attn(c: int) -> int:
        return 2 * c + 4 * conv(c, c, 1)

    levels = len(vq.ch_mult)
    block_in = vq.ch * vq.ch_mult[-1]
    total = vq.image_token_size * vq.n_embed + conv(vq.n_embed, vq.z_channels, 1) + conv(vq.z_channels, block_in, 3)
    total += 2 * resnet(block_in, block_in) + attn(block_in)
    for level in reversed(range(levels)):
        block_out = vq.ch * vq.ch_mult[level]
        for _ in range(vq.num_res_blocks + 1):
            total += resnet(block_in, block_out)
            block_in = block_out
            if level == levels - 1:
                total += attn(block_in)
        if level != 0:
            total += conv(block_in, block_in, 3)
    return total + 2 * block_in + conv(block_in, 3, 3)


def parameter_count(cfg: JanusConfig) -> int:
    return sum(k * n * count for k, n, count in quantizable_linears(cfg)) + other_parameters(cfg)


def weight_bytes(cfg: JanusConfig, dtype: str, quantization: str = "none") -> int:
    """The weights on the device: every parameter in `dtype`, or with int8 the quantizable Linear weights as one
    byte each plus a float32 scale per output channel per group of 64 input columns."""
    size = element_bytes(dtype)
    linears = quantizable_linears(cfg)
    if quantization == "none":
        held = sum(k * n * count for k, n, count in linears) * size
    elif quantization == "int8":
        held = sum((k * n + -(-k // INT8_GROUP) * n * 4) * count for k, n, count in linears)
    else:
        raise ValueError(f"quantization {quantization!r}: choose none or int8")
    return held + other_parameters(cfg) * size


def table_bytes(cfg: JanusConfig) -> int:
    """Rotary tables, float32 whatever the dtype: the project's (cos and sin at full and half width) and the one
    PaddleNLP's attention layers share ([max positions, head_dim] cos and sin, and the inverse frequencies: the
    reference loops read it; `model.backbone.share_rotary_tables`)."""
    lang = cfg.language
    P, D = lang.max_position_embeddings, lang.head_dim
    return 4 * ((2 * P * D + D // 2) + 3 * P * D)


def kv_position_bytes(cfg: JanusConfig, dtype: str) -> int:
    """One position of one row over all layers, keys and values."""
    lang = cfg.language
    return 2 * lang.num_hidden_layers * lang.num_key_value_heads * lang.head_dim * element_bytes(dtype)


def activation_bytes(cfg: JanusConfig, dtype: str, max_rows: int, max_seq_len: int) -> int:
    """Peak of the largest step on Paddle's ops, the larger of: a decode step of `max_rows` rows whose longest row
    holds `max_seq_len` positions (each row gathers that many keys and values per layer, repeated to every query
    head, and scores them in float32); and the prefill of one prompt of `max_seq_len` positions (float32 scores of
    every position against every other: quadratic in max_seq_len) after a question's images went through the
    vision encoder."""
    lang, vis = cfg.language, cfg.vision
    e = element_bytes(dtype)
    H, KVH, D, h = lang.num_attention_heads, lang.num_key_value_heads, lang.head_dim, lang.hidden_size
    vocab = lang.vocab_size + cfg.gen_head.image_token_size
    L = max_seq_len
    gathered = 2 * max_rows * L * D * (2 * KVH + (H if H != KVH else 0)) * e  # keys and values: gather, copy, repeat
    scores = max_rows * H * L * 4 * SCORE_COPIES + max_rows * L * 4
    step_rows = max_rows * (4 * h + 3 * lang.intermediate_size + (H + 2 * KVH) * D) * e + max_rows * vocab * 4
    decode = gathered + scores + step_rows
    T = max_seq_len
    prompt_scores = H * T * T * 4 * SCORE_COPIES + T * T * 4
    prompt_rows = T * (4 * h + 3 * lang.intermediate_size + (H + 2 * KVH) * D) * e + 2 * T * D * (2 * KVH + H) * e
    vision = MAX_IMAGES * (vis.num_tokens * (6 * vis.width + int(vis.width * vis.mlp_ratio)) * e
                           + vis.heads * vis.num_tokens**2 * 4 * SCORE_COPIES)
    return max(decode, prompt_scores + prompt_rows + vision)


def decoder_bytes(cfg: JanusConfig, dtype: str, images: int) -> int:
    """The VQ decoder's feature maps for `images` images decoded at once (the gpu decodes a request's together):
    a few maps of its widest full-resolution level alive at once."""
    vq = cfg.gen_vision
    top = vq.ch * max(vq.ch_mult[0], vq.ch_mult[1] if len(vq.ch_mult) > 1 else 0)
    return images * DECODER_LIVE_MAPS * top * vq.image_size**2 * element_bytes(dtype)


@dataclass(frozen=True, slots=True)
class PoolContents:
    """What a KV pool of `blocks` blocks holds for the published request shapes."""

    blocks: int
    positions: int
    images_per_question: int  # images one question can carry (at most MAX_IMAGES)
    generation_rows: int  # generation rows at once (two per guided image), within max_rows
    parallel_size: int  # guided images one request can ask for (at most MAX_PARALLEL_SIZE)


def pool_contents(cfg: JanusConfig, blocks: int, block_size: int, max_rows: int, max_seq_len: int) -> PoolContents:
    image_positions = cfg.vision.num_tokens + 2  # the image's tokens between its begin and end markers
    images = 0
    for count in range(MAX_IMAGES, 0, -1):
        prompt = QUESTION_TOKENS + count * image_positions
        if prompt + MIN_ANSWER_TOKENS <= max_seq_len and \
                worst_case_blocks(block_size, prompt, 1, prompt + MIN_ANSWER_TOKENS) <= blocks:
            images = count
            break
    prompt, length = GENERATION_PROMPT_TOKENS, GENERATION_PROMPT_TOKENS + cfg.gen_vision.num_tokens
    fits_context = length <= max_seq_len

    def fits(pairs: int) -> bool:  # `pairs` guided images: two prompts, each shared by `pairs` rows
        return fits_context and 2 * worst_case_blocks(block_size, prompt, pairs, length) <= blocks

    pairs = next((k for k in range(max_rows // 2, 0, -1) if fits(k)), 0)
    return PoolContents(blocks, blocks * block_size, images, 2 * pairs, min(pairs, MAX_PARALLEL_SIZE))


def pool_from_card(total_bytes: int, fraction: float, in_use_bytes: int) -> int:
    """Bytes the KV pool may take: the card's share for the server less what is in use at the peak of a warm-up
    at the largest batch (weights, activations, the decoder); 0 when nothing is left."""
    if not 0 < fraction <= 1:
        raise ValueError(f"the memory fraction must be in (0, 1], got {fraction}")
    return max(0, int(total_bytes * fraction) - in_use_bytes)


def pool_blocks(pool_bytes: int, block_bytes: int, block_size: int, max_rows: int, max_seq_len: int) -> int:
    """Blocks of a pool of `pool_bytes`, never more than `max_rows` rows of `max_seq_len` need (as the engine)."""
    return min(pool_bytes // block_bytes, max_rows * -(-max_seq_len // block_size))


@dataclass(frozen=True, slots=True)
class MemoryPlan:
    dtype: str
    quantization: str
    device_bytes: int
    fraction: float
    weights: int
    tables: int  # rotary tables (float32)
    activations: int
    decoder: int
    decoder_images: int
    block_bytes: int
    pool: int  # bytes the KV pool takes (the card's share left, or JANUS_KV_CACHE_MB's)
    pool_source: str
    contents: PoolContents
    max_rows: int
    max_seq_len: int

    @property
    def in_use(self) -> int:
        return self.weights + self.tables + self.activations + self.decoder

    @property
    def fits(self) -> bool:
        return self.in_use + self.pool <= self.device_bytes * self.fraction and self.contents.blocks > 0


def plan(cfg: JanusConfig, device_bytes: int, dtype: str, quantization: str = "none", *, fraction: float = 0.9,
         max_rows: int = 32, max_seq_len: int | None = None, block_size: int = 16,
         kv_cache_mb: int | None = None) -> MemoryPlan:
    """The memory of a server with these settings on a card of `device_bytes`; kv_cache_mb: an explicit pool."""
    seq = max_seq_len or cfg.language.max_position_embeddings
    weights = weight_bytes(cfg, dtype, quantization)
    tables = table_bytes(cfg)
    activations = activation_bytes(cfg, dtype, max_rows, seq)
    images = min(MAX_PARALLEL_SIZE, max(1, max_rows // 2))
    decoder = decoder_bytes(cfg, dtype, images)
    block = kv_position_bytes(cfg, dtype) * block_size
    if kv_cache_mb is None:
        budget = pool_from_card(device_bytes, fraction, weights + tables + activations + decoder)
        source = f"what is left of {fraction:g} x the card"
    else:
        budget, source = kv_cache_mb * MiB, f"JANUS_KV_CACHE_MB={kv_cache_mb}"
    blocks = pool_blocks(budget, block, block_size, max_rows, seq)
    if blocks < budget // block:
        source += f", capped at what {max_rows} rows of {seq} positions use"
    contents = pool_contents(cfg, blocks, block_size, max_rows, seq)
    return MemoryPlan(dtype, quantization, device_bytes, fraction, weights, tables, activations, decoder, images, block,
                      blocks * block, source, contents, max_rows, seq)
