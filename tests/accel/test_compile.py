"""`--accel compile`'s saved block graphs, on the CPU (Inductor compiles for the CPU there; the
saving, loading and guard dispatch are the same code as on a GPU)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

from foleyrt.accel.compile import compile_encoders, graph_key
from foleyrt.models.encoders import SIGLIP_IMAGE_SIZE
from foleyrt.pipeline.models import random_models

# Run in a fresh process: prints the velocity's max |error| against eager for two lengths,
# after `compile_blocks` with the cache directory given as argv[1] (and, with a second
# argument, the saved graphs loading in the background while the models are built).
SCRIPT = """
import sys, torch
from foleyrt.accel.compile import block_graphs, compile_blocks
from foleyrt.config import TINY
from foleyrt.models.dit import FoleyDiT
from foleyrt.models.random_init import randomize_

def inputs(n, seed):
    g = torch.Generator().manual_seed(seed)
    cfg = TINY.dit
    n_sync = 8 * ((n // 2 - 16) // 8 + 1)
    return (torch.randn(2, 128, n, generator=g), torch.full((2,), 500.0),
            torch.randn(2, 9, cfg.clip_dim, generator=g), torch.randn(2, 7, cfg.text_dim,
            generator=g), torch.randn(2, n_sync, cfg.sync_feat_dim, generator=g))

store = block_graphs(torch.device("cpu"), cache=sys.argv[1])
if len(sys.argv) > 2:
    store.load_in_background()
eager = randomize_(FoleyDiT(TINY.dit), seed=5).eval()
compiled = compile_blocks(randomize_(FoleyDiT(TINY.dit), seed=5).eval(), store)
with torch.inference_mode():
    for n in (40, 58):
        args = inputs(n, n)
        print((compiled(*args) - eager(*args)).abs().max().item())
"""


def _run(cache: Path, *extra: str) -> list[float]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(cache), *extra],
                         capture_output=True, text=True, check=True, timeout=600)
    return [float(line) for line in out.stdout.split()]


def test_block_graphs_are_compiled_once_saved_and_reused_by_a_new_process(tmp_path) -> None:
    """Three graphs (single blocks, triple blocks, the last triple block) serve both lengths;
    a second process loads them (in the background, skipping an unreadable file), compiles
    nothing, and gets the same numbers as eager."""
    first = _run(tmp_path)
    saved = list(tmp_path.glob("graphs/*/*.graph"))
    assert sorted(p.name.split("-")[0] for p in saved) == ["SingleBlock", "TripleBlock",
                                                            "TripleBlock"]
    (saved[0].parent / "SingleBlock-truncated.graph").write_bytes(saved[0].read_bytes()[:99])
    second = _run(tmp_path, "preload")
    assert len(list(tmp_path.glob("graphs/*/*.graph"))) == 4  # nothing new compiled
    assert max(first + second) < 1e-4


def test_graph_key_names_what_guards_do_not_check() -> None:
    cpu = torch.device("cpu")
    assert graph_key(cpu, None) == graph_key(cpu, None)
    assert graph_key(cpu, None) != graph_key(cpu, "max-autotune")


def test_compiled_encoders_give_eager_features_and_stop_compiling_after_two_sizes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`compile_encoders` on the tiny SigLIP2 and Synchformer (Inductor compiles for the CPU):
    every batch size gives the eager features, and after a first size and a second (a clip's
    last, partial batch) a third compiles nothing (the batch dimension has become dynamic)."""
    for name, folder in (("FOLEYRT_CACHE", ""), ("TORCHINDUCTOR_CACHE_DIR", "inductor"),
                         ("TRITON_CACHE_DIR", "triton")):  # set here, so restored after
        monkeypatch.setenv(name, str(tmp_path / folder))
    models = random_models()
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(4, 3, SIGLIP_IMAGE_SIZE, SIGLIP_IMAGE_SIZE, generator=g) * 2 - 1
    cfg = models.synchformer.config
    windows = torch.rand(4, 1, cfg.frames_per_segment, cfg.in_channels, cfg.img_size,
                         cfg.img_size, generator=g) * 2 - 1

    def siglip(x: torch.Tensor) -> torch.Tensor:
        return models.siglip.vision_model(pixel_values=x).pooler_output

    runs = ((siglip, frames), (models.synchformer, windows))
    with torch.inference_mode():
        eager = [[run(x[:n]) for n in (4, 3, 2)] for run, x in runs]
        compile_encoders(models.siglip.vision_model, models.synchformer)
        try:
            for (run, x), want in zip(runs, eager, strict=True):
                compiles = []
                for n, expected in zip((4, 3, 2), want, strict=True):
                    got = run(x[:n])
                    compiles.append(counters["stats"]["unique_graphs"])
                    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
                assert compiles[0] < compiles[1] == compiles[2]
        finally:
            torch._dynamo.reset()
