"""The slot LoRA layer against peft: each sample of a mixed batch computes what peft computes for its own LoRA."""

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model

from portrait_engine.engine import Engine
from portrait_engine.export import write_lora
from portrait_engine.multilora import SlotConv2d, SlotLinear, SlotLoRA, peft_skeleton

ADAPTER = "rand"
TOLERANCE = 1e-5  # relative L2, float32


def random_lora(engine: Engine, path: Path, rank: int, alpha: float, seed: int, targets: list[str], text: bool) -> Path:
    """A LoRA file with random (non-zero) up and down matrices, written the way training writes them."""
    slots = engine.models.slots
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = peft_skeleton(slots, "unet", torch.float32)
        inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets), unet, ADAPTER)
        text_encoder = None
        if text:
            text_encoder = peft_skeleton(slots, "text_encoder", torch.float32)
            config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=["q_proj", "v_proj"])
            inject_adapter_in_model(config, text_encoder, ADAPTER)
        with torch.no_grad():
            for module in (unet, text_encoder):
                for name, p in (module.named_parameters() if module is not None else []):
                    if "lora_" in name:
                        p.normal_(std=0.3)
    write_lora(path, unet, text_encoder, ADAPTER, {})
    return path


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def two_loras(engine: Engine, trained_lora: Path, tmp_path_factory) -> list[Path]:
    other = random_lora(
        engine, tmp_path_factory.mktemp("rand") / "r.safetensors", 2, 3.0, 5, ["to_q", "to_v"], True
    )
    return [trained_lora, other]


def _unet_inputs(batch: int) -> tuple:
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, 4, 8, 8, generator=g), torch.tensor(500), torch.randn(batch, 77, 32, generator=g)


