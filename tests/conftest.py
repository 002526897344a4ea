import os
from pathlib import Path

import pytest
import torch

from robustx import ops
from toy_images import write_folder

AISAFETY_DIR = Path(os.environ.get("ROBUSTX_AISAFETY_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "aisafety-cifar10"))


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """Tests use small models, which run fastest (and least noisily) on one thread of a
    shared CPU; tests of the ops' parallel paths set their own thread counts."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def aisafety_dir() -> Path:
    """The real CIFAR-10 ResNet-20 data of ../shared/data/aisafety-cifar10 (skip when absent)."""
    if not (AISAFETY_DIR / "resnet20_cifar.pt").exists():
        pytest.skip(f"real CIFAR-10 data not found at {AISAFETY_DIR} (set ROBUSTX_AISAFETY_DIR)")
    return AISAFETY_DIR


@pytest.fixture
def requires_compiled():
    """Skip a test that compares the compiled op with its reference when robustx._C is absent."""
    if not ops.compiled():
        pytest.skip("robustx._C is not built (robustx.ops.compiled() is False); build it with "
                    "`pip install --no-build-isolation -e .`")


@pytest.fixture(params=["compiled", "reference"])
def backend(request):
    """Run the wrapper on the compiled op and on the pure-PyTorch fallback it uses without _C."""
    if request.param == "compiled":
        if not ops.compiled():
            pytest.skip("robustx._C is not built")
        yield request.param
    else:
        with ops.reference_ops():
            yield request.param


@pytest.fixture
def folder(tmp_path) -> Path:
    """An ImageNet-style folder of 6 pictures in 3 classes (toy_images.FILES) under tmp_path."""
    return write_folder(tmp_path / "images")
