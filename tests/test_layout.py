"""The package's layers: only the commands (and the loader they share,
robustx/pipeline/sources.py) load named models and data; every figure is a Figure object
(no pyplot, no global backend switch)."""
import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "robustx"
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
import sys
import torch
import robustx.clever, robustx.landscape
from robustx.landscape import input_landscape
from robustx.plotting import histogram_png
net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
land = input_landscape(net, torch.rand(1, 1, 2, 2), span=0.1, steps=3, progress=False)
assert land.plot("contour")[:4] == land.plot_slices()[:4] == histogram_png([1.0], "t", "x")[:4] == b"\\x89PNG"
print(sorted(m for m in ("robustx.data", "robustx.models", "matplotlib.pyplot") if m in sys.modules))
"""


def test_landscape_and_clever_load_neither_data_nor_models_nor_pyplot():
    """Imported and used in a fresh process: robustx.data, robustx.models and pyplot stay unloaded."""
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=PACKAGE.parent, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
