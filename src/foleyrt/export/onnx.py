"""ONNX graphs of the per-step transformer call and of the VAE decoder.

What is exported, and why
-------------------------
The sampler calls the transformer once per step with the same conditions; only the latent `x`
and the timestep `t` change (`FoleyDiT.prepare` runs once, `FoleyDiT.velocity` per step). The
exported transformer graph is therefore `velocity`, with the prepared conditions as graph
inputs: the step-invariant work (text K/V of every block, visual projection, sync resampling,
RoPE tables) stays out of the loop as in eager mode, and an engine built from this graph
implements the same `(x, t) -> v` call for a `PreparedConditions` (`condition_feeds` flattens
one into the graph's inputs).

The timestep's embedding and modulation vectors are computed inside the graph from `t` (the
eager call does the same; the compiled loop's per-schedule `TimeConditioning` table would be a
further set of inputs, not worth it for an engine that reads those weights at full bandwidth).

The RoPE tables and the visual gather index are inputs, not computed in the graph: they follow
from the lengths through PyTorch's nearest-exact index arithmetic and a Python branch on
`Nv == Na`, which a graph would have to re-derive; as inputs they are exactly what `prepare`
computed. When `prepare` needs no gather (equal lengths, or the non-interleaved RoPE), the
identity index is fed: it selects the same rows.

Velocity graph (fp32; H hidden size, D head dim, K triple blocks, C latent channels = 128):

    x                         [batch, C, audio_len]             float32  latent, channels first
    t                         [batch]                            float32  timesteps, 0..1000
    visual                    [batch, visual_len, H]             float32  visual stream, block 0
    text_k, text_v            [K, batch, heads, text_len, D]     float32  per-block text K / V
    rope_self_audio_cos|sin   [audio_len, D]                     float32  triple self-attention
    rope_self_visual_cos|sin  [visual_len, D]                    float32
    rope_seq_audio_cos|sin    [audio_len, D]                     float32  cross-attn, single blocks
    rope_seq_visual_cos|sin   [visual_len, D]                    float32
    visual_gather             [visual_len]                       int64
    sync_add                  [batch, audio_len, H]              float32  (models with sync path)
    -> velocity               [batch, C, audio_len]              float32

VAE decoder: `z [batch, C, audio_len] float32 -> audio [batch, 1, hop * audio_len] float32`.

The axis names (`batch`, `audio_len`, `visual_len`, `text_len`) are the graph's dim params;
TensorRT profiles are written in them. Exporter: the torch.export-based one (the TorchScript
exporter cannot export the shape-dependent LayerNorm). The tracing example has 2 rows and
distinct lengths, so that no axis is specialised to 1 or unified with another. Weights above
`external_data_threshold` bytes (2 GB by default: protobuf cannot serialise 2 GiB) go to
`<file>.data` beside the graph.

Quantised graphs (`insert_qdq`) follow TensorRT's explicit quantisation: a Quantize/Dequantize
pair on the activation and on the weight of every GEMM named in a calibration file, nothing
else changed; onnxruntime runs them too, so the rewrite is checked here without a GPU.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from foleyrt import __version__
from foleyrt.errors import ConfigError, DependencyError
from foleyrt.models.dac_vae import DACVAE
from foleyrt.models.dit import FoleyDiT, PreparedConditions, RopeTables

MIN_OPSET = 17  # LayerNormalization
DEFAULT_OPSET = 19  # float8 Q/DQ: one exported graph serves every engine precision
FP8_MIN_OPSET = 19
EXTERNAL_DATA_THRESHOLD = 2_000_000_000
BATCH, AUDIO_LEN, VISUAL_LEN, TEXT_LEN = "batch", "audio_len", "visual_len", "text_len"
VELOCITY, DECODER = "velocity", "vae_decoder"
ROPE_TABLES = (("self_audio", AUDIO_LEN), ("self_visual", VISUAL_LEN),
               ("seq_audio", AUDIO_LEN), ("seq_visual", VISUAL_LEN))
META = "foleyrt."  # prefix of our metadata_props keys
WRAPPED = "dit"  # attribute holding the transformer in `VelocityGraph` (prefix of scope names)
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
# Signatures
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GraphInput:
    """One graph input: named axes are dynamic, integers static."""

    name: str
    dims: tuple[str | int, ...]
    dtype: str = "float32"


def velocity_signature(dit: FoleyDiT) -> tuple[GraphInput, ...]:
    """Inputs of the velocity graph, in `VelocityGraph.forward` order."""
    cfg = dit.config
    c, h, d = cfg.audio_vae_latent_dim, cfg.hidden_size, cfg.head_dim
    kv = (cfg.depth_triple_blocks, BATCH, cfg.num_heads, TEXT_LEN, d)
    inputs = [GraphInput("x", (BATCH, c, AUDIO_LEN)), GraphInput("t", (BATCH,)),
              GraphInput("visual", (BATCH, VISUAL_LEN, h)),
              GraphInput("text_k", kv), GraphInput("text_v", kv)]
    for table, length in ROPE_TABLES:
        inputs += [GraphInput(f"rope_{table}_{part}", (length, d)) for part in ("cos", "sin")]
    inputs.append(GraphInput("visual_gather", (VISUAL_LEN,), "int64"))
    if cfg.has_sync_path:
        inputs.append(GraphInput("sync_add", (BATCH, AUDIO_LEN, h)))
    return tuple(inputs)


def decoder_signature(vae: DACVAE) -> tuple[GraphInput, ...]:
    return (GraphInput("z", (BATCH, vae.latent_dim, AUDIO_LEN)),)


def condition_feeds(prepared: PreparedConditions) -> dict[str, Tensor]:
    """The velocity graph's step-invariant inputs for a request (names as in the signature):
    what an engine binds once per request."""
    rope = prepared.rope
    gather = rope.visual_gather
    if gather is None:
        gather = torch.arange(prepared.visual.shape[1], device=prepared.visual.device)
    feeds = {"visual": prepared.visual,
             "text_k": torch.stack(prepared.text_k), "text_v": torch.stack(prepared.text_v)}
    for table, _ in ROPE_TABLES:
        feeds[f"rope_{table}_cos"], feeds[f"rope_{table}_sin"] = getattr(rope, table)
    feeds["visual_gather"] = gather
    if prepared.sync_add is not None:
        feeds["sync_add"] = prepared.sync_add
    return feeds


def velocity_feeds(prepared: PreparedConditions, x: Tensor, t: Tensor) -> dict[str, Tensor]:
    """All inputs of one step."""
    return {"x": x, "t": t, **condition_feeds(prepared)}


class VelocityGraph(nn.Module):
    """`FoleyDiT.velocity` over flat tensors: the module that is exported."""

    def __init__(self, dit: FoleyDiT) -> None:
        super().__init__()
        self.dit = dit  # attribute name = WRAPPED

    def forward(
        self, x: Tensor, t: Tensor, visual: Tensor, text_k: Tensor, text_v: Tensor,
        rope_self_audio_cos: Tensor, rope_self_audio_sin: Tensor,
        rope_self_visual_cos: Tensor, rope_self_visual_sin: Tensor,
        rope_seq_audio_cos: Tensor, rope_seq_audio_sin: Tensor,
        rope_seq_visual_cos: Tensor, rope_seq_visual_sin: Tensor,
        visual_gather: Tensor, sync_add: Tensor | None = None,
    ) -> Tensor:
        rope = RopeTables(
            self_audio=(rope_self_audio_cos, rope_self_audio_sin),
            self_visual=(rope_self_visual_cos, rope_self_visual_sin),
            visual_gather=visual_gather,
            seq_audio=(rope_seq_audio_cos, rope_seq_audio_sin),
            seq_visual=(rope_seq_visual_cos, rope_seq_visual_sin),
        )
        prepared = PreparedConditions(visual, list(text_k.unbind(0)), list(text_v.unbind(0)),
                                      sync_add, rope)
        return self.dit.velocity(x, t, prepared)


class DecoderGraph(nn.Module):
    def __init__(self, vae: DACVAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, z: Tensor) -> Tensor:
        return self.vae.decode(z)


# --------------------------------------------------------------------------------------------
# Example inputs (tracing and validation)
# --------------------------------------------------------------------------------------------


def request_lengths(duration_s: float) -> tuple[int, int, int]:
    """(visual frames Nv, sync tokens Ns, latent frames Na) of a `duration_s` request, by the
    pipeline's own rules."""
    from foleyrt.media.video import audio_latent_frames
    from foleyrt.pipeline.features import text_only_lengths

    n_visual, n_sync, audio_s = text_only_lengths(duration_s)
    return n_visual, n_sync, audio_latent_frames(audio_s)


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

    n_visual, n_sync, n_audio = request_lengths(duration_s)
    prepared = dit.prepare(randn(rows, n_visual, cfg.clip_dim),
                           randn(rows, cfg.text_length, cfg.text_dim),
                           randn(rows, n_sync, cfg.sync_feat_dim), n_audio)
    x = randn(rows, cfg.audio_vae_latent_dim, n_audio)
    t = (torch.rand(rows, generator=gen) * 1000).to(param.device)
    return velocity_feeds(prepared, x, t)


