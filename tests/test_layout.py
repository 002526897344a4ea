"""The package's layers: only the commands (and the loader they share,
robustx/pipeline/sources.py) load named models and data; every figure is a Figure object
(no pyplot, no global backend switch). The tests mirror the source: tests/<pkg>/test_<module>.py
tests robustx/<pkg>/<module>.py."""
import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "robustx"
TESTS = Path(__file__).resolve().parent
#: test modules of no single source module: the public API, the build, this file
CROSS_CUTTING = {"test_api.py", "test_build.py", "test_layout.py"}
#: test folders of no single source folder: the CUDA kernels, run only where a GPU is
CROSS_CUTTING_FOLDERS = {"gpu"}
#: tests of compiled sources, not of a Python module: the sources each mirrors
COMPILED = {"ops/test_checks.py": "csrc/include/robustx/*_checks.h",
            "ops/test_kernel_sim.py": "tests/ops/kernel_sim/kernel_sim.cpp"}
#: the modules allowed to import robustx.data / robustx.models: the loaders and the commands
LOADERS = {"data.py", "models.py", "pipeline/sources.py"}


def _imported(path: Path) -> set:
    """Every module name an ``import`` / ``from ... import`` of ``path`` names, at any depth
    (``from robustx import data`` counts as robustx.data)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _method_modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if not relative.startswith("commands/") and relative not in LOADERS:
            yield relative, path


def test_no_method_module_imports_data_or_models():
    offenders = {relative: sorted(n for n in _imported(path) if n in ("robustx.data", "robustx.models")
                                  or n.startswith(("robustx.data.", "robustx.models.")))
                 for relative, path in _method_modules()}
    assert {k: v for k, v in offenders.items() if v} == {}
    assert len(offenders) > 30  # the walk saw the package


def test_no_module_uses_pyplot():
    used = {path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*.py")
            if "matplotlib.pyplot" in _imported(path) or "matplotlib.use(" in path.read_text()}
    assert used == set()


PROBE = """
import io
import sys
import PIL.Image
import torch
import robustx.clever, robustx.landscape
from robustx.landscape import input_landscape
from robustx.plotting import histogram_png
net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
land = input_landscape(net, torch.rand(1, 1, 2, 2), span=0.1, steps=3, progress=False)
for png in (land.plot("contour"), land.plot_slices(), histogram_png([1.0], "t", "x")):
    with PIL.Image.open(io.BytesIO(png)) as image:  # decoded: a PNG with something drawn on it
        low, high = image.convert("L").getextrema()
        assert image.format == "PNG" and min(image.size) >= 100 and low < high, (image.size, low, high)
print(sorted(m for m in ("robustx.data", "robustx.models", "matplotlib.pyplot") if m in sys.modules))
"""


def test_landscape_and_clever_load_neither_data_nor_models_nor_pyplot():
    """Imported and used in a fresh process: robustx.data, robustx.models and pyplot stay unloaded."""
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=PACKAGE.parent, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def _mirrored_source(test: Path):
    """The source file test_<module>[_<suffix>].py tests: robustx/<pkg>/<module>.py (bench/ for
    tests/bench, whose scripts may be shell), the longest <module> that exists; None if none."""
    folder = test.parent.relative_to(TESTS)
    root = PACKAGE.parent / "bench" if folder.parts[:1] == ("bench",) else PACKAGE / folder
    words = test.stem.split("_")[1:]
    for end in range(len(words), 0, -1):
        for suffix in (".py", ".sh"):
            source = root / ("_".join(words[:end]) + suffix)
            if source.is_file():
                return source
    return None


def test_every_test_module_mirrors_a_source_module():
    tests = {path.relative_to(TESTS).as_posix(): path for path in sorted(TESTS.rglob("test_*.py"))}
    tests = {name: path for name, path in tests.items()
             if name.split("/")[0] not in CROSS_CUTTING_FOLDERS and name not in CROSS_CUTTING}
    compiled = {name: sorted(PACKAGE.parent.glob(pattern)) for name, pattern in COMPILED.items()}
    assert all(compiled.values()), compiled
    unmirrored = [name for name, path in tests.items() if name not in COMPILED and _mirrored_source(path) is None]
    assert unmirrored == []
    assert len(tests) > 40  # the walk saw the tests


def test_every_test_folder_is_a_package():
    """Test basenames repeat across folders (tests/test_checks.py, tests/ops/test_checks.py):
    each folder needs its own package name."""
    folders = {path.parent for path in TESTS.rglob("test_*.py")} - {TESTS}
    mirrored = {f for f in folders if f.name not in CROSS_CUTTING_FOLDERS}
    assert sorted(f.name for f in mirrored if not (f / "__init__.py").is_file()) == []
    assert {"commands", "metrics", "ops", "pipeline"} <= {f.name for f in folders}
