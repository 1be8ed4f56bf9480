"""Everything of the TensorRT path up to `build_serialized_network`, without TensorRT: profiles
from durations, precision flags, the Q/DQ graph handed to the builder, cache keys, sidecars and
the engine cache; the builder calls themselves against a recording stand-in for `tensorrt`;
and the one-line error when `tensorrt` is missing.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")

import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.torch import save_file

from foleyrt.accel import tensorrt as accel_trt
from foleyrt.accel.calibration import AMAX_FORMAT, AMAX_VERSION
from foleyrt.accel.engine_io import DECODER, VELOCITY, velocity_feeds, velocity_signature
from foleyrt.accel.engines import (
    BuildEnv,
    DimRange,
    EngineCache,
    EngineKey,
    EngineSidecar,
    select_engine,
    uncovered,
)
from foleyrt.accel.tensorrt import EngineDenoiser, require_tensorrt
from foleyrt.cli import main
from foleyrt.config import (
    TINY,
    config_digest,
)
from foleyrt.errors import ConfigError, DependencyError
from foleyrt.export import tensorrt as ftrt
from foleyrt.export.build_config import (
    BuildConfig,
    ProfileSpec,
    dim_ranges,
    profile_shapes,
)
from foleyrt.export.onnx import read_graph
from foleyrt.export.qdq import SCOPES_KEY
from foleyrt.export.tensorrt import (
    build_engine,
    engine_key,
    network_inputs,
)
from foleyrt.lengths import SequenceLengths
from foleyrt.models.dit import FoleyDiT
from foleyrt.models.random_init import randomize_
from foleyrt.sampling.conditions import ConditionRows
from foleyrt.sampling.schedule import flow_schedule

ENV = BuildEnv("sm_90", "NVIDIA H100", "10.3.0")
CONFIG = {"text_length": 77, "hidden_size": 8}


def _write_graph(path: Path, kind: str = VELOCITY, seed: int = 0) -> Path:
    """A small graph carrying the export's metadata and axis names: the velocity one is one
    GEMM traced in `final_layer.linear` (what the Q/DQ rewrite looks for)."""
    f32 = TensorProto.FLOAT
    if kind == VELOCITY:
        weight = np.random.default_rng(seed).standard_normal((8, 8)).astype(np.float32)
        inputs = [helper.make_tensor_value_info("x", f32, ["batch", 8, "audio_len"]),
                  helper.make_tensor_value_info("visual", f32, ["batch", "visual_len", 8]),
                  helper.make_tensor_value_info("text_k", f32, [2, "batch", 2, "text_len", 4])]
        gemm = helper.make_node("MatMul", ["xt", "w"], ["y"])
        gemm.metadata_props.add(key=SCOPES_KEY, value="['', 'dit.final_layer.linear', 'linear']")
        nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]), gemm,
                 helper.make_node("Transpose", ["y"], ["velocity"], perm=[0, 2, 1])]
        output = helper.make_tensor_value_info("velocity", f32, ["batch", 8, "audio_len"])
        inits = [numpy_helper.from_array(weight, "w")]
    else:
        inputs = [helper.make_tensor_value_info("z", f32, ["batch", 8, "audio_len"])]
        nodes = [helper.make_node("Identity", ["z"], ["audio"])]
        output = helper.make_tensor_value_info("audio", f32, ["batch", 8, "audio_len"])
        inits = []
    model = helper.make_model(helper.make_graph(nodes, kind, inputs, [output], inits),
                              opset_imports=[helper.make_opsetid("", 19)])
    for key, value in {"graph": kind, "config": json.dumps(CONFIG),
                       "weights_sha256": f"{seed:064x}", "source": "test"}.items():
        model.metadata_props.add(key=f"foleyrt.{key}", value=value)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def graph(tmp_path: Path) -> Path:
    return _write_graph(tmp_path / "velocity.onnx")


@pytest.fixture
def calibration(tmp_path: Path) -> Path:
    path = tmp_path / "amax.safetensors"
    save_file({"final_layer.linear": torch.tensor(3.0), "cond_in.linear_1": torch.tensor(2.0)},
              str(path), metadata={"format": AMAX_FORMAT, "version": AMAX_VERSION})
    return path


def _sidecar(key: EngineKey, built_at: str = "2025-01-01T00:00:00+00:00",
             config: dict = CONFIG) -> EngineSidecar:
    return EngineSidecar(key, config_digest(config), "test", ENV.gpu_name, built_at, 1.0)


# ---- profiles ------------------------------------------------------------------------------


def test_profile_axes_follow_the_pipeline_lengths() -> None:
    spec = ProfileSpec(seconds=(1.0, 8.0, 15.0), rows=(1, 2, 8))
    assert dim_ranges(VELOCITY, spec, 77) == {
        "batch": (1, 2, 8), "audio_len": (50, 400, 750), "visual_len": (8, 64, 120),
        "text_len": (77, 77, 77)}
    assert dim_ranges(DECODER, spec, 77) == {"batch": (1, 2, 8), "audio_len": (50, 400, 750)}


def test_profile_shapes_of_the_velocity_signature() -> None:
    with torch.device("meta"):
        signature = velocity_signature(FoleyDiT(TINY.dit))
    shapes = profile_shapes(signature, dim_ranges(VELOCITY, ProfileSpec(), 77))
    assert list(shapes) == [i.name for i in signature]
    assert shapes["x"] == ((1, 128, 50), (2, 128, 400), (8, 128, 750))
    assert shapes["text_k"] == ((2, 1, 2, 77, 32), (2, 2, 2, 77, 32), (2, 8, 2, 77, 32))
    assert shapes["visual_gather"] == ((8,), (64,), (120,))
    assert shapes["rope_self_audio_cos"] == ((50, 32), (400, 32), (750, 32))
    with pytest.raises(ConfigError, match="no profile range"):
        profile_shapes(signature, {"batch": DimRange(1, 1, 1)})


@pytest.mark.parametrize("kwargs", [{"seconds": (8.0, 1.0, 15.0)}, {"rows": (0, 2, 8)},
                                    {"rows": (1, 2)}])
def test_profile_spec_is_validated(kwargs: dict) -> None:
    with pytest.raises(ConfigError, match="MIN <= OPT <= MAX"):
        ProfileSpec(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"precision": "fp4"}, "unknown precision"),
    ({"precision": "int8"}, "calibration"),
    ({"precision": "fp16", "calibration": Path("a")}, "calibration"),
    ({"optimization_level": 7}, "0..5"),
])
def test_build_config_is_validated(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        BuildConfig(**kwargs)


# ---- what the builder is given -------------------------------------------------------------


@pytest.mark.parametrize("precision, flags", [("fp32", ()), ("fp16", ("FP16",)),
                                              ("bf16", ("BF16",))])
def test_network_inputs_float(graph: Path, precision: str, flags: tuple) -> None:
    info = read_graph(graph)
    build = BuildConfig(precision=precision)
    net = network_inputs(info, build, engine_key(info, build, ENV))
    assert (net.onnx, net.flags) == (graph, flags)
    assert net.shapes["x"] == ((1, 8, 50), (2, 8, 400), (8, 8, 750))
    assert net.shapes["text_k"][2] == (2, 8, 2, 77, 4)


@pytest.mark.parametrize("precision, flags", [("int8", ("INT8", "BF16")),
                                              ("fp8", ("FP8", "BF16"))])
def test_network_inputs_quantized(graph: Path, calibration: Path, precision: str,
                                  flags: tuple) -> None:
    info = read_graph(graph)
    build = BuildConfig(precision=precision, calibration=calibration)
    key = engine_key(info, build, ENV)
    net = network_inputs(info, build, key)
    assert net.flags == flags
    assert net.onnx.parent == graph.parent and net.onnx != graph
    assert key.calibration_sha256[:12] in net.onnx.name
    quantized = onnx.load(str(net.onnx))
    ops = [n.op_type for n in quantized.graph.node]
    assert ops.count("QuantizeLinear") == 2 and ops.index("QuantizeLinear") < ops.index("MatMul")
    scales = {i.name: numpy_helper.to_array(i) for i in quantized.graph.initializer}
    qmax = 127.0 if precision == "int8" else 448.0
    assert scales["final_layer.linear.input_scale"] == pytest.approx(3.0 / qmax)
    weight = numpy_helper.to_array(onnx.load(str(graph)).graph.initializer[0])
    per_channel = np.abs(weight).max(axis=0) if precision == "int8" else np.abs(weight).max()
    np.testing.assert_allclose(scales["final_layer.linear.weight_scale"], per_channel / qmax,
                               rtol=1e-6)


def test_quantized_decoder_is_refused(tmp_path: Path, calibration: Path) -> None:
    info = read_graph(_write_graph(tmp_path / "vae_decoder.onnx", DECODER))
    build = BuildConfig(precision="int8", calibration=calibration)
    with pytest.raises(ConfigError, match="velocity graph"):
        network_inputs(info, build, engine_key(info, build, ENV))


def test_quantized_graph_is_not_a_source(graph: Path, calibration: Path) -> None:
    info = read_graph(graph)
    build = BuildConfig(precision="int8", calibration=calibration)
    net = network_inputs(info, build, engine_key(info, build, ENV))
    with pytest.raises(ConfigError, match="already quantised"):
        engine_key(read_graph(net.onnx), BuildConfig(), ENV)


# ---- cache key and sidecar -----------------------------------------------------------------


def test_cache_key_is_stable(graph: Path) -> None:
    key = engine_key(read_graph(graph), BuildConfig(), ENV)
    again = engine_key(read_graph(graph), BuildConfig(), ENV)
    assert key == again and key.digest() == again.digest()
    assert len(key.digest()) == 64


def test_cache_key_changes_with_every_input(tmp_path: Path, graph: Path,
                                            calibration: Path) -> None:
    info = read_graph(graph)
    base = BuildConfig(precision="int8", calibration=calibration)
    digests = {engine_key(info, base, ENV).digest()}
    other_cal = tmp_path / "other.safetensors"
    save_file({"final_layer.linear": torch.tensor(4.0)}, str(other_cal),
              metadata={"format": AMAX_FORMAT, "version": AMAX_VERSION})
    variants = [
        engine_key(info, dataclasses.replace(base, calibration=other_cal), ENV),
        engine_key(info, BuildConfig(precision="fp8", calibration=calibration), ENV),
        engine_key(info, dataclasses.replace(base, profile=ProfileSpec(seconds=(1, 8, 10))), ENV),
        engine_key(info, dataclasses.replace(base, profile=ProfileSpec(rows=(1, 2, 4))), ENV),
        engine_key(info, dataclasses.replace(base, optimization_level=5), ENV),
        engine_key(info, base, dataclasses.replace(ENV, gpu_arch="sm_89")),
        engine_key(info, base, dataclasses.replace(ENV, tensorrt_version="10.5.0")),
        engine_key(read_graph(_write_graph(tmp_path / "v2.onnx", seed=1)), base, ENV),
    ]
    digests |= {k.digest() for k in variants}
    assert len(digests) == len(variants) + 1
    # Informational fields are not part of the key.
    assert engine_key(info, dataclasses.replace(base, workspace_gib=4.0), ENV).digest() in digests


def test_cache_key_covers_external_data(tmp_path: Path) -> None:
    path = tmp_path / "velocity.onnx"
    model = onnx.load(str(_write_graph(path)))
    onnx.save(model, str(path), save_as_external_data=True, location="velocity.onnx.data",
              size_threshold=0)
    info = read_graph(path)
    assert info.files == [path, tmp_path / "velocity.onnx.data"]
    before = engine_key(info, BuildConfig(), ENV).digest()
    data = bytearray((tmp_path / "velocity.onnx.data").read_bytes())
    data[0] ^= 0xFF
    (tmp_path / "velocity.onnx.data").write_bytes(bytes(data))
    assert engine_key(info, BuildConfig(), ENV).digest() != before


def test_sidecar_round_trip(graph: Path) -> None:
    sidecar = _sidecar(engine_key(read_graph(graph), BuildConfig(), ENV))
    text = sidecar.to_json()
    values = json.loads(text)
    assert values["cache_key"] == sidecar.key.digest()
    assert values["key"]["gpu_arch"] == "sm_90" and values["key"]["tensorrt_version"] == "10.3.0"
    assert values["key"]["profile"]["audio_len"] == [50, 400, 750]
    assert EngineSidecar.from_json(text) == sidecar
    values["key"]["precision"] = "fp16"  # edited by hand: the stored digest no longer matches
    with pytest.raises(ValueError, match="cache key"):
        EngineSidecar.from_json(json.dumps(values))


# ---- engine cache --------------------------------------------------------------------------


def test_cache_store_and_lookup(tmp_path: Path, graph: Path) -> None:
    cache = EngineCache(tmp_path / "engines")
    key = engine_key(read_graph(graph), BuildConfig(), ENV)
    assert cache.lookup(key) is None
    plan = cache.store(b"plan", _sidecar(key))
    assert plan.name == f"velocity-bf16-{key.digest()[:16]}.plan"
    assert cache.lookup(key) == plan and plan.read_bytes() == b"plan"
    assert cache.lookup(dataclasses.replace(key, precision="fp16")) is None
    plan.with_suffix(".json").write_text("{")  # corrupt sidecar: never trusted
    assert cache.lookup(key) is None
    plan.with_suffix(".json").unlink()  # plan without sidecar: never used
    assert cache.lookup(key) is None


def test_cache_root_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOLEYRT_ENGINE_CACHE", str(tmp_path))
    assert EngineCache().root == tmp_path
    assert EngineCache(tmp_path / "x").root == tmp_path / "x"


def test_select_engine_for_a_request(tmp_path: Path, graph: Path) -> None:
    cache = EngineCache(tmp_path)
    info = read_graph(graph)
    short = engine_key(info, BuildConfig(profile=ProfileSpec(seconds=(1, 4, 8))), ENV)
    long_old = engine_key(info, BuildConfig(), ENV)
    long_new = engine_key(info, BuildConfig(precision="fp16"), ENV)
    cache.store(b"a", _sidecar(short, "2025-01-03T00:00:00+00:00"))
    cache.store(b"b", _sidecar(long_old, "2025-01-01T00:00:00+00:00"))
    cache.store(b"c", _sidecar(long_new, "2025-01-02T00:00:00+00:00"))
    digest = config_digest(CONFIG)
    dims = {"batch": 2, "audio_len": 600, "visual_len": 96, "text_len": 77}
    assert uncovered(short, dims) == ["audio_len=600 (50..400)", "visual_len=96 (8..64)"]
    assert select_engine(cache, ENV, digest, dims) == cache.plan_path(long_new)
    assert select_engine(cache, ENV, digest, dims, "bf16") == cache.plan_path(long_old)
    small = {**dims, "audio_len": 100, "visual_len": 16}  # all three fit: the newest wins
    assert select_engine(cache, ENV, digest, small) == cache.plan_path(short)
    for env, config in [(dataclasses.replace(ENV, gpu_arch="sm_80"), digest), (ENV, "0" * 64)]:
        with pytest.raises(ConfigError, match="no TensorRT engine"):
            select_engine(cache, env, config, dims)


# ---- TensorRT itself -----------------------------------------------------------------------


def test_missing_tensorrt_is_one_line(monkeypatch: pytest.MonkeyPatch, graph: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    with pytest.raises(DependencyError) as err:
        require_tensorrt()
    assert "foleyrt[tensorrt]" in str(err.value)
    with pytest.raises(DependencyError):
        build_engine(graph, BuildConfig())
    assert main(["export", "tensorrt", str(graph)]) == 3
    stderr = capsys.readouterr().err
    assert stderr.startswith("foleyrt: error: TensorRT is not installed")
    assert stderr.count("\n") == 1


def _fake_tensorrt() -> mock.MagicMock:
    trt = mock.MagicMock(name="tensorrt")
    builder = trt.Builder.return_value
    trt.OnnxParser.return_value.parse_from_file.return_value = True
    config = builder.create_builder_config.return_value
    config.create_timing_cache.return_value.serialize.return_value = b"timings"
    builder.build_serialized_network.return_value = b"serialized plan"
    return trt


def test_build_with_a_recording_tensorrt(tmp_path: Path, graph: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    trt = _fake_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(ftrt, "current_env", lambda _trt: ENV)
    for exporter_only in ("onnxruntime", "onnxscript"):  # a build machine needs just `onnx`
        monkeypatch.setitem(sys.modules, exporter_only, None)
    cache = EngineCache(tmp_path / "engines")
    build = BuildConfig(precision="fp16", workspace_gib=2.0)

    plan = build_engine(graph, build, cache)
    assert plan.read_bytes() == b"serialized plan"
    sidecar = EngineSidecar.read(plan.with_suffix(".json"))
    assert sidecar.key == engine_key(read_graph(graph), build, ENV)
    assert sidecar.config_sha256 == config_digest(CONFIG) and sidecar.gpu_name == "NVIDIA H100"
    trt.OnnxParser.return_value.parse_from_file.assert_called_once_with(str(graph))
    config = trt.Builder.return_value.create_builder_config.return_value
    config.set_flag.assert_called_once_with(trt.BuilderFlag.FP16)
    config.set_memory_pool_limit.assert_called_once_with(trt.MemoryPoolType.WORKSPACE, 2 * 2**30)
    assert config.builder_optimization_level == 3
    profile = trt.Builder.return_value.create_optimization_profile.return_value
    profile.set_shape.assert_any_call("x", (1, 8, 50), (2, 8, 400), (8, 8, 750))
    assert profile.set_shape.call_count == 3
    config.create_timing_cache.assert_called_once_with(b"")
    timing = cache.timing_cache_path(ENV)
    assert timing.name == "timing-sm_90-trt10.3.0.cache" and timing.read_bytes() == b"timings"

    # Same key: served from the cache, nothing rebuilt. --force rebuilds, reusing the timings.
    assert build_engine(graph, build, cache) == plan
    assert trt.Builder.return_value.build_serialized_network.call_count == 1
    build_engine(graph, build, cache, force=True)
    config.create_timing_cache.assert_called_with(b"timings")


def test_unparseable_graph_is_one_error(tmp_path: Path, graph: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    trt = _fake_tensorrt()
    parser = trt.OnnxParser.return_value
    parser.parse_from_file.return_value = False
    parser.num_errors = 1
    parser.get_error.return_value = "unsupported op"
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(ftrt, "current_env", lambda _trt: ENV)
    with pytest.raises(ConfigError, match="cannot parse .*unsupported op"):
        build_engine(graph, BuildConfig(), EngineCache(tmp_path))



def _rows(dit: FoleyDiT, seconds: float, rows: int = 2) -> ConditionRows:
    cfg, gen = dit.config, torch.Generator().manual_seed(0)
    lengths = SequenceLengths.of_duration(seconds)
    return ConditionRows(torch.randn(rows, lengths.clip_frames, cfg.clip_dim, generator=gen),
                         torch.randn(rows, cfg.text_length, cfg.text_dim, generator=gen),
                         torch.randn(rows, lengths.sync_tokens, cfg.sync_feat_dim, generator=gen),
                         lengths.latent_frames)


def test_denoiser_binds_the_graph_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--accel tensorrt` against a recording engine: every graph input bound by name with its
    request shape, cast to the engine's type; a fresh output per step; another model or
    lengths outside the profile refused before anything runs."""
    dit = randomize_(FoleyDiT(TINY.dit), 0).eval().requires_grad_(False)
    names = [i.name for i in velocity_signature(dit)] + ["velocity"]
    trt = _fake_tensorrt()
    engine = trt.Runtime.return_value.deserialize_cuda_engine.return_value
    engine.num_io_tensors = len(names)
    engine.get_tensor_name.side_effect = names.__getitem__
    engine.get_tensor_dtype.side_effect = (
        lambda name: trt.int64 if name == "visual_gather" else trt.float32)
    context = engine.create_execution_context.return_value
    context.get_tensor_shape.return_value = (2, 128, 100)
    context.execute_async_v3.return_value = True
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(accel_trt, "current_env", lambda _trt: ENV)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda _dev: SimpleNamespace(cuda_stream=7))
    key = dataclasses.replace(
        engine_key(read_graph(_write_graph(tmp_path / "v.onnx")), BuildConfig(), ENV),
        profile=dim_ranges(VELOCITY, ProfileSpec(), 77))
    sidecar = _sidecar(key, config=dataclasses.asdict(dit.config))
    plan = EngineCache(tmp_path).store(b"plan", sidecar)

    rows = _rows(dit, 2.0)  # 2 rows, 100 latent frames, 16 visual frames
    schedule = flow_schedule(4, TINY.diffusion)
    x = torch.randn(2, 128, 100, dtype=torch.bfloat16)
    step = EngineDenoiser(dit, plan).prepare(rows, schedule)
    out = step(x, 0)
    assert out.shape == (2, 128, 100) and out.dtype == torch.float32
    shapes = {c.args[0]: c.args[1] for c in context.set_input_shape.call_args_list}
    prepared = dit.prepare(rows.clip, rows.text, rows.sync, rows.audio_len)
    t = schedule.timesteps[0].expand(2)
    assert shapes == {k: tuple(v.shape) for k, v in velocity_feeds(prepared, x, t).items()}
    assert {c.args[0] for c in context.set_tensor_address.call_args_list} == set(names)
    context.execute_async_v3.assert_called_once_with(7)
    assert step(x, 1) is not out

    with pytest.raises(ConfigError, match="outside the engine's profile"):
        EngineDenoiser(dit, plan).prepare(_rows(dit, 20.0), schedule)
    other = FoleyDiT(dataclasses.replace(TINY.dit, depth_single_blocks=1))
    with pytest.raises(ConfigError, match="another model configuration"):
        EngineDenoiser(other, plan).prepare(rows, schedule)