def decoder_example(
    vae: DACVAE, duration_s: float, rows: int = EXAMPLE_ROWS, seed: int = 0
) -> dict[str, Tensor]:
    param = next(vae.parameters())
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(rows, vae.latent_dim, request_lengths(duration_s)[2], generator=gen)
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
    except Exception as exc:  # protobuf raises several types on foreign files
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
    """Max abs difference between onnxruntime (CPU) and each case's PyTorch output."""
    require_onnx(("onnxruntime",))
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
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


# --------------------------------------------------------------------------------------------
# Calibration file and Q/DQ rewrite (INT8 / FP8 engines)
# --------------------------------------------------------------------------------------------

AMAX_FORMAT = "foleyrt.amax"
AMAX_VERSION = "1"
SCOPES_KEY = "pkg.torch.onnx.name_scopes"  # module path the exporter records on every node


@dataclass(frozen=True)
class QuantFormat:
    """A quantised type as ONNX stores it. Weights: per output channel for INT8, per tensor
    for FP8 (the granularities TensorRT's GEMMs take)."""

    elem_type: int  # onnx.TensorProto data type
    qmax: float
    per_channel: bool
    min_opset: int


def quant_formats() -> dict[str, QuantFormat]:
    from onnx import TensorProto

    return {"int8": QuantFormat(TensorProto.INT8, 127.0, True, 13),
            "fp8": QuantFormat(TensorProto.FLOAT8E4M3FN, 448.0, False, FP8_MIN_OPSET)}


