"""The Segment page packages the chosen trained run as a bioimage.io model (a zip built on a
click, then offered for download); a shipped model is not packaged and the page says why."""

from __future__ import annotations

import io
import zipfile

import pytest
from streamlit.testing.v1 import AppTest

from core.paths import PROJECT_ROOT
from helpers import tiny_cli_run

# Building the package converts the weights to TorchScript and ONNX: about 30 s on 2 CPU cores.
TIMEOUT = 300


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny run (CLI), finished and evaluated."""
    return tiny_cli_run(tmp_path_factory.mktemp("app-bioimageio"))


def test_segment_page_builds_a_bioimageio_package_on_click(tiny_run, monkeypatch):
    for key, value in tiny_run.items():
        monkeypatch.setenv(key, value)
    from core.runs import Registry

    (run,) = Registry().list_runs()
    at = AppTest.from_file(str(PROJECT_ROOT / "pages" / "5_Segment.py"), default_timeout=TIMEOUT).run()
    at.selectbox(key="segment_run").set_value(run.id).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.button(key="bioimageio_build").label == "Download as a bioimage.io model (zip)"
    assert "bioimageio_download" not in [button.key for button in at.get("download_button")]  # not on every rerun
    at.checkbox(key="bioimageio_validate").uncheck()  # the package's own test is tests/test_bioimageio.py's
    at.button(key="bioimageio_build").click().run()
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    assert "bioimageio_download" in [button.key for button in at.get("download_button")]
    key, data, sentence = at.session_state["bioimageio_package"]
    assert key == run.id and "not tested" in sentence
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert {"rdf.yaml", "bioimageio.yaml"} & set(names), names
    assert any(name.endswith(".onnx") for name in names) and any(name.endswith(".pt") for name in names)
    # A rerun keeps the package without building it again; the shipped model is not packaged.
    at.run()
    assert "bioimageio_download" in [button.key for button in at.get("download_button")]
    from core.starter import starter_models

    at.selectbox(key="segment_run").set_value(f"starter:{starter_models()[0].name}").run()
    assert "bioimageio_download" not in [button.key for button in at.get("download_button")]
    assert any("shipped model is not a run of this registry" in info.value for info in at.info)
