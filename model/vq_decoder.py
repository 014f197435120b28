"""VQ-16 image decoder (LlamaGen): image tokens -> pixels. The encoder is not needed for serving.

Sub-layer names mirror the checkpoint keys under `gen_vision_model.`.

Two paths compute the same function. On the CPU in float32, when the kernels of `model.cpu_kernels` are there, the
activations stay channels-last ([B, H, W, C]) from the codebook lookup to the last convolution (`channels_last`
methods, `model.conv_ops`): each convolution is one gathered matrix product with the upsampling, bias and residual
folded in, and GroupNorm with swish is one pass. Elsewhere (GPU, half precision, kernels off) Paddle's own ops run
on [B, C, H, W] (`forward`); tests hold the two paths to each other.
"""

from __future__ import annotations

import ctypes

import paddle
import paddle.nn.functional as F
from paddle import nn

from model import conv_ops, cpu_kernels
from model.attention import prompt_attention
from model.config import VQConfig


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, epsilon=1e-6)


def _swish(x: paddle.Tensor) -> paddle.Tensor:
    return x * F.sigmoid(x)


class ResnetBlock(nn.Layer):
    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.norm1 = _norm(in_ch)
        self.conv1 = nn.Conv2D(in_ch, out_ch, 3, padding=1)
        self.norm2 = _norm(out_ch)
        self.conv2 = nn.Conv2D(out_ch, out_ch, 3, padding=1)
        self.nin_shortcut = nn.Conv2D(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(_swish(self.norm2(h)))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h

    def channels_last(self, lib: ctypes.CDLL, x: paddle.Tensor) -> paddle.Tensor:
        h = conv_ops.conv2d(lib, conv_ops.group_norm(lib, x, self.norm1, swish=True), self.conv1)
        h = conv_ops.group_norm(lib, h, self.norm2, swish=True)
        shortcut = x if self.nin_shortcut is None else conv_ops.conv2d(lib, x, self.nin_shortcut)
        return conv_ops.conv2d(lib, h, self.conv2, residual=shortcut)


class AttnBlock(nn.Layer):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.norm = _norm(ch)
        self.q = nn.Conv2D(ch, ch, 1)
        self.k = nn.Conv2D(ch, ch, 1)
        self.v = nn.Conv2D(ch, ch, 1)
        self.proj_out = nn.Conv2D(ch, ch, 1)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        h = self.norm(x)
        B, C, H, W = h.shape
        # Scaled before the product and softmaxed in float32: in float16 (a V100's dtype) the raw products over C
        # channels can pass 65504, where the reference's bf16 cannot overflow.
        q = (self.q(h) * (C**-0.5)).reshape([B, C, H * W]).transpose([0, 2, 1])  # [B, HW, C]
        k = self.k(h).reshape([B, C, H * W])  # [B, C, HW]
        v = self.v(h).reshape([B, C, H * W])  # [B, C, HW]
        weights = F.softmax(paddle.bmm(q, k).astype("float32"), axis=2).astype(v.dtype)  # [B, HW(q), HW(k)]
        out = paddle.bmm(v, weights.transpose([0, 2, 1])).reshape([B, C, H, W])
        return x + self.proj_out(out)

    def channels_last(self, lib: ctypes.CDLL, x: paddle.Tensor) -> paddle.Tensor:
        B, H, W, C = x.shape
        h = conv_ops.group_norm(lib, x, self.norm, swish=False)
        # q, k and v as one attention head of width C over the H*W positions (the kernel's scale is C**-0.5 too)
        q, k, v = (conv_ops.conv2d(lib, h, conv).reshape([B, H * W, 1, C]) for conv in (self.q, self.k, self.v))
        out = prompt_attention(q, k, v, None, causal=False).reshape([B, H, W, C])
        return conv_ops.conv2d(lib, out, self.proj_out, residual=x)


class Upsample(nn.Layer):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2D(ch, ch, 3, padding=1)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        # Interpolate in the input dtype: the reference's forced bf16 cast breaks fp16 and changes nothing else.
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))

    def channels_last(self, lib: ctypes.CDLL, x: paddle.Tensor) -> paddle.Tensor:
        return conv_ops.conv2d(lib, x, self.conv, upsample=True)


