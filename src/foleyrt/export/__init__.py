"""Export of the transformer's per-step call and of the VAE decoder (`foleyrt export`).

- `export.graph`: the graphs' interface (inputs, axis names, metadata keys, traced wrappers),
  shared by everything below.
- `export.onnx`: ONNX graphs with dynamic lengths, validated against PyTorch with onnxruntime.
- `export.qdq`: the calibration file and the Q/DQ rewrite that turns it into an INT8/FP8 graph.
- `export.build_config`: what engine to build (precision, profile in seconds, builder settings).
- `export.engine_cache`: which engine that is (cache key, JSON sidecar) and the engine cache.
- `export.tensorrt`: engines built from those graphs (timing cache included) and
  `TensorRTDenoiser`, the engine behind `--accel tensorrt`.

Behind extras: `onnx`/`onnxruntime`/`onnxscript` come with `foleyrt[export]`, `tensorrt` with
`foleyrt[tensorrt]`. Nothing here is imported by the runtime unless one of these is asked for.
"""
