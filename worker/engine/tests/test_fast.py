"""The fast path on the CPU: selection by config, fallbacks, batch buckets, and that the code the CUDA graphs capture
(same buffers, same step body, same LoRA slots, run eagerly here) computes exactly what diffusers' pipelines do."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from portrait_engine import fast_train
from portrait_engine.config import EngineConfig, parse_config
from portrait_engine.engine import Engine
from portrait_engine.fast import (
    ChunkedGroupNorm,
    FastGenerator,
    FastSettings,
    chunk_group_norms,
    chunked_group_norm,
    settings_from_env,
)
from portrait_engine.multigen import Generation, denoise_step
from portrait_engine.multilora import NONE, SlotLinear
from portrait_engine.protocol import GenerateRequest, TrainParams, TrainRequest

from .support import ENGINE_DIR, QUICK_TRAIN, RecordingJob, ScheduledJob, assert_same_images

SIZE = 64


@pytest.fixture(scope="module")
def fast(engine: Engine) -> FastGenerator:
    generator = FastGenerator(engine.models, FastSettings(batch_sizes=(1, 2, 4), width=SIZE, height=SIZE))
    generator.warm_up()
    return generator


@pytest.fixture(scope="module")
def other_lora(engine: Engine, photos: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second user: other photo order, other seed, so its LoRA differs from trained_lora."""
    output = tmp_path_factory.mktemp("other") / "other.safetensors"
    params = TrainParams(**{**QUICK_TRAIN, "seed": 5})
    engine.train(TrainRequest(id="other", op="train", photos=photos[::-1], output=str(output), params=params),
                 RecordingJob())
    return output


@pytest.fixture
def slots(engine: Engine):
    """Slot 0 and 1 for this test's users, cleared afterwards (the slot table is the session's)."""
    yield engine.models.slots
    for slot in (0, 1):
        engine.models.slots.clear_slot(slot)


def request(**fields) -> GenerateRequest:
    defaults = dict(prompt="a photo of sks person", steps=3, width=SIZE, height=SIZE, seed=11, output_dir="/tmp/x")
    return GenerateRequest(**{"id": "g", "op": "generate", **defaults, **fields})


def pixels(images: list[Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.int16) for image in images])


def run(engine: Engine, cases, fast: FastGenerator | None, settle: bool = True) -> list[np.ndarray]:
    """(request, slot, control image) cases denoised together as the scheduler does it; each one's images. As the
    scheduler does when a request ends, the UNet's own weights are put back (unless `settle` is False)."""
    generations = [Generation(engine.models, r, r.seed, control, slot, fast) for r, slot, control in cases]
    while not all(g.done for g in generations):
        assert denoise_step(engine.models, generations, fast) == {}
    if fast is not None and settle:
        fast.settle()
    return [pixels(g.finish()) for g in generations]


# --- selection -------------------------------------------------------------------------------------------------


def test_engine_fast_selects_the_path_and_auto_means_cuda():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    base = dict(profile="tiny", cache_dir=Path("/c"))
    assert not EngineConfig(**base, device=cpu).use_fast  # auto without CUDA: the plain path
    assert EngineConfig(**base, device=cuda).use_fast
    assert not EngineConfig(**base, device=cuda, fast="off").use_fast
    assert EngineConfig(**base, device=cpu, fast="on").use_fast
    assert parse_config([], {"ENGINE_FAST": "off"}).fast == "off"
    assert parse_config(["--fast", "on"], {"ENGINE_FAST": "off"}).fast == "on"


def test_bad_engine_fast_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit:
        parse_config([], {"ENGINE_FAST": "fast"})
    assert exit.value.code == 2 and "ENGINE_FAST" in capsys.readouterr().err


def test_settings_from_the_environment():
    default = settings_from_env({})
    assert (default.batch_sizes, default.compile_batches, default.width, default.height) == ((1, 2, 4, 8), (1, 8), 512, 512)
    custom = settings_from_env({"ENGINE_FAST_BATCHES": "8,2", "ENGINE_FAST_COMPILE": "none", "ENGINE_FAST_SIZE": "768x512"})
    assert (custom.batch_sizes, custom.compile_batches, custom.width, custom.height) == ((2, 8), (), 768, 512)
    assert default.merged_batches == (1,) and settings_from_env({"ENGINE_FAST_MERGE": "off"}).merged_batches == ()
    jit = settings_from_env({"ENGINE_FAST_AOT": "0"})  # torch.compile in the engine's process, as before packages
    assert jit.compile_batches == (1,) and not jit.compile_vae and settings_from_env({"ENGINE_FAST_AOT": "0", "ENGINE_FAST_COMPILE_VAE": "1"}).compile_vae
    # Convolution weights in channels_last: opt-in (not yet measured through the engine on a card).
    assert not default.channels_last and settings_from_env({"ENGINE_FAST_CHANNELS_LAST": "1"}).channels_last


