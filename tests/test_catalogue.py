"""The bad-input and fault catalogue, as data: one row per case, each asserting its outcome.

Every row runs a real command in this process (``core.cli.main(argv)``, the entry point of
``unetlab`` and ``python -m core``) or a real reader, and asserts either a clear one-line
message that names the offending file or value with a non-zero exit status, or success where
the input is valid. No case may show a traceback. The groups:

- ``DATASET_FOLDER_CASES``: ``datasets describe folder --root DIR`` on a crafted folder;
- ``CLI_ARGUMENT_CASES``: out-of-range numbers, unknown names, paths with ``/../``;
- ``SCORE_CASES``: ``score --truth A --prediction B``;
- ``CHECKPOINT_CASES``: ``predict --checkpoint X`` (and ``core.inference.load_model``) on
  damaged, foreign or malicious checkpoint files;
- ``UPLOAD_CASES``: ``core.datasets.io.read_upload(name, data)``, what the Segment page calls;

then the faults, one test function each (kill -9 and resume, a full disk, a read-only
cache, a damaged registry, a reused pid, a damaged list of registered folders, a closed
pipe) and the Masks and Segment pages on bad input. Image "bombs" (headers declaring huge
sizes) are generated here, a few kB each, never committed.

Messages are matched loosely (the file or value, and a key word), so these tests check what
a message says, not its exact prose.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import time
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from core.checkpoints import load_checkpoint
from core.cli import main
from core.config import RunConfig
from core.datasets import load_dataset
from core.datasets.io import read_raw_image, read_upload
from core.errors import DatasetError, DiskFullError, UNetLabError
from core.paths import PROJECT_ROOT, cache_dir
from core.runs import Registry, process_start_time
from core.train import train_run

# One tiny run (a few seconds on two CPU cores): the checkpoint every predict/score row uses. One
# torch thread: on two cores shared with other work, two threads waiting on each other at every
# barrier made the same epoch take anything from 1 s to 90 s.
TINY = {"dataset": "synthetic-nuclei", "train_fraction": 0.5, "augmentation": "none", "epochs": 1,
        "steps_per_epoch": 2, "batch_size": 2, "patch_size": 64, "base_width": 4, "depth": 2, "tile_size": 256,
        "threads": 1}
TINY_ARGS = ["--dataset", "synthetic-nuclei", "--train-fraction", "0.5", "--augmentation", "none", "--epochs", "1",
             "--steps-per-epoch", "2", "--batch-size", "2", "--patch-size", "64", "--depth", "2", "--width", "4",
             "--threads", "1", "--quiet", "--no-evaluate"]
NAMES_NOBODY_SHOULD_SEE = ("Traceback", "<_io.", "<uploaded bytes>", "the image given as bytes")


# ---- the trained run shared by the module ------------------------------------------------------


@dataclass
class TrainedRun:
    run_id: str
    best: Path
    last: Path
    env: dict[str, str]


@pytest.fixture(scope="module", autouse=True)
def torch_threads_restored():
    """Training here sets torch's thread count for the process; give the next module its own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> TrainedRun:
    """Train one tiny run for the whole module, in its own cache and checkpoint folders."""
    base = tmp_path_factory.mktemp("catalogue-run")
    env = {"UNETLAB_CACHE": str(base / "cache"), "UNETLAB_CHECKPOINTS": str(base / "checkpoints")}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        result = train_run(RunConfig(**TINY), show_progress=False)
    assert result.status == "finished"
    folder = Path(result.checkpoint_dir)
    return TrainedRun(result.run_id, folder / "best.pt", folder / "last.pt", env)


# ---- one row of the catalogue -----------------------------------------------------------------------


@dataclass
class Ctx:
    """What a row's builder and check see: a fresh folder, the shared run, what the command printed."""

    tmp: Path
    run: TrainedRun | None = None
    out: str = ""
    seconds: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def data(self) -> Path:
        """The dataset folder of the DATASET_FOLDER_CASES."""
        return self.tmp / "data"


@dataclass(frozen=True)
class Case:
    """One row: ``build`` makes the input in ``ctx.tmp`` and returns the argv (or, for uploads,
    ``(file name, bytes)``); ``code`` is the exit status expected (2 for a UNetLabError, 0 for
    valid input); ``expect`` the substrings the one-line message must hold (the file or value,
    and a key word); ``check`` runs afterwards; ``usage`` marks argparse's own refusal ("usage:"
    lines, then one "error:" line); ``needs_run`` asks for the shared trained checkpoint."""

    name: str
    build: Callable[[Ctx], Any]
    code: int = 2
    expect: tuple[str, ...] = ()
    check: Callable[[Ctx], None] | None = None
    usage: bool = False
    needs_run: bool = False

    def __repr__(self) -> str:
        return self.name


def ids(cases: list[Case]) -> list[str]:
    return [case.name for case in cases]


def quietly(argv: list) -> tuple[int, str, str]:
    """Run one command in this process, capturing what it prints (for builders and checks)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(arg) for arg in argv])
        except SystemExit as exit_:
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


class Logged(logging.Handler):
    """Log records a real ``python -m core`` would print on stderr (logging's last-resort
    handler shows WARNING and above when nothing configured logging; pytest captures them here)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def run_case(case: Case, tmp_path: Path, request, capsys) -> Ctx:
    """Build the row's input, run its command, assert the outcome, then its check."""
    ctx = Ctx(tmp=tmp_path, run=request.getfixturevalue("trained") if case.needs_run else None)
    argv = [str(arg) for arg in case.build(ctx)]
    capsys.readouterr()  # whatever building printed is not the command's output
    started = time.perf_counter()
    logged = Logged()
    logging.getLogger().addHandler(logged)
    try:
        with warnings.catch_warnings(record=True) as caught:
            # Python's default filters: what a user of `python -m core` would see on stderr.
            warnings.simplefilter("default")
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.simplefilter("ignore", category)
            try:
                code = main(argv)
            except SystemExit as exit_:  # argparse refuses a value itself
                code = exit_.code
    finally:
        logging.getLogger().removeHandler(logged)
    ctx.seconds = time.perf_counter() - started
    out, err = capsys.readouterr()
    err += "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line) for w in caught)
    err += "".join(f"{line}\n" for line in logged.lines)
    ctx.out = out
    assert_outcome(case, argv, code, out, err)
    if case.check is not None:
        case.check(ctx)
    return ctx


def assert_outcome(case: Case, argv: list[str], code: int, out: str, err: str) -> None:
    command = "python -m core " + " ".join(argv)
    for text in ("Traceback", "this is a bug in U-Net Lab"):
        assert text not in out + err, f"{command}\n{err[-2000:]}"
    assert code == case.code, f"{command}: exit {code}, expected {case.code}\nstderr: {err[-2000:]}"
    if case.code == 0:
        return
    lines = [line for line in err.splitlines() if line.strip()]
    if case.usage:  # argparse: its usage lines, then one line "PROG: error: ..."
        assert lines and lines[0].startswith("usage:") and ": error: " in lines[-1], err
        assert not any(": error: " in line for line in lines[:-1]), err
    else:
        assert len(lines) == 1 and lines[0].startswith("error: "), f"{command}: not one error line:\n{err}"
    for text in case.expect:
        assert text in lines[-1], f"{command}: {text!r} is not in the message {lines[-1]!r}"


