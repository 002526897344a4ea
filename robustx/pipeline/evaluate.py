"""``robustx.evaluate``: one call from a model and its data to a report of the whole suite.

The run streams the data batch by batch (:mod:`robustx.pipeline.run`): per batch the
clean logits, each attack's examples once, then every metric's ``update``
(:mod:`robustx.metrics.families`), whose small state is a unit of the run's SQLite store
(:mod:`robustx.pipeline.store`). Memory and the store do not grow with the inputs'
size beyond these states: adversarial examples live only for their batch. At the end the
states are merged in input order, across batches and ranks, and each metric computed.

A unit is keyed by what its state depends on (model weights, the inputs and labels of
its batch, its settings and seed), so a killed run resumes where it stopped, and a later
run in the same folder with more or fewer metrics or other settings reuses every unit
whose key is unchanged (``resume=True``); the report's run section counts the units
reused and computed, and a metric's seconds are those its units took to compute, also
when they were read back. Metrics whose inputs are missing (no defended model, no
surrogate, no profile data) are reported as skipped with the reason; a metric that fails
is reported as failed with the reason, and every other metric still runs.

Randomness: a batch's work is seeded with ``seed`` plus the index of the batch's first
input, so results do not depend on how the work is split (or on where a run resumed).
"""
from __future__ import annotations

import math
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from robustx import checks
from robustx import metrics as suite
from robustx.pipeline import distributed
from robustx.pipeline.config import (DEFAULT_ATTACKS, DEFAULT_MINIMAL_ATTACK, attack_budget, attack_table,
                                     autocast_dtype, check_config, check_outputs, check_settings, config_sections,
                                     jsonable, landscape_settings, metric_names, minimal_table, table_budget,
                                     table_settings)
from robustx.pipeline.presets import preset_name
from robustx.plotting import histogram_png, image_grid_png, layer_bars_png
from robustx.pipeline.report import MetricResult, Report
from robustx.pipeline.run import Run, family_of
from robustx.pipeline.store import ResultStore, StoreError, json_digest, model_digest
from robustx.pipeline.stream import InputStream

__all__ = ["evaluate", "DEFAULT_ATTACKS", "DEFAULT_MINIMAL_ATTACK", "config_sections"]

# need -> (the roles or attacks that provide it, why the metric is skipped without it)
_PROVIDERS = {
    "adversarial examples": ("attack", "no attack given (attacks=)"),
    "minimal adversarial examples": ("minimal", "no minimal-perturbation attack (minimal_attack=None)"),
    "defended model": ("defended", "no defended model given (defended=)"),
    "surrogate": ("surrogate", "no surrogate model given (surrogate=)"),
    "profile": ("profile", "no profile data given (profile=, e.g. training inputs)"),
}
_FINGERPRINT = {"model": "model weights", "data": "data (inputs or labels)", "profile": "profile data",
                "defended": "defended model weights", "surrogate": "surrogate model weights",
                "baseline": "baseline model weights"}