def test_without_cuda_the_engine_runs_the_plain_path(engine: Engine):
    assert engine.config.device.type == "cpu" and engine.fast is None and engine.warmup is None
    assert fast_train.refusal(TrainParams(), torch.device("cpu"), False) == "no CUDA"


def test_graphed_training_refuses_what_it_does_not_compute():
    cuda = torch.device("cuda")
    assert fast_train.refusal(TrainParams(), cuda, False) is None
    assert fast_train.refusal(TrainParams(mode="full"), cuda, False) is None  # GraphedStep trains the whole UNet too
    assert fast_train.refusal(TrainParams(train_text_encoder=True), cuda, False) == "text-encoder training"
    assert fast_train.refusal(TrainParams(), cuda, True) == "prior preservation"
    assert fast_train.refusal(TrainParams(snr_gamma=5.0), cuda, False) == "min-SNR weighting"
    # Checkpoints are taken and resumed around graphed steps (DeviceSide keeps GradScaler's state format).
    assert fast_train.refusal(TrainParams(checkpoint_steps=10), cuda, False) is None


@pytest.mark.parametrize("shape", [(1, 64, 16, 16), (2, 32, 8, 24), (1, 96, 5, 7), (3, 64, 10)])
def test_chunked_group_norm_is_group_norm(shape):
    g = torch.Generator().manual_seed(len(shape))
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 40  # a mean far from 0: the combine must hold
    weight, bias = torch.randn(shape[1], generator=g, dtype=torch.float64), torch.randn(shape[1], dtype=torch.float64)
    exact = torch.nn.functional.group_norm(x, 32, weight, bias, 1e-6)
    for chunks in (1, 4, 64):  # 64 does not divide every group: one chunk then
        ours = chunked_group_norm(x.float(), 32, weight.float(), bias.float(), 1e-6, chunks)
        assert ours.dtype == torch.float32 and (ours.double() - exact).abs().max() < 1e-4
    plain = torch.nn.functional.group_norm(x, 32, eps=1e-6)  # no affine parameters (moments in float32 still)
    assert (chunked_group_norm(x, 32, None, None, 1e-6) - plain).abs().max() < 1e-4


def test_chunked_group_norm_layers_take_it_only_where_torch_is_slow(monkeypatch):
    from portrait_engine import fast as fast_module

    module = torch.nn.Sequential(torch.nn.GroupNorm(32, 64), torch.nn.Conv2d(64, 64, 1), torch.nn.GroupNorm(32, 64))
    assert chunk_group_norms(module) == 2 and all(type(module[i]) is ChunkedGroupNorm for i in (0, 2))
    calls = []
    monkeypatch.setattr(fast_module, "chunked_group_norm", lambda *a: calls.append(a[0].shape) or a[0])
    monkeypatch.setattr(fast_module, "CHUNKED_GROUP_NORM_MIN_PIXELS", 64)
    layer = module[0]
    layer(torch.zeros(1, 64, 8, 8))  # 32 rows, 64 pixels: chunked
    layer(torch.zeros(1, 64, 4, 8))  # fewer pixels: torch
    layer(torch.zeros(8, 64, 8, 8))  # 256 rows: torch
    assert calls == [(1, 64, 8, 8)]


def test_a_batch_takes_the_smallest_graph_that_holds_its_rows(fast):
    rows = [fast.graph_for(torch.zeros(n, 4, *fast.latent_hw), False) for n in range(1, 10)]
    assert [g.rows if g else None for g in rows] == [2, 2, 4, 4, 8, 8, 8, 8, None]


# --- the graphed call computes what multigen's eager call computes -------------------------------------------------


