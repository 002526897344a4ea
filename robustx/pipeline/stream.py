"""The inputs of an evaluation as a stream of batches, never concatenated.

:class:`InputStream` cuts a source - a pair (x, y) of tensors, a Dataset of (x, y) items
(e.g. :class:`robustx.pipeline.imagefolder.ImageFolder`) or a DataLoader - into batches of
``batch_size`` consecutive inputs; batch i holds inputs [i b, (i + 1) b). A rank iterates
only the batches it owns. A Dataset is read through a DataLoader with ``workers``
processes that decode the next batches while the current one is worked on (prefetch); a
user's DataLoader is read in its own order and re-cut to ``batch_size``.
"""
from __future__ import annotations

import hashlib
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset

from robustx import checks
from robustx.pipeline.imagefolder import readable_batches, skipped_warning

__all__ = ["InputStream"]

Batch = Tuple[int, int, torch.Tensor, torch.Tensor]  # (index, first input, x, y)


def _as_pair(item) -> Tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(item, (tuple, list)) or len(item) < 2:
        raise TypeError(f"data must yield (x, y) pairs, got {type(item).__name__}")
    return torch.as_tensor(item[0]), torch.as_tensor(item[1])


class InputStream:
    """Batches of ``batch_size`` inputs from ``data`` (tensors, Dataset or DataLoader); see
    the module docstring. ``n`` (number of inputs) is known up front except for a
    DataLoader without a sized dataset."""

    def __init__(self, data, batch_size: int, workers: int = 0, clip_values: Optional[Tuple[float, float]] = None):
        self.batch_size = checks.integer(batch_size, "batch_size")
        self.workers = checks.integer(workers, "workers", 0)
        self.clip_values = clip_values
        if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
            x, y = data
            self.source, self.n = (x, checks.data_labels(y, x.shape[0], "data y")), x.shape[0]
        elif isinstance(data, DataLoader):
            self.source, self.n = data, len(data.dataset) if hasattr(data.dataset, "__len__") else None
        elif isinstance(data, Dataset):
            self.source, self.n = data, len(data)
        else:
            raise TypeError(f"data must be a pair (x, y) of tensors, a Dataset or a DataLoader, got {type(data).__name__}")
        if self.n == 0:
            raise ValueError(f"data must hold at least one input, got an empty {type(data).__name__}")

    @property
    def n_batches(self) -> Optional[int]:
        return None if self.n is None else -(-self.n // self.batch_size)

    def batches(self, owned: Sequence[int]) -> Iterator[Batch]:
        """(index, first input, x, y) of each batch in ``owned`` (ascending), checked."""
        for i, start, x, y in self._raw(sorted(owned)):
            x = checks.images(x, "data x", self.clip_values)
            yield i, start, x, checks.data_labels(y, x.shape[0], "data y")

    def head(self, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """The first ``k`` inputs and labels (for the report's figures)."""
        xs, ys, have = [], [], 0
        for i, _, x, y in self.batches(range(-(-k // self.batch_size))):
            xs.append(x), ys.append(y)
            have += x.shape[0]
            if have >= k:
                break
        return torch.cat(xs)[:k], torch.cat(ys)[:k]

    def describe(self) -> str:
        """A digest naming the source for the store's run record: the whole tensors, or a
        Dataset's type, length and first batch (cheap; every unit is keyed by its batch's
        own bytes anyway)."""
        if isinstance(self.source, tuple):
            from robustx.pipeline.store import data_digest

            return data_digest(*self.source)
        h = hashlib.sha256(f"{type(self.source).__name__}:{self.n}".encode())
        for _, _, x, y in self.batches([0]):
            h.update(x.contiguous().numpy().tobytes()), h.update(y.contiguous().numpy().tobytes())
        return h.hexdigest()

    # ------------------------------------------------------------------ sources
    def _raw(self, owned: List[int]) -> Iterator[Batch]:
        if isinstance(self.source, tuple):
            x, y = self.source
            for i in owned:
                start = i * self.batch_size
                if start >= self.n:
                    return
                yield i, start, x[start:start + self.batch_size], y[start:start + self.batch_size]
        elif isinstance(self.source, DataLoader):
            yield from self._recut(owned)
        else:
            yield from self._dataset(owned)

    def _dataset(self, owned: List[int]) -> Iterator[Batch]:
        """A Dataset's owned batches, decoded ahead by the workers; images that cannot be
        decoded are left out of their batch and named in one warning at the end."""
        owned = [i for i in owned if i * self.batch_size < self.n]
        ranges = [list(range(i * self.batch_size, min((i + 1) * self.batch_size, self.n))) for i in owned]
        unreadable: List[str] = []
        for i, (batch, bad) in zip(owned, readable_batches(self.source, ranges, self.workers)):
            unreadable += bad
            if batch is not None:
                yield (i, i * self.batch_size, *_as_pair(batch))
        skipped_warning(self.source, unreadable)

    def _recut(self, owned: List[int]) -> Iterator[Batch]:
        """A DataLoader's batches, re-cut to ``batch_size``; only the owned ones are kept."""
        wanted, buffer, count, index = set(owned), [], 0, 0
        for item in self.source:
            x, y = _as_pair(item)
            buffer.append((x, y))
            count += x.shape[0]
            while count >= self.batch_size:
                xb, yb = torch.cat([b[0] for b in buffer]), torch.cat([b[1] for b in buffer])
                if index in wanted:
                    yield index, index * self.batch_size, xb[:self.batch_size], yb[:self.batch_size]
                buffer, count, index = [(xb[self.batch_size:], yb[self.batch_size:])], count - self.batch_size, index + 1
        if count and index in wanted:
            yield index, index * self.batch_size, torch.cat([b[0] for b in buffer]), torch.cat([b[1] for b in buffer])
