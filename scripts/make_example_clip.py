"""Render `examples/clip.mp4`, the quick-start input: a ball dropped onto a wooden floor.

Made by us from nothing (no third-party footage): 4 s, 30 fps, 320x240 H.264 plus an AAC
track of the thuds, so the clip both suggests a sound (clear impacts at known times) and
shows what foleyrt replaces. Deterministic: single-threaded encoders, fixed noise seed; the
same PyAV/FFmpeg build gives the same bytes.

    python scripts/make_example_clip.py [--out examples/clip.mp4]
"""

from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw

WIDTH, HEIGHT, FPS, SECONDS = 320, 240, 30, 4.0
SAMPLE_RATE = 48_000
FLOOR_Y = 200  # top of the floor, pixels
RADIUS = 18
GRAVITY = 1400.0  # px/s²
RESTITUTION = 0.72
DROP_HEIGHT = 150.0  # px above the floor at t = 0


def ball_height(t: float) -> tuple[float, list[float]]:
    """Height of the ball's bottom above the floor at `t`, and every impact time up to `t`.

    Closed form per bounce (each hop a parabola), so every frame is exact and independent of
    the frame rate."""
    impacts: list[float] = []
    # the first fall starts at rest from DROP_HEIGHT
    fall = (2 * DROP_HEIGHT / GRAVITY) ** 0.5
    if t < fall:
        return DROP_HEIGHT - 0.5 * GRAVITY * t * t, impacts
    start, speed = fall, RESTITUTION * GRAVITY * fall
    impacts.append(fall)
    while speed > 40.0:
        hop = 2 * speed / GRAVITY
        if t < start + hop:
            dt = t - start
            return speed * dt - 0.5 * GRAVITY * dt * dt, impacts
        start += hop
        speed *= RESTITUTION
        impacts.append(start)
    return 0.0, impacts


def draw_frame(t: float) -> np.ndarray:
    image = Image.new("RGB", (WIDTH, HEIGHT), (196, 214, 232))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, FLOOR_Y, WIDTH, HEIGHT], fill=(139, 94, 60))
    for x in range(0, WIDTH, 40):  # floorboards
        draw.line([x, FLOOR_Y, x + 20, HEIGHT], fill=(112, 74, 46), width=2)
    height, impacts = ball_height(t)
    # squash for a few frames after each impact: the eye reads it as a hit
    since = t - impacts[-1] if impacts else 1.0
    squash = max(0.0, 1.0 - since / 0.06) * 0.35
    rx, ry = RADIUS * (1 + squash), RADIUS * (1 - squash)
    cx, bottom = WIDTH / 2, FLOOR_Y - height
    shadow = 1.0 - min(height, DROP_HEIGHT) / DROP_HEIGHT * 0.6
    draw.ellipse([cx - RADIUS * shadow, FLOOR_Y - 3, cx + RADIUS * shadow, FLOOR_Y + 3],
                 fill=(90, 60, 38))
    draw.ellipse([cx - rx, bottom - 2 * ry, cx + rx, bottom], fill=(214, 48, 49))
    draw.ellipse([cx - rx * 0.45, bottom - 2 * ry * 0.85, cx - rx * 0.05, bottom - 2 * ry * 0.55],
                 fill=(245, 150, 150))
    return np.asarray(image)


def thuds(n_samples: int) -> np.ndarray:
    """A damped low tone plus a short noise burst at every impact, louder for faster hits."""
    rng = np.random.default_rng(20240917)
    audio = np.zeros(n_samples, np.float64)
    _, impacts = ball_height(SECONDS)
    t = np.arange(int(0.4 * SAMPLE_RATE)) / SAMPLE_RATE
    for k, at in enumerate(impacts):
        gain = 0.8 * RESTITUTION**k
        body = np.sin(2 * np.pi * 95 * t) * np.exp(-t / 0.07)
        click = rng.standard_normal(t.size) * np.exp(-t / 0.006) * 0.5
        start = int(round(at * SAMPLE_RATE))
        end = min(n_samples, start + t.size)
        audio[start:end] += gain * (body + click)[: end - start]
    return np.clip(audio, -1, 1).astype(np.float32)


def render(out: Path) -> None:
    n_frames = int(SECONDS * FPS)
    n_samples = int(SECONDS * SAMPLE_RATE)
    with av.open(str(out), "w", format="mp4") as container:
        video = container.add_stream(
            "libx264", rate=FPS, options={"crf": "26", "preset": "medium", "threads": "1"}
        )
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        audio = container.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
        audio.bit_rate = 96_000
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(draw_frame(i / FPS), format="rgb24")
            frame.pts = i
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        samples = thuds(n_samples)
        for start in range(0, n_samples, 1024):
            chunk = av.AudioFrame.from_ndarray(samples[None, start : start + 1024],
                                               format="fltp", layout="mono")
            chunk.sample_rate = SAMPLE_RATE
            chunk.pts = start
            chunk.time_base = Fraction(1, SAMPLE_RATE)
            container.mux(audio.encode(chunk))
        container.mux(audio.encode(None))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parents[1] / "examples" / "clip.mp4")
    args = parser.parse_args()
    render(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