@pytest.mark.parametrize("scheduler", ["unipc", "euler_a", "dpmpp_2m_karras", "ddim"])
def test_graph_route_equals_the_eager_batched_call(engine, fast, slots, trained_lora, other_lora, scheduler):
    slots.load_slot_file(0, trained_lora, 1.0)
    slots.load_slot_file(1, other_lora, 0.6)
    cases = [  # two users, a request without LoRA, CFG off: 2 + 1 + 2 + 1 = 6 rows in the 8-row graph
        (request(scheduler=scheduler, num_images=1), 0, None),
        (request(scheduler=scheduler, prompt="two", seed=3, guidance_scale=1.0), NONE, None),
        (request(scheduler=scheduler, prompt="three", seed=5, guidance_scale=4.0), 1, None),
        (request(scheduler=scheduler, prompt="four", seed=6, guidance_scale=1.0), 1, None),
    ]
    graph = fast.graph_for(torch.zeros(6, 4, *fast.latent_hw), False)
    assert graph.rows == 8
    calls = graph.calls
    ours, theirs = run(engine, cases, fast), run(engine, cases, None)
    assert graph.calls == calls + cases[0][0].steps  # every step went through the graph
    for a, b in zip(ours, theirs):
        assert_same_images(a, b)
    assert not np.array_equal(ours[0], run(engine, [(request(scheduler=scheduler), NONE, None)], fast)[0])  # LoRA acts


def test_graph_route_with_controlnet_equals_the_eager_call(engine, fast, slots, trained_lora, photos):
    slots.load_slot_file(0, trained_lora, 1.0)
    control = Image.open(photos[0]).convert("RGB")
    cases = [(request(controlnet_scale=0.5, negative_prompt="blurry", guidance_scale=5.0), 0, control),
             (request(controlnet_scale=1.0, seed=2), NONE, control)]
    calls = fast.graphs[(True, 4)].calls
    for a, b in zip(run(engine, cases, fast), run(engine, cases, None)):
        assert np.array_equal(a, b)
    assert fast.graphs[(True, 4)].calls == calls + 3


def test_switching_users_is_an_index_and_leaves_nothing_behind(engine, fast, slots, trained_lora, other_lora):
    slots.load_slot_file(0, trained_lora, 1.0)
    slots.load_slot_file(1, other_lora, 1.0)
    a = run(engine, [(request(), 0, None)], fast)[0]
    b = run(engine, [(request(), 1, None), (request(seed=4, num_images=3), 0, None)], fast)  # fills all 8 rows
    assert not np.array_equal(a, b[0][:1])
    # Back to user a alone (2-row graph), then beside a request without CFG (3 rows: the 4-row graph's last row
    # still holds the previous call's data).
    assert np.array_equal(run(engine, [(request(), 0, None)], fast)[0], a)
    assert_same_images(run(engine, [(request(), 0, None), (request(seed=9, guidance_scale=1.0), NONE, None)],
                               fast)[0], a)


def test_graphs_update_the_served_layers_and_send_other_loras_eagerly(engine, fast, slots, trained_lora, tmp_path):
    from .test_multilora import random_lora

    assert fast.served and all(name.startswith("unet.") and name.endswith(("to_q", "to_k", "to_v", "to_out.0"))
                               for name in fast.served)
    slots.load_slot_file(0, trained_lora, 1.0)  # attention only: served
    graph = fast.graph_for(torch.zeros(4, 4, *fast.latent_hw), False)
    assert not graph.merged
    assert sorted(name for g in fast.hoist for name in g.names) == sorted(fast.served)  # gathered once per group
    hoisted, original = [], SlotLinear._add_update
    SlotLinear._add_update = staticmethod(lambda *a: hoisted.append(1) or original(*a))
    try:
        calls = graph.calls
        run(engine, [(request(num_images=2), 0, None)], fast)
    finally:
        SlotLinear._add_update = staticmethod(original)
    assert graph.calls == calls + request().steps
    assert len(hoisted) == len(fast.served) * request().steps  # every served layer read the hoisted rows
    assert {name for name, layer in slots.layers.items() if layer.slot_live} == fast.served  # as captured
    # A LoRA on a feed-forward layer too: the graphs would miss its update, so it runs eagerly, and correctly.
    ff = random_lora(engine, tmp_path / "ff.safetensors", 2, 2.0, 3, ["to_q", "ff.net.2"], False)
    slots.load_slot_file(1, ff, 1.0)
    calls = graph.calls
    ours = run(engine, [(request(), 1, None)], fast)[0]
    assert graph.calls == calls
    assert np.array_equal(ours, run(engine, [(request(), 1, None)], None)[0])
    assert not np.array_equal(ours, run(engine, [(request(), NONE, None)], None)[0])


