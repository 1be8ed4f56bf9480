"""Configuration dataclasses: architecture (mirroring the released YAML), presets, runtime.

The released YAML is read only at the edges (`DiTConfig.from_official`); the rest of the code
sees frozen, validated dataclasses. Field names are the YAML's, so a config can be compared to
the release line by line. Defaults are those of the official class: they matter only for a
field that a YAML leaves out.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from foleyrt.errors import ConfigError

T = TypeVar("T")


def _from_mapping(cls: type[T], values: Mapping[str, Any], where: str) -> T:
    """Build a dataclass from a mapping, rejecting unknown keys (a typo must not build a
    different model silently)."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown {where} field(s): {', '.join(unknown)}")
    return cls(**dict(values))


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


# Frame rates and Synchformer windowing of the release's feature pipeline (pipeline.md §2-§4).
SIGLIP_FPS = 8
SYNC_FPS = 25
SYNC_WINDOW = 16  # frames per Synchformer segment
SYNC_STRIDE = 8  # segments overlap by half


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

_RELEASE_COMMON = dict(
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
        **_RELEASE_COMMON,  # type: ignore[arg-type]
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
        **_RELEASE_COMMON,  # type: ignore[arg-type]
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
        **{  # type: ignore[arg-type]
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


# --------------------------------------------------------------------------------------------
# Runtime
# --------------------------------------------------------------------------------------------

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise ConfigError(
            f"unknown dtype {name!r}; choose one of: fp32, bf16, fp16"
        ) from None


def parse_device(name: str) -> torch.device:
    """`auto` picks CUDA, then MPS, then CPU; an unavailable device is a clear error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} requested but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {name!r} requested but only {torch.cuda.device_count()} GPU(s) exist"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps' requested but MPS is not available here")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return device


ACCEL_MODES = ("eager", "compile", "tensorrt")


def check_accel_mode(mode: str) -> str:
    if mode not in ACCEL_MODES:
        raise ConfigError(
            f"unknown acceleration mode {mode!r}; choose one of {', '.join(ACCEL_MODES)}"
        )
    return mode


@dataclass(frozen=True)
class OffloadPlan:
    """`--offload`: `none`, `model` (networks in pinned host memory, brought in per stage) or
    `blocks:N` (transformer blocks streamed through N GPU slots); see `accel/offload.py`."""

    kind: str = "none"
    slots: int = 0

    @classmethod
    def parse(cls, text: str) -> OffloadPlan:
        if text in ("none", "model"):
            return cls(text)
        if text.startswith("blocks:"):
            count = text.split(":", 1)[1]
            if count.isdigit() and int(count) >= 2:
                return cls("blocks", int(count))
        raise ConfigError(f"unknown offload mode {text!r}; use none, model or blocks:N (N >= 2)")

# Transformer precisions: bf16/fp16 set the compute dtype; the others also swap the blocks'
# matmul layers for quantised ones (`foleyrt.accel.quant`).
PRECISIONS = ("bf16", "fp16", "fp8", "int8-weight", "int8")
QUANTIZED_PRECISIONS = ("fp8", "int8-weight", "int8")


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how the models run. Kept out of the model code: acceleration and precision
    recipes read it and transform the built modules.

    `dtype` is the transformer's compute dtype (the release runs it in bf16 on GPUs);
    `encoder_dtype` that of SigLIP2, CLAP, Synchformer; the VAE decodes in `vae_dtype`.
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    encoder_dtype: torch.dtype = torch.float32
    vae_dtype: torch.dtype = torch.float32
    accel: str = "eager"
    precision: str | None = None
    offload: str = "none"  # see OffloadPlan
    engine: str | None = None  # TensorRT plan for accel "tensorrt" (None: from the cache)
    calibration: str | None = None  # activation ranges: int8 needs them; fp8 scales by them

    def __post_init__(self) -> None:
        check_accel_mode(self.accel)
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ConfigError(
                f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}"
            )
        OffloadPlan.parse(self.offload)
        if self.precision == "int8" and self.calibration is None:
            raise ConfigError(
                "precision int8 needs activation statistics: run `foleyrt calibrate` and pass "
                "--calibration FILE"
            )

    @classmethod
    def auto(
        cls, device: str = "auto", dtype: str | None = None, precision: str | None = None,
        **kwargs: Any,
    ) -> RuntimeConfig:
        """Defaults users expect: bf16 on CUDA (like the release), fp32 elsewhere. A bf16 or
        fp16 `precision` is that compute dtype; quantised precisions compute in bf16 on GPUs."""
        dev = parse_device(device)
        if dtype is not None:
            dt = parse_dtype(dtype)
        elif precision in ("bf16", "fp16"):
            dt = parse_dtype(precision)
        else:
            dt = torch.bfloat16 if dev.type == "cuda" else torch.float32
        return cls(device=dev, dtype=dt, precision=precision, **kwargs)


# --------------------------------------------------------------------------------------------
# Process-wide settings
# --------------------------------------------------------------------------------------------

# Process-wide CUDA library settings, taken unless the environment already sets them. Without a
# cuBLASLt workspace, cuBLASLt picks the same tiles' "ssched" variants, which need no zeroed
# workspace: each large GEMM of a captured forward was a memset + a GEMM, two graph nodes. XXL 8 s
# at 8 clips, one machine, consecutive processes: fp8+calibrated loop 2.951 -> 2.906 s, bf16
# 4.424 -> 4.399 s; no GEMM slower per block (docs/benchmarks.md, run AL; `--accel compile`).
CUDA_LIBRARY_ENV = {"CUBLASLT_WORKSPACE_SIZE": "0"}


def configure_cuda_libraries() -> None:
    """Apply `CUDA_LIBRARY_ENV` (PyTorch reads it at the first cuBLASLt call of a process, so
    this runs first thing: the CLI's entry point and the GPU scripts call it; library users who
    want the same set the variable before their first GPU matmul)."""
    for name, value in CUDA_LIBRARY_ENV.items():
        os.environ.setdefault(name, value)
