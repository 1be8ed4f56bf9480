"""Writing results: float WAVs and MP4s with the source picture, never a half-written file.

Every writer renders into a hidden temporary file beside the destination and renames it into
place (`os.replace` is atomic within a directory), so a crash, a full disk or a cancelled
request leaves either the old file or the complete new one, and no temporary behind.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import TypeVar

import av
import av.error
import numpy as np
import soundfile
import torch

from foleyrt.atomic import atomic_path, check_parent
from foleyrt.errors import MediaError, OutputError, UsageError
from foleyrt.media.video import first_video_stream, open_media
from foleyrt.media.video_track import add_video_track

OUTPUT_SUFFIXES = (".wav", ".mp4")
AAC_FRAME = 1024  # samples per AAC frame
# FFmpeg's "fast" AAC quantiser search instead of "twoloop": about 3x less CPU for the same
# bitrate (the mux was ~0.3 s of an 8 s clip's ~1.9 s request), and by FFmpeg's own account
# (the commit that once made it the default) it sounds better than twoloop at high bitrates
# such as our 192 kbit/s; twoloop's gains are at low bitrates.
AAC_CODER = "fast"

# libsndfile's command to leave out a float WAV's PEAK chunk, which carries the time of
# writing: with it, the same sound made twice gives two different files (sndfile.h's value;
# soundfile wraps no such setting).
_SFC_SET_ADD_PEAK_CHUNK = 0x1050
# String fields libsndfile stores in a WAV's LIST/INFO chunk.
_WAV_TAGS = ("title", "copyright", "software", "artist", "comment", "date", "album", "genre")
# Keys FFmpeg's MP4 muxer writes as iTunes-style atoms (others would be dropped silently).
_MP4_TAGS = ("title", "artist", "album", "comment", "genre", "copyright", "date", "composer",
             "description", "synopsis", "album_artist", "grouping", "lyrics")

Samples = TypeVar("Samples", torch.Tensor, np.ndarray)  # audio as either, returned as given


# --------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------


def check_output_path(
    path: str | Path, *, overwrite: bool, inputs: Sequence[str | Path] = ()
) -> Path:
    """Fail before any work is done if `path` cannot receive a result: wrong type, missing or
    read-only directory, an existing file without `overwrite`, or one of the `inputs`
    (never overwritten, whatever `overwrite` says: the source would be lost)."""
    path = Path(path)
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UsageError(f"{path}: output must end in .wav or .mp4")
    check_parent(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a directory")
    if path.exists():
        if any(Path(i).exists() and path.samefile(i) for i in inputs):
            raise OutputError(f"{path}: is an input file; choose another output name")
        if not overwrite:
            raise OutputError(f"{path}: exists; pass --overwrite to replace it")
    return path


def numbered_paths(path: str | Path, n: int) -> list[Path]:
    """One output per sample: `path` itself for one, `stem_1.ext` ... `stem_n.ext` for more."""
    path = Path(path)
    if n < 1:
        raise ValueError(f"need at least one output path, got n={n}")
    if n == 1:
        return [path]
    return [path.with_name(f"{path.stem}_{k}{path.suffix}") for k in range(1, n + 1)]


@contextmanager
def _atomic(path: Path, overwrite: bool, inputs: Sequence[Path] = ()) -> Iterator[Path]:
    """`atomic_path` for an output file, after the output checks (never an input, never an
    existing file without `overwrite`)."""
    check_output_path(path, overwrite=overwrite, inputs=inputs)
    with atomic_path(path, overwrite=overwrite) as tmp:
        yield tmp


# --------------------------------------------------------------------------------------------
# Samples
# --------------------------------------------------------------------------------------------


def fit_length(audio: Samples, n_samples: int) -> Samples:
    """Zero-pad (or trim) the last axis to `n_samples`.

    The release asks the model for `int(T25 / 25 * 50)` latent frames, T25 counted by its
    25 fps tick rule, so the track comes out up to ~60 ms shorter than the picture (a missed
    final tick, the float truncation of §2.3, the last frame's own duration). Padding with
    silence to the video's duration makes the file end with the picture; the generated
    samples themselves are untouched.
    """
    have = audio.shape[-1]
    if have >= n_samples:
        return audio[..., :n_samples]
    pad = n_samples - have
    if isinstance(audio, torch.Tensor):
        return torch.nn.functional.pad(audio, (0, pad))
    return np.pad(audio, [(0, 0)] * (audio.ndim - 1) + [(0, pad)])


def _channels_first(audio: torch.Tensor | np.ndarray) -> np.ndarray:
    """(channels, n) float32 numpy from a (n,) or (channels, n) array or tensor."""
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().to("cpu", torch.float32).numpy()
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None]
    if audio.ndim != 2:
        raise ValueError(f"audio must be (channels, samples), got shape {audio.shape}")
    return audio


def _tags(metadata: Mapping[str, str] | None, supported: Sequence[str]) -> dict[str, str]:
    """Keep the keys the format can store; fold the others into `comment` as `key=value`
    rather than losing them."""
    tags = {k: str(v) for k, v in (metadata or {}).items() if k in supported}
    extra = [f"{k}={v}" for k, v in (metadata or {}).items() if k not in supported]
    if extra:
        tags["comment"] = "; ".join(([tags["comment"]] if "comment" in tags else []) + extra)
    return tags


# --------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------


def write_wav(
    path: str | Path,
    audio: torch.Tensor | np.ndarray,
    sample_rate: int,
    *,
    metadata: Mapping[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """32-bit float PCM WAV, unnormalised and unclipped, as the release writes it;
    `metadata` goes into the INFO chunk. The same sound and metadata give the same bytes."""
    path = Path(path)
    if path.suffix.lower() != ".wav":
        raise UsageError(f"{path}: a WAV output must end in .wav")
    samples = _channels_first(audio)
    with _atomic(path, overwrite) as tmp, soundfile.SoundFile(
        tmp, "w", samplerate=sample_rate, channels=samples.shape[0],
        format="WAV", subtype="FLOAT",
    ) as out:
        soundfile._snd.sf_command(out._file, _SFC_SET_ADD_PEAK_CHUNK, soundfile._ffi.NULL,
                                  soundfile._snd.SF_FALSE)
        for key, value in _tags(metadata, _WAV_TAGS).items():
            setattr(out, key, value)
        out.write(samples.T)
    return path


def mux_video(
    video_path: str | Path,
    out_path: str | Path,
    audio: torch.Tensor | np.ndarray,
    sample_rate: int,
    *,
    metadata: Mapping[str, str] | None = None,
    overwrite: bool = False,
    bitrate: int = 192_000,
) -> Path:
    """MP4 with the first video stream of `video_path` (copied packet for packet where MP4
    carries its codec, else re-encoded to H.264: see `foleyrt.media.video_track`) and `audio`
    as the only audio track: AAC, stereo (a mono track is duplicated to both channels like
    the release's `pan=stereo|c0=c0|c1=c0`), `bitrate` bit/s.

    The track is padded or trimmed to the video's duration (see `fit_length`) so the two
    streams end together; the source's own audio is dropped.
    """
    video_path, out_path = Path(video_path), Path(out_path)
    if out_path.suffix.lower() != ".mp4":
        raise UsageError(f"{out_path}: a video output must end in .mp4")
    samples = _channels_first(audio)
    if samples.shape[0] == 1:
        samples = np.repeat(samples, 2, axis=0)
    if samples.shape[0] != 2:
        raise ValueError(f"audio must be mono or stereo, got {samples.shape[0]} channels")
    with open_media(video_path) as source, _atomic(out_path, overwrite, [video_path]) as tmp:
        in_video = first_video_stream(source, video_path)
        try:
            _mux(in_video, video_path, tmp, samples, sample_rate, _tags(metadata, _MP4_TAGS),
                 bitrate)
        except OSError:
            raise  # a full disk or the like: reported by `_atomic` as an output error
        except av.error.FFmpegError as exc:
            raise MediaError(  # FFmpeg's words, not the temporary file's name
                f"{video_path}: its video cannot be written into MP4 ({exc.strerror}); write "
                "a .wav instead, or convert the video to H.264 first"
            ) from None
    return out_path


def _mux(
    in_video: av.video.VideoStream,
    video_path: Path,
    tmp: Path,
    samples: np.ndarray,
    sample_rate: int,
    tags: dict[str, str],
    bitrate: int,
) -> None:
    # The picture first: the audio length depends on the video's, and both streams are then
    # written interleaved by time (players and streaming want an interleaved file).
    with av.open(str(tmp), mode="w", format="mp4") as out:
        out.metadata.update(tags)
        video = add_video_track(out, in_video, video_path)
        audio = out.add_stream("aac", rate=sample_rate, layout="stereo")
        audio.bit_rate = bitrate
        audio.codec_context.options = {"aac_coder": AAC_CODER}
        n_samples = round(video.seconds * sample_rate)
        encoded = _encode_audio(audio, fit_length(samples, n_samples), sample_rate)
        for packet in heapq.merge(video.packets, encoded, key=_decode_time):
            out.mux(packet)


def _decode_time(packet: av.Packet) -> float:
    assert packet.dts is not None  # the encoder's, or `retime`'s
    return float(packet.dts * packet.time_base)


def _encode_audio(stream: av.AudioStream, samples: np.ndarray, rate: int) -> list[av.Packet]:
    """AAC packets of the whole track, in order. FFmpeg stamps the encoder's priming samples
    with negative times and the MP4 muxer hides them with an edit list, so the audible
    track starts at 0 with the picture."""
    packets: list[av.Packet] = []
    for start in range(0, samples.shape[1], AAC_FRAME):
        chunk = np.ascontiguousarray(samples[:, start : start + AAC_FRAME])
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
        frame.sample_rate = rate
        frame.pts = start
        frame.time_base = Fraction(1, rate)
        packets.extend(stream.encode(frame))
    packets.extend(stream.encode(None))
    return packets
