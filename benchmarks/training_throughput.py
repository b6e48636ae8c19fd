"""Training-step throughput of both networks: samples/s and peak GPU memory, 1 GPU or torchrun DDP.

Each step is the trainer's own step function on synthetic batches of the configured size (data loading
excluded, so this is the rate the data pipeline has to keep up with): Phase I = ``gan_step`` of
``training.train_interpolation`` (discriminator step + generator step, LSGAN + reconstruction loss,
always with the adversarial term); Phase II = ``seg_step`` of ``training.train_segmentation`` (WP-UNet
forward/backward with Dice+CE, channels-last-3d). Models are built from the
trainers' DEFAULTS updated by ``--config``/``--set``, so the numbers match a real run's shapes.

    python -m benchmarks.training_throughput                          # both networks, auto device
    torchrun --nproc_per_node=8 -m benchmarks.training_throughput     # DDP: per-GPU and total samples/s
    python -m benchmarks.training_throughput --set seg.patch=[64,128,128] --set interp.patch=256 --set batch_size=4

On CUDA each network is measured with mixed precision (the trainers' ``amp: true``: autocast in
bfloat16/float16 + GradScaler) and in float32 (``amp: false``), so the table shows what AMP buys in
samples/s and peak memory; ``--amp on|off`` measures one of them only. On CPU AMP is a no-op and one
float32 run is made.

Results: a table on stdout and ``benchmarks/results/training_throughput_<device>_x<world>.json``
(``--json`` to choose). On CPU the script runs (tiny shapes are sensible there) but the numbers are not
GPU numbers.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent

from training.common import (DistInfo, amp_enabled, cleanup_distributed, grad_scaler, init_distributed,
                             load_config, mean_across_ranks, wrap_ddp)


def _sync(info: DistInfo) -> None:
    if info.device.type == "cuda":
        torch.cuda.synchronize(info.device)


def interp_step_fn(config: dict, info: DistInfo, amp: bool):
    """(step(), samples per step, parameters, batch shape) for Phase I: ``train_interpolation.gan_step``
    on a fixed random batch, always with its discriminator step."""
    from training import train_interpolation as ti

    gen, disc = (m.to(info.device) for m in ti.build_models(config))
    g_ddp, d_ddp = wrap_ddp(gen, info), wrap_ddp(disc, info)
    g_opt, d_opt = ti.make_g_opt(gen, config, float(config["lr"])), ti.make_d_opt(disc, config)
    b, p, n = int(config["batch_size"]), int(config["patch"]), 2 * int(config["n_side"])
    ctx = torch.randn(b, n, p, p, device=info.device)
    base = torch.randn(b, 1, p, p, device=info.device)
    pos = torch.randn(b, n, device=info.device) * 5
    target = torch.randn(b, 1, p, p, device=info.device)
    linear = torch.randn(b, 1, p, p, device=info.device)  # the linear estimate (used when the generator has it)
    batch = (ctx, pos, base, target, linear)
    g_scaler, d_scaler = grad_scaler(info, amp), grad_scaler(info, amp)
    recon, adv_weight = ti.make_recon_loss(config), float(config["adv_weight"]) or 0.002

    def step() -> None:
        ti.gan_step(g_ddp, d_ddp, g_opt, d_opt, g_scaler, d_scaler, batch, recon, adv_weight, info, amp)

    params = sum(q.numel() for q in gen.parameters()) + sum(q.numel() for q in disc.parameters())
    return step, b, params, f"{b}x{n + 1}x{p}x{p}"


def seg_step_fn(config: dict, info: DistInfo, amp: bool):
    """(step(), samples per step, parameters, batch shape) for Phase II: ``train_segmentation.seg_step``
    (WP-UNet, Dice+CE, channels-last) on a fixed random batch."""
    from training import train_segmentation as ts

    model = ts.build(config).to(info.device)
    net = wrap_ddp(model, info)
    opt = torch.optim.Adam(model.parameters(), lr=float(config["lr"]))
    loss_fn = ts.make_loss(config)
    b, patch = int(config["batch_size"]), [int(v) for v in config["patch"]]
    x = torch.randn(b, 1, *patch, device=info.device).contiguous(memory_format=ts.input_layout(config))
    y = torch.randint(0, 3, (b, 1, *patch), device=info.device)
    scaler = grad_scaler(info, amp)

    def step() -> None:
        ts.seg_step(net, opt, scaler, loss_fn, x, y, info, amp)

    return step, b, sum(q.numel() for q in model.parameters()), f"{b}x1x{'x'.join(map(str, patch))}"


def measure(name: str, build, config: dict, info: DistInfo, amp: bool, steps: int, warmup: int) -> dict:
    step, per_step, params, shape = build(config, info, amp)
    for _ in range(warmup):
        step()
    _sync(info)
    if info.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(info.device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(info)
    seconds = mean_across_ranks(time.perf_counter() - start, info)
    precision = "float32"
    if amp_enabled(info, amp) and info.device.type == "cuda":
        precision = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    per_gpu = per_step * steps / seconds
    peak = torch.cuda.max_memory_allocated(info.device) / 2**30 if info.device.type == "cuda" else None
    peak = max(mean_across_ranks(peak, info), peak) if peak is not None else None
    return {"network": name, "amp": amp_enabled(info, amp), "precision": precision, "batch_shape_per_rank": shape,
            "parameters": params, "steps": steps,
            "step_ms": round(1000 * seconds / steps, 2), "samples_per_s_per_rank": round(per_gpu, 2),
            "samples_per_s_total": round(per_gpu * info.world_size, 2),
            "peak_memory_gib_per_rank": round(peak, 3) if peak is not None else None}


def main(argv=None) -> int:
    from training import train_interpolation as ti
    from training import train_segmentation as ts

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--network", choices=["interp", "seg", "both"], default="both")
    ap.add_argument("--config", help="config file for the chosen network (keys of its trainer's DEFAULTS)")
    ap.add_argument("--set", action="append", default=[], metavar="[NET.]KEY=VALUE",
                    help="override a config value (interp.KEY / seg.KEY for one network only)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--amp", choices=["both", "on", "off"], default="both",
                    help="CUDA: measure with mixed precision, without, or both (default); CPU: always float32")
    ap.add_argument("--no-amp", dest="amp", action="store_const", const="off", help="same as --amp off")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--json", type=Path, help="where to write the results (default benchmarks/results/...)")
    args = ap.parse_args(argv)

    info = init_distributed(args.device)
    if info.device.type == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads()))
    runs = []
    nets = [("interp", ti, interp_step_fn), ("seg", ts, seg_step_fn)]
    for name, module, build in nets:
        if args.network not in (name, "both"):
            continue
        overrides = [s[len(name) + 1:] for s in args.set if s.startswith(name + ".")] + [
            s for s in args.set if "." not in s.split("=", 1)[0] and s.split("=", 1)[0] in module.DEFAULTS]
        config = load_config(module.DEFAULTS, args.config if args.network == name else None, overrides)
        modes = {"both": [True, False], "on": [True], "off": [False]}[args.amp]
        for amp in modes if amp_enabled(info) else [False]:  # on CPU AMP is a no-op: one float32 run
            torch.manual_seed(0)
            runs.append(measure(name, build, config, info, amp, args.steps, args.warmup))
            if info.device.type == "cuda":
                torch.cuda.empty_cache()
    device_name = torch.cuda.get_device_name(info.device) if info.device.type == "cuda" else "cpu"
    result = {"device": device_name, "world_size": info.world_size,
              "torch": torch.__version__, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "runs": runs,
              "overrides": args.set}
    if info.is_main:
        print(f"{device_name} x{info.world_size}")
        print("| network | precision | batch per rank | params | step ms | samples/s per rank | samples/s total "
              "| peak GiB |")
        print("|---|---|---|---|---|---|---|---|")
        for r in runs:
            print(f"| {r['network']} | {r['precision']} | {r['batch_shape_per_rank']} | {r['parameters']:,} | "
                  f"{r['step_ms']} | "
                  f"{r['samples_per_s_per_rank']} | {r['samples_per_s_total']} | {r['peak_memory_gib_per_rank']} |")
        out = args.json or ROOT / "benchmarks" / "results" / (
            f"training_throughput_{device_name.replace(' ', '_').lower()}_x{info.world_size}.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"written {out}")
    cleanup_distributed(info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
