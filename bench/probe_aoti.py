"""Can the fast path's compiled modules be built ahead of time, in other processes, and loaded without tracing (issue 8:
the restart target, and the compiled VAE decoder and ControlNet that a restart could not afford)?

For the SD1.5-size UNet at one image with CFG (2 rows, with the ControlNet's residuals as inputs, as the engine's
compiled UNet takes them), the ControlNet at 2 rows and the VAE decoder at one image (random weights, fp16, 512²):
- torch.export + AOTInductor into a .pt2 package without the weights in it, the three built at once in three
  processes (a first start's compile, wall seconds each and together);
- loading each package with the live module's tensors as its constants (user-managed: no copy), its outputs against
  the eager module's, and after an in-place change of a weight (what the one-image LoRA merge does);
- each loaded package in a CUDA graph: replay ms beside the eager module's graph, and the load-to-captured seconds
  (a restart's share).

    python bench/probe_aoti.py --work /tmp/work      # writes $OUT/probe_aoti.json when OUT is set
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "worker" / "engine"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench_fast import log  # noqa: E402
from portrait_engine.aot import PACKAGE_CONFIG, ControlNetCall, DecoderCall, UNetCall, constants_of  # noqa: E402
from probe_decode import cuda_ms, graphed  # noqa: E402

NAMES = ("unet", "controlnet", "vae")


def modules(work: Path, name: str):
    """(wrapper module on CUDA, fp16, eval; example inputs) for one of NAMES."""
    import bench_engine
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel

    base, controlnet_dir = bench_engine.build_models(work)
    gen = torch.Generator("cuda").manual_seed(0)
    dt = torch.float16
    x = torch.randn(2, 4, 64, 64, device="cuda", dtype=dt, generator=gen)
    t = torch.full((2,), 500.0, device="cuda")
    e = torch.randn(2, 77, 768, device="cuda", dtype=dt, generator=gen)
    if name == "vae":
        vae = AutoencoderKL.from_pretrained(base / "vae", torch_dtype=dt).to("cuda").eval()
        return DecoderCall(vae.decoder), (torch.randn(1, 4, 64, 64, device="cuda", dtype=dt, generator=gen),)
    cn = ControlNetModel.from_pretrained(controlnet_dir, torch_dtype=dt).to("cuda").eval()
    cond = torch.rand(2, 3, 512, 512, device="cuda", dtype=dt, generator=gen)
    if name == "controlnet":
        return ControlNetCall(cn), (x, t, e, cond)
    with torch.no_grad():
        mid, *down = ControlNetCall(cn)(x, t, e, cond)
    del cn
    unet = UNet2DConditionModel.from_pretrained(base / "unet", torch_dtype=dt).to("cuda").eval()
    return UNetCall(unet), (x, t, e, mid, *down)


def build(work: Path, name: str) -> None:
    """Child process: export and AOT-compile one module into work/aoti/<name>.pt2, weights left out."""
    started = time.monotonic()
    module, inputs = modules(work, name)
    loaded = time.monotonic()
    with torch.no_grad():
        program = torch.export.export(module, inputs, strict=False)
    exported = time.monotonic()
    path = work / "aoti" / f"{name}.pt2"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch._inductor.aoti_compile_and_package(
        program, package_path=str(path), inductor_configs=PACKAGE_CONFIG)
    done = time.monotonic()
    print(json.dumps({"name": name, "load_s": round(loaded - started, 1), "export_s": round(exported - loaded, 1),
                      "aoti_s": round(done - exported, 1), "total_s": round(done - started, 1),
                      "package_mb": round(path.stat().st_size / 2**20, 1)}), flush=True)


def build_all(work: Path, timeout: float, names=NAMES) -> dict:
    """The three packages built at once, in three processes, each in an inductor cache of its own (a first start)."""
    started = time.monotonic()
    procs = {}
    for name in names:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(work / f"inductor-aoti-{name}"))
        procs[name] = subprocess.Popen([sys.executable, __file__, "--work", str(work), "--build", name], env=env,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    res: dict = {}
    for name, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=max(1.0, timeout - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            res[name] = {"error": "timeout", "stderr": err[-2000:]}
            continue
        lines = [line for line in out.splitlines() if line.startswith("{")]
        res[name] = json.loads(lines[-1]) if proc.returncode == 0 and lines else {
            "error": f"rc {proc.returncode}", "stderr": err[-3000:]}
        res[name]["finished_after_s"] = round(time.monotonic() - started, 1)
    res["wall_s"] = round(time.monotonic() - started, 1)
    return res


def load(path: Path, module: nn.Module):
    """The package, run single-threaded (CUDA-graph capture), on the module's own tensors (user-managed), through
    aoti_load_package as measured on 2026-12-04 (its first call in a process pays an ISA check; aot.load does not)."""
    runner = torch._inductor.aoti_load_package(str(path), run_single_threaded=True)
    wanted = runner.get_constant_fqns()
    mine = constants_of(module)
    runner.load_constants({k: mine[k] for k in wanted}, check_full_update=True, user_managed=True)
    return runner


def check(work: Path, name: str) -> dict:
    """One package against its eager module: outputs, an in-place weight change, graph replay, load seconds."""
    module, inputs = modules(work, name)
    res: dict = {}
    first = lambda out: out[0] if isinstance(out, (tuple, list)) else out  # noqa: E731
    with torch.no_grad():
        eager_graph, eager_out = graphed(lambda: first(module(*inputs)))
        res["eager_graph_ms"] = cuda_ms(eager_graph.replay, 30)
        reference = first(module(*inputs)).float()
        del eager_graph
        torch.cuda.synchronize()
        started = time.monotonic()
        runner = load(work / "aoti" / f"{name}.pt2", module)
        res["load_s"] = round(time.monotonic() - started, 2)
        res["constants"] = len(runner.get_constant_fqns())
        res["module_tensors"] = len(constants_of(module))
        out = first(runner(*inputs)).float()
        res["max_abs_vs_eager"] = float((out - reference).abs().max())
        res["reference_abs_mean"] = float(reference.abs().mean())
        # An in-place change of a weight (the LoRA merge's add) must reach the package: its tensors are ours.
        weight = next(p for n, p in module.named_parameters() if p.dim() == 2 and "to_q" in n) \
            if name != "vae" else next(p for n, p in module.named_parameters() if p.dim() == 4)
        weight.add_(0.05)
        changed_ref = first(module(*inputs)).float()
        changed = first(runner(*inputs)).float()
        res["after_change_max_abs_vs_eager"] = float((changed - changed_ref).abs().max())
        res["change_moved_output"] = float((changed_ref - reference).abs().max())
        started = time.monotonic()
        graph, graph_out = graphed(lambda: first(runner(*inputs)))
        torch.cuda.synchronize()
        res["capture_s"] = round(time.monotonic() - started, 2)
        res["aoti_graph_ms"] = cuda_ms(graph.replay, 30)
        graph.replay()
        res["graph_max_abs_vs_eager"] = float((graph_out.float() - changed_ref).abs().max())
        weight.sub_(0.05)
        graph.replay()
        res["graph_after_restore_max_abs_vs_eager"] = float((graph_out.float() - reference).abs().max())
        res["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return res


def restart(work: Path, names) -> None:
    """Child process: what a restart pays to have the packages loaded on live modules and captured; the first load
    under cProfile (where a process's first load spends its ~40 s)."""
    import cProfile
    import faulthandler
    import io
    import pstats

    faulthandler.enable()
    marks = {"process_start": time.monotonic()}
    import torch._inductor  # noqa: F401

    marks["import_inductor"] = time.monotonic()
    res: dict = {}
    for i, name in enumerate(names):
        module, inputs = modules(work, name)
        torch.cuda.synchronize()
        started = time.monotonic()
        profile = cProfile.Profile() if i == 0 else None
        if profile:
            profile.enable()
        runner = torch._inductor.aoti_load_package(str(work / "aoti" / f"{name}.pt2"), run_single_threaded=True)
        if profile:
            profile.disable()
            text = io.StringIO()
            pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(40)
            res["first_load_profile"] = text.getvalue()[-6000:]
            text = io.StringIO()
            pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(15)
            res["first_load_tottime"] = text.getvalue()[-3000:]
        loaded = time.monotonic()
        mine = constants_of(module)
        runner.load_constants({k: mine[k] for k in runner.get_constant_fqns()}, check_full_update=True,
                              user_managed=True)
        constants = time.monotonic()
        with torch.no_grad():
            runner(*inputs)
            torch.cuda.synchronize()
            called = time.monotonic()
            graph, _ = graphed(lambda: runner(*inputs))
            torch.cuda.synchronize()
        res[name] = {"load_s": round(loaded - started, 2), "constants_s": round(constants - loaded, 3),
                     "first_call_s": round(called - constants, 2), "capture_s": round(time.monotonic() - called, 2)}
    res["import_inductor_s"] = round(marks["import_inductor"] - marks["process_start"], 2)
    print(json.dumps(res), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--build", choices=NAMES)
    parser.add_argument("--restart", action="store_true")
    parser.add_argument("--names", default=",".join(NAMES))
    parser.add_argument("--skip-checks", action="store_true")
    parser.add_argument("--timeout", type=float, default=360)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.build:
        return build(args.work, args.build)
    names = [n for n in args.names.split(",") if n]
    if args.restart:
        return restart(args.work, names)
    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "card": torch.cuda.get_device_name(),
                    "torch": torch.__version__}

    def save() -> None:
        if os.environ.get("OUT"):
            Path(os.environ["OUT"], "probe_aoti.json").write_text(json.dumps(report, indent=2, default=str))

    import bench_engine

    bench_engine.build_models(args.work)  # once, before the children read them
    report["build"] = build_all(args.work, args.timeout, names)
    log("build", report["build"])
    save()
    try:  # a fresh process first: the parent has not imported inductor or loaded a package yet
        out = subprocess.run([sys.executable, __file__, "--work", str(args.work), "--restart", "--names", args.names],
                             capture_output=True, text=True, timeout=240)
        lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
        report["restart"] = json.loads(lines[-1]) if lines else {
            "error": f"exit {out.returncode}: {out.stderr[-3000:]}", "stdout": out.stdout[-2000:]}
    except subprocess.TimeoutExpired:
        report["restart"] = {"error": "timeout"}
    log("restart", report["restart"])
    save()
    for name in [] if args.skip_checks else names:
        if "error" in report["build"].get(name, {"error": 1}):
            continue
        try:
            report[name] = check(args.work, name)
        except Exception:  # noqa: BLE001
            import traceback

            report[name] = {"error": traceback.format_exc()[-3000:]}
        log(name, report[name])
        save()
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
