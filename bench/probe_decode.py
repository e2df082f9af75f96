"""What the parts of an /imagine around the UNet cost on a CUDA card, and what the alternatives cost (issue 8):

- UniPC's 2x2 corrector solve: host-to-device copies and syncs per call with torch's default linear-algebra backend,
  with cuSOLVER preferred, and the whole 20-step scheduler loop's copies and syncs;
- GroupNorm at the VAE decoder's shapes: torch's kernel against moments reduced in chunks (many blocks, not one per
  group) and applied in one pass; their difference from float32;
- the VAE decode at 512 px: as diffusers runs it, and with the chunked GroupNorm;
- the text encoder (CFG, 2 x 77 tokens): eager and in a CUDA graph;
- the slot layers' LoRA in an uncompiled UNet graph: live and not live;
- the plain UNet and the VAE decoder in torch's NCHW layout and in channels_last;
- the compiled plain UNet at 2 rows (one image with CFG) under inductor's settings and with fused QKV projections,
  SDPA's backends in an uncompiled graph, and the ControlNet compiled beside the UNet: compile seconds and replay ms;
- the convolutions' weights in channels_last where nothing is compiled: the UNet at 2, 8, 16 rows, a training step;
- the compiled plain UNet's kernels by kind at 2 and 16 rows, with inductor's freezing and cuDNN's benchmark mode;
- a LoRA training step at batch 1 (forward, backward, fused AdamW): eager, in a CUDA graph, and with the UNet
  compiled inside the graph.

    python bench/probe_decode.py --work /tmp/work      # writes $OUT/probe_decode.json when OUT is set
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "worker" / "engine"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench_fast import log  # noqa: E402


def cuda_ms(fn, repeats: int = 20, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def graphed(fn) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """fn captured in a CUDA graph after three warm-up calls on a side stream; the graph and its output buffer."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


