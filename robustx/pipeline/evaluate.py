"""``robustx.evaluate``: one call from a model and its data to a report of the whole suite.

The run: every attack's adversarial examples are made once per input batch and shared by
every metric that needs them; each model runs once per input set and feeds every pure
metric of :mod:`robustx.metrics`; the model-heavy metrics (CLEVER, DIV, eps-ENI, EBD,
corruptions, neuron sensitivity / uncertainty, coverage) run once each. Every finished
unit of work (an attack or a heavy metric over one input batch) is a row of the run's
SQLite store (:mod:`robustx.pipeline.store`), so a killed run resumes where it stopped and
gives the same report. A unit is keyed by what its result depends on (model weights, the
inputs and labels of its batch, its settings and seed), so a later run in the same folder
with more or fewer metrics or other settings reuses every unit whose key is unchanged
(``resume=True``); the report's run section counts the units reused and computed, and a
metric's seconds are those its units took to compute, also when they were read back.
Metrics whose inputs are missing (no defended model, no
surrogate, no profile data) are reported as skipped with the reason.

Mistakes stop a run before any work: every setting is checked, before the store is
created, by the function it goes to (:func:`_check_settings`). A metric that raises
while it runs is reported as failed with the reason and every other metric still runs;
an attack that raises fails the metrics that need its examples only.

Randomness: a batch's unit is seeded with ``seed`` plus the index of the batch's first
input, so results do not depend on how the work is split (or on where a run resumed).
"""
from __future__ import annotations

import contextlib
import inspect
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from robustx import attacks as attack_lib
from robustx import checks
from robustx import metrics as suite
from robustx.modelutil import chunks, frozen_eval, progress_bar, resolve_layers
from robustx.neurons import neuron_axes
from robustx.pipeline import distributed
from robustx.pipeline.report import MetricResult, Report, histogram_png, image_grid_png, layer_bars_png
from robustx.pipeline.store import ResultStore, StoreError, Stored, data_digest, json_digest, model_digest

__all__ = ["evaluate", "DEFAULT_ATTACKS", "config_sections"]

#: The white-box attack of a run when none is given: PGD L-inf, eps 8/255, 10 steps of 2/255.
DEFAULT_ATTACKS = {"pgd": {"eps": 8 / 255, "norm": "inf", "steps": 10, "step_size": 2 / 255}}

# Settings of the model-heavy metrics (a config table of the same name overrides them).
_DEFAULTS = {
    "clever": {"norm": 2, "radius": 2.0, "n_batches": 50, "n_samples": 64, "n_images": 20},
    "div": {"eps": 8 / 255, "norm": "inf", "steps": 10},
    "ebd": {"m": 10, "steps": 16, "bisection": 10},
    "eps-eni": {"epsilon": 8 / 255},
    "corruption": {},
    "coverage": {"sections": 10, "top_k": 2, "threshold": 0.5},
    "ns": {},
    "nu": {},
}
# config table -> the function its keys go to (attack tables go to the attack itself).
_TARGETS = {
    "clever": "robustx.clever:clever", "div": "robustx.divergence:divergence_bound",
    "ebd": "robustx.metrics.boundary:ebd", "eps-eni": "robustx.metrics.eni:eps_eni",
    "corruption": "robustx.metrics.corruption:corruption_errors", "coverage": "robustx.coverage:NeuronCoverage",
    "ns": "robustx.sensitivity:neuron_sensitivity", "nu": "robustx.sensitivity:neuron_uncertainty",
    "landscape": "robustx.landscape:input_landscape",
}
_EXTRA_KEYS = {"clever": {"n_images"}, "landscape": {"n_images"}}  # keys that evaluate itself reads
# arguments evaluate passes itself, so a config table may not set them
_DATA_ARGUMENTS = {"self", "model", "x", "y", "x_adv", "x_noisy", "clip_values", "seed", "batch_size", "progress"}
_ALIASES = {"clever": {"batch_size": "n_samples"}}  # ART's name for N_s, samples per batch
_TABLE_OF = {"CLEVER": "clever", "DIV": "div", "EBD": "ebd", "eps-ENI": "eps-eni", "mCE": "corruption",
             "rmCE": "corruption", "NS": "ns", "NU": "nu", **{m: "coverage" for m in suite.available("coverage")}}


def config_sections() -> Dict[str, str]:
    """Every config table evaluate accepts and the function its keys are passed to."""
    return {**_TARGETS, **{name: f"robustx.attacks:{name}" for name in attack_lib.ATTACKS}}


