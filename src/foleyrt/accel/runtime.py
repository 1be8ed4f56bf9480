"""`RuntimeConfig`: where and how the models run, typed and validated once.

Every option that shapes a run (device, dtypes, acceleration mode, transformer precision with
its calibration, memory mode, TensorRT engine, CFG-parallel) is parsed into a type here, and
every combination that cannot work is refused here with one line, before a weight is read.
Nothing below `accel` needs it: the models take plain dtypes, and the recipes (`accel.recipes`)
read it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TypeVar

import torch

from foleyrt.accel.calibration import Calibration, read_calibration
from foleyrt.errors import ConfigError

log = logging.getLogger(__name__)

E = TypeVar("E", bound=Enum)


class AccelMode(str, Enum):
    """How the transformer's velocity is computed: the module as written (`eager`), compiled
    blocks + fused kernels + CUDA graphs (`compile`, CUDA only), or a TensorRT engine built by
    `foleyrt export tensorrt` (`tensorrt`)."""

    EAGER = "eager"
    COMPILE = "compile"
    TENSORRT = "tensorrt"


HIGH_PRIORITY = -100  # CUDA stream priority: lower is higher (`RuntimeConfig.priority_stream`)
AUTO_ACCEL = "auto"  # compile where it runs (CUDA), eager elsewhere: the asked-for fallback


class Precision(str, Enum):
    """The transformer's precision: a compute dtype (bf16, fp16) or quantised GEMMs."""

    BF16 = "bf16"
    FP16 = "fp16"
    FP8 = "fp8"
    INT8_WEIGHT = "int8-weight"
    INT8 = "int8"

    @property
    def quantized(self) -> bool:
        return self in (Precision.FP8, Precision.INT8_WEIGHT, Precision.INT8)

    @property
    def uses_calibration(self) -> bool:
        """int8 needs activation ranges; fp8 turns them into static scales (faster)."""
        return self in (Precision.FP8, Precision.INT8)


class OffloadKind(str, Enum):
    NONE = "none"
    MODEL = "model"
    BLOCKS = "blocks"


@dataclass(frozen=True)
class OffloadPlan:
    """`--offload`: `none`, `model` (networks in pinned host memory, brought in per stage) or
    `blocks:N` (transformer blocks streamed through N GPU slots); see `accel/offload.py`."""

    kind: OffloadKind = OffloadKind.NONE
    slots: int = 0

    @classmethod
    def parse(cls, text: str) -> OffloadPlan:
        if text in ("none", "model"):
            return cls(OffloadKind(text))
        if text.startswith("blocks:"):
            count = text.split(":", 1)[1]
            if count.isdigit() and int(count) >= 2:
                return cls(OffloadKind.BLOCKS, int(count))
        raise ConfigError(f"unknown offload mode {text!r}; use none, model or blocks:N (N >= 2)")

    def __str__(self) -> str:
        return f"blocks:{self.slots}" if self.kind is OffloadKind.BLOCKS else self.kind.value


class ParallelMode(str, Enum):
    """`--parallel`: one process on one device (`none`), or one request's classifier-free
    guidance split over two processes (`cfg`: the unconditional rows on `device`, the
    conditional rows on the next GPU; see `accel/parallel.py`)."""

    NONE = "none"
    CFG = "cfg"


DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


def parse_enum(kind: type[E], value: E | str, what: str) -> E:
    """`value` as a member of `kind`, or one line naming the choices."""
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(str(m.value) for m in kind)
        raise ConfigError(f"unknown {what} {value!r}; choose one of {choices}") from None


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown dtype {name!r}; choose one of: fp32, bf16, fp16") from None


def parse_device(name: str) -> torch.device:
    """`auto` picks CUDA, then MPS, then CPU; an unavailable device is a clear error. A GPU
    comes back `indexed`."""
    if name == "auto":
        if torch.cuda.is_available():
            return indexed(torch.device("cuda"))
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} requested but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {name!r} requested but only {torch.cuda.device_count()} GPU(s) exist"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps' requested but MPS is not available here")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return indexed(device)


