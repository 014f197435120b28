"""The small MLPs around the backbone: understanding/generation aligners and the image-token head."""

from __future__ import annotations

import paddle
from paddle import nn

from model.config import GenHeadConfig, ProjectorConfig
from model.layer_ops import gelu, linear


class MlpProjector(nn.Layer):
    """`mlp_gelu`: Linear, then (depth - 1) x [GELU, Linear]; indices match the checkpoint (`layers.0`, `layers.2`)."""

    def __init__(self, cfg: ProjectorConfig) -> None:
        super().__init__()
        layers: list[nn.Layer] = [nn.Linear(cfg.input_dim, cfg.n_embed)]
        for _ in range(1, cfg.depth):
            layers += [nn.GELU(), nn.Linear(cfg.n_embed, cfg.n_embed)]  # (forward applies `gelu` for nn.GELU)
        self.layers = nn.Sequential(*layers)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        for layer in self.layers:
            x = linear(layer, x) if isinstance(layer, nn.Linear) else gelu(x)
        return x


class GenHead(nn.Layer):
    """`vision_head`: hidden state -> image-token logits."""

    def __init__(self, cfg: GenHeadConfig) -> None:
        super().__init__()
        self.output_mlp_projector = nn.Linear(cfg.n_embed, cfg.image_token_embed)  # then GELU
        self.vision_head = nn.Linear(cfg.image_token_embed, cfg.image_token_size)

    def forward(self, hidden: paddle.Tensor) -> paddle.Tensor:
        return linear(self.vision_head, gelu(linear(self.output_mlp_projector, hidden)))
