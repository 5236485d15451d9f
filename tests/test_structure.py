"""The package's shape: layers that only point down, no import cycles, no Streamlit in core.

Every module of ``core`` belongs to a layer; a module may import modules of its own layer
or of lower ones, never of a higher one (imports inside functions count too). A new
module must be given a layer here, which is the point: its place is a decision.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from core.paths import PROJECT_ROOT

CORE = PROJECT_ROOT / "core"

#: Layer of each module (prefix match on the dotted name, longest prefix wins).
LAYERS: dict[str, int] = {
    # 0: foundations that know nothing else of the project
    "core": 0, "core.errors": 0, "core.paths": 0, "core.fileio": 0, "core.config": 0,
    # 1: pure building blocks (arrays in, arrays out)
    "core.datasets": 1, "core.metrics": 1, "core.model": 1, "core.augment": 1, "core.postprocess": 1,
    "core.predict": 1, "core.checkpoints": 1, "core.stats": 1, "core.user_datasets": 1, "core.starter": 1,
    "core.targets": 1, "core.preprocess": 1,
    # 2: a model that runs; the run registry; scoring files against truth
    "core.inference": 2, "core.runs": 2, "core.scoring": 2,
    # 3: training, evaluation and the queue that runs them
    "core.train": 3, "core.evaluate": 3, "core.queue": 3, "core.lifecycle": 3, "core.predictions": 3,
    "core.ray_executor": 3, "core.ome_predict": 3, "core.tracking": 3,
    # 4: studies, and what is shown of runs: tables, figures, overlays
    "core.study": 4, "core.tables": 4, "core.figures": 4, "core.overlays": 4, "core.segment": 4,
    "core.export": 4, "core.external": 4,
    "core.estimate": 4, "core.corrections": 4,
    # 5: the report built from all of the above
    "core.report": 5,
    # 6: the command line
    "core.cli": 6, "core.commands": 6, "core.__main__": 6,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PROJECT_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def is_module(name: str) -> bool:
    path = PROJECT_ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def layer_of(name: str) -> int | None:
    matches = [prefix for prefix in LAYERS
               if name == prefix or (prefix != "core" and name.startswith(prefix + "."))]
    return LAYERS[max(matches, key=len)] if matches else None


def imported_names(path: Path, package: str | None = None) -> set[str]:
    """Every module name imported anywhere in the file (absolute, or relative resolved).

    ``package`` is the file's package, for relative imports (default: from its path).
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    if package is None:
        package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from core import stats` imports the module core.stats; `from core.runs import
            # Registry` the module core.runs.
            for alias in node.names:
                submodule = f"{module}.{alias.name}"
                names.add(submodule if is_module(submodule) else module)
    return names


def core_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(CORE.rglob("*.py"))}


def core_graph() -> dict[str, set[str]]:
    modules = core_modules()
    return {name: {other for other in imported_names(path) if other in modules and other != name}
            for name, path in modules.items()}


def test_every_core_module_has_a_layer():
    missing = [name for name in core_modules() if layer_of(name) is None]
    assert not missing, f"give these modules a layer in tests/test_structure.py: {missing}"


def test_imports_only_point_down():
    upward = [f"{name} (layer {layer_of(name)}) imports {other} (layer {layer_of(other)})"
              for name, others in core_graph().items() for other in sorted(others)
              if None not in (layer_of(name), layer_of(other)) and layer_of(other) > layer_of(name)]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_import_cycles():
    graph = core_graph()
    for name in graph:
        graph[name].discard("core")  # the package's __init__ imports nothing of its own
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for other in sorted(graph[node]):
            if state.get(other) == "open":
                cycles.append(stack[stack.index(other):] + [other])
            elif other not in state:
                visit(other, stack + [other])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_core_never_imports_the_app():
    offenders = [f"{name} imports {other}" for name, path in core_modules().items()
                 for other in imported_names(path)
                 if other.split(".")[0] in ("streamlit", "app_shared", "pages", "app")]
    assert not offenders, offenders


def test_the_app_does_not_touch_sys_path():
    files = [PROJECT_ROOT / "app.py", *sorted((PROJECT_ROOT / "pages").glob("*.py"))]
    offenders = [str(path.relative_to(PROJECT_ROOT)) for path in files if "sys.path" in path.read_text()]
    assert not offenders, f"sys.path manipulation in {offenders}"


def test_the_layer_walker_sees_a_cycle_and_an_upward_import(tmp_path):
    """The checks above can fail: a planted cycle and an upward import are found."""
    first = tmp_path / "first.py"
    first.write_text("import core.report\n\ndef f():\n    from core import train\n    from .io import x\n")
    assert {"core.report", "core.train", "core.datasets.io"} <= imported_names(first, "core.datasets")
    assert layer_of("core.report") > layer_of("core.metrics")
    assert layer_of("core.datasets.io") == 1 and layer_of("core.commands.train") == 6


@pytest.mark.parametrize("command", [["unetlab", "--help"], [sys.executable, "-m", "core", "--help"]])
def test_both_entry_points_answer(command):
    if command[0] == "unetlab":
        from shutil import which

        if which("unetlab") is None:
            pytest.skip("the unetlab command is not installed (pip install -e .)")
    process = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert process.returncode == 0, process.stderr[-500:]
    assert "train" in process.stdout and "study" in process.stdout
