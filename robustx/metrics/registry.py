"""The catalogue of every metric of the evaluation suite (docs/design.md, "The evaluation
suite"): name, family, direction, what a run must provide, and the function computing it.

Functions are named as "module:attribute" and imported only when
:attr:`MetricInfo.function` is read, so listing the catalogue imports nothing and an entry
whose module is missing fails only when it is used. Several names share a function:
``options`` holds the keyword arguments that select the metric (ALD_0 is ``ald`` with
norm = 0), and the coverage names are keys of ``NeuronCoverage.result()``.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Tuple

from robustx import checks

__all__ = ["NEEDS", "MetricInfo", "available", "get", "direction"]

#: What a run may have to provide besides the model and the clean inputs with labels:
#: the model's outputs on the clean inputs, adversarial examples (of the run's attacks),
#: minimal adversarial examples (of the run's minimal-perturbation attack, e.g. DeepFool),
#: a defended model to compare, a surrogate model (black box), corrupted inputs, a
#: profile of the neurons' training ranges (coverage).
NEEDS = frozenset({"clean outputs", "adversarial examples", "minimal adversarial examples", "defended model",
                   "surrogate", "corruptions", "profile"})


def direction(higher_is_better: Optional[bool]) -> str:
    """The word for a direction: "higher" (True), "lower" (False) or "n/a" (None: not a
    robustness measure, shown but never ranked)."""
    return {True: "higher", False: "lower", None: "n/a"}[higher_is_better]


@dataclass(frozen=True)
class MetricInfo:
    """One metric: ``name``; ``family``; ``higher_is_better`` (the direction that speaks
    for the evaluated model; None for the coverage metrics, which measure how well the
    *test set* exercises the model, "test adequacy", not its robustness: shown, never
    ranked); ``needs`` (a subset of :data:`NEEDS`); ``target`` (the computing function as
    "module:attribute"); ``options`` (keyword arguments that select this metric from the
    function, as (key, value) pairs); ``definition`` (the key in
    :data:`robustx.metrics.families.FAMILIES` of how evaluate streams it; default the
    family)."""

    name: str
    family: str
    higher_is_better: Optional[bool]
    needs: FrozenSet[str]
    target: str
    options: Tuple[Tuple[str, Any], ...] = field(default=())
    definition: str = ""

    def __post_init__(self) -> None:
        unknown = set(self.needs) - NEEDS
        if unknown:
            raise ValueError(f"{self.name}: unknown needs {sorted(unknown)}; allowed: {sorted(NEEDS)}")
        if not self.definition:
            object.__setattr__(self, "definition", self.family)

    @property
    def ranked(self) -> bool:
        """Whether comparisons may rank models by this metric (it has a direction)."""
        return self.higher_is_better is not None

    @property
    def direction(self) -> str:
        """"higher", "lower" or "n/a" (:func:`direction`)."""
        return direction(self.higher_is_better)

    @property
    def function(self) -> Callable:
        """The computing function, imported now (ImportError / AttributeError if absent)."""
        module, attribute = self.target.split(":")
        return getattr(importlib.import_module(module), attribute)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready: {"name", "family", "higher_is_better" (true, false or null), "ranked",
        "needs" (sorted list), "function" ("module:attribute"), "options" (dict)}."""
        return {
            "name": self.name,
            "family": self.family,
            "higher_is_better": self.higher_is_better,
            "ranked": self.ranked,
            "needs": sorted(self.needs),
            "function": self.target,
            "options": dict(self.options),
        }


_CLEAN = frozenset({"clean outputs"})
_ATTACKED = frozenset({"clean outputs", "adversarial examples"})
_MINIMAL = frozenset({"clean outputs", "minimal adversarial examples"})
_DEFENDED = frozenset({"clean outputs", "defended model"})
_HERE = "robustx.metrics."