def evaluate(
    model: nn.Module,
    data,
    *,
    metrics: Union[str, Sequence[str]] = "all",
    attacks=None,
    minimal_attack=DEFAULT_MINIMAL_ATTACK,
    defended: Optional[nn.Module] = None,
    surrogate: Optional[nn.Module] = None,
    baseline: Optional[nn.Module] = None,
    profile: Optional[torch.Tensor] = None,
    config: Optional[Mapping[str, Mapping[str, Any]]] = None,
    preset: Optional[str] = None,
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
    workers: int = 0,
    save_adversarial: Optional[str] = None,
    _resume_hint: str = "resume=True",
) -> Report:
    """Evaluate ``model`` on ``data`` with every metric in ``metrics`` and return the Report.

    ``data``: a pair (x, y) of tensors, a Dataset or a DataLoader of (x, y), inputs in
    ``clip_values``; it is read batch by batch (a Dataset by ``workers`` processes that
    decode ahead), never held whole. ``metrics``: "all", or names of
    :func:`robustx.metrics.available`. ``attacks``: attack names ("pgd", "fgsm",
    "autoattack", ...), or a mapping name -> settings (:func:`robustx.attacks.get_attack`;
    default :data:`DEFAULT_ATTACKS`) or name -> a callable ``attack(model, x, y) -> x_adv``,
    or a list of names and callables; the first (primary) is the one RGB, RIC, NS and AA_B
    use; AA_W counts an input as robust only if every attack failed on it. A callable is
    identified in the run (and on resume) by its qualified name.
    ``minimal_attack``: the minimal-perturbation attack whose successful examples S the
    imperceptibility and behaviour means ALD_0/2/inf, ASS, PSD, ACAC, ACTC and NTE average
    over (default "deepfool", :data:`DEFAULT_MINIMAL_ATTACK`; settings from the config's table
    of its name); a name of ``attacks`` (those examples), another built-in name, a callable,
    a mapping {name: settings}, or None (those metrics skipped). It is not one of the run's
    attacks: AA_W, the "fooled_by" column, NS and the image grid never see it. Each of those
    metrics reports its attack and |S| ("successful") and, per input, its term (NaN outside S).
    ``defended``: a defended version of the model (CAV, CRR, CSR, CCV, COS);
    ``surrogate``: a model to transfer the first attack's examples from (AA_B);
    ``baseline``: the reference model of mCE / rmCE (without one, unnormalised);
    ``profile``: inputs (e.g. training data) giving the neurons' ranges for KMNC / NBC /
    SNAC. ``config``: table -> keyword arguments of the function it names
    (:func:`config_sections`), e.g. ``{"clever": {"n_batches": 20}, "pgd": {"eps": 0.1}}``.
    ``preset``: the budgets of the tables the config leaves unset
    (:mod:`robustx.pipeline.presets`): "quick" (CPU budgets) or "paper" (each metric at its
    paper's settings); None (default) is "paper" when the run's device is CUDA, else
    "quick". A config table's keys override the preset's; the report states the preset
    (``run["preset"]``) and every metric's resolved settings (``MetricResult.budget``).
    ``out``: the run folder (``store.sqlite``, ``report.json``, ``report.html``); with
    ``resume=True`` a run of the same model and data reuses every finished unit whose key is
    unchanged (a killed run continues; more or fewer metrics, or changed settings, recompute
    only the units they change), and a different model or data is refused. Without it, a
    folder whose store holds finished units is refused. ``channels_last`` (model and inputs in
    that memory format) and ``autocast`` ("bf16" or "fp16": :func:`torch.autocast`) apply to
    the forward passes that give the logits only, never to attacks or CLEVER's gradients;
    both are part of the units' keys. ``save_adversarial`` ("float32" or "float16") keeps
    every attack's examples in the store (4 or 2 bytes per input element), so that a later
    run adding a metric of adversarial examples reuses them instead of attacking again;
    with "float16" every metric sees the rounded examples, stored or fresh. Without it
    (default) the store holds only the metrics' small per-batch states.

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
    if preset is not None:
        preset_name(preset)  # a bad name is refused before anything else
    names = metric_names(metrics)
    clip = checks.clip_range(clip_values)
    seed = checks.seed(seed)
    stream = InputStream(data, batch_size, workers, clip)
    autocast = autocast_dtype(autocast)
    if not isinstance(channels_last, bool):
        raise TypeError(f"channels_last must be a bool, got {channels_last!r}")
    if save_adversarial not in (None, "float32", "float16"):
        raise ValueError(f"save_adversarial must be None, 'float32' or 'float16', got {save_adversarial!r}")
    models = {"model": model}
    for role, net in (("defended", defended), ("surrogate", surrogate), ("baseline", baseline)):
        if net is not None:
            models[role] = checks.model(net, role)
    dev = checks.device(device, model)
    preset = preset_name(preset, dev)
    config = check_config(config)
    attacks_ = attack_table(attacks, config, preset)
    minimal = minimal_table(minimal_attack, attacks_, config)
    settings = table_settings(config, preset)
    landscape = landscape_settings(config["landscape"], attacks_, clip) if "landscape" in config else None
    x1, y1 = stream.head(stream.batch_size)
    check_outputs(model, x1[:1], y1, dev)
    used = {family_of(m).table for m in names} | ({"landscape"} if landscape else set())
    tables = {t: v for t, v in {**settings, "landscape": landscape}.items() if t in used}
    check_settings(model, x1[:1], y1[:1], tables, {**attacks_, **minimal}, clip, seed, stream.batch_size)
    profile = checks.images(profile, "profile") if profile is not None else None
    digests = _digests(models, stream, profile)
    rank, size = distributed.world()
    inference = {"channels_last": channels_last, "autocast": str(autocast)} if channels_last or autocast else {}
    rid = json_digest(jsonable({"digests": digests, "metrics": names, "settings": settings, "attacks": attacks_,
                                "minimal_attack": minimal, "seed": seed, "batch_size": stream.batch_size,
                                "clip_values": clip, **inference}))
    distributed.agree(rid, "the run (model, data, metrics, settings)")
    if stream.n_batches is None and size > 1:
        raise ValueError("data: a DataLoader without a sized dataset cannot be split over processes")
    if stream.n_batches is not None and size > stream.n_batches:
        raise ValueError(f"world size {size} is larger than the data: {stream.n} inputs make only "
                         f"{stream.n_batches} batches of batch_size={stream.batch_size}")
    folder = Path(out) if out is not None else (Path(tempfile.mkdtemp(prefix="robustx-run-")) if rank == 0 else None)
    start = time.perf_counter()
    store = _open_store(folder, digests, resume, _resume_hint)
    run = Run(models, stream, store, settings, attacks_, seed, clip, dev, digests, profile=profile,
              progress=progress and rank == 0, channels_last=channels_last, autocast=autocast,
              save_adversarial=save_adversarial, minimal=minimal)
    skipped = {m: reason for m in names if (reason := _skip_reason(run, m)) is not None}
    try:
        states = run.execute([m for m in names if m not in skipped])
        if landscape is not None and rank == 0:
            _landscape_figures(run, landscape)
    finally:
        if store is not None:
            store.close()
    results = {m: _result(run, m, states.get(m), skipped.get(m)) for m in names}
    report = Report(metrics=results, figures=_figures(run, results), inputs=run.per_input(), run=jsonable({
        "id": rid, "preset": preset, "model": name, "inputs": stream.n, "data": digests["data"],
        "input_shape": list(stream.head(1)[0].shape[1:]), "seed": seed, "batch_size": stream.batch_size,
        "attacks": attacks_, "minimal_attack": minimal, "seconds": time.perf_counter() - start,
        "torch": torch.__version__, "device": str(dev), "processes": size,
        "attack_seconds": {k: v for k, v in run.seconds.items() if k.startswith("attack ")},
        "inference": inference,
        "units_reused": run.reused, "units_computed": run.computed, "failed_figures": run.failed_figures}))
    if run.reused and progress and rank == 0:
        print(f"robustx: reused {run.reused} finished units from {folder}, computed {run.computed}", file=sys.stderr)
    if out is not None and rank == 0:
        report.save(folder)
    if rank == 0 and (report.failed or run.failed_figures):
        failed = [*report.failed, *(f"{title} figures" for title in run.failed_figures)]
        warnings.warn(f"evaluate: {', '.join(failed)} failed; report.failed and report.run['failed_figures'] give "
                      "the reasons", RuntimeWarning, stacklevel=2)
    return distributed.gather_in_order({0: report} if rank == 0 else {})[0]


def _skip_reason(run: Run, name: str) -> Optional[str]:
    info = suite.get(name)
    for need in sorted(info.needs & set(_PROVIDERS)):
        provider, reason = _PROVIDERS[need]
        missing = run.primary is None if provider == "attack" else not run.minimal if provider == "minimal" else (
            run.profile is None if provider == "profile" else provider not in run.models)
        if missing:
            return reason
    return None


def _budget(run: Run, name: str) -> Dict[str, Any]:
    """The resolved settings metric ``name`` runs with: its table's (every keyword of the
    function it feeds) and, for a metric of adversarial examples, every attack's (as its
    units are keyed)."""
    family = family_of(name)
    budget = table_budget(family.table, run.settings[family.table]) if family.table else {}
    needs = suite.get(name).needs
    if "adversarial examples" in needs:
        budget["attacks"] = {a: attack_budget(a, s) for a, s in run.attacks.items()}
    if "minimal adversarial examples" in needs:
        budget["minimal_attack"] = {a: attack_budget(a, s) for a, s in run.minimal.items()}
    return jsonable(budget)


def _result(run: Run, name: str, state, skipped: Optional[str]) -> MetricResult:
    info = suite.get(name)
    base = dict(name=name, higher_is_better=info.higher_is_better, family=info.family, budget=_budget(run, name))
    if skipped is not None:
        return MetricResult(value=None, skipped=skipped, **base)
    if name in run.failed:
        return MetricResult(value=None, failed=run.failed[name], seconds=run.seconds.get(name, 0.0), **base)
    family = family_of(name)
    table = run.settings.get(family.table, {}) if family.table else {}
    try:
        value, per_sample, detail = family.compute(state, dict(table), name)
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as err:  # isolated like a failing update
        run.failed[name] = f"{type(err).__name__}: {err}"
        return MetricResult(value=None, failed=run.failed[name], seconds=run.seconds.get(name, 0.0), **base)
    if "minimal adversarial examples" in info.needs:
        detail = {"attack": run.minimal_name, **detail}
    elif "adversarial examples" in info.needs:
        detail = {"attack": run.primary, **detail}
    return MetricResult(value=float(value), per_sample=per_sample, settings=jsonable({**table, **detail}),
                        seconds=run.seconds.get(name, 0.0), **base)


def _figures(run: Run, results: Dict[str, MetricResult]) -> Dict[str, bytes]:
    """The report's figures: CLEVER histogram, per-layer bars, the adversarial image grid."""
    figures: Dict[str, bytes] = {}
    clever = results.get("CLEVER")
    if clever is not None and clever.per_sample:
        s = run.settings["clever"]
        scores = [v for v in clever.per_sample if not math.isnan(v)]
        figures["CLEVER scores"] = histogram_png(scores, f"CLEVER (L{s['norm']}, R = {s['radius']})", "score")
    for name, title in (("NS", "neuron sensitivity"), ("NU", "neuron uncertainty")):
        if name in results and results[name].value is not None:
            per_layer = results[name].settings["per_layer"]
            figures[f"{name}: {title} per layer"] = layer_bars_png(per_layer, f"{name} (mean per layer)")
    covered = [r for r in results.values() if r.family == "coverage" and r.value is not None]
    if covered and covered[0].settings.get("nc_per_layer"):
        figures["NC per layer"] = layer_bars_png(covered[0].settings["nc_per_layer"], "neuron coverage (NC) per layer")
    if run.grid is not None:
        figures["adversarial examples"] = image_grid_png(*run.grid)
    figures.update(run.figures)
    return figures


