"""Several users' LoRA trainings in one batch over the slot layers (multilora.py).

`SlotTraining` is one user's job in one slot: the same `Training` state as the peft path (cached latents and
embeddings, AdamW, LR schedule, loss scaler, the reference's random streams, data order, checkpoints), with its
trained weights aliasing its slot's buffers. `shared_step(slots, trainings)` runs one optimizer step for every job
given: micro-batch round k concatenates each job's k-th micro-batch (grouped by latent size and autocast), each
sample carrying its job's slot, and backpropagates the sum of the jobs' own (scaled, accumulation-divided) losses.
A job's gradient comes only from its own samples, so it gets exactly the gradient of the step it would take alone;
each then steps its own optimizer. Each job draws from its own generators, so what it trains does not depend on
who else is in the batch (tests/test_multitrain.py, fp32 CPU: relative L2 <= 1e-5 against the job alone; against
the peft path: losses and first-step gradients within 1e-5, weights within AdamW's amplification of rounding).
Jobs join and leave between calls.

Initialization draws what peft draws: peft's `inject_adapter_in_model` runs on a weightless skeleton of the target
layers (same paths, classes, shapes and dtype) under the job's seed, and saving writes through that skeleton, so the
files are the peft path's (export.write_lora, then write_kohya).

Supported here: lora mode, on the UNet and optionally the text encoder, any rank up to the slots' max rank, alpha,
targets, LR schedules, fp16/bf16 autocast, prior preservation, min-SNR, offset noise. The rest (full mode, 8-bit
Adam, a rank above the slots') takes the peft path: `slot_trainable(params, slots)` says which.
"""

from collections.abc import Sequence

import torch
from peft import inject_adapter_in_model

from .models import TEXT_ENCODER_TARGETS, Models
from .multilora import SlotLoRA, peft_skeleton, peft_weights, set_peft_weights
from .protocol import TrainParams
from .train import ADAPTER, ReferenceRandom, Training, _lora_config


def slot_trainable(params: TrainParams, slots: SlotLoRA) -> bool:
    """Whether a job with these (resolved) parameters can train in a slot."""
    return params.mode == "lora" and not params.use_8bit_adam and params.rank <= slots.max_rank


class SlotTraining(Training):
    """One user's LoRA job in `slot` of the shared models (see the module docstring). `params` must be resolved."""

    def __init__(
        self,
        models: Models,
        params: TrainParams,
        slot: int,
        photos: torch.Tensor,
        class_photos: torch.Tensor | None = None,
        rows: int | None = None,
    ):
        self.slots, self.slot, self.rows = models.slots, slot, rows
        if not slot_trainable(params, self.slots):
            raise ValueError("these parameters need the peft path")
        pipe = models.pipe
        # peft's init draws, in training_session's order: the UNet's adapter, then the text encoder's.
        self.skeletons = {"unet": peft_skeleton(self.slots, "unet", pipe.unet.dtype)}
        targets = {"unet": list(params.target_modules)}
        if params.train_text_encoder:
            self.skeletons["text_encoder"] = peft_skeleton(self.slots, "text_encoder", pipe.text_encoder.dtype)
            targets["text_encoder"] = TEXT_ENCODER_TARGETS
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(params.seed)  # set_seed's CPU side, as training_session does
            for component, skeleton in self.skeletons.items():
                inject_adapter_in_model(_lora_config(params, targets[component]), skeleton, ADAPTER)
            cpu_state = torch.get_rng_state()
        initial = {}
        for component, skeleton in self.skeletons.items():
            initial |= peft_weights(skeleton, component, ADAPTER)
        layers = list(dict.fromkeys(name.rsplit(".lora_", 1)[0] for name in initial))
        self.slots.clear_slot(slot)
        self.named = self.slots.trainable(slot, params.rank, layers)
        with torch.no_grad():
            for name, param in self.named.items():
                param.copy_(initial[name])  # float32, as cast_training_params leaves them
        self.slots.set_scale(slot, params.alpha, params.rank)
        random = ReferenceRandom(params.seed, models.device, cpu_state)
        super().__init__(models, params, models.pipe.unet, photos, class_photos, random)

    def _prepare_trainable(self) -> list[torch.nn.Parameter]:
        return list(self.named.values())

    def _embeddings(self, count: int) -> torch.Tensor:
        # A trained text encoder runs under this job's slot (one row per prompt), with gradients into the slot.
        rows = count * (2 if self.prior else 1)
        with self.slots.train_rows([(self.slot, self.named)] * rows):
            return super()._embeddings(count)

    def _trained_weights(self) -> dict[str, torch.Tensor]:
        # Named as the peft path names them, so that either path resumes the other's checkpoints.
        return {name.replace(".weight", f".{ADAPTER}.weight"): param for name, param in self.named.items()}

    def _lora_modules(self) -> tuple:
        for component, skeleton in self.skeletons.items():
            set_peft_weights(skeleton, component, ADAPTER, self.named)
        return self.skeletons["unet"], self.skeletons.get("text_encoder")

    def step(self) -> float:
        """This job alone (a shared step of one)."""
        outcome = shared_step(self.slots, [self], self.rows)[self]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def close(self) -> None:
        """Leaves the slot empty (the models compute the base again for it)."""
        self.slots.clear_slot(self.slot)