def _entries() -> Tuple[MetricInfo, ...]:
    m = MetricInfo
    means = "adversarial means"
    ald = [m(f"ALD_{p}", "imperceptibility", True, _MINIMAL, _HERE + "imperceptibility:ald", (("norm", p),), means)
           for p in (0, 2, "inf")]
    defense = [m(name, "defense", better, _DEFENDED, _HERE + "defense:defense_utility")
               for name, better in (("CAV", True), ("CRR", True), ("CSR", False), ("CCV", False), ("COS", False))]
    coverage = [m(name, "coverage", None, frozenset({"clean outputs", "profile"} if profiled else _CLEAN),
                  "robustx.coverage:NeuronCoverage")
                for name, profiled in (("NC", False), ("KMNC", True), ("NBC", True), ("SNAC", True),
                                       ("TKNC", False), ("TKNP", False))]
    return (
        m("CA", "accuracy", True, _CLEAN, _HERE + "accuracy:accuracy"),
        m("AA_W", "accuracy", True, frozenset({"adversarial examples"}), _HERE + "accuracy:accuracy"),
        m("AA_B", "accuracy", True, frozenset({"adversarial examples", "surrogate"}), _HERE + "accuracy:accuracy"),
        *ald,
        m("ASS", "imperceptibility", False, _MINIMAL, _HERE + "imperceptibility:ass", definition=means),
        m("PSD", "imperceptibility", True, _MINIMAL, _HERE + "imperceptibility:psd", definition=means),
        m("ACAC", "behaviour", False, _MINIMAL, _HERE + "behaviour:acac", definition=means),
        m("ACTC", "behaviour", True, _MINIMAL, _HERE + "behaviour:actc", definition=means),
        m("NTE", "behaviour", False, _MINIMAL, _HERE + "behaviour:nte", definition=means),
        m("RGB", "behaviour", False, _ATTACKED, _HERE + "behaviour:rgb", definition=means),
        m("RIC", "behaviour", False, _ATTACKED, _HERE + "behaviour:ric", definition=means),
        *defense,
        m("mCE", "corruption", False, frozenset({"corruptions"}), _HERE + "corruption:mce"),
        m("rmCE", "corruption", False, frozenset({"corruptions"}), _HERE + "corruption:rmce"),
        m("EBD", "boundary", True, _CLEAN, _HERE + "boundary:ebd", definition="EBD"),
        m("eps-ENI", "boundary", False, _ATTACKED, _HERE + "eni:eps_eni", definition="eps-ENI"),  # the platform's
        m("eps-ENI_noise", "boundary", False, _CLEAN, _HERE + "eni:eps_eni_noise", definition="eps-ENI_noise"),
        m("NS", "neuron", False, frozenset({"adversarial examples"}), "robustx.sensitivity:neuron_sensitivity", definition="NS"),
        m("NU", "neuron", False, frozenset({"adversarial examples"}), "robustx.sensitivity:neuron_uncertainty",
          definition="NU"),  # on adversarial examples, as the platform
        m("NU_clean", "neuron", False, _CLEAN, "robustx.sensitivity:neuron_uncertainty", definition="NU"),
        *coverage,
        m("CLEVER", "bound", True, _CLEAN, "robustx.clever:clever", definition="CLEVER"),
        m("DIV", "bound", False, _CLEAN, "robustx.divergence:divergence_bound", definition="DIV"),
    )


_REGISTRY: Dict[str, MetricInfo] = {info.name: info for info in _entries()}


def available(family: Optional[str] = None) -> List[str]:
    """Every metric name in the suite's order (ε-ENI is spelled "eps-ENI"), or those of
    one ``family``: accuracy, imperceptibility, behaviour, defense, corruption, boundary,
    neuron, coverage, bound."""
    names = [name for name, info in _REGISTRY.items() if family is None or info.family == family]
    if family is not None and not names:
        checks.choice(family, "family", sorted({info.family for info in _REGISTRY.values()}))
    return names


def get(name: str) -> MetricInfo:
    """The :class:`MetricInfo` of metric ``name`` (exact spelling, see :func:`available`)."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown metric {name!r}; available: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]