def _digests(models: Dict[str, nn.Module], stream: InputStream, profile: Optional[torch.Tensor]) -> Dict[str, str]:
    """The digests of what a run is made of: "data", "profile", and each role's model (each
    module hashed once, whatever roles it plays)."""
    from robustx.pipeline.store import data_digest

    by_module: Dict[int, str] = {}
    digests = {"data": stream.describe()}
    if profile is not None:
        digests["profile"] = data_digest(profile)
    for role, net in models.items():
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
    error = distributed.gather_in_order({0: error} if distributed.world()[0] == 0 else {})[0]
    if error is not None:
        raise error
    return store


def _landscape_figures(run: Run, settings: Dict[str, Any]) -> None:
    """Loss-surface contour and 3-D plots around the first inputs (Yu et al.), when the config
    has a [landscape] table (keys: n_images and input_landscape's; see
    :func:`robustx.pipeline.config.landscape_settings`)."""
    from robustx.landscape import input_landscape

    settings = dict(settings)
    x, y = run.stream.head(settings.pop("n_images"))
    try:
        land = input_landscape(run.models["model"], x.to(run.device), y.to(run.device), clip_values=run.clip_values,
                               seed=run.seed, progress=False, **settings)
        for kind in ("contour", "surface"):
            run.figures[f"{land.surface} landscape ({kind})"] = land.plot(kind, index=list(range(x.shape[0])))
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as err:  # a figure's failure is reported, not fatal
        run.failed_figures["landscape"] = f"{type(err).__name__}: {err}"