def host_calls(fn) -> dict:
    """How many host-to-device copies and stream/device syncs one call of fn makes (torch.profiler's runtime rows)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    wanted = ("cudaMemcpyAsync", "cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpy", "Memcpy HtoD",
              "Memcpy DtoH")
    out = {}
    for row in prof.key_averages():
        if any(row.key.startswith(w) for w in wanted):
            out[row.key[:40]] = row.count
    return out


def solve_probe() -> dict:
    r = torch.tensor([[1.0, 1.0], [0.6, 1.0]], device="cuda", dtype=torch.float32)
    b = torch.tensor([0.3, 0.2], device="cuda", dtype=torch.float32)
    res = {}
    for backend in ("default", "cusolver", "magma"):
        torch.backends.cuda.preferred_linalg_library(backend)
        try:
            fn = lambda: torch.linalg.solve_ex(r, b)[0]  # noqa: E731
            res[backend] = {"calls": host_calls(fn), "host_us": host_us(fn), "gpu_ms": cuda_ms(fn)}
        except Exception as error:  # noqa: BLE001
            res[backend] = repr(error)
    torch.backends.cuda.preferred_linalg_library("default")
    return res


def host_us(fn, repeats: int = 50) -> float:
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    host = time.perf_counter() - started
    torch.cuda.synchronize()
    return host / repeats * 1e6


def unipc_probe() -> dict:
    from diffusers import UniPCMultistepScheduler

    from portrait_engine import multigen
    from portrait_engine.tiny import SD15_SCHEDULER

    res = {}
    latents = torch.randn(1, 4, 64, 64, device="cuda", dtype=torch.float16)
    noise = torch.randn(1, 4, 64, 64, device="cuda", dtype=torch.float16)
    for backend in ("default", "cusolver"):
        def loop():
            scheduler = UniPCMultistepScheduler.from_config(SD15_SCHEDULER)
            scheduler.set_timesteps(20, device="cuda")
            scheduler.sigmas = scheduler.sigmas.to("cuda")
            x = latents
            with multigen._solve_without_sync():
                for t in scheduler.timesteps:
                    x = scheduler.step(noise, t, x, return_dict=False)[0]
            return x

        torch.backends.cuda.preferred_linalg_library(backend)
        res[backend] = {"calls_20_steps": host_calls(loop), "host_ms": host_us(loop, 5) / 1000}
    torch.backends.cuda.preferred_linalg_library("default")
    return res


def chunked_group_norm(x: torch.Tensor, groups: int, weight, bias, eps: float, chunks: int = 64) -> torch.Tensor:
    n, c = x.shape[:2]
    per_group = x[0, : c // groups].numel()
    k = chunks if per_group % chunks == 0 else 1
    parts = x.reshape(n, groups, k, per_group // k).float()
    var_k, mean_k = torch.var_mean(parts, dim=-1, correction=0)
    mean = mean_k.mean(-1, keepdim=True)
    var = (var_k + (mean_k - mean) ** 2).mean(-1, keepdim=True)
    rstd = torch.rsqrt(var + eps)  # [n, g, 1]
    scale = (weight.float().view(1, groups, -1) * rstd)  # [n, g, c/g]
    shift = bias.float().view(1, groups, -1) - mean * scale
    shape = (n, c) + (1,) * (x.dim() - 2)
    return torch.addcmul(shift.reshape(shape), x, scale.reshape(shape)).to(x.dtype)


def chunked_group_norm_half_reduce(x, groups, weight, bias, eps, chunks: int = 64):
    """As chunked_group_norm, without the float32 copy of x: the chunk moments from the fp16 input (fp32 inside)."""
    n, c = x.shape[:2]
    per_group = x[0, : c // groups].numel()
    k = chunks if per_group % chunks == 0 else 1
    parts = x.reshape(n, groups, k, per_group // k)
    var_k, mean_k = torch.var_mean(parts, dim=-1, correction=0)
    var_k, mean_k = var_k.float(), mean_k.float()
    mean = mean_k.mean(-1, keepdim=True)
    var = (var_k + (mean_k - mean) ** 2).mean(-1, keepdim=True)
    rstd = torch.rsqrt(var + eps)
    scale = (weight.float().view(1, groups, -1) * rstd)
    shift = bias.float().view(1, groups, -1) - mean * scale
    shape = (n, c) + (1,) * (x.dim() - 2)
    return torch.addcmul(shift.reshape(shape), x, scale.reshape(shape)).to(x.dtype)


def group_norm_probe() -> dict:
    res = {}
    shapes = [(1, 512, 64, 64), (1, 512, 128, 128), (1, 512, 256, 256), (1, 256, 256, 256), (1, 256, 512, 512),
              (1, 128, 512, 512), (8, 128, 512, 512)]
    for shape in shapes:
        g = torch.Generator("cuda").manual_seed(0)
        x = (torch.randn(shape, device="cuda", generator=g) * 3 + 1.5).half()
        w = torch.randn(shape[1], device="cuda").half()
        bias = torch.randn(shape[1], device="cuda").half()
        exact = F.group_norm(x.float(), 32, w.float(), bias.float(), 1e-6)
        row = {"torch_ms": cuda_ms(lambda: F.group_norm(x, 32, w, bias, 1e-6)),
               "torch_err": float((F.group_norm(x, 32, w, bias, 1e-6).float() - exact).abs().max())}
        for name, fn in (("chunked", chunked_group_norm), ("chunked_half", chunked_group_norm_half_reduce)):
            row[f"{name}_ms"] = cuda_ms(lambda: fn(x, 32, w, bias, 1e-6))
            row[f"{name}_err"] = float((fn(x, 32, w, bias, 1e-6).float() - exact).abs().max())
        res["x".join(map(str, shape))] = row
        log("groupnorm", shape, row)
    return res


def vae_probe(work: Path) -> dict:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        sample_size=512).to("cuda", torch.float16).eval()
    res = {}
    for batch in (1, 4):
        latents = torch.randn(batch, 4, 64, 64, device="cuda", dtype=torch.float16)
        with torch.no_grad():
            base = lambda: vae.decode(latents, return_dict=False)[0]  # noqa: E731
            res[f"b{batch}_torch_ms"] = cuda_ms(base, 10)
            reference = base().float()
            for name, fn in (("chunked", chunked_group_norm), ("chunked_half", chunked_group_norm_half_reduce)):
                original = F.group_norm
                F.group_norm = lambda x, g, w=None, b=None, eps=1e-5, f=fn: f(x, g, w, b, eps)
                try:
                    res[f"b{batch}_{name}_ms"] = cuda_ms(base, 10)
                    out = base().float()
                finally:
                    F.group_norm = original
                res[f"b{batch}_{name}_maxdiff_255"] = float(((out - reference).abs() * 127.5).max())
                res[f"b{batch}_{name}_meandiff_255"] = float(((out - reference).abs() * 127.5).mean())
        log("vae", batch, res)
    torch.backends.cudnn.benchmark = True
    latents = torch.randn(1, 4, 64, 64, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        res["b1_torch_cudnn_benchmark_ms"] = cuda_ms(lambda: vae.decode(latents, return_dict=False)[0], 10)
    torch.backends.cudnn.benchmark = False
    return res


def text_encoder_probe() -> dict:
    from transformers import CLIPTextConfig, CLIPTextModel

    from portrait_engine.tiny import VOCAB_SIZE

    torch.manual_seed(0)
    te = CLIPTextModel(CLIPTextConfig(vocab_size=VOCAB_SIZE, hidden_size=768, intermediate_size=3072,
                                      num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                      projection_dim=768, hidden_act="quick_gelu", bos_token_id=VOCAB_SIZE - 2,
                                      eos_token_id=VOCAB_SIZE - 1, pad_token_id=1)).to("cuda", torch.float16).eval()
    ids = torch.randint(0, VOCAB_SIZE - 2, (2, 77), device="cuda")
    res = {}
    with torch.no_grad():
        eager = lambda: te(ids)[0]  # noqa: E731
        res["eager_gpu_ms"] = cuda_ms(eager)
        res["eager_host_us"] = host_us(eager, 20)
        graph, out = graphed(eager)
        res["graph_gpu_ms"] = cuda_ms(graph.replay)
        res["graph_host_us"] = host_us(graph.replay, 20)
        graph.replay()
        res["graph_maxdiff"] = float((out.float() - eager().float()).abs().max())
    return res


def slot_lora_probe(work: Path) -> dict:
    """The slot layers' cost in the uncompiled UNet graph at batch 1 (2 rows): a slot live and none live."""
    import bench_engine

    from portrait_engine.config import EngineConfig
    from portrait_engine.engine import Engine

    os.environ["ENGINE_FAST_COMPILE"] = "off"
    os.environ["ENGINE_FAST_BATCHES"] = "1"
    base, controlnet = bench_engine.build_models(work)
    engine = Engine(EngineConfig(profile="real", cache_dir=work / "cache", device=torch.device("cuda"),
                                 base_model=base, controlnet=controlnet, fast="on", lora_slots=24))
    graph = engine.fast.graphs[(False, 2)]
    res = {"warmup": engine.warmup}
    res["graph_lora_live_ms"] = cuda_ms(graph.run)
    slots = engine.models.slots
    with torch.no_grad(), slots.forced_live(frozenset()):
        body = graph.body
        with slots.use([-1, -1]):
            res["eager_no_lora_ms"] = cuda_ms(body, 10)
    with torch.no_grad(), slots.forced_live(engine.fast.served), slots.use([0, 0]):
        res["eager_lora_live_ms"] = cuda_ms(graph.body, 10)
    return res


