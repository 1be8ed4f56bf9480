"""Cases C*: the audio VAE (decode, preprocess + encode) and its official checkpoint container.

A case is handled by what it provides, not by its id: input `z` is decoded to `audio`; input
`audio` is preprocessed and encoded to `preprocessed`, `mean`, `logvar`, `std`, `var`, `kl`.
Every name under `expected` is compared with its tolerance (flat, or nested per output).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from foleyrt.config import DACConfig
from foleyrt.models.dac_vae import DACVAE
from foleyrt.verify.fixtures import Check, Fixtures, compare
from foleyrt.weights import load_dac, read_checkpoint


def dac_model(fx: Fixtures, name: str = "dac") -> DACVAE:
    """The fixture's whole VAE (encoder included), from the manifest's constructor kwargs."""

    def build() -> DACVAE:
        entry = fx.weights_entry(name)
        return load_dac(
            fx.path(entry["file"]),
            config=DACConfig.from_kwargs(entry["constructor_kwargs"]),
            decoder_only=False,
            device=fx.device,
        )

    return fx.cached(f"dac:{name}:{fx.device}", build)


def run(case: dict[str, Any], fx: Fixtures) -> list[Check]:
    name = case.get("weights", "dac")
    model = dac_model(fx, name)
    tensors = fx.tensors(case["file"])
    inputs = {k: tensors[v["key"]].to(fx.device) for k, v in case["inputs"].items()}
    sample_rate = case.get("params", {}).get("sample_rate", model.sample_rate)
    outputs = _outputs(model, inputs, sample_rate)
    checks = []
    for out_name, spec in case["expected"].items():
        expected = tensors[spec["key"]]
        if out_name not in outputs:
            checks.append(Check(out_name, False, detail=f"no output {out_name!r} for inputs "
                                f"{sorted(inputs)}"))
            continue
        checks.append(compare(out_name, outputs[out_name], expected,
                              _tolerance(case["tolerance"], out_name)))
    container = fx.cached(f"dac-container:{name}", lambda: _container_check(fx, name))
    if container is not None:
        checks.append(container)
    return checks


def _outputs(model: DACVAE, inputs: dict[str, Tensor], sample_rate: int) -> dict[str, Tensor]:
    """Every quantity the given inputs allow."""
    outputs: dict[str, Tensor] = {}
    if "z" in inputs:
        outputs["audio"] = model.decode(inputs["z"])
    if "audio" in inputs:
        x = model.preprocess(inputs["audio"], sample_rate)
        posterior = model.encode(x)
        outputs.update(preprocessed=x, mean=posterior.mean, logvar=posterior.logvar,
                       std=posterior.std, var=posterior.var, kl=posterior.kl())
    return outputs


def _tolerance(tolerance: dict[str, Any], output: str) -> dict[str, Any]:
    nested = tolerance.get(output)
    return nested if isinstance(nested, dict) else tolerance


def _container_check(fx: Fixtures, name: str) -> Check | None:
    """The official container (`DAC.load` input) must give the same model as the plain file:
    same architecture from its metadata, and bit-identical tensors."""
    entry = fx.weights_entry(name)
    container = entry.get("official_container")
    if not container:
        return None
    check = f"official_container({container['file']})"
    model = load_dac(fx.path(container["file"]), decoder_only=False, fold=False)
    want_cfg = DACConfig.from_kwargs(entry["constructor_kwargs"])
    if model.config != want_cfg:
        return Check(check, False, detail=f"config {model.config} != {want_cfg}")
    got = model.state_dict()
    reference = read_checkpoint(fx.path(entry["file"])).state_dict
    if set(got) != set(reference):
        return Check(check, False, detail=f"key sets differ ({len(got)} vs {len(reference)})")
    worst = max(
        ((got[k].double() - reference[k].double()).abs().max().item() for k in reference),
        default=0.0,
    )
    return Check(check, worst == 0.0, max_abs=worst, detail="" if worst == 0.0 else "not equal")
