"""UniPC's steps as linear maps read from diffusers, applied to many requests' rows in one batched product.

With no thresholding and no `solver_p`, each step of diffusers' `UniPCMultistepScheduler` is linear in what it
reads: the sample, the model output, and its history (the last corrected sample and the converted model outputs).
The coefficients depend only on the schedule (config, step count) and the step. `schedule_maps` reads them from
diffusers itself, one float64 step on the CPU per step over basis rows (row j holds 1 in input j and 0 elsewhere),
then checks the maps against diffusers' own steps on random inputs (a schedule that fails the check gets none and is
stepped by diffusers). `step_together` then advances any number of requests, each at its own step and with its own
guidance scale (folded into its coefficients), with about ten kernels in all; diffusers' step launches ~150 small
kernels per request (most on 0-d tensors), which the card runs one after another between two UNet calls.

Inputs of a request's map, per row: the sample, the unconditional and the text-conditioned model outputs (with no
classifier-free guidance: the model output and a zero-weight placeholder), the last corrected sample, and the last
`solver_order` converted model outputs, newest first. Outputs: the next sample, the corrected sample (the next
step's "last"), the converted model output (the newest of the next step's history). They are rounded to the
latents' dtype after each step, as diffusers' step rounds them.
"""

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from diffusers import UniPCMultistepScheduler

OUTPUTS = 3  # next sample, corrected sample, converted model output
CHECK_TOLERANCE = 1e-9  # relative, float64 against diffusers' float64 steps


# Maps read per schedule (config, step count), and a request's float32 maps per schedule, guidance and device; the
# least recently used dropped past CACHED (guidance scales are the users' own floats).
CACHED = 256
_schedules: OrderedDict[tuple, torch.Tensor | None] = OrderedDict()
_requests: OrderedDict[tuple, torch.Tensor | None] = OrderedDict()


def _cached(table: OrderedDict, key: tuple, make: Callable[[], torch.Tensor | None]) -> torch.Tensor | None:
    if key in table:
        table.move_to_end(key)
    else:
        table[key] = make()
        while len(table) > CACHED:
            table.popitem(last=False)
    return table[key]


def _schedule_key(scheduler) -> tuple | None:
    """What fixes a UniPC schedule's maps (None for a scheduler they do not describe)."""
    if type(scheduler) is not UniPCMultistepScheduler or scheduler.config.thresholding:
        return None
    if scheduler.solver_p is not None or scheduler.num_inference_steps is None:
        return None
    return repr(sorted(scheduler.config.items())), scheduler.num_inference_steps


def schedule_maps(scheduler) -> torch.Tensor | None:
    """float64 (steps, OUTPUTS, 3 + solver_order) for the scheduler's schedule (set_timesteps called): step k's
    coefficients of (sample, model output, last corrected sample, converted outputs newest first) in each output;
    None for another scheduler or where the maps do not reproduce diffusers' steps."""
    key = _schedule_key(scheduler)
    if key is None:
        return None
    return _cached(_schedules, key, lambda: _read_maps(scheduler.config, scheduler.num_inference_steps))


def request_maps(scheduler, guidance: float | None, device: torch.device) -> torch.Tensor | None:
    """A request's float32 maps on its device, (steps, OUTPUTS, 4 + solver_order): the model output's column split
    into the unconditional and the text-conditioned outputs' (guidance None: no classifier-free guidance)."""
    key = _schedule_key(scheduler)
    if key is None:
        return None

    def make() -> torch.Tensor | None:
        maps = schedule_maps(scheduler)
        if maps is None:
            return None
        noise = maps[:, :, 1:2]
        # uncond + g (text - uncond); with no guidance the text-conditioned column weighs a placeholder.
        split = [noise, torch.zeros_like(noise)] if guidance is None else [(1 - guidance) * noise, guidance * noise]
        return torch.cat([maps[:, :, :1], *split, maps[:, :, 2:]], dim=2).to(device, torch.float32)

    return _cached(_requests, (key, guidance, device), make)


