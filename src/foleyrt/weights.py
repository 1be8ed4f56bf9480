"""Finding, reading and loading checkpoints: every loader of the package (the transformer's is
orchestrated by `pipeline.models`, which also asks `accel` what its file stores).

Policy (spec/mmdit.md §2.4, dac_vae.md §2.4, synchformer.md §2): unrestricted unpickling is
never used (`weights_only=True`); every key the module needs must be present; shapes must
match; keys a module does not use are reported, not silently dropped. Modules are built on the
`meta` device and the checkpoint tensors are assigned in place (memory-mapped where the format
allows), so a 5 B-parameter model is never randomly initialised or copied twice.
"""

from __future__ import annotations

import json
import logging
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from foleyrt.config import (
    HUB_REPO,
    RELEASED_DAC,
    DACConfig,
    SynchformerConfig,
    fetch_command,
)
from foleyrt.errors import ConfigError, WeightsError
from foleyrt.models.dac_vae import DACVAE, ENCODER_PREFIXES
from foleyrt.models.synchformer import UNUSED_PREFIXES, Synchformer

log = logging.getLogger(__name__)

SAFETENSORS_SUFFIXES = (".safetensors",)


@dataclass
class Checkpoint:
    """A state dict plus whatever metadata its container carried (e.g. DAC kwargs)."""

    path: Path
    state_dict: dict[str, Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a `.safetensors` file or a `torch.save` pickle (weights only).

    A pickle may be a flat state dict or the audiotools container
    `{"state_dict": ..., "metadata": {...}}`. Any failure is one `WeightsError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if path.stat().st_size == 0:
        raise WeightsError(f"weights file is empty: {path}")
    if path.suffix in SAFETENSORS_SUFFIXES:
        return _read_safetensors(path)
    return _read_pickle(path)


def _read_safetensors(path: Path) -> Checkpoint:
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            metadata = dict(f.metadata() or {})
        return Checkpoint(path, load_file(str(path)), metadata)
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from None


def _read_pickle(path: Path) -> Checkpoint:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
        if any(n.endswith(("/.data/extern_modules", "DAC/DAC.pth")) for n in names):
            raise WeightsError(
                f"{path}: is a torch.package archive, which can only be loaded by executing "
                "pickled code; convert it to a plain state dict first"
            )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for foreign files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint ({reason})") from None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        metadata = obj.get("metadata") or {}
        return Checkpoint(path, dict(obj["state_dict"]), dict(metadata))
    if isinstance(obj, Mapping) and all(isinstance(v, Tensor) for v in obj.values()):
        return Checkpoint(path, dict(obj))
    raise WeightsError(f"{path}: does not hold a state dict of tensors")


@dataclass
class LoadReport:
    """What happened to the keys of one checkpoint when loaded into one module."""

    file: str
    loaded: int
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def log(self) -> None:
        log.info("loaded %d tensors from %s", self.loaded, self.file)
        if self.ignored:
            log.info("%s: %d keys of parts not used for inference were ignored (%s)",
                     self.file, len(self.ignored), _prefix_summary(self.ignored))
        if self.unexpected:
            log.warning("%s: %d unexpected keys ignored, e.g. %s",
                        self.file, len(self.unexpected), ", ".join(self.unexpected[:3]))


def _prefix_summary(keys: Iterable[str]) -> str:
    prefixes = sorted({k.split(".")[0] for k in keys})
    return ", ".join(f"{p}.*" for p in prefixes)


def load_into(
    module: nn.Module,
    state_dict: Mapping[str, Tensor],
    *,
    file: str | Path,
    ignore_prefixes: tuple[str, ...] = (),
    dtype: torch.dtype | None = None,
) -> LoadReport:
    """Assign `state_dict` into `module` (typically built on `meta`).

    Every key of the module must be present with its shape; `ignore_prefixes` name parts of the
    checkpoint that are known to be unused (reported as such); other extra keys are reported as
    unexpected. Tensors are cast to `dtype` (or to the module's parameter dtype), which also
    upcasts fp8-stored community checkpoints.
    """
    file = str(file)
    wanted = module.state_dict(keep_vars=True)
    ignored = [k for k in state_dict if k not in wanted and k.startswith(ignore_prefixes)]
    unexpected = [k for k in state_dict if k not in wanted and not k.startswith(ignore_prefixes)]
    missing = [k for k in wanted if k not in state_dict]
    if missing:
        raise WeightsError(
            f"{file}: {len(missing)} required key(s) missing (e.g. {', '.join(missing[:3])}); "
            "is this the right file for this model size?"
        )
    tensors: dict[str, Tensor] = {}
    for key, target in wanted.items():
        value = state_dict[key]
        if tuple(value.shape) != tuple(target.shape):
            raise WeightsError(
                f"{file}: shape of {key} is {tuple(value.shape)}, the model needs "
                f"{tuple(target.shape)}; is this the right file for this model size?"
            )
        want_dtype = dtype if (dtype is not None and value.is_floating_point()) else target.dtype
        tensors[key] = value.to(want_dtype)
    module.load_state_dict(tensors, strict=True, assign=True)
    report = LoadReport(file, len(tensors), unexpected, ignored)
    report.log()
    return report


def load_checkpoint_into(
    module: nn.Module,
    path: str | Path,
    *,
    ignore_prefixes: tuple[str, ...] = (),
    dtype: torch.dtype | None = None,
) -> LoadReport:
    """`read_checkpoint` + `load_into`."""
    ckpt = read_checkpoint(path)
    return load_into(
        module, ckpt.state_dict, file=ckpt.path, ignore_prefixes=ignore_prefixes, dtype=dtype
    )


# --------------------------------------------------------------------------------------------
# Where checkpoints come from: a local directory or a Hugging Face hub repository
# --------------------------------------------------------------------------------------------


def _looks_like_repo_id(model: str) -> bool:
    parts = model.split("/")
    return len(parts) == 2 and all(parts) and not model.startswith((".", "~", "/"))


def resolve_files(model: str, filenames: list[str], *, hub_repo: str = HUB_REPO) -> dict[str, Path]:
    """Paths of `filenames` for `--model` = a local directory or a hub repo id.

    In a directory a `.safetensors` twin of a file (same stem) is accepted too; `hub_repo` is
    where a directory's files come from. From the hub, `huggingface_hub` downloads with its
    cache and progress bar, and uses the cache offline. Files that cannot be found are one
    error naming every one of them, where they were looked for and the command that fetches
    them.
    """
    local = Path(model).expanduser()
    if local.is_dir():
        return _find_in_dir(local, filenames, hub_repo)
    if local.exists():
        raise WeightsError(f"--model {model}: expected a directory of weights or a hub repo id")
    if not _looks_like_repo_id(model):
        raise WeightsError(f"--model {model}: no such directory, and not a hub repo id")
    return _hub_download(model, filenames)


def _find_in_dir(directory: Path, filenames: list[str], repo: str) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for name in filenames:
        twin = Path(name).stem + ".safetensors"
        path = next((p for p in (directory / name, directory / twin) if p.is_file()), None)
        if path is not None:
            found[name] = path
    missing = [name for name in filenames if name not in found]
    if missing:
        raise WeightsError(
            f"{directory} lacks {', '.join(missing)} (or .safetensors files of the same "
            f"names); fetch them with {fetch_command(repo, missing, directory)}"
        )
    return found


def _hub_download(repo: str, filenames: list[str]) -> dict[str, Path]:
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    found: dict[str, Path] = {}
    for name in filenames:
        try:
            found[name] = Path(hf_hub_download(repo, name))
        except LocalEntryNotFoundError:
            continue  # offline and not cached: named with the others below
        except (HfHubHTTPError, OSError, ValueError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise WeightsError(f"cannot download {name} from {repo}: {first}") from None
    missing = [name for name in filenames if name not in found]
    if missing:
        raise WeightsError(
            f"the hub cannot be reached and the Hugging Face cache ({constants.HF_HUB_CACHE}) "
            f"lacks {', '.join(missing)} of {repo}; on a machine with network run "
            f"{fetch_command(repo, missing)}, or pass --model DIR with the files"
        )
    return found


# --------------------------------------------------------------------------------------------
# The audio VAE and Synchformer files
# --------------------------------------------------------------------------------------------


def load_dac(
    path: str | Path,
    *,
    config: DACConfig | None = None,
    decoder_only: bool = True,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    overrides: Mapping[str, Any] | None = None,
    fold: bool = True,
) -> DACVAE:
    """Load a DAC-VAE checkpoint for inference (eval mode, no grads).

    The architecture comes, in order of precedence, from `overrides` (constructor kwargs, as
    `DAC.load(path, **kwargs)` takes them), `config`, the file's `metadata["kwargs"]` (the
    official container), and finally `RELEASED_DAC` (a flat state dict, e.g. a safetensors
    conversion, carries no kwargs). Unknown kwarg names are dropped like the release does.

    The model is built on `meta` and the checkpoint assigned strictly; a decoder-only build
    ignores (and reports) the encoder keys. Weight norm is folded in float32 before the cast
    to `dtype` (`fold=False` keeps it live, e.g. for training).
    """
    ckpt = read_checkpoint(path)
    cfg = _resolve_config(ckpt, config, overrides)
    with torch.device("meta"):
        model = DACVAE(cfg, decoder_only=decoder_only)
    load_into(
        model,
        ckpt.state_dict,
        file=ckpt.path,
        ignore_prefixes=ENCODER_PREFIXES if decoder_only else (),
    )
    if fold:
        model.fold_weight_norm()
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _resolve_config(
    ckpt: Checkpoint, config: DACConfig | None, overrides: Mapping[str, Any] | None
) -> DACConfig:
    stored = _metadata_kwargs(ckpt)
    if config is not None:
        kwargs = asdict(config)
        if stored is not None and _try_config(stored) != config:
            log.warning("%s: its metadata kwargs differ from the given DAC config; "
                        "using the given config", ckpt.path)
    else:
        kwargs = dict(stored) if stored is not None else asdict(RELEASED_DAC)
    kwargs.update(overrides or {})
    try:
        return DACConfig.from_kwargs(kwargs)
    except (ConfigError, TypeError, ValueError) as exc:
        raise WeightsError(f"{ckpt.path}: unusable DAC configuration ({exc})") from None


def _metadata_kwargs(ckpt: Checkpoint) -> Mapping[str, Any] | None:
    """`metadata["kwargs"]` of the official container, or of a safetensors header (whose
    metadata values can only be strings, so there it must be JSON)."""
    kwargs = ckpt.metadata.get("kwargs")
    if isinstance(kwargs, str):
        try:
            kwargs = json.loads(kwargs)
        except json.JSONDecodeError:
            raise WeightsError(f"{ckpt.path}: metadata 'kwargs' is not valid JSON") from None
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise WeightsError(f"{ckpt.path}: metadata 'kwargs' is not a mapping")
    return kwargs


def _try_config(kwargs: Mapping[str, Any]) -> DACConfig | None:
    try:
        return DACConfig.from_kwargs(kwargs)
    except (ConfigError, TypeError, ValueError):
        return None


def load_synchformer(
    path: str | Path,
    config: SynchformerConfig = SynchformerConfig(),
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Synchformer:
    """The visual branch from a full released file or a `vfeat_extractor.*`-only file.

    All visual keys must be present; the released audio/offset parts are ignored (and
    reported). Built on `meta`, so the weights are assigned, never initialised or copied twice.
    """
    with torch.device("meta"):
        model = Synchformer(config)
    ckpt = read_checkpoint(path)
    load_into(model, ckpt.state_dict, file=ckpt.path, ignore_prefixes=UNUSED_PREFIXES,
              dtype=dtype)
    return model.to(device).eval().requires_grad_(False)
