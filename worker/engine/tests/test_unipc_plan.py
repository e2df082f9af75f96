"""UniPC's steps as linear maps read from diffusers: they step as diffusers' scheduler does, across configs, several
requests at different steps and guidance scales in one product."""

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

from portrait_engine import unipc_plan

SD15 = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
            steps_offset=1, set_alpha_to_one=False, clip_sample=False, skip_prk_steps=True)
CONFIGS = [
    {},
    dict(solver_order=3),
    dict(solver_type="bh1", final_sigmas_type="sigma_min"),  # (bh1 to a zero sigma is NaN in diffusers too)
    dict(predict_x0=False, final_sigmas_type="sigma_min"),  # (so is this one to a zero sigma)
    dict(prediction_type="v_prediction"),
    dict(use_karras_sigmas=True),
    dict(lower_order_final=False, final_sigmas_type="sigma_min"),  # (and this one)
    dict(disable_corrector=[0, 3]),
    dict(timestep_spacing="trailing"),
]


def _scheduler(steps: int, **config) -> UniPCMultistepScheduler:
    scheduler = UniPCMultistepScheduler.from_config({**SD15, **config})
    scheduler.set_timesteps(steps)
    return scheduler


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "sd15")
def test_several_requests_in_one_product_step_as_diffusers_steps_each(config):
    generator = torch.Generator().manual_seed(1)
    # (steps, images, guidance or None, the step it joins at): different schedules' lengths, CFG or not.
    requests = [(6, 2, 7.5, 0), (6, 1, None, 2), (9, 1, 3.0, 1)]
    theirs, ours = [], []
    for steps, images, guidance, _ in requests:
        latents = torch.randn(images, 4, 8, 8, generator=generator)
        noises = [torch.randn(images * (2 if guidance else 1), 4, 8, 8, generator=generator) for _ in range(steps)]
        theirs.append(dict(scheduler=_scheduler(steps, **config), latents=latents, noises=noises, guidance=guidance))
        maps = unipc_plan.request_maps(_scheduler(steps, **config), guidance, torch.device("cpu"))
        assert maps is not None and maps.shape == (steps, 3, 4 + {**SD15, **config}.get("solver_order", 2))
        ours.append(dict(state=unipc_plan.PlannedSteps(maps, guidance is not None), latents=latents, step=0))
    for tick in range(12):
        active = [i for i, (steps, _, _, joins) in enumerate(requests) if joins <= tick and ours[i]["step"] < steps]
        if not active:
            break
        for i in active:  # diffusers, request by request
            r = theirs[i]
            noise = r["noises"][ours[i]["step"]]
            if r["guidance"] is not None:
                uncond, text = noise.chunk(2)
                noise = uncond + r["guidance"] * (text - uncond)
            t = r["scheduler"].timesteps[ours[i]["step"]]
            r["latents"] = r["scheduler"].step(noise, t, r["latents"], return_dict=False)[0]
        following = unipc_plan.step_together(  # ours, all at once
            [ours[i]["state"] for i in active], [ours[i]["step"] for i in active],
            [ours[i]["latents"] for i in active], [theirs[i]["noises"][ours[i]["step"]] for i in active],
        )
        for i, latents in zip(active, following):
            ours[i]["latents"], ours[i]["step"] = latents, ours[i]["step"] + 1
            reference = theirs[i]["latents"]
            torch.testing.assert_close(latents, reference, rtol=1e-5, atol=1e-5 * float(reference.abs().max()))
    assert all(o["step"] == steps for o, (steps, *_) in zip(ours, requests))


def test_no_maps_where_the_step_is_not_linear_or_not_unipc():
    assert unipc_plan.schedule_maps(_scheduler(5, thresholding=True)) is None  # clips by a quantile: not linear
    assert unipc_plan.schedule_maps(_scheduler(5, solver_type="bh1")) is None  # diffusers' own last step is NaN
    dpm = DPMSolverMultistepScheduler.from_config(SD15)
    dpm.set_timesteps(5)
    assert unipc_plan.schedule_maps(dpm) is None
    assert unipc_plan.schedule_maps(UniPCMultistepScheduler.from_config(SD15)) is None  # no set_timesteps yet


def test_maps_that_do_not_reproduce_diffusers_are_refused():
    scheduler = _scheduler(5)
    maps = unipc_plan.schedule_maps(scheduler)
    assert unipc_plan._reproduces(maps, scheduler.config, 5)
    bent = maps.clone()
    bent[3, 0, 0] *= 1 + 1e-6
    assert not unipc_plan._reproduces(bent, scheduler.config, 5)


def test_the_maps_kept_are_bounded(monkeypatch):
    monkeypatch.setattr(unipc_plan, "CACHED", 3)
    first = unipc_plan.request_maps(_scheduler(4), 1.5, torch.device("cpu"))
    for guidance in (2.0, 2.5, 3.0):  # the users' own guidance scales: each another entry
        unipc_plan.request_maps(_scheduler(4), guidance, torch.device("cpu"))
    assert len(unipc_plan._requests) <= 3
    again = unipc_plan.request_maps(_scheduler(4), 1.5, torch.device("cpu"))  # read again, the same maps
    assert again is not first and torch.equal(again, first)
