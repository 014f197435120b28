"""SigLIP ViT understanding encoder (`siglip_large_patch16_384` without its attention-pool head).

Sub-layer names mirror the checkpoint keys under `vision_model.vision_tower.`.
"""

from __future__ import annotations

import paddle
from paddle import nn

from model import cpu_kernels
from model.attention import prompt_attention
from model.config import VisionConfig
from model.layer_ops import add_bias_, gelu, linear


class PatchEmbed(nn.Layer):
    """A stride-`patch` convolution, computed as one matmul over the flattened patches (Paddle's CPU conv2d took
    twice as long for the same arithmetic). The bias is left to the caller, which adds it with the position
    embedding in one pass."""

    def __init__(self, patch_size: int, width: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2D(3, width, kernel_size=patch_size, stride=patch_size)

    def forward(self, pixels: paddle.Tensor) -> paddle.Tensor:
        """pixels [B, C, S, S] -> [B, G*G, width] without the bias (G = S / patch)."""
        B, C, S, _ = pixels.shape
        P = self.patch_size
        G = S // P
        lib = cpu_kernels.for_tensors(pixels)
        if lib is not None:  # a copy of P-float runs: Paddle's 6-D transpose is ten times slower on the CPU
            patches = paddle.empty([B, G * G, C * P * P], "float32")
            lib.janus_patchify(pixels.data_ptr(), patches.data_ptr(), B, C, S, P)
        else:
            patches = pixels.reshape([B, C, G, P, G, P]).transpose([0, 2, 4, 1, 3, 5]).reshape([B, G * G, C * P * P])
        weight = self.proj.weight.reshape([self.proj.weight.shape[0], C * P * P])  # (channel, row, column) order
        return paddle.matmul(patches, weight, transpose_y=True)


class Attention(nn.Layer):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = width // heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        B, N, _ = x.shape
        qkv = linear(self.qkv, x).reshape([B, N, 3, self.heads, self.head_dim])
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, N, H, D] views
        return linear(self.proj, prompt_attention(q, k, v, starts=None, causal=False))


class Mlp(nn.Layer):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return linear(self.fc2, gelu(linear(self.fc1, x)))


class Block(nn.Layer):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, epsilon=cfg.layer_norm_eps)
        self.attn = Attention(cfg.width, cfg.heads)
        self.norm2 = nn.LayerNorm(cfg.width, epsilon=cfg.layer_norm_eps)
        self.mlp = Mlp(cfg.width, int(cfg.width * cfg.mlp_ratio))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SigLIPViT(nn.Layer):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.width)
        self.pos_embed = self.create_parameter([1, cfg.num_tokens, cfg.width], dtype=paddle.get_default_dtype())
        self.blocks = nn.LayerList([Block(cfg) for _ in range(cfg.used_layers)])
        self.norm = nn.LayerNorm(cfg.width, epsilon=cfg.layer_norm_eps)

    def forward(self, pixels: paddle.Tensor) -> paddle.Tensor:
        """pixels [B, 3, S, S] (normalised) -> features [B, num_tokens, width]."""
        x = self.patch_embed(pixels)
        B, N, C = x.shape
        position_and_bias = (self.pos_embed.reshape([N, C]) + self.patch_embed.proj.bias).reshape([N * C])
        x = add_bias_(x.reshape([B, N * C]), position_and_bias).reshape([B, N, C])
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class VisionTower(nn.Layer):
    """Holds the ViT under the attribute name the checkpoint uses (`vision_model.vision_tower`)."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.vision_tower = SigLIPViT(cfg)

    def forward(self, pixels: paddle.Tensor) -> paddle.Tensor:
        return self.vision_tower(pixels)
