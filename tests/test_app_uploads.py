"""The Segment page's plane pickers, with the shipped model (no run needed): an OME-TIFF gets one
selectbox per axis with more than one position, and a TIFF of 3 planar colour samples the choice
between one RGB image and 3 grey planes."""

from __future__ import annotations

import io

import numpy as np
import tifffile
from streamlit.testing.v1 import AppTest

from core.paths import PROJECT_ROOT

TIMEOUT = 120


def app() -> AppTest:
    return AppTest.from_file(str(PROJECT_ROOT / "pages" / "5_Segment.py"), default_timeout=TIMEOUT)


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def ome_tiff(shape=(64, 48)) -> bytes:
    """An OME-TIFF with 2 channels and 4 z-planes."""
    planes = (np.random.default_rng(2).random((2, 4, *shape)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, planes, ome=True, metadata={"axes": "CZYX"})
    return buffer.getvalue()


def pickers(at: AppTest, name: str) -> dict[str, object]:
    """The plane picker selectboxes of an upload, by their axis letter."""
    return {box.key.split("-")[1]: box for box in at.selectbox if box.key and box.key.startswith("axis-")
            and name in box.key}


def test_segment_offers_a_plane_picker_for_an_ome_tiff():
    at = app().run()
    at.file_uploader(key="upload").set_value(("cells.ome.tif", ome_tiff(), "image/tiff")).run()
    assert_clean(at)
    boxes = pickers(at, "cells.ome.tif")
    assert set(boxes) == {"c", "z"}
    assert boxes["c"].options == ["0", "1"] and boxes["z"].options == ["0", "1", "2", "3"]
    assert "(channel 0, z-plane 0)" in " ".join(caption.value for caption in at.caption)
    boxes["c"].set_value(1)
    boxes["z"].set_value(2)
    at.run()
    assert_clean(at)
    captions = " ".join(caption.value for caption in at.caption)
    assert "cells.ome.tif (channel 1, z-plane 2): 48 x 64 pixels" in captions
    assert int(next(m.value for m in at.metric if m.label == "Objects found").replace(",", "")) >= 0


def test_segment_lets_a_planar_three_sample_tiff_be_three_planes():
    stack = (np.random.default_rng(3).random((3, 64, 48)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, stack, photometric="rgb", planarconfig="separate")
    at = app().run()
    at.file_uploader(key="upload").set_value(("three.tif", buffer.getvalue(), "image/tiff")).run()
    assert_clean(at)
    (choice,) = [radio for radio in at.radio if radio.key.startswith("samples-three.tif")]
    assert choice.value == "one RGB image"
    assert "3 channel(s)" in " ".join(caption.value for caption in at.caption)
    choice.set_value("3 grey planes (a stack)").run()
    assert_clean(at)
    (planes,) = [box for box in at.multiselect if box.key.startswith("planes-three.tif")]
    assert planes.value == [0, 1, 2]
    assert len(at.get("download_button")) == 3
    assert "1 channel(s)" in " ".join(caption.value for caption in at.caption)
