"""Acceleration: how the transformer runs, as transforms of the built model, never branches
inside it.

- `runtime`: `RuntimeConfig`, the typed, validated options (device, dtypes, acceleration mode,
  precision and calibration, memory mode, engine); `process`: the process-wide settings.
- `recipes`: `apply(dit, runtime) -> Denoiser`, the ordered recipes (precision -> streaming or
  fusion -> compile -> CUDA graphs; or a TensorRT engine), each switchable.
- The recipes' parts: `quant` (fp8/int8 GEMMs) with `calibration` (the ranges file),
  `offload` (model offloading, streamed blocks), `fused` + `kernels` (Triton kernels),
  `compile` (saved compiled block graphs), `cudagraph`, `tensorrt` + `engines` + `engine_io`.
"""