@torch.no_grad()
def test_mixed_batch_matches_peft_for_every_sample(engine: Engine, two_loras: list[Path]):
    pipe, slots = engine.models.pipe, engine.models.slots
    assert any(isinstance(m, SlotConv2d) for m in pipe.unet.modules())
    assert any(isinstance(m, SlotLinear) for m in pipe.text_encoder.modules())
    latents, t, embeddings = _unet_inputs(3)
    tokens = pipe.tokenizer(["a", "b c", "d"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    scales = [0.7, 1.3]

    # peft, one LoRA at a time, through the engine's own LoRA cache (diffusers' load_lora_weights + set_adapters)
    expected_unet, expected_text = [], []
    for row, lora in enumerate([two_loras[0], None, two_loras[1]]):
        if lora is not None:
            engine.loras.activate(str(lora), scales[0 if row == 0 else 1])
        expected_unet.append(pipe.unet(latents[row : row + 1], t, embeddings[row : row + 1]).sample)
        expected_text.append(pipe.text_encoder(tokens[row : row + 1])[0])
        engine.loras.deactivate()
    engine.loras.clear()

    slots.load_slot_file(3, two_loras[0], scale=scales[0])
    slots.load_slot_file(5, two_loras[1], scale=scales[1])
    try:
        with slots.use([3, -1, 5]):
            unet_out = pipe.unet(latents, t, embeddings).sample
            text_out = pipe.text_encoder(tokens)[0]
            # CFG's cat([x] * 2): the index of 3 is tiled over the 6 rows.
            doubled = pipe.unet(torch.cat([latents] * 2), t, torch.cat([embeddings] * 2)).sample
        plain = pipe.unet(latents, t, embeddings).sample  # no slots set: the base model, exactly
    finally:
        slots.clear_slot(3)
        slots.clear_slot(5)

    for row in range(3):
        assert rel(unet_out[row : row + 1], expected_unet[row]) <= TOLERANCE
        assert rel(text_out[row : row + 1], expected_text[row]) <= TOLERANCE
    assert torch.equal(plain[1], unet_out[1])  # the zero slot adds exact zeros
    assert torch.allclose(doubled[:3], unet_out, atol=1e-6) and torch.allclose(doubled[3:], unet_out, atol=1e-6)
    # Not vacuous: both LoRAs move the output, differently.
    assert rel(unet_out[0], plain[0]) > 1e-3 and rel(unet_out[2], plain[2]) > 1e-3
    assert rel(text_out[2:], pipe.text_encoder(tokens[2:])[0]) > 1e-3


def test_loading_is_a_copy_into_preallocated_buffers(engine: Engine, two_loras: list[Path]):
    slots = engine.models.slots
    layer = next(iter(slots.layers.values()))
    buffers = (layer.slot_A.data_ptr(), layer.slot_Bt.data_ptr())
    modules = [id(m) for m in engine.models.pipe.unet.modules()]
    slots.load_slot_file(0, two_loras[0])
    slots.load_slot_file(0, two_loras[1])  # replaces: layers the second LoRA lacks are zero again
    assert (layer.slot_A.data_ptr(), layer.slot_Bt.data_ptr()) == buffers
    assert [id(m) for m in engine.models.pipe.unet.modules()] == modules
    to_k = slots.layers["unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k"]
    to_q = slots.layers["unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"]
    assert to_k.slot_A[0].abs().sum() == 0 and to_q.slot_A[0, :2].abs().sum() > 0 and to_q.slot_A[0, 2:].abs().sum() == 0
    assert to_q.slot_scale[0].item() == pytest.approx(1.5)  # alpha 3 / rank 2
    slots.clear_slot(0)
    assert all(layer.slot_A[0].abs().sum() == 0 for layer in slots.layers.values())
    with pytest.raises(ValueError):
        slots.load_slot(0, {"unet.nowhere.lora.down.weight": torch.zeros(2, 4)})
    with pytest.raises(ValueError):
        slots.set_slots([slots.slots])


def test_gradients_reach_only_the_slot_whose_samples_used_it(engine: Engine):
    pipe, slots = engine.models.pipe, engine.models.slots
    unet_layers = [name for name in slots.layers if name.startswith("unet.")]
    params = {slot: slots.trainable(slot, rank, unet_layers) for slot, rank in ((1, 4), (2, 2))}
    slots.set_scale(1, alpha=4, rank=4)
    slots.set_scale(2, alpha=2, rank=2)
    with torch.no_grad():
        for group in params.values():
            for p in group.values():
                p.normal_(std=0.1)
    latents, t, embeddings = _unet_inputs(3)
    try:
        with slots.train_rows([(1, params[1]), (2, params[2]), (1, params[1])]):
            out = pipe.unet(latents, t, embeddings).sample
        (out[0].square().mean() + out[2].square().mean()).backward()
        assert all(p.grad.abs().sum() > 0 for p in params[1].values())
        assert all(p.grad is None or p.grad.abs().sum() == 0 for p in params[2].values())
        # The gradients are the aliases' own (no buffer collects any), and a step leaves the rows and columns
        # beyond a slot's rank zero.
        layer = slots.layers[unet_layers[0]]
        assert layer.slot_A.grad is None and layer.slot_Bt.grad is None
        torch.optim.SGD([p for group in params.values() for p in group.values()], lr=1.0).step()
        assert layer.slot_A[1, :4].abs().sum() > 0
        assert layer.slot_A[1, 4:].abs().sum() == 0 and layer.slot_Bt[1, 4:].abs().sum() == 0
        assert layer.slot_A[2, 2:].abs().sum() == 0 and layer.slot_Bt[2, 2:].abs().sum() == 0
    finally:
        for slot in params:
            slots.clear_slot(slot)


@torch.no_grad()
def test_slot_layers_match_peft_on_linear_and_1x1_conv_with_padded_ranks():
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Conv2d(8, 6, 1), torch.nn.Linear(7, 5))
    reference = torch.nn.Sequential(torch.nn.Conv2d(8, 6, 1), torch.nn.Linear(7, 5))
    reference.load_state_dict(base.state_dict())
    ranks, alphas = (2, 3), (5.0, 1.5)
    peft_models = []
    for rank, alpha in zip(ranks, alphas):
        model = torch.nn.Sequential(torch.nn.Conv2d(8, 6, 1), torch.nn.Linear(7, 5))
        model.load_state_dict(base.state_dict())
        inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules=["0", "1"]), model, "a")
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_()
        peft_models.append(model)
    slots = SlotLoRA(slots=3, max_rank=4)
    slots.install("unet", base, ["0", "1"])
    assert isinstance(base[0], SlotConv2d) and isinstance(base[1], SlotLinear)
    for slot, (model, alpha) in enumerate(zip(peft_models, alphas)):
        state = {f"unet.{k.replace('.a.', '.')}": v for k, v in model.state_dict().items() if "lora_" in k}
        slots.load_slot(slot, state, alpha=alpha)
    images, rows = torch.randn(3, 8, 4, 4), torch.randn(3, 2, 7)
    with slots.use([1, -1, 0]):
        conv, linear = base[0](images), base[1](rows)
    for row, model in enumerate([peft_models[1], reference, peft_models[0]]):
        assert rel(conv[row], model[0](images[row : row + 1])[0]) <= TOLERANCE
        assert rel(linear[row], model[1](rows[row : row + 1])[0]) <= TOLERANCE