# ---- files ------------------------------------------------------------------------------------------


def save_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")
    return path


def save_tif(path: Path, array: np.ndarray, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, array, **options)
    return path


def noise(shape=(24, 24), dtype=np.uint8, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) * np.iinfo(dtype).max).astype(dtype)


def square_mask(shape=(24, 24), value: int = 255) -> np.ndarray:
    mask = np.zeros(shape[:2], np.uint8)
    mask[3:10, 4:12] = value
    return mask


def write_folder(root: Path, n: int = 3, shape=(24, 24)) -> Path:
    """A valid ``folder`` dataset: images/imK.png (noise) and masks/imK.png (one square)."""
    for index in range(n):
        save_png(root / "images" / f"im{index}.png", noise(shape, seed=index))
        save_png(root / "masks" / f"im{index}.png", square_mask(shape))
    return root


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A PNG of a few kB whose IHDR declares ``width`` x ``height`` 8-bit grey pixels, with the
    first rows of zeros compressed in its IDAT (the rest would decompress from nothing)."""
    rows = zlib.compress((b"\x00" + bytes(width)) * 16, 9)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + png_chunk(b"IDAT", rows) + png_chunk(b"IEND", b""))


def tiff_declaring(pages: int, width: int, height: int) -> bytes:
    """A little-endian TIFF, written by hand, of ``pages`` IFDs each declaring ``width`` x ``height``
    8-bit grey pixels in one deflate strip; all pages share a strip of a few compressed rows."""
    strip = zlib.compress(bytes(width) * 4, 9)
    strip += b"\x00" * (len(strip) % 2)  # IFDs start on a word boundary
    first_ifd = 8 + len(strip)
    ifd_size = 2 + 9 * 12 + 4

    def short(tag: int, value: int) -> bytes:
        return struct.pack("<HHIHH", tag, 3, 1, value, 0)

    def long(tag: int, value: int) -> bytes:
        return struct.pack("<HHII", tag, 4, 1, value)

    data = b"II*\x00" + struct.pack("<I", first_ifd) + strip
    for page in range(pages):
        entries = [long(256, width), long(257, height), short(258, 8), short(259, 8), short(262, 1),
                   long(273, 8), short(277, 1), long(278, height), long(279, len(strip))]
        following = first_ifd + (page + 1) * ifd_size if page + 1 < pages else 0
        data += struct.pack("<H", len(entries)) + b"".join(entries) + struct.pack("<I", following)
    return data


def tif_bytes(array: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, **options)
    return buffer.getvalue()


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


# ==== dataset folders: `datasets describe folder --root DIR` ========================================


def describe(root: Path) -> list:
    return ["datasets", "describe", "folder", "--root", root, "--json"]


def folder(mutate: Callable[[Path], Any] | None = None, n: int = 3, shape=(24, 24)) -> Callable[[Ctx], list]:
    """A builder: a valid folder of ``n`` images, changed by ``mutate(root)``, then described."""
    def build(ctx: Ctx) -> list:
        root = write_folder(ctx.data, n, shape)
        if mutate is not None:
            mutate(root)
        return describe(root)

    return build


def described(test: Callable[[dict], bool]) -> Callable[[Ctx], None]:
    """A check on the JSON that ``describe --json`` printed (its last line)."""
    def check(ctx: Ctx) -> None:
        info = json.loads(ctx.out.strip().splitlines()[-1])
        assert test(info), info

    return check


def warns(*texts: str) -> Callable[[Ctx], None]:
    """A check: the folder loads, and one of its warnings holds every text given."""
    def check(ctx: Ctx) -> None:
        dataset = load_dataset("folder", ctx.data)
        assert any(all(text in warning for text in texts) for warning in dataset.warnings), dataset.warnings

    return check


def refused_fast(relative: str) -> Callable[[Ctx], None]:
    """A check: reading the file is refused from its header, in well under a second."""
    def check(ctx: Ctx) -> None:
        started = time.perf_counter()
        with pytest.raises(DatasetError, match="limit"):
            read_raw_image(ctx.data / relative)
        assert time.perf_counter() - started < 1.0

    return check


def replace_image(name: str, writer: Callable[[Path], Any], mask: np.ndarray | None = None):
    """A mutation: images/im0.png becomes ``name`` written by ``writer`` (with a mask of the same stem)."""
    def mutate(root: Path) -> None:
        (root / "images" / "im0.png").unlink()
        (root / "masks" / "im0.png").unlink()
        writer(root / "images" / name)
        save_png(root / "masks" / f"{Path(name).stem}.png", square_mask() if mask is None else mask)

    return mutate


def replace_mask(name: str, writer: Callable[[Path], Any]):
    """A mutation: masks/im0.png becomes ``name`` written by ``writer``."""
    def mutate(root: Path) -> None:
        (root / "masks" / "im0.png").unlink()
        writer(root / "masks" / name)

    return mutate


def empty_folders(ctx: Ctx) -> list:
    (ctx.data / "images").mkdir(parents=True)
    (ctx.data / "masks").mkdir()
    return describe(ctx.data)


def masks_only(ctx: Ctx) -> list:
    write_folder(ctx.data)
    for path in (ctx.data / "images").iterdir():
        path.unlink()
    return describe(ctx.data)


def no_masks_folder(ctx: Ctx) -> list:
    write_folder(ctx.data)
    shutil.rmtree(ctx.data / "masks")
    return describe(ctx.data)


def root_is_a_file(ctx: Ctx) -> list:
    ctx.tmp.joinpath("data.txt").write_text("not a folder")
    return describe(ctx.tmp / "data.txt")


def non_utf8_names(ctx: Ctx) -> list:
    root = write_folder(ctx.data)
    for index in range(3):  # "caféK.png" in Latin-1: byte 0xE9 is not UTF-8
        name = os.fsdecode(b"caf\xe9%d.png" % index)
        (root / "images" / f"im{index}.png").rename(root / "images" / name)
        (root / "masks" / f"im{index}.png").rename(root / "masks" / name)
    return describe(root)


def check_non_utf8(ctx: Ctx) -> None:
    info = json.loads(ctx.out.strip().splitlines()[-1])
    assert info["n_images"] == 3
    names = load_dataset("folder", ctx.data).names
    assert len(names) == 3 and all(name.startswith("caf") for name in names), names
    json.dumps(names).encode("utf-8")  # storable and showable


def broken_link(ctx: Ctx) -> list:
    root = write_folder(ctx.data)
    os.symlink(root / "images" / "gone.png", root / "images" / "broken.png")
    save_png(root / "masks" / "broken.png", square_mask())
    return describe(root)


def link_loop(ctx: Ctx) -> list:
    root = write_folder(ctx.data)
    os.symlink("loop.png", root / "images" / "loop.png")  # points at itself
    save_png(root / "masks" / "loop.png", square_mask())
    return describe(root)


def grey_pages_as_channels(path: Path) -> None:
    """Three grey pages whose metadata calls them the samples of one image (axes SYX)."""
    save_tif(path, noise((3, 24, 24)), photometric="minisblack", metadata={"axes": "SYX"})


DATASET_FOLDER_CASES = [
    Case("empty-folder", empty_folders, expect=("images", "empty folder")),
    Case("missing-folder", lambda ctx: describe(ctx.tmp / "absent"), expect=("absent", "not found")),
    Case("root-is-a-file", root_is_a_file, expect=("data.txt", "not found")),
    Case("no-masks-folder", no_masks_folder, expect=("masks", "not found")),
    Case("images-without-masks", folder(lambda root: (root / "masks" / "im1.png").unlink()),
         expect=("im1.png", "missing mask")),
    Case("masks-without-images", masks_only, expect=("images", "empty folder")),
    Case("extra-mask-ignored", folder(lambda root: save_png(root / "masks" / "orphan.png", square_mask())), code=0,
         check=described(lambda info: info["n_images"] == 3 and any("1 masks without an image" in c
                                                                     for c in info["checks"]))),
    Case("two-masks-for-one-image", folder(lambda root: save_tif(root / "masks" / "im0.tif", square_mask())),
         expect=("im0.png", "several masks")),
    Case("size-mismatch", folder(lambda root: save_png(root / "masks" / "im1.png", square_mask((24, 20)))),
         expect=("im1.png", "size mismatch")),
    Case("fractional-float-mask",
         folder(replace_mask("im0.tif", lambda p: save_tif(p, np.linspace(0, 1, 576, dtype=np.float32)
                                                           .reshape(24, 24)))),
         expect=("im0.tif", "neither binary nor a label image")),
    Case("negative-labels", folder(replace_mask("im0.tif", lambda p: save_tif(p, np.full((24, 24), -1, np.int16)))),
         expect=("im0.tif", "negative")),
    Case("colour-mask-differing-channels",
         folder(lambda root: save_png(root / "masks" / "im2.png",
                                      np.stack([square_mask(), np.zeros((24, 24), np.uint8), square_mask()], -1))),
         expect=("im2.png", "colour channels differ")),
    Case("truncated-png",
         folder(lambda root: (root / "images" / "im0.png").write_bytes((root / "images" / "im0.png").read_bytes()[:60])),
         expect=("im0.png", "corrupt")),
    Case("zero-byte-file", folder(lambda root: (root / "images" / "im1.png").write_bytes(b"")),
         expect=("im1.png", "empty")),
    Case("text-file-named-png", folder(lambda root: (root / "images" / "im0.png").write_text("hello, not a PNG")),
         expect=("im0.png", "corrupt")),
    Case("stack-where-an-image-is-expected",
         folder(replace_image("im0.tif", lambda p: save_tif(p, noise((5, 24, 24)), photometric="minisblack"))),
         expect=("im0.tif", "stack of 5 pages")),
    Case("16-bit-image-valid", folder(lambda root: save_png(root / "images" / "im0.png", noise(dtype=np.uint16))),
         code=0, check=described(lambda info: "uint16" in info["dtype"] and info["n_images"] == 3)),
    Case("rgba-image-valid-alpha-dropped",
         folder(lambda root: [save_png(root / "images" / f"im{i}.png", noise((24, 24, 4), seed=i)) for i in range(3)]),
         code=0, check=described(lambda info: info["channels"] == 3)),
    Case("label-image-valid", folder(lambda root: save_png(root / "masks" / "im0.png",
                                                           np.repeat(np.arange(4, dtype=np.uint8), 144).reshape(24, 24))),
         code=0, check=described(lambda info: info["n_instances"] >= 3 + 2)),
    Case("text-file-beside-images-ignored", folder(lambda root: (root / "images" / "notes.txt").write_text("hi")),
         code=0, check=described(lambda info: info["n_images"] == 3)),
    Case("png-bomb-50000x50000", folder(lambda root: (root / "images" / "im0.png").write_bytes(png_bomb())),
         expect=("im0.png", "limit"), check=refused_fast("images/im0.png")),
    Case("tiff-one-page-40000x40000",
         folder(replace_image("im0.tif", lambda p: p.write_bytes(tiff_declaring(1, 40_000, 40_000)))),
         expect=("im0.tif", "limit"), check=refused_fast("images/im0.tif")),
    Case("tiff-40-pages-of-8000x8000",
         folder(replace_image("im0.tif", lambda p: p.write_bytes(tiff_declaring(40, 8_000, 8_000)))),
         expect=("im0.tif", "limit"), check=refused_fast("images/im0.tif")),
    Case("three-grey-pages-read-as-colour", folder(replace_image("im0.tif", grey_pages_as_channels)), code=0,
         check=warns("im0.tif", "colour channels")),
    Case("all-empty-masks",
         folder(lambda root: [save_png(root / "masks" / f"im{i}.png", np.zeros((24, 24), np.uint8)) for i in range(3)]),
         code=0, check=warns("all background", "nothing can be learnt")),
    Case("all-full-masks",
         folder(lambda root: [save_png(root / "masks" / f"im{i}.png", np.full((24, 24), 255, np.uint8))
                              for i in range(3)]),
         code=0, check=warns("all foreground")),
    Case("constant-image", folder(lambda root: save_png(root / "images" / "im1.png", np.full((24, 24), 7, np.uint8))),
         code=0, check=warns("constant", "im1")),
    Case("one-by-one-image",
         folder(replace_image("tiny.png", lambda p: save_png(p, np.full((1, 1), 9, np.uint8)),
                              mask=np.full((1, 1), 255, np.uint8))),
         code=0, check=warns("smaller than 16", "tiny")),
    Case("broken-symlink-in-images", broken_link, code=0, check=warns("broken.png")),
    Case("symlink-loop-in-images", link_loop, code=0, check=warns("loop.png")),
    Case("non-utf8-file-names", non_utf8_names, code=0, check=check_non_utf8),
    Case("describe-size-zero", lambda ctx: [*describe(write_folder(ctx.data)), "--image-size", "0"],
         expect=("size", "positive")),
]


@pytest.mark.parametrize("case", DATASET_FOLDER_CASES, ids=ids(DATASET_FOLDER_CASES))
def test_dataset_folder(case, tmp_path, request, capsys):
    run_case(case, tmp_path, request, capsys)


# ==== command-line arguments ==========================================================================


def train(*args: str) -> Callable[[Ctx], list]:
    return lambda ctx: ["train", *TINY_ARGS, *args]


def nothing_created(ctx: Ctx) -> None:
    """No run was registered."""
    assert Registry().list_runs() == []


def no_escape(ctx: Ctx) -> None:
    """No run id with ``..`` (`runs list --json`), and nothing written outside the generated folders."""
    code, out, err = quietly(["runs", "list", "--json"])
    assert code == 0, err
    assert not [row["id"] for row in json.loads(out) if ".." in row["id"] or "/" in row["id"]]
    assert not Path("/tmp/escape").exists() and not list(cache_dir().parent.rglob("*escape*"))


def predict(*args: str, checkpoint: Callable[[Ctx], Path] | None = None) -> Callable[[Ctx], list]:
    """``predict`` with the shared checkpoint on a valid 32x32 image, plus ``args``."""
    def build(ctx: Ctx) -> list:
        image = save_png(ctx.tmp / "in" / "cells.png", noise((32, 32)))
        path = checkpoint(ctx) if checkpoint is not None else ctx.run.best
        argv = ["predict", "--checkpoint", path, "--input", image, "--output", ctx.tmp / "out", *args]
        return [arg(ctx) if callable(arg) else arg for arg in argv]

    return build


def an_existing_file(ctx: Ctx) -> Path:
    path = ctx.tmp / "results.txt"
    path.write_text("keep me")
    return path


def one_by_one_folder(ctx: Ctx) -> list:
    root = write_folder(ctx.data, n=5, shape=(32, 32))
    save_png(root / "images" / "im0.png", np.full((1, 1), 9, np.uint8))
    save_png(root / "masks" / "im0.png", np.full((1, 1), 255, np.uint8))
    return ["train", "--dataset", "folder", "--root", root, "--train-fraction", "0.8", "--augmentation", "heavy",
            "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2", "--patch-size", "32", "--depth", "2",
            "--width", "4", "--threads", "1", "--quiet", "--no-evaluate", "--json"]


def finished(ctx: Ctx) -> None:
    summary = json.loads(ctx.out.strip().splitlines()[-1])
    assert summary["status"] == "finished", summary


CLI_ARGUMENT_CASES = [
    Case("train-fraction-0", train("--train-fraction", "0"), expect=("train_fraction", "got 0"),
         check=nothing_created),
    Case("train-fraction-1.5", train("--train-fraction", "1.5"), expect=("train_fraction", "1.5")),
    Case("train-fraction-negative", train("--train-fraction", "-0.1"), expect=("train_fraction", "-0.1")),
    Case("validation-fraction-1", train("--validation-fraction", "1"), expect=("validation_fraction",)),
    Case("epochs-0", train("--epochs", "0"), expect=("epochs",), check=nothing_created),
    Case("seed-negative", train("--seed", "-1"), expect=("seed", "-1")),
    Case("threads-negative", train("--threads", "-1"), expect=("threads", "-1")),
    Case("batch-size-0", train("--batch-size", "0"), expect=("batch_size",)),
    Case("patch-size-8", train("--patch-size", "8"), expect=("patch_size", "16")),
    Case("image-size-8", train("--image-size", "8"), expect=("image_size",)),
    Case("width-0", train("--width", "0"), expect=("base_width",)),
    Case("depth-50", train("--depth", "50"), expect=("depth",)),
    Case("lr-0", train("--lr", "0"), expect=("learning_rate",)),
    Case("lr-nan", train("--lr", "nan"), expect=("learning_rate",)),
    Case("augmentation-extreme", train("--augmentation", "extreme"), usage=True, expect=("extreme",)),
    Case("dataset-nonexistent", train("--dataset", "nonexistent"), expect=("nonexistent", "unknown dataset"),
         check=nothing_created),
    Case("dataset-with-dot-dot", train("--dataset", "x/../../../tmp/escape"), expect=("x/../../../tmp/escape",),
         check=no_escape),
    Case("folder-root-missing", train("--dataset", "folder", "--root", "/nonexistent/cells"),
         expect=("/nonexistent/cells", "not found"), check=no_escape),
    Case("folder-without-root", train("--dataset", "folder"), expect=("folder", "root")),
    Case("train-unknown-option", train("--group-pattern", "^(slide"), usage=True, expect=("--group-pattern",)),
    Case("resume-unknown-run", lambda ctx: ["train", "--resume", "nope", "--quiet"], expect=("nope",)),
    Case("one-by-one-image-heavy-augmentation", one_by_one_folder, code=0, check=finished),
    Case("model-info-depth-50", lambda ctx: ["model-info", "--depth", "50"], expect=("depth", "50")),
    Case("model-info-width-100000", lambda ctx: ["model-info", "--width", "100000"], expect=("100000", "limit")),
    Case("model-info-width-0", lambda ctx: ["model-info", "--width", "0"], expect=("width", "0")),
    Case("predict-threshold-2", predict("--threshold", "2"), needs_run=True, expect=("--threshold", "2")),
    Case("predict-threshold-0", predict("--threshold", "0"), needs_run=True, expect=("--threshold", "0")),
    Case("predict-instances-foo", predict("--instances", "foo"), needs_run=True, expect=("foo", "unknown")),
    Case("predict-output-is-a-file", predict("--output", an_existing_file), needs_run=True,
         expect=("results.txt", "is a file"),
         check=lambda ctx: (ctx.tmp / "results.txt").read_text() == "keep me" or pytest.fail("output overwritten")),
    Case("predict-input-missing", predict("--input", "/nonexistent/cells.png"), needs_run=True,
         expect=("/nonexistent/cells.png", "does not exist")),
    Case("predict-checkpoint-missing", predict(checkpoint=lambda ctx: ctx.tmp / "none.pt"), needs_run=True,
         expect=("none.pt", "does not exist")),
    Case("predict-tile-4", predict("--tile", "4"), needs_run=True, expect=("--tile", "4")),
    Case("predict-truth-missing", predict("--truth", "/nonexistent/truth"), needs_run=True,
         expect=("/nonexistent/truth",)),
    Case("predict-valid", predict("--instances", "all"), needs_run=True, code=0,
         check=lambda ctx: json.loads((ctx.tmp / "out" / "predictions.json").read_text())["methods"]),
    Case("evaluate-unknown-run", lambda ctx: ["evaluate", "--run", "nope"], expect=("nope",)),
    Case("evaluate-run-with-dot-dot", lambda ctx: ["evaluate", "--run", "../../etc/passwd"],
         expect=("../../etc/passwd",)),
    Case("runs-show-unknown", lambda ctx: ["runs", "show", "nope"], expect=("nope",)),
    Case("runs-show-dot-dot", lambda ctx: ["runs", "show", "../x"], expect=("../x",)),
    Case("cancel-unknown", lambda ctx: ["cancel", "nope"], expect=("nope",)),
    Case("resume-unknown", lambda ctx: ["resume", "nope"], expect=("nope",)),
    Case("runs-list-status-nope", lambda ctx: ["runs", "list", "--status", "nope"], usage=True, expect=("nope",)),
    Case("runs-list-filter-matches-nothing", lambda ctx: ["runs", "list", "--dataset", "no-such-set"], code=0,
         check=lambda ctx: ctx.out.strip() or pytest.fail("runs list printed nothing")),
    Case("study-run-bad-name", lambda ctx: ["study", "run", "--name", "bad name!"], expect=("bad name!",)),
    Case("study-run-dot-dot-name", lambda ctx: ["study", "run", "--name", "../escape", "--datasets",
                                                "synthetic-nuclei", "--no-wait"], expect=("../escape",),
         check=nothing_created),
    Case("study-run-unknown-dataset", lambda ctx: ["study", "run", "--name", "s1", "--datasets", "nope",
                                                   "--no-wait"], expect=("nope",), check=nothing_created),
    Case("study-run-bad-fraction", lambda ctx: ["study", "run", "--name", "s1", "--datasets", "synthetic-nuclei",
                                                "--fractions", "0.1,abc", "--no-wait"], expect=("abc",),
         check=nothing_created),
    Case("study-run-bad-group-pattern", lambda ctx: ["study", "run", "--name", "s1", "--datasets", "synthetic-nuclei",
                                                    "--group-pattern", "^(slide", "--no-wait"], expect=("^(slide",),
         check=nothing_created),
    Case("study-resume-unknown", lambda ctx: ["study", "run", "--name", "never-defined", "--no-wait"],
         expect=("never-defined",)),
    Case("study-report-unknown", lambda ctx: ["study", "report", "nope", "--out", ctx.tmp / "report"],
         expect=("nope",)),
    Case("study-status-unknown", lambda ctx: ["study", "status", "nope"], expect=("nope",)),
    Case("study-table-unknown", lambda ctx: ["study", "table", "nope"], expect=("nope",)),
    Case("datasets-describe-unknown", lambda ctx: ["datasets", "describe", "nope"], expect=("nope", "unknown dataset")),
    Case("datasets-describe-unknown-split", lambda ctx: ["datasets", "describe", "synthetic-nuclei", "--split", "test"],
         expect=("test",)),
    Case("augment-preview-unknown-level",
         lambda ctx: ["augment-preview", "--dataset", "synthetic-nuclei", "--level", "extreme", "--out",
                      ctx.tmp / "p.png"], expect=("extreme",)),
]


@pytest.mark.parametrize("case", CLI_ARGUMENT_CASES, ids=ids(CLI_ARGUMENT_CASES))
def test_cli_argument(case, tmp_path, request, capsys):
    run_case(case, tmp_path, request, capsys)


# ==== score ===========================================================================================


def score(truth: Callable[[Ctx], Path], prediction: Callable[[Ctx], Path], *args: str) -> Callable[[Ctx], list]:
    return lambda ctx: ["score", "--truth", truth(ctx), "--prediction", prediction(ctx), *args]


def mask_file(name: str, array: np.ndarray | None = None) -> Callable[[Ctx], Path]:
    """A builder of one label file under ``ctx.tmp`` (a square mask unless ``array``)."""
    def build(ctx: Ctx) -> Path:
        path = ctx.tmp / name
        values = square_mask() if array is None else array
        return save_tif(path, values) if path.suffix == ".tif" else save_png(path, values)

    return build


def mask_folder(name: str, stems=("a", "b"), shape=(24, 24)) -> Callable[[Ctx], Path]:
    def build(ctx: Ctx) -> Path:
        for stem in stems:
            save_png(ctx.tmp / name / f"{stem}.png", square_mask(shape))
        return ctx.tmp / name

    return build


def empty_folder(name: str) -> Callable[[Ctx], Path]:
    def build(ctx: Ctx) -> Path:
        (ctx.tmp / name).mkdir(parents=True, exist_ok=True)
        return ctx.tmp / name

    return build


def predicted_folder(ctx: Ctx) -> Path:
    """``predict`` output for two images (components and watershed), and their truth in ``truth/``."""
    for stem in ("a", "b"):
        save_png(ctx.tmp / "in" / f"{stem}.png", noise((32, 32), seed=ord(stem)))
        save_png(ctx.tmp / "truth" / f"{stem}.png", square_mask((32, 32)))
    code, _, err = quietly(["predict", "--checkpoint", ctx.run.best, "--input", ctx.tmp / "in", "--output",
                            ctx.tmp / "predicted", "--instances", "components,watershed"])
    assert code == 0, err
    return ctx.tmp / "predicted"


def garbage_manifest(ctx: Ctx) -> Path:
    save_png(ctx.tmp / "predicted" / "a.png", square_mask())
    (ctx.tmp / "predicted" / "predictions.json").write_text("{this is not json")
    return ctx.tmp / "predicted"


def scores_json(test: Callable[[dict], bool]) -> Callable[[Ctx], None]:
    def check(ctx: Ctx) -> None:
        scores = json.loads(ctx.out.strip().splitlines()[-1])
        assert test(scores), scores

    return check


def truth_dir(ctx: Ctx) -> Path:
    return ctx.tmp / "truth"


SCORE_CASES = [
    Case("missing-truth", score(lambda ctx: ctx.tmp / "none.png", mask_file("p.png")), expect=("none.png", "truth")),
    Case("missing-prediction", score(mask_file("t.png"), lambda ctx: ctx.tmp / "none.png"),
         expect=("none.png", "prediction")),
    Case("file-versus-folder", score(mask_file("t.png"), mask_folder("predicted")),
         expect=("t.png", "predicted", "two files or two folders")),
    Case("unmatched-stems", score(mask_folder("truth", ("a", "b")), mask_folder("predicted", ("a", "c"))),
         expect=("unmatched stems", "b", "c")),
    Case("size-mismatch", score(mask_file("t.png"), mask_file("p.png", square_mask((24, 30)))),
         expect=("p.png", "size mismatch")),
    Case("probability-map", score(mask_file("t.tif"), mask_file("p.tif", np.linspace(0, 1, 576, dtype=np.float32)
                                                                .reshape(24, 24))),
         expect=("p.tif", "not integer")),
    Case("negative-labels", score(mask_file("t.tif"), mask_file("p.tif", np.full((24, 24), -3, np.int16))),
         expect=("p.tif", "negative")),
    Case("colour-label-image", score(mask_file("t.png"), mask_file("p.png", np.stack(
        [square_mask(), np.zeros((24, 24), np.uint8), np.zeros((24, 24), np.uint8)], -1))),
         expect=("p.png", "colour")),
    Case("corrupt-prediction-file",
         score(mask_file("t.png"), lambda ctx: (ctx.tmp / "p.png").write_bytes(b"\x89PNG broken") and ctx.tmp / "p.png"),
         expect=("p.png", "cannot be read")),
    Case("unsupported-file-type",
         score(mask_file("t.png"), lambda ctx: (ctx.tmp / "p.bmp").write_bytes(b"BM") and ctx.tmp / "p.bmp"),
         expect=("p.bmp", "unsupported")),
    Case("empty-folders", score(empty_folder("truth"), empty_folder("predicted")), expect=("truth", "no images")),
    Case("empty-prediction-folder", score(mask_folder("truth"), empty_folder("predicted")),
         expect=("predicted", "no images")),
    Case("valid-pair", lambda ctx: ["score", "--truth", mask_file("t.png")(ctx), "--prediction",
                                    mask_file("p.png")(ctx), "--json"], code=0,
         check=scores_json(lambda s: s["n_images"] == 1 and s["dsb_map"] == 1.0)),
    Case("valid-folders", lambda ctx: ["score", "--truth", mask_folder("truth")(ctx), "--prediction",
                                       mask_folder("predicted")(ctx), "--json"], code=0,
         check=scores_json(lambda s: s["n_images"] == 2)),
    Case("valid-predict-folder-with-manifest", score(truth_dir, predicted_folder, "--json"),
         needs_run=True, code=0,
         check=scores_json(lambda s: set(s["methods"]) == {"components", "watershed"} and s["n_images"] == 2)),
    Case("method-not-in-manifest", score(truth_dir, predicted_folder, "--method", "kmeans-watershed"),
         needs_run=True, expect=("kmeans-watershed", "components")),
    Case("method-without-manifest", score(mask_folder("truth"), mask_folder("predicted"), "--method", "watershed"),
         expect=("predictions.json",)),
    Case("garbage-manifest", score(mask_folder("truth", ("a",)), garbage_manifest), expect=("predictions.json",)),
    Case("kind-unknown", score(mask_file("t.png"), mask_file("p.png"), "--kind", "cells"), usage=True,
         expect=("cells",)),
]


@pytest.mark.parametrize("case", SCORE_CASES, ids=ids(SCORE_CASES))
def test_score(case, tmp_path, request, capsys):
    run_case(case, tmp_path, request, capsys)


# ==== checkpoints: `predict --checkpoint X` and core.inference.load_model ================================


def payload(ctx: Ctx) -> dict:
    return torch.load(ctx.run.best, weights_only=True)


def bad_checkpoint(name: str, write: Callable[[Ctx, Path], Any]) -> Callable[[Ctx], list]:
    """``predict`` with a checkpoint file ``name`` written by ``write(ctx, path)``."""
    def checkpoint(ctx: Ctx) -> Path:
        path = ctx.tmp / name
        write(ctx, path)
        return path

    return predict(checkpoint=checkpoint)


def with_payload(change: Callable[[dict], Any]) -> Callable[[Ctx, Path], None]:
    """Write the shared checkpoint's payload, changed by ``change(payload)``."""
    def write(ctx: Ctx, path: Path) -> None:
        values = payload(ctx)
        change(values)
        torch.save(values, path)

    return write


