"""Which backends the loaded operator library has kernels for, and the check a build runs.

``python -m robustx.ops.kernels --require CPU --require CUDA`` prints the backends of
every operator and exits with 1 when the compiled library is not in use or an operator
lacks a required backend (``make setup`` runs it after each build). CUDA kernels are
registered by a CUDA build even on a machine without a GPU.
"""
from __future__ import annotations

import argparse
import sys
from typing import Dict, List, Optional

import torch

from robustx import checks
from robustx.ops.loader import compiled, source

__all__ = ["OPS", "BACKENDS", "backends", "missing", "main"]

OPS = ("ball_sample", "grad_norm_batch_max", "coverage_update")
BACKENDS = ("CPU", "CUDA")


def backends() -> Dict[str, List[str]]:
    """op name -> the dispatch keys (of :data:`BACKENDS`) it has a compiled kernel for."""
    return {op: [key for key in BACKENDS if torch._C._dispatch_has_kernel_for_dispatch_key(f"robustx::{op}", key)]
            for op in OPS}


def missing(required: List[str]) -> List[str]:
    """"op: backend" for every required backend some op lacks (all of them without a compiled library)."""
    for key in required:
        checks.choice(key, "required backend", BACKENDS)
    have = backends() if compiled() else {op: [] for op in OPS}
    return [f"{op}: {key}" for op in OPS for key in required if key not in have[op]]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m robustx.ops.kernels", description=__doc__.splitlines()[0])
    parser.add_argument("--require", action="append", default=[], choices=BACKENDS,
                        help="a backend every op must have a kernel for (repeatable)")
    args = parser.parse_args(argv)
    print(f"robustx operators from {source() or 'the pure-PyTorch references'} (torch {torch.__version__}, "
          f"CUDA {torch.version.cuda or 'none'}):")
    for op, keys in (backends() if compiled() else {op: [] for op in OPS}).items():
        print(f"  {op}: {', '.join(keys) or 'no compiled kernel'}")
    lacking = missing(args.require)
    if lacking:
        print(f"error: no compiled kernel for {'; '.join(lacking)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
