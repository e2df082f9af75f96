"""Shared-batch training: each user's adapter trained among others equals the same user trained alone, and alone in
a slot equals the peft path (train.py), so the existing equivalence with diffusers' scripts carries over."""

import io
import math

import pytest
import safetensors.torch
import torch
from safetensors import safe_open

from portrait_engine.engine import Engine
from portrait_engine.errors import EngineError
from portrait_engine.images import load_photos
from portrait_engine.multitrain import SlotTraining, shared_step, slot_trainable
from portrait_engine.protocol import TrainParams


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """CPU kernels split reductions across threads differently at different batch sizes, which moves fp32 results by
    ~1e-5 between runs of different shapes. With one thread the order of the arithmetic depends on the data alone,
    which is what "the same as training alone" is about (measured: 0 for UNet-only users, 5e-6 with the text
    encoder; with two threads up to 1.7e-5)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
from portrait_engine.train import resolve_params, training_session

TOLERANCE = 1e-5  # relative L2, float32 on the CPU
# The weights of a user training the text encoder beside others: 5e-6 measured on an Intel Xeon, 4.8e-5 on an AMD
# EPYC (2026-12-02), whose kernels round a row by its place in the call; UNet-only users stay within TOLERANCE.
WEIGHTS_TOLERANCE = 1e-4
# Relative L2 of the weights with ENGINE_TRAIN_BUCKETS (see its test): 3.3e-5 measured on an AMD EPYC, 1.0e-3 on an
# Intel Xeon (2026-12-02; the same code): AdamW's first steps amplify the 1-row vs 2-row rounding unevenly by CPU.
BUCKETED_TOLERANCE = 3e-3
ROWS = 4  # fixed-shape UNet calls (the engine's train_rows); a's and c's micro-batches fit, b's (4 rows) fills one

USERS = {
    # rank, alpha, learning rate, schedule, steps, accumulation, batch, resolution and options all differ
    "a": dict(rank=4, alpha=8.0, learning_rate=3e-2, max_steps=5, grad_accum=2, resolution=64, seed=1,
              train_text_encoder=True),
    "b": dict(
        rank=2, alpha=4.0, learning_rate=1e-2, max_steps=3, grad_accum=1, batch_size=2, resolution=64, seed=2,
        lr_scheduler="cosine", snr_gamma=5.0, noise_offset=0.1, train_text_encoder=True,
    ),
    "c": dict(
        rank=8, alpha=8.0, learning_rate=2e-2, max_steps=4, grad_accum=2, resolution=128, seed=3,
        target_modules=["to_q", "to_v", "proj_in", "ff.net.2"], lr_scheduler="linear", lr_warmup_steps=1,
    ),
}
JOINS = {"a": 0, "b": 0, "c": 2}  # c joins when the others have taken two steps
PRIOR = {"b"}  # b trains with prior preservation (a and b train the text encoder too)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a.reshape(b.shape)  # peft keeps a 1x1 conv's LoRA as [r, in, 1, 1]; the slots as [r, in]
    scale = b.norm()
    return 0.0 if scale == 0 and a.norm() == 0 else ((a - b).norm() / scale).item()


def _params(engine: Engine, name: str, photos) -> TrainParams:
    return resolve_params(TrainParams(**USERS[name]), engine.models.dtype, "tiny", len(photos), 3 if name in PRIOR else 0)


def _job(engine: Engine, name: str, slot: int, photos, rows: int | None = ROWS) -> SlotTraining:
    params = _params(engine, name, photos)
    class_photos = load_photos(list(reversed(photos)), params.resolution) if name in PRIOR else None
    return SlotTraining(engine.models, params, slot, load_photos(photos, params.resolution), class_photos, rows)


def _result(job: SlotTraining) -> tuple[list[float], dict[str, torch.Tensor]]:
    return list(job.losses), {name: p.detach().clone() for name, p in job.named.items()}


@pytest.fixture(scope="module")
def alone(engine: Engine, photos) -> dict:
    results = {}
    for name in USERS:
        job = _job(engine, name, 0, photos)
        try:
            while job.step_count < job.params.max_steps:
                job.step()
            results[name] = _result(job)
        finally:
            job.close()
    return results


def test_each_user_in_a_shared_batch_equals_the_user_alone(engine: Engine, photos, alone):
    slots = {"a": 5, "b": 1, "c": 3}  # other slots than the alone runs used
    active: dict[str, SlotTraining] = {}
    finished = {}
    batch_sizes = []
    tick = 0
    try:
        while len(finished) < len(USERS):
            for name, at in JOINS.items():
                if at == tick:
                    active[name] = _job(engine, name, slots[name], photos)
            batch_sizes.append(len(active))
            outcome = shared_step(engine.models.slots, list(active.values()), ROWS)
            assert all(isinstance(value, float) for value in outcome.values()), outcome
            for name, job in list(active.items()):
                if job.step_count == job.params.max_steps:
                    finished[name] = _result(job)
                    job.close()
                    del active[name]
            tick += 1
    finally:
        for job in active.values():
            job.close()

    assert 3 in batch_sizes and 2 in batch_sizes  # they really shared steps, and one joined late
    for name in USERS:
        losses, weights = finished[name]
        alone_losses, alone_weights = alone[name]
        assert len(losses) == USERS[name]["max_steps"]
        assert all(abs(x - y) <= TOLERANCE * abs(y) for x, y in zip(losses, alone_losses)), (name, losses, alone_losses)
        assert weights.keys() == alone_weights.keys()
        worst = max(rel(weights[k], alone_weights[k]) for k in weights)
        assert worst <= (TOLERANCE if not USERS[name].get("train_text_encoder") else WEIGHTS_TOLERANCE), (name, worst)
    # Not vacuous: training moved the adapters, and the users differ.
    assert all(w.abs().sum() > 0 for w in finished["a"][1].values())
    assert finished["a"][0] != finished["c"][0]


def _record_gradients(training, names: list[str], into: list[dict]) -> None:
    """Every optimizer step's gradients (unscaled and clipped, what AdamW sees), keyed by `names`."""
    def hook(optimizer, args, kwargs):
        into.append({name: p.grad.detach().clone() for name, p in zip(names, training.trainable)})
    training.optimizer.register_step_pre_hook(hook)


