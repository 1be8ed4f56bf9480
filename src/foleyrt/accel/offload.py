"""Memory modes: what stays on the GPU, and how the rest gets there in time.

- `model`: every network lives in pinned host memory; a stage (features, denoising, decoding)
  brings its networks to the GPU and drops the GPU copies afterwards. Peak GPU memory is the
  largest stage, not the sum, and nothing is ever re-read from disk (the release's offload
  deletes the models and reloads ~10 GB per video).
- `blocks:N`: the transformer's blocks (96% of its weights) live in pinned host memory and
  stream through N GPU slots: while block i computes, a side stream copies the block that
  will next use a free slot. Everything else (the encoders, the VAE, the transformer's
  embedders, modulations and text projections) is offloaded per stage as in `model`, so the GPU
  holds only what the current stage uses. Each denoising step moves the blocks' bytes across
  PCIe once: this mode trades speed for memory (CUDA graphs are not used with it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from foleyrt.models.dit import FoleyDiT
from foleyrt.sampling.denoiser import ModuleDenoiser

log = logging.getLogger(__name__)

ALIGN = 256  # bytes: every tensor in a block's flat buffer starts on this boundary


def _tensors(
    module: nn.Module, skip: frozenset[int] = frozenset()
) -> list[tuple[nn.Module, str, Tensor]]:
    """(owner, attribute, tensor) of every parameter and buffer, owner-local names; modules
    whose id is in `skip` (and their children) are left out."""
    out: list[tuple[nn.Module, str, Tensor]] = []
    for owner in _modules(module, skip):
        for name, p in owner.named_parameters(recurse=False):
            out.append((owner, name, p))
        for name, b in owner.named_buffers(recurse=False):
            if b is not None:
                out.append((owner, name, b))
    return out


def _modules(module: nn.Module, skip: frozenset[int]) -> Iterator[nn.Module]:
    if id(module) in skip:
        return
    yield module
    for child in module.children():
        yield from _modules(child, skip)


def _pin(t: Tensor) -> Tensor:
    """A host copy with `t`'s strides (a tap-major conv weight stays tap-major on return)."""
    cpu = t.detach().to("cpu")
    if not torch.cuda.is_available():
        return cpu
    return torch.empty_strided(cpu.shape, cpu.stride(), dtype=cpu.dtype,
                               pin_memory=True).copy_(cpu)


def _extent(shape: torch.Size, stride: tuple[int, ...]) -> int:
    """Elements of storage a tensor of `shape` and `stride` reaches (numel when dense)."""
    if shape.numel() == 0:
        return 0
    return 1 + sum((n - 1) * s for n, s in zip(shape, stride, strict=True))


class ModelOffloader:
    """Pinned host copies of whole networks; `on_device(...)` brings them in for a stage.
    Tensors in `exclude` (ids; e.g. streamed blocks' weights) are managed elsewhere."""

    def __init__(self, modules: Iterable[nn.Module], device: torch.device,
                 exclude: frozenset[int] = frozenset()) -> None:
        self.device = device
        self.homes: dict[int, list[tuple[Tensor, Tensor]]] = {}
        for module in modules:
            pairs = []
            for _, _, t in _tensors(module):
                if id(t) in exclude:
                    continue
                host = _pin(t)
                t.data = host
                pairs.append((t, host))
            self.homes[id(module)] = pairs

    @contextmanager
    def on_device(self, *modules: nn.Module) -> Iterator[None]:
        for module in modules:
            for t, host in self.homes[id(module)]:
                t.data = host.to(self.device, non_blocking=True)
        try:
            yield
        finally:
            for module in modules:
                for t, host in self.homes[id(module)]:
                    t.data = host  # the GPU copy is freed; host values never changed


