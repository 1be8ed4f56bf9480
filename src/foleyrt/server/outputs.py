"""What one job makes: the encoded request of its parameters, and its files.

Per sample: a WAV, a spectrogram PNG and, when the job has a video, the MP4 with the new
sound. Files go into the job's own folder under server-made names; the record lists them
only after all were written, so a client never sees a half-finished set.
"""

from __future__ import annotations

import time
from pathlib import Path

from foleyrt.media.video import VideoLimits
from foleyrt.pipeline.pipeline import Encoded, FoleyPipeline, FoleyResult, ProgressFn
from foleyrt.server.files import DataDir
from foleyrt.server.prefetch import ClipPrefetch
from foleyrt.server.schemas import JobParams
from foleyrt.server.spectrogram import write_spectrogram
from foleyrt.server.store import JobRecord, OutputFiles

SAMPLE_STEM = "sample"  # FoleyResult.save numbers it: sample.wav, or sample_1.wav ...


def encode_job(
    pipeline: FoleyPipeline, job: JobRecord, files: DataDir, progress: ProgressFn,
    video_limits: VideoLimits, clips: ClipPrefetch | None = None,
) -> Encoded:
    """The first stage of a job: its upload (if any) decoded within the server's limits (by
    this thread, or by `clips`' processes) and its features computed, from its stored
    parameters. Its "video" time is then the wait for `clips`' decoding (0: decoded
    ahead)."""
    params = JobParams.of(job)
    request = params.generation_request(video_limits.max_seconds)
    request.check_source(not params.text_only)
    if params.text_only or clips is None:
        video = None if params.text_only else files.input_path(job.id)
        return pipeline.encode(video, request, progress, video_limits)
    started = time.perf_counter()
    clip = clips.take(job)
    waited = time.perf_counter() - started
    encoded = pipeline.encode(clip, request, progress, video_limits)
    encoded.timings["video"] = waited
    return encoded


def write_outputs(result: FoleyResult, job_dir: Path) -> tuple[OutputFiles, ...]:
    """Every sample's files, named by `FoleyResult.save`'s numbering."""
    wavs = result.save(job_dir / f"{SAMPLE_STEM}.wav")
    mp4s: list[Path | None] = (
        list(result.save(job_dir / f"{SAMPLE_STEM}.mp4")) if result.video is not None
        else [None] * len(wavs)
    )
    outputs = []
    for wav, mp4, track in zip(wavs, mp4s, result.audio, strict=True):
        png = write_spectrogram(track, result.sample_rate, wav.with_suffix(".png"))
        outputs.append(OutputFiles(wav=wav.name, spectrogram=png.name,
                                   mp4=mp4.name if mp4 else None))
    return tuple(outputs)