def with_config(**settings) -> Callable[[Ctx, Path], None]:
    return with_payload(lambda values: values["config"].update(settings))


def evil_pickle(ctx: Ctx, path: Path) -> None:
    marker = ctx.tmp / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(path, "wb") as handle:
        pickle.dump({"state_dict": Evil(), "config": {}}, handle)


def zip_not_torch(ctx: Ctx, path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "a zip archive, not a checkpoint")


def truncated(ctx: Ctx, path: Path) -> None:
    data = ctx.run.best.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def refused_by_load_model(name: str, *texts: str) -> Callable[[Ctx], None]:
    """A check: ``load_model`` refuses the same file with an error naming it."""
    def check(ctx: Ctx) -> None:
        from core.inference import load_model

        with pytest.raises(UNetLabError) as caught:
            load_model(ctx.tmp / name, device="cpu")
        assert name in str(caught.value) and all(text in str(caught.value) for text in texts), caught.value
        assert not (ctx.tmp / "pwned").exists(), "unpickling ran code"

    return check


def resume_with_other_width(ctx: Ctx) -> list:
    """A run whose stored config says width 8, but whose last.pt holds width-4 weights."""
    registry = Registry()
    run_id = registry.create_run(RunConfig(**{**TINY, "base_width": 8}))
    record = registry.get_run(run_id)
    record.checkpoint_dir.mkdir(parents=True)
    shutil.copy(ctx.run.last, record.last_checkpoint)
    ctx.notes["run_id"] = run_id
    return ["train", "--resume", run_id, "--quiet", "--no-evaluate"]


