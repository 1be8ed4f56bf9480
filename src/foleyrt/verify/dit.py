"""Cases A*: one forward of the diffusion transformer."""

from __future__ import annotations

from typing import Any

from foleyrt.accel.recipes import apply
from foleyrt.config import DiffusionConfig, DiTConfig
from foleyrt.models.dit import FoleyDiT
from foleyrt.sampling.denoiser import Denoiser
from foleyrt.verify.fixtures import Check, Fixtures, compare
from foleyrt.weights import load_checkpoint_into


def dit_model(fx: Fixtures, name: str = "dit") -> tuple[FoleyDiT, Denoiser]:
    """The fixture's DiT, built from the manifest's official config, loaded strictly, and the
    denoiser the runtime under test makes of it (its blocks transformed in place)."""

    def build() -> tuple[FoleyDiT, Denoiser]:
        entry = fx.weights_entry(name)
        cfg = DiTConfig.from_official(entry["config"]["model_config"]["model_kwargs"])
        model = FoleyDiT(cfg)
        load_checkpoint_into(model, fx.path(entry["file"]))
        model = model.to(fx.device).eval()
        return model, apply(model, fx.runtime)

    return fx.cached(f"dit:{name}:{fx.device}:{fx.runtime.accel.value}", build)


def diffusion_config(fx: Fixtures, name: str = "dit") -> DiffusionConfig:
    return DiffusionConfig.from_official(fx.weights_entry(name)["config"]["diffusion_config"])


def run(case: dict[str, Any], fx: Fixtures) -> list[Check]:
    model, _ = dit_model(fx, case.get("weights", "dit"))
    tensors = fx.tensors(case["file"])
    args = {k: tensors[v["key"]].to(fx.device) for k, v in case["inputs"].items()}
    out = model(**args, drop_visual=case.get("drop_visual"))
    expected = tensors[case["expected"]["out"]["key"]]
    checks = [compare("out", out, expected, case["tolerance"])]
    effective = case.get("effective_inputs")
    if effective:
        # Same output from the substituted inputs and no drop_visual (the manifest's promise).
        args.update({k: tensors[v["key"]].to(fx.device) for k, v in effective.items()})
        checks.append(compare("out(effective inputs)", model(**args), expected, case["tolerance"]))
    return checks
