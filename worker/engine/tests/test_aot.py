"""Ahead-of-time packages (aot.py) on the CPU: built by child processes, loaded onto the live modules' own tensors,
and swapped into the fast path's graphs at a step boundary; a restart loads them without building."""

import copy
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from portrait_engine import aot
from portrait_engine.engine import Engine
from portrait_engine.fast import FastGenerator, FastSettings, settings_from_env
from portrait_engine.multigen import Generation, decode_together, denoise_step
from portrait_engine.multilora import NONE

from .support import assert_same_images
from .test_fast import SIZE, other_lora, pixels, request, run  # noqa: F401 (other_lora: a fixture)

COMPILED = ["controlnet@1", "unet@1"]


def test_a_package_computes_with_the_weights_it_is_given_even_the_smallest(tmp_path):
    """Built on one module's weights, loaded with another's: it computes the other's. A bias of 8 values would be
    written into the kernel's code as numbers without always_keep_tensor_constants."""
    torch.manual_seed(0)
    built, other = nn.Linear(8, 8), nn.Linear(8, 8)
    x = torch.randn(3, 8)
    with torch.no_grad():
        program = torch.export.export(built, (x,), strict=False)
    path = tmp_path / "linear.pt2"
    torch._inductor.aoti_compile_and_package(program, package_path=str(path), inductor_configs=aot.PACKAGE_CONFIG)
    runner = aot.load(path, other)
    assert sorted(runner.get_constant_fqns()) == ["bias", "weight"]
    with torch.no_grad():
        assert torch.allclose(runner(x), other(x), atol=1e-6)
        other.bias.add_(1.0)  # in place, as the LoRA merge writes: the package reads the module's own tensors
        assert torch.allclose(runner(x), other(x), atol=1e-6)


def test_a_package_reads_weights_and_inputs_in_the_layout_it_was_built_for(tmp_path):
    """Convolution weights kept in channels_last (FastSettings.channels_last): a package built on such weights
    computes with another module's in that layout, in-place writes reach it, and weights that lie otherwise are
    refused at load. An input in another memory format than the package was built for is copied into that one first:
    the package itself reads it with the build's strides and computes garbage."""
    torch.manual_seed(0)
    built, other = (nn.Conv2d(4, 8, 3, padding=1).to(memory_format=torch.channels_last) for _ in range(2))
    assert aot.weights_layout(built) == "channels_last" and aot.weights_layout(nn.Conv2d(4, 8, 3)) == ""
    mixed = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Conv2d(8, 8, 3).to(memory_format=torch.channels_last))
    with pytest.raises(ValueError, match="mixed"):
        aot.weights_layout(mixed)
    x = torch.randn(2, 4, 8, 8)
    nhwc = x.to(memory_format=torch.channels_last)
    assert (aot.memory_format_of(x), aot.memory_format_of(nhwc)) == ("", "channels_last")
    with torch.no_grad():
        program = torch.export.export(built, (x,), strict=False)
    path = tmp_path / "conv.pt2"
    torch._inductor.aoti_compile_and_package(program, package_path=str(path), inductor_configs=aot.PACKAGE_CONFIG)
    spec = aot.Spec(kind="unet", config="{}", dtype="float32", device="cpu", inputs=(((2, 4, 8, 8), "float32"),),
                    platform="test", layout="channels_last", formats=("",))
    assert aot.Spec.from_json(spec.to_json()) == spec
    runner = aot.load(path, other, spec)
    with torch.no_grad():
        assert torch.allclose(runner(x), other(x), atol=1e-5)
        other.weight.add_(0.5)
        assert torch.allclose(runner(x), other(x), atol=1e-5)
        assert torch.allclose(runner(nhwc), other(x), atol=1e-5)
        assert not torch.allclose(runner.runner(nhwc), other(x), atol=1e-2)  # the package alone misreads it
    with pytest.raises(ValueError, match="layout 'channels_last'"):
        aot.load(path, nn.Conv2d(4, 8, 3, padding=1), spec)


