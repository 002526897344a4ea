"""The metric catalogue: every name of the suite, metadata, lazy resolution."""
import json

import pytest

import robustx.metrics as metrics
from robustx.metrics.registry import NEEDS, MetricInfo

SUITE = ["CA", "AA_W", "AA_B", "ALD_0", "ALD_2", "ALD_inf", "ASS", "PSD", "ACAC", "ACTC", "NTE", "RGB", "RIC",
         "CAV", "CRR", "CSR", "CCV", "COS", "mCE", "rmCE", "EBD", "eps-ENI", "eps-ENI_noise", "NS", "NU",
         "NU_clean", "NC", "KMNC", "NBC", "SNAC", "TKNC", "TKNP", "CLEVER", "DIV"]
LOWER_IS_BETTER = {"ASS", "ACAC", "NTE", "RGB", "RIC", "CSR", "CCV", "COS", "mCE", "rmCE", "eps-ENI", "eps-ENI_noise",
                   "NS", "NU", "NU_clean", "DIV"}
TEST_ADEQUACY = {"NC", "KMNC", "NBC", "SNAC", "TKNC", "TKNP"}  # coverage: never ranked


def test_every_metric_is_listed_once_in_order():
    assert metrics.available() == SUITE
    assert metrics.available("defense") == ["CAV", "CRR", "CSR", "CCV", "COS"]
    assert metrics.available("coverage") == ["NC", "KMNC", "NBC", "SNAC", "TKNC", "TKNP"]
    with pytest.raises(ValueError, match="family"):
        metrics.available("nope")


def test_metadata():
    for name in SUITE:
        info = metrics.get(name)
        assert info.name == name
        expected = None if name in TEST_ADEQUACY else name not in LOWER_IS_BETTER
        assert info.higher_is_better is expected, name
        assert info.ranked == (name not in TEST_ADEQUACY)
        assert info.direction == {True: "higher", False: "lower", None: "n/a"}[expected]
        assert info.needs and info.needs <= NEEDS
        d = info.to_dict()
        assert json.loads(json.dumps(d)) == d
        assert d["function"].count(":") == 1
    assert metrics.get("AA_B").needs == {"adversarial examples", "surrogate"}
    assert metrics.get("KMNC").needs == {"clean outputs", "profile"}
    assert metrics.get("NC").needs == {"clean outputs"}
    assert metrics.get("CAV").needs == {"clean outputs", "defended model"}
    assert metrics.get("mCE").to_dict()["function"] == "robustx.metrics.corruption:mce"
    assert metrics.get("EBD").to_dict()["function"] == "robustx.metrics.boundary:ebd"
    assert metrics.get("eps-ENI").to_dict()["function"] == "robustx.metrics.eni:eps_eni"
    assert metrics.get("eps-ENI_noise").to_dict()["function"] == "robustx.metrics.eni:eps_eni_noise"
    # the platform's eps-ENI and NU run on the primary attack's examples; their variants do not
    assert "adversarial examples" in metrics.get("eps-ENI").needs & metrics.get("NU").needs
    assert metrics.get("eps-ENI_noise").needs == metrics.get("NU_clean").needs == {"clean outputs"}
    assert metrics.get("ALD_inf").to_dict()["options"] == {"norm": "inf"}


def test_entries_are_frozen_and_checked():
    info = metrics.get("CA")
    with pytest.raises(Exception):
        info.family = "x"
    with pytest.raises(ValueError, match="unknown needs"):
        MetricInfo("X", "f", True, frozenset({"gpu"}), "m:f")
    with pytest.raises(KeyError, match="unknown metric"):
        metrics.get("ENI")


def test_own_entries_resolve_lazily():
    assert metrics.get("CA").function is metrics.accuracy
    assert metrics.get("ALD_0").function is metrics.ald
    assert metrics.get("ASS").function is metrics.ass
    assert metrics.get("PSD").function is metrics.psd
    assert metrics.get("ACAC").function is metrics.acac
    assert metrics.get("RIC").function is metrics.ric
    assert metrics.get("COS").function is metrics.defense_utility
    missing = MetricInfo("X", "f", True, frozenset({"clean outputs"}), "robustx.metrics.no_such_module:f")
    with pytest.raises(ImportError):
        missing.function
