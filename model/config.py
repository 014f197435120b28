"""Janus / Janus-Pro architecture read from a checkpoint's `config.json`.

The published `config.json` names only a few values (model names, widths of the aligners); everything else is
implied by `siglip_large_patch16_384` and `VQ-16`. Every implied value can also be stated explicitly in the
sub-config's `params`, which is how tiny test models and the demo model describe themselves. The published values
are the defaults.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(slots=True)
class VisionConfig:
    """SigLIP ViT understanding encoder (`vision_config.params`)."""

    image_size: int = 384
    patch_size: int = 16
    width: int = 1024
    layers: int = 24
    heads: int = 16
    mlp_ratio: float = 4.0
    layer_norm_eps: float = 1e-6
    select_layer: int = -1

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"vision image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.width % self.heads:
            raise ValueError(f"vision width {self.width} is not divisible by heads {self.heads}")
        if not -self.layers <= self.select_layer <= -1 and not 0 < self.select_layer <= self.layers:
            raise ValueError(f"vision select_layer {self.select_layer} is out of range for {self.layers} layers")

    @property
    def num_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def used_layers(self) -> int:
        """Blocks actually run: `select_layer=-1` means all of them (the reference truncates the rest)."""
        if self.select_layer < 0:
            return self.layers + self.select_layer + 1
        return self.select_layer


@dataclass(slots=True)
class ProjectorConfig:
    """`mlp_gelu` projector: Linear(input_dim -> n_embed), then (depth - 1) x [GELU, Linear(n_embed -> n_embed)]."""

    input_dim: int
    n_embed: int
    depth: int = 2
    projector_type: str = "mlp_gelu"

    def __post_init__(self) -> None:
        if self.projector_type != "mlp_gelu":
            raise ValueError(f"projector_type {self.projector_type!r} is not supported (only 'mlp_gelu')")
        if self.depth < 1:
            raise ValueError(f"projector depth must be >= 1, got {self.depth}")


@dataclass(slots=True)
class GenHeadConfig:
    """`vision_head`: Linear(n_embed -> image_token_embed), GELU, Linear(image_token_embed -> image_token_size)."""

    n_embed: int = 2048
    image_token_embed: int = 2048
    image_token_size: int = 16384


@dataclass(slots=True)
class VQConfig:
    """VQ-16 image tokenizer; only its decoder runs at inference (`gen_vision_config.params`)."""

    image_token_size: int = 16384  # codebook size
    n_embed: int = 8  # codebook entry dimension
    ch: int = 128
    ch_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])
    z_channels: int = 256
    num_res_blocks: int = 2  # the decoder runs num_res_blocks + 1 per level
    image_size: int = 384  # generated image side in pixels
    codebook_l2_norm: bool = True

    def __post_init__(self) -> None:
        if self.image_size % self.downsample:
            raise ValueError(f"VQ image_size {self.image_size} is not a multiple of the x{self.downsample} upsampling")
        widths = [self.ch * m for m in self.ch_mult] + [self.z_channels]
        if any(w % 32 for w in widths):
            raise ValueError(f"VQ channel widths {widths} must be multiples of 32 (GroupNorm with 32 groups)")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def grid(self) -> int:
        return self.image_size // self.downsample

    @property
    def num_tokens(self) -> int:
        return self.grid**2


@dataclass(slots=True)
class LanguageConfig:
    """The Llama backbone (`language_config`), with Llama defaults filled in where the file relies on them."""

    hidden_size: int = 2048
    intermediate_size: int = 5632
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_key_value_heads: int = 16
    vocab_size: int = 102400
    max_position_embeddings: int = 16384
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    hidden_act: str = "silu"

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("language hidden_size is not divisible by num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("language num_attention_heads is not divisible by num_key_value_heads")
        if self.hidden_act != "silu":
            raise ValueError(f"language hidden_act {self.hidden_act!r} is not supported (only 'silu')")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass(slots=True)
class JanusConfig:
    vision: VisionConfig
    aligner: ProjectorConfig
    gen_vision: VQConfig
    gen_aligner: ProjectorConfig
    gen_head: GenHeadConfig
    language: LanguageConfig
    name: str = "janus"
    random_weights: bool = False  # set by the tiny-checkpoint builder; surfaced by the service
    description: str = ""  # what the checkpoint is, when its name does not say (the trained demo); surfaced too

    def __post_init__(self) -> None:
        hidden = self.language.hidden_size
        checks = {
            "aligner_config.params.input_dim": (self.aligner.input_dim, self.vision.width),
            "aligner_config.params.n_embed": (self.aligner.n_embed, hidden),
            "gen_aligner_config.params.input_dim": (self.gen_aligner.input_dim, self.gen_vision.n_embed),
            "gen_aligner_config.params.n_embed": (self.gen_aligner.n_embed, hidden),
            "gen_head_config.params.n_embed": (self.gen_head.n_embed, hidden),
            "gen_head_config.params.image_token_size": (self.gen_head.image_token_size,
                                                        self.gen_vision.image_token_size),
        }
        for name, (found, expected) in checks.items():
            if found != expected:
                raise ValueError(f"config.json: {name} is {found}, but the architecture needs {expected}")

    @classmethod
    def from_dict(cls, raw: dict[str, Any], name: str = "janus") -> JanusConfig:
        def params(key: str) -> dict[str, Any]:
            section = raw.get(key)
            if section is None:
                raise ValueError(f"config.json has no {key!r}")
            return dict(section.get("params", {}))

        vision_params = params("vision_config")
        vision = _pick(VisionConfig, vision_params)
        language = _pick(LanguageConfig, raw.get("language_config", {}))
        gen_head = params("gen_head_config")
        return cls(
            vision=vision,
            aligner=_pick(ProjectorConfig, params("aligner_config")),
            gen_vision=_pick(VQConfig, params("gen_vision_config")),
            gen_aligner=_pick(ProjectorConfig, params("gen_aligner_config")),
            gen_head=_pick(GenHeadConfig, gen_head),
            language=language,
            name=str(raw.get("_name_or_path") or name),
            random_weights=bool(raw.get("random_weights", False)),
            description=str(raw.get("description") or ""),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> JanusConfig:
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"checkpoint config not found: {path}") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from None
        return cls.from_dict(raw, name=path.parent.name)

    def to_dict(self) -> dict[str, Any]:
        """The published `config.json` layout, with every architecture value stated explicitly."""
        lang = asdict(self.language)
        return {
            "model_type": "multi_modality",
            "architectures": ["MultiModalityCausalLM"],
            "_name_or_path": self.name,
            "random_weights": self.random_weights,
            **({"description": self.description} if self.description else {}),
            "vision_config": {"cls": "CLIPVisionTower", "model_type": "vision",
                              "params": {"model_name": "siglip_large_patch16_384", "select_feature": "same",
                                         **asdict(self.vision)}},
            "aligner_config": {"cls": "MlpProjector", "model_type": "aligner", "params": asdict(self.aligner)},
            "gen_vision_config": {"cls": "VQ-16", "model_type": "gen_vision", "params": asdict(self.gen_vision)},
            "gen_aligner_config": {"cls": "MlpProjector", "model_type": "gen_aligner",
                                   "params": asdict(self.gen_aligner)},
            "gen_head_config": {"cls": "vision_head", "model_type": "gen_head", "params": asdict(self.gen_head)},
            "language_config": {"model_type": "llama", **lang},
        }


def published_config(size: str) -> JanusConfig:
    """The published Janus-Pro-1B / Janus-Pro-7B architectures (for shape checks and benchmarks)."""
    widths = {"1B": (2048, 5632, 24, 16), "7B": (4096, 11008, 30, 32)}
    if size not in widths:
        raise ValueError(f"unknown published size {size!r}; expected one of {sorted(widths)}")
    hidden, inter, layers, heads = widths[size]
    return JanusConfig(
        vision=VisionConfig(),
        aligner=ProjectorConfig(input_dim=1024, n_embed=hidden),
        gen_vision=VQConfig(),
        gen_aligner=ProjectorConfig(input_dim=8, n_embed=hidden),
        gen_head=GenHeadConfig(n_embed=hidden, image_token_embed=hidden),
        language=LanguageConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                                num_attention_heads=heads, num_key_value_heads=heads),
        name=f"Janus-Pro-{size}",
    )


def _pick(cls: type, values: dict[str, Any]) -> Any:
    """Build a dataclass from the keys it knows; other keys (torch_dtype, model_name, ...) are informational."""
    known = {f for f in cls.__dataclass_fields__}  # type: ignore[attr-defined]
    kwargs = {k: v for k, v in values.items() if k in known and v is not None}
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ValueError(f"config.json: bad {cls.__name__} values: {err}") from None
