"""Synchformer's visual branch (MotionFormer), which turns 25-fps video into "sync" tokens
(spec/synchformer.md).

Only `vfeat_extractor` ever runs: 16-frame segments -> one token per 2-frame tubelet step.
The released checkpoint also holds an audio branch, two projections and an A/V offset
classifier; `FullSynchformer` reproduces that whole key tree (built on `meta`) so the released
file can be checked key by key, while `load_synchformer` builds the visual branch only and
reports those extra keys as ignored.

Precision is the caller's concern: every op runs in the dtype of its inputs/weights (the
release wraps the call in CUDA fp16 autocast, spec §7; fp32 reproduces the fixtures).
Attention is batched over all (segment, group) pairs with SDPA, so 46 segments of 1569
tokens are a handful of kernel launches per block, not Python loops.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from foleyrt.config import SynchformerConfig
from foleyrt.errors import InputError
from foleyrt.lengths import SYNC_FPS, SYNC_STRIDE, SYNC_WINDOW

LN_EPS = 1e-6
# Parts of the released file that the Foley pipeline never runs (spec §2, §8).
UNUSED_PREFIXES = ("afeat_extractor.", "transformer.", "vproj.", "aproj.")


def _layer_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=LN_EPS)


def _heads_first(t: Tensor) -> Tensor:
    """`(B, L, h, dh)` -> `(B, h, L, dh)`, SDPA's layout (a view: the head dim stays
    contiguous, which the fused kernels need)."""
    return t.transpose(1, 2)


# --------------------------------------------------------------------------------------------
# Divided space-time attention
# --------------------------------------------------------------------------------------------


class DividedAttention(nn.Module):
    """One attention of a divided block (time or space; keys `qkv`, `proj`).

    The CLS query sees every token of its segment; a patch query sees only its group (the 8
    steps at one position for time, the 196 positions of one step for space) with the CLS
    key/value prepended (spec §5.4). Groups are folded into SDPA's batch axis.
    """

    def __init__(self, dim: int, heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, steps: int, over_time: bool) -> Tensor:
        """`x` is `(N, 1 + steps * P, D)`, CLS first, patches step-major."""
        n, length, dim = x.shape
        qkv = self.qkv(x).unflatten(-1, (3, self.heads, dim // self.heads))  # (N, L, 3, h, dh)
        cls_out = F.scaled_dot_product_attention(
            _heads_first(qkv[:, :1, 0]), _heads_first(qkv[:, :, 1]), _heads_first(qkv[:, :, 2])
        )  # (N, h, 1, dh)

        patches = qkv[:, 1:].unflatten(1, (steps, -1))  # (N, F, P, 3, h, dh)
        if over_time:
            patches = patches.transpose(1, 2)  # (N, P, F, 3, h, dh): one group per position
        groups = patches.shape[1]
        patches = patches.flatten(0, 1)  # (N*G, Lg, 3, h, dh)
        cls_kv = qkv[:, None, :1, 1:].expand(-1, groups, -1, -1, -1, -1).flatten(0, 1)
        kv = torch.cat([cls_kv, patches[:, :, 1:]], dim=1)  # (N*G, 1 + Lg, 2, h, dh)
        out = F.scaled_dot_product_attention(
            _heads_first(patches[:, :, 0]), _heads_first(kv[:, :, 0]), _heads_first(kv[:, :, 1])
        )  # (N*G, h, Lg, dh)

        out = out.transpose(1, 2).unflatten(0, (n, groups))  # (N, G, Lg, h, dh)
        if over_time:
            out = out.transpose(1, 2)
        out = torch.cat(
            [cls_out.transpose(1, 2).reshape(n, 1, dim), out.reshape(n, length - 1, dim)], dim=1
        )
        return self.proj(out)


class Mlp(nn.Module):
    """`fc2(GELU(fc1(x)))` with the exact (erf) GELU."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class DividedBlock(nn.Module):
    """Time attention, then space attention, then MLP, each pre-norm and residual.

    Registration order (norm1, attn, timeattn, norm2, mlp, norm3) is the checkpoint's key
    order; it differs from the order of use, where `norm3` feeds the time attention.
    """

    def __init__(self, dim: int, heads: int, mlp_hidden: int, qkv_bias: bool) -> None:
        super().__init__()
        self.norm1 = _layer_norm(dim)
        self.attn = DividedAttention(dim, heads, qkv_bias)
        self.timeattn = DividedAttention(dim, heads, qkv_bias)
        self.norm2 = _layer_norm(dim)
        self.mlp = Mlp(dim, mlp_hidden)
        self.norm3 = _layer_norm(dim)

    def forward(self, x: Tensor, steps: int) -> Tensor:
        x = x + self.timeattn(self.norm3(x), steps, over_time=True)
        x = x + self.attn(self.norm1(x), steps, over_time=False)
        return x + self.mlp(self.norm2(x))