def read_amax(path: str | Path) -> dict[str, float]:
    """Activation ranges of a calibration file (format: see `foleyrt.export.tensorrt`)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), "np") as f:
            meta = f.metadata() or {}
            values = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as exc:
        raise ConfigError(f"{path}: not a readable calibration file ({exc})") from None
    if meta.get("format") != AMAX_FORMAT or meta.get("version") != AMAX_VERSION:
        raise ConfigError(f"{path}: not a foleyrt calibration file "
                          f"(metadata format={AMAX_FORMAT!r}, version={AMAX_VERSION!r} expected)")
    amax = {}
    for name, value in values.items():
        number = float(value.reshape(())) if value.size == 1 else math.nan
        if not (math.isfinite(number) and number > 0):
            raise ConfigError(f"{path}: amax of {name!r} must be one positive finite number")
        amax[name] = number
    if not amax:
        raise ConfigError(f"{path}: the calibration file holds no ranges")
    return amax


def insert_qdq(
    src: str | Path, dst: str | Path, amax: Mapping[str, float], fmt: str
) -> list[str]:
    """Write `src` with Q/DQ pairs on the input and weight of every GEMM whose module is in
    `amax` (transformer module names); returns those modules. `dst` must sit beside `src`: its
    weights keep pointing at `src`'s external data. Calibrated modules outside the graph (those
    `prepare` runs once per request) are left out; none matching at all is an error."""
    import onnx

    src, dst = Path(src), Path(dst)
    if src.parent.resolve() != dst.parent.resolve():
        raise ConfigError("the quantised graph must be written beside its source graph")
    spec = quant_formats()[fmt]
    model = onnx.load(str(src), load_external_data=False)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < spec.min_opset:
        raise ConfigError(f"{fmt} needs a graph exported with --opset {spec.min_opset} or newer "
                          f"({src} has {opset})")
    graph = model.graph
    weights = _ConstantFolder(graph, src.parent)
    nodes, matched = [], set()
    for node in graph.node:
        module = _module_of(node) if node.op_type in ("MatMul", "Gemm") else None
        w = weights.value(node.input[1]) if module in amax else None
        if w is not None:
            matched.add(module)
            trans_b = any(a.name == "transB" and a.i for a in node.attribute)
            axis = 0 if trans_b else w.ndim - 1  # the output-channel axis of B
            reduce = tuple(i for i in range(w.ndim) if i != axis)
            w_amax = np.abs(w).max(axis=reduce) if spec.per_channel else np.abs(w).max()
            for slot, tag, value, q_axis in (
                (0, "input", amax[module], None),
                (1, "weight", w_amax, axis if spec.per_channel else None),
            ):
                node.input[slot] = _quantize_dequantize(graph, nodes, node.input[slot],
                                                        f"{module}.{tag}", value, spec, q_axis)
        nodes.append(node)
    if not matched:
        raise ConfigError(f"no calibrated module matches a GEMM of {src.name} (e.g. "
                          f"{next(iter(amax))!r}): calibration and graph are of different models")
    del graph.node[:]
    graph.node.extend(nodes)
    model.metadata_props.add(key=META + "quantized", value=fmt)
    onnx.save(model, str(dst))
    return sorted(matched)


def _quantize_dequantize(graph: Any, nodes: list, tensor: str, prefix: str, amax: Any,
                         spec: QuantFormat, axis: int | None) -> str:
    """Append a Quantize/Dequantize pair for `tensor` (scale `amax / qmax`, zero point 0) to
    `nodes`, its constants to `graph`; returns the dequantised tensor's name."""
    from onnx import helper, numpy_helper

    scale = np.maximum(np.asarray(amax, np.float32), np.finfo(np.float32).tiny) / spec.qmax
    graph.initializer.extend([
        numpy_helper.from_array(scale.astype(np.float32), f"{prefix}_scale"),
        helper.make_tensor(f"{prefix}_zero_point", spec.elem_type, scale.shape, [0] * scale.size),
    ])
    params = [f"{prefix}_scale", f"{prefix}_zero_point"]
    attrs = {} if axis is None else {"axis": axis}
    nodes.append(helper.make_node("QuantizeLinear", [tensor, *params], [f"{prefix}_q"],
                                  name=f"{prefix}_quantize", **attrs))
    nodes.append(helper.make_node("DequantizeLinear", [f"{prefix}_q", *params], [f"{prefix}_dq"],
                                  name=f"{prefix}_dequantize", **attrs))
    return f"{prefix}_dq"