def test_alone_in_a_slot_equals_the_peft_path_and_writes_the_same_files(engine: Engine, photos, tmp_path):
    """Same initialization (bit for bit), same draws, same optimizer code; the LoRA arithmetic differs (gathered
    bmm over zero-padded ranks vs peft's two Linear calls), so values agree to float rounding: the losses of every
    step and the gradients AdamW receives are within 1e-5. The trained weights are compared with a looser bound:
    AdamW divides each gradient element by sqrt(v) + 1e-8, so an element whose gradient is itself ~1e-8 (the keys'
    LoRA has such elements: attention is invariant to a shift shared by all keys) turns rounding noise of ~1e-9
    into an update difference of ~0.1 lr. Measured here: first-step gradients 1.9e-6; after that the states differ by such an element, and final
    weights by up to 1e-3 (one tensor, mid-block attn1.to_k)."""
    for name in ("a", "c"):
        params = _params(engine, name, photos)
        engine.loras.clear()
        peft_grads, slot_grads = [], []
        with training_session(engine.models, params, load_photos(photos, params.resolution)) as training:
            names = [k.replace(".dreambooth", "") for k in training._trained_weights()]
            _record_gradients(training, names, peft_grads)
            while training.step_count < params.max_steps:
                training.step()
            peft_losses = list(training.losses)
            peft_weights = {
                k.replace(".dreambooth", ""): v.detach().clone() for k, v in training._trained_weights().items()
            }
            if name == "a":  # (export's kohya writer refuses c's proj_in / ff keys: a bug of export.py, reported)
                training.save(tmp_path / f"peft-{name}.safetensors")
        job = _job(engine, name, 2, photos, rows=None)  # natural shapes, as the peft path runs them
        try:
            initial = {k: v.detach().clone() for k, v in job.named.items()}
            _record_gradients(job, list(job.named), slot_grads)
            while job.step_count < job.params.max_steps:
                job.step()
            losses, weights = _result(job)
        finally:
            job.close()
        assert all(abs(x - y) <= TOLERANCE * abs(y) for x, y in zip(losses, peft_losses)), (losses, peft_losses)
        assert len(slot_grads) == len(peft_grads) == params.max_steps
        # The first step starts from the same weights: its gradients are the implementation's, nothing amplified.
        assert slot_grads[0].keys() == peft_grads[0].keys() == weights.keys() == peft_weights.keys()
        assert max(rel(slot_grads[0][k], peft_grads[0][k]) for k in weights) <= TOLERANCE
        assert max(rel(weights[k], peft_weights[k]) for k in weights) <= 5e-3
        # Not vacuous: the weights moved from their (shared, identical) start.
        assert min(rel(weights[k], initial[k]) for k in weights if "lora_A" in k) > 1e-3

    # The files: same keys, shapes and adapter metadata as the peft path's, the kohya twin too.
    job = _job(engine, "a", 2, photos, rows=None)
    try:
        while job.step_count < job.params.max_steps:
            job.step()
        kohya = job.save(tmp_path / "slot-a.safetensors")
    finally:
        job.close()
    ours, theirs = tmp_path / "slot-a.safetensors", tmp_path / "peft-a.safetensors"
    a, b = safetensors.torch.load_file(ours), safetensors.torch.load_file(theirs)
    assert a.keys() == b.keys() and max(rel(a[k], b[k]) for k in a) <= 5e-3
    assert any(k.startswith("text_encoder.") for k in a)
    with safe_open(ours, "pt") as x, safe_open(theirs, "pt") as y:
        assert x.metadata()["lora_adapter_metadata"] == y.metadata()["lora_adapter_metadata"]
    assert kohya.exists() and safetensors.torch.load_file(kohya).keys() == safetensors.torch.load_file(
        theirs.with_name("peft-a.kohya.safetensors")
    ).keys()


