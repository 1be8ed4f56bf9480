"""Cases B*: scheduler tables and the whole guided sampling loop (+ VAE decode)."""

from __future__ import annotations

from typing import Any

import torch

from foleyrt.accel import model_fn
from foleyrt.config import DiffusionConfig, RuntimeConfig
from foleyrt.pipeline.conditions import Conditions, prepare_rows
from foleyrt.pipeline.sampling import StepEvent, denoise, flow_schedule, guidance_active
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
    dit = dit_model(fx, weights["dit"])
    dac = dac_model(fx, weights["dac"])
    params = case["params"]
    tensors = fx.tensors(case["file"])
    inp = {k: tensors[v["key"]].to(fx.device) for k, v in case["inputs"].items()}
    exp = {k: tensors[v["key"]] for k, v in case["expected"].items()}
    tol = case["tolerance"]
    n = params["batch_size"]
    guidance = params["guidance_scale"]
    latent_frames = params.get("latent_frames", int(params["audio_len_in_s"] * 50))

    schedule = flow_schedule(params["num_inference_steps"], diffusion_config(fx, weights["dit"]),
                             n_tokens=latent_frames)
    checks = [
        compare("sigmas", schedule.sigmas, exp["sigmas"], tol["sigmas"]),
        compare("timesteps", schedule.timesteps, exp["timesteps"], tol["timesteps"]),
    ]
    cond = Conditions(inp["siglip2_feat"], inp["syncformer_feat"], inp["text_feat"],
                      inp["uncond_text_feat"])
    prepared = prepare_rows(dit, cond, n, guidance_active(guidance), latent_frames)
    events: list[StepEvent] = []

    def record(event: StepEvent) -> None:
        events.append(event)

    runtime = RuntimeConfig(device=fx.device, accel=fx.accel)
    final = denoise(model_fn(dit, prepared, runtime, schedule), inp["initial_noise"], schedule,
                    guidance, on_step=record)
    ltol = tol["latents"]
    if "latents" in exp:
        got = torch.stack([inp["initial_noise"].float()] + [e.latent for e in events])
        checks.append(compare("latents", got, exp["latents"], ltol))
    if "model_out" in exp:
        checks.append(compare("model_out", torch.stack([e.model_out for e in events]),
                              exp["model_out"], ltol))
    if "velocity_guided" in exp:
        checks.append(compare("velocity_guided", torch.stack([e.guided for e in events]),
                              exp["velocity_guided"], ltol))
    if "step_t" in exp:
        checks.append(compare("step_t", torch.stack([e.timestep for e in events]),
                              exp["step_t"], tol["timesteps"]))
    checks.append(compare("final_latent", final, exp["final_latent"], ltol))
    if "audio" in exp:
        checks.append(compare("audio", dac.decode(final), exp["audio"], tol["audio"]))
    return checks