def _read_maps(config, steps: int) -> torch.Tensor | None:
    probe = _scheduler(config, steps)
    order = probe.config.solver_order
    basis = torch.eye(3 + order, dtype=torch.float64)[:, :, None]  # row j: input j; (rows, input, 1)
    maps = []
    for t in probe.timesteps:
        _set_history(probe, basis[:, 2], [basis[:, 3 + i] for i in range(order)])
        following = probe.step(basis[:, 1], t, basis[:, 0], return_dict=False)[0]
        # Column j of each output: its value in row j, i.e. input j's coefficient.
        maps.append(torch.stack([following[:, 0], probe.last_sample[:, 0], probe.model_outputs[-1][:, 0]]))
    maps = torch.stack(maps)
    return maps if _reproduces(maps, config, steps) else None


def _scheduler(config, steps: int) -> UniPCMultistepScheduler:
    scheduler = UniPCMultistepScheduler.from_config(config)
    scheduler.set_timesteps(steps)
    return scheduler


def _set_history(scheduler, last: torch.Tensor, outputs: Sequence[torch.Tensor]) -> None:
    """The scheduler's history replaced where it holds one (entries it holds none of stay None)."""
    if scheduler.last_sample is not None:
        scheduler.last_sample = last
    for i, output in enumerate(outputs, start=1):
        if scheduler.model_outputs[-i] is not None:
            scheduler.model_outputs[-i] = output


def _reproduces(maps: torch.Tensor, config, steps: int) -> bool:
    """Whether the maps step random float64 inputs as diffusers' steps do, history included."""
    reference = _scheduler(config, steps)
    generator = torch.Generator().manual_seed(0)
    order = reference.config.solver_order
    sample = torch.randn(2, 4, generator=generator, dtype=torch.float64)
    last, outputs = torch.zeros_like(sample), [torch.zeros_like(sample)] * order
    for k, t in enumerate(reference.timesteps):
        noise = torch.randn(sample.shape, generator=generator, dtype=torch.float64)
        theirs = reference.step(noise, t, sample, return_dict=False)[0]
        inputs = torch.stack([sample, noise, last, *outputs])  # (input, rows, values)
        ours, last, newest = torch.einsum("oi,i...->o...", maps[k], inputs)
        outputs = [newest, *outputs[:-1]]
        scale = float(theirs.abs().max())
        if not math.isfinite(scale):  # (diffusers' own step is NaN for some configs)
            return False
        if not torch.allclose(ours, theirs, rtol=CHECK_TOLERANCE, atol=CHECK_TOLERANCE * scale):
            return False
        sample = theirs
    return True


class PlannedSteps:
    """One request's place in its maps and its history (None before its first step)."""

    def __init__(self, maps: torch.Tensor, cfg: bool):
        self.maps, self.cfg = maps, cfg  # cfg: the model's rows are classifier-free guidance's (uncond first)
        self.last: torch.Tensor | None = None
        self.outputs: list[torch.Tensor | None] = [None] * (maps.shape[2] - 4)


def step_together(
    states: Sequence[PlannedSteps], steps: Sequence[int], latents: Sequence[torch.Tensor],
    noises: Sequence[torch.Tensor],
) -> list[torch.Tensor]:
    """Each request's next latents, its history advanced; `noises` are the UNet's predictions for its rows (CFG's
    unconditional rows first). Requests of one latent shape and dtype; nothing is written until all is computed."""
    rows = [len(x) for x in latents]
    columns: list[list[torch.Tensor]] = [[] for _ in range(states[0].maps.shape[2])]
    for state, x, noise in zip(states, latents, noises):
        uncond, text = noise.chunk(2) if state.cfg else (noise, noise)
        history = [x if h is None else h for h in (state.last, *state.outputs)]  # (zero-weight placeholders)
        for column, value in zip(columns, (x, uncond, text, *history)):
            column.append(value)
    inputs = torch.stack([_joined(column) for column in columns], dim=1)  # (rows, input, C, H, W)
    maps = _joined([s.maps[k].expand(n, -1, -1) for s, k, n in zip(states, steps, rows)])
    out = torch.bmm(maps, inputs.flatten(2).float()).to(inputs.dtype).view(len(inputs), OUTPUTS, *inputs.shape[2:])
    following, start = [], 0
    for state, n in zip(states, rows):
        part = out[start : start + n]
        start += n
        following.append(part[:, 0])
        state.last, state.outputs = part[:, 1], [part[:, 2], *state.outputs[:-1]]
    return following


def _joined(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts)