def test_one_image_graphs_merge_its_users_lora_into_the_weights_once_per_request(engine, fast, slots, trained_lora,
                                                                                 other_lora):
    assert fast.settings.merged_batches == (1,) and fast.info["merged"] == [1]
    assert all(fast.graphs[(cn, 2)].merged and not fast.graphs[(cn, 2)].live for cn in (False, True))
    slots.load_slot_file(0, trained_lora, 1.0)
    slots.load_slot_file(1, other_lora, 0.7)
    base = [w.clone() for w in fast.merge.weights]
    assert len(base) == len(fast.served)  # the UNet's attention projections, nothing else
    own = lambda: all(torch.equal(w, b) for w, b in zip(fast.merge.weights, base))  # noqa: E731
    merged, merging, unmerging = fast.graphs[(False, 2)], fast.merging, fast.unmerging
    counts = lambda: (merged.calls, merging.calls, unmerging.calls)  # noqa: E731
    # The eager path's pictures first: an eager UNet call outside predict would read merged weights (the scheduler
    # settles before anything else reads them: the next test).
    pair = [(request(guidance_scale=1.0), 0, None), (request(guidance_scale=1.0, seed=3), 1, None)]
    bigger = request(width=2 * SIZE, height=SIZE)
    eager = {name: run(engine, cases, None) for name, cases in (
        ("one", [(request(), 0, None)]), ("two", [(request(), 1, None)]), ("plain", [(request(), NONE, None)]),
        ("pair", pair), ("bigger", [(bigger, 0, None)]))}
    before = counts()
    one = run(engine, [(request(), 0, None)], fast, settle=False)[0]
    # Merged once for the request's 3 steps, and left in the weights for the next call.
    assert counts() == (before[0] + request().steps, before[1] + 1, before[2])
    assert fast.resident == 0 and not own()
    assert_same_images(one, eager["one"][0])  # (W + BA)x vs Wx + B(Ax): float rounding
    # The same user again: nothing to merge. Another user: the first taken out, the second merged.
    assert np.array_equal(run(engine, [(request(), 0, None)], fast, settle=False)[0], one)
    assert counts()[1:] == (before[1] + 1, before[2])
    two = run(engine, [(request(), 1, None)], fast, settle=False)[0]
    assert counts()[1:] == (before[1] + 2, before[2] + 1) and fast.resident == 1
    assert_same_images(two, eager["two"][0])
    # No LoRA: the UNet's own weights, nothing merged.
    plain = run(engine, [(request(), NONE, None)], fast, settle=False)[0]
    assert fast.resident is None and own() and counts()[1:] == (before[1] + 2, before[2] + 2)
    assert np.array_equal(plain, eager["plain"][0])
    # Two users' rows (without CFG they fit two rows, but not one merged graph: the slot layers' 4-row graph takes
    # them) right after a merged request: the slot graph's UNet must not see the merged weights.
    run(engine, [(request(), 0, None)], fast, settle=False)
    assert fast.resident == 0
    assert fast.graph_for(torch.zeros(2, 4, *fast.latent_hw), False, [0, 1]).rows == 4
    sliced = fast.graphs[(False, 4)].calls
    for a, b in zip(run(engine, pair, fast, settle=False), eager["pair"]):
        assert_same_images(a, b)
    assert fast.graphs[(False, 4)].calls == sliced + request().steps and fast.resident is None and own()
    # Nor an eager call (another latent size): predict takes the LoRA out before it declines.
    run(engine, [(request(), 0, None)], fast, settle=False)
    assert_same_images(run(engine, [(bigger, 0, None)], fast, settle=False)[0], eager["bigger"][0])
    assert fast.resident is None and own()
    # A UNet call that raises after the merge leaves it recorded: settle() still takes it out.
    unet = engine.models.pipe.unet
    unet.forward = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("out of memory"))
    try:
        failing = Generation(engine.models, request(), 11, None, 1, fast)
        assert isinstance(denoise_step(engine.models, [failing], fast)[failing], RuntimeError)
    finally:
        del unet.forward
    assert fast.resident == 1 and not own()
    fast.settle()
    assert fast.resident is None and own()
    fast.settle()  # (nothing merged: nothing to do)
    assert counts()[2] == before[2] + 5


