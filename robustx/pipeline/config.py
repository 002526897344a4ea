"""The settings of an evaluation: metric names, attack tables and config tables, checked
before any work and before the store is created.

A config maps a table name to keyword arguments: a metric family's table (its function
and defaults are stated by the family, :mod:`robustx.metrics.families`), an attack's
table (:mod:`robustx.attacks`) or ``landscape``. Unknown tables or keys are refused
naming them and the function they would go to; every value is checked by the function it
goes to (:func:`check_settings`), and the model's outputs by one forward pass
(:func:`check_outputs`).
"""
from __future__ import annotations

import importlib
import inspect
import warnings
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from robustx import attacks as attack_lib
from robustx import checks
from robustx import metrics as suite
from robustx.metrics.families import FAMILIES
from robustx.modelutil import frozen_eval, resolve_layers
from robustx.neurons import neuron_axes
from robustx.pipeline.presets import preset_tables

__all__ = ["DEFAULT_ATTACKS", "DEFAULT_MINIMAL_ATTACK", "config_sections", "check_config", "attack_table",
           "minimal_table", "attack_defaults", "metric_names", "table_settings", "table_budget", "attack_budget",
           "landscape_settings", "check_settings", "check_outputs", "autocast_dtype", "jsonable"]

#: The white-box attack of a run when none is given: PGD L-inf, eps 8/255, 10 steps of 2/255
#: (the quick preset's; the paper preset's steps: :mod:`robustx.pipeline.presets`).
DEFAULT_ATTACKS = {"pgd": {"eps": 8 / 255, "norm": "inf", "steps": 10, "step_size": 2 / 255}}

#: The minimal-perturbation attack whose successful examples S the imperceptibility and
#: behaviour means (ALD_0/2/inf, ASS, PSD, ACAC, ACTC, NTE) average over, when none is given:
#: DeepFool (L2, Moosavi-Dezfooli et al. 2016; 50 steps, overshoot 0.02, 10 candidate
#: classes: the paper's settings). Under a fixed-budget attack ALD_inf is the budget for every
#: model; DeepFool's distance is the model's own. It costs a few steps of 10 gradients per
#: input (C&W L2 finds smaller perturbations at up to 9 x 1000 steps per input).
DEFAULT_MINIMAL_ATTACK = "deepfool"

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


def _function(target: str) -> Callable:
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


def _accepted(target: str) -> set:
    return set(inspect.signature(_function(target)).parameters) - _DATA_ARGUMENTS


def _renamed(table: str, target: str, keys: Mapping[str, Any]) -> Dict[str, Any]:
    """A table's keys under their current names: a deprecated name of ``target``'s
    (:func:`robustx.checks.renamed`) is taken with a ``DeprecationWarning``."""
    aliases = getattr(_function(target), "__deprecated_aliases__", {})
    for old in [k for k in keys if k in aliases]:
        warnings.warn(f"config: [{table}] {old} is deprecated, use {aliases[old]}", DeprecationWarning, stacklevel=3)
    return {aliases.get(k, k): v for k, v in keys.items()}


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
            accepted = set(attack_lib.attack_settings(table))
        else:
            keys = _renamed(table, sections[table], keys)
            accepted = _accepted(sections[table]) | set(tables[table].extra if table in tables else ())
            accepted |= _EXTRA_KEYS.get(table, set())
        reserved = sorted((set(keys) - accepted) & _DATA_ARGUMENTS)
        if reserved:
            raise TypeError(f"config: [{table}] may not set {reserved}: evaluate passes them itself")
        unknown = sorted(set(keys) - accepted)
        if unknown:
            raise TypeError(f"config: [{table}] has key(s) {unknown} that {sections[table]} does not take")
        config[table] = dict(keys)
    return config


def table_settings(config: Mapping[str, Mapping[str, Any]], preset: str = "quick") -> Dict[str, Dict[str, Any]]:
    """Every metric family's table: its defaults, overridden by the ``preset``'s table
    (:mod:`robustx.pipeline.presets`), overridden by the config's table."""
    tables = preset_tables(preset, config)
    return {table: {**f.defaults, **tables.get(table, {}), **config.get(table, {})}
            for table, f in _families_with_tables().items()}


def table_budget(table: str, settings: Mapping[str, Any]) -> Dict[str, Any]:
    """Everything a family's table resolves to: the keyword arguments of the function it
    feeds, at their defaults where ``settings`` (the table's resolved settings) leave them."""
    return {**_defaults(_target(table)), **settings}


