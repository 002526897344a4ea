"""Run by tests/pipeline/test_distributed.py under torchrun (gloo, one thread per process).

    dist_worker.py blocks OUT          the building blocks on rank-dependent data -> OUT/rank<r>.json
    dist_worker.py disagree OUT        evaluate with a seed that differs by rank (must raise)
"""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from robustx.coverage import NeuronCoverage
from robustx.neurons import RunningMoments
from robustx.pipeline import distributed
from robustx.pipeline.evaluate import evaluate


def blocks(out: Path) -> None:
    rank, size = distributed.world()
    values = torch.arange(10 * 3, dtype=torch.float64).reshape(10, 3) ** 1.5
    mine = values[rank::size]
    moments = RunningMoments().update(mine)
    distributed.all_reduce_moments(moments)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    x = torch.randn(12, 4, generator=torch.Generator().manual_seed(1))
    cov = NeuronCoverage(model, top_k=1, progress=False).profile(x)
    cov.update(x[rank::size])
    cov.all_reduce()
    gathered = distributed.gather_in_order({i: i * i for i in distributed.owned(7)})
    result = {"n": moments.n, "mean": moments.mean.tolist(), "var": moments.variance().tolist(),
              "coverage": cov.result().to_dict(), "gathered": list(gathered.items())}
    (out / f"rank{rank}.json").write_text(json.dumps(result))


def disagree() -> None:
    rank, _ = distributed.world()
    x = torch.rand(16, 4)
    y = torch.zeros(16, dtype=torch.long)
    model = nn.Sequential(nn.Linear(4, 3))
    evaluate(model, (x, y), metrics=["CA"], seed=rank, batch_size=4, progress=False)


if __name__ == "__main__":
    torch.set_num_threads(1)
    distributed.init_from_env()
    mode, out = sys.argv[1], Path(sys.argv[2])
    try:
        blocks(out) if mode == "blocks" else disagree()
    except ValueError as err:
        (out / f"error{distributed.world()[0]}.txt").write_text(str(err))
    dist.destroy_process_group()
