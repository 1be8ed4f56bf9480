"""Cases B*: scheduler tables and the whole guided sampling loop (+ VAE decode)."""

from __future__ import annotations

from typing import Any

import torch

from foleyrt.config import DiffusionConfig
from foleyrt.lengths import latent_frames
from foleyrt.sampling.conditions import Conditions
from foleyrt.sampling.loop import StepEvent, Task, denoise
from foleyrt.sampling.schedule import flow_schedule
from foleyrt.verify.dac import dac_model
from foleyrt.verify.dit import diffusion_config, dit_model
from foleyrt.verify.fixtures import Check, Fixtures, compare


def run_scheduler(case: dict[str, Any], fx: Fixtures) -> list[Check]:
    tensors = fx.tensors(case["file"])
    tol = case["tolerance"]
    checks = []
    for setting in case["settings"]:
        cfg = _diffusion_from_scheduler_kwargs(setting["constructor_kwargs"])
        kwargs = setting["set_timesteps_kwargs"]
        schedule = flow_schedule(kwargs["num_inference_steps"], cfg, kwargs.get("n_tokens"))
        name = setting["name"]
        checks.append(compare(f"{name}.sigmas", schedule.sigmas,
                              tensors[setting["sigmas"]["key"]], tol))
        checks.append(compare(f"{name}.timesteps", schedule.timesteps,
                              tensors[setting["timesteps"]["key"]], {"max_abs_err": 1e-4}))
    return checks


def _diffusion_from_scheduler_kwargs(kwargs: dict[str, Any]) -> DiffusionConfig:
    """Map `FlowMatchDiscreteScheduler(...)` arguments onto the YAML field names."""
    names = {
        "shift": "sample_flow_shift",
        "reverse": "flow_reverse",
        "solver": "flow_solver",
        "use_flux_shift": "sample_use_flux_shift",
        "flux_base_shift": "flux_base_shift",
        "flux_max_shift": "flux_max_shift",
    }
    return DiffusionConfig(**{names[k]: v for k, v in kwargs.items() if k in names})


def run_loop(case: dict[str, Any], fx: Fixtures) -> list[Check]:
    weights = case["weights"]
    _, denoiser = dit_model(fx, weights["dit"])
    dac = dac_model(fx, weights["dac"])
    params = case["params"]
    tensors = fx.tensors(case["file"])
    inp = {k: tensors[v["key"]].to(fx.device) for k, v in case["inputs"].items()}
    exp = {k: tensors[v["key"]] for k, v in case["expected"].items()}
    tol = case["tolerance"]
    guidance = params["guidance_scale"]
    n_latent = params.get("latent_frames", latent_frames(params["audio_len_in_s"]))

    schedule = flow_schedule(params["num_inference_steps"], diffusion_config(fx, weights["dit"]),
                             n_tokens=n_latent)
    checks = [
        compare("sigmas", schedule.sigmas, exp["sigmas"], tol["sigmas"]),
        compare("timesteps", schedule.timesteps, exp["timesteps"], tol["timesteps"]),
    ]
    cond = Conditions(inp["siglip2_feat"], inp["syncformer_feat"], inp["text_feat"],
                      inp["uncond_text_feat"])
    noise = inp["initial_noise"]
    if noise.shape[0] != params["batch_size"] or noise.shape[-1] != n_latent:
        raise ValueError(f"initial noise {tuple(noise.shape)} does not match the case's params")
    events: list[StepEvent] = []

    def record(event: StepEvent) -> None:
        events.append(event)

    (final,) = denoise(denoiser, [Task.whole(noise, guidance, cond)], schedule, on_step=record)
    ltol = tol["latents"]
    if "latents" in exp:
        got = torch.stack([noise.float()] + [e.latents[0] for e in events])
        checks.append(compare("latents", got, exp["latents"], ltol))
    if "model_out" in exp:
        outs = [e.model_out[0] for e in events]
        checks.append(compare("model_out", torch.stack([o for o in outs if o is not None]),
                              exp["model_out"], ltol))
    if "velocity_guided" in exp:
        checks.append(compare("velocity_guided", torch.stack([e.guided[0] for e in events]),
                              exp["velocity_guided"], ltol))
    if "step_t" in exp:
        checks.append(compare("step_t", torch.stack([e.timestep for e in events]),
                              exp["step_t"], tol["timesteps"]))
    checks.append(compare("final_latent", final, exp["final_latent"], ltol))
    if "audio" in exp:
        checks.append(compare("audio", dac.decode(final), exp["audio"], tol["audio"]))
    return checks