def resume_failed_cleanly(ctx: Ctx) -> None:
    record = Registry().get_run(ctx.notes["run_id"])
    assert record.status == "failed" and "last.pt" in record.error and "shape" in record.error, record.error
    assert load_checkpoint(record.last_checkpoint)["epoch"] == 1  # left as it was


CHECKPOINT_CASES = [
    Case("missing-file", bad_checkpoint("none.pt", lambda ctx, path: None), needs_run=True,
         expect=("none.pt", "does not exist")),
    Case("text-file", bad_checkpoint("notes.pt", lambda ctx, path: path.write_text("not a checkpoint")),
         needs_run=True, expect=("notes.pt", "not a readable PyTorch checkpoint"),
         check=refused_by_load_model("notes.pt")),
    Case("empty-file", bad_checkpoint("empty.pt", lambda ctx, path: path.write_bytes(b"")), needs_run=True,
         expect=("empty.pt",), check=refused_by_load_model("empty.pt")),
    Case("zip-not-torch", bad_checkpoint("archive.pt", zip_not_torch), needs_run=True,
         expect=("archive.pt", "not a readable PyTorch checkpoint"), check=refused_by_load_model("archive.pt")),
    Case("pickle-that-runs-code", bad_checkpoint("evil.pt", evil_pickle), needs_run=True,
         expect=("evil.pt", "refusing to load"), check=refused_by_load_model("evil.pt", "refusing")),
    Case("plain-tensor", bad_checkpoint("tensor.pt", lambda ctx, path: torch.save(torch.zeros(3), path)),
         needs_run=True, expect=("tensor.pt", "not a U-Net Lab checkpoint"), check=refused_by_load_model("tensor.pt")),
    Case("config-is-a-string", bad_checkpoint("string.pt", with_payload(lambda v: v.update(config="width=4"))),
         needs_run=True, expect=("string.pt", "str"), check=refused_by_load_model("string.pt")),
    Case("config-unknown-setting-value", bad_checkpoint("aug.pt", with_config(augmentation="extreme")),
         needs_run=True, expect=("aug.pt", "augmentation"), check=refused_by_load_model("aug.pt")),
    Case("depth-100", bad_checkpoint("deep.pt", with_config(depth=100)), needs_run=True,
         expect=("deep.pt", "depth"), check=refused_by_load_model("deep.pt", "depth")),
    Case("width-100000", bad_checkpoint("wide.pt", with_config(base_width=100_000)), needs_run=True,
         expect=("wide.pt", "limit"), check=refused_by_load_model("wide.pt")),
    Case("in-channels-not-a-number", bad_checkpoint("channels.pt", with_payload(lambda v: v.update(in_channels="rgb"))),
         needs_run=True, expect=("channels.pt",), check=refused_by_load_model("channels.pt")),
    Case("weights-of-another-width", bad_checkpoint("other.pt", with_config(base_width=8)), needs_run=True,
         expect=("other.pt", "shape"), check=refused_by_load_model("other.pt", "shape")),
    Case("weights-not-a-dict", bad_checkpoint("list.pt", with_payload(lambda v: v.update(state_dict=[1, 2]))),
         needs_run=True, expect=("list.pt", "list"), check=refused_by_load_model("list.pt")),
    Case("truncated", bad_checkpoint("half.pt", truncated), needs_run=True, expect=("half.pt",),
         check=refused_by_load_model("half.pt")),
    Case("resume-last-pt-of-another-width", resume_with_other_width, needs_run=True, expect=("last.pt", "shape"),
         check=resume_failed_cleanly),
]