def layout_probe(work: Path) -> dict:
    """The plain SD1.5 UNet (random weights, fp16) in an uncompiled CUDA graph at 2 and 16 rows, and the VAE decoder
    at 1 and 8 images: in torch's default NCHW layout and in channels_last (NHWC, cuDNN's preferred half layout)."""
    import bench_engine
    from diffusers import AutoencoderKL, UNet2DConditionModel

    base, _ = bench_engine.build_models(work)
    unet = UNet2DConditionModel.from_pretrained(base / "unet", torch_dtype=torch.float16).to("cuda").eval()
    vae = AutoencoderKL.from_pretrained(base / "vae", torch_dtype=torch.float16).to("cuda").eval()
    res = {}
    with torch.no_grad():
        for layout in ("nchw", "channels_last"):
            fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            unet.to(memory_format=fmt)
            vae.to(memory_format=fmt)
            for rows in (2, 16):
                x = torch.randn(rows, 4, 64, 64, device="cuda", dtype=torch.float16).to(memory_format=fmt)
                t = torch.full((rows,), 500.0, device="cuda")
                e = torch.randn(rows, 77, 768, device="cuda", dtype=torch.float16)
                graph, out = graphed(lambda: unet(x, t, encoder_hidden_states=e, return_dict=False)[0])
                res[f"unet_{rows}rows_{layout}_ms"] = cuda_ms(graph.replay)
                res[f"unet_{rows}rows_{layout}_sum"] = float(out.float().abs().sum())
                del graph
            for batch in (1, 8):
                z = torch.randn(batch, 4, 64, 64, device="cuda", dtype=torch.float16).to(memory_format=fmt)
                res[f"vae_b{batch}_{layout}_ms"] = cuda_ms(lambda: vae.decode(z, return_dict=False)[0], 10)
            log("layout", layout, res)
    return res