class UpLevel(nn.Layer):
    def __init__(self, res: list[ResnetBlock], attn: list[AttnBlock], upsample: Upsample | None) -> None:
        super().__init__()
        self.res = nn.LayerList(res)
        self.attn = nn.LayerList(attn)
        self.upsample = upsample

    def forward(self, h: paddle.Tensor) -> paddle.Tensor:
        for i, res in enumerate(self.res):
            h = res(h)
            if len(self.attn):
                h = self.attn[i](h)
        return self.upsample(h) if self.upsample is not None else h

    def channels_last(self, lib: ctypes.CDLL, h: paddle.Tensor) -> paddle.Tensor:
        for i, res in enumerate(self.res):
            h = res.channels_last(lib, h)
            if len(self.attn):
                h = self.attn[i].channels_last(lib, h)
        return self.upsample.channels_last(lib, h) if self.upsample is not None else h


class Decoder(nn.Layer):
    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        levels = len(cfg.ch_mult)
        block_in = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2D(cfg.z_channels, block_in, 3, padding=1)
        self.mid = nn.LayerList([ResnetBlock(block_in, block_in), AttnBlock(block_in),
                                 ResnetBlock(block_in, block_in)])
        conv_blocks = []
        # Lowest resolution first; attention only there.
        for level in reversed(range(levels)):
            block_out = cfg.ch * cfg.ch_mult[level]
            res, attn = [], []
            for _ in range(cfg.num_res_blocks + 1):
                res.append(ResnetBlock(block_in, block_out))
                block_in = block_out
                if level == levels - 1:
                    attn.append(AttnBlock(block_in))
            conv_blocks.append(UpLevel(res, attn, Upsample(block_in) if level != 0 else None))
        self.conv_blocks = nn.LayerList(conv_blocks)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2D(block_in, 3, 3, padding=1)

    def forward(self, z: paddle.Tensor) -> paddle.Tensor:
        h = self.conv_in(z)
        for layer in self.mid:
            h = layer(h)
        for level in self.conv_blocks:
            h = level(h)
        return self.conv_out(_swish(self.norm_out(h)))

    def channels_last(self, lib: ctypes.CDLL, z: paddle.Tensor) -> paddle.Tensor:
        """z [B, h, w, z_channels] -> pixels [B, H, W, 3]."""
        h = conv_ops.conv2d(lib, z, self.conv_in)
        for layer in self.mid:
            h = layer.channels_last(lib, h)
        for level in self.conv_blocks:
            h = level.channels_last(lib, h)
        return conv_ops.conv2d(lib, conv_ops.group_norm(lib, h, self.norm_out, swish=True), self.conv_out)


class Quantizer(nn.Layer):
    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        self.l2_norm = cfg.codebook_l2_norm
        self.embedding = nn.Embedding(cfg.image_token_size, cfg.n_embed)

    def lookup(self, tokens: paddle.Tensor, grid: int) -> paddle.Tensor:
        """tokens [B, grid*grid] -> latents [B, n_embed, grid, grid]."""
        return self.lookup_channels_last(tokens, grid).transpose([0, 3, 1, 2])

    def lookup_channels_last(self, tokens: paddle.Tensor, grid: int) -> paddle.Tensor:
        """tokens [B, grid*grid] -> latents [B, grid, grid, n_embed]."""
        codebook = self.embedding.weight
        if self.l2_norm:
            codebook = F.normalize(codebook, p=2, axis=-1)
        z = paddle.gather(codebook, tokens.flatten())  # [B*grid*grid, C]
        return z.reshape([tokens.shape[0], grid, grid, -1])


class VQDecoder(nn.Layer):
    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.quantize = Quantizer(cfg)
        self.post_quant_conv = nn.Conv2D(cfg.n_embed, cfg.z_channels, 1)
        self.decoder = Decoder(cfg)

    def forward(self, tokens: paddle.Tensor) -> paddle.Tensor:
        """tokens [B, num_tokens] int -> pixels [B, 3, image_size, image_size] in about [-1, 1]."""
        lib = cpu_kernels.for_tensors(*self.decoder.parameters(), self.post_quant_conv.weight)
        if lib is not None:
            z = self.quantize.lookup_channels_last(tokens, self.cfg.grid).contiguous()
            if cpu_kernels.for_tensors(z) is not None:
                pixels = self.decoder.channels_last(lib, conv_ops.conv2d(lib, z, self.post_quant_conv))
                return pixels.transpose([0, 3, 1, 2]).contiguous()
        z = self.quantize.lookup(tokens, self.cfg.grid)
        return self.decoder(self.post_quant_conv(z))
