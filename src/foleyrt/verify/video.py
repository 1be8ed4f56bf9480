"""Cases E*: video decoding, frame sampling and preprocessing (`component: video_features`).

Everything is read from the case (video file, frame rates, subset rules, tolerances), so cases
with other clips (frame rates, sizes, durations) run unchanged. The clip is decoded once
through the production path (`iter_ticks` -> `assemble_clip`, resizing on the device under
test); a tap on the ticks records the raw-frame facts some cases also pin down.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from foleyrt.lengths import latent_frames
from foleyrt.media.video import (
    DecodedClip,
    FramePrep,
    Tick,
    assemble_clip,
    iter_ticks,
    probe_video,
    to_model_range,
)
from foleyrt.models.synchformer import sync_features
from foleyrt.verify.fixtures import Check, Fixtures, compare
from foleyrt.verify.synchformer import synchformer_model


def run(case: dict[str, Any], fx: Fixtures) -> list[Check]:
    video = fx.path(case["video"]["file"])
    siglip_fps, sync_fps = case["fps_visual"]["siglip2"], case["fps_visual"]["synchformer"]
    tap = _RawTap()
    clip = assemble_clip(
        probe_video(video),
        tap.watch(iter_ticks(video, (siglip_fps, sync_fps))),
        siglip_fps,
        sync_fps,
        FramePrep.for_device(fx.device),  # on a GPU: the pipeline's exact GPU resizes
    )
    tensors = fx.tensors(case["file"])
    tol = case["tolerance"]
    checks: list[Check] = []
    for name, branch in case["branches"].items():
        fps = case["fps_visual"][name]
        checks += _branch_checks(name, branch, _sampled(clip, name), fps, tensors, tol)
        if "raw_frames_u8" in branch:
            checks += _raw_checks(name, branch, tap, fps, tensors, tol)
    if "audio_latent_frames" in case:
        checks.append(
            _exact("audio_latent_frames", latent_frames(clip.duration_s),
                   case["audio_latent_frames"])
        )
    if "encode_video_features" in case:
        checks += _sync_feature_checks(case["encode_video_features"], clip, tensors, fx)
    return checks


def _sampled(clip: DecodedClip, branch: str) -> tuple[Tensor, list[int], list[float]]:
    """(uint8 frames, source frame indices, source times) of a manifest branch name."""
    if branch == "siglip2":
        return clip.siglip_u8, clip.siglip_source_index, clip.siglip_source_time
    if branch == "synchformer":
        return clip.sync_u8, clip.sync_source_index, clip.sync_source_time
    raise KeyError(f"unknown video_features branch {branch!r}")


def _branch_checks(
    name: str,
    branch: dict[str, Any],
    sampled: tuple[Tensor, list[int], list[float]],
    fps: int,
    tensors: dict[str, Tensor],
    tol: dict[str, Any],
) -> list[Check]:
    frames, index, times = sampled
    checks = [
        _exact(f"{name}.num_frames", len(index), branch["num_frames"]),
        _exact(f"{name}.source_frame_index", index, branch["source_frame_index"]),
        _exact(f"{name}.source_frame_time", times, branch["source_frame_time"]),
        _exact(f"{name}.vid_len_in_s", len(index) / fps, branch["vid_len_in_s"]),
    ]
    pre = branch.get("preprocessed")
    if pre is None:
        return checks
    u8_tol = tol["preprocessed_u8"]
    checks.append(_exact(f"{name}.preprocessed.shape", list(frames.shape), pre["shape"]))
    subset = _index_from_rule(pre["subset_rule"])
    checks.append(
        compare_u8(f"{name}.subset_u8", frames[subset], tensors[pre["subset_u8"]["key"]], u8_tol)
    )
    full = frames[list(pre["full_frames_index"])]
    checks.append(
        compare_u8(f"{name}.full_frames_u8", full, tensors[pre["full_frames_u8"]["key"]], u8_tol)
    )
    pixels = to_model_range(frames)
    stats_tol = tol["channel_mean_std"]
    checks.append(compare(f"{name}.channel_mean", pixels.mean(dim=(2, 3)),
                          tensors[pre["channel_mean"]["key"]], stats_tol))
    checks.append(compare(f"{name}.channel_std", pixels.std(dim=(2, 3)),
                          tensors[pre["channel_std"]["key"]], stats_tol))
    return checks


def _raw_checks(
    name: str,
    branch: dict[str, Any],
    tap: _RawTap,
    fps: int,
    tensors: dict[str, Tensor],
    tol: dict[str, Any],
) -> list[Check]:
    """Decoded RGB before any resize: the first and last sampled frame, and every sampled
    frame's channel means (0..255): separates a decoder difference from a resize one."""
    first_last = torch.stack([torch.from_numpy(tap.first[fps]), torch.from_numpy(tap.last[fps])])
    checks = [compare_u8(f"{name}.raw_frames_u8", first_last,
                         tensors[branch["raw_frames_u8"]["key"]], tol["preprocessed_u8"])]
    if "raw_channel_mean" in branch:
        checks.append(compare(f"{name}.raw_channel_mean", torch.stack(tap.means[fps]),
                              tensors[branch["raw_channel_mean"]["key"]], tol["channel_mean_std"]))
    return checks


