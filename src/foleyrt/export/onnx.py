"""ONNX graphs of the per-step transformer call and of the VAE decoder: export, reading back,
validation against PyTorch.

What the graphs take and return, and why the velocity graph is the per-step call, is
`accel.engine_io`'s docstring. Exporter: the torch.export-based one (the TorchScript exporter
cannot export the shape-dependent LayerNorm). The tracing example has 2 rows and distinct
lengths, so that no axis is specialised to 1 or unified with another. Weights above
`external_data_threshold` bytes (2 GB by default: protobuf cannot serialise 2 GiB) go to
`<file>.data` beside the graph. The INT8/FP8 rewrite of an exported graph is `export.qdq`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from foleyrt.accel.engine_io import (
    AUDIO_LEN,
    BATCH,
    DECODER,
    META,
    TEXT_LEN,
    VELOCITY,
    VISUAL_LEN,
    DecoderGraph,
    GraphInput,
    VelocityGraph,
    decoder_signature,
    velocity_feeds,
    velocity_signature,
)
from foleyrt.errors import ConfigError, DependencyError
from foleyrt.lengths import SequenceLengths
from foleyrt.models.dac_vae import DACVAE
from foleyrt.models.dit import FoleyDiT
from foleyrt.version import __version__

MIN_OPSET = 17  # LayerNormalization
DEFAULT_OPSET = 19  # float8 Q/DQ: one exported graph serves every engine precision
EXTERNAL_DATA_THRESHOLD = 2_000_000_000
EXAMPLE_ROWS = 2
EXAMPLE_SECONDS = 2.0
VALIDATION_SECONDS = (1.0, 3.0)  # two lengths other than the example: the axes are dynamic


EXPORT_PACKAGES = ("onnx", "onnxruntime", "onnxscript")


def require_onnx(packages: Sequence[str] = EXPORT_PACKAGES) -> None:
    """One-line error when a package of the `export` extra is missing (reading a graph, as the
    TensorRT build does, needs only `onnx`)."""
    for name in packages:
        try:
            __import__(name)
        except ImportError:
            raise DependencyError(
                f"ONNX export needs the '{name}' package: pip install 'foleyrt[export]'"
            ) from None


# --------------------------------------------------------------------------------------------
# Example inputs (tracing and validation)
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def velocity_example(
    dit: FoleyDiT, duration_s: float, rows: int = EXAMPLE_ROWS, seed: int = 0
) -> dict[str, Tensor]:
    """Velocity-graph inputs from random conditions of a `duration_s` request."""
    cfg = dit.config
    param = next(dit.parameters())
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> Tensor:
        return torch.randn(shape, generator=gen).to(param.device, param.dtype)

    lengths = SequenceLengths.of_duration(duration_s)
    prepared = dit.prepare(randn(rows, lengths.clip_frames, cfg.clip_dim),
                           randn(rows, cfg.text_length, cfg.text_dim),
                           randn(rows, lengths.sync_tokens, cfg.sync_feat_dim),
                           lengths.latent_frames)
    x = randn(rows, cfg.audio_vae_latent_dim, lengths.latent_frames)
    t = (torch.rand(rows, generator=gen) * 1000).to(param.device)
    return velocity_feeds(prepared, x, t)


def decoder_example(
    vae: DACVAE, duration_s: float, rows: int = EXAMPLE_ROWS, seed: int = 0
) -> dict[str, Tensor]:
    param = next(vae.parameters())
    gen = torch.Generator().manual_seed(seed)
    n_latent = SequenceLengths.of_duration(duration_s).latent_frames
    z = torch.randn(rows, vae.latent_dim, n_latent, generator=gen)
    return {"z": z.to(param.device, param.dtype)}


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportConfig:
    opset: int = DEFAULT_OPSET
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD  # weight bytes above: `<file>.data`
    example_seconds: float = EXAMPLE_SECONDS  # length of the tracing example (any valid one)

    def __post_init__(self) -> None:
        if self.opset < MIN_OPSET:
            raise ConfigError(f"ONNX opset {self.opset} is too old; use {MIN_OPSET} or newer")
        import onnx

        newest = onnx.defs.onnx_opset_version()
        if self.opset > newest:
            raise ConfigError(f"ONNX opset {self.opset} is newer than onnx "
                              f"{onnx.__version__} knows; use {MIN_OPSET} to {newest}")


def weights_sha256(module: nn.Module) -> str:
    """sha256 over the state dict (names, dtypes, shapes, bytes): identifies the weights an
    exported graph carries, whichever file or random seed they came from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def export_velocity(
    dit: FoleyDiT, path: str | Path, config: ExportConfig = ExportConfig(), source: str = ""
) -> Path:
    """Write the velocity graph of `dit` to `path`; `source` names the weights."""
    return _export(VelocityGraph(dit), velocity_example(dit, config.example_seconds),
                   velocity_signature(dit), "velocity", path,
                   _metadata(VELOCITY, dit, dit.config, source), config)


def export_decoder(
    vae: DACVAE, path: str | Path, config: ExportConfig = ExportConfig(), source: str = ""
) -> Path:
    """Write the VAE decoder (weight norm folded in place first: outputs are unchanged)."""
    vae.fold_weight_norm()
    return _export(DecoderGraph(vae), decoder_example(vae, config.example_seconds),
                   decoder_signature(vae), "audio", path,
                   _metadata(DECODER, vae, vae.config, source), config)


