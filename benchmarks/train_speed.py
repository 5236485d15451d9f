"""Training throughput and inference latency of our U-Net on this machine.

    pip install -r benchmarks/requirements.txt   # MONAI, for the reference BasicUNet
    python -m benchmarks.train_speed [--widths 16,32,64] [--steps 4] [--quality-epochs 6]

Prints, per base width (batch 8 of 256x256 patches, depth 4):

- bare training steps (random tensors, no data pipeline): fp32, fp32 channels_last,
  bf16 autocast + channels_last; and MONAI's BasicUNet with the same widths, as a reference;
- the full training loop (``core.train``: patch sampling, augmentation ``light`` in a
  background thread, the step), as a share of the fastest bare step;
- achieved GFLOP/s (forward + backward taken as 3x the forward FLOPs) against a large fp32
  and bf16 matmul measured in the same run;
- inference on one 512x512 image: a bare forward pass, and ``predict_probabilities``
  (the tiled predictor the app uses), each in fp32 and bf16;
- with ``--quality-epochs``: final validation F1 of a bf16 run and an fp32 run of the same
  config on synthetic-nuclei, to check that bf16 costs no accuracy.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F

from core.model import UNet, forward_flops

BATCH, SIZE = 8, 256


def median_seconds(function, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def matmul_gflops(dtype: torch.dtype, n: int = 2048) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    seconds = median_seconds(lambda: a @ b, repeats=5, warmup=2)
    return 2 * n**3 / seconds / 1e9


def training_step_speed(model: torch.nn.Module, channels_last: bool, bf16: bool, steps: int) -> float:
    """Images per second of bare optimiser steps on random tensors."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = torch.rand(BATCH, 1, SIZE, SIZE).contiguous(memory_format=memory_format)
    target = (torch.rand(BATCH, 1, SIZE, SIZE) > 0.5).float()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(images)
        loss = F.binary_cross_entropy_with_logits(logits.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return BATCH / median_seconds(step, repeats=steps, warmup=1)


def full_loop_speed(width: int, steps: int) -> tuple[float, float]:
    """Images per second of ``core.train`` (data, augmentation, step), bf16 and fp32."""
    from core.config import RunConfig
    from core.train import train_run

    speeds = []
    for precision in ("bf16", "fp32"):
        config = RunConfig(dataset="synthetic-nuclei", train_fraction=0.5, augmentation="light", epochs=1,
                           steps_per_epoch=steps + 1, batch_size=BATCH, patch_size=SIZE, base_width=width,
                           precision=precision, channels_last=True)
        result = train_run(config, show_progress=False)
        speeds.append(result.final_metrics["patches_per_second"])
    return speeds[0], speeds[1]


def inference_latency(width: int) -> dict[str, float]:
    from core.predict import TileSettings, predict_probabilities

    model = UNet(1, width, 4).eval().to(memory_format=torch.channels_last)
    image = np.random.default_rng(0).random((512, 512, 1), dtype=np.float32)
    tensor = torch.from_numpy(image.transpose(2, 0, 1)[None].copy()).contiguous(memory_format=torch.channels_last)
    out = {}
    for precision in ("fp32", "bf16"):
        def bare() -> None:
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                model(tensor)

        def tiled() -> None:
            predict_probabilities(model, image, TileSettings(tile_size=512), "cpu", precision, channels_last=True)

        out[f"bare {precision}"] = median_seconds(bare, repeats=5) * 1000
        out[f"predict {precision}"] = median_seconds(tiled, repeats=5) * 1000
    return out


def quality(epochs: int) -> dict[str, float]:
    from core.config import RunConfig
    from core.train import train_run

    out = {}
    for precision in ("fp32", "bf16"):
        config = RunConfig(dataset="synthetic-nuclei", train_fraction=0.5, augmentation="light", epochs=epochs,
                           precision=precision)
        result = train_run(config, show_progress=False)
        out[precision] = result.final_metrics["val_f1"]
        out[f"{precision} seconds"] = result.seconds
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", default="16,32,64")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per measurement (median)")
    parser.add_argument("--quality-epochs", type=int, default=6, help="0 skips the bf16-vs-fp32 F1 check")
    args = parser.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    os.environ.setdefault("UNETLAB_CACHE", "/tmp/unetlab-bench/cache")
    os.environ.setdefault("UNETLAB_CHECKPOINTS", "/tmp/unetlab-bench/checkpoints")

    print(f"# train_speed: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d')}")
    peak32, peak16 = matmul_gflops(torch.float32), matmul_gflops(torch.bfloat16)
    print(f"matmul 2048^3: fp32 {peak32:.0f} GFLOP/s, bf16 {peak16:.0f} GFLOP/s\n")

    try:
        from monai.networks.nets import BasicUNet
    except ImportError:
        BasicUNet = None
        print("(MONAI not installed: pip install -r benchmarks/requirements.txt for the reference column)\n")

    header = (f"{'width':>5} {'GFLOP/img':>9} | {'bare fp32':>9} {'fp32 CL':>8} {'bf16 CL':>8} {'GFLOP/s':>8} | "
              f"{'loop bf16':>9} {'loop/bare':>9} {'loop fp32':>9} | {'MONAI fp32':>10} {'MONAI bf16':>10}")
    print("Training, images/s (batch 8, 256x256; CL = channels_last; loop = core.train with data and augmentation)")
    print(header)
    latencies = {}
    for width in widths:
        flops = forward_flops(UNet(1, width, 4), SIZE, SIZE)
        steps = args.steps if width < 64 else max(2, args.steps // 2)
        torch.manual_seed(0)
        bare32 = training_step_speed(UNet(1, width, 4), False, False, steps)
        cl32 = training_step_speed(UNet(1, width, 4), True, False, steps)
        cl16 = training_step_speed(UNet(1, width, 4), True, True, steps)
        fastest = max(bare32, cl32, cl16)
        achieved = fastest * 3 * flops / 1e9
        loop16, loop32 = full_loop_speed(width, steps * 2)
        monai32 = monai16 = float("nan")
        if BasicUNet is not None:
            features = (width, width * 2, width * 4, width * 8, width * 16, width)
            monai32 = training_step_speed(BasicUNet(2, 1, 1, features=features), True, False, steps)
            monai16 = training_step_speed(BasicUNet(2, 1, 1, features=features), True, True, steps)
        print(f"{width:>5} {flops / 1e9:>9.2f} | {bare32:>9.2f} {cl32:>8.2f} {cl16:>8.2f} {achieved:>8.0f} | "
              f"{loop16:>9.2f} {loop16 / fastest:>9.0%} {loop32:>9.2f} | {monai32:>10.2f} {monai16:>10.2f}", flush=True)
        latencies[width] = inference_latency(width)

    print("\nInference on one 512x512 image, ms (median of 5; channels_last)")
    columns = list(next(iter(latencies.values())))
    print(f"{'width':>5} " + " ".join(f"{c:>12}" for c in columns) + f" {'predict/bare':>13}")
    for width, row in latencies.items():
        best_bare = min(row["bare fp32"], row["bare bf16"])
        best_predict = min(row["predict fp32"], row["predict bf16"])
        print(f"{width:>5} " + " ".join(f"{row[c]:>12.0f}" for c in columns) + f" {best_predict / best_bare:>13.2f}")

    if args.quality_epochs:
        result = quality(args.quality_epochs)
        print(f"\nbf16 vs fp32, synthetic-nuclei, width 16, {args.quality_epochs} epochs x 25 steps: "
              f"final validation pixel F1 fp32 {result['fp32']:.4f} ({result['fp32 seconds']:.0f} s), "
              f"bf16 {result['bf16']:.4f} ({result['bf16 seconds']:.0f} s), "
              f"difference {result['bf16'] - result['fp32']:+.4f}")


if __name__ == "__main__":
    main()
