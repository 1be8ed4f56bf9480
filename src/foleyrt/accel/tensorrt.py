"""`--accel tensorrt`: the transformer's velocity on a TensorRT engine, as a `Denoiser`.

Engines are built by `foleyrt export tensorrt` (`export.tensorrt`) into the engine cache
(`accel.engines`). For each forward, `EngineDenoiser.prepare` runs the module's own `prepare`
(the step-invariant projections, RoPE tables), picks the plan (`--engine`, or the newest cached
one whose profile covers the request), and binds the prepared conditions once, flattened by the
same function that defines the graph's inputs (`engine_io.condition_feeds`) and cast to the
engine's input types; each step binds the latent and the timesteps and returns a fresh tensor.
The engine carries its own copy of the weights (its sidecar's `key.weights_sha256` names them).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from foleyrt.accel.engine_io import AUDIO_LEN, BATCH, TEXT_LEN, VISUAL_LEN, condition_feeds
from foleyrt.accel.engines import BuildEnv, EngineCache, EngineSidecar, select_engine, uncovered
from foleyrt.config import config_digest
from foleyrt.errors import ConfigError, DependencyError
from foleyrt.models.dit import FoleyDiT, PreparedConditions
from foleyrt.sampling.conditions import ConditionRows
from foleyrt.sampling.denoiser import Velocity
from foleyrt.sampling.schedule import Schedule

log = logging.getLogger(__name__)

OUTPUT = "velocity"


def require_tensorrt() -> Any:
    """The `tensorrt` module, or a one-line error saying how to get it."""
    try:
        import tensorrt
    except ImportError:
        raise DependencyError(
            "TensorRT is not installed: pip install 'foleyrt[tensorrt]' on a machine with an "
            "NVIDIA GPU (the engine is built for, and runs on, that GPU)"
        ) from None
    return tensorrt


def current_env(trt: Any) -> BuildEnv:
    if not torch.cuda.is_available():
        raise ConfigError("TensorRT engines are built for and run on a CUDA GPU; none is visible")
    major, minor = torch.cuda.get_device_capability()
    return BuildEnv(f"sm_{major}{minor}", torch.cuda.get_device_name(), trt.__version__)


def request_dims(prepared: PreparedConditions) -> dict[str, int]:
    """The velocity graph's axes for one forward's prepared conditions."""
    return {BATCH: prepared.visual.shape[0], AUDIO_LEN: prepared.audio_len,
            VISUAL_LEN: prepared.visual.shape[1], TEXT_LEN: prepared.text_k[0].shape[2]}


class TensorRTEngine:
    """One deserialised velocity plan and its execution context."""

    def __init__(self, plan: str | Path, device: torch.device | str = "cuda") -> None:
        trt = require_tensorrt()
        self.plan = Path(plan)
        self.sidecar = EngineSidecar.read(self.plan.with_suffix(".json"))
        env = current_env(trt)
        key = self.sidecar.key
        if (key.gpu_arch, key.tensorrt_version) != (env.gpu_arch, env.tensorrt_version):
            raise ConfigError(f"{self.plan} was built for {key.gpu_arch} with TensorRT "
                              f"{key.tensorrt_version}, this is {env.gpu_arch} with "
                              f"{env.tensorrt_version}: rebuild it with 'foleyrt export tensorrt'")
        self.device = torch.device(device)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(self.plan.read_bytes())
        if self.engine is None:
            raise ConfigError(f"{self.plan}: TensorRT could not load this engine")
        self.context = self.engine.create_execution_context()
        to_torch = {trt.float32: torch.float32, trt.float16: torch.float16,
                    trt.bfloat16: torch.bfloat16, trt.int32: torch.int32, trt.int64: torch.int64}
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.dtypes = {n: to_torch[self.engine.get_tensor_dtype(n)] for n in names}

    def velocity(self, prepared: PreparedConditions, timesteps: Tensor) -> Velocity:
        """The per-step call on this engine for one forward's prepared conditions: those
        cast and bound once, the latent and timesteps every step (the engine computes the
        timestep work itself)."""
        bad = uncovered(self.sidecar.key, request_dims(prepared))
        if bad:
            raise ConfigError(f"request outside the engine's profile ({', '.join(bad)}): build "
                              "an engine for these lengths with 'foleyrt export tensorrt'")
        conds = {name: t.to(self.device, self.dtypes[name]).contiguous()
                 for name, t in condition_feeds(prepared).items()}
        ctx = self.context

        def run(x: Tensor, step: int) -> Tensor:
            t = timesteps[step].expand(x.shape[0])
            feeds = {"x": x.to(self.dtypes["x"]).contiguous(),
                     "t": t.to(self.dtypes["t"]).contiguous(), **conds}
            for name, tensor in feeds.items():
                ctx.set_input_shape(name, tuple(tensor.shape))
                ctx.set_tensor_address(name, tensor.data_ptr())
            out = torch.empty(tuple(ctx.get_tensor_shape(OUTPUT)), dtype=self.dtypes[OUTPUT],
                              device=self.device)
            ctx.set_tensor_address(OUTPUT, out.data_ptr())
            if not ctx.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
                raise RuntimeError(f"TensorRT failed to run {self.plan.name}")
            return out

        return run


class EngineDenoiser:
    """The transformer's velocity on TensorRT engines: `plan` if given, else per forward the
    newest cached plan for this model, GPU and request. Loaded engines are kept by this object
    (an XXL engine takes seconds to deserialise). The graphs take no text mask: requests share
    a forward only when their texts have one length."""

    text_masks = False

    def __init__(self, model: FoleyDiT, plan: Path | None = None,
                 precision: str | None = None, cache: EngineCache | None = None) -> None:
        self.model = model
        self.plan = plan
        self.precision = precision
        self.cache = cache
        self.config = config_digest(model.config)
        self.engines: dict[Path, TensorRTEngine] = {}

    def prepare(self, rows: ConditionRows, schedule: Schedule) -> Velocity:
        prepared = self.model.prepare(rows.clip, rows.text, rows.sync, rows.audio_len)
        plan = self.plan
        if plan is None:
            env = current_env(require_tensorrt())
            plan = select_engine(self.cache or EngineCache(), env, self.config,
                                 request_dims(prepared), self.precision)
        path = Path(plan).resolve()
        engine = self.engines.get(path)
        if engine is None:
            engine = self.engines[path] = TensorRTEngine(path, prepared.visual.device)
        if engine.sidecar.config_sha256 != self.config:
            raise ConfigError(f"{path} was exported from another model configuration than the "
                              "loaded transformer's")
        return engine.velocity(prepared, schedule.timesteps.to(prepared.visual.device))
