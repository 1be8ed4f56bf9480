"""The exported graphs' interface: axis names, graph kinds, metadata keys, inputs and the
wrapper modules that are traced. The exporter (`export.onnx`), the Q/DQ rewrite
(`export.qdq`), the engine builder (`export.tensorrt`) and the engine denoiser
(`accel.tensorrt`) all speak it; it needs neither onnx nor TensorRT.

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
    rope_self_audio_cos|ssin  [audio_len, D]                     float32  triple self-attention
    rope_self_visual_cos|ssin [visual_len, D]                    float32
    rope_seq_audio_cos|ssin   [audio_len, D]                     float32  cross-attn, single blocks
    rope_seq_visual_cos|ssin  [visual_len, D]                    float32
    visual_gather             [visual_len]                       int64
    sync_add                  [batch, audio_len, H]              float32  (models with sync path)
    -> velocity               [batch, C, audio_len]              float32

`cos|ssin` are `rope_table`'s cos and signed-sin tables (the rotation's sign folded into sin;
a graph exported before that change named its inputs `..._sin`, so it cannot be fed these).

VAE decoder: `z [batch, C, audio_len] float32 -> audio [batch, 1, hop * audio_len] float32`.

The axis names (`batch`, `audio_len`, `visual_len`, `text_len`) are the graph's dim params;
TensorRT profiles are written in them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from foleyrt.models.dac_vae import DACVAE
from foleyrt.models.dit import FoleyDiT, PreparedConditions, RopeTables

BATCH, AUDIO_LEN, VISUAL_LEN, TEXT_LEN = "batch", "audio_len", "visual_len", "text_len"
VELOCITY, DECODER = "velocity", "vae_decoder"
ROPE_TABLES = (("self_audio", AUDIO_LEN), ("self_visual", VISUAL_LEN),
               ("seq_audio", AUDIO_LEN), ("seq_visual", VISUAL_LEN))
META = "foleyrt."  # prefix of our metadata_props keys
WRAPPED = "dit"  # attribute holding the transformer in `VelocityGraph` (prefix of scope names)


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
        inputs += [GraphInput(f"rope_{table}_{part}", (length, d)) for part in ("cos", "ssin")]
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
        feeds[f"rope_{table}_cos"], feeds[f"rope_{table}_ssin"] = getattr(rope, table)
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
        rope_self_audio_cos: Tensor, rope_self_audio_ssin: Tensor,
        rope_self_visual_cos: Tensor, rope_self_visual_ssin: Tensor,
        rope_seq_audio_cos: Tensor, rope_seq_audio_ssin: Tensor,
        rope_seq_visual_cos: Tensor, rope_seq_visual_ssin: Tensor,
        visual_gather: Tensor, sync_add: Tensor | None = None,
    ) -> Tensor:
        rope = RopeTables(
            self_audio=(rope_self_audio_cos, rope_self_audio_ssin),
            self_visual=(rope_self_visual_cos, rope_self_visual_ssin),
            visual_gather=visual_gather,
            seq_audio=(rope_seq_audio_cos, rope_seq_audio_ssin),
            seq_visual=(rope_seq_visual_cos, rope_seq_visual_ssin),
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