@pytest.mark.parametrize("case", CHECKPOINT_CASES, ids=ids(CHECKPOINT_CASES))
def test_checkpoint(case, tmp_path, request, capsys):
    run_case(case, tmp_path, request, capsys)


# ==== uploads: core.datasets.io.read_upload(name, data) ==================================================


def upload_shape(shape: tuple[int, ...]) -> Callable[[Ctx], None]:
    def check(ctx: Ctx) -> None:
        image = ctx.notes["image"]
        assert image.shape == shape and image.dtype == np.float32 and 0 <= image.min() <= image.max() <= 1

    return check


def fast(ctx: Ctx) -> None:
    assert ctx.seconds < 1.0, f"took {ctx.seconds:.2f} s: the size must be refused from the header"


UPLOAD_CASES = [
    Case("bmp-name", lambda ctx: ("cells.bmp", png_bytes(noise())), expect=("cells.bmp", "not supported")),
    Case("no-suffix", lambda ctx: ("cells", png_bytes(noise())), expect=("cells", "not supported")),
    Case("empty-bytes", lambda ctx: ("empty.png", b""), expect=("empty.png", "empty")),
    Case("garbage-bytes", lambda ctx: ("garbage.png", os.urandom(2000)), expect=("garbage.png", "not a readable")),
    Case("truncated-png", lambda ctx: ("half.png", png_bytes(noise((64, 64)))[:100]), expect=("half.png",)),
    Case("png-bomb-header", lambda ctx: ("bomb.png", png_bomb()), expect=("bomb.png", "limit"), check=fast),
    Case("png-over-the-upload-limit", lambda ctx: ("big.png", png_bomb(10_000, 10_000)),
         expect=("big.png", "10000 x 10000", "limit"), check=fast),
    Case("tiff-one-page-40000x40000", lambda ctx: ("huge.tif", tiff_declaring(1, 40_000, 40_000)),
         expect=("huge.tif", "limit"), check=fast),
    Case("tiff-40-pages-of-8000x8000", lambda ctx: ("pages.tif", tiff_declaring(40, 8_000, 8_000)),
         expect=("pages.tif", "40 page(s)", "limit"), check=fast),
    Case("stack-upload", lambda ctx: ("stack.tif", tif_bytes(noise((5, 16, 16)), photometric="minisblack")),
         expect=("stack.tif", "stack of 5 pages")),
    Case("float-tiff-with-nan", lambda ctx: ("nan.tif", tif_bytes(np.full((8, 8), np.nan, np.float32))),
         expect=("nan.tif", "NaN")),
    Case("valid-8-bit-png", lambda ctx: ("cells.png", png_bytes(noise((20, 30)))), code=0,
         check=upload_shape((20, 30, 1))),
    Case("valid-upper-case-suffix", lambda ctx: ("CELLS.PNG", png_bytes(noise((20, 30, 3)))), code=0,
         check=upload_shape((20, 30, 3))),
    Case("valid-16-bit-tiff", lambda ctx: ("cells.tif", tif_bytes(noise((20, 30), np.uint16))), code=0,
         check=upload_shape((20, 30, 1))),
    Case("valid-rgba-png", lambda ctx: ("rgba.png", png_bytes(noise((20, 30, 4)))), code=0,
         check=upload_shape((20, 30, 3))),
]


