"""`--accel compile`'s saved block graphs, on the CPU (Inductor compiles for the CPU there; the
saving, loading and guard dispatch are the same code as on a GPU)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from foleyrt.accel.compile import graph_key

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
