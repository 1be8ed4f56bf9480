"""`foleyrt batch --executor ray` on a small local Ray (one per module: starting one costs
seconds) with two CPU workers: the same files, report and failures as `--executor local`."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import soundfile
import torch

from foleyrt import cli
from foleyrt.batch.ray import RayOptions, _gpus_per_worker, _worker_device, require_ray
from foleyrt.config import TINY_RANDOM
from foleyrt.errors import UsageError
from foleyrt.media.synthetic import write_test_clip
from tests.batch.test_plan import write_csv


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    ray = pytest.importorskip("ray")
    # Four logical CPUs on any machine: two workers hold one each, decoding and writing the rest.
    ray.init(num_cpus=4, object_store_memory=200 * 2**20, include_dashboard=False,
             log_to_driver=False)
    yield
    ray.shutdown()


def _batch(csv: Path, out: Path, *options: str) -> tuple[int, dict]:
    report = out.with_suffix(".json")
    code = cli.main(["-q", "batch", str(csv), "-o", str(out), "--format", "both", "--seed", "3",
                     "--steps", "2", "--device", "cpu", "--model", TINY_RANDOM,
                     "--report", str(report), *options])
    return code, json.loads(report.read_text())


def test_ray_writes_what_local_writes(ray_cluster: None, library: Path, tmp_path: Path) -> None:
    """Windows of 2 s: every clip fits one but clips/windowed.mp4 (3.5 s), which the GPU
    worker streams in windows itself, as the local executor does."""
    write_test_clip(library / "clips/windowed.mp4", 3.5, width=64, height=48, fps=10)
    csv = write_csv(library / "ray.csv",
                    "video,prompt\n"
                    "clips/a.mp4,door\nclips/long.mp4,rain\nclips/short.mp4,steps\n"
                    "clips/b.mp4,wind\nclips/text.mp4,glass\nother/b.mp4,birds\n"
                    "clips/windowed.mp4,rain\n")
    windows = ("--window", "2", "--overlap", "1")
    local_code, local = _batch(csv, tmp_path / "local", *windows)
    ray_code, ray = _batch(csv, tmp_path / "ray", *windows, "--executor", "ray",
                           "--gpus-per-worker", "0", "--num-workers", "2")
    assert local_code == ray_code == 1  # the short clip and the text file fail alone

    def outcome(report: dict) -> list[tuple]:
        return [(r["status"], r["seed"], r["error"], [Path(p).name for p in r["outputs"]])
                for r in report["items"]]

    assert outcome(ray) == outcome(local)
    assert [r["status"] for r in ray["items"]] == ["done", "done", "failed", "done", "failed",
                                                   "done", "done"]
    names = sorted(p.name for p in (tmp_path / "local").iterdir())
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == names and len(names) == 10
    for name in (n for n in names if n.endswith(".wav")):
        got, _ = soundfile.read(tmp_path / "ray" / name)
        want, _ = soundfile.read(tmp_path / "local" / name)
        cos = torch.nn.functional.cosine_similarity(
            torch.from_numpy(got).flatten(), torch.from_numpy(want).flatten(), 0)
        assert got.shape == want.shape and float(cos) >= 0.9999
    windowed, _ = soundfile.read(tmp_path / "ray" / "windowed.wav")
    assert len(windowed) == round(3.5 * 48000)


def test_without_ray_the_option_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # importing it now fails
    with pytest.raises(UsageError, match=r"^--executor ray needs Ray: pip install "
                                         r"'foleyrt\[ray\]'$"):
        require_ray()


def test_workers_use_the_device_ray_gives_them() -> None:
    assert _worker_device("auto", 1.0) == "cuda" and _worker_device("cpu", 0.0) == "cpu"
    with pytest.raises(UsageError, match="--device cuda:1: with --executor ray each worker "
                                         "uses the GPU Ray gives it; leave --device out"):
        _worker_device("cuda:1", 1.0)
    assert _gpus_per_worker(RayOptions(), cluster_gpus=0.0) == 0.0
    assert _gpus_per_worker(RayOptions(), cluster_gpus=8.0) == 1.0
    with pytest.raises(UsageError, match="the Ray cluster has 0 GPU"):
        _gpus_per_worker(RayOptions(gpus_per_worker=1), cluster_gpus=0.0)
    with pytest.raises(UsageError, match="--num-workers must be at least 1"):
        RayOptions(num_workers=0)