@pytest.mark.parametrize("case", UPLOAD_CASES, ids=ids(UPLOAD_CASES))
def test_upload(case, tmp_path):
    ctx = Ctx(tmp=tmp_path)
    name, data = case.build(ctx)
    started = time.perf_counter()
    if case.code == 0:
        ctx.notes["image"] = read_upload(name, data)
    else:
        with pytest.raises(DatasetError) as caught:
            read_upload(name, data)
        message = str(caught.value)
        assert "\n" not in message.strip(), message
        assert message.startswith(f"{name}: "), message  # the uploaded file's own name
        for text in case.expect:
            assert text in message, (text, message)
        for text in NAMES_NOBODY_SHOULD_SEE:
            assert text not in message, message
    ctx.seconds = time.perf_counter() - started
    if case.check is not None:
        case.check(ctx)


# ==== faults ==========================================================================================


def test_catalogue_is_large_enough():
    groups = [DATASET_FOLDER_CASES, CLI_ARGUMENT_CASES, SCORE_CASES, CHECKPOINT_CASES, UPLOAD_CASES]
    assert sum(map(len, groups)) >= 60
    for group in groups:
        assert len(set(ids(group))) == len(group), "case names are unique within a group"


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_kill_9_mid_run_then_resume_ends_where_an_uninterrupted_run_does():
    # Enough steps per epoch (about a second each) that epoch 2 is still running when we kill.
    config = RunConfig(**{**TINY, "epochs": 3, "steps_per_epoch": 60, "batch_size": 4})
    uninterrupted = train_run(config, show_progress=False)

    args = ["train", "--dataset", "synthetic-nuclei", "--train-fraction", "0.5", "--augmentation", "none",
            "--epochs", "3", "--steps-per-epoch", "60", "--batch-size", "4", "--patch-size", "64", "--depth", "2",
            "--width", "4", "--threads", "1", "--quiet", "--no-evaluate", "--json"]
    process = subprocess.Popen([sys.executable, "-m", "core", *args], cwd=PROJECT_ROOT, env=os.environ.copy(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    registry = Registry()
    try:
        def first_epoch_stored():
            runs = registry.list_runs(status="running")
            return runs and any(row["epoch"] == 1 for row in registry.epochs(runs[0].id)) and runs[0].id

        run_id = wait_until(first_epoch_stored, 180, "the first epoch")
        assert process.poll() is None, "the run ended before it could be killed; give it more steps"
        process.send_signal(signal.SIGKILL)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL

    code, out, err = quietly(["runs", "show", run_id])  # reaps the dead process
    assert code == 0 and "Traceback" not in out + err, err
    record = registry.get_run(run_id)
    assert record.status == "failed" and "ended without finishing" in record.error, record.error
    kept = load_checkpoint(record.last_checkpoint)
    assert kept["epoch"] >= 1  # the last whole epoch, intact
    assert not [path.name for path in record.checkpoint_dir.iterdir() if path.name.startswith(".")]

    resumed = train_run(run_id=run_id, show_progress=False)
    assert resumed.status == "finished" and registry.get_run(run_id).status == "finished"
    assert [row["epoch"] for row in registry.epochs(run_id)] == [0, 1, 2, 3]
    for key in ("val_f1", "val_loss", "train_loss"):
        assert resumed.final_metrics[key] == pytest.approx(uninterrupted.final_metrics[key], abs=1e-6), key


def test_disk_full_on_a_small_tmpfs_then_resume(trained, tmp_path, monkeypatch):
    """A tmpfs with room for about two checkpoints: epoch 2's last.pt does not fit."""
    size = trained.last.stat().st_size  # the same settings as the shared run: the same size
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(size * 2.5)}", "tmpfs", str(mount_point)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root or CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        monkeypatch.setenv("UNETLAB_CHECKPOINTS", str(mount_point))
        registry = Registry()  # the registry stays on the roomy disk
        with pytest.raises(DiskFullError, match="full"):
            train_run(RunConfig(**{**TINY, "epochs": 3}), show_progress=False, registry=registry)
        (record,) = registry.list_runs()
        assert record.status == "failed" and "disk full" in record.error, record.error
        assert load_checkpoint(record.last_checkpoint)["epoch"] == 1  # intact
        assert not [path.name for path in record.checkpoint_dir.iterdir() if path.name.startswith(".")]

        code, out, err = quietly(["runs", "show", record.id])
        assert code == 0 and "disk full" in out and "Traceback" not in out + err

        subprocess.run(["mount", "-o", f"remount,size={size * 20}", str(mount_point)], check=True)  # space freed
        resumed = train_run(run_id=record.id, show_progress=False, registry=registry)
        assert resumed.status == "finished" and registry.get_run(record.id).status == "finished"
        assert record.best_checkpoint.is_file() and load_checkpoint(record.last_checkpoint)["epoch"] == 3
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_read_only_dataset_cache_still_trains(monkeypatch):
    """The decoded-array cache cannot be written: loading and training work, with a warning.

    As root, chmod does not stop writes, so the cache folder is made read-only with a
    read-only bind mount onto itself; where mounting is not allowed, the cache writer is
    replaced by one failing with EROFS, as a read-only filesystem would.
    """
    import core.datasets.registry as dataset_registry

    folder = cache_dir() / "datasets"
    folder.mkdir(parents=True, exist_ok=True)
    bound = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True,
                           check=False).returncode == 0
    if bound and subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], capture_output=True,
                                check=False).returncode:
        subprocess.run(["umount", "-l", str(folder)], check=False)
        bound = False
    if not bound:
        def read_only(path, raw):
            raise OSError(errno.EROFS, "Read-only file system", str(path))

        monkeypatch.setattr(dataset_registry, "save_entry", read_only)
    try:
        dataset = load_dataset("synthetic-nuclei")
        assert any("dataset cache could not be written" in warning and "Read-only" in warning
                   for warning in dataset.warnings), dataset.warnings
        result = train_run(RunConfig(**TINY), show_progress=False)
        assert result.status == "finished" and Path(result.checkpoint_dir, "best.pt").is_file()
        assert not list(folder.iterdir())  # nothing was written there
    finally:
        if bound:
            subprocess.run(["umount", "-l", str(folder)], check=False)