@dataclass
class _Run:
    """What every unit of one evaluation shares."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    store: ResultStore
    settings: Dict[str, Dict[str, Any]]
    attacks: Dict[str, Dict[str, Any]]
    batch_size: int
    seed: int
    clip_values: Tuple[float, float]
    progress: bool
    device: torch.device
    defended: Optional[nn.Module] = None
    surrogate: Optional[nn.Module] = None
    baseline: Optional[nn.Module] = None
    profile: Optional[torch.Tensor] = None
    figures: Dict[str, bytes] = field(default_factory=dict)
    _logits: Dict[Tuple[int, str], torch.Tensor] = field(default_factory=dict)
    _adversarial: Dict[Tuple[str, str], torch.Tensor] = field(default_factory=dict)
    timings: Dict[str, float] = field(default_factory=dict)  # seconds of the shared attacks
    channels_last: bool = False  # these two apply to the logits passes only (not attacks, not CLEVER)
    autocast: Optional[torch.dtype] = None
    digests: Dict[str, str] = field(default_factory=dict)  # "data", and each role's model ("model", ...) or "profile"
    reused: set = field(default_factory=set)  # units read from an earlier run / computed (and stored) by this one
    computed: set = field(default_factory=set)
    _batch_digests: Dict[int, str] = field(default_factory=dict)
    _credit: float = 0.0  # stored compute seconds of reused units, less the seconds spent reading them
    failures: Dict[str, str] = field(default_factory=dict)  # unit -> why it raised (asked again: raised again)
    failed_figures: Dict[str, str] = field(default_factory=dict)  # figure -> why it raised

    # ------------------------------------------------------------ shared tensors
    def batches(self) -> List[slice]:
        return list(chunks(self.x.shape[0], self.batch_size))

    def per_batch(self, key: str, fn: Callable[[slice, int], Dict[str, torch.Tensor]], desc: str,
                  settings: dict, roles: Sequence[str] = ("model",)) -> Dict[str, torch.Tensor]:
        """``fn(batch, seed)`` over every batch, each a stored unit (:meth:`unit`); the tensors
        concatenated in input order. With several processes each rank makes its own batches
        (i mod world size) and the results are gathered; only rank 0 reads and writes the store."""
        batches = self.batches()
        units = [self.unit(f"{key}/batch-{i:04d}", settings, roles, batch=i) for i in range(len(batches))]
        parts = {i: (found.tensors, None) for i, found in enumerate(map(self._reuse, units)) if found is not None}
        done = _from_rank0(set(parts))
        for i in progress_bar(distributed.owned(len(batches)), self.progress, desc):
            if i not in done:
                start = time.perf_counter()
                parts[i] = (fn(batches[i], self.seed + batches[i].start), time.perf_counter() - start)
                self._put(units[i], parts[i][0], {}, parts[i][1])
        merged = distributed.gather_in_order(parts)
        for i, (tensors, seconds) in merged.items():  # rank 0 keeps what the other ranks made
            if seconds is not None and units[i] not in self.computed:
                self._put(units[i], tensors, {}, seconds)
        return {name: torch.cat([p[name] for p, _ in merged.values()]) for name in merged[0][0]}

    def unit(self, label: str, settings: dict, roles: Sequence[str] = ("model",), batch: Optional[int] = None) -> str:
        """The store's name of a unit: ``label/<sha256>`` of what its result depends on: the
        digests of the ``roles`` ("model", "surrogate", "baseline", "profile"), of its batch's
        inputs and labels (the whole set when ``batch`` is None), its ``settings``, its seed
        (``seed`` plus the batch's first index) and the run's clip_values and batch_size."""
        first = 0 if batch is None else self.batches()[batch].start
        key = {"label": label, "roles": {r: self.digests[r] for r in roles}, "data": self._data_digest(batch),
               "settings": settings, "seed": self.seed + first, "clip_values": self.clip_values,
               "batch_size": self.batch_size}
        return f"{label}/{json_digest(_jsonable(key), label)}"

    def _data_digest(self, batch: Optional[int]) -> str:
        if batch is None:
            return self.digests["data"]
        if batch not in self._batch_digests:
            b = self.batches()[batch]
            self._batch_digests[batch] = data_digest(self.x[b], self.y[b])
        return self._batch_digests[batch]

    def _reuse(self, unit: str) -> Optional[Stored]:
        """The stored ``unit`` (rank 0; None elsewhere or when not stored). The first time a
        unit of an earlier run is read, :meth:`clock` gains its compute seconds instead of
        the seconds spent reading it."""
        if self.store is None:
            return None
        start = time.perf_counter()
        found = self.store.load(unit)
        if found is not None and unit not in self.reused | self.computed:
            self.reused.add(unit)
            self._credit += found.seconds - (time.perf_counter() - start)
        return found

    def _put(self, unit: str, tensors: Dict[str, torch.Tensor], meta: dict, seconds: float) -> None:
        if self.store is not None:
            self.store.put(unit, tensors, meta, seconds)
            self.computed.add(unit)

    def clock(self) -> float:
        """Seconds to time work with: wall time in which a reused unit counts as long as it took to compute."""
        return time.perf_counter() + self._credit

    def whole(self, key: str, fn: Callable[[], Tuple[Dict[str, torch.Tensor], dict]], settings: dict,
              roles: Sequence[str] = ("model",)):
        """A unit over the whole input set, made by rank 0 alone (other ranks get None)."""
        if self.store is None:
            return None, None
        unit = self.unit(key, settings, roles)
        found = self._reuse(unit)
        if found is None:
            start = time.perf_counter()
            tensors, meta = self._unless_failed(key, fn)
            self._put(unit, tensors, meta, time.perf_counter() - start)
            return self.store.get(unit)
        return found.tensors, found.meta

    def collective(self, key: str, fn: Callable[[], Tuple[Dict[str, torch.Tensor], dict]], settings: dict,
                   roles: Sequence[str] = ("model",)):
        """A unit every rank takes part in (``fn`` may all-reduce); rank 0 stores it."""
        unit = self.unit(key, settings, roles)
        found = self._reuse(unit)
        if _from_rank0(found is not None):
            return (found.tensors, found.meta) if found is not None else (None, None)
        start = time.perf_counter()
        tensors, meta = self._unless_failed(key, fn)
        self._put(unit, tensors, meta, time.perf_counter() - start)
        return tensors, meta

    def _unless_failed(self, unit: str, fn: Callable[[], Any]) -> Any:
        """``fn()``, unless ``unit`` (shared by several metrics) raised before: a failure is
        remembered and raised as :class:`_SharedFailure` naming the unit and the reason."""
        if unit not in self.failures:
            result, reason = _attempt(fn)
            if reason is None:
                return result
            self.failures[unit] = reason
        raise _SharedFailure(f"{unit} failed: {self.failures[unit]}")

    def adversarial(self, name: str, on: str = "model") -> torch.Tensor:
        """The examples of attack ``name`` made against the model (or the surrogate), made once
        (:class:`_SharedFailure` for every metric that asks if making them raised)."""
        if (name, on) not in self._adversarial:
            self._adversarial[(name, on)] = self._unless_failed(f"attack {name} on the {on}",
                                                                lambda: self._make_adversarial(name, on))
        return self._adversarial[(name, on)]

    def _make_adversarial(self, name: str, on: str) -> torch.Tensor:
        target = self.model if on == "model" else self.surrogate
        given = self.attacks[name]
        seeded = not callable(given) and "seed" in attack_lib.attack_settings(name)

        def make(b: slice, seed: int) -> Dict[str, torch.Tensor]:
            if callable(given):
                attack = given
            else:  # a table's own seed replaces the run's as the base of the batch seeds
                settings = dict(self._attack_settings(name))
                seed = seed - self.seed + settings.pop("seed", self.seed)
                attack = attack_lib.get_attack(name, **settings, **({"seed": seed} if seeded else {}))
            with frozen_eval(target):
                x_adv = attack(target, self.x[b].to(self.device), self.y[b].to(self.device))
            return {"x_adv": x_adv.detach().cpu()}

        return self.per_batch(f"attack/{name}@{on}", make, f"{name} on the {on}", self.attack_key(name),
                              roles=(on,))["x_adv"]

    def attack_key(self, name: str) -> Dict[str, Any]:
        """What the examples of attack ``name`` depend on besides model, inputs and seed (a
        callable: its qualified name)."""
        if callable(self.attacks[name]):
            return {"attack": name, "callable": _jsonable(self.attacks[name])}
        return {"attack": name, "settings": self._attack_settings(name)}

    def _attack_settings(self, name: str) -> Dict[str, Any]:
        return _attack_arguments(name, self.attacks[name], self.clip_values)

    def logits(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``net(x)`` in batches (cached per model and input set), float32, under the run's
        inference options: channels_last (the model's 4-D parameters converted for these
        passes, restored after) and autocast."""
        key = (id(net), f"{x.data_ptr()}:{tuple(x.shape)}")
        if key not in self._logits:
            layout = torch.channels_last if self.channels_last else torch.preserve_format
            autocast = torch.autocast(self.device.type, self.autocast, enabled=self.autocast is not None)
            with frozen_eval(net), torch.no_grad(), _parameter_layout(net, layout), autocast:
                self._logits[key] = torch.cat([net(_layout(x[b].to(self.device), layout)).float().cpu()
                                               for b in chunks(x.shape[0], self.batch_size)])
        return self._logits[key]

    @property
    def primary(self) -> Optional[str]:
        return next(iter(self.attacks), None)


def _attack_arguments(name: str, settings: Mapping[str, Any], clip_values) -> Dict[str, Any]:
    """The settings attack ``name`` is made with: the run's clip_values, no progress bar, then its own."""
    accepted = attack_lib.attack_settings(name)
    base = {"clip_values": clip_values, "progress": False}
    return {**{k: v for k, v in base.items() if k in accepted}, **settings}


# ------------------------------------------------------------------ failures
class _SharedFailure(Exception):
    """A unit several metrics share (an attack's examples, coverage) raised; its message is
    the whole reason."""


# Not isolated: the user's interrupt, and running out of memory (the next metric would too).
_NOT_ISOLATED = (MemoryError, torch.OutOfMemoryError)


def _attempt(fn: Callable[[], Any]) -> Tuple[Any, Optional[str]]:
    """``(fn(), None)``, or ``(None, "ExceptionType: message")`` if ``fn`` raised an Exception
    (KeyboardInterrupt and out-of-memory errors propagate). In a multi-process run every
    error propagates: a rank that went on would skip collectives its peers wait in."""
    if distributed.world()[1] > 1:
        return fn(), None
    try:
        return fn(), None
    except _NOT_ISOLATED:
        raise
    except _SharedFailure as err:
        return None, str(err)
    except Exception as err:  # the point: one metric's failure is reported, not fatal
        return None, f"{type(err).__name__}: {err}"


def _layout(t: torch.Tensor, layout: torch.memory_format) -> torch.Tensor:
    return t.to(memory_format=layout) if t.dim() == 4 else t


@contextlib.contextmanager
def _parameter_layout(net: nn.Module, layout: torch.memory_format):
    """The 4-D parameters of ``net`` in ``layout`` inside the block, the originals after."""
    saved = {p: p.data for p in net.parameters() if p.dim() == 4}
    for p, data in saved.items():
        p.data = _layout(data, layout)
    try:
        yield
    finally:
        for p, data in saved.items():
            p.data = data


# ------------------------------------------------------------------ the metrics
def _attacked(run: _Run):
    x_adv = run.adversarial(run.primary)
    clean, adv = run.logits(run.model, run.x), run.logits(run.model, x_adv)
    return x_adv, adv, suite.success_mask(clean, adv, run.y)


def _accuracy(run: _Run, name: str):
    if name == "CA":
        return suite.accuracy(run.logits(run.model, run.x), run.y), None, {}
    if name == "AA_B":
        x_adv = run.adversarial(run.primary, on="surrogate")
        return suite.accuracy(run.logits(run.model, x_adv), run.y), None, {"attack": run.primary, "surrogate": True}
    per_attack = {a: suite.accuracy(run.logits(run.model, run.adversarial(a)), run.y) for a in run.attacks}
    return min(per_attack.values()), None, {"per_attack": per_attack, "value": "worst case over the attacks"}


def _adversarial_metric(run: _Run, name: str):
    x_adv, adv, success = _attacked(run)
    x = run.x
    values = {
        "ALD_0": lambda: suite.ald(x, x_adv, success, 0, clip_values=run.clip_values),
        "ALD_2": lambda: suite.ald(x, x_adv, success, 2, clip_values=run.clip_values),
        "ALD_inf": lambda: suite.ald(x, x_adv, success, "inf", clip_values=run.clip_values),
        "ASS": lambda: suite.ass(x, x_adv, success, data_range=run.clip_values[1] - run.clip_values[0]),
        "PSD": lambda: suite.psd(x, x_adv, success),
        "ACAC": lambda: suite.acac(adv, success),
        "ACTC": lambda: suite.actc(adv, run.y, success),
        "NTE": lambda: suite.nte(adv, success),
        "RGB": lambda: suite.rgb(run.logits(run.model, suite.gaussian_blur_8bit(x_adv, 0.5, run.clip_values)), run.y, success),
        "RIC": lambda: suite.ric(run.logits(run.model, suite.jpeg_8bit(x_adv, 90, run.clip_values)), run.y, success),
    }
    return values[name](), None, {"attack": run.primary, "successful": int(success.sum())}


def _defense(run: _Run, name: str):
    utility = suite.defense_utility(run.logits(run.model, run.x), run.logits(run.defended, run.x), run.y)
    return utility[name], None, {}


def _corruption(run: _Run, name: str):
    from robustx.metrics.corruption import corruption_errors, mce, rmce

    settings = run.settings["corruption"]

    def errors_of(net: nn.Module, key: str) -> Dict[str, Tuple[float, ...]]:
        def compute():
            errs = corruption_errors(net, run.x, run.y, batch_size=run.batch_size, seed=run.seed,
                                     clip_values=run.clip_values, progress=run.progress, **settings)
            return {c: torch.tensor(v, dtype=torch.float64) for c, v in errs.items()}, {}
        tensors, _ = run.whole(f"metric/corruption-errors/{key}", compute, settings, roles=(key,))
        return {c: tuple(v.tolist()) for c, v in tensors.items()}

    errors = errors_of(run.model, "model")
    base = errors_of(run.baseline, "baseline") if run.baseline is not None else None
    detail = {"errors": {c: list(v) for c, v in errors.items()}, "baseline": base is not None}
    if name == "mCE":
        return mce(errors, base), None, detail
    clean = 1 - suite.accuracy(run.logits(run.model, run.x), run.y)
    base_clean = 1 - suite.accuracy(run.logits(run.baseline, run.x), run.y) if base is not None else None
    return rmce(errors, clean, base, base_clean), None, detail


def _clever(run: _Run, name: str):
    from robustx.clever import clever

    settings = dict(run.settings["clever"])
    n_images = min(settings.pop("n_images"), run.x.shape[0])

    def scores(b: slice, seed: int) -> Dict[str, torch.Tensor]:
        idx = torch.arange(run.x.shape[0])[b]
        idx = idx[idx < n_images]
        if idx.numel() == 0:
            return {"scores": torch.empty(0, dtype=torch.float64), "reliable": torch.empty(0, dtype=torch.bool)}
        res = clever(run.model, run.x[idx].to(run.device), clip_values=run.clip_values, seed=seed, progress=False,
                     **settings)
        return {"scores": res.scores.double().cpu(), "reliable": res.reliable.cpu()}

    out = run.per_batch("metric/CLEVER", scores, "CLEVER", run.settings["clever"])
    s = out["scores"]
    run.figures["CLEVER scores"] = histogram_png(s.tolist(), f"CLEVER (L{settings['norm']}, R = {settings['radius']})", "score")
    return float(s.mean()), s.tolist(), {"images": n_images, "unreliable_images": int((~out["reliable"]).sum())}


def _per_sample_mean(run: _Run, key: str, fn, settings: dict):
    values = run.per_batch(f"metric/{key}", lambda b, seed: {"v": fn(b, seed).double().cpu()}, key, settings)["v"]
    finite = values[~values.isnan()]
    return float(finite.mean()) if finite.numel() else float("nan"), values.tolist(), {"defined": int(finite.numel())}


def _div(run: _Run, name: str):
    from robustx.divergence import divergence_bound

    def fn(b, seed):
        return divergence_bound(run.model, run.x[b].to(run.device), clip_values=run.clip_values, seed=seed,
                                batch_size=run.batch_size, progress=False, **run.settings["div"]).per_sample
    return _per_sample_mean(run, "DIV", fn, run.settings["div"])


def _eni(run: _Run, name: str):
    from robustx.metrics.eni import eps_eni

    def fn(b, seed):
        return eps_eni(run.model, run.x[b].to(run.device), run.y[b].to(run.device), clip_values=run.clip_values,
                       seed=seed, batch_size=run.batch_size, progress=False, **run.settings["eps-eni"]).per_sample
    return _per_sample_mean(run, "eps-ENI", fn, run.settings["eps-eni"])


def _ebd(run: _Run, name: str):
    from robustx.metrics.boundary import ebd

    def compute():
        res = ebd(run.model, run.x.to(run.device), run.y.to(run.device), clip_values=run.clip_values, seed=run.seed,
                  batch_size=run.batch_size * 4, progress=run.progress, **run.settings["ebd"])
        return {"distances": res.distances.double().cpu(), "value": torch.tensor(res.value)}, {"censored": res.censored}

    tensors, meta = run.whole("metric/EBD", compute, run.settings["ebd"])
    return float(tensors["value"]), tensors["distances"].tolist(), meta


def _neurons(run: _Run, name: str):
    from robustx.sensitivity import neuron_sensitivity, neuron_uncertainty

    def compute():
        if name == "NS":
            scores = neuron_sensitivity(run.model, run.x, run.adversarial(run.primary), batch_size=run.batch_size,
                                        progress=run.progress, **run.settings["ns"])
        else:
            scores = neuron_uncertainty(run.model, run.x, batch_size=run.batch_size, progress=run.progress,
                                        **run.settings["nu"])
        return {layer: s.double().cpu() for layer, s in scores.items()}, {}

    key = {"ns": run.settings["ns"], **run.attack_key(run.primary)} if name == "NS" else run.settings["nu"]
    tensors, _ = run.whole(f"metric/{name}", compute, key)
    per_layer = {layer: float(s.mean()) for layer, s in tensors.items()}
    title = "neuron sensitivity" if name == "NS" else "neuron uncertainty"
    run.figures[f"{name}: {title} per layer"] = layer_bars_png(per_layer, f"{name} (mean per layer)")
    all_neurons = torch.cat([s.flatten() for s in tensors.values()])
    return float(all_neurons.mean()), None, {"per_layer": per_layer}


def _coverage(run: _Run, name: str):
    from robustx.coverage import NeuronCoverage

    def compute():
        cov = NeuronCoverage(run.model, batch_size=run.batch_size, progress=run.progress, **run.settings["coverage"])
        batches = run.batches()
        rows = torch.cat([torch.arange(run.x.shape[0])[batches[i]] for i in distributed.owned(len(batches))]
                         or [torch.zeros(0, dtype=torch.long)])
        with warnings.catch_warnings():  # without a profile the skip reasons say it
            warnings.filterwarnings("ignore", message="KMNC, NBC and SNAC need")
            if run.profile is not None:
                cov.profile(run.profile)
            cov.update(run.x[rows])
            distributed.all_reduce_coverage(cov)
            result = cov.result()
        values = {k: torch.tensor(float("nan") if v is None else float(v), dtype=torch.float64)
                  for k, v in result.to_dict().items() if k in suite.available("coverage")}
        layers = {layer: float(c.NC) for layer, c in result.layers.items()}
        return values, {"nc_per_layer": layers}

    roles = ("model", "profile") if run.profile is not None else ("model",)
    tensors, meta = run.collective("metric/coverage", compute, run.settings["coverage"], roles)
    if meta is None:
        return None, None, {}
    if meta["nc_per_layer"]:
        run.figures["NC per layer"] = layer_bars_png(meta["nc_per_layer"], "neuron coverage (NC) per layer")
    return float(tensors[name]), None, {"profiled": run.profile is not None}


_FAMILY_RUNNERS = {
    "accuracy": _accuracy, "imperceptibility": _adversarial_metric, "behaviour": _adversarial_metric,
    "defense": _defense, "corruption": _corruption, "coverage": _coverage, "neuron": _neurons,
}
_NAMED_RUNNERS = {"CLEVER": _clever, "DIV": _div, "eps-ENI": _eni, "EBD": _ebd}
# Whole-set metrics rank 0 computes alone in a multi-process run (the rest are sharded).
_RANK0_ONLY = {"mCE", "rmCE", "EBD", "NS", "NU"}


# need -> (the run's attribute that provides it, why the metric is skipped without it)
_PROVIDERS = {
    "adversarial examples": ("primary", "no attack given (attacks=)"),
    "defended model": ("defended", "no defended model given (defended=)"),
    "surrogate": ("surrogate", "no surrogate model given (surrogate=)"),
    "profile": ("profile", "no profile data given (profile=, e.g. training inputs)"),
}


def _skip_reason(run: _Run, info: suite.MetricInfo) -> Optional[str]:
    for need in sorted(info.needs & set(_PROVIDERS)):
        attribute, reason = _PROVIDERS[need]
        if getattr(run, attribute) is None:
            return reason
    return None


def _measure(run: _Run, name: str) -> MetricResult:
    info = suite.get(name)
    reason = _skip_reason(run, info)
    base = dict(name=name, higher_is_better=info.higher_is_better, family=info.family)
    if reason is not None:
        return MetricResult(value=None, skipped=reason, **base)
    if name in _RANK0_ONLY and distributed.world()[0] != 0:
        return MetricResult(value=None, skipped="computed by rank 0", **base)
    runner = _NAMED_RUNNERS.get(name) or _FAMILY_RUNNERS[info.family]
    start = run.clock()
    outcome, reason = _attempt(lambda: runner(run, name))
    if reason is not None:
        return MetricResult(value=None, failed=reason, seconds=run.clock() - start, **base)
    value, per_sample, detail = outcome
    if value is None:
        return MetricResult(value=None, skipped="stored by rank 0", **base)
    table = _TABLE_OF.get(name)
    settings = {**(run.settings.get(table, {}) if table else {}), **detail}
    return MetricResult(value=float(value), per_sample=per_sample, settings=_jsonable(settings),
                        seconds=run.clock() - start, **base)


def _jsonable(value):
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if callable(value):  # an attack given as a callable: its qualified name (stable across processes)
        fn = getattr(value, "func", value)
        return f"callable {getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"
    return str(value)


# ------------------------------------------------------------------ arguments
def _data(data) -> Tuple[torch.Tensor, torch.Tensor]:
    """(x, y) from a tensor pair, a Dataset of (x, y) items or a DataLoader."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
    elif isinstance(data, (torch.utils.data.DataLoader, torch.utils.data.Dataset)):
        loader = isinstance(data, torch.utils.data.DataLoader)
        parts = list(data) if loader else [data[i] for i in range(len(data))]
        if not parts:
            raise ValueError(f"data must hold at least one input, got an empty {type(data).__name__}")
        join = torch.cat if loader else torch.stack
        x, y = (join([torch.as_tensor(p[k]) for p in parts]) for k in (0, 1))
    else:
        raise TypeError(f"data must be a pair (x, y) of tensors, a Dataset or a DataLoader, got {type(data).__name__}")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"data x must have shape (N, ...) with N >= 1 inputs, got {tuple(x.shape)}")
    return x, checks.data_labels(y, x.shape[0], "data y")


_AUTOCAST = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def _autocast_dtype(value) -> Optional[torch.dtype]:
    """None, or the autocast dtype named by "bf16" / "fp16" (or given as the torch dtype)."""
    if value is None or value in (torch.bfloat16, torch.float16):
        return value
    if isinstance(value, str) and value in _AUTOCAST:
        return _AUTOCAST[value]
    raise ValueError(f"autocast must be None, 'bf16' or 'fp16', got {value!r}")


def _metric_names(metrics) -> List[str]:
    every = suite.available()
    if metrics == "all":
        return every
    names = [m.strip() for m in metrics.split(",")] if isinstance(metrics, str) else list(metrics)
    unknown = [m for m in names if m not in every]
    if unknown or not names:
        raise ValueError(f"metrics: unknown metric(s) {unknown}; available: {', '.join(every)}")
    return [m for m in every if m in names]


def _accepted(target: str) -> set:
    module, attr = target.split(":")
    fn = getattr(__import__(module, fromlist=[attr]), attr)
    return set(inspect.signature(fn).parameters) - _DATA_ARGUMENTS


def _check_config(config: Optional[Mapping[str, Mapping[str, Any]]], attack_names: Sequence[str]):
    """Validate a config (table -> keyword arguments) against the functions it feeds."""
    config = dict(config or {})
    sections = config_sections()
    for table, keys in config.items():
        if table not in sections:
            raise ValueError(f"config: unknown table [{table}]; tables: {', '.join(sorted(sections))}")
        if not isinstance(keys, Mapping):
            raise TypeError(f"config: [{table}] must be a table of keyword arguments, got {keys!r}")
        keys = {_ALIASES.get(table, {}).get(k, k): v for k, v in keys.items()}
        accepted = (set(attack_lib.attack_settings(table)) if table in attack_lib.ATTACKS
                    else _accepted(_TARGETS[table]) | _EXTRA_KEYS.get(table, set()))
        reserved = sorted((set(keys) - accepted) & _DATA_ARGUMENTS)
        if reserved:
            raise TypeError(f"config: [{table}] may not set {reserved}: evaluate passes them itself")
        unknown = sorted(set(keys) - accepted)
        if unknown:
            raise TypeError(f"config: [{table}] has key(s) {unknown} that {sections[table]} does not take")
        config[table] = keys
    return config


def _attack_table(attacks, config) -> Dict[str, Union[Dict[str, Any], Callable]]:
    """name -> settings of a built-in attack, or the callable ``attack(model, x, y)`` itself."""
    if attacks is None:
        attacks = {name: dict(settings) for name, settings in DEFAULT_ATTACKS.items()}
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
        table[name] = {**DEFAULT_ATTACKS.get(name, {}), **dict(settings), **dict(config.get(name, {}))}
    return table


def _callable_name(attack) -> str:
    """The table name of an attack given as a callable (a name string stays itself)."""
    if not callable(attack):
        return attack
    fn = getattr(attack, "func", attack)  # functools.partial: its function
    return getattr(fn, "__name__", type(fn).__name__)


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
    module, attr = _TARGETS[table].split(":")
    return getattr(__import__(module, fromlist=[attr]), attr)


def _check_settings(model: nn.Module, x: torch.Tensor, y: torch.Tensor, tables: Mapping[str, Mapping[str, Any]],
                    attacks: Mapping[str, Mapping[str, Any]], clip, seed: int, batch_size: int) -> None:
    """Every setting of the run checked, before any work, by the function it goes to: each
    metric function and attack is called on the first input with :class:`_Probe` as the
    model. ``layers`` and ``axis`` are checked against ``model`` itself; ``n_images`` here."""
    x1, y1 = x[:1], y[:1]
    given = {"model": _Probe(), "x": x1, "y": y1, "x_adv": x1, "clip_values": clip, "seed": seed,
             "batch_size": batch_size, "progress": False}
    for table, settings in tables.items():
        keys = dict(settings)
        if table in _EXTRA_KEYS:
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
        seeded = {"seed": seed} if "seed" in attack_lib.attack_settings(name) else {}
        arguments = {**_attack_arguments(name, settings, clip), **seeded}
        _probe(f"[{name}]", lambda: attack_lib.get_attack(name, **arguments)(given["model"], x1, y1))


def _check_outputs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> None:
    """One forward pass on the first input: the model returns logits (1, K) with K >= 2,
    and every label is a class index below K."""
    with frozen_eval(model), torch.no_grad():
        out = model(x[:1].to(device))
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"model must return a tensor of logits, got {type(out).__name__}")
    if out.dim() != 2 or out.shape[0] != 1 or out.shape[1] < 2:
        raise ValueError(f"model must return logits of shape (N, K) with K >= 2 classes; for one input it "
                         f"returned shape {tuple(out.shape)}")
    checks.labels(y, y.shape[0], "data y", n_classes=out.shape[1])


def evaluate(
    model: nn.Module,
    data,
    *,
    metrics: Union[str, Sequence[str]] = "all",
    attacks=None,
    defended: Optional[nn.Module] = None,
    surrogate: Optional[nn.Module] = None,
    baseline: Optional[nn.Module] = None,
    profile: Optional[torch.Tensor] = None,
    config: Optional[Mapping[str, Mapping[str, Any]]] = None,
    out: Union[str, Path, None] = None,
    resume: bool = False,
    seed: int = 0,
    device=None,
    batch_size: int = 256,
    clip_values: Tuple[float, float] = (0.0, 1.0),
    progress: bool = True,
    name: str = "model",
    channels_last: bool = False,
    autocast=None,
    _resume_hint: str = "resume=True",
) -> Report:
    """Evaluate ``model`` on ``data`` with every metric in ``metrics`` and return the Report.

    ``data``: a pair (x, y) of tensors, a Dataset or a DataLoader of (x, y), real inputs in
    ``clip_values``; labels are integers, or floats that are whole numbers (a fractional
    label is refused, never truncated). ``metrics``: "all", or names of
    :func:`robustx.metrics.available`.
    ``attacks``: attack names ("pgd", "fgsm", "autoattack", ...), or a mapping name -> settings
    (:func:`robustx.attacks.get_attack`; default :data:`DEFAULT_ATTACKS`) or name -> a callable
    ``attack(model, x, y) -> x_adv``, or a list of names and callables; the first is the
    one the metrics of adversarial examples use; AA_W is the worst case over all of them.
    A callable is identified in the run (and on resume) by its qualified name.
    ``defended``: a defended version of the model (CAV, CRR, CSR, CCV, COS);
    ``surrogate``: a model to transfer the first attack's examples from (AA_B);
    ``baseline``: the reference model of mCE / rmCE (without one, unnormalised);
    ``profile``: inputs (e.g. training data) giving the neurons' ranges for KMNC / NBC /
    SNAC. ``config``: table -> keyword arguments of the function it names
    (:func:`config_sections`), e.g. ``{"clever": {"n_batches": 20}, "pgd": {"eps": 0.1}}``.
    ``out``: the run folder (``store.sqlite``, ``report.json``, ``report.html``); with
    ``resume=True`` a run of the same model and data reuses every finished unit whose key is
    unchanged (a killed run continues; more or fewer metrics, or changed settings, recompute
    only the units they change), and a different model or data is refused. Without it, a
    folder whose store holds finished units is refused. ``channels_last`` (model and inputs in
    that memory format) and ``autocast`` ("bf16" or "fp16": :func:`torch.autocast`) apply to
    the forward passes that give the logits only, never to attacks or CLEVER's gradients;
    both are part of the run's identity.

    Every argument and setting is checked before any work and before ``out`` is touched
    (TypeError / ValueError naming it; a config table's in the form "[clever] n_images ...").
    A metric that raises while it runs does not stop the run: it is reported as failed
    (``MetricResult.failed``: "ExceptionType: message"; :attr:`Report.failed` lists them),
    every other metric keeps its value, and evaluate warns (RuntimeWarning) and returns
    the Report. KeyboardInterrupt and out-of-memory errors stop the run, and so does any
    error of a multi-process run (its ranks must stay in step).
    ``_resume_hint``: how messages name ``resume=True`` (the command line passes "--resume").
    """
    checks.model(model)
    x, y = _data(data)
    names = _metric_names(metrics)
    clip = checks.clip_range(clip_values)
    x = checks.images(x, "data x", clip)
    seed = checks.seed(seed)
    batch_size = checks.integer(batch_size, "batch_size")
    autocast = _autocast_dtype(autocast)
    if not isinstance(channels_last, bool):
        raise TypeError(f"channels_last must be a bool, got {channels_last!r}")
    for role, net in (("defended", defended), ("surrogate", surrogate), ("baseline", baseline)):
        if net is not None:
            checks.model(net, role)
    config = _check_config(config, attack_lib.ATTACKS)
    attack_table = _attack_table(attacks, config)
    settings = {table: {**defaults, **config.get(table, {})} for table, defaults in _DEFAULTS.items()}
    landscape = {"landscape": _landscape_settings(config["landscape"], attack_table, clip)} \
        if "landscape" in config else {}
    dev = checks.device(device, model)
    _check_outputs(model, x, y, dev)
    _check_settings(model, x, y, {**settings, **landscape}, attack_table, clip, seed, batch_size)
    identity = {"settings": settings, "attacks": attack_table, "seed": seed, "batch_size": batch_size,
                "clip_values": list(clip), "roles": [r for r, n in (("defended", defended), ("surrogate", surrogate),
                                                                    ("baseline", baseline)) if n is not None]}
    if channels_last or autocast is not None:  # runs without them keep their ids
        identity["inference"] = {"channels_last": channels_last, "autocast": str(autocast)}
    profile = checks.images(profile, "profile") if profile is not None else None
    digests = _digests(x, y, profile, model=model, defended=defended, surrogate=surrogate, baseline=baseline)
    rid = json_digest(_jsonable({"digests": digests, "metrics": sorted(names), "settings": identity}))
    rank, size = distributed.world()
    distributed.agree(rid, "the run (model, data, metrics, settings)")
    n_batches = len(list(chunks(x.shape[0], batch_size)))
    if size > n_batches:
        raise ValueError(f"world size {size} is larger than the data: {x.shape[0]} inputs make only {n_batches} "
                         f"batches of batch_size={batch_size}")
    folder = Path(out) if out is not None else None
    if folder is None and rank == 0:
        folder = Path(tempfile.mkdtemp(prefix="robustx-run-"))
    start = time.perf_counter()
    store = _open_store(folder, digests, resume, _resume_hint)
    try:
        run = _Run(model, x, y, store, settings, attack_table, batch_size, seed, clip, progress, dev,
                   defended, surrogate, baseline, profile, channels_last=channels_last, autocast=autocast,
                   digests=digests)
        _make_shared_examples(run, names)
        results = {m: _measure(run, m) for m in progress_bar(names, progress and rank == 0, "metrics")}
        if (run.primary, "model") in run._adversarial:
            run.figures["adversarial examples"] = image_grid_png(x[:8], run.adversarial(run.primary)[:8])
        if landscape and rank == 0:
            _, reason = _attempt(lambda: _landscape_figures(run, landscape["landscape"]))
            if reason is not None:
                run.failed_figures["landscape"] = reason
    finally:
        if store is not None:
            store.close()
    report = Report(metrics=results, figures=run.figures, run=_jsonable({
        "id": rid, "model": name, "inputs": int(x.shape[0]), "input_shape": list(x.shape[1:]), "seed": seed,
        "attacks": attack_table, "seconds": time.perf_counter() - start, "torch": torch.__version__,
        "device": str(dev), "processes": size, "attack_seconds": run.timings,
        "inference": identity.get("inference", {}), "units_reused": len(run.reused),
        "units_computed": len(run.computed), "failed_figures": run.failed_figures}))
    if run.reused and progress and rank == 0:
        print(f"robustx: reused {len(run.reused)} finished units from {folder}, computed {len(run.computed)}",
              file=sys.stderr)
    if rank == 0:
        report.inputs = _per_input(run)
    if out is not None and rank == 0:
        report.save(folder)
    if rank == 0 and (report.failed or run.failed_figures):
        failed = [*report.failed, *(f"{title} figures" for title in run.failed_figures)]
        warnings.warn(f"evaluate: {', '.join(failed)} failed; report.failed and report.run['failed_figures'] give "
                      "the reasons", RuntimeWarning, stacklevel=2)
    return distributed.gather_in_order({0: report} if rank == 0 else {})[0]


def _per_input(run: _Run) -> Dict[str, list]:
    """The per-input columns of the report: label, clean prediction and the attacks whose
    example the model misclassifies ("fooled_by", names joined by ";")."""
    made = [a for a in run.attacks if (a, "model") in run._adversarial]
    wrong = {a: (run.logits(run.model, run.adversarial(a)).argmax(1) != run.y).tolist() for a in made}
    columns = {"label": run.y.tolist(), "prediction": run.logits(run.model, run.x).argmax(1).tolist()}
    if made:
        columns["fooled_by"] = [";".join(a for a in made if wrong[a][i]) for i in range(run.x.shape[0])]
    return columns


_FINGERPRINT = {"model": "model weights", "data": "data (inputs or labels)", "profile": "profile data",
                "defended": "defended model weights", "surrogate": "surrogate model weights",
                "baseline": "baseline model weights"}


def _digests(x: torch.Tensor, y: torch.Tensor, profile: Optional[torch.Tensor], **roles: Optional[nn.Module]):
    """The digests of what a run is made of: "data" (x and y), "profile", and each role's
    model that is given (each module hashed once, whatever roles it plays)."""
    by_module: Dict[int, str] = {}
    digests = {"data": data_digest(x, y)}
    if profile is not None:
        digests["profile"] = data_digest(profile)
    for role, net in roles.items():
        if net is not None:
            if id(net) not in by_module:
                by_module[id(net)] = model_digest(net)
            digests[role] = by_module[id(net)]
    return digests


def _open_store(folder: Optional[Path], digests: Dict[str, str], resume: bool,
                resume_hint: str = "resume=True") -> Optional[ResultStore]:
    """Rank 0 opens the store (keyed by the run's model and data digests); every rank raises
    rank 0's error if it could not."""
    store, error = None, None
    if distributed.world()[0] == 0:
        try:
            store = ResultStore.open(folder, {_FINGERPRINT[k]: v for k, v in digests.items()}, resume=resume,
                                     resume_hint=resume_hint)
        except (ValueError, StoreError) as err:
            error = err
    error = _from_rank0(error)
    if error is not None:
        raise error
    return store


def _from_rank0(value):
    """Rank 0's ``value`` on every rank."""
    return distributed.gather_in_order({0: value} if distributed.world()[0] == 0 else {})[0]


def _landscape_settings(table: Mapping[str, Any], attacks: Mapping[str, Mapping[str, Any]], clip) -> Dict[str, Any]:
    """A [landscape] table with its defaults: n_images 2, span 2 x the first attack's eps
    (else 0.1 of the data range)."""
    first = next(iter(attacks.values()), {})
    eps = first.get("eps") if isinstance(first, Mapping) else None
    return {"n_images": 2, "span": 2 * eps if eps else 0.1 * (clip[1] - clip[0]), **table}


def _landscape_figures(run: _Run, settings: Dict[str, Any]) -> None:
    """Loss-surface contour and 3-D plots around the first inputs (Yu et al.), when the config
    has a [landscape] table (keys: n_images and input_landscape's; see :func:`_landscape_settings`)."""
    from robustx.landscape import input_landscape

    settings = dict(settings)
    n = min(settings.pop("n_images"), run.x.shape[0])
    land = input_landscape(run.model, run.x[:n].to(run.device), run.y[:n].to(run.device), clip_values=run.clip_values,
                           seed=run.seed, progress=False, **settings)
    with tempfile.TemporaryDirectory() as folder:
        for kind in ("contour", "surface"):
            path = land.plot(Path(folder) / f"{kind}.png", kind=kind, index=list(range(n)))
            run.figures[f"{land.surface} landscape ({kind})"] = path.read_bytes()


def _make_shared_examples(run: _Run, names: Sequence[str]) -> None:
    """Every attack's examples (and the transferred ones) once, on every rank, before the
    metrics that share them (making them is collective in a multi-process run)."""
    needs = set().union(*(suite.get(m).needs for m in names))
    if "adversarial examples" not in needs:
        return
    for attack in run.attacks:
        start = run.clock()
        with contextlib.suppress(_SharedFailure):  # the metrics that need it fail with the reason
            run.adversarial(attack)
        run.timings[f"attack {attack}"] = run.clock() - start
    if "AA_B" in names and run.surrogate is not None and run.primary is not None:
        start = run.clock()
        with contextlib.suppress(_SharedFailure):
            run.adversarial(run.primary, on="surrogate")
        run.timings[f"attack {run.primary} on the surrogate"] = run.clock() - start