def test_a_spec_keys_everything_the_package_depends_on(engine: Engine):
    unet = engine.models.pipe.unet
    x, t, e = torch.zeros(2, 4, 8, 8), torch.zeros(2), torch.zeros(2, 77, unet.config.cross_attention_dim)
    spec = aot.Spec.of("unet", unet, (x, t, e))
    assert aot.Spec.from_json(spec.to_json()) == spec and aot.Spec.of("unet", unet, (x, t, e)).key() == spec.key()
    others = [aot.Spec.of("unet", unet, (torch.zeros(2, 4, 16, 8), t, e)),  # another latent size
              aot.Spec.of("unet", unet, (x, t, e.half())),  # another input dtype
              aot.Spec.of("controlnet", engine.models.controlnet, (x, t, e)),
              aot.Spec.of("unet", copy.deepcopy(unet).to(memory_format=torch.channels_last), (x, t, e))]
    assert others[-1].layout == "channels_last" and spec.layout == ""
    assert len({spec.key(), *(o.key() for o in others)}) == 5


def test_a_failed_build_reports_its_error(tmp_path):
    bad = aot.Spec(kind="unet", config='{"block_out_channels": "nonsense"}', dtype="float32", device="cpu",
                   inputs=(((1, 4, 8, 8), "float32"),), platform="test")
    builds = aot.Builds(tmp_path)
    builds.start(bad)
    builds.wait(120)
    [(spec, error)] = builds.poll()
    assert spec == bad and isinstance(error, RuntimeError) and "exit 1" in str(error)
    assert not builds.path(bad).exists() and builds.poll() == []


def test_engines_sharing_a_cache_folder_build_each_package_once(tmp_path):
    """A second engine waits for the first's build; when that build ends without a package (here: a config that
    fails) the waiting engine builds it itself; a package that appears ends the wait."""
    bad = aot.Spec(kind="unet", config='{"block_out_channels": "nonsense"}', dtype="float32", device="cpu",
                   inputs=(((1, 4, 8, 8), "float32"),), platform="test")
    first, second = aot.Builds(tmp_path), aot.Builds(tmp_path)
    first.start(bad)
    second.start(bad)
    assert list(first.running) == [bad.key()] and not second.running and list(second.waiting) == [bad.key()]
    [(_, builder, _)] = first.running.values()
    assert (tmp_path / f"{bad.key()}.lock").read_text() == str(builder.pid)  # the build process holds it
    second.wait(120)  # the first's build ended (failed) and let go: nothing to wait for
    first.wait(60)
    [(_, error)] = first.poll()
    assert isinstance(error, RuntimeError) and not (tmp_path / f"{bad.key()}.lock").exists()
    assert second.poll() == [] and list(second.running) == [bad.key()] and not second.waiting  # built here now
    third = aot.Builds(tmp_path)
    third.start(bad)
    assert list(third.waiting) == [bad.key()] and third.poll() == []
    third.path(bad).write_bytes(b"a package")  # what the running build's rename does
    assert third.poll() == [(bad, third.path(bad))] and not third.waiting
    second.close()
    assert not (tmp_path / f"{bad.key()}.lock").exists()


def test_builds_past_the_limit_wait_their_turn_in_order(tmp_path):
    specs = [aot.Spec(kind="unet", config=f'{{"block_out_channels": "nonsense {i}"}}', dtype="float32", device="cpu",
                      inputs=(), platform="test") for i in range(3)]
    builds = aot.Builds(tmp_path, max_running=1)
    for spec in specs:
        builds.start(spec)
    assert list(builds.running) == [specs[0].key()] and list(builds.queued) == [s.key() for s in specs[1:]]
    builds.wait(300)
    ended = builds.poll()
    assert [spec for spec, _ in ended] == specs and all(isinstance(error, RuntimeError) for _, error in ended)
    assert not builds.running and not builds.queued and not list(tmp_path.glob("*.lock"))


def test_a_build_lock_left_by_a_dead_engine_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    bad = aot.Spec(kind="unet", config="{}", dtype="float32", device="cpu", inputs=(), platform="test")
    (tmp_path / f"{bad.key()}.lock").write_text(str(dead.pid))
    builds = aot.Builds(tmp_path)
    builds.start(bad)
    [(_, builder, _)] = builds.running.values()
    assert (tmp_path / f"{bad.key()}.lock").read_text() == str(builder.pid)
    builds.close()
    assert not (tmp_path / f"{bad.key()}.lock").exists()


def test_settings_turn_packages_and_the_compiled_controlnet_and_decoder_on_together():
    on = settings_from_env({})
    assert on.aot and on.compile_vae and on.compile_controlnet
    off = settings_from_env({"ENGINE_FAST_AOT": "0"})
    assert not (off.aot or off.compile_vae or off.compile_controlnet)
    assert not settings_from_env({"ENGINE_FAST_COMPILE_VAE": "off"}).compile_vae


