"""`foleyrt calibrate`'s driver: activation ranges recorded over whole generations.

It runs the real pipeline (video decode, encoders, the guided sampler over every step, VAE
decode) on a set of clips with `accel.calibration.ActivationRecorder`'s hooks on the
quantisable GEMMs (`accel.quant.quantizable_names`), recording what enters each matmul: max |x|
per input channel over every token, row, step and clip. Ranges move with the timestep and the
content, hence whole generations rather than one forward. The file format is
`accel.calibration`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from foleyrt.accel.calibration import CONFIG_KEY, ActivationRecorder, Calibration
from foleyrt.accel.quant import AMAX_FLOOR, quantizable_modules
from foleyrt.accel.runtime import AccelMode
from foleyrt.batch import BatchItem, item_seed, read_inputs
from foleyrt.config import config_digest
from foleyrt.errors import ConfigError
from foleyrt.media.video import probe_video
from foleyrt.pipeline.pipeline import FoleyPipeline
from foleyrt.request import GenerationRequest
from foleyrt.version import __version__

log = logging.getLogger(__name__)


def read_clips(inputs: Sequence[Path], prompt: str = "") -> list[BatchItem]:
    """The clips of INPUT as `foleyrt batch` reads it (one CSV with columns `video,prompt`,
    one folder, or video files), each probed here: a bad clip fails before any model loads."""
    items = read_inputs(list(inputs), prompt=prompt)
    for item in items:
        probe_video(item.video)
    return items


def calibrate(pipe: FoleyPipeline, items: Sequence[BatchItem],
              request: GenerationRequest = GenerationRequest()) -> Calibration:
    """Generate for every item with `request`'s settings (seeded as `foleyrt batch` seeds
    them, from the request's seed or 0: a calibration is reproducible) and record the ranges
    of the quantisable GEMMs' inputs. The pipeline must run its unquantised model eagerly."""
    runtime = pipe.runtime
    if runtime.accel is not AccelMode.EAGER or runtime.quantized:
        raise ConfigError("calibration records the unquantised model run eagerly: use "
                          "--accel eager and no quantised --precision")
    dit = pipe.models.dit
    modules = quantizable_modules(dit)
    with ActivationRecorder(modules) as recorder:
        for i, item in enumerate(items):
            log.info("calibrating on %s (%d/%d)", item.video, i + 1, len(items))
            seed = item_seed(item, i, 0 if request.seed is None else request.seed)
            assert seed is not None  # a base was given
            pipe.generate(item.video, item.request(request).with_seed(seed))
    silent = [name for name in modules if name not in recorder.channel_amax]
    if silent:  # `quantizable_names` and the forward disagree: a bug, not a user error
        raise RuntimeError(f"quantisable modules that never ran: {', '.join(silent[:3])}")
    return recorder.calibration(AMAX_FLOOR, {
        CONFIG_KEY: config_digest(dit.config), "clips": str(len(items)),
        "steps": str(request.steps), "source": pipe.models.source, "foleyrt": __version__})
