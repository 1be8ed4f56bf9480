"""The five networks of one Foley model, loaded once.

`load_models` resolves the released files (local directory or hub), builds every network on the
`meta` device and assigns the checkpoint tensors (no random init of billions of parameters),
then places them with the runtime's device, dtypes and memory mode, and makes the transformer
the sampler's denoiser (`accel.recipes.apply`). `random_models` builds the tiny config of every
component with deterministic random weights: the whole pipeline runs anywhere without a
download, and everything it makes is labelled as random; `--model random` does the same at a
released size (for benchmarks), the transformer filled on the device.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from foleyrt.accel.compile import BlockGraphs
from foleyrt.accel.offload import ModelOffloader, StreamedDenoiser
from foleyrt.accel.quant import quantizable_modules, stored_fp8_modules
from foleyrt.accel.recipes import apply, preload
from foleyrt.accel.runtime import OffloadKind, Precision, RuntimeConfig
from foleyrt.config import HUB_REPO, PRESETS, RANDOM, TINY, TINY_RANDOM, DiTConfig, ModelSpec
from foleyrt.errors import UsageError
from foleyrt.models.dac_vae import DACVAE
from foleyrt.models.dit import FoleyDiT
from foleyrt.models.encoders import ClapTextEncoder, SigLIP2Encoder
from foleyrt.models.random_init import random_transformer, random_vae, randomize_
from foleyrt.models.synchformer import Synchformer
from foleyrt.sampling.denoiser import Denoiser
from foleyrt.weights import (
    load_dac,
    load_into,
    load_synchformer,
    read_checkpoint,
    resolve_files,
)

log = logging.getLogger(__name__)

RANDOM_SEED = 0  # `--model random`'s transformer: the bench's (`bench.models.random_dit`)


@dataclass
class FoleyModels:
    spec: ModelSpec
    dit: FoleyDiT
    vae: DACVAE
    synchformer: Synchformer
    siglip: SigLIP2Encoder
    clap: ClapTextEncoder
    source: str  # where the weights came from (directory, repo id, or "tiny-random")
    random_weights: bool = False  # outputs must then be labelled as noise
    stored_fp8: frozenset[str] = frozenset()  # transformer GEMMs whose file stores e4m3 weights
    denoiser: Denoiser | None = None  # the transformer as the sampler runs it (`place`)
    offloader: ModelOffloader | None = None  # --offload model / blocks:N

    def place(self, runtime: RuntimeConfig, graphs: BlockGraphs | None = None) -> FoleyModels:
        """Put every network where the runtime's memory mode wants it, in its dtype and eval
        mode, and build the transformer's denoiser (`graphs`: compiled block graphs being
        preloaded). The transformer is transformed where its weights then are: the GPU
        normally, the host for the offload modes (whose point is never holding it whole on
        the GPU)."""
        offload = runtime.offload.kind is not OffloadKind.NONE
        home = torch.device("cpu") if offload else runtime.device
        self.dit.to(home, runtime.dtype).eval().requires_grad_(False)
        self.vae.to(home, runtime.vae_dtype).eval().requires_grad_(False)
        for enc in (self.synchformer, self.siglip, self.clap):
            enc.to(home, runtime.encoder_dtype).eval().requires_grad_(False)
        self.denoiser = apply(self.dit, runtime, stored_fp8=self.stored_fp8, graphs=graphs)
        if offload:
            streamed = (self.denoiser.streamer.tensor_ids
                        if isinstance(self.denoiser, StreamedDenoiser) else frozenset())
            self.offloader = ModelOffloader(self.networks, runtime.device, exclude=streamed)
        return self

    @property
    def networks(self) -> tuple[torch.nn.Module, ...]:
        return (self.dit, self.vae, self.synchformer, self.siglip, self.clap)

    def stage(self, *networks: torch.nn.Module) -> AbstractContextManager[None]:
        """`networks` on the GPU for one stage of a request (a no-op without `--offload`)."""
        if self.offloader is None:
            return nullcontext()
        return self.offloader.on_device(*networks)


def model_spec(size: str) -> ModelSpec:
    try:
        return PRESETS[size]
    except KeyError:
        raise UsageError(f"unknown model size {size!r}; choose xxl or xl") from None


def load_models(model: str = HUB_REPO, size: str = "xxl", *, runtime: RuntimeConfig) -> FoleyModels:
    """Load the released weights of `size` from `model` (a directory or hub repo id), or build
    the tiny random model for `model == "tiny-random"`, or `size` with random weights for
    `model == "random"` (the transformer filled on the runtime's device)."""
    if model == TINY_RANDOM:
        return random_models().place(runtime)
    spec = model_spec(size)
    if model == RANDOM:
        graphs = preload(runtime)
        dit = random_transformer(spec.dit, runtime.device, runtime.dtype, RANDOM_SEED)
        return random_models(spec, dit=dit).place(runtime, graphs)
    files = resolve_files(model, [spec.dit_file, spec.vae_file, spec.synchformer_file])
    graphs = preload(runtime)  # on a thread, while the weights load
    dit, stored_fp8 = load_dit(files[spec.dit_file], spec.dit, runtime)
    vae = load_dac(files[spec.vae_file], decoder_only=True, dtype=runtime.vae_dtype)
    synchformer = load_synchformer(files[spec.synchformer_file], spec.synchformer,
                                   dtype=runtime.encoder_dtype)
    siglip = SigLIP2Encoder.from_pretrained(spec.siglip_repo)
    clap = ClapTextEncoder.from_pretrained(spec.clap_repo, text_length=spec.dit.text_length)
    return FoleyModels(spec, dit, vae, synchformer, siglip, clap, model,
                       stored_fp8=stored_fp8).place(runtime, graphs)


def load_denoiser(model: str, size: str, runtime: RuntimeConfig) -> Denoiser:
    """The transformer of `load_models(model, size)` alone, placed and made the sampler's
    denoiser: what the second rank of `--parallel cfg` runs (it needs no encoder or VAE)."""
    if model == TINY_RANDOM:
        denoiser = random_models().place(runtime).denoiser  # tiny: the rest costs nothing
        assert denoiser is not None
        return denoiser
    spec = model_spec(size)
    graphs = preload(runtime)
    if model == RANDOM:
        dit = random_transformer(spec.dit, runtime.device, runtime.dtype, RANDOM_SEED)
        stored_fp8: frozenset[str] = frozenset()
    else:
        files = resolve_files(model, [spec.dit_file])
        dit, stored_fp8 = load_dit(files[spec.dit_file], spec.dit, runtime)
    dit.to(runtime.device, runtime.dtype).eval().requires_grad_(False)
    return apply(dit, runtime, stored_fp8=stored_fp8, graphs=graphs)


def load_dit(
    path: str | Path, cfg: DiTConfig, runtime: RuntimeConfig
) -> tuple[FoleyDiT, frozenset[str]]:
    """The transformer built on meta with `path`'s tensors assigned in the compute dtype (fp8
    ones upcast, exactly), and, for precision fp8, the GEMMs whose float8_e4m3fn weights
    `place` then uses as stored. A calibration is checked against the model before the file
    is read."""
    with torch.device("meta"):
        dit = FoleyDiT(cfg)
    if runtime.quantized and runtime.calibration is not None:
        runtime.calibration.check(dit, quantizable_modules(dit))
    ckpt = read_checkpoint(path)
    stored = stored_fp8_modules(ckpt, cfg)
    load_into(dit, ckpt.state_dict, file=ckpt.path, dtype=runtime.dtype)
    return dit, stored if runtime.precision is Precision.FP8 else frozenset()


def random_models(
    spec: ModelSpec = TINY, seed: int = 0, dit: FoleyDiT | None = None
) -> FoleyModels:
    """Every component of `spec` with deterministic random weights (the tiny spec by default;
    a released spec gives real-size random networks for benchmarks). `dit` may be given
    pre-built (e.g. filled on the GPU: billions of CPU random numbers are slow)."""
    log.warning("model %r has RANDOM weights: its output is noise, for tests and benchmarks",
                spec.name)
    full = not spec.random_only
    dit = dit if dit is not None else randomize_(FoleyDiT(spec.dit), seed)
    vae = random_vae(spec.dac, seed + 1)
    synchformer = randomize_(Synchformer(spec.synchformer), seed + 2)
    siglip = SigLIP2Encoder.random(spec.dit.clip_dim, seed + 3, full_size=full)
    clap = ClapTextEncoder.random(spec.dit.text_dim, seed + 4, text_length=spec.dit.text_length,
                                  full_size=full)
    source = TINY_RANDOM if spec is TINY else f"random-{spec.name}"
    return FoleyModels(spec, dit, vae, synchformer, siglip, clap, source, random_weights=True)
