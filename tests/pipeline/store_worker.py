"""Worker of the crash-safety test: runs ``n`` units into a ResultStore (resuming what is
there), appending each unit it computes to ``<folder>/computed.log``, and saves the
combined result to ``<folder>/result.npy``.

Usage: python store_worker.py FOLDER N DELAY_SECONDS
"""
import sys
import time
from pathlib import Path

import numpy as np
import torch

from robustx.pipeline.store import ResultStore, run_unit

RUN_ID = "crash-test-run"


def unit_result(i: int):
    """The deterministic result of unit ``i``."""
    g = torch.Generator().manual_seed(1000 + i)
    return {"x": torch.randn(5, generator=g), "index": torch.tensor([i])}, {"index": i}


def compute(folder: Path, i: int, delay: float):
    with open(folder / "computed.log", "a") as log:
        log.write(f"unit-{i:02d}\n")
    time.sleep(delay)
    return unit_result(i)


def main(folder, n: int, delay: float) -> torch.Tensor:
    folder = Path(folder)
    with ResultStore.open(folder, {"run": RUN_ID, "units": str(n)}, resume=True) as store:
        parts = [run_unit(store, f"unit-{i:02d}", lambda i=i: compute(folder, i, delay))[0]["x"]
                 for i in range(n)]
    combined = torch.cat(parts)
    np.save(folder / "result.npy", combined.numpy(), allow_pickle=False)
    return combined


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
