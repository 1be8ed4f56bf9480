"""Export of the transformer's per-step call and of the VAE decoder (`foleyrt export`).

- `export.onnx`: ONNX graphs with dynamic lengths, validated against PyTorch with onnxruntime
  (the graphs' interface, shared with the engine denoiser, is `accel.engine_io`).
- `export.qdq`: the Q/DQ rewrite that turns a calibration file (`accel.calibration`) into an
  INT8/FP8 graph.
- `export.build_config`: what engine to build (precision, profile in seconds, builder settings).
- `export.tensorrt`: engines built from those graphs (cache key, timing cache) into the engine
  cache (`accel.engines`) that `--accel tensorrt` (`accel.tensorrt`) runs from.

Behind extras: `onnx`/`onnxruntime`/`onnxscript` come with `foleyrt[export]`, `tensorrt` with
`foleyrt[tensorrt]`. Nothing here is imported by the runtime.
"""