def indexed(device: torch.device) -> torch.device:
    """A GPU with its index (`cuda` is the current one): `torch.cuda.set_device`, which every
    worker thread calls, refuses a device without one, and `cuda` and `cuda:0` are one GPU."""
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return device


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how the models run. `dtype` is the transformer's compute dtype (the release
    runs it in bf16 on GPUs), `encoder_dtype` that of SigLIP2, CLAP and Synchformer, `vae_dtype`
    the VAE's. `calibration` is the loaded file (activation ranges: int8 needs them, fp8 turns
    them into static scales); `engine` a TensorRT plan (None: the newest fitting one in the
    engine cache); `parallel` cfg splits each request's guidance over two devices (a second
    process: `FoleyPipeline.from_pretrained` starts it). Strings are accepted for the typed
    fields and parsed; conflicts raise here. `RuntimeConfig.build` is the front ends'
    constructor (device names, the dtype default, the calibration file, kernel availability)."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    encoder_dtype: torch.dtype = torch.float32
    vae_dtype: torch.dtype = torch.float32
    accel: AccelMode = AccelMode.EAGER
    precision: Precision | None = None
    offload: OffloadPlan = field(default_factory=OffloadPlan)
    calibration: Calibration | None = None
    engine: Path | None = None
    parallel: ParallelMode = ParallelMode.NONE

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", indexed(torch.device(self.device)))
        object.__setattr__(self, "accel", parse_enum(AccelMode, self.accel, "acceleration mode"))
        object.__setattr__(self, "parallel",
                           parse_enum(ParallelMode, self.parallel, "parallel mode"))
        if self.precision is not None:
            object.__setattr__(self, "precision",
                               parse_enum(Precision, self.precision, "precision"))
        if isinstance(self.offload, str):
            object.__setattr__(self, "offload", OffloadPlan.parse(self.offload))
        if self.engine is not None:
            object.__setattr__(self, "engine", Path(self.engine))
        self._check()

    def _check(self) -> None:
        check_conflicts(self.device, self.dtype, self.accel, self.precision, self.offload,
                        calibrated=self.calibration is not None, engine=self.engine,
                        parallel=self.parallel)

    @property
    def quantized(self) -> bool:
        """The PyTorch transformer's GEMMs are quantised (an engine carries its own)."""
        return self.precision is not None and self.precision.quantized

    @property
    def fast_encoders(self) -> bool:
        """Faster encoders (SigLIP2 under fp16 autocast on CUDA, TF32 matmuls elsewhere): the
        accelerated modes trade the release's full fp32 for a faster SigLIP2 (the bench
        reports the audio-level distance)."""
        return self.accel is not AccelMode.EAGER

    @property
    def compiles_encoders(self) -> bool:
        """SigLIP2 and Synchformer can be compiled too (`FoleyPipeline.compile_encoders`, which
        batch and serving call): with the compiled transformer, where the encoders stay on the
        GPU (an offloader moves them)."""
        return self.accel is AccelMode.COMPILE and self.offload.kind is OffloadKind.NONE

    def priority_stream(self) -> torch.cuda.Stream | None:
        """A new CUDA stream whose kernels the GPU serves before the default stream's (the
        transformer's): the encoders' many small kernels beside it would otherwise wait for
        SMs behind its GEMMs (docs/benchmarks.md §6). PyTorch clamps the priority to the
        highest the GPU has. None off CUDA."""
        if self.device.type != "cuda":
            return None
        return torch.cuda.Stream(self.device, priority=HIGH_PRIORITY)

    @classmethod
    def build(
        cls, device: str = "auto", dtype: str | None = None, *, accel: str = "eager",
        precision: str | None = None, offload: str = "none",
        calibration: str | Path | None = None, engine: str | Path | None = None,
        parallel: str = "none",
    ) -> RuntimeConfig:
        """From the front ends' words: `device` auto/cpu/cuda[:N]/mps; `dtype` None gives bf16
        on CUDA (like the release) and fp32 elsewhere (a bf16/fp16 `precision` is that
        dtype; quantised precisions compute in bf16 on GPUs); `accel` eager, compile,
        tensorrt or auto (compile on CUDA, eager elsewhere); `calibration` a file, read here
        once; `parallel` none or cfg. A quantised precision's kernels are tried on the device
        here too."""
        dev = parse_device(device)
        mode = precision_of = None
        if precision is not None:
            precision_of = parse_enum(Precision, precision, "precision")
        if dtype is not None:
            compute = parse_dtype(dtype)
        elif precision_of in (Precision.BF16, Precision.FP16):
            compute = parse_dtype(precision_of.value)
        else:
            compute = torch.bfloat16 if dev.type == "cuda" else torch.float32
        if accel == AUTO_ACCEL:
            mode = AccelMode.COMPILE if dev.type == "cuda" else AccelMode.EAGER
            log.info("--accel auto: %s on %s", mode.value, dev.type)
        else:
            mode = parse_enum(AccelMode, accel, "acceleration mode")
        plan = OffloadPlan.parse(offload)
        engine_path = None if engine is None else Path(engine)
        split = parse_enum(ParallelMode, parallel, "parallel mode")
        # The options' conflicts before the file is read (the constructor checks them again).
        check_conflicts(dev, compute, mode, precision_of, plan,
                        calibrated=calibration is not None, engine=engine_path, parallel=split)
        runtime = cls(device=dev, dtype=compute, accel=mode, precision=precision_of,
                      offload=plan,
                      calibration=None if calibration is None else read_calibration(calibration),
                      engine=engine_path, parallel=split)
        if runtime.quantized:
            from foleyrt.accel.quant import require_kernels

            assert runtime.precision is not None
            require_kernels(runtime.precision.value, dev, compute)
        return runtime


