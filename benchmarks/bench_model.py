"""U-Net training-step and inference cost on this CPU (``python -m benchmarks.bench_model``).

One optimiser step on a batch of 256x256 patches, and one forward pass without gradients,
per base width, in float32 and under bfloat16 autocast (both channels_last).
"""

from __future__ import annotations

import time

import torch

from core.model import UNet, forward_flops


def time_call(function, repeats: int) -> float:
    function()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - start) / repeats


def measure(width: int, bf16: bool, batch: int = 4, size: int = 256, repeats: int = 3) -> tuple[float, float]:
    """(ms per sample of a training step, ms per sample of inference)."""
    torch.manual_seed(0)
    model = UNet(in_channels=1, base_width=width, depth=4).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = torch.rand(batch, 1, size, size).to(memory_format=torch.channels_last)
    target = (images > 0.5).float()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)

    def train_step() -> None:
        with autocast:
            logits = model(images)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def inference() -> None:
        with torch.no_grad(), autocast:
            model(images)

    model.train()
    train_ms = time_call(train_step, repeats) / batch * 1000
    model.eval()
    infer_ms = time_call(inference, repeats) / batch * 1000
    return train_ms, infer_ms


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 4 of 256x256, depth 4")
    print(f"{'width':>5} {'GFLOPs':>7} {'precision':>9} {'train ms/sample':>16} {'infer ms/sample':>16}")
    for width in (16, 32):
        gflops = forward_flops(UNet(1, width, 4), 256, 256) / 1e9
        for bf16 in (False, True):
            train_ms, infer_ms = measure(width, bf16)
            print(f"{width:>5} {gflops:>7.1f} {'bf16' if bf16 else 'fp32':>9} {train_ms:>16.0f} {infer_ms:>16.0f}")


if __name__ == "__main__":
    main()