def test_the_scheduler_takes_a_merged_lora_out_before_trainings_and_when_its_request_ends(
    engine, fast, slots, photos, trained_lora, tmp_path, monkeypatch
):
    """A portrait's LoRA stays merged in the UNet's weights across ticks; a training's step in the same tick, and
    whatever comes after the portrait, gets the UNet's own weights: the training ends as it does alone."""
    from portrait_engine.scheduler import Scheduler

    params = dict(max_steps=10, resolution=SIZE, learning_rate=1e-2, seed=4)  # outlasts both portraits

    def train(name: str) -> TrainRequest:
        return TrainRequest(id=name, op="train", photos=photos, output=str(tmp_path / f"{name}.safetensors"),
                            params=TrainParams(**params))

    def portrait(name: str) -> GenerateRequest:
        return request(id=name, lora=str(trained_lora), output_dir=str(tmp_path / name), steps=4)

    monkeypatch.setattr(engine, "fast", fast)
    ended = []
    scheduler = Scheduler(engine, ended.append, train_rows=8, train_share=1.0)
    assert scheduler.admit(ScheduledJob(train("alone"))) == "joined"
    while not scheduler.idle:
        scheduler.tick()
    # The same training beside two portraits, one after the other: each tick merges the portrait's LoRA for its
    # step, and the training's step in the same tick must not see it.
    merges = fast.merging.calls
    assert scheduler.admit(ScheduledJob(train("beside"))) == "joined"
    assert scheduler.admit(ScheduledJob(portrait("p1"))) == "joined"
    scheduler.tick()
    assert fast.resident is None  # taken out for the training's step
    while len(scheduler.active) > 1:
        scheduler.tick()
    assert scheduler.admit(ScheduledJob(portrait("p2"))) == "joined"
    while not scheduler.idle:
        scheduler.tick()
    assert [type(e).__name__ for e in ended] == ["TrainResult", "GenerateResult", "GenerateResult", "TrainResult"]
    beside, alone = (safetensors.torch.load_file(tmp_path / f"{n}.safetensors") for n in ("beside", "alone"))
    assert beside.keys() == alone.keys() and all(torch.equal(beside[k], alone[k]) for k in beside)
    assert fast.merging.calls - merges == 2 * 4  # every tick: a training step came between two portrait steps
    # Portraits alone: one merge per request, taken out when it ends (its slot may be loaded with another file).
    merges, restores = fast.merging.calls, fast.unmerging.calls
    assert scheduler.admit(ScheduledJob(portrait("p3"))) == "joined"
    while not scheduler.idle:
        scheduler.tick()
        if not scheduler.idle:
            assert fast.resident is not None
    assert (fast.merging.calls - merges, fast.unmerging.calls - restores) == (1, 1) and fast.resident is None
    assert all(torch.equal(w, b) for w, b in zip(fast.merge.weights, fast.merge.base))
    assert np.array_equal(pixels([Image.open(tmp_path / "p3" / "0.png")]), pixels([Image.open(tmp_path / "p1" / "0.png")]))


def test_prompts_encode_through_the_text_graph_with_the_slots_lora(engine, fast, slots, tmp_path):
    from .test_multilora import random_lora

    assert fast.text_served and all(name.startswith("text_encoder.") for name in fast.text_served)
    # A LoRA on the text encoder's q and v projections too: its update is in the graph (every text layer is live).
    both = random_lora(engine, tmp_path / "te.safetensors", 2, 2.0, 4, ["to_q", "to_v"], True)
    slots.load_slot_file(0, both, 1.0)
    calls = fast.text.calls
    ours = run(engine, [(request(negative_prompt="blurry"), 0, None)], fast)[0]
    assert fast.text.calls == calls + 2  # the prompt and the negative prompt
    assert_same_images(ours, run(engine, [(request(negative_prompt="blurry"), 0, None)], None)[0])  # (merged UNet)
    generation = Generation(engine.models, request(), 1, None, 0, fast)
    with engine.models.slots.use([0]), torch.no_grad():
        eager = generation.pipe.encode_prompt("a photo of sks person", engine.models.device, 1, True, "")
    assert torch.equal(generation.embeddings, torch.cat([eager[1], eager[0]]))  # the graph's numbers are the encoder's
    with engine.models.slots.use([NONE]), torch.no_grad():
        base = generation.pipe.encode_prompt("a photo of sks person", engine.models.device, 1, True, "")
    assert not torch.equal(base[0], eager[0])  # the LoRA moved the text embeddings
    assert "forward" not in vars(engine.models.pipe.text_encoder)  # the module's own forward outside encoding()