# --------------------------------------------------------------------------------------------
# CLS aggregation layer (keys of a norm-first nn.TransformerEncoderLayer plus `cls_token`)
# --------------------------------------------------------------------------------------------


class PackedSelfAttention(nn.Module):
    """Multi-head attention with packed q/k/v rows (`nn.MultiheadAttention`'s keys)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, query: Tensor, context: Tensor) -> Tensor:
        """`query` rows attend to `context` (`(B, Lq, D)`, `(B, L, D)`)."""
        dim = query.shape[-1]
        w_q, w_kv = self.in_proj_weight.split([dim, 2 * dim])
        b_q, b_kv = self.in_proj_bias.split([dim, 2 * dim])
        q = F.linear(query, w_q, b_q).unflatten(-1, (self.heads, -1))
        k, v = F.linear(context, w_kv, b_kv).unflatten(-1, (2, self.heads, -1)).unbind(2)
        out = F.scaled_dot_product_attention(_heads_first(q), _heads_first(k), _heads_first(v))
        return self.out_proj(out.transpose(1, 2).flatten(2))


class ClsAggregator(nn.Module):
    """Pools a token sequence into one vector: prepend `cls_token`, run one norm-first
    encoder layer (exact GELU), keep position 0 (spec §5.5 step 9).

    Since only position 0 is kept and every row of attention and MLP is independent, only
    the CLS row is computed (same numbers, ~200x less work than the full layer).
    """

    def __init__(self, dim: int, heads: int, mlp_hidden: int) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.empty(1, 1, dim))
        self.self_attn = PackedSelfAttention(dim, heads)
        self.linear1 = nn.Linear(dim, mlp_hidden)
        self.linear2 = nn.Linear(mlp_hidden, dim)
        self.norm1 = _layer_norm(dim)
        self.norm2 = _layer_norm(dim)

    def forward(self, x: Tensor) -> Tensor:
        """`(M, L, D)` -> `(M, D)`."""
        seq = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        normed = self.norm1(seq)
        cls = seq[:, :1] + self.self_attn(normed[:, :1], normed)
        cls = cls + self.linear2(F.gelu(self.linear1(self.norm2(cls))))
        return cls[:, 0]


# --------------------------------------------------------------------------------------------
# MotionFormer (the `vfeat_extractor`)
# --------------------------------------------------------------------------------------------


class FramePatchEmbed(nn.Module):
    """The released 2-D patcher (`patch_embed.proj`). Never applied: the official code only
    reads its patch count. Kept so the checkpoint's visual keys load strictly."""

    def __init__(self, config: SynchformerConfig) -> None:
        super().__init__()
        p = config.patch_size
        self.proj = nn.Conv2d(config.in_channels, config.embed_dim, p, stride=p)


class TubeletEmbed(nn.Module):
    """Non-overlapping (2, 16, 16) tubelets -> tokens, step-major then raster order."""

    def __init__(self, config: SynchformerConfig) -> None:
        super().__init__()
        kernel = (config.patch_size_temp, config.patch_size, config.patch_size)
        self.proj = nn.Conv3d(config.in_channels, config.embed_dim, kernel, stride=kernel)

    def forward(self, x: Tensor) -> Tensor:
        """`(N, C, T, H, W)` -> `(N, F * P, D)`; the input is cast to the weight dtype."""
        return self.proj(x.to(self.proj.weight.dtype)).flatten(2).transpose(1, 2)