def test_corrupt_registry_is_one_line_naming_it(capsys):
    path = cache_dir() / "registry.sqlite"
    path.write_bytes(os.urandom(40_000))
    for argv in (["runs", "list"], ["runs", "show", "anything"], ["cancel", "anything"], ["study", "list"]):
        assert main(argv) == 2, argv
        out, err = capsys.readouterr()
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in out + err, (argv, err)
        assert "registry.sqlite" in lines[0] and "damaged" in lines[0], lines
    assert main(["runs", "check"]) == 2
    out, err = capsys.readouterr()
    assert "registry.sqlite" in out and "damaged" in out.strip().splitlines()[-1] and "Traceback" not in out + err


@pytest.fixture
def sleeper():
    """A live process that is no training process: it stands in for a reused pid."""
    process = subprocess.Popen(["sleep", "120"])
    yield process
    process.kill()
    process.wait()


def test_a_reused_pid_is_reaped_and_never_signalled(sleeper, capsys):
    registry = Registry()
    start = process_start_time(sleeper.pid)
    assert start is not None
    reaped, cancelled = (registry.create_run(RunConfig(**TINY)) for _ in range(2))
    for run_id in (reaped, cancelled):  # their process crashed; the sleep got its pid, at another time
        assert registry.transition(run_id, "queued", "running", pid=sleeper.pid, pid_start=start - 7)

    assert main(["cancel", cancelled]) == 0  # reaped, not signalled
    out, err = capsys.readouterr()
    assert f"run {cancelled}: failed" in out and "Traceback" not in out + err
    assert main(["runs", "list"]) == 0  # reaps the other one
    out, err = capsys.readouterr()
    assert reaped in out and "Traceback" not in out + err
    record = registry.get_run(reaped)
    assert record.status == "failed" and "another process" in record.error, record.error
    time.sleep(0.2)
    assert sleeper.poll() is None  # the unrelated process lives on