def check_conflicts(device: torch.device, dtype: torch.dtype, accel: AccelMode,
                    precision: Precision | None, offload: OffloadPlan, *, calibrated: bool,
                    engine: Path | None, parallel: ParallelMode = ParallelMode.NONE) -> None:
    """Every combination of runtime options that cannot work, as one line."""
    cuda = device.type == "cuda"
    kind = offload.kind
    if parallel is ParallelMode.CFG:
        check_cfg_parallel(device, offload)
    if accel is AccelMode.COMPILE and not cuda:
        raise ConfigError(f"--accel compile needs a CUDA device (have {device.type}); use "
                          "--accel eager, or --accel auto to compile only where it can")
    if accel is AccelMode.TENSORRT and not cuda:
        raise ConfigError(f"--accel tensorrt needs a CUDA device (have {device.type})")
    if kind is not OffloadKind.NONE and not cuda:
        raise ConfigError("--offload moves weights between host and GPU memory: it needs a "
                          "CUDA device")
    if accel is AccelMode.COMPILE and kind is OffloadKind.BLOCKS:
        raise ConfigError("--offload blocks:N streams weights between blocks, which compiled "
                          "blocks cannot do: use --accel eager with it, or --offload model")
    if accel is AccelMode.TENSORRT:
        if precision is not None and precision.quantized:
            raise ConfigError(f"--accel tensorrt runs the engine's own precision (chosen by "
                              f"'foleyrt export tensorrt --precision'); drop --precision "
                              f"{precision.value}")
        if kind is OffloadKind.BLOCKS:
            raise ConfigError("--offload blocks:N streams the PyTorch transformer's blocks; a "
                              "TensorRT engine holds its own weights")
    elif engine is not None:
        raise ConfigError("--engine is the TensorRT plan of --accel tensorrt")
    if precision is Precision.INT8 and not calibrated:
        raise ConfigError("--precision int8 needs activation statistics: run `foleyrt "
                          "calibrate` and pass --calibration FILE")
    if calibrated and (precision is None or not precision.uses_calibration):
        raise ConfigError("--calibration is used by --precision int8 or fp8 only")
    compute = {Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}
    if precision in compute and compute[precision] != dtype:
        raise ConfigError(f"--precision {precision.value} is the compute dtype; it contradicts "
                          f"--dtype {str(dtype).removeprefix('torch.')}")


def check_cfg_parallel(device: torch.device, offload: OffloadPlan) -> None:
    """`--parallel cfg` runs on two GPUs of this host (NCCL), or on the CPU (gloo: two CPU
    processes, for tests), and holds the whole transformer on each device."""
    if device.type == "cuda":
        first = device.index or 0
        if torch.cuda.device_count() < first + 2:
            raise ConfigError(f"--parallel cfg needs two GPUs, {device} and the next one; this "
                              f"host has {torch.cuda.device_count()}")
    elif device.type != "cpu":
        raise ConfigError(f"--parallel cfg runs on CUDA GPUs (or the CPU, for tests), not "
                          f"{device.type}")
    if offload.kind is not OffloadKind.NONE:
        raise ConfigError("--parallel cfg holds the transformer on each of two GPUs; --offload "
                          "is for one GPU too small for it: use one or the other")