def _module_of(node: Any) -> str | None:
    """The transformer module a node was traced in (innermost scope), without the wrapper."""
    for prop in node.metadata_props:
        if prop.key == SCOPES_KEY:
            scopes = ast.literal_eval(prop.value)
            if len(scopes) >= 2 and scopes[-2].startswith(WRAPPED + "."):
                return scopes[-2][len(WRAPPED) + 1:]
    return None


class _ConstantFolder:
    """Values of weight tensors: initializers, possibly reshaped/transposed by the exporter
    (the temporal convs' `weight.flatten(1).T`). Anything else is not a weight."""

    def __init__(self, graph: Any, base_dir: Path) -> None:
        self.inits = {i.name: i for i in graph.initializer}
        self.producers = {o: n for n in graph.node for o in n.output}
        self.base_dir = str(base_dir)

    def value(self, name: str) -> np.ndarray | None:
        from onnx import helper, numpy_helper

        if name in self.inits:
            return numpy_helper.to_array(self.inits[name], self.base_dir)
        node = self.producers.get(name)
        if node is None:
            return None
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Constant" and "value" in attrs:
            return numpy_helper.to_array(attrs["value"])
        x = self.value(node.input[0]) if node.input else None
        if x is None:
            return None
        if node.op_type == "Transpose":
            return x.transpose(attrs.get("perm"))
        if node.op_type == "Reshape":
            shape = self.value(node.input[1])
            if shape is None:
                return None
            shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape.tolist())]
            return x.reshape(shape)
        return None