def _sync_feature_checks(
    enc: dict[str, Any], clip: DecodedClip, tensors: dict[str, Tensor], fx: Fixtures
) -> list[Check]:
    checks = [_exact("encode_video_features.vid_len_in_s", clip.duration_s, enc["vid_len_in_s"])]
    frames = to_model_range(clip.sync_u8.to(fx.device))
    feat = sync_features(synchformer_model(fx), frames)
    expected = tensors[enc["syncformer_feat"]["key"]]
    checks.append(compare("encode_video_features.syncformer_feat", feat, expected,
                          enc["tolerance"]))
    return checks


class _RawTap:
    """Passes ticks through unchanged, remembering per rate each tick's raw channel means
    and the first and last raw frame (not all frames: a long clip must not pile up)."""

    def __init__(self) -> None:
        self.means: dict[int, list[Tensor]] = {}
        self.first: dict[int, Any] = {}
        self.last: dict[int, Any] = {}

    def watch(self, ticks: Iterable[Tick]) -> Iterator[Tick]:
        for tick in ticks:
            rgb = torch.from_numpy(tick.rgb)
            self.means.setdefault(tick.rate, []).append(rgb.float().mean(dim=(0, 1)))
            self.first.setdefault(tick.rate, tick.rgb)
            self.last[tick.rate] = tick.rgb
            yield tick


def compare_u8(name: str, got: Tensor, expected: Tensor, tol: dict[str, Any]) -> Check:
    """uint8 images: at most `max_abs_err` levels off, on at most `mismatch_fraction_max` of
    the values (another decoder or resampler build may round a few pixels differently)."""
    if tuple(got.shape) != tuple(expected.shape):
        return Check(name, False, detail=f"shape {tuple(got.shape)} != {tuple(expected.shape)}")
    diff = (got.to("cpu", torch.int16) - expected.to(torch.int16)).abs()
    max_abs = int(diff.max().item()) if diff.numel() else 0
    fraction = (diff > 0).float().mean().item() if diff.numel() else 0.0
    ok = max_abs <= tol.get("max_abs_err", 0) and fraction <= tol.get("mismatch_fraction_max", 0)
    return Check(name, ok, max_abs=float(max_abs),
                 detail=f"(max_abs {max_abs}, mismatched fraction {fraction:.2e})")


def _exact(name: str, got: Any, expected: Any) -> Check:
    if got == expected:
        return Check(name, True)
    if isinstance(got, list) and isinstance(expected, list):
        first = next((i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
                     min(len(got), len(expected)))
        return Check(name, False, detail=f"(first difference at {first}; lengths "
                                         f"{len(got)} vs {len(expected)})")
    return Check(name, False, detail=f"({got!r} != {expected!r})")


def _index_from_rule(rule: str) -> tuple[slice | int, ...]:
    """The index of a manifest rule such as `u8[:, :, ::8, ::8] (all frames)`."""
    match = re.search(r"\[([^\]]*)\]", rule)
    if match is None:
        raise ValueError(f"cannot read the index of subset rule {rule!r}")

    def one(part: str) -> slice | int:
        if ":" not in part:
            return int(part)
        return slice(*(int(p) if p.strip() else None for p in part.split(":")))

    return tuple(one(part) for part in match.group(1).split(","))
