"""Cases D*: one forward of the Synchformer visual branch on uint8 segments."""

from __future__ import annotations

from typing import Any

from foleyrt.config import SynchformerConfig
from foleyrt.models.synchformer import Synchformer
from foleyrt.verify.fixtures import Check, Fixtures, compare
from foleyrt.weights import load_synchformer


def synchformer_model(fx: Fixtures, name: str = "synchformer") -> Synchformer:
    """The fixture's Synchformer: the YAML's `VIT` overrides on top of the released config,
    loaded strictly from the fixture file (shared by the D and E cases)."""

    def build() -> Synchformer:
        entry = fx.weights_entry(name)
        cfg = SynchformerConfig.from_official_overrides(entry["config_overrides"]["VIT"])
        return load_synchformer(fx.path(entry["file"]), cfg, device=fx.device)

    return fx.cached(f"synchformer:{name}:{fx.device}", build)


def run(case: dict[str, Any], fx: Fixtures) -> list[Check]:
    model = synchformer_model(fx, case.get("weights", "synchformer"))
    tensors = fx.tensors(case["file"])
    u8 = tensors[case["inputs"]["input_u8"]["key"]].to(fx.device)
    x = (u8.float() / 255 - 0.5) / 0.5  # the case's `call`, op for op
    out = model(x)
    expected = tensors[case["expected"]["out"]["key"]]
    return [compare("out", out, expected, case["tolerance"])]
