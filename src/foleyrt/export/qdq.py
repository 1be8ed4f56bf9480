"""The Q/DQ rewrite that turns an exported graph into an INT8/FP8 one.

Quantised graphs (`insert_qdq`) follow TensorRT's explicit quantisation: a Quantize/Dequantize
pair on the activation and on the weight of every GEMM named in a calibration file, nothing
else changed; onnxruntime runs them too, so the rewrite is checked without a GPU.

The activation ranges come from a calibration file (`accel.calibration` owns its format).
Entries for modules that `prepare` runs once per request (text K/V, visual and sync
projections) are allowed and ignored: they are not in the step graph. Weights need no entry:
their scales come from the weights (INT8 per output channel, FP8 per tensor). Modules without
an entry stay bf16.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from foleyrt.accel.engine_io import META, WRAPPED
from foleyrt.errors import ConfigError

FP8_MIN_OPSET = 19
SCOPES_KEY = "pkg.torch.onnx.name_scopes"  # module path the exporter records on every node


@dataclass(frozen=True)
class QuantFormat:
    """A quantised type as ONNX stores it. Weights: per output channel for INT8, per tensor
    for FP8 (the granularities TensorRT's GEMMs take)."""

    elem_type: int  # onnx.TensorProto data type
    qmax: float
    per_channel: bool
    min_opset: int


def quant_formats() -> dict[str, QuantFormat]:
    from onnx import TensorProto

    return {"int8": QuantFormat(TensorProto.INT8, 127.0, True, 13),
            "fp8": QuantFormat(TensorProto.FLOAT8E4M3FN, 448.0, False, FP8_MIN_OPSET)}


def insert_qdq(
    src: str | Path, dst: str | Path, amax: Mapping[str, float], fmt: str
) -> list[str]:
    """Write `src` with Q/DQ pairs on the input and weight of every GEMM whose module is in
    `amax` (transformer module names); returns those modules. `dst` must sit beside `src`: its
    weights keep pointing at `src`'s external data. Calibrated modules outside the graph (those
    `prepare` runs once per request) are left out; none matching at all is an error."""
    import onnx

    src, dst = Path(src), Path(dst)
    if src.parent.resolve() != dst.parent.resolve():
        raise ConfigError("the quantised graph must be written beside its source graph")
    spec = quant_formats()[fmt]
    model = onnx.load(str(src), load_external_data=False)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < spec.min_opset:
        raise ConfigError(f"{fmt} needs a graph exported with --opset {spec.min_opset} or newer "
                          f"({src} has {opset})")
    graph = model.graph
    weights = _ConstantFolder(graph, src.parent)
    nodes: list[Any] = []
    matched: set[str] = set()
    for node in graph.node:
        module = _module_of(node) if node.op_type in ("MatMul", "Gemm") else None
        w = weights.value(node.input[1]) if module in amax else None
        if module is not None and w is not None:
            matched.add(module)
            trans_b = any(a.name == "transB" and a.i for a in node.attribute)
            axis = 0 if trans_b else w.ndim - 1  # the output-channel axis of B
            reduce = tuple(i for i in range(w.ndim) if i != axis)
            w_amax = np.abs(w).max(axis=reduce) if spec.per_channel else np.abs(w).max()
            for slot, tag, value, q_axis in (
                (0, "input", amax[module], None),
                (1, "weight", w_amax, axis if spec.per_channel else None),
            ):
                node.input[slot] = _quantize_dequantize(graph, nodes, node.input[slot],
                                                        f"{module}.{tag}", value, spec, q_axis)
        nodes.append(node)
    if not matched:
        raise ConfigError(f"no calibrated module matches a GEMM of {src.name} (e.g. "
                          f"{next(iter(amax))!r}): calibration and graph are of different models")
    del graph.node[:]
    graph.node.extend(nodes)
    model.metadata_props.add(key=META + "quantized", value=fmt)
    onnx.save(model, str(dst))
    return sorted(matched)


def _quantize_dequantize(graph: Any, nodes: list, tensor: str, prefix: str, amax: Any,
                         spec: QuantFormat, axis: int | None) -> str:
    """Append a Quantize/Dequantize pair for `tensor` (scale `amax / qmax`, zero point 0) to
    `nodes`, its constants to `graph`; returns the dequantised tensor's name."""
    from onnx import helper, numpy_helper

    scale = np.maximum(np.asarray(amax, np.float32), np.finfo(np.float32).tiny) / spec.qmax
    graph.initializer.extend([
        numpy_helper.from_array(scale.astype(np.float32), f"{prefix}_scale"),
        helper.make_tensor(f"{prefix}_zero_point", spec.elem_type, scale.shape, [0] * scale.size),
    ])
    params = [f"{prefix}_scale", f"{prefix}_zero_point"]
    attrs: dict[str, Any] = {} if axis is None else {"axis": axis}
    nodes.append(helper.make_node("QuantizeLinear", [tensor, *params], [f"{prefix}_q"],
                                  name=f"{prefix}_quantize", **attrs))
    nodes.append(helper.make_node("DequantizeLinear", [f"{prefix}_q", *params], [f"{prefix}_dq"],
                                  name=f"{prefix}_dequantize", **attrs))
    return f"{prefix}_dq"


def _module_of(node: Any) -> str | None:
    """The transformer module a node was traced in (innermost scope), without the wrapper."""
    for prop in node.metadata_props:
        if prop.key == SCOPES_KEY:
            scopes = ast.literal_eval(prop.value)
            if len(scopes) >= 2 and scopes[-2].startswith(WRAPPED + "."):
                return scopes[-2][len(WRAPPED) + 1:]
    return None


class _ConstantFolder:
    """Values of weight tensors: initializers, possibly reshaped/transposed by the exporter
    (the temporal convs' `weight.flatten(1).T`). Anything else is not a weight."""

    def __init__(self, graph: Any, base_dir: Path) -> None:
        self.inits = {i.name: i for i in graph.initializer}
        self.producers = {o: n for n in graph.node for o in n.output}
        self.base_dir = str(base_dir)

    def value(self, name: str) -> np.ndarray | None:
        from onnx import helper, numpy_helper

        if name in self.inits:
            return numpy_helper.to_array(self.inits[name], self.base_dir)
        node = self.producers.get(name)
        if node is None:
            return None
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Constant" and "value" in attrs:
            return numpy_helper.to_array(attrs["value"])
        x = self.value(node.input[0]) if node.input else None
        if x is None:
            return None
        if node.op_type == "Transpose":
            return x.transpose(attrs.get("perm"))
        if node.op_type == "Reshape":
            shape = self.value(node.input[1])
            if shape is None:
                return None
            dims = [x.shape[i] if s == 0 else s for i, s in enumerate(shape.tolist())]
            return x.reshape(dims)
        return None
