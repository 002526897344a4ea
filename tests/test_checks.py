"""robustx.checks: the shared argument checks (choice, renamed, parse_norm,
not_probabilities through CLEVER and the metrics)."""
import inspect
import math
import warnings

import pytest
import torch
from torch import nn

from robustx import checks


def test_choice_returns_the_value_and_names_the_argument():
    assert checks.choice("fog", "corruption", ("fog", "snow")) == "fog"
    with pytest.raises(ValueError, match=r"corruption must be one of 'fog', 'snow', got 'rain'"):
        checks.choice("rain", "corruption", ("fog", "snow"))
    with pytest.raises(TypeError, match=r"corruption must be one of 'fog', 'snow', or a callable, got int 3"):
        checks.choice(3, "corruption", ("fog", "snow"), also="or a callable")
    with pytest.raises(TypeError, match="kind must be one of"):
        checks.choice(["fog"], "kind", ("fog",))  # unhashable: refused, not a crash


def test_renamed_warns_passes_the_value_and_refuses_both():
    @checks.renamed(epsilon="eps")
    def f(x, eps=1.0):
        return x * eps

    assert f(2, eps=3) == 6
    with pytest.warns(DeprecationWarning, match="'epsilon' is deprecated, use 'eps'"):
        assert f(2, epsilon=4) == 8
    with pytest.raises(TypeError, match="got both 'epsilon'"):
        f(2, eps=1, epsilon=2)
    assert list(inspect.signature(f).parameters) == ["x", "eps"]
    assert f.__deprecated_aliases__ == {"epsilon": "eps"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f(1, eps=1)  # the new name never warns


def test_parse_norm_spellings_and_refusals():
    assert [checks.parse_norm(v) for v in (1, 2.0, float("inf"), " L2 ", "linf", "1")] == [1.0, 2.0, math.inf, 2.0,
                                                                                         math.inf, 1.0]
    with pytest.raises(ValueError, match=r"p must be one of 1, 2, inf, '1'"):
        checks.parse_norm(3, "p")
    with pytest.raises(TypeError, match="norm must be"):
        checks.parse_norm(True)


class _FixedRows(nn.Module):
    """Returns the rows ``p`` for every input, nudged by 1e-8 x.sum() (the output depends on
    x): the detection rule sees row sums within 1.2e-7 of ``p``'s."""

    def __init__(self, p: torch.Tensor):
        super().__init__()
        self.p = p

    def forward(self, x):
        return self.p.expand(x.shape[0], -1) + 1e-8 * x.flatten(1).sum(1, keepdim=True)


@pytest.mark.parametrize("excess, flagged", [(0.995e-3, True), (1.005e-3, False)])
def test_one_probability_rule_warns_in_clever_and_raises_in_the_metrics(excess, flagged):
    """Rows in [0, 1] whose sums are 1 + excess: within PROBABILITY_TOLERANCE (1e-3) they are
    probabilities for every caller, just outside it logits for every caller (CLEVER's former
    own rule, allclose with rtol 1e-5 on top, flagged 1.005e-3 too)."""
    from robustx.clever import clever
    from robustx.metrics import accuracy

    assert checks.PROBABILITY_TOLERANCE == 1e-3
    model = _FixedRows(torch.tensor([[0.2, 0.3, 0.5 + excess]]))
    x = torch.rand(2, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clever(model, x, radius=0.1, n_batches=4, n_samples=4, on_fallback="max", progress=False)
    warned = [str(w.message) for w in caught if "probabilities" in str(w.message)]
    assert len(warned) == int(flagged)
    assert all("the model's output looks like probabilities" in m and "CLEVER" in m for m in warned)
    logits = model(x)
    if flagged:
        with pytest.raises(ValueError, match="logits looks like probabilities"):
            accuracy(logits, torch.tensor([2, 2]))
    else:
        assert accuracy(logits, torch.tensor([2, 2])) == 1.0
