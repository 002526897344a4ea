"""How ``robustx.evaluate`` streams each metric: one :class:`Family` per group of metrics.

A family states what evaluate needs to run its metrics over a data set batch by batch:
its config ``table``, its ``defaults`` and the function (``target``) whose keyword
arguments the table holds, and three functions (compare torchmetrics' ``Metric``):

- ``update(batch, settings, name)``: one batch -> the metric's partial state, a dict of
  tensors (per-sample values and/or sufficient statistics); it calls the pure functions
  of :mod:`robustx.metrics` and the method modules;
- ``merge(states)``: the states of every batch, in input order -> one state; exact and
  associative (concatenation, sums of counts, OR, weighted sums);
- ``compute(state, settings, name)``: the merged state -> (value, per-sample values or
  None, details).

``batch`` (see :class:`robustx.pipeline.run.Batch`) gives the batch's inputs ``x``,
labels ``y``, ``seed`` (the run's seed plus the batch's first input index), the shared
``logits(role, x)`` and ``adversarial(attack, on)`` of the batch (made once per batch for
every metric), ``n_inputs`` (of the whole set), ``memo(key, fn)`` for other shared work,
and the run's ``net(role)``, ``attacks``, ``primary`` (the first attack), ``minimal`` (the
minimal-perturbation attack's name), ``clip_values``, ``batch_size`` and ``device``.

The metric's registry entry (:mod:`robustx.metrics.registry`) names its family; adding a
metric to an existing family is one registry entry and one line of the family's table.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, Optional, Tuple

import torch

from robustx.clever import CLEVER_DEFAULTS
from robustx.metrics import registry
from robustx.metrics.accuracy import success_mask
from robustx.metrics.behaviour import acac_per_sample, actc_per_sample, nte_per_sample, still_adversarial
from robustx.metrics.imperceptibility import ald_per_sample, psd_per_sample, ssim
from robustx.metrics.transforms import gaussian_blur_8bit, jpeg_8bit

__all__ = ["Family", "FAMILIES", "concatenate", "add", "union", "weighted_mean", "clever_rows", "examples_attack"]

State = Dict[str, torch.Tensor]
Result = Tuple[Optional[float], Optional[List[float]], Dict[str, Any]]


# ------------------------------------------------------------------ merges (exact, associative)
def concatenate(states: List[State]) -> State:
    """Per-sample tensors of consecutive batches, concatenated in input order."""
    return {k: torch.cat([s[k] for s in states]) for k in states[0]}


def add(states: List[State]) -> State:
    """Sums and counts: element-wise sums (float64 or integer states)."""
    return {k: torch.stack([s[k] for s in states]).sum(0) for k in states[0]}


def union(states: List[State]) -> State:
    """Bitmaps OR-ed; integer counts added; "patterns" (digest rows) concatenated."""
    out: State = {}
    for k in states[0]:
        parts = [s[k] for s in states]
        if k == "patterns":
            out[k] = torch.cat(parts)
        elif parts[0].dtype == torch.bool:
            out[k] = torch.stack(parts).any(0)
        else:
            out[k] = torch.stack(parts).sum(0)
    return out


@dataclass(frozen=True)
class Family:
    """The streaming definition of a group of metrics (see the module docstring)."""

    name: str
    update: Callable[[Any, Dict[str, Any], str], State]
    compute: Callable[[State, Dict[str, Any], str], Result]
    merge: Callable[[List[State]], State] = concatenate
    table: Optional[str] = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    target: Optional[str] = None  # "module:attribute" whose keyword arguments the table holds
    extra: FrozenSet[str] = frozenset()  # table keys the family reads itself


def weighted_mean(value: float, count: int) -> State:
    """The state of a mean over ``count`` inputs of a batch: merged by :func:`add`, the
    mean over every batch is sum(value * count) / sum(count) (NaN values of empty batches
    carry no weight)."""
    value = 0.0 if count == 0 or math.isnan(value) else value
    return {"sum": torch.tensor([value * count], dtype=torch.float64),
            "count": torch.tensor([count], dtype=torch.long)}


def _mean_of(state: State) -> Tuple[float, int]:
    count = int(state["count"].sum())
    return (float(state["sum"].sum() / count) if count else math.nan), count


# ------------------------------------------------------------------ accuracy
def _correct(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return logits.argmax(1).cpu() == y.cpu()


def _accuracy_update(batch, settings, name: str) -> State:
    if name == "CA":
        return {"correct": _correct(batch.logits("model"), batch.y)}
    if name == "AA_B":
        return {"correct": _correct(batch.logits("model", batch.adversarial(batch.primary, "surrogate")), batch.y)}
    state = {f"correct:{a}": _correct(batch.logits("model", batch.adversarial(a)), batch.y) for a in batch.attacks}
    state["robust"] = torch.stack(list(state.values())).all(0)
    return state


def _accuracy_compute(state, settings, name: str) -> Result:
    if name != "AA_W":
        correct = state["correct"]
        return float(correct.double().mean()), correct.double().tolist(), {}
    robust = state["robust"]
    per_attack = {k.split(":", 1)[1]: float(v.double().mean()) for k, v in state.items() if k.startswith("correct:")}
    return float(robust.double().mean()), robust.double().tolist(), {
        "per_attack": per_attack, "value": "per input: robust only if every attack failed on it"}


# ------------------------------------------------------------------ means over the successful examples
def examples_attack(batch, name: str) -> str:
    """The attack whose examples metric ``name`` averages over: the run's minimal-perturbation
    attack for the metrics that need "minimal adversarial examples" (ALD...PSD, ACAC, ACTC,
    NTE), else the run's primary attack (RGB, RIC)."""
    return batch.minimal if "minimal adversarial examples" in registry.get(name).needs else batch.primary