class _FlatBlock:
    """One block's tensors packed into a single pinned host buffer (one copy per transfer);
    sub-modules in `skip` are not streamed."""

    def __init__(self, block: nn.Module, skip: frozenset[int]) -> None:
        self.entries: list[tuple[Tensor, int]] = []  # each tensor and its byte offset
        offset = 0
        for _, _, t in _tensors(block, skip):
            offset = -(-offset // ALIGN) * ALIGN
            self.entries.append((t, offset))
            offset += _extent(t.shape, t.stride()) * t.element_size()
        self.nbytes = offset
        self.host = torch.empty(self.nbytes, dtype=torch.uint8)
        if torch.cuda.is_available():
            self.host = self.host.pin_memory()
        for t, off in self.entries:
            view = self._view(self.host, off, t)
            view.copy_(t.detach().to("cpu"))
            t.data = view

    @staticmethod
    def _view(buf: Tensor, off: int, t: Tensor) -> Tensor:
        """`t`'s dtype, shape and strides over the bytes of `buf` from `off` (layouts survive;
        rebinding keeps them, so `t` always describes its own view)."""
        nbytes = _extent(t.shape, t.stride()) * t.element_size()
        return buf[off : off + nbytes].view(t.dtype).as_strided(t.shape, t.stride())

    def bind(self, slot: Tensor) -> None:
        """Point the block's tensors at a device slot holding its bytes."""
        for t, off in self.entries:
            t.data = self._view(slot, off, t)


class BlockStreamer:
    """Streams `blocks` through `slots` device buffers. Calls use slots round-robin (call k
    uses slot k mod N); when a call ends, its slot starts loading the block expected N calls
    later (the blocks run in a fixed cyclic order). A call out of that order (a forward that
    was cut short by cancellation, say) just loads its block synchronously."""

    def __init__(self, blocks: list[nn.Module], slots: int, device: torch.device,
                 resident: tuple[str, ...] = ()) -> None:
        """`resident` names block sub-modules that are not streamed (their placement is the
        caller's)."""
        slots = min(slots, len(blocks))
        self.blocks = blocks
        keep = [getattr(b, name) for b in blocks for name in resident if hasattr(b, name)]
        self.flat = [_FlatBlock(b, frozenset(map(id, keep))) for b in blocks]
        size = max(f.nbytes for f in self.flat)
        self.slots = [torch.empty(size, dtype=torch.uint8, device=device) for _ in range(slots)]
        self.cuda = device.type == "cuda"
        self.copy_stream = torch.cuda.Stream(device) if self.cuda else None
        self.loaded: list[int | None] = [None] * slots  # block whose bytes a slot receives
        self.ready: list[torch.cuda.Event | None] = [None] * slots
        self.free: list[torch.cuda.Event | None] = [None] * slots
        self.calls = 0
        for i, block in enumerate(blocks):
            block.register_forward_pre_hook(self._before(i))
            block.register_forward_hook(self._after(i))
        for k in range(slots):
            self._load(k % len(blocks), k)
        log.info("streaming %d blocks through %d GPU slots of %.0f MB", len(blocks), slots,
                 size / 2**20)

    @property
    def tensor_ids(self) -> frozenset[int]:
        """The tensors this streamer places (for `ModelOffloader(exclude=...)`)."""
        return frozenset(id(t) for flat in self.flat for t, _ in flat.entries)

    def _load(self, block: int, slot: int) -> None:
        flat, buf = self.flat[block], self.slots[slot]
        self.loaded[slot] = block
        if not self.cuda:
            buf[: flat.nbytes].copy_(flat.host)
            return
        assert self.copy_stream is not None
        with torch.cuda.stream(self.copy_stream):
            freed = self.free[slot]
            if freed is not None:
                self.copy_stream.wait_event(freed)  # the slot's previous user is done with it
            buf[: flat.nbytes].copy_(flat.host, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.copy_stream)
        self.ready[slot] = event

    def _before(self, i: int) -> Callable[[nn.Module, object], None]:
        def hook(module: nn.Module, args: object) -> None:
            slot = self.calls % len(self.slots)
            if self.loaded[slot] != i:
                self._load(i, slot)
            event = self.ready[slot]
            if event is not None:
                torch.cuda.current_stream().wait_event(event)
            self.flat[i].bind(self.slots[slot])

        return hook

    def _after(self, i: int) -> Callable[[nn.Module, object, object], None]:
        def hook(module: nn.Module, args: object, output: object) -> None:
            slot = self.calls % len(self.slots)
            if self.cuda:
                event = torch.cuda.Event()
                event.record(torch.cuda.current_stream())
                self.free[slot] = event
            self.calls += 1
            self._load((i + len(self.slots)) % len(self.blocks), slot)

        return hook


# Triple-block layers used outside the blocks' own forward (per-request text keys/values, and
# the timestep modulations): not streamed, they stay with the rest of the transformer.
RESIDENT = ("audio_mod", "v_cond_mod", "text_cross_kv", "text_cross_k_norm")


def stream_blocks(dit: FoleyDiT, slots: int, device: torch.device) -> BlockStreamer:
    """Stream the transformer's blocks (triple then single, the order they run in). The rest of
    the transformer stays where it is: the caller offloads it per stage (see `ModelOffloader`)."""
    blocks = [*dit.triple_blocks, *dit.single_blocks]
    return BlockStreamer(blocks, slots, device, resident=RESIDENT)


class StreamedDenoiser(ModuleDenoiser):
    """The module as written with its blocks streamed (`--offload blocks:N`): the streamer's
    hooks move each block's weights in before it runs. No CUDA graphs: the weights live at
    other addresses on every pass."""

    def __init__(self, model: FoleyDiT, streamer: BlockStreamer) -> None:
        super().__init__(model)
        self.streamer = streamer