def shared_step(
    slots: SlotLoRA, trainings: Sequence[SlotTraining], rows: int | None = None, bucketed: bool = False
) -> dict[SlotTraining, float | Exception]:
    """One optimizer step for each job; returns each job's mean loss, or the exception that failed it (a job whose
    loss is not finite or whose part of the batch raised fails alone; the others step normally).

    `rows`: UNet calls over exactly this many rows (the batch is cut into chunks and the last padded with zero-slot
    rows), so that kernels compute each job's rows the same way whatever its mates hold (on the CPU: the same
    numbers, measured bit for bit for UNet LoRAs); None: one call per group at its natural size (then a job's
    numbers move with its mates' by float rounding). `bucketed`: a group smaller than `rows` is padded only to the
    next power of two (a job alone computes its own rows, not `rows`; its numbers then move with its mates' only
    when the bucket changes, by float rounding, as with None)."""
    outcome: dict[SlotTraining, float | Exception] = {}
    # Every job's draws for this step first, in the order its own step would draw them (a trained text
    # encoder runs here, keeping its graph for the backward pass).
    draws = {}
    for training in trainings:
        try:
            draws[training] = [training.draw(indices) for indices in training.windows.next()]
        except Exception as error:  # noqa: BLE001 (one job's failure is its own)
            outcome[training] = error
    losses: dict[SlotTraining, list[float]] = {training: [] for training in draws}
    rounds = max((len(d) for d in draws.values()), default=0)
    for k in range(rounds):
        groups: dict[tuple, list[SlotTraining]] = {}
        for training, micro in draws.items():
            if k < len(micro) and training not in outcome:
                key = (tuple(micro[k][0].shape[1:]), training.autocast_dtype)
                groups.setdefault(key, []).append(training)
        for members in groups.values():
            _backward_group(slots, members, [draws[t][k] for t in members], losses, outcome, rows, bucketed)
    for training in draws:
        if training in outcome:
            training.optimizer.zero_grad(set_to_none=True)
            continue
        try:
            outcome[training] = training.finish_step(losses[training])
        except Exception as error:  # noqa: BLE001
            outcome[training] = error
    return outcome


def _backward_group(
    slots: SlotLoRA,
    members: list[SlotTraining],
    inputs: list[tuple[torch.Tensor, ...]],
    losses: dict[SlotTraining, list[float]],
    outcome: dict,
    rows: int | None,
    bucketed: bool = False,
) -> None:
    """One forward and backward over several jobs' micro-batches of one shape. If the forward raises, each job's
    forward again alone, so that only the job at fault fails (a failed forward has added no gradient); a backward
    that raises fails the whole group, whose gradients it may have left half accumulated."""
    try:
        parts = [(members, _forward(slots, members, inputs, rows, bucketed))]
    except Exception:  # noqa: BLE001
        if len(members) == 1:
            raise
        parts = []
        for training, micro in zip(members, inputs):
            try:
                parts.append(([training], _forward(slots, [training], [micro], rows, bucketed)))
            except Exception as error:  # noqa: BLE001
                outcome[training] = error
    for group, (total, values) in parts:
        try:
            total.backward()
        except Exception as error:  # noqa: BLE001
            for training in group:
                outcome[training] = error
            continue
        for training, loss in zip(group, values):
            losses[training].append(loss.item())


def _forward(
    slots: SlotLoRA,
    members: list[SlotTraining],
    inputs: list[tuple[torch.Tensor, ...]],
    rows: int | None,
    bucketed: bool = False,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The members' summed, scaled losses (what to backpropagate) and each member's own loss."""
    noisy = [t.noise_scheduler.add_noise(lat, noise, steps) for t, (lat, noise, steps, _) in zip(members, inputs)]
    rows_of = [(t.slot, t.named) for t, x in zip(members, noisy) for _ in range(len(x))]
    sample, timesteps = torch.cat(noisy), torch.cat([steps for _, _, steps, _ in inputs])
    embeddings = torch.cat([emb for *_, emb in inputs])
    count = len(sample)
    if rows is not None and bucketed and count < rows:
        rows = 1 << (count - 1).bit_length()
    if rows is not None and count % rows:
        # Fixed-shape chunks, padded with zero-slot rows: kernels then compute every row the same way whatever
        # the others hold, so a job's numbers do not depend on its batch mates (nor on the graph's shape on CUDA).
        pad = rows - count % rows
        sample = torch.cat([sample, sample.new_zeros(pad, *sample.shape[1:])])
        timesteps = torch.cat([timesteps, timesteps.new_zeros(pad)])
        embeddings = torch.cat([embeddings, embeddings.new_zeros(pad, *embeddings.shape[1:])])
        rows_of += [None] * pad
    first = members[0]
    predictions = []
    for start in range(0, len(sample), rows or len(sample)):
        chunk = slice(start, start + (rows or len(sample)))
        with slots.train_rows(rows_of[chunk]), first._autocast():
            predictions.append(first.unet(sample[chunk], timesteps[chunk], embeddings[chunk], return_dict=False)[0])
    parts = torch.cat(predictions)[:count].split([len(x) for x in noisy])
    total, values = None, []
    for training, part, (latents, noise, steps, _) in zip(members, parts, inputs):
        loss = training.objective(part, latents, noise, steps, training.prior)
        scaled = training.scaled(loss)
        total = scaled if total is None else total + scaled
        values.append(loss)
    return total, values