def test_a_diverging_user_fails_alone(engine: Engine, photos, alone):
    good, bad = _job(engine, "a", 6, photos), _job(engine, "b", 7, photos)
    try:
        with torch.no_grad():
            next(iter(bad.named.values())).fill_(math.nan)
        outcome = shared_step(engine.models.slots, [good, bad], ROWS)
        assert isinstance(outcome[bad], EngineError) and "diverged" in outcome[bad].message
        while good.step_count < good.params.max_steps:
            assert isinstance(shared_step(engine.models.slots, [good], ROWS)[good], float)
        losses, weights = _result(good)
    finally:
        good.close()
        bad.close()
    assert max(rel(weights[k], alone["a"][1][k]) for k in weights) <= TOLERANCE
    assert all(abs(x - y) <= TOLERANCE * abs(y) for x, y in zip(losses, alone["a"][0]))


def test_what_needs_the_peft_path(engine: Engine):
    slots = engine.models.slots
    assert slot_trainable(TrainParams(), slots)
    assert not slot_trainable(TrainParams(mode="full"), slots)
    assert slot_trainable(TrainParams(train_text_encoder=True), slots)
    assert not slot_trainable(TrainParams(use_8bit_adam=True), slots)
    assert not slot_trainable(TrainParams(rank=slots.max_rank + 1), slots)


def test_bucketed_calls_compute_a_lone_job_on_its_own_rows_and_stay_within_tolerance(engine: Engine, photos):
    """ENGINE_TRAIN_BUCKETS: a job alone runs UNet calls of its own micro-batch's rows (a power of two), not ROWS;
    in a shared batch the bucket grows and its numbers move by float rounding only."""
    users = {"a": {**USERS["a"], "train_text_encoder": False},
             "d": {**USERS["a"], "rank": 2, "alpha": 2.0, "learning_rate": 1e-2, "seed": 7, "max_steps": 3}}

    def job(name: str, slot: int) -> SlotTraining:
        params = resolve_params(TrainParams(**users[name]), engine.models.dtype, "tiny", len(photos), 0)
        return SlotTraining(engine.models, params, slot, load_photos(photos, params.resolution), None, ROWS)

    unet, rows_seen = engine.models.pipe.unet, []
    hook = unet.register_forward_pre_hook(lambda module, args: rows_seen.append(len(args[0])))
    results: dict[str, dict] = {"alone": {}, "together": {}}
    try:
        for name in users:
            alone = job(name, 0)
            try:
                while alone.step_count < alone.params.max_steps:
                    assert isinstance(shared_step(engine.models.slots, [alone], ROWS, bucketed=True)[alone], float)
                results["alone"][name] = _result(alone)
            finally:
                alone.close()
        alone_rows, rows_seen[:] = list(rows_seen), []
        jobs = {name: job(name, slot) for name, slot in (("a", 5), ("d", 3))}
        try:
            while any(j.step_count < j.params.max_steps for j in jobs.values()):
                active = [j for j in jobs.values() if j.step_count < j.params.max_steps]
                assert all(isinstance(v, float) for v in shared_step(engine.models.slots, active, ROWS, True).values())
            results["together"] = {name: _result(j) for name, j in jobs.items()}
        finally:
            for j in jobs.values():
                j.close()
    finally:
        hook.remove()
    assert set(alone_rows) == {1}  # batch 1: one row per call, not ROWS
    assert set(rows_seen) == {1, 2}  # together: both jobs' rows in one call (2), then a alone (1)
    # Losses stay within TOLERANCE; the weights do not: AdamW amplifies the 1-row vs 2-row rounding (see
    # BUCKETED_TOLERANCE), hence the default keeps full padding (bit-stable).
    for name in users:
        (losses, weights), (alone_losses, alone_weights) = results["together"][name], results["alone"][name]
        assert all(abs(x - y) <= TOLERANCE * abs(y) for x, y in zip(losses, alone_losses)), (name, losses, alone_losses)
        worst = max(rel(weights[k], alone_weights[k]) for k in weights)
        assert worst <= BUCKETED_TOLERANCE, (name, worst)


