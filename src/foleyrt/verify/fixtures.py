"""Parity fixtures in the format of `../shared/fixtures/reference` (see its README).

`run_manifest` runs every case of a manifest through our implementation and compares with the
official outputs at the manifest's tolerances. The CLI's `verify` and the test-suite both call
it, so what CI proves is exactly what a user can re-run.
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from foleyrt.accel.runtime import AccelMode, RuntimeConfig, parse_device, parse_enum
from foleyrt.errors import InputError

# component -> "module:function"; each runner takes (case, Fixtures) and returns list[Check].
RUNNERS: dict[str, str] = {
    "dit": "foleyrt.verify.dit:run",
    "sampling": "foleyrt.verify.sampling:run_loop",
    "scheduler": "foleyrt.verify.sampling:run_scheduler",
    "dac_vae": "foleyrt.verify.dac:run",
    "synchformer": "foleyrt.verify.synchformer:run",
    "video_features": "foleyrt.verify.video:run",
}


@dataclass
class Check:
    """One compared quantity of one case."""

    name: str
    passed: bool
    max_abs: float | None = None
    cosine: float | None = None
    rel_l2: float | None = None
    detail: str = ""


@dataclass
class CaseResult:
    case_id: str
    component: str
    checks: list[Check] = field(default_factory=list)
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.checks) and all(c.passed for c in self.checks)

    def line(self) -> str:
        """One line per case: worst max abs error and cosine over its checks, PASS/FAIL."""
        status = "PASS" if self.passed else "FAIL"
        if self.error is not None:
            return f"{self.case_id:<28} {status}  error: {self.error}"
        errs = [c.max_abs for c in self.checks if c.max_abs is not None]
        coss = [c.cosine for c in self.checks if c.cosine is not None]
        parts = [f"{self.case_id:<28}", f"{len(self.checks):>3} checks"]
        parts.append(f"max_abs_err={max(errs):.3e}" if errs else "max_abs_err=   n/a   ")
        parts.append(f"cosine={min(coss):.8f}" if coss else "cosine=   n/a    ")
        parts.append(status)
        failed = [c for c in self.checks if not c.passed]
        if failed:
            parts.append("failed: " + "; ".join(f"{c.name} {c.detail}".strip() for c in failed[:3]))
        return "  ".join(parts)


def compare(name: str, got: Tensor, expected: Tensor, tol: dict[str, Any]) -> Check:
    """Check `got` against `expected` with the manifest's tolerance semantics (float64):
    `max|y-e| <= max_abs_err`, `cosine >= cosine_sim_min`, `||y-e||/||e|| <= rel_l2_err`."""
    if tuple(got.shape) != tuple(expected.shape):
        return Check(name, False, detail=f"shape {tuple(got.shape)} != {tuple(expected.shape)}")
    y = got.detach().to("cpu", torch.float64).flatten()
    e = expected.detach().to("cpu", torch.float64).flatten()
    if not torch.isfinite(y).all():
        return Check(name, False, detail="non-finite values")
    diff = y - e
    max_abs = diff.abs().max().item() if diff.numel() else 0.0
    e_norm = e.norm().item()
    rel = diff.norm().item() / e_norm if e_norm > 0 else diff.norm().item()
    if e_norm > 0 and y.norm().item() > 0:
        cosine = torch.nn.functional.cosine_similarity(y, e, dim=0).item()
    else:
        cosine = 1.0 if diff.abs().max().item() == 0 else 0.0
    ok = max_abs <= tol.get("max_abs_err", math.inf)
    ok &= cosine >= tol.get("cosine_sim_min", -math.inf)
    ok &= rel <= tol.get("rel_l2_err", math.inf)
    detail = "" if ok else (
        f"(max_abs {max_abs:.3g} vs {tol.get('max_abs_err')}, cos {cosine:.8f} vs "
        f"{tol.get('cosine_sim_min')}, rel {rel:.3g} vs {tol.get('rel_l2_err')})"
    )
    return Check(name, ok, max_abs, cosine, rel, detail)


class Fixtures:
    """A fixture directory: its manifest, tensor files and (cached) models built from it."""

    def __init__(
        self, root: str | Path, device: str | torch.device = "cpu", accel: str = "eager"
    ) -> None:
        """`device`/`accel` choose where and how the models under test run (the fixtures are
        float32: every mode must still meet their tolerances)."""
        self.root = Path(root)
        self.device = device if isinstance(device, torch.device) else parse_device(device)
        self.runtime = RuntimeConfig(
            device=self.device, accel=parse_enum(AccelMode, accel, "acceleration mode"))
        self.manifest = _read_manifest(self.root / "manifest.json")
        self._cache: dict[str, Any] = {}

    @property
    def cases(self) -> list[dict[str, Any]]:
        return list(self.manifest.get("cases", []))

    def path(self, rel: str) -> Path:
        return self.root / rel

    def tensors(self, rel: str) -> dict[str, Tensor]:
        """The tensors of a case file, on the CPU (runners move inputs to `self.device`)."""
        key = f"tensors:{rel}"
        if key not in self._cache:
            self._cache[key] = load_file(str(self.path(rel)))
        return self._cache[key]

    def weights_entry(self, name: str) -> dict[str, Any]:
        return self.manifest["weights"][name]

    def cached(self, key: str, factory: Callable[[], Any]) -> Any:
        """Build once per run (models are shared between the cases that use them)."""
        if key not in self._cache:
            self._cache[key] = factory()
        return self._cache[key]


def _read_manifest(path: Path) -> dict[str, Any]:
    """The manifest, checked for the shape every case runner relies on: an object whose
    `cases` is a list of objects, each with a string `id`."""
    if not path.is_file():
        raise InputError(f"no manifest.json in {path.parent}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    cases = manifest.get("cases", []) if isinstance(manifest, dict) else None
    if not (isinstance(cases, list) and all(
            isinstance(case, dict) and isinstance(case.get("id"), str) for case in cases)):
        raise InputError(f"{path}: 'cases' must be a list of objects, each with a string "
                         "'id'")
    return manifest


def _runner(component: str) -> Callable[[dict[str, Any], Fixtures], list[Check]]:
    target = RUNNERS.get(component)
    if target is None:
        raise KeyError(f"no runner for component {component!r}")
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def run_case(case: dict[str, Any], fx: Fixtures) -> CaseResult:
    result = CaseResult(case["id"], case.get("component", "?"))
    try:
        with torch.inference_mode():
            result.checks = _runner(result.component)(case, fx)
    except Exception as exc:  # noqa: BLE001 - a crash is that case's FAIL line, not the end
        result.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return result


def run_manifest(
    root: str | Path,
    only: list[str] | None = None,
    device: str | torch.device = "cpu",
    accel: str = "eager",
) -> Iterator[CaseResult]:
    """Run the cases of the manifest in `root` (all, or those whose id starts with one of
    `only`), yielding one result per case as it finishes."""
    fx = Fixtures(root, device=device, accel=accel)
    with _deterministic_cpu_math():
        for case in fx.cases:
            if only and not any(case["id"].startswith(o) for o in only):
                continue
            yield run_case(case, fx)


class _deterministic_cpu_math:
    """Fixtures are float32 references: keep TF32 off while they run."""

    def __enter__(self) -> None:
        self._saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    def __exit__(self, *exc: object) -> None:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self._saved