def test_compiled_batches_share_one_unet_signature_with_the_controlnet_graphs(engine, fast):
    """At a compiled batch size the txt2img graph passes zero ControlNet residuals, so one compiled UNet serves
    both graph kinds (the equivalence tests above show the zeros change nothing)."""
    assert fast.settings.compile_batches == (1,)
    seen = []
    unet = engine.models.pipe.unet
    original = unet.forward
    unet.forward = lambda *a, **k: seen.append(sorted(k)) or original(*a, **k)
    try:
        for controlnet, rows in ((False, 2), (True, 2), (False, 4)):
            with engine.models.slots.use([NONE] * rows):
                fast.graphs[(controlnet, rows)].run()
    finally:
        del unet.forward
    assert seen[0] == seen[1] and "down_block_additional_residuals" in seen[0]
    assert "down_block_additional_residuals" not in seen[2]  # an uncompiled batch adds no zeros


def test_batches_no_graph_holds_run_eagerly(engine, fast):
    assert fast.graph_for(torch.zeros(2, 4, 12, 8), False) is None  # another latent size
    assert fast.graph_for(torch.zeros(10, 4, *fast.latent_hw), False) is None  # more rows than captured
    cases = [(request(width=96, seed=s), NONE, None) for s in range(2)]
    for a, b in zip(run(engine, cases, fast), run(engine, cases, None)):
        assert np.array_equal(a, b)


def test_ready_event_reports_the_warm_up(cache_dir: Path, tmp_path: Path):
    env = {**os.environ, "ENGINE_CACHE_DIR": str(cache_dir), "ENGINE_DEVICE": "cpu", "ENGINE_FAST": "on",
           "ENGINE_FAST_SIZE": "64x64", "ENGINE_FAST_BATCHES": "1", "ENGINE_LORA_PATH": "slots"}
    done = subprocess.run([sys.executable, "-m", "portrait_engine", "--profile", "tiny"], cwd=ENGINE_DIR, env=env,
                          input=b"", capture_output=True, timeout=120)
    ready = json.loads(done.stdout.splitlines()[0])
    assert ready["event"] == "ready" and ready["info"]["fast"] is True
    assert ready["info"]["batch_sizes"] == [1] and ready["info"]["size"] == [64, 64] and ready["info"]["warmup_s"] >= 0


def test_a_training_on_channels_last_weights_saves_the_adapter_it_saves_on_the_default_layout(
    engine: Engine, photos: list[str], tmp_path: Path
):
    """ENGINE_FAST_CHANNELS_LAST changes the layout of the shared UNet's convolution weights, which trainings read
    too: the UNet predicts the same (relative L2 1.6e-6 here), and the same job learns the same up-projections (they
    start at zero, so all of them is learned: 1.3e-5 here). Not bit for bit: the layouts' kernels round differently
    (fp32 on the CPU), and Adam's first steps move each weight by about the learning rate whatever the gradient's
    size, so a rounding that flips a near-zero gradient's sign shows; the tests' usual learning rate of 3e-2 makes that
    8.7e-4 over the whole adapter, so the job runs at the seed's 1e-4."""
    unet = engine.models.pipe.unet
    params = TrainParams(**{**QUICK_TRAIN, "learning_rate": 1e-4})
    gen = torch.Generator().manual_seed(0)
    x, e = torch.randn(2, 4, 16, 16, generator=gen), torch.randn(2, 77, unet.config.cross_attention_dim, generator=gen)
    predicted, saved = {}, {}
    try:
        for layout in (torch.contiguous_format, torch.channels_last):
            unet.to(memory_format=layout)
            with torch.no_grad():
                predicted[layout] = unet(x, torch.tensor([10, 500]), encoder_hidden_states=e, return_dict=False)[0]
            output = tmp_path / f"{str(layout).split('.')[-1]}.safetensors"
            engine.train(TrainRequest(id="layout", op="train", photos=photos, output=str(output), params=params),
                         RecordingJob())
            saved[layout] = safetensors.torch.load_file(output)
    finally:
        unet.to(memory_format=torch.contiguous_format)

    def apart(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a.double() - b.double()).norm() / a.double().norm())

    assert apart(predicted[torch.contiguous_format], predicted[torch.channels_last]) <= 1e-5
    default, nhwc = saved[torch.contiguous_format], saved[torch.channels_last]
    assert sorted(default) == sorted(nhwc) and default
    # The up-projections start at zero: all of their values are what the job learned.
    learned = [k for k in sorted(default) if "lora_B" in k]
    flat = [torch.cat([weights[k].flatten() for k in learned]) for weights in (default, nhwc)]
    assert learned and apart(*flat) <= 1e-4