class MotionFormer(nn.Module):
    """Divided space-time ViT with the "separate" positional scheme and a per-step CLS
    aggregation head: `(N, C, 16, 224, 224)` -> `(N, 8, D)`."""

    def __init__(self, config: SynchformerConfig) -> None:
        super().__init__()
        d = config.embed_dim
        self.steps = config.temporal_resolution
        patches = (config.img_size // config.patch_size) ** 2
        mlp_hidden = int(d * config.mlp_ratio)
        self.cls_token = nn.Parameter(torch.empty(1, 1, d))
        self.pos_embed = nn.Parameter(torch.empty(1, 1 + patches, d))
        self.temp_embed = nn.Parameter(torch.empty(1, self.steps, d))
        self.patch_embed = FramePatchEmbed(config)
        self.patch_embed_3d = TubeletEmbed(config)
        self.blocks = nn.ModuleList(
            DividedBlock(d, config.num_heads, mlp_hidden, config.qkv_bias)
            for _ in range(config.depth)
        )
        self.norm = _layer_norm(d)
        self.spatial_attn_agg = ClsAggregator(d, config.num_heads, mlp_hidden)

    def positions(self) -> Tensor:
        """`(1, 1 + F * P, D)`: CLS row, then spatial row p + temporal row f per token."""
        spatial = self.pos_embed[:, 1:]
        patch_pos = (self.temp_embed[:, :, None] + spatial[:, None]).flatten(1, 2)
        return torch.cat([self.pos_embed[:, :1], patch_pos], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.patch_embed_3d(x)
        n, _, d = tokens.shape
        x = torch.cat([self.cls_token.expand(n, -1, -1), tokens], dim=1) + self.positions()
        for block in self.blocks:
            x = block(x, self.steps)
        x = self.norm(x[:, 1:])
        per_step = x.unflatten(1, (self.steps, -1)).flatten(0, 1)  # (N * F, P, D)
        return self.spatial_attn_agg(per_step).unflatten(0, (n, self.steps))


class Synchformer(nn.Module):
    """The visual Synchformer: `(B, S, 16, 3, 224, 224)` in [-1, 1] -> `(B, S, 8, D)`."""

    def __init__(self, config: SynchformerConfig = SynchformerConfig()) -> None:
        super().__init__()
        self.config = config
        self.vfeat_extractor = MotionFormer(config)

    def forward(self, x: Tensor) -> Tensor:
        cfg = self.config
        want = (cfg.frames_per_segment, cfg.in_channels, cfg.img_size, cfg.img_size)
        if x.ndim != 6 or tuple(x.shape[2:]) != want:
            raise ValueError(f"Synchformer input must be (B, S, {', '.join(map(str, want))}), "
                             f"got {tuple(x.shape)}")
        b, s = x.shape[:2]
        x = x.flatten(0, 1).transpose(1, 2)  # (N, C, T, H, W)
        return self.vfeat_extractor(x).unflatten(0, (b, s))


# --------------------------------------------------------------------------------------------
# The rest of the released tree (never run)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnusedPartsConfig:
    """Sizes of the released parts the Foley pipeline never runs. The release hard-codes them
    (AST defaults, a 768-wide offset classifier); they are fields only so a test can build a
    small full tree and write a full-key file."""

    width: int = 768
    heads: int = 12
    mlp_hidden: int = 3072
    ast_layers: int = 12
    ast_positions: int = 74
    ast_patch: int = 16
    offset_layers: int = 3
    offset_positions: int = 198
    offset_classes: int = 21


class ParamTree(nn.Module):
    """Parameters and submodules under the released names, with no forward: these parts
    exist only so the full checkpoint's keys can be checked and loaded."""

    def __init__(self, **members: nn.Module | nn.Parameter) -> None:
        super().__init__()
        for name, member in members.items():
            setattr(self, name, member)


def _param(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape))


def _ast_layer(u: UnusedPartsConfig) -> ParamTree:
    w = u.width
    return ParamTree(
        attention=ParamTree(
            attention=ParamTree(query=nn.Linear(w, w), key=nn.Linear(w, w),
                                value=nn.Linear(w, w)),
            output=ParamTree(dense=nn.Linear(w, w)),
        ),
        intermediate=ParamTree(dense=nn.Linear(w, u.mlp_hidden)),
        output=ParamTree(dense=nn.Linear(u.mlp_hidden, w)),
        layernorm_before=nn.LayerNorm(w),
        layernorm_after=nn.LayerNorm(w),
    )


def _audio_branch(u: UnusedPartsConfig) -> ParamTree:
    """`afeat_extractor`: an AST over log-mel patches plus its own CLS aggregator."""
    w = u.width
    embeddings = ParamTree(
        cls_token=_param(1, 1, w),
        distillation_token=_param(1, 1, w),
        position_embeddings=_param(1, u.ast_positions, w),
        patch_embeddings=ParamTree(projection=nn.Conv2d(1, w, u.ast_patch, stride=u.ast_patch)),
    )
    ast = ParamTree(
        embeddings=embeddings,
        encoder=ParamTree(layer=nn.ModuleList(_ast_layer(u) for _ in range(u.ast_layers))),
        layernorm=nn.LayerNorm(w),
    )
    return ParamTree(ast=ast, freq_attn_agg=ClsAggregator(w, u.heads, u.mlp_hidden))


def _offset_block(u: UnusedPartsConfig) -> ParamTree:
    w = u.width
    return ParamTree(
        ln1=nn.LayerNorm(w),
        ln2=nn.LayerNorm(w),
        attn=ParamTree(key=nn.Linear(w, w), query=nn.Linear(w, w), value=nn.Linear(w, w),
                       proj=nn.Linear(w, w)),
        mlp=ParamTree(**{"0": nn.Linear(w, u.mlp_hidden), "2": nn.Linear(u.mlp_hidden, w)}),
    )


def _offset_classifier(u: UnusedPartsConfig) -> ParamTree:
    """`transformer`: the A/V offset classifier ("GlobalTransformer")."""
    w = u.width
    return ParamTree(
        OFF_tok=_param(1, 1, w),
        MOD_tok=_param(1, 1, w),
        vis_in_lnorm=nn.LayerNorm(w),
        aud_in_lnorm=nn.LayerNorm(w),
        pos_emb_cfg=ParamTree(pos_emb=_param(1, u.offset_positions, w)),
        blocks=nn.ModuleList(_offset_block(u) for _ in range(u.offset_layers)),
        ln_f=nn.LayerNorm(w),
        off_head=nn.Linear(w, u.offset_classes),
    )


class FullSynchformer(Synchformer):
    """The whole released tree (key order and shapes of `synchformer_state_dict.pth`). Build
    it on `meta` to check a file or to strict-load all of it; its forward is the visual one,
    the other parts are parameter holders."""

    def __init__(
        self, config: SynchformerConfig = SynchformerConfig(),
        unused: UnusedPartsConfig = UnusedPartsConfig(),
    ) -> None:
        super().__init__(config)
        self.afeat_extractor = _audio_branch(unused)
        self.vproj = nn.Linear(config.embed_dim, unused.width)
        self.aproj = nn.Linear(unused.width, unused.width)
        self.transformer = _offset_classifier(unused)


# --------------------------------------------------------------------------------------------
# Pipeline helpers
# --------------------------------------------------------------------------------------------


def segment_windows(
    frames: Tensor, window: int = SYNC_WINDOW, stride: int = SYNC_STRIDE
) -> Tensor:
    """`(T, 3, H, W)` preprocessed frames -> `(S, 1, window, 3, H, W)` overlapping segments,
    S = (T - window) // stride + 1, trailing frames dropped (spec §6). A view: no copy."""
    if frames.ndim != 4:
        raise ValueError(f"frames must be (T, C, H, W), got {tuple(frames.shape)}")
    if frames.shape[0] < window:
        raise InputError(
            f"the clip is too short for Synchformer: {frames.shape[0]} frames at {SYNC_FPS} fps, "
            f"needs at least {window} ({window / SYNC_FPS:.2f} s)"
        )
    return frames.unfold(0, window, stride).permute(0, 4, 1, 2, 3).unsqueeze(1)


def sync_features(model: Synchformer, frames: Tensor, batch_size: int | None = None) -> Tensor:
    """Sync tokens of a clip, `(1, 8 * S, D)` with token index 8 * segment + step.

    Segments run `batch_size` at a time (None: all at once) to bound activation memory on
    long clips; any autocast/dtype policy is the caller's.
    """
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    windows = segment_windows(frames, window=model.config.frames_per_segment)
    step = batch_size or windows.shape[0]
    with torch.inference_mode():
        outs = [model(windows[i : i + step]) for i in range(0, windows.shape[0], step)]
    out = torch.cat(outs)  # (S, 1, 8, D)
    return out.reshape(1, -1, out.shape[-1])
