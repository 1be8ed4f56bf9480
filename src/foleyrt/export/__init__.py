"""Export of the transformer's per-step call and of the VAE decoder (`foleyrt export`).

- `export.onnx`: ONNX graphs with dynamic lengths, validated against PyTorch with onnxruntime,
  and the Q/DQ rewrite that turns a calibration file into an INT8/FP8 graph.
- `export.tensorrt`: engines built from those graphs (profiles, precision, timing cache, a
  JSON sidecar keying an engine cache) and `TensorRTDenoiser`, the engine behind
  `--accel tensorrt`.

Behind extras: `onnx`/`onnxruntime`/`onnxscript` come with `foleyrt[export]`, `tensorrt` with
`foleyrt[tensorrt]`. Nothing here is imported by the runtime unless one of these is asked for.
"""
