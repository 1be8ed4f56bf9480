"""The HunyuanVideo-Foley diffusion transformer (MMDiT), written from spec/mmdit.md.

Module names and registration order reproduce the released state dict exactly, so the official
`hunyuanvideo_foley.pth` / `hunyuanvideo_foley_xl.pth` load with identical keys.

The forward is split in two, because most of the work on the conditions does not change across
the 50 sampler steps (spec/pipeline.md §10.1): `prepare()` runs once per request (text K/V of
every block, visual and sync projections, RoPE tables, all on the device) and `velocity()` runs
per step. `forward()` composes the two with the release's call signature.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from foleyrt.config import DiTConfig
from foleyrt.models.layers import (
    ACTIVATION_LAYERS,
    HeadLayerNorm,
    HeadRMSNorm,
    Linear,
    Modulation,
    SwiGLU,
    TemporalConv,
    TorchRMSNorm,
    apply_rope,
    layer_norm,
    modulate,
    nearest_exact_index,
    rope_table,
    timestep_embedding,
)

LN_EPS = 1e-6  # triple blocks and final layer
SINGLE_LN_EPS = 1e-5  # single blocks use PyTorch's default
SYNC_TOKENS_PER_SEGMENT = 8
TIME_FREQ_DIM = 256

RopePair = tuple[Tensor, Tensor]


@dataclass
class RopeTables:
    """cos/sin tables `[N, D]` (fp32, on the device) for one set of sequence lengths."""

    self_audio: RopePair  # triple self-attention, audio tokens
    self_visual: RopePair  # triple self-attention, visual tokens (after `visual_gather`)
    visual_gather: Tensor | None  # visual token feeding each rotated visual slot (interleaved)
    seq_audio: RopePair  # positions 0..Na-1: cross-attention queries and single blocks
    seq_visual: RopePair  # positions 0..Nv-1: cross-attention visual queries


@dataclass
class TimeConditioning:
    """What the timestep alone determines: `vec [B, H]` and each triple block's modulation
    vectors `(audio [B, 1, 9H], visual [B, 1, 9H])`. The sampler's timesteps are known before
    the loop, so an accelerated loop computes these for all steps in one batched pass instead
    of re-reading the modulation weights (1.5 GB for XXL) at every step."""

    vec: Tensor
    triple: list[tuple[Tensor, Tensor]]

    def select(self, index: Tensor, rows: int) -> TimeConditioning:
        """Rows of step `index` (a 1-element tensor) of a table built over all steps."""

        def pick(x: Tensor) -> Tensor:
            return x.index_select(0, index).expand(rows, *x.shape[1:])

        return TimeConditioning(pick(self.vec), [(pick(a), pick(v)) for a, v in self.triple])


@dataclass
class PreparedConditions:
    """Everything `velocity()` needs that is fixed for one request (all batch rows)."""

    visual: Tensor  # [B, Nv, H], the visual stream entering triple block 0
    text_k: list[Tensor]  # per triple block, [B, heads, L, D], normed and rotated
    text_v: list[Tensor]  # per triple block, [B, heads, L, D]
    sync_add: Tensor | None  # [B, Na, H] fp32, sync features resampled to the audio frames
    rope: RopeTables
    # The same features before resampling, kept when there are fewer of them than audio frames
    # (24 vs 50 per second): the single blocks' per-token modulations are computed on these
    # rows and resampled after the GEMM, the same numbers for half the work.
    sync_rows: Tensor | None = None  # [B, Ns, H] fp32
    sync_index: Tensor | None = None  # [Na] long: the row of `sync_rows` of each audio frame
    # [B, L] bool, True for the text positions a row attends to: rows of requests whose texts
    # have other lengths share a forward with their texts padded to one length and the padding
    # masked out of the cross-attention (None: every position of every row, as the release).
    text_mask: Tensor | None = None

    @property
    def audio_len(self) -> int:
        return self.rope.seq_audio[0].shape[0]


def _heads(x: Tensor, heads: int) -> Tensor:
    """`[B, N, H]` -> `[B, N, heads, D]`."""
    return x.unflatten(-1, (heads, -1))


def attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None = None) -> Tensor:
    """SDPA over `[B, N, heads, D]` queries and `[B, heads, M, D]` keys/values -> `[B, N, H]`;
    `key_mask [B, M]` (bool) leaves out the keys it marks False."""
    mask = None if key_mask is None else key_mask[:, None, None, :]
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=mask)
    return out.transpose(1, 2).flatten(2)


def _qk_norm(cfg: DiTConfig, head_dim: int) -> nn.Module:
    if not cfg.qk_norm:
        return nn.Identity()
    return HeadRMSNorm(head_dim) if cfg.qk_norm_type == "rms" else HeadLayerNorm(head_dim)


class MLP(nn.Module):
    """fc1 -> activation -> fc2 (the triple blocks' feed-forward)."""

    def __init__(self, dim: int, hidden: int, act: str) -> None:
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.act = ACTIVATION_LAYERS[act]()
        self.fc2 = Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TripleBlock(nn.Module):
    """Two-stream block: joint audio-visual self-attention, cross-attention of both streams to
    the (fixed) text tokens, then per-stream MLPs, all modulated by the timestep vector."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        h, d, bias = cfg.hidden_size, cfg.head_dim, cfg.qkv_bias
        self.heads = cfg.num_heads
        # Registration order = the release's state-dict order.
        self.audio_mod = Modulation(h, 9)
        self.audio_self_attn_qkv = Linear(h, 3 * h, bias=bias)
        self.audio_self_q_norm = _qk_norm(cfg, d)
        self.audio_self_k_norm = _qk_norm(cfg, d)
        self.audio_self_proj = Linear(h, h, bias=bias)
        self.v_cond_mod = Modulation(h, 9)
        self.v_cond_attn_qkv = Linear(h, 3 * h, bias=bias)
        self.v_cond_attn_q_norm = _qk_norm(cfg, d)
        self.v_cond_attn_k_norm = _qk_norm(cfg, d)
        self.v_cond_self_proj = Linear(h, h, bias=bias)
        self.audio_cross_q = Linear(h, h, bias=bias)
        self.v_cond_cross_q = Linear(h, h, bias=bias)
        self.text_cross_kv = Linear(h, 2 * h, bias=bias)
        self.audio_cross_q_norm = _qk_norm(cfg, d)
        self.v_cond_cross_q_norm = _qk_norm(cfg, d)
        self.text_cross_k_norm = _qk_norm(cfg, d)
        self.audio_cross_proj = Linear(h, h, bias=bias)
        self.v_cond_cross_proj = Linear(h, h, bias=bias)
        self.audio_mlp = MLP(h, cfg.mlp_hidden, cfg.mlp_act_type)
        self.v_cond_mlp = MLP(h, cfg.mlp_hidden, cfg.mlp_act_type)

    def text_kv(self, ctx: Tensor, rope: RopePair) -> tuple[Tensor, Tensor]:
        """Keys (normed, rotated at 0..L-1) and values of the text tokens, `[B, heads, L, D]`.
        The text stream never changes, so this is computed once per request."""
        k, v = _heads(self.text_cross_kv(ctx), 2 * self.heads).chunk(2, dim=2)
        k = apply_rope(self.text_cross_k_norm(k), *rope)
        return k.transpose(1, 2), v.transpose(1, 2)

    def _split_qkv(
        self, qkv: Tensor, q_norm: nn.Module, k_norm: nn.Module
    ) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = qkv.unflatten(-1, (3, self.heads, -1)).unbind(2)  # (K, head, d) layout
        return q_norm(q).to(v.dtype), k_norm(k).to(v.dtype), v

    def modulations(self, vec: Tensor) -> tuple[Tensor, Tensor]:
        """Audio and visual modulation vectors `[B, 1, 9H]` of timestep embedding `vec`."""
        vec = vec[:, None]
        return self.audio_mod.linear(F.silu(vec)), self.v_cond_mod.linear(F.silu(vec))

    # A stream's three sub-layers i = 0 (self-attention), 1 (cross-attention), 2 (MLP) read
    # chunks 3i (shift), 3i + 1 (scale) and 3i + 2 (gate) of its `[B, 1, 9H]` vectors. The two
    # steps below are where `accel.fused` swaps in its kernels.

    def _norm_gemm(self, x: Tensor, mods: Tensor, i: int, layer: Linear | MLP) -> Tensor:
        """`layer(LayerNorm(x) * (1 + scale_i) + shift_i)`."""
        shift, scale = _mod_chunk(mods, 3 * i), _mod_chunk(mods, 3 * i + 1)
        return layer(modulate(layer_norm(x, LN_EPS), shift, scale))

    def _residual_norm_gemm(self, x: Tensor, update: Tensor, mods: Tensor, i: int,
                            layer: Linear | MLP) -> tuple[Tensor, Tensor]:
        """Sub-layer i - 1's gated residual `x + update * gate_(i-1)`, and `_norm_gemm` of it."""
        x = x + update * _mod_chunk(mods, 3 * i - 1)
        return x, self._norm_gemm(x, mods, i, layer)

    def forward(
        self,
        audio: Tensor,
        visual: Tensor,
        mods: tuple[Tensor, Tensor],
        text_k: Tensor,
        text_v: Tensor,
        rope: RopeTables,
        update_visual: bool = True,
        text_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """`mods` from `modulations()`; `update_visual=False` (last block) skips visual work
        whose result nobody reads; `text_mask`: see `PreparedConditions.text_mask`."""
        mod_a, mod_v = mods
        n_vis = visual.shape[1]

        # (1) joint self-attention, visual tokens first.
        qa, ka, va = self._split_qkv(
            self._norm_gemm(audio, mod_a, 0, self.audio_self_attn_qkv),
            self.audio_self_q_norm, self.audio_self_k_norm)
        qv, kv, vv = self._split_qkv(
            self._norm_gemm(visual, mod_v, 0, self.v_cond_attn_qkv),
            self.v_cond_attn_q_norm, self.v_cond_attn_k_norm)
        qa, ka = (apply_rope(x, *rope.self_audio) for x in (qa, ka))
        if rope.visual_gather is not None:
            qv, kv = qv[:, rope.visual_gather], kv[:, rope.visual_gather]
        qv, kv = (apply_rope(x, *rope.self_visual) for x in (qv, kv))
        out = attention(
            torch.cat([qv, qa], dim=1),
            torch.cat([kv, ka], dim=1).transpose(1, 2),
            torch.cat([vv, va], dim=1).transpose(1, 2),
        )
        out_v, out_a = out[:, :n_vis], out[:, n_vis:]
        audio, qa = self._residual_norm_gemm(audio, self.audio_self_proj(out_a), mod_a, 1,
                                             self.audio_cross_q)
        if not update_visual:
            return self._audio_tail(audio, qa, mod_a, text_k, text_v, rope, text_mask), visual
        visual, qv = self._residual_norm_gemm(visual, self.v_cond_self_proj(out_v), mod_v, 1,
                                              self.v_cond_cross_q)

        # (2) cross-attention of both streams to the text, visual queries first.
        qa = apply_rope(self.audio_cross_q_norm(_heads(qa, self.heads)), *rope.seq_audio)
        qv = apply_rope(self.v_cond_cross_q_norm(_heads(qv, self.heads)), *rope.seq_visual)
        out = attention(torch.cat([qv, qa], dim=1), text_k, text_v, text_mask)
        out_v, out_a = out[:, :n_vis], out[:, n_vis:]

        # (3) MLPs.
        audio, mlp_a = self._residual_norm_gemm(audio, self.audio_cross_proj(out_a), mod_a, 2,
                                                self.audio_mlp)
        visual, mlp_v = self._residual_norm_gemm(visual, self.v_cond_cross_proj(out_v), mod_v,
                                                 2, self.v_cond_mlp)
        return audio + mlp_a * _mod_chunk(mod_a, 8), visual + mlp_v * _mod_chunk(mod_v, 8)

    def _audio_tail(self, audio: Tensor, q_rows: Tensor, mod_a: Tensor, text_k: Tensor,
                    text_v: Tensor, rope: RopeTables, text_mask: Tensor | None) -> Tensor:
        """Cross-attention (from `audio_cross_q`'s output `q_rows`) and MLP of the audio stream
        alone. Attention rows are independent, so dropping the visual queries leaves the audio
        rows unchanged."""
        q = apply_rope(self.audio_cross_q_norm(_heads(q_rows, self.heads)), *rope.seq_audio)
        out = attention(q, text_k, text_v, text_mask)
        audio, mlp = self._residual_norm_gemm(audio, self.audio_cross_proj(out), mod_a, 2,
                                              self.audio_mlp)
        return audio + mlp * _mod_chunk(mod_a, 8)


def _mod_chunk(mods: Tensor, i: int) -> Tensor:
    """Chunk `i` of 9 of a triple block's `[B, 1, 9H]` modulation vectors."""
    width = mods.shape[-1] // 9
    return mods[..., i * width : (i + 1) * width]


def qkv_order(heads: int, head_dim: int, device: torch.device | None = None) -> Tensor:
    """Row permutation from the release's single-block qkv layout `(head, d, K)` to `(K, head,
    d)`: entry `K*H + head*D + d` of the result is official row `(head*D + d)*3 + K`."""
    idx = torch.arange(3 * heads * head_dim, device=device).view(heads, head_dim, 3)
    return idx.permute(2, 0, 1).flatten()


class SingleBlock(nn.Module):
    """Audio-only block: per-token modulated self-attention followed by a temporal conv, then
    a temporal SwiGLU-conv MLP.

    The release interleaves q, k and v with stride 3 in `linear_qkv`'s output; slicing that
    gives strided q/k/v, which makes the norm/RoPE kernels read uncoalesced and sends the
    attention to PyTorch's slow fp32 math path. So the rows are kept in `(K, head, d)` order
    inside the module and converted on load and save: `state_dict()` speaks the official
    layout, keys and shapes unchanged.
    """

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        h, d = cfg.hidden_size, cfg.head_dim
        self.heads = cfg.num_heads
        self.modulation = Modulation(h, 6)
        self.linear_qkv = Linear(h, 3 * h)
        self.linear1 = TemporalConv(h, h, 3, bias=True)
        self.linear2 = SwiGLU(h, cfg.swiglu_hidden, h, kernel_size=3)
        self.q_norm = TorchRMSNorm(d)
        self.k_norm = TorchRMSNorm(d)
        self._register_load_state_dict_pre_hook(self._qkv_from_official)
        self._register_state_dict_hook(SingleBlock._qkv_to_official)

    def _qkv_from_official(self, state_dict: dict, prefix: str, *args: object) -> None:
        order = qkv_order(self.heads, self.linear_qkv.out_features // (3 * self.heads))
        for name in ("weight", "bias"):
            key = f"{prefix}linear_qkv.{name}"
            if key in state_dict and state_dict[key].shape[0] == order.numel():
                state_dict[key] = state_dict[key][order.to(state_dict[key].device)]

    @staticmethod
    def _qkv_to_official(module: SingleBlock, state_dict: dict, prefix: str, *args: object) -> None:
        order = qkv_order(module.heads, module.linear_qkv.out_features // (3 * module.heads))
        inverse = torch.argsort(order)
        for name in ("weight", "bias"):
            key = f"{prefix}linear_qkv.{name}"
            if key in state_dict and state_dict[key].device.type != "meta":
                state_dict[key] = state_dict[key][inverse.to(state_dict[key].device)]

    def forward(self, x: Tensor, activated_cond: Tensor, rope: RopePair,
                cond_index: Tensor | None = None) -> Tensor:
        """`activated_cond` is `SiLU(cond)` of the per-token conditioning, which every single
        block modulates from (computed once per step): `[B, Na, H]`, `[B, 1, H]`, or `[B, Ns, H]`
        rows of which audio frame `n` takes row `cond_index[n]`. Modulations are per row, so
        they are computed on the rows and then resampled."""
        mods = self.modulation.project(activated_cond)
        if cond_index is not None:
            mods = tuple(m[:, cond_index] for m in mods)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods
        h = modulate(layer_norm(x, SINGLE_LN_EPS), shift_msa, scale_msa)
        q, k, v = self.linear_qkv(h).unflatten(-1, (3, self.heads, -1)).unbind(2)  # see class doc
        q = apply_rope(self.q_norm(q), *rope)
        k = apply_rope(self.k_norm(k), *rope)
        out = attention(q, k.transpose(1, 2), v.transpose(1, 2))
        x = x + self.linear1(out) * gate_msa
        h = modulate(layer_norm(x, SINGLE_LN_EPS), shift_mlp, scale_mlp)
        return x + self.linear2(h) * gate_mlp


class FinalLayer(nn.Module):
    """LayerNorm + Linear to latent channels. `adaLN_modulation` is loaded but, as in the
    release, only applied when the conditioning is one vector per row (without the sync path);
    with per-token conditioning the release's helper returns its input unchanged."""

    def __init__(self, hidden: int, out_channels: int) -> None:
        super().__init__()
        self.linear = Linear(hidden, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), Linear(hidden, 2 * hidden))

    def forward(self, x: Tensor, cond: Tensor, per_token: bool) -> Tensor:
        x = layer_norm(x, LN_EPS)
        if not per_token:
            shift, scale = self.adaLN_modulation(cond).chunk(2, dim=-1)
            x = modulate(x, shift, scale)
        return self.linear(x)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(Linear(TIME_FREQ_DIM, hidden), nn.SiLU(), Linear(hidden, hidden))

    def forward(self, t: Tensor) -> Tensor:
        emb = timestep_embedding(t, TIME_FREQ_DIM)
        return self.mlp(emb.to(cast(Linear, self.mlp[0]).weight.dtype))


class TextProjection(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.linear_1 = Linear(dim, hidden)
        self.act_1 = nn.SiLU()
        self.linear_2 = Linear(hidden, hidden)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(self.act_1(self.linear_1(x)))


class AudioEmbedder(nn.Module):
    """Kernel-1 Conv1d on the channels-first latent (a per-frame Linear)."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.proj = TemporalConv(channels, hidden, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x.transpose(1, 2))


class FoleyDiT(nn.Module):
    """HunyuanVideoFoley: velocity of the 128-channel, 50 Hz audio latent given text (CLAP),
    SigLIP2 and Synchformer features and a timestep on the 0..1000 scale."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.config = cfg
        h = cfg.hidden_size
        if cfg.has_sync_path:
            self.sync_pos_emb = nn.Parameter(
                torch.zeros(1, 1, SYNC_TOKENS_PER_SEGMENT, cfg.sync_feat_dim)
            )
        self.empty_clip_feat = nn.Parameter(torch.zeros(1, cfg.clip_dim))
        self.empty_sync_feat = nn.Parameter(torch.zeros(1, cfg.sync_feat_dim))
        self.audio_embedder = AudioEmbedder(cfg.audio_vae_latent_dim, h)
        self.visual_proj = SwiGLU(cfg.clip_dim, h, h)
        self.cond_in = TextProjection(cfg.text_dim, h)
        self.time_in = TimestepEmbedder(h)
        if cfg.has_sync_path:
            self.sync_in = nn.Sequential(
                Linear(cfg.sync_feat_dim, h),
                nn.SiLU(),
                SwiGLU(h, cfg.swiglu_hidden, h, kernel_size=cfg.sync_in_ksz),
            )
        self.triple_blocks = nn.ModuleList(
            TripleBlock(cfg) for _ in range(cfg.depth_triple_blocks)
        )
        self.single_blocks = nn.ModuleList(
            SingleBlock(cfg) for _ in range(cfg.depth_single_blocks)
        )
        self.final_layer = FinalLayer(h, cfg.audio_vae_latent_dim * cfg.patch_size)

    # ---- unconditional ("no video") features -------------------------------------------------

    def empty_clip(self, batch: int, length: int | None = None) -> Tensor:
        """The learnt "no video" SigLIP2 sequence, `[batch, length, clip_dim]`."""
        n = self.config.clip_length if length is None else length
        return self.empty_clip_feat[None].expand(batch, n, -1)

    def empty_sync(self, batch: int, length: int | None = None) -> Tensor:
        """The learnt "no video" Synchformer sequence, `[batch, length, sync_dim]`."""
        n = self.config.sync_length if length is None else length
        return self.empty_sync_feat[None].expand(batch, n, -1)

    # ---- per request ---------------------------------------------------------------------

    def rope_tables(self, n_audio: int, n_visual: int, device: torch.device) -> RopeTables:
        d = self.config.head_dim
        seq_audio = rope_table(torch.arange(n_audio, device=device, dtype=torch.float32), d)
        seq_visual = rope_table(torch.arange(n_visual, device=device, dtype=torch.float32), d)
        if not self.config.interleaved_audio_visual_rope:
            # Visual token j sits at "audio time" j * Na / Nv (spec/mmdit.md §7).
            scaled = torch.arange(n_visual, device=device, dtype=torch.float32) * (
                n_audio / n_visual
            )
            return RopeTables(seq_audio, rope_table(scaled, d), None, seq_audio, seq_visual)
        # Interleaved: audio i at 2i; visual j at 2a(j)+1 carrying token up(a(j)), where a and
        # up are the nearest-exact maps between the two lengths (spec/mmdit.md §4.4).
        self_audio = rope_table(
            torch.arange(0, 2 * n_audio, 2, device=device, dtype=torch.float32), d
        )
        if n_visual == n_audio:
            slot, gather = torch.arange(n_visual), None
        else:
            slot = nearest_exact_index(n_audio, n_visual)  # a(j)
            up = nearest_exact_index(n_visual, n_audio)  # up(i)
            gather = up[slot].to(device)
        self_visual = rope_table((2 * slot + 1).to(device=device, dtype=torch.float32), d)
        return RopeTables(self_audio, self_visual, gather, seq_audio, seq_visual)

    def prepare(
        self, clip_feat: Tensor, cond: Tensor, sync_feat: Tensor, audio_len: int,
        text_mask: Tensor | None = None,
    ) -> PreparedConditions:
        """Step-invariant work for conditions `[B, Nv, clip_dim]`, `[B, L, text_dim]`,
        `[B, Ns, sync_dim]` and an audio latent of `audio_len` frames (`text_mask`: see
        `PreparedConditions`)."""
        cfg = self.config
        device = clip_feat.device
        rope = self.rope_tables(audio_len, clip_feat.shape[1], device)
        ctx = self.cond_in(cond)
        text_rope = rope_table(torch.arange(ctx.shape[1], device=device, dtype=torch.float32),
                               cfg.head_dim)
        triples = cast("Iterable[TripleBlock]", self.triple_blocks)  # ModuleList is untyped
        text_k, text_v = zip(*(blk.text_kv(ctx, text_rope) for blk in triples), strict=True)
        visual = self.visual_proj(clip_feat)
        sync_add = sync_rows = sync_index = None
        if cfg.has_sync_path:
            n_sync = sync_feat.shape[1]
            if n_sync % SYNC_TOKENS_PER_SEGMENT:
                raise ValueError(f"sync_feat length {n_sync} is not a multiple of 8")
            seg = sync_feat.unflatten(1, (-1, SYNC_TOKENS_PER_SEGMENT)) + self.sync_pos_emb
            sync = self.sync_in(seg.flatten(1, 2))
            # nearest-exact resampling to the audio frames, in fp32 like the release.
            rows, index = sync.float(), nearest_exact_index(n_sync, audio_len, device)
            sync_add = rows[:, index]
            if n_sync < audio_len:
                sync_rows, sync_index = rows, index
        return PreparedConditions(visual, list(text_k), list(text_v), sync_add, rope,
                                  sync_rows, sync_index, text_mask)

    # ---- per step ----------------------------------------------------------------------------

    def time_conditioning(self, t: Tensor) -> TimeConditioning:
        """Timestep embedding and triple-block modulations for timesteps `t [N]`."""
        vec = self.time_in(t)
        triples = cast("Iterable[TripleBlock]", self.triple_blocks)  # ModuleList is untyped
        return TimeConditioning(vec, [blk.modulations(vec) for blk in triples])

    def velocity(
        self,
        x: Tensor,
        t: Tensor | None,
        prepared: PreparedConditions,
        time: TimeConditioning | None = None,
    ) -> Tensor:
        """Velocity `[B, C, Na]` of latent `x [B, C, Na]` at timesteps `t [B]` (0..1000);
        `time` may carry `time_conditioning(t)` computed ahead (then `t` is not read: None)."""
        if time is None:
            assert t is not None, "velocity needs timesteps `t` or their conditioning `time`"
            time = self.time_conditioning(t)
        vec = time.vec
        audio = self.audio_embedder(x)
        if prepared.sync_add is not None:
            audio = audio + prepared.sync_add  # makes the audio residual stream fp32
        visual = prepared.visual
        last = len(self.triple_blocks) - 1
        for i, block in enumerate(self.triple_blocks):
            audio, visual = block(
                audio, visual, time.triple[i], prepared.text_k[i], prepared.text_v[i],
                prepared.rope, update_visual=i < last, text_mask=prepared.text_mask,
            )
        # The single blocks' conditioning: per audio frame (sync path: sync features + timestep,
        # at the sync rate when it is shorter, see `PreparedConditions.sync_rows`) or one row.
        per_token = prepared.sync_add is not None
        if prepared.sync_rows is not None:
            cond = prepared.sync_rows + vec[:, None]
        elif prepared.sync_add is not None:
            cond = prepared.sync_add + vec[:, None]
        else:
            cond = vec[:, None]
        # The modulation GEMMs' input, in their compute dtype (the cast `Linear` would make).
        activated = F.silu(cond).to(self.final_layer.linear.weight.dtype)
        for block in self.single_blocks:
            audio = block(audio, activated, prepared.rope.seq_audio, prepared.sync_index)
        return self.final_layer(audio, cond, per_token).transpose(1, 2)

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        clip_feat: Tensor,
        cond: Tensor,
        sync_feat: Tensor,
        drop_visual: list[bool] | Tensor | None = None,
    ) -> Tensor:
        """The release's call: one velocity evaluation. `drop_visual` marks rows whose visual
        features are replaced by the learnt empty ones (without touching the caller's tensors)."""
        if drop_visual is not None:
            drop = torch.as_tensor(drop_visual, dtype=torch.bool, device=x.device)[:, None, None]
            clip_feat = torch.where(drop, self.empty_clip_feat.to(clip_feat.dtype), clip_feat)
            sync_feat = torch.where(drop, self.empty_sync_feat.to(sync_feat.dtype), sync_feat)
        prepared = self.prepare(clip_feat, cond, sync_feat, x.shape[-1])
        return self.velocity(x, t.expand(x.shape[0]), prepared)