def attack_budget(name: str, settings: Union[Mapping[str, Any], Callable]) -> Union[Dict[str, Any], Callable]:
    """The settings a built-in attack runs with (its defaults under ``settings``); a callable
    attack is itself."""
    if callable(settings):
        return settings
    return {**_defaults(attack_lib.ATTACKS[name]), **settings}


def _defaults(fn: Callable) -> Dict[str, Any]:
    """The keyword defaults of ``fn`` that are settings (not what evaluate passes itself)."""
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty and k not in _DATA_ARGUMENTS | {"device"}}


def attack_table(attacks, config: Mapping[str, Mapping[str, Any]],
                 preset: str = "quick") -> Dict[str, Union[Dict[str, Any], Callable]]:
    """Attack name -> settings of a built-in attack (:data:`DEFAULT_ATTACKS`' when it has
    some, under the ``preset``'s table, under the settings given in ``attacks``, under the
    config's attack table; a table's ``seed`` replaces the run's as the base of its batch
    seeds), or the callable ``attack(model, x, y)`` itself. ``attacks``: None
    (:data:`DEFAULT_ATTACKS`), names as a comma string or a list (callables allowed in the
    list), a callable, or a mapping name -> settings or callable."""
    tables = preset_tables(preset, config)
    if attacks is None:
        attacks = {name: {} for name in DEFAULT_ATTACKS}  # their settings below, under the preset's
    elif isinstance(attacks, str):
        attacks = {name.strip(): {} for name in attacks.split(",") if name.strip()}
    elif callable(attacks):
        attacks = {_callable_name(attacks): attacks}
    elif not isinstance(attacks, Mapping):
        attacks = {_callable_name(a): a if callable(a) else {} for a in attacks}
    table = {}
    for name, settings in attacks.items():
        if callable(settings):
            table[name] = settings
            continue
        if name not in attack_lib.ATTACKS:
            raise ValueError(f"attacks: unknown attack {name!r}; built-in: {', '.join(attack_lib.ATTACKS)}, or a "
                             "callable attack(model, x, y) -> x_adv")
        table[name] = {**DEFAULT_ATTACKS.get(name, {}), **tables.get(name, {}), **dict(settings),
                       **dict(config.get(name, {}))}
    return table


def minimal_table(minimal_attack, attacks: Mapping[str, Any],
                  config: Mapping[str, Mapping[str, Any]]) -> Dict[str, Union[Dict[str, Any], Callable]]:
    """{name: settings or callable} of the run's minimal-perturbation attack, or {} for None.

    ``minimal_attack``: a name of the run's ``attacks`` (that attack: the same examples); a
    built-in attack's name (its settings under the config's table of that name); a callable
    ``attack(model, x, y)``; or a mapping of one name to settings or a callable. It is not one
    of the run's attacks: AA_W, "fooled_by", NS and the image grid never see it."""
    if minimal_attack is None:
        return {}
    if isinstance(minimal_attack, str):
        if minimal_attack in attacks:
            return {minimal_attack: attacks[minimal_attack]}
        if minimal_attack not in attack_lib.ATTACKS:
            raise ValueError(f"minimal_attack must be a built-in attack ({', '.join(attack_lib.ATTACKS)}), one of "
                             f"the run's attacks ({', '.join(attacks) or 'none'}), a callable or None, got "
                             f"{minimal_attack!r}")
    elif isinstance(minimal_attack, Mapping):
        if len(minimal_attack) != 1:
            raise ValueError(f"minimal_attack: a mapping must name one attack, got {len(minimal_attack)}")
    elif not callable(minimal_attack):
        raise TypeError(f"minimal_attack must be an attack name, a callable attack(model, x, y), a mapping "
                        f"{{name: settings}} or None, got {type(minimal_attack).__name__}")
    table = attack_table([minimal_attack] if isinstance(minimal_attack, str) else minimal_attack, config)
    (name, given), = table.items()
    if name in attacks and attacks[name] != given:
        raise ValueError(f"minimal_attack: {name!r} is also one of the run's attacks, with other settings; give "
                         f"it another name, or minimal_attack={name!r} to use the run's")
    return table


def _callable_name(attack) -> str:
    """The table name of an attack given as a callable (a name string stays itself)."""
    if not callable(attack):
        return attack
    fn = getattr(attack, "func", attack)  # functools.partial: its function
    return getattr(fn, "__name__", type(fn).__name__)


