import os
from pathlib import Path

import pytest
import torch

AISAFETY_DIR = Path(os.environ.get("ROBUSTX_AISAFETY_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "aisafety-cifar10"))


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def aisafety_dir() -> Path:
    """The real CIFAR-10 ResNet-20 data of ../shared/data/aisafety-cifar10 (skip when absent)."""
    if not (AISAFETY_DIR / "resnet20_cifar.pt").exists():
        pytest.skip(f"real CIFAR-10 data not found at {AISAFETY_DIR} (set ROBUSTX_AISAFETY_DIR)")
    return AISAFETY_DIR