def _metadata(kind: str, module: nn.Module, config: Any, source: str) -> dict[str, str]:
    """What `read_graph` and the engine sidecar read back (`config`: the model's dataclass)."""
    return {"graph": kind, "config": json.dumps(dataclasses.asdict(config)),
            "weights_sha256": weights_sha256(module), "source": source, "version": __version__}


def _export(
    module: nn.Module,
    example: dict[str, Tensor],
    signature: Sequence[GraphInput],
    output: str,
    path: str | Path,
    meta: Mapping[str, str],
    config: ExportConfig,
) -> Path:
    require_onnx()
    from onnxscript import ir

    if any(p.dtype != torch.float32 for p in module.parameters()):
        raise ConfigError("export in float32: engines choose their precision when built")
    path = Path(path)
    axes = {name: torch.export.Dim(name, min=1) for name in (BATCH, AUDIO_LEN, VISUAL_LEN,
                                                             TEXT_LEN)}
    dynamic_shapes = {inp.name: {i: axes[d] for i, d in enumerate(inp.dims) if isinstance(d, str)}
                      for inp in signature}
    with warnings.catch_warnings():
        # Every input naming the same axis object makes the exporter say so once per input.
        warnings.filterwarnings("ignore", message=".*shares the same shape constraints")
        warnings.filterwarnings("ignore", message=".*LeafSpec", category=FutureWarning)
        program = torch.onnx.export(
            module.eval(), (), kwargs=example, dynamic_shapes=dynamic_shapes, dynamo=True,
            opset_version=config.opset, output_names=[output], verbose=False,
        )
    assert program is not None  # None only from the legacy (dynamo=False) exporter
    model = program.model
    model.metadata_props.update({META + k: v for k, v in meta.items()})
    weight_bytes = sum(v.const_value.nbytes for v in model.graph.initializers.values()
                       if v.const_value is not None)
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)  # a stale one from an earlier, larger export
    path.parent.mkdir(parents=True, exist_ok=True)
    if weight_bytes > config.external_data_threshold:
        ir.save(model, path, external_data=data.name)
    else:
        ir.save(model, path)
    return path


# --------------------------------------------------------------------------------------------
# Reading and validating exported graphs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GraphInfo:
    """What an exported file declares about itself (read without loading the weights)."""

    path: Path
    kind: str  # VELOCITY or DECODER
    opset: int
    inputs: tuple[GraphInput, ...]
    metadata: dict[str, str]

    @property
    def config(self) -> dict:
        return json.loads(self.metadata.get("config", "{}"))

    @property
    def files(self) -> list[Path]:
        """The graph and every external data file it references."""
        import onnx

        model = onnx.load(str(self.path), load_external_data=False)
        locations = {entry.value for init in model.graph.initializer
                     for entry in init.external_data if entry.key == "location"}
        return [self.path, *(self.path.parent / loc for loc in sorted(locations))]


def read_graph(path: str | Path) -> GraphInfo:
    require_onnx(("onnx",))
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"ONNX file not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types on foreign files
        raise ConfigError(f"{path}: not a readable ONNX file ({exc})") from None
    meta = {p.key[len(META):]: p.value for p in model.metadata_props if p.key.startswith(META)}
    if meta.get("graph") not in (VELOCITY, DECODER):
        raise ConfigError(f"{path}: not a graph written by 'foleyrt export onnx'")
    inputs = tuple(
        GraphInput(i.name,
                   tuple(d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim),
                   onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type).name)
        for i in model.graph.input
    )
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    return GraphInfo(path, meta["graph"], opset, inputs, meta)


def validate(
    path: str | Path, cases: Sequence[tuple[Mapping[str, Tensor], Tensor]]
) -> list[float]:
    """Max abs difference between onnxruntime (CPU) and each case's PyTorch output. Int8
    GEMMs run in 16-bit precision: on x86 CPUs without VNNI (AVX2, AVX-512F) onnxruntime's
    fast int8 path saturates its 16-bit sums, which would make a sound Q/DQ graph look
    wrong on some machines and not others."""
    require_onnx(("onnxruntime",))
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.x64quantprecision", "1")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    errors = []
    for feeds, reference in cases:
        out = session.run(None, {k: v.detach().cpu().numpy() for k, v in feeds.items()})[0]
        errors.append(float(np.abs(out - reference.detach().cpu().float().numpy()).max()))
    return errors


@torch.no_grad()
def velocity_cases(
    dit: FoleyDiT, durations: Sequence[float], rows: int = 1
) -> list[tuple[dict[str, Tensor], Tensor]]:
    """(inputs, eager velocity) per duration, for `validate`."""
    graph = VelocityGraph(dit)
    return [(f, graph(**f)) for f in (velocity_example(dit, d, rows, seed=i + 1)
                                      for i, d in enumerate(durations))]


@torch.no_grad()
def decoder_cases(
    vae: DACVAE, durations: Sequence[float], rows: int = 1
) -> list[tuple[dict[str, Tensor], Tensor]]:
    return [(f, vae.decode(f["z"])) for f in (decoder_example(vae, d, rows, seed=i + 1)
                                              for i, d in enumerate(durations))]
