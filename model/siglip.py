"""SigLIP ViT understanding encoder (`siglip_large_patch16_384` without its attention-pool head).

Sub-layer names mirror the checkpoint keys under `vision_model.vision_tower.`.
"""

from __future__ import annotations

import paddle
from paddle import nn

from model.attention import prompt_attention
from model.config import VisionConfig


class PatchEmbed(nn.Layer):
    def __init__(self, patch_size: int, width: int) -> None:
        super().__init__()
        self.proj = nn.Conv2D(3, width, kernel_size=patch_size, stride=patch_size)

    def forward(self, pixels: paddle.Tensor) -> paddle.Tensor:
        x = self.proj(pixels)  # [B, C, G, G]
        return x.flatten(2).transpose([0, 2, 1])  # [B, G*G, C]


class Attention(nn.Layer):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = width // heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape([B, N, 3, self.heads, self.head_dim])
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, N, H, D] views
        return self.proj(prompt_attention(q, k, v, starts=None, causal=False))


class Mlp(nn.Layer):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.fc2(self.act(self.fc1(x)))


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
        x = self.patch_embed(pixels) + self.pos_embed
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
