"""The input stream (robustx/pipeline/stream.py): tensors, a Dataset and a DataLoader cut
into the same batches; empty or foreign data refused."""
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from robustx.pipeline.stream import InputStream


@pytest.mark.parametrize("kind", ["tensors", "dataset", "loader"])
def test_the_stream_cuts_every_source_into_the_same_batches(kind):
    x, y = torch.rand(10, 1, 4, 4), torch.arange(10) % 3
    source = {"tensors": (x, y), "dataset": TensorDataset(x, y),
              "loader": DataLoader(TensorDataset(x, y), batch_size=3)}[kind]
    stream = InputStream(source, 4)
    batches = list(stream.batches([0, 1, 2]))
    assert stream.n == 10 and stream.n_batches == 3
    assert [(i, start, b.shape[0]) for i, start, b, _ in batches] == [(0, 0, 4), (1, 4, 4), (2, 8, 2)]
    assert torch.equal(torch.cat([b for _, _, b, _ in batches]), x)
    assert [int(v) for _, _, _, t in batches for v in t] == y.tolist()
    assert [i for i, *_ in stream.batches([2])] == [2]  # a rank reads only its own batches


def test_the_stream_refuses_empty_or_foreign_data():
    with pytest.raises(ValueError, match="at least one input"):
        InputStream(TensorDataset(torch.zeros(0, 1, 2, 2), torch.zeros(0)), 4)
    with pytest.raises(TypeError, match="pair .* Dataset or a DataLoader"):
        InputStream([1, 2, 3], 4)