def test_a_damaged_list_of_folders_is_kept_aside_and_reported(tmp_path):
    from core.user_datasets import (
        damaged_list_message,
        load_user_datasets,
        register_user_dataset,
        user_datasets_path,
    )

    path = user_datasets_path()
    damaged = '[{"label": "mine", "dataset": "folder", "root": "/data/my-cells"'  # cut off mid-write
    path.write_text(damaged)
    register_user_dataset("folder", write_folder(tmp_path / "new-cells"))
    assert [entry.root for entry in load_user_datasets()] == [str((tmp_path / "new-cells").resolve())]
    kept = list(path.parent.glob("user_datasets.json.damaged-*"))
    assert len(kept) == 1 and kept[0].read_text() == damaged  # the old paths can still be read
    message = damaged_list_message()
    assert message and kept[0].name in message


def test_runs_list_into_a_closed_pipe_is_quiet():
    registry = Registry()
    config = RunConfig(**TINY).to_json()
    with registry._connect() as db:  # enough rows to fill the pipe after `head` has gone
        db.executemany("INSERT INTO runs (id, config, dataset, status, created, checkpoint_dir)"
                       " VALUES (?, ?, 'synthetic-nuclei', 'queued', ?, ?)",
                       [(f"run-{index:05d}", config, index, "/nowhere") for index in range(3000)])
    result = subprocess.run(f"{sys.executable} -m core runs list | head -1", shell=True, cwd=PROJECT_ROOT,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.stdout.startswith("run id"), result.stdout[:200]
    assert "BrokenPipeError" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert result.stderr == ""


def test_a_registry_row_with_dot_dot_in_its_id_is_refused(capsys, monkeypatch):
    """A run id with ``/../`` (a row written by older code, or by hand) is refused by every
    command that would act on it, and never becomes a path."""
    import core.queue

    monkeypatch.setattr(core.queue, "ensure_worker", lambda *args, **kwargs: False)  # start no worker
    registry = Registry()
    with registry._connect() as db:  # written by older code, or by hand
        db.execute("INSERT INTO runs (id, config, dataset, status, created, checkpoint_dir)"
                   " VALUES (?, ?, 'synthetic-nuclei', 'failed', 0, '/nowhere')",
                   ("x/../../escape", RunConfig(**TINY).to_json()))
    wrong = []
    for argv in (["resume", "x/../../escape"], ["evaluate", "--run", "x/../../escape"],
                 ["train", "--resume", "x/../../escape", "--quiet"]):
        code = main(argv)
        out, err = capsys.readouterr()
        lines = err.strip().splitlines()
        if code != 2 or len(lines) != 1 or "x/../../escape" not in lines[0] or "Traceback" in out + err:
            wrong.append(f"python -m core {' '.join(argv)}: exit {code}, stdout {out.strip()!r}, stderr {err.strip()!r}")
    assert not list(cache_dir().parent.rglob("escape*"))
    assert not wrong, "\n".join(wrong)


# ==== pages ===========================================================================================


def test_masks_page_with_a_file_name_that_is_not_utf8(tmp_path):
    from streamlit.testing.v1 import AppTest

    from core.lifecycle import train_then_evaluate

    root = tmp_path / "cells"
    for index in range(5):
        name = os.fsdecode(b"caf\xe9-%d.png" % index)
        save_png(root / "images" / name, noise((48, 48), seed=index))
        save_png(root / "masks" / name, square_mask((48, 48)))
    config = RunConfig(**{**TINY, "dataset": "folder", "root": str(root), "patch_size": 32})
    outcome = train_then_evaluate(config, show_progress=False)
    assert outcome.status == "finished"

    at = AppTest.from_file(str(PROJECT_ROOT / "pages" / "4_Masks.py"), default_timeout=120).run()
    assert not at.exception, [exception.value for exception in at.exception]
    assert not at.error, [error.value for error in at.error]
    options = at.selectbox(key="mask_image").options
    assert options and all("caf" in option for option in options), options
    assert len(at.get("image")) >= 4


def test_segment_page_names_a_bad_upload(trained, monkeypatch):
    from streamlit.testing.v1 import AppTest

    for key, value in trained.env.items():
        monkeypatch.setenv(key, value)
    at = AppTest.from_file(str(PROJECT_ROOT / "pages" / "5_Segment.py"), default_timeout=120).run()
    for name, data, expected in (("bomb.png", png_bomb(), "limit"), ("notes.png", b"plain text", "not a readable"),
                                 ("pages.tif", tiff_declaring(40, 8_000, 8_000), "limit"),
                                 ("scan.bmp", png_bytes(noise()), "not supported")):
        at.file_uploader(key="upload").set_value((name, data, "application/octet-stream")).run()
        assert not at.exception, [exception.value for exception in at.exception]
        errors = [error.value for error in at.error]
        assert any(name in error and expected in error for error in errors), (name, errors)
        assert not any(text in error for error in errors for text in NAMES_NOBODY_SHOULD_SEE), errors