def decode_six(engine: Engine, fast: FastGenerator) -> np.ndarray:
    """Two requests of three images each, ending on one step: one shared decode of six images."""
    generations = [Generation(engine.models, request(num_images=3, steps=2, seed=seed), seed, None, NONE, fast)
                   for seed in (1, 2)]
    while not all(g.done for g in generations):
        assert denoise_step(engine.models, generations, fast) == {}
    decoded = decode_together(generations)
    return np.concatenate([pixels(decoded[g]) for g in generations])


@pytest.fixture
def restore_decoder(engine: Engine):
    yield
    engine.models.pipe.vae.decoder.__dict__.pop("forward", None)  # the session's models: decode as before


def test_a_first_start_serves_while_its_packages_build_then_swaps_them_in_and_a_restart_loads_them(
    engine: Engine, photos, trained_lora, tmp_path, restore_decoder
):
    settings = FastSettings(batch_sizes=(1,), width=SIZE, height=SIZE, aot=True, compile_on_cpu=True,
                            compile_vae=True, compile_controlnet=True)
    slots = engine.models.slots
    slots.load_slot_file(0, trained_lora, 1.0)
    control = Image.open(photos[0]).convert("RGB")
    cases = {"plain": [(request(), NONE, None)], "lora": [(request(), 0, None)],  # a LoRA merged into the weights
             "pose": [(request(controlnet_scale=0.7), 0, control)]}
    try:
        first = FastGenerator(engine.models, settings, cache_dir=tmp_path)
        first.warm_up()
        # Ready at once: nothing compiled yet, three builds running in other processes.
        assert first.info["compiled"] == [] and not first.info["compiled_vae"]
        assert first.info["aot"]["building"] == ["cn@1", "unet@1", "vae@1", "vae@8"] and first.building
        uncompiled = {name: run(engine, c, first)[0] for name, c in cases.items()}
        uncompiled["six"] = decode_six(engine, first)
        assert sorted(first.wait_for_builds(timeout=900)) == ["cn@1", "unet@1", "vae@1", "vae@8"]
        assert first.info["compiled"] == COMPILED and first.info["compiled_vae"] and not first.building
        assert first.info["compiled_vae_batches"] == [1, 8]
        assert first.info["aot"] == {"loaded": ["cn@1", "unet@1", "vae@1", "vae@8"], "building": [], "failed": {}}
        assert all(first.graphs[(cn, 2)].compiled and first.graphs[(cn, 2)].merged for cn in (False, True))
        calls, decodes = first.graphs[(False, 2)].calls, first.vae_graphs[8].calls
        compiled = {name: run(engine, c, first)[0] for name, c in cases.items()}
        assert first.graphs[(False, 2)].calls > calls  # the swapped-in graph served
        assert first.vae_graphs[8].calls == decodes
        compiled["six"] = decode_six(engine, first)
        assert first.vae_graphs[8].calls == decodes + 1  # the six images' shared decode, padded to 8
        for name in uncompiled:
            assert_same_images(compiled[name], uncompiled[name])
        assert not np.array_equal(compiled["lora"], compiled["plain"])  # the merge reached the package
        # A restart: the packages load at warm-up, nothing builds.
        engine.models.pipe.vae.decoder.__dict__.pop("forward", None)
        again = FastGenerator(engine.models, settings, cache_dir=tmp_path)
        again.warm_up()
        assert again.info["compiled"] == COMPILED and again.info["compiled_vae"] and not again.building
        assert not again.builds.running
        for name, c in cases.items():
            assert np.array_equal(run(engine, c, again)[0], compiled[name])
        assert sorted(p.name.split("-")[0] for p in Path(tmp_path, "aot").glob("*.pt2")) == ["controlnet", "unet",
                                                                                         "vae", "vae"]
    finally:
        slots.clear_slot(0)