def _compile_timed(module, *args, **kwargs):
    """module compiled (mode default, static shapes) and called once: (the compiled callable, first call's seconds)."""
    compiled = torch.compile(module, mode="default", dynamic=False)
    started = time.monotonic()
    with torch.no_grad():
        compiled(*args, **kwargs)
    torch.cuda.synchronize()
    return compiled, time.monotonic() - started


def compile_probe(work: Path) -> dict:
    """Replay ms of the plain UNet compiled at 2 rows under inductor settings the field uses for SD (diffusers'
    "accelerate inference" guide: 1x1 convolutions as matmuls, coordinate-descent tuning, fused QKV projections), each
    in a fresh inductor cache so its compile seconds are a first start's; SDPA's backends in an uncompiled graph; and
    ControlNet + UNet with both compiled. Outputs are compared with the base variant's on the same inputs."""
    import bench_engine
    import torch._dynamo
    import torch._inductor.config as inductor
    from diffusers import ControlNetModel, UNet2DConditionModel
    from torch.nn.attention import SDPBackend, sdpa_kernel

    base, controlnet_dir = bench_engine.build_models(work)
    unet = UNet2DConditionModel.from_pretrained(base / "unet", torch_dtype=torch.float16).to("cuda").eval()
    gen = torch.Generator("cuda").manual_seed(0)
    x = torch.randn(2, 4, 64, 64, device="cuda", dtype=torch.float16, generator=gen)
    t = torch.full((2,), 500.0, device="cuda")
    e = torch.randn(2, 77, 768, device="cuda", dtype=torch.float16, generator=gen)
    res: dict = {}
    with torch.no_grad():
        for name, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION),
                              ("efficient", SDPBackend.EFFICIENT_ATTENTION)):
            try:
                with sdpa_kernel([backend]):
                    graph, out = graphed(lambda: unet(x, t, encoder_hidden_states=e, return_dict=False)[0])
                res[f"uncompiled_sdpa_{name}_ms"] = cuda_ms(graph.replay)
                del graph
            except Exception as error:  # noqa: BLE001
                res[f"uncompiled_sdpa_{name}_error"] = repr(error)[:300]
        log("sdpa", res)
    defaults = {k: getattr(inductor, k) for k in ("conv_1x1_as_mm", "coordinate_descent_tuning", "epilogue_fusion")}
    variants = (
        ("base", {}, False),
        ("conv1x1mm", {"conv_1x1_as_mm": True}, False),
        ("fused_qkv", {"conv_1x1_as_mm": True}, True),
        ("coordinate_descent", {"conv_1x1_as_mm": True, "coordinate_descent_tuning": True}, True),
    )
    reference = None
    for name, flags, fuse in variants:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(work / f"inductor-{name}")
        torch._dynamo.reset()
        for k, v in {**defaults, **flags}.items():
            setattr(inductor, k, v)
        if fuse:
            unet.fuse_qkv_projections()
        try:
            compiled, seconds = _compile_timed(unet, x, t, encoder_hidden_states=e, return_dict=False)
            with torch.no_grad():
                graph, out = graphed(lambda: compiled(x, t, encoder_hidden_states=e, return_dict=False)[0])
            res[f"{name}_compile_s"] = round(seconds, 1)
            res[f"{name}_ms"] = cuda_ms(graph.replay, 50)
            out = out.float().clone()
            if reference is None:
                reference = out
            res[f"{name}_maxdiff"] = float((out - reference).abs().max())
            del graph, compiled
        except Exception:  # noqa: BLE001
            import traceback

            res[f"{name}_error"] = traceback.format_exc()[-1500:]
        finally:
            if fuse:
                unet.unfuse_qkv_projections()
        log("compile", name, res)
    for k, v in defaults.items():
        setattr(inductor, k, v)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(work / "inductor-base")
    torch._dynamo.reset()
    cn = ControlNetModel.from_pretrained(controlnet_dir, torch_dtype=torch.float16).to("cuda").eval()
    cond = torch.rand(2, 3, 512, 512, device="cuda", dtype=torch.float16, generator=gen)

    def pose_step(net, u):
        down, mid = net(x, t, encoder_hidden_states=e, controlnet_cond=cond, return_dict=False)
        return u(x, t, encoder_hidden_states=e, down_block_additional_residuals=down,
                 mid_block_additional_residual=mid, return_dict=False)[0]

    def measure(name: str, net, u, compiled: str | None = None) -> None:
        if compiled:  # the first call compiles
            started = time.monotonic()
            pose_step(net, u)
            torch.cuda.synchronize()
            res[f"pose_{compiled}_compile_s"] = round(time.monotonic() - started, 1)
        graph, _ = graphed(lambda: pose_step(net, u))
        res[f"pose_{name}_ms"] = cuda_ms(graph.replay)

    with torch.no_grad():
        measure("uncompiled", cn, unet)
        unet_c = torch.compile(unet, mode="default", dynamic=False)
        measure("unet_compiled", cn, unet_c, "unet")
        measure("both_compiled", torch.compile(cn, mode="default", dynamic=False), unet_c, "controlnet")
    log("compile", "pose", res)
    return res


