"""The settings of an evaluation: metric names, attack tables and config tables, checked
before any work.

A config maps a table name to keyword arguments: a metric family's table (its function
and defaults are stated by the family, :mod:`robustx.metrics.families`), an attack's
table (:mod:`robustx.attacks`) or ``landscape``. Unknown tables or keys are refused
naming them and the function they would go to.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch

from robustx import attacks as attack_lib
from robustx import metrics as suite
from robustx.metrics.families import FAMILIES

__all__ = ["DEFAULT_ATTACKS", "config_sections", "check_config", "attack_table", "metric_names", "table_settings",
           "autocast_dtype", "jsonable"]

#: The white-box attack of a run when none is given: PGD L-inf, eps 8/255, 10 steps of 2/255.
DEFAULT_ATTACKS = {"pgd": {"eps": 8 / 255, "norm": "inf", "steps": 10, "step_size": 2 / 255}}

_LANDSCAPE = "robustx.landscape:input_landscape"
_EXTRA_KEYS = {"landscape": {"n_images"}}  # keys that evaluate itself reads
# arguments evaluate passes itself, so a config table may not set them
_DATA_ARGUMENTS = {"self", "model", "x", "y", "x_adv", "x_noisy", "clip_values", "seed", "batch_size", "progress",
                   "offset"}
_ALIASES = {"clever": {"batch_size": "n_samples"}}  # ART's name for N_s, samples per batch
_AUTOCAST = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def _families_with_tables():
    return {f.table: f for f in FAMILIES.values() if f.table}


def config_sections() -> Dict[str, str]:
    """Every config table evaluate accepts and the function its keys are passed to."""
    return {**{table: f.target for table, f in _families_with_tables().items()}, "landscape": _LANDSCAPE,
            **{name: f"robustx.attacks:{name}" for name in attack_lib.ATTACKS}}


def _accepted(target: str) -> set:
    module, attr = target.split(":")
    fn = getattr(importlib.import_module(module), attr)
    return set(inspect.signature(fn).parameters) - _DATA_ARGUMENTS


def check_config(config: Optional[Mapping[str, Mapping[str, Any]]]) -> Dict[str, Dict[str, Any]]:
    """Validate a config (table -> keyword arguments) against the functions it feeds."""
    config = dict(config or {})
    sections = config_sections()
    tables = _families_with_tables()
    for table, keys in config.items():
        if table not in sections:
            raise ValueError(f"config: unknown table [{table}]; tables: {', '.join(sorted(sections))}")
        if not isinstance(keys, Mapping):
            raise TypeError(f"config: [{table}] must be a table of keyword arguments, got {keys!r}")
        keys = {_ALIASES.get(table, {}).get(k, k): v for k, v in keys.items()}
        if table in attack_lib.ATTACKS:
            accepted = set(attack_lib.attack_settings(table)) - {"seed"}
        else:
            accepted = _accepted(sections[table]) | set(tables[table].extra if table in tables else ())
            accepted |= _EXTRA_KEYS.get(table, set())
        unknown = sorted(set(keys) - accepted - {"progress"})
        if unknown:
            raise TypeError(f"config: [{table}] has key(s) {unknown} that {sections[table]} does not take")
        config[table] = dict(keys)
    return config


def table_settings(config: Mapping[str, Mapping[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Every metric family's table: its defaults overridden by the config's table."""
    return {table: {**f.defaults, **config.get(table, {})} for table, f in _families_with_tables().items()}


def attack_table(attacks, config: Mapping[str, Mapping[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Attack name -> settings: ``attacks`` (None: :data:`DEFAULT_ATTACKS`; names, a comma
    string or a mapping to settings) over the defaults, under the config's attack tables."""
    if attacks is None:
        attacks = {name: dict(settings) for name, settings in DEFAULT_ATTACKS.items()}
    elif isinstance(attacks, str):
        attacks = {name.strip(): {} for name in attacks.split(",") if name.strip()}
    elif not isinstance(attacks, Mapping):
        attacks = {name: {} for name in attacks}
    table = {}
    for name, settings in attacks.items():
        if name not in attack_lib.ATTACKS:
            raise ValueError(f"attacks: unknown attack {name!r}; built-in: {', '.join(attack_lib.ATTACKS)}")
        table[name] = {**DEFAULT_ATTACKS.get(name, {}), **dict(settings), **dict(config.get(name, {}))}
    return table


def metric_names(metrics: Union[str, Sequence[str]]) -> List[str]:
    """The metric names of ``metrics`` ("all", a comma string or names) in the suite's order."""
    every = suite.available()
    if metrics == "all":
        return every
    names = [m.strip() for m in metrics.split(",")] if isinstance(metrics, str) else list(metrics)
    unknown = [m for m in names if m not in every]
    if unknown or not names:
        raise ValueError(f"metrics: unknown metric(s) {unknown}; available: {', '.join(every)}")
    return [m for m in every if m in names]


def autocast_dtype(value) -> Optional[torch.dtype]:
    """None, or the autocast dtype named by "bf16" / "fp16" (or given as the torch dtype)."""
    if value is None or value in (torch.bfloat16, torch.float16):
        return value
    if isinstance(value, str) and value in _AUTOCAST:
        return _AUTOCAST[value]
    raise ValueError(f"autocast must be None, 'bf16' or 'fp16', got {value!r}")


def jsonable(value):
    """``value`` with every mapping key a string and every leaf a JSON scalar (else its str)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return str(value)