def _per_sample(batch, name: str, x_adv: torch.Tensor, adv: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The per-example term of metric ``name`` on the examples of S (mask ``s``)."""
    x, clip = batch.x, batch.clip_values
    if name.startswith("ALD_"):
        return ald_per_sample(x[s], x_adv[s], name[4:], clip_values=clip)
    if name == "ASS":
        return ssim(x[s], x_adv[s], data_range=clip[1] - clip[0])
    if name == "PSD":
        return psd_per_sample(x[s], x_adv[s], data_range=clip[1] - clip[0])
    if name == "ACAC":
        return acac_per_sample(adv[s])
    if name == "ACTC":
        return actc_per_sample(adv[s], batch.y[s])
    if name == "NTE":
        return nte_per_sample(adv[s])
    transform = (lambda t: gaussian_blur_8bit(t, 0.5, clip)) if name == "RGB" else (
        lambda t: jpeg_8bit(t, 90, clip))
    return still_adversarial(batch.logits("model", transform(x_adv))[s], batch.y[s]).double()


def _adversarial_update(batch, settings, name: str) -> State:
    """Per input: the metric's term where the input is in S (correct when clean, fooled by
    the metric's attack), NaN elsewhere."""
    x_adv = batch.adversarial(examples_attack(batch, name))
    adv = batch.logits("model", x_adv)
    s = success_mask(batch.logits("model"), adv, batch.y)
    values = torch.full((batch.x.shape[0],), math.nan, dtype=torch.float64)
    if bool(s.any()):
        values[s] = _per_sample(batch, name, x_adv, adv, s).double().cpu()
    return {"values": values}


def _over_s_compute(state, settings, name: str) -> Result:
    """Mean over S of the per-input terms (NaN outside S); details: |S| ("successful")."""
    values = state["values"]
    inside = ~values.isnan()
    value = float(values[inside].mean()) if bool(inside.any()) else math.nan
    return value, values.tolist(), {"successful": int(inside.sum())}


def _mean_compute(what: str):
    def compute(state, settings, name: str) -> Result:
        value, count = _mean_of(state)
        return value, None, {what: count}
    return compute


# ------------------------------------------------------------------ defense utility
def _defense_update(batch, settings, name: str) -> State:
    from robustx.metrics.defense import defense_utility

    logits_o, logits_d = batch.logits("model"), batch.logits("defended")
    both = (_correct(logits_o, batch.y) & _correct(logits_d, batch.y)).sum()
    count = int(both) if name in ("CCV", "COS") else batch.x.shape[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        value = defense_utility(logits_o, logits_d, batch.y)[name] if count else math.nan
    return weighted_mean(value, count)


# ------------------------------------------------------------------ corruptions
def _corruption_update(batch, settings, name: str) -> State:
    from robustx.metrics.corruption import corruption_errors

    def errors(role: str) -> torch.Tensor:
        def run():
            rates = corruption_errors(batch.net(role), batch.x, batch.y, batch_size=batch.batch_size,
                                      seed=batch.run_seed, offset=batch.start, clip_values=batch.clip_values,
                                      progress=False, **settings)
            return {c: torch.tensor(v, dtype=torch.float64) * batch.x.shape[0] for c, v in rates.items()}
        return batch.memo(f"corruption errors of the {role}", run)

    state = {f"wrong:{c}": v for c, v in errors("model").items()}
    state["n"] = torch.tensor(batch.x.shape[0], dtype=torch.float64)
    state["shape"] = torch.tensor(batch.x.shape[1:], dtype=torch.float64) * batch.x.shape[0]  # sums to n x shape
    state["clean_wrong"] = (~_correct(batch.logits("model"), batch.y)).sum().double()
    if batch.has("baseline"):
        state.update({f"base:{c}": v for c, v in errors("baseline").items()})
        state["base_clean_wrong"] = (~_correct(batch.logits("baseline"), batch.y)).sum().double()
    return state


def _corruption_compute(state, settings, name: str) -> Result:
    from robustx.metrics.corruption import corruption_score

    n = state["n"]
    errors = {k.split(":", 1)[1]: tuple((v / n).tolist()) for k, v in state.items() if k.startswith("wrong:")}
    base = {k.split(":", 1)[1]: tuple((v / n).tolist()) for k, v in state.items() if k.startswith("base:")} or None
    shape = tuple((state["shape"] / n).round().long().tolist())  # each batch added n_b x its input shape
    score = corruption_score(errors, shape, relative=name == "rmCE",
                             clean_error=float(state["clean_wrong"] / n), base_errors=base,
                             base_clean_error=float(state["base_clean_wrong"] / n) if base is not None else None)
    return score.value, None, {"value": score.name, "normalisation": score.normalisation, "baseline": base is not None,
                               "errors": {c: list(v) for c, v in errors.items()}}


# -------------------------------------------------- per-input values (DIV, eps-ENI's terms, EBD, CLEVER)
def _per_input_compute(state, settings, name: str) -> Result:
    values = state["values"]
    finite = values[~values.isnan()]
    value = float(finite.mean()) if finite.numel() else math.nan
    return value, values.tolist(), {"defined": int(finite.numel())}


def _div_update(batch, settings, name: str) -> State:
    from robustx.divergence import divergence_bound

    res = divergence_bound(batch.net("model"), batch.x.to(batch.device), clip_values=batch.clip_values,
                           seed=batch.seed, batch_size=batch.batch_size, progress=False, **settings)
    return {"values": res.per_sample.double().cpu()}


def _eni_update(batch, settings, name: str) -> State:
    """The platform's per-input terms on the primary attack's examples (untargeted: the
    adversarial loss at the labels), from the batch's shared logits."""
    from robustx.metrics.eni import eni_terms

    x_adv = batch.adversarial(batch.primary)
    loss_change, distance = eni_terms(batch.logits("model"), batch.logits("model", x_adv), batch.x, x_adv, batch.y)
    return {"loss_change": loss_change, "distance": distance}


def _eni_compute(state, settings, name: str) -> Result:
    """The platform's eps-ENI of the whole set: the set-wide sum and largest distance."""
    from robustx.metrics.eni import eni_from_terms

    distance = state["distance"]
    return eni_from_terms(state["loss_change"], distance), None, {
        "inputs": distance.numel(), "largest_distance": float(distance.max()),
        "loss_change_sum": float(state["loss_change"].sum())}


def _eni_noise_update(batch, settings, name: str) -> State:
    from robustx.metrics.eni import eps_eni_noise

    res = eps_eni_noise(batch.net("model"), batch.x.to(batch.device), batch.y.to(batch.device),
                        clip_values=batch.clip_values, seed=batch.seed, batch_size=batch.batch_size, progress=False,
                        **settings)
    return {"values": res.per_sample.double().cpu()}


def _ebd_update(batch, settings, name: str) -> State:
    from robustx.metrics.boundary import ebd

    res = ebd(batch.net("model"), batch.x.to(batch.device), batch.y.to(batch.device), clip_values=batch.clip_values,
              seed=batch.seed, batch_size=batch.batch_size * 4, progress=False, **settings)
    with warnings.catch_warnings():  # a batch whose inputs are all censored has no weight
        warnings.simplefilter("ignore", RuntimeWarning)
        value = res.value
    return {"distances": res.per_sample.double().cpu(), **weighted_mean(value, res.averaged),
            "censored": torch.tensor([res.censored], dtype=torch.long)}


def _ebd_merge(states: List[State]) -> State:
    per_input = concatenate([{"distances": s["distances"]} for s in states])
    return {**per_input, **add([{k: s[k] for k in ("sum", "count", "censored")} for s in states])}


def _ebd_compute(state, settings, name: str) -> Result:
    """Mean distance moved over the inputs that flip; with any censored (never flipped
    within reach) input the mean is a lower bound."""
    value, averaged = _mean_of(state)
    censored = int(state["censored"].sum())
    return value, state["distances"].tolist(), {"averaged": averaged, "censored": censored,
                                                "lower_bound": censored > 0}


def clever_rows(n_inputs: Optional[int], n_images: int) -> List[int]:
    """The inputs CLEVER scores: ``n_images`` spread evenly over the set (input k N / n for
    k < n), so that they fall in many batches (and on every rank) and cover the whole set;
    the first ``n_images`` when the set's size N is unknown (an unsized DataLoader)."""
    if n_inputs is None:
        return list(range(n_images))
    n = min(n_images, n_inputs)
    return [k * n_inputs // n for k in range(n)]


def _clever_update(batch, settings, name: str) -> State:
    from robustx.clever import clever

    settings = dict(settings)
    end = batch.start + batch.x.shape[0]
    rows = [i - batch.start for i in clever_rows(batch.n_inputs, settings.pop("n_images")) if batch.start <= i < end]
    values = torch.full((batch.x.shape[0],), math.nan, dtype=torch.float64)
    reliable = torch.ones(batch.x.shape[0], dtype=torch.bool)
    if rows:
        res = clever(batch.net("model"), batch.x[rows].to(batch.device), clip_values=batch.clip_values,
                     seed=batch.seed, progress=False, **settings)
        values[rows], reliable[rows] = res.per_sample.double().cpu(), res.reliable.cpu()
    return {"values": values, "reliable": reliable}


def _clever_compute(state, settings, name: str) -> Result:
    """Mean score over the scored inputs; per input the score, NaN where not scored."""
    values = state["values"]
    scored = ~values.isnan()
    return float(values[scored].mean()), values.tolist(), {"images": int(scored.sum()),
                                                           "unreliable_images": int((~state["reliable"]).sum())}


# ------------------------------------------------------------------ neurons
def _ns_update(batch, settings, name: str) -> State:
    from robustx.sensitivity import neuron_sensitivity

    scores = neuron_sensitivity(batch.net("model"), batch.x, batch.adversarial(batch.primary),
                                batch_size=batch.batch_size, progress=False, **settings)
    n = batch.x.shape[0]
    return {**{f"layer:{k}": v.double() * n for k, v in scores.items()}, "n": torch.tensor(float(n))}


def _layer_means_compute(state, settings, name: str) -> Result:
    n = state["n"]
    per_neuron = {k.split(":", 1)[1]: v / n for k, v in state.items() if k.startswith("layer:")}
    per_layer = {layer: float(s.mean()) for layer, s in per_neuron.items()}
    return float(torch.cat([s.flatten() for s in per_neuron.values()]).mean()), None, {"per_layer": per_layer}


def _nu_update(batch, settings, name: str) -> State:
    """Each neuron's (count, mean, M2) over this batch's primary attack examples (NU, the
    platform's inputs) or its clean inputs (NU_clean)."""
    from robustx.sensitivity import neuron_moments

    x = batch.x if name == "NU_clean" else batch.adversarial(batch.primary)
    return neuron_moments(batch.net("model"), x, batch_size=batch.batch_size, **settings)


def _nu_merge(states: List[State]) -> State:
    from robustx.sensitivity import merge_moments

    return merge_moments(states)


def _nu_compute(state, settings, name: str) -> Result:
    from robustx.sensitivity import moments_uncertainty

    per_layer_neurons = moments_uncertainty(state)
    per_layer = {layer: float(s.mean()) for layer, s in per_layer_neurons.items()}
    return (float(torch.cat([s.flatten() for s in per_layer_neurons.values()]).mean()), None,
            {"per_layer": per_layer})


# ------------------------------------------------------------------ coverage
def _coverage_update(batch, settings, name: str) -> State:
    return batch.memo("metric/coverage", lambda: batch.coverage_state(settings))


def _coverage_compute(state, settings, name: str) -> Result:
    from robustx.coverage import coverage_from_state

    result = coverage_from_state(state, settings)
    value = result.to_dict()[name]
    return (math.nan if value is None else float(value)), None, {
        "nc_per_layer": {layer: float(c.NC) for layer, c in result.layers.items()}}


FAMILIES: Dict[str, Family] = {f.name: f for f in (
    Family("accuracy", _accuracy_update, _accuracy_compute),
    Family("adversarial means", _adversarial_update, _over_s_compute),
    Family("defense", _defense_update, _mean_compute("inputs"), add),
    Family("corruption", _corruption_update, _corruption_compute, add, table="corruption",
           target="robustx.metrics.corruption:corruption_errors"),
    Family("DIV", _div_update, _per_input_compute, table="div", defaults={"eps": 8 / 255, "norm": "inf", "steps": 10},
           target="robustx.divergence:divergence_bound"),
    Family("eps-ENI", _eni_update, _eni_compute),
    Family("eps-ENI_noise", _eni_noise_update, _per_input_compute, table="eps-eni_noise", defaults={"eps": 8 / 255},
           target="robustx.metrics.eni:eps_eni_noise"),
    Family("EBD", _ebd_update, _ebd_compute, _ebd_merge, table="ebd", defaults={"m": 10, "steps": 16, "bisection": 10},
           target="robustx.metrics.boundary:ebd"),
    Family("CLEVER", _clever_update, _clever_compute, table="clever",
           defaults=CLEVER_DEFAULTS,
           target="robustx.clever:clever", extra=frozenset({"n_images"})),
    Family("NS", _ns_update, _layer_means_compute, add, table="ns", target="robustx.sensitivity:neuron_sensitivity"),
    Family("NU", _nu_update, _nu_compute, _nu_merge, table="nu", target="robustx.sensitivity:neuron_moments"),
    Family("coverage", _coverage_update, _coverage_compute, union, table="coverage",
           defaults={"sections": 10, "top_k": 2, "threshold": 0.5}, target="robustx.coverage:NeuronCoverage"),
)}