def _kernel_table(fn, calls: int = 5) -> dict:
    """torch.profiler's CUDA kernels over `calls` calls of fn: ms per call for each kernel name (top 30) and summed
    into coarse kinds by name (convolution, matmul, attention, inductor's own Triton kernels, copies, the rest)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    kinds = (("attention", ("fmha", "flash", "attn", "sdpa", "attention")),
             ("convolution", ("conv", "fprop", "dgrad", "implicit", "cudnn", "xmma_fprop")),
             ("copy", ("copy", "memcpy", "memset", "transpose", "nchw", "nhwc")),
             ("matmul", ("gemm", "cutlass", "nvjet", "matmul", "xmma")),
             ("triton", ("triton",)))
    by_kind: dict = {}
    names: dict = {}
    for event in prof.events():
        if event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        ms = event.device_time / 1000 / calls
        names[event.name] = names.get(event.name, 0.0) + ms
        lowered = event.name.lower()
        kind = next((k for k, words in kinds if any(w in lowered for w in words)), "other")
        by_kind[kind] = by_kind.get(kind, 0.0) + ms
    top = sorted(names.items(), key=lambda kv: -kv[1])[:30]
    return {"by_kind_ms": {k: round(v, 3) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
            "total_ms": round(sum(by_kind.values()), 3), "kernels": len(names),
            "top_ms": [[name[:160], round(ms, 3)] for name, ms in top]}


def kernels_probe(work: Path) -> dict:
    """Where the compiled plain UNet's step goes (mode default, static shapes, as the engine's packages build it) at
    2 rows (one image with CFG) and 16 rows (8 images): the CUDA graph's replay ms and the kernels by kind; and the
    same under inductor's `freezing` (the weights taken as constants, so their layout is settled at compile time),
    with the convolutions' weights kept in channels_last (`channels_last_weights`: the layout inductor's convolutions
    ask for, so no call converts them) and with cuDNN's benchmark mode on (the graph captured again; no new
    compile). PROBE_KERNELS_VARIANTS picks variants (default,frozen,channels_last_weights)."""
    import bench_engine
    import torch._dynamo
    import torch._inductor.config as inductor
    from diffusers import UNet2DConditionModel

    base, _ = bench_engine.build_models(work)
    unet = UNet2DConditionModel.from_pretrained(base / "unet", torch_dtype=torch.float16).to("cuda").eval()
    budget = time.monotonic() + float(os.environ.get("PROBE_KERNELS_BUDGET_S", "420"))
    wanted = os.environ.get("PROBE_KERNELS_VARIANTS", "default,frozen").split(",")
    res: dict = {}
    for rows in (2, 16):
        for variant in wanted:
            freezing, weights_nhwc = variant == "frozen", variant == "channels_last_weights"
            unet.to(memory_format=torch.channels_last if weights_nhwc else torch.contiguous_format)
            if time.monotonic() > budget:
                res["skipped_after"] = f"{variant} rows={rows}"
                return res
            name = f"{variant}_{rows}rows"
            gen = torch.Generator("cuda").manual_seed(0)
            x = torch.randn(rows, 4, 64, 64, device="cuda", dtype=torch.float16, generator=gen)
            t = torch.full((rows,), 500.0, device="cuda")
            e = torch.randn(rows, 77, 768, device="cuda", dtype=torch.float16, generator=gen)
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(work / f"inductor-kernels-{variant}")
            torch._dynamo.reset()
            inductor.freezing = freezing
            try:
                compiled, seconds = _compile_timed(unet, x, t, encoder_hidden_states=e, return_dict=False)
                with torch.no_grad():
                    call = lambda: compiled(x, t, encoder_hidden_states=e, return_dict=False)[0]  # noqa: E731
                    graph, out = graphed(call)
                    entry = {"compile_s": round(seconds, 1), "replay_ms": cuda_ms(graph.replay, 50),
                             "sum": float(out.float().abs().sum()), "kernels": _kernel_table(call)}
                    del graph
                    if variant == "default":
                        torch.backends.cudnn.benchmark = True
                        graph, out = graphed(call)
                        entry["cudnn_benchmark_replay_ms"] = cuda_ms(graph.replay, 50)
                        entry["cudnn_benchmark_sum"] = float(out.float().abs().sum())
                        torch.backends.cudnn.benchmark = False
                        del graph
                res[name] = entry
                del compiled
            except Exception:  # noqa: BLE001
                import traceback

                res[f"{name}_error"] = traceback.format_exc()[-1500:]
            finally:
                inductor.freezing = False
                torch.backends.cudnn.benchmark = False
            log("kernels", name, {k: v for k, v in res.get(name, {}).items() if k != "kernels"})
            if os.environ.get("OUT"):  # a command that runs out of time still leaves what was measured
                Path(os.environ["OUT"], "probe_kernels_partial.json").write_text(json.dumps(res, indent=2))
    unet.to(memory_format=torch.contiguous_format)
    return res


def lora_training_step(unet):
    """train_step_probe's LoRA step over `unet` (fp16, frozen): (the UNet with peft's layers, their parameters,
    step(model) -> loss), the model being that UNet or a compiled one of it."""
    from peft import LoraConfig, inject_adapter_in_model

    unet.requires_grad_(False)
    unet = inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                              target_modules=["to_q", "to_k", "to_v", "to_out.0"]), unet)
    params = [p for name, p in unet.named_parameters() if "lora_" in name]
    for p in params:
        p.data = p.data.float()
        p.requires_grad_(True)
    gen = torch.Generator("cuda").manual_seed(0)
    x = torch.randn(1, 4, 64, 64, device="cuda", dtype=torch.float16, generator=gen)
    noise = torch.randn(1, 4, 64, 64, device="cuda", generator=gen)
    t = torch.tensor([500], device="cuda")
    e = torch.randn(1, 77, 768, device="cuda", dtype=torch.float16, generator=gen)
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True, capturable=True)

    def step(model):
        with torch.autocast("cuda", dtype=torch.float16, cache_enabled=False):
            pred = model(x, t, encoder_hidden_states=e, return_dict=False)[0]
        loss = F.mse_loss(pred.float(), noise)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
        return loss

    return unet, params, step


def nhwc_eager_probe(work: Path) -> dict:
    """What the convolutions' weights in channels_last (fast.FastSettings.channels_last) do where nothing is compiled:
    the plain UNet in an uncompiled CUDA graph at 2, 8 and 16 rows (inputs in torch's default layout, as the engine
    gives them), and a LoRA training step at batch 1 (train_step_probe's, in a CUDA graph), each with the weights in
    the default layout and in channels_last, same inputs."""
    import bench_engine
    from diffusers import UNet2DConditionModel

    base, _ = bench_engine.build_models(work)
    unet = UNet2DConditionModel.from_pretrained(base / "unet", torch_dtype=torch.float16).to("cuda").eval()
    res: dict = {}
    with torch.no_grad():
        for rows in (2, 8, 16):
            x = torch.randn(rows, 4, 64, 64, device="cuda", dtype=torch.float16)
            t = torch.full((rows,), 500.0, device="cuda")
            e = torch.randn(rows, 77, 768, device="cuda", dtype=torch.float16)
            for layout, fmt in (("default", torch.contiguous_format), ("channels_last", torch.channels_last)):
                unet.to(memory_format=fmt)
                graph, out = graphed(lambda: unet(x, t, encoder_hidden_states=e, return_dict=False)[0])
                res[f"unet_{rows}rows_{layout}_ms"] = cuda_ms(graph.replay)
                res[f"unet_{rows}rows_{layout}_sum"] = float(out.float().abs().sum())
                del graph
    log("nhwc", res)
    unet.to(memory_format=torch.contiguous_format)
    unet, _, step = lora_training_step(unet)

    for layout, fmt in (("default", torch.contiguous_format), ("channels_last", torch.channels_last)):
        for module in unet.modules():  # the base's convolutions only: the LoRA layers stay as they are
            if isinstance(module, torch.nn.Conv2d):
                module.weight.data = module.weight.data.contiguous(memory_format=fmt)
        graph, _ = graphed(lambda: step(unet))
        res[f"train_step_graph_{layout}_ms"] = cuda_ms(graph.replay, 20)
        del graph
    log("nhwc", res)
    return res


def train_step_probe(work: Path) -> dict:
    """One LoRA training step at 512² batch 1: rank 4 on the four attention kinds (peft, gaussian init), fp16
    autocast (cache off, as a capture needs) over an fp16 base, MSE against the noise, fused capturable AdamW, grads
    kept allocated. Eager; the whole step captured in a CUDA graph; and the same with the UNet compiled (mode
    default: forward and backward) inside the graph. No loss scaler: the three differ only in how the step runs."""
    import bench_engine
    from diffusers import UNet2DConditionModel

    base, _ = bench_engine.build_models(work)
    unet = UNet2DConditionModel.from_pretrained(base / "unet", torch_dtype=torch.float16).to("cuda")
    unet, params, step = lora_training_step(unet)
    res: dict = {"lora_params": sum(p.numel() for p in params)}
    res["eager_ms"] = cuda_ms(lambda: step(unet), 10)
    log("train", res)
    graph, _ = graphed(lambda: step(unet))
    res["graph_ms"] = cuda_ms(graph.replay, 20)
    del graph
    log("train", res)
    compiled = torch.compile(unet, mode="default", dynamic=False)
    started = time.monotonic()
    step(compiled)
    torch.cuda.synchronize()
    res["compile_s"] = round(time.monotonic() - started, 1)
    log("train", res)
    res["compiled_eager_ms"] = cuda_ms(lambda: step(compiled), 10)
    graph, _ = graphed(lambda: step(compiled))
    res["compiled_graph_ms"] = cuda_ms(graph.replay, 20)
    log("train", res)
    return res


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--only", default="")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    only = {s for s in args.only.split(",") if s}
    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "card": torch.cuda.get_device_name(),
                    "torch": torch.__version__}

    def save() -> None:
        if os.environ.get("OUT"):
            Path(os.environ["OUT"], "probe_decode.json").write_text(json.dumps(report, indent=2, default=str))

    for name, fn in (("solve", solve_probe), ("unipc", unipc_probe), ("group_norm", group_norm_probe),
                     ("vae", lambda: vae_probe(args.work)), ("text_encoder", text_encoder_probe),
                     ("slot_lora", lambda: slot_lora_probe(args.work)), ("layout", lambda: layout_probe(args.work)),
                     ("compile", lambda: compile_probe(args.work)),
                     ("nhwc_eager", lambda: nhwc_eager_probe(args.work)),
                     ("kernels", lambda: kernels_probe(args.work)),
                     ("train_step", lambda: train_step_probe(args.work))):
        if only and name not in only:
            continue
        started = time.monotonic()
        try:
            report[name] = fn()
        except Exception as error:  # noqa: BLE001
            import traceback

            report[name] = {"error": traceback.format_exc()}
        log(name, f"{time.monotonic() - started:.1f} s", report[name])
        save()


if __name__ == "__main__":
    main()