@torch.no_grad()
def test_rows_hoisted_once_per_group_compute_what_each_layer_gathers(engine: Engine, two_loras: list[Path], monkeypatch):
    pipe, slots = engine.models.pipe, engine.models.slots
    latents, t, embeddings = _unet_inputs(3)
    names = [name for name in slots.layers if name.startswith("unet.")]
    groups = slots.reserve_rows(names, 4, torch.float32)
    assert {type(g.layers[0]) for g in groups} == {SlotLinear, SlotConv2d}
    assert sum(len(g.layers) for g in groups) == len(names)
    calls = []
    for cls in (SlotLinear, SlotConv2d):
        original = cls._add_update
        monkeypatch.setattr(cls, "_add_update", staticmethod(lambda *a, f=original, c=cls: calls.append(c) or f(*a)))
    slots.load_slot_file(3, two_loras[0], scale=0.7)
    slots.load_slot_file(5, two_loras[1], scale=1.3)
    try:
        with slots.forced_live(names), slots.use([3, -1, 5]):  # every layer live: Linear and 1x1 conv paths
            gathered = pipe.unet(latents, t, embeddings).sample
            assert not calls
            with slots.hoisted(groups):
                hoisted = pipe.unet(latents, t, embeddings).sample
            assert all(g.hoisted_rows == 0 for g in groups)  # outside the context the layers gather again
            doubled = pipe.unet(torch.cat([latents] * 2), t, torch.cat([embeddings] * 2)).sample
    finally:
        slots.clear_slot(3)
        slots.clear_slot(5)
    assert len(calls) == len(names) and set(calls) == {SlotLinear, SlotConv2d}  # each layer once, hoisted
    assert rel(hoisted, gathered) <= TOLERANCE
    assert torch.allclose(doubled[:3], gathered, atol=1e-6)


def test_only_layers_a_slot_of_the_batch_fills_compute_an_update(engine: Engine, two_loras: list[Path]):
    slots = engine.models.slots
    slots.load_slot_file(2, two_loras[1])  # to_q and to_v, and the text encoder's q_proj and v_proj
    try:
        with slots.use([2, -1]):
            live = {name for name, layer in slots.layers.items() if layer.slot_live}
        assert live == set(slots.filled[2]) and live
        assert all(name.endswith(("to_q", "to_v", "q_proj", "v_proj")) for name in live)
        with slots.use([-1, -1]):
            assert not any(layer.slot_live for layer in slots.layers.values())
        with slots.forced_live(["unet.down_blocks.1.attentions.0.proj_in"]), slots.use([2]):
            assert [name for name, layer in slots.layers.items() if layer.slot_live] == \
                ["unet.down_blocks.1.attentions.0.proj_in"]
    finally:
        slots.clear_slot(2)
    assert 2 not in slots.filled


@torch.no_grad()
def test_a_half_precision_model_takes_the_update_in_its_own_dtype_as_peft_does():
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(16, 12)).half()
    reference = torch.nn.Sequential(torch.nn.Linear(16, 12)).half()
    reference.load_state_dict(base.state_dict())
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, target_modules=["0"]), reference, "a")
    for name, p in reference.named_parameters():
        if "lora_" in name:
            p.normal_(std=0.5)
    assert reference[0].lora_A["a"].weight.dtype == torch.float16  # peft's adapter in the model's dtype
    slots = SlotLoRA(slots=2, max_rank=4)  # float32 slots, as the engine keeps them
    slots.install("unet", base, ["0"])
    state = {f"unet.{k.replace('.a.', '.')}": v for k, v in reference.state_dict().items() if "lora_" in k}
    slots.load_slot(1, state, alpha=8)
    rows = torch.randn(2, 3, 16).half()
    with slots.use([1, 1]):
        ours = base[0](rows)
    assert ours.dtype == torch.float16
    assert rel(ours.float(), reference[0](rows).float()) <= 2e-3
