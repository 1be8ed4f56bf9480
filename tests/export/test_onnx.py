"""ONNX export on the tiny config: onnxruntime (CPU) against PyTorch, fp32.

One exported velocity graph serves every length and row count below (the axes are dynamic);
the decoder is exported with the external-data path forced on. The Q/DQ rewrite is checked to
run and to stay close to fp32. The velocity export dominates the run time (~20 s on 2 cores),
so it happens once per module.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import onnx
from safetensors.torch import save_file

from foleyrt.accel.calibration import AMAX_FORMAT, AMAX_VERSION, read_calibration
from foleyrt.accel.engine_io import (
    DECODER,
    VELOCITY,
    condition_feeds,
    velocity_feeds,
    velocity_signature,
)
from foleyrt.cli import main
from foleyrt.config import (
    TINY,
    config_digest,
)
from foleyrt.errors import ConfigError, DependencyError
from foleyrt.export.onnx import (
    DEFAULT_OPSET,
    MIN_OPSET,
    ExportConfig,
    decoder_cases,
    export_decoder,
    export_velocity,
    read_graph,
    require_onnx,
    validate,
    velocity_cases,
    weights_sha256,
)
from foleyrt.export.qdq import insert_qdq
from foleyrt.models.dac_vae import DACVAE
from foleyrt.models.dit import FoleyDiT
from foleyrt.models.layers import Linear, TemporalConv
from foleyrt.models.random_init import random_vae, randomize_

FP32_BOUND = 1e-4  # issue 4: onnxruntime vs PyTorch, tiny config, fp32
PREPARE_ONLY = ("cond_in.", "visual_proj.", "sync_in.", "text_cross_kv")  # not in the step graph


@pytest.fixture(scope="module")
def dit() -> FoleyDiT:
    return randomize_(FoleyDiT(TINY.dit), 0).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def velocity_onnx(dit: FoleyDiT, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_velocity(dit, tmp_path_factory.mktemp("onnx") / "velocity.onnx",
                           source="tiny-random")


@pytest.fixture(scope="module")
def vae() -> DACVAE:
    """The tiny-random VAE: well conditioned by construction (`random_vae`), so fp32 is close
    to fp64 and the bound below measures the export, not the rounding."""
    return random_vae(TINY.dac, 1).eval().requires_grad_(False)


def test_velocity_matches_pytorch_at_several_lengths(dit: FoleyDiT, velocity_onnx: Path) -> None:
    # Traced at 2 s and 2 rows; checked at 1, 3 and 5 s, with 1 and 3 rows.
    cases = velocity_cases(dit, [1.0, 3.0], rows=1) + velocity_cases(dit, [5.0], rows=3)
    assert len({tuple(feeds["x"].shape) for feeds, _ in cases}) == 3
    errors = validate(velocity_onnx, cases)
    assert max(errors) <= FP32_BOUND, errors


def test_velocity_identity_gather(dit: FoleyDiT, velocity_onnx: Path) -> None:
    """Equal lengths: `prepare` gathers nothing and the graph is fed the identity index."""
    gen = torch.Generator().manual_seed(3)
    cfg = dit.config
    prepared = dit.prepare(torch.randn(2, 40, cfg.clip_dim, generator=gen),
                           torch.randn(2, 77, cfg.text_dim, generator=gen),
                           torch.randn(2, 16, cfg.sync_feat_dim, generator=gen), 40)
    assert prepared.rope.visual_gather is None
    x, t = torch.randn(2, cfg.audio_vae_latent_dim, 40, generator=gen), torch.tensor([900., 10.])
    with torch.no_grad():
        reference = dit.velocity(x, t, prepared)
    assert validate(velocity_onnx, [(velocity_feeds(prepared, x, t), reference)])[0] <= FP32_BOUND


def test_velocity_graph_signature(dit: FoleyDiT, velocity_onnx: Path) -> None:
    info = read_graph(velocity_onnx)
    assert info.kind == VELOCITY
    assert info.opset == DEFAULT_OPSET >= MIN_OPSET
    assert info.inputs == velocity_signature(dit)
    assert info.files == [velocity_onnx]  # small: weights inline, no .data file
    assert not velocity_onnx.with_name("velocity.onnx.data").exists()
    assert info.metadata["weights_sha256"] == weights_sha256(dit)
    # The engine sidecar's model check: the stored config digests like the live one.
    assert config_digest(info.config) == config_digest(dit.config)
    (output,) = onnx.load(str(velocity_onnx), load_external_data=False).graph.output
    dims = [d.dim_param or d.dim_value for d in output.type.tensor_type.shape.dim]
    assert (output.name, dims) == ("velocity", ["batch", 128, "audio_len"])
    prepared = dit.prepare(torch.zeros(1, 8, 32), torch.zeros(1, 77, 32), torch.zeros(1, 16, 32),
                           50)
    assert ["x", "t", *condition_feeds(prepared)] == [i.name for i in info.inputs]


def test_decoder_matches_pytorch_with_external_data(vae: DACVAE, tmp_path: Path) -> None:
    path = export_decoder(vae, tmp_path / "vae_decoder.onnx",
                          ExportConfig(opset=MIN_OPSET, external_data_threshold=0))
    info = read_graph(path)
    assert (info.kind, info.opset) == (DECODER, MIN_OPSET)
    assert info.files == [path, tmp_path / "vae_decoder.onnx.data"]
    stored = onnx.load(str(path), load_external_data=False).graph.initializer
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in stored)
    cases = decoder_cases(vae, [1.0, 3.0])
    assert cases[1][1].shape == (1, 1, 960 * 150)
    errors = validate(path, cases)
    assert max(errors) <= FP32_BOUND, errors


def test_opsets_outside_17_to_onnx_s_newest_are_refused() -> None:
    with pytest.raises(ConfigError, match="opset 16"):
        ExportConfig(opset=16)
    newest = onnx.defs.onnx_opset_version()
    with pytest.raises(ConfigError, match=f"opset 99 is newer .* use 17 to {newest}"):
        ExportConfig(opset=99)  # onnxscript used to warn and write another opset


def test_read_graph_refuses_foreign_files(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.onnx"
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [])), str(foreign))
    with pytest.raises(ConfigError, match="not a graph written by"):
        read_graph(foreign)


def test_missing_onnxruntime_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(DependencyError) as err:
        require_onnx()
    assert "foleyrt[export]" in str(err.value) and "\n" not in str(err.value)


# ---- calibration and Q/DQ -------------------------------------------------------------------


def _write_amax(path: Path, dit: FoleyDiT) -> dict[str, float]:
    """Max |input| of every GEMM module over the validation requests (a stand-in for
    `foleyrt calibrate`), in the calibration-file format."""
    amax: dict[str, float] = {}

    def record(name: str):  # type: ignore[no-untyped-def]
        def hook(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            amax[name] = max(amax.get(name, 0.0), float(args[0].abs().max()))
        return hook

    hooks = [m.register_forward_pre_hook(record(n)) for n, m in dit.named_modules()
             if isinstance(m, (Linear, TemporalConv))]
    velocity_cases(dit, [1.0, 3.0])
    for h in hooks:
        h.remove()
    save_file({k: torch.tensor(v) for k, v in amax.items()}, str(path),
              metadata={"format": AMAX_FORMAT, "version": AMAX_VERSION})
    return amax


@pytest.mark.parametrize("fmt, rel_bound", [("int8", 0.05), ("fp8", 0.15)])
def test_qdq_graph_runs_close_to_fp32(dit: FoleyDiT, velocity_onnx: Path, fmt: str,
                                      rel_bound: float) -> None:
    amax_path = velocity_onnx.with_name("amax.safetensors")
    recorded = _write_amax(amax_path, dit)
    amax = read_calibration(amax_path).amax
    assert amax == pytest.approx(recorded)
    quantized = velocity_onnx.with_name(f"velocity.{fmt}.onnx")
    modules = insert_qdq(velocity_onnx, quantized, amax, fmt)
    assert set(modules) == {n for n in amax if not any(p in n for p in PREPARE_ONLY)}
    ops = [n.op_type for n in onnx.load(str(quantized)).graph.node]
    assert ops.count("QuantizeLinear") == ops.count("DequantizeLinear") == 2 * len(modules)
    cases = velocity_cases(dit, [1.0, 3.0])
    scale = max(float(ref.abs().max()) for _, ref in cases)
    errors = validate(quantized, cases)
    assert FP32_BOUND < max(errors) <= rel_bound * scale, errors


def test_calibration_of_another_model_is_refused(velocity_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="different models"):
        insert_qdq(velocity_onnx, velocity_onnx.with_name("x.onnx"), {"blocks.0.fc": 1.0}, "int8")
    with pytest.raises(ConfigError, match="beside its source"):
        insert_qdq(velocity_onnx, tmp_path / "x.onnx", {"final_layer.linear": 1.0}, "int8")


@pytest.mark.parametrize("tensors, metadata, message", [
    ({"final_layer.linear": torch.tensor(1.0)}, {"format": "other"}, "not a foleyrt calibration"),
    ({"final_layer.linear": torch.ones(3)}, {"format": AMAX_FORMAT, "version": AMAX_VERSION},
     "one positive finite number"),
    ({"final_layer.linear": torch.tensor(-1.0)}, {"format": AMAX_FORMAT, "version": AMAX_VERSION},
     "one positive finite number"),
])
def test_bad_calibration_files(tmp_path: Path, tensors: dict, metadata: dict,
                               message: str) -> None:
    path = tmp_path / "amax.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(ConfigError, match=message):
        read_calibration(path)


# ---- command line ---------------------------------------------------------------------------


def test_cli_export_onnx(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 19: the tiny-random VAE's own export failed its own --validate bound (1e-3)."""
    code = main(["-q", "export", "onnx", "--model", "tiny-random", "--parts", "vae",
                 "--validate", "-o", str(tmp_path)])
    assert code == 0
    path, validation = capsys.readouterr().out.splitlines()
    assert path == str(tmp_path / "vae_decoder.onnx")
    assert validation.startswith("vae_decoder.onnx: max abs vs PyTorch ")
    assert read_graph(tmp_path / "vae_decoder.onnx").metadata["source"] == "tiny-random"
    before = (tmp_path / "vae_decoder.onnx").read_bytes()
    again = ["-q", "export", "onnx", "--model", "tiny-random", "--parts", "vae", "-o",
             str(tmp_path)]
    assert main(again) == 2  # an existing graph is kept without --overwrite
    assert "vae_decoder.onnx: exists; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "vae_decoder.onnx").read_bytes() == before
    for bad, message in ((["--tolerance", "nan"], "--tolerance must be a positive number"),
                         (["--opset", "99"], "opset 99 is newer"),
                         (["-o", str(tmp_path / "vae_decoder.onnx")], "is a file")):
        assert main([*again, "--overwrite", *bad]) == 2
        assert message in capsys.readouterr().err