def test_a_batch_of_several_users_runs_a_package_of_the_slot_layers(engine: Engine, photos, trained_lora,
                                                                     other_lora, tmp_path, restore_decoder):
    """Two users' rows in one graph: its package computes each row's own LoRA from the rows the graph gathers
    (a user's LoRA is data to it), as the uncompiled slot layers do; with a ControlNet too, and a restart loads it.
    Here the convolutions' weights lie in channels_last (ENGINE_FAST_CHANNELS_LAST=1): the pictures are those of torch's
    default layout, and the package is built for that layout."""
    settings = FastSettings(batch_sizes=(2,), compile_batches=(2,), merged_batches=(), width=SIZE, height=SIZE,
                            aot=True, compile_on_cpu=True, channels_last=True)
    slots = engine.models.slots
    slots.load_slot_file(0, trained_lora, 1.0)
    slots.load_slot_file(1, other_lora, 0.6)
    control = Image.open(photos[0]).convert("RGB")
    cases = {"two": [(request(), 0, None), (request(prompt="two", seed=3), 1, None)],
             "swapped": [(request(), 1, None), (request(prompt="two", seed=3), 0, None)],
             "pose": [(request(controlnet_scale=0.7), 1, control), (request(seed=4), NONE, control)]}
    models = [engine.models.pipe.unet, engine.models.controlnet]
    try:
        plain = FastGenerator(engine.models, replace(settings, aot=False, channels_last=False), cache_dir=tmp_path)
        plain.warm_up()
        default_layout = {name: run(engine, c, plain) for name, c in cases.items()}
        first = FastGenerator(engine.models, settings, cache_dir=tmp_path)
        assert [aot.weights_layout(m) for m in models] == ["channels_last", "channels_last"]
        first.warm_up()
        assert first.info["aot"]["building"] == ["unet@2"] and not first.graphs[(False, 4)].compiled
        uncompiled = {name: run(engine, c, first) for name, c in cases.items()}
        for name in cases:
            for ours, theirs in zip(uncompiled[name], default_layout[name]):
                assert_same_images(ours, theirs)
        assert first.wait_for_builds(timeout=600) == ["unet@2"] and first.info["compiled"] == ["controlnet@2",
                                                                                             "unet@2"]
        step = first.graphs[(False, 4)]
        assert step.compiled and step.live == first.served and not step.merged
        calls = step.calls
        compiled = {name: run(engine, c, first) for name, c in cases.items()}
        assert step.calls == calls + 2 * request().steps  # "two" and "swapped" through the package's graph
        for name in cases:
            for ours, theirs in zip(compiled[name], uncompiled[name]):
                assert_same_images(ours, theirs)
        # Each row its own user's LoRA: the same prompts with the users swapped give other pictures.
        assert not np.array_equal(compiled["two"][0], compiled["swapped"][0])
        packages = list(Path(tmp_path, "aot").glob("*.pt2"))
        assert [p.name.split("-")[0] for p in packages] == ["unet"]
        assert aot.Spec.from_json(packages[0].with_suffix(".spec.json").read_text()).layout == "channels_last"
        again = FastGenerator(engine.models, settings, cache_dir=tmp_path)
        again.warm_up()
        assert again.info["compiled"] == ["controlnet@2", "unet@2"] and not again.building
        for name, c in cases.items():
            for ours, before in zip(run(engine, c, again), compiled[name]):
                assert np.array_equal(ours, before)
    finally:
        slots.clear_slot(0)
        slots.clear_slot(1)
        for model in models:  # the session's engine is shared with the other tests
            model.to(memory_format=torch.contiguous_format)


def test_a_build_that_fails_leaves_its_module_uncompiled_and_says_so(engine: Engine, tmp_path, monkeypatch,
                                                                       restore_decoder):
    """The build processes cannot write inductor's cache: each fails, the engine keeps serving on the uncompiled
    graphs, and the ready info names what failed."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/dev/null/inductor")
    settings = FastSettings(batch_sizes=(1,), width=SIZE, height=SIZE, aot=True, compile_on_cpu=True,
                            compile_vae=True, compile_controlnet=True)
    fast = FastGenerator(engine.models, settings, cache_dir=tmp_path)
    fast.warm_up()
    assert fast.wait_for_builds(timeout=300) == [] and not fast.building
    assert fast.info["compiled"] == [] and not fast.info["compiled_vae"]
    failed = fast.info["aot"]["failed"]
    assert sorted(failed) == ["cn@1", "unet@1", "vae@1", "vae@8"] and all("failed (exit 1)" in why for why in failed.values())
    assert fast.upgrade() == []  # nothing is built again
    images = run(engine, [(request(), NONE, None)], fast)[0]
    assert images.shape[-1] == 3 and not list(tmp_path.glob("aot/*.lock")) and not list(tmp_path.glob("aot/*.pt2"))