def attack_defaults(clip_values, seed: int) -> Dict[str, Any]:
    """What a run gives each built-in attack that accepts it, under the attack's own table
    (``robustx.attacks.get_attack(name, defaults, **table)``): the run's clip_values and
    seed, no progress bar."""
    return {"clip_values": clip_values, "progress": False, "seed": seed}


def landscape_settings(table: Mapping[str, Any], attacks: Mapping[str, Any], clip) -> Dict[str, Any]:
    """A [landscape] table with its defaults: n_images 2, span 2 x the first attack's eps
    (else 0.1 of the data range)."""
    first = next(iter(attacks.values()), {})
    eps = first.get("eps") if isinstance(first, Mapping) else None
    return {"n_images": 2, "span": 2 * eps if eps else 0.1 * (clip[1] - clip[0]), **table}


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
    if callable(value):  # an attack given as a callable: its qualified name (stable across processes)
        fn = getattr(value, "func", value)
        return f"callable {getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"
    return str(value)


# ------------------------------------------------------------------ checks before any work
class _Checked(Exception):
    """Raised by :class:`_Probe` at its first forward pass: the caller has checked its arguments."""


class _Probe(nn.Linear):
    """A one-layer model that stops whatever calls it at its first forward pass.

    The metric functions and attacks check all their arguments before their first forward
    pass, so calling one with the probe runs exactly its own checks and no work."""

    def __init__(self):
        super().__init__(1, 1)

    def forward(self, x):
        raise _Checked


def _probe(where: str, fn: Callable, *args, **kwargs) -> None:
    """``fn(*args, **kwargs)`` up to the probe's forward pass; its TypeError or ValueError is
    raised again with ``where`` (the config table, e.g. "[clever]") in front."""
    try:
        fn(*args, **kwargs)
    except _Checked:
        pass
    except TypeError as err:
        raise TypeError(f"{where} {err}") from None
    except ValueError as err:
        raise ValueError(f"{where} {err}") from None


def _target(table: str) -> Callable:
    return _function(config_sections()[table])


def check_settings(model: nn.Module, x1: torch.Tensor, y1: torch.Tensor, tables: Mapping[str, Mapping[str, Any]],
                   attacks: Mapping[str, Mapping[str, Any]], clip, seed: int, batch_size: int) -> None:
    """Every setting of the run checked, before any work, by the function it goes to: each
    metric function and attack is called on the first input ``x1`` with :class:`_Probe` as
    the model. ``layers`` and ``axis`` are checked against ``model`` itself; ``n_images`` here."""
    given = {"model": _Probe(), "x": x1, "y": y1, "x_adv": x1, "clip_values": clip, "seed": seed,
             "batch_size": batch_size, "progress": False}
    extra = {table: f.extra for table, f in _families_with_tables().items()} | _EXTRA_KEYS
    for table, settings in tables.items():
        keys = dict(settings)
        if "n_images" in extra.get(table, ()):
            checks.integer(keys.pop("n_images"), f"[{table}] n_images")
        if "layers" in keys or "axis" in keys:
            layers, axis = keys.pop("layers", None), keys.pop("axis", None)
            _probe(f"[{table}]", lambda: neuron_axes(resolve_layers(model, layers), axis))
        fn = _target(table)
        data = {k: v for k, v in given.items() if k in inspect.signature(fn).parameters}
        _probe(f"[{table}]", fn, **data, **keys)
    for name, settings in attacks.items():
        if callable(settings):  # the user's own attack: nothing of robustx's to check
            continue
        defaults = attack_defaults(clip, seed)
        _probe(f"[{name}]", lambda: attack_lib.get_attack(name, defaults, **settings)(given["model"], x1, y1))


def check_outputs(model: nn.Module, x1: torch.Tensor, y: torch.Tensor, device: torch.device) -> None:
    """One forward pass on the first input ``x1``: the model returns logits (1, K) with
    K >= 2, and the labels ``y`` are class indices below K."""
    with frozen_eval(model), torch.no_grad():
        out = model(x1.to(device))
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"model must return a tensor of logits, got {type(out).__name__}")
    if out.dim() != 2 or out.shape[0] != 1 or out.shape[1] < 2:
        raise ValueError(f"model must return logits of shape (N, K) with K >= 2 classes; for one input it "
                         f"returned shape {tuple(out.shape)}")
    checks.labels(y, y.shape[0], "data y", n_classes=out.shape[1])
