"""Configuration dataclasses: architecture (mirroring the released YAML) and presets.

The released YAML is read only at the edges (`DiTConfig.from_official`); the rest of the code
sees frozen, validated dataclasses. Field names are the YAML's, so a config can be compared to
the release line by line. Defaults are those of the official class: they matter only for a
field that a YAML leaves out. How the models run (device, precision, acceleration) is
`foleyrt.accel.runtime`'s.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from foleyrt.errors import ConfigError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


def _from_mapping(cls: type[T], values: Mapping[str, Any], where: str) -> T:
    """Build a dataclass from a mapping, rejecting unknown keys (a typo must not build a
    different model silently)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown {where} field(s): {', '.join(unknown)}")
    return cls(**dict(values))


def config_digest(config: Any) -> str:
    """sha256 of a configuration, a dataclass or its dict form (as exported graphs store it):
    what calibration files and engines record to refuse a model they were not made for."""
    values = (dataclasses.asdict(config)
              if dataclasses.is_dataclass(config) and not isinstance(config, type) else config)
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# Diffusion transformer
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiTConfig:
    """`model_config.model_kwargs` of the released YAML (see spec/mmdit.md §1)."""

    depth_triple_blocks: int = 19
    depth_single_blocks: int = 38
    hidden_size: int = 3072
    num_heads: int = 24
    mlp_ratio: float = 4.0
    mlp_act_type: str = "gelu_tanh"
    qkv_bias: bool = True
    qk_norm: bool = True
    qk_norm_type: str = "rms"
    attn_mode: str = "torch"
    interleaved_audio_visual_rope: bool = False
    sync_modulation: bool = False
    add_sync_feat_to_audio: bool = False
    sync_feat_dim: int = 768
    sync_in_ksz: int = 1
    condition_projection: str = "linear"
    condition_dim: int | None = None
    use_attention_mask: bool = False
    clip_dim: int = 768
    audio_vae_latent_dim: int = 128
    patch_size: int = 1
    rope_dim_list: tuple[int, ...] | None = None
    clip_length: int = 64
    sync_length: int = 192
    # Read by the sampler / feature pipeline, not by the network.
    audio_frame_rate: int = 50
    text_length: int = 77
    # Carried by the YAML; no effect on the inference network (spec/mmdit.md §1).
    rope_theta: int = 10000
    reverse: bool = False
    embedder_type: str = "default"
    enable_learnable_empty_visual_feat: bool = True
    cross_attention: bool = True
    depth_triple_ssl_encoder: int | None = None
    depth_single_ssl_encoder: int | None = None
    use_repa_with_audiossl: bool = False

    def __post_init__(self) -> None:
        if self.rope_dim_list is not None and not isinstance(self.rope_dim_list, tuple):
            object.__setattr__(self, "rope_dim_list", tuple(self.rope_dim_list))
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        if self.head_dim % 2:
            raise ConfigError(f"head dim {self.head_dim} must be even for RoPE")
        if self.attn_mode != "torch":
            raise ConfigError(f"attn_mode {self.attn_mode!r} is not supported (only 'torch')")
        if self.condition_projection != "linear":
            raise ConfigError(
                f"condition_projection {self.condition_projection!r} is not supported"
            )
        if self.sync_modulation:
            # The official path is inconsistent (spec/mmdit.md §7): refuse rather than guess.
            raise ConfigError("sync_modulation=True is broken in the release and not supported")
        if self.use_attention_mask:
            raise ConfigError("use_attention_mask=True is a dead path in the release")
        if self.qk_norm_type not in ("rms", "layer"):
            raise ConfigError(f"qk_norm_type {self.qk_norm_type!r} is not 'rms' or 'layer'")
        if self.sync_in_ksz not in (1, 3):
            raise ConfigError(f"sync_in_ksz must be 1 or 3, not {self.sync_in_ksz}")
        if self.mlp_act_type not in ACTIVATIONS:
            raise ConfigError(f"mlp_act_type {self.mlp_act_type!r} is not one of {ACTIVATIONS}")
        if self.rope_dim_list is not None and tuple(self.rope_dim_list) != (self.head_dim,):
            raise ConfigError(
                f"rope_dim_list {self.rope_dim_list} unsupported: the 1-D model uses one axis "
                f"covering the head dim ({self.head_dim})"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def text_dim(self) -> int:
        return self.condition_dim if self.condition_dim is not None else self.hidden_size

    @property
    def mlp_hidden(self) -> int:
        """Width of the triple-block GELU MLPs."""
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def swiglu_hidden(self) -> int:
        """Width of the SwiGLU-conv layers (sync projector and single-block MLP)."""
        return swiglu_width(int(self.hidden_size * self.mlp_ratio))

    @property
    def has_sync_path(self) -> bool:
        return self.add_sync_feat_to_audio or self.sync_modulation

    @classmethod
    def from_official(cls, model_kwargs: Mapping[str, Any]) -> DiTConfig:
        return _from_mapping(cls, model_kwargs, "DiT model_kwargs")


ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")


def swiglu_width(hidden: int) -> int:
    """`256 * ceil(int(2h/3) / 256)`: the SwiGLU hidden width rule of the release."""
    return 256 * math.ceil(int(2 * hidden / 3) / 256)


@dataclass(frozen=True)
class DiffusionConfig:
    """`diffusion_config` of the released YAML (spec/pipeline.md §6.1)."""

    denoise_type: str = "flow"
    flow_path_type: str = "linear"
    flow_predict_type: str = "velocity"
    flow_reverse: bool = True
    flow_solver: str = "euler"
    sample_flow_shift: float = 1.0
    sample_use_flux_shift: bool = False
    flux_base_shift: float = 0.5
    flux_max_shift: float = 1.15

    def __post_init__(self) -> None:
        if (self.denoise_type, self.flow_path_type, self.flow_predict_type) != (
            "flow",
            "linear",
            "velocity",
        ):
            raise ConfigError("only linear flow matching with velocity prediction is supported")
        if self.flow_solver != "euler":
            # Higher-order solvers need model calls the release loop never makes (§6.1).
            raise ConfigError(f"flow_solver {self.flow_solver!r} unsupported (only 'euler')")

    @classmethod
    def from_official(cls, values: Mapping[str, Any]) -> DiffusionConfig:
        return _from_mapping(cls, values, "diffusion_config")


# --------------------------------------------------------------------------------------------
# Audio VAE and Synchformer
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DACConfig:
    """Constructor kwargs of the DAC-VAE (names are the checkpoint metadata keys)."""

    encoder_dim: int = 64
    encoder_rates: tuple[int, ...] = (2, 4, 8, 8)
    latent_dim: int | None = None
    decoder_dim: int = 1536
    decoder_rates: tuple[int, ...] = (8, 8, 4, 2)
    sample_rate: int = 44100
    continuous: bool = False
    # Discrete-codec settings: stored in the checkpoint metadata, unused by the VAE.
    n_codebooks: int = 9
    codebook_size: int = 1024
    codebook_dim: int | tuple[int, ...] = 8
    quantizer_dropout: bool | float = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "encoder_rates", tuple(self.encoder_rates))
        object.__setattr__(self, "decoder_rates", tuple(self.decoder_rates))
        if self.latent_dim is None:
            object.__setattr__(
                self, "latent_dim", self.encoder_dim * 2 ** len(self.encoder_rates)
            )
        if not self.continuous:
            raise ConfigError("only the continuous (VAE) DAC variant is supported")
        if math.prod(self.encoder_rates) != math.prod(self.decoder_rates):
            raise ConfigError("DAC encoder and decoder rates must have the same product")

    @property
    def hop_length(self) -> int:
        return math.prod(self.encoder_rates)

    @property
    def latent_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> DACConfig:
        """Official `BaseModel.load` semantics: names the constructor does not take are
        dropped (stale metadata must not stop a load)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in kwargs.items() if k in names})


@dataclass(frozen=True)
class SynchformerConfig:
    """The MotionFormer visual branch (`divided_224_16x4.yaml` fields that shape it)."""

    embed_dim: int = 768
    num_heads: int = 12
    depth: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    img_size: int = 224
    patch_size: int = 16
    patch_size_temp: int = 2
    temporal_resolution: int = 8
    in_channels: int = 3

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ConfigError("Synchformer embed_dim must be divisible by num_heads")

    @property
    def frames_per_segment(self) -> int:
        return self.patch_size_temp * self.temporal_resolution

    @classmethod
    def from_official_overrides(cls, vit: Mapping[str, Any]) -> SynchformerConfig:
        """Apply `VIT.*` overrides of the YAML (as the fixture manifest lists them)."""
        mapping = {
            "EMBED_DIM": "embed_dim",
            "NUM_HEADS": "num_heads",
            "DEPTH": "depth",
            "MLP_RATIO": "mlp_ratio",
            "QKV_BIAS": "qkv_bias",
            "PATCH_SIZE": "patch_size",
            "PATCH_SIZE_TEMP": "patch_size_temp",
            "TEMPORAL_RESOLUTION": "temporal_resolution",
            "CHANNELS": "in_channels",
        }
        unknown = sorted(set(vit) - set(mapping))
        if unknown:
            raise ConfigError(f"unknown Synchformer VIT override(s): {', '.join(unknown)}")
        return cls(**{mapping[k]: v for k, v in vit.items()})


# --------------------------------------------------------------------------------------------
# Released models (presets) and the tiny random one
# --------------------------------------------------------------------------------------------

_RELEASE_COMMON: dict[str, Any] = dict(
    mlp_ratio=4,
    mlp_act_type="gelu_tanh",
    qkv_bias=True,
    qk_norm=True,
    qk_norm_type="rms",
    attn_mode="torch",
    interleaved_audio_visual_rope=True,
    sync_modulation=False,
    add_sync_feat_to_audio=True,
    sync_feat_dim=768,
    condition_projection="linear",
    condition_dim=768,
    use_attention_mask=False,
    clip_dim=768,
    audio_vae_latent_dim=128,
    audio_frame_rate=50,
    patch_size=1,
    rope_dim_list=None,
    rope_theta=10000,
    text_length=77,
    clip_length=64,
    sync_length=192,
    depth_triple_ssl_encoder=None,
    depth_single_ssl_encoder=8,
    use_repa_with_audiossl=True,
)

RELEASED_DAC = DACConfig(
    encoder_dim=128,
    encoder_rates=(2, 3, 4, 5, 8),
    latent_dim=128,
    decoder_dim=2048,
    decoder_rates=(8, 5, 4, 3, 2),
    sample_rate=48000,
    continuous=True,
)

HUB_REPO = "tencent/HunyuanVideo-Foley"
SIGLIP2_REPO = "google/siglip2-base-patch16-512"
CLAP_REPO = "laion/larger_clap_general"


def fetch_command(repo: str, filenames: Sequence[str] = (),
                  directory: Path | str | None = None) -> str:
    """The pinned huggingface_hub's command (`hf`; `huggingface-cli` is gone) for `filenames`
    of `repo` (none: the whole repository)."""
    target = "" if directory is None else f" --local-dir {directory}"
    return f"`{' '.join(['hf', 'download', repo, *filenames])}{target}`"


@dataclass(frozen=True)
class ModelSpec:
    """Everything that names one model variant: architectures, files and encoder repos."""

    name: str
    dit: DiTConfig
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    dac: DACConfig = RELEASED_DAC
    synchformer: SynchformerConfig = field(default_factory=SynchformerConfig)
    dit_file: str = "hunyuanvideo_foley.pth"
    vae_file: str = "vae_128d_48k.pth"
    synchformer_file: str = "synchformer_state_dict.pth"
    siglip_repo: str = SIGLIP2_REPO
    clap_repo: str = CLAP_REPO
    random_only: bool = False  # exists only with random weights (the tiny smoke model)

    @property
    def sample_rate(self) -> int:
        return self.dac.sample_rate


XXL = ModelSpec(
    name="xxl",
    dit=DiTConfig(
        depth_triple_blocks=18,
        depth_single_blocks=36,
        hidden_size=1536,
        num_heads=12,
        **_RELEASE_COMMON,
    ),
    dit_file="hunyuanvideo_foley.pth",
)

XL = ModelSpec(
    name="xl",
    dit=DiTConfig(
        depth_triple_blocks=12,
        depth_single_blocks=24,
        hidden_size=1408,
        num_heads=11,
        **_RELEASE_COMMON,
    ),
    dit_file="hunyuanvideo_foley_xl.pth",
)

# Every component shrunk so the whole pipeline runs anywhere in seconds; encoder widths are
# chosen so the pieces connect (the released ones are all 768 wide). Never passed off as the
# real model: outputs made with it are labelled as random.
TINY_ENCODER_WIDTH = 32
TINY = ModelSpec(
    name="tiny",
    dit=DiTConfig(
        depth_triple_blocks=2,
        depth_single_blocks=2,
        hidden_size=64,
        num_heads=2,
        **{
            **_RELEASE_COMMON,
            "sync_feat_dim": TINY_ENCODER_WIDTH,
            "condition_dim": TINY_ENCODER_WIDTH,
            "clip_dim": TINY_ENCODER_WIDTH,
        },
    ),
    dac=DACConfig(
        encoder_dim=4,
        encoder_rates=(2, 3, 4, 5, 8),
        latent_dim=128,
        decoder_dim=64,
        decoder_rates=(8, 5, 4, 3, 2),
        sample_rate=48000,
        continuous=True,
    ),
    synchformer=SynchformerConfig(embed_dim=TINY_ENCODER_WIDTH, num_heads=2, depth=2),
    random_only=True,
)

PRESETS: dict[str, ModelSpec] = {"xxl": XXL, "xl": XL, "tiny": TINY}
TINY_RANDOM = "tiny-random"
# `--model random`: the `--size` model with random weights, filled on the device (benchmarks on
# machines without the released weights; outputs are labelled as noise).
RANDOM = "random"
