"""The Masks and Segment pages with a model trained with ``--target mask+contour``: it predicts an
outline map, so both pages offer the ``seeded-watershed`` post-processing (fed with that map)
beside the other methods, and the Compare page's method picker lists it where evaluations hold it."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from core.paths import PROJECT_ROOT
from helpers import tiny_cli_run

TIMEOUT = 120
CONTOUR_METHOD = "seeded-watershed"


def image_captions(at: AppTest) -> list[str]:
    """The captions of every st.image on the page."""
    return [img.caption for element in at.get("image") for img in element.proto.imgs]


def app(page: str) -> AppTest:
    return AppTest.from_file(str(PROJECT_ROOT / page), default_timeout=TIMEOUT)


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


@pytest.fixture(scope="module")
def contour_run(tmp_path_factory):
    """A tiny run trained (CLI) with target mask+contour, finished and evaluated."""
    return tiny_cli_run(tmp_path_factory.mktemp("app-contour"), "--target", "mask+contour")


@pytest.fixture
def with_contour_run(contour_run, monkeypatch):
    for key, value in contour_run.items():
        monkeypatch.setenv(key, value)
    return contour_run


def png_bytes(shape=(96, 80)) -> bytes:
    image = (np.random.default_rng(0).random(shape) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def test_masks_page_shows_seeded_watershed_for_a_contour_run(with_contour_run):
    at = app("pages/4_Masks.py").run()
    assert_clean(at)
    assert any(caption.startswith(f"{CONTOUR_METHOD}: ") and caption.endswith(" objects")
               for caption in image_captions(at)), image_captions(at)
    assert any("outline probability this mask+contour run predicts" in caption.value for caption in at.caption)
    at.slider(key="mask_threshold").set_value(0.3).run()  # recomputed at another threshold, from the live outlines
    assert_clean(at)


def test_segment_page_offers_seeded_watershed_for_a_contour_model(with_contour_run):
    from core.runs import Registry

    (run,) = Registry().list_runs()
    assert run.config.target == "mask+contour"
    at = app("pages/5_Segment.py").run()
    at.selectbox(key="segment_run").set_value(run.id).run()
    assert CONTOUR_METHOD in at.selectbox(key="segment_method").options
    at.file_uploader(key="upload").set_value(("cells.png", png_bytes(), "image/png")).run()
    at.selectbox(key="segment_method").set_value(CONTOUR_METHOD).run()
    assert_clean(at)
    assert int(next(m.value for m in at.metric if m.label == "Objects found").replace(",", "")) >= 0
    assert f"instances ({CONTOUR_METHOD})" in image_captions(at)
    # Another model, which predicts no outlines: the picker falls back to a method it can use.
    from core.starter import starter_models

    at.selectbox(key="segment_run").set_value(f"starter:{starter_models()[0].name}").run()
    assert_clean(at)
    assert at.selectbox(key="segment_method").value != CONTOUR_METHOD


def test_segment_page_offers_no_contour_method_for_other_models(with_contour_run):
    from core.starter import starter_models

    at = app("pages/5_Segment.py").run()
    at.selectbox(key="segment_run").set_value(f"starter:{starter_models()[0].name}").run()
    assert_clean(at)
    assert CONTOUR_METHOD not in at.selectbox(key="segment_method").options


def test_compare_method_picker_lists_the_methods_evaluated(with_contour_run):
    at = app("pages/2_Compare.py").run()
    assert_clean(at)
    assert CONTOUR_METHOD in at.selectbox(key="method").options
    at.selectbox(key="method").set_value(CONTOUR_METHOD).run()
    assert_clean(at)
