"""robustx.checks: the shared argument checks (choice, renamed)."""
import inspect
import warnings

import pytest

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
