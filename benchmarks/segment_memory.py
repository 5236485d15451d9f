"""Peak memory of segmenting one large upload, as the Segment page does it (target: 64 MP under 1.5 GB).

Each case runs in a fresh process, which reports its peak resident set (VmHWM) above the
resident set it had after importing everything and loading the model, so the figure is
what one upload costs a session; building the two downloads (on a click) is measured apart. "bounded" is the page's pipeline (core.segment: native
dtype, float16 probabilities, uint16 labels, previews of at most 2048 px); "float32 whole"
is the earlier one (float32 image and maps, int32 labels, full-size overlays).

    python -m benchmarks.segment_memory [--side 8000] [--width 16] [--method components]
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def peak_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def make_upload(side: int, colour: bool) -> bytes:
    """A PNG of side x side: synthetic nuclei tiled over the whole image."""
    import numpy as np
    from PIL import Image

    from core.datasets import load_dataset

    tile = np.rint(load_dataset("synthetic-nuclei")[0].image[:, :, 0] * 255).astype(np.uint8)
    reps = -(-side // tile.shape[0])
    image = np.tile(tile, (reps, reps))[:side, :side]
    if colour:
        image = np.stack([image, image // 2, 255 - image], axis=2)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def reset_peak() -> None:
    """Start a new high-water mark (Linux: writing 5 to clear_refs resets VmHWM)."""
    Path("/proc/self/clear_refs").write_text("5")


def run_case(pipeline: str, upload: str, checkpoint: str, method: str) -> dict:
    import numpy as np

    from core.datasets.io import read_upload
    from core.inference import load_model, predict_image
    from core.overlays import label_overlay, labels_download, mask_download, mask_overlay, probability_image
    from core.postprocess import postprocess
    from core.segment import compact_labels, predict_upload, preview, preview_float

    loaded = load_model(checkpoint, device="cpu")
    data = Path(upload).read_bytes()
    base = rss_kib()
    started = time.perf_counter()
    if pipeline == "bounded":
        image = read_upload("upload.png", data, as_float=False)
        prediction = predict_upload(loaded, image, "upload.png")
        probability = prediction.probability
        labels = compact_labels(postprocess(probability, method, threshold=0.5, connectivity=2))
        mask = probability >= 0.5
        shown = preview_float(image)
        overlays = [label_overlay(shown, preview(labels)), mask_overlay(shown, preview(mask)),
                    probability_image(preview(probability))]
    else:
        image = read_upload("upload.png", data)
        probability = predict_image(loaded, image).probability
        labels = postprocess(probability, method, threshold=0.5, connectivity=2)
        mask = probability >= 0.5
        overlays = [label_overlay(image, labels), mask_overlay(image, mask), probability_image(probability)]
    seconds = time.perf_counter() - started
    page_mib = (peak_kib() - base) / 1024
    reset_peak()  # the downloads are built when a button is clicked, after the page is shown
    downloads = [mask_download(mask), labels_download(labels)[0]]
    return {"pipeline": pipeline, "extra_mib": page_mib, "download_extra_mib": (peak_kib() - base) / 1024,
            "seconds": seconds,
            "objects": int(labels.max()), "overlay_px": int(overlays[0].shape[0] * overlays[0].shape[1]),
            "download_mib": sum(len(d) for d in downloads) / 2**20, "dtype": str(np.asarray(probability).dtype)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=8000)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--method", default="components")
    parser.add_argument("--colour", action="store_true", help="an RGB upload (the model gets its grey mean)")
    parser.add_argument("--pipelines", default="bounded,float32-whole")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        pipeline, upload, checkpoint = args.case.split("|")
        print(json.dumps(run_case(pipeline, upload, checkpoint, args.method)))
        return

    import torch

    from core.checkpoints import save_checkpoint
    from core.config import RunConfig
    from core.model import UNet

    folder = Path(tempfile.mkdtemp(prefix="segment-memory-"))
    config = RunConfig(base_width=args.width, depth=4)
    torch.manual_seed(0)
    checkpoint = save_checkpoint(folder / "best.pt", {"state_dict": UNet(1, args.width, 4).state_dict(),
                                                       "config": config.to_dict(), "epoch": 0, "in_channels": 1})
    upload = folder / "upload.png"
    upload.write_bytes(make_upload(args.side, args.colour))
    megapixels = args.side * args.side / 1e6
    print(f"upload: {args.side} x {args.side} ({megapixels:.0f} MP, {'RGB' if args.colour else 'grey'}, "
          f"PNG {upload.stat().st_size / 2**20:.1f} MiB); model width {args.width}, untrained; "
          f"post-processing {args.method}")
    print("| pipeline | extra peak memory, page shown (MiB) | ... then building both downloads (MiB) | seconds | "
          "probability dtype | overlay pixels | downloads (MiB) |")
    print("|---|---|---|---|---|---|---|")
    for pipeline in args.pipelines.split(","):
        process = subprocess.run([sys.executable, "-m", "benchmarks.segment_memory", "--method", args.method,
                                  "--case", f"{pipeline}|{upload}|{checkpoint}"],
                                 capture_output=True, text=True)
        if process.returncode != 0:
            print(f"| {pipeline} | failed: {process.stderr.strip().splitlines()[-1][:120]} | | | | | |")
            continue
        result = json.loads(process.stdout.strip().splitlines()[-1])
        print(f"| {pipeline} | {result['extra_mib']:,.0f} | {result['download_extra_mib']:,.0f} | "
              f"{result['seconds']:.1f} | {result['dtype']} | "
              f"{result['overlay_px']:,} | {result['download_mib']:.1f} |")


if __name__ == "__main__":
    main()