COHORT = {
    "c": USERS["c"],
    "d": dict(rank=4, alpha=4.0, learning_rate=1e-2, max_steps=4, grad_accum=2, resolution=64, seed=4,
              noise_offset=0.1, lr_scheduler="cosine"),
}


def test_the_graphed_cohort_computes_the_shared_step_and_its_checkpoints_resume_eagerly(engine: Engine, photos):
    """fast_train.GraphedCohort's body (what it captures in a CUDA graph; on the CPU it runs eagerly) over jobs
    prepared with DeviceSide (fused AdamW, the loss scaler and LR on the device) computes what shared_step computes:
    ranks, resolutions, targets, schedules and offset noise differ, d joins a step late. A checkpoint of d taken
    there loads into an eager job, which ends where the cohort's d ends."""
    from portrait_engine.fast_train import DeviceSide, GraphedCohort

    def job(name: str, slot: int, device_side: bool) -> SlotTraining:
        params = resolve_params(TrainParams(**COHORT[name]), engine.models.dtype, "tiny", len(photos), 0)
        made = SlotTraining(engine.models, params, slot, load_photos(photos, params.resolution), None, ROWS)
        if device_side:
            DeviceSide(made)
        return made

    def run(device_side: bool) -> tuple[dict, dict]:
        cohort = GraphedCohort(engine.models.slots, ROWS)
        jobs, results, checkpoint = {"c": job("c", 2, device_side)}, {}, None
        try:
            while jobs:
                step = cohort.step if device_side else (lambda js: shared_step(engine.models.slots, js, ROWS))
                outcome = step(list(jobs.values()))
                assert all(isinstance(v, float) for v in outcome.values()), outcome
                if "d" not in jobs and "d" not in results:
                    jobs["d"] = job("d", 4, device_side)
                elif jobs.get("d") is not None and jobs["d"].step_count == 2:
                    checkpoint = io.BytesIO()  # written at once, as Checkpoints.save does: the state lives on
                    torch.save(jobs["d"].state_dict(), checkpoint)
                for name, j in list(jobs.items()):
                    if j.step_count >= j.params.max_steps:
                        results[name] = _result(j)
                        j.close()
                        cohort.forget(jobs.pop(name))
        finally:
            for j in jobs.values():
                j.close()
        return results, checkpoint

    graphed, checkpoint = run(device_side=True)
    eager, _ = run(device_side=False)
    for name in COHORT:
        (losses, weights), (eager_losses, eager_weights) = graphed[name], eager[name]
        assert len(losses) == COHORT[name]["max_steps"]
        assert all(abs(x - y) <= TOLERANCE * abs(y) for x, y in zip(losses, eager_losses)), (name, losses, eager_losses)
        assert max(rel(weights[k], eager_weights[k]) for k in weights) <= WEIGHTS_TOLERANCE, name
    resumed = job("d", 4, device_side=False)
    try:
        checkpoint.seek(0)
        resumed.load_state_dict(torch.load(checkpoint, weights_only=True))
        while resumed.step_count < resumed.params.max_steps:
            shared_step(engine.models.slots, [resumed], ROWS)
        losses, weights = _result(resumed)
    finally:
        resumed.close()
    assert all(abs(x - y) <= TOLERANCE * abs(y) for x, y in zip(losses, graphed["d"][0])), (losses, graphed["d"][0])
    assert max(rel(weights[k], graphed["d"][1][k]) for k in weights) <= WEIGHTS_TOLERANCE
