"""The batch loop of ``robustx.evaluate``: every metric streamed over the batches a rank owns.

For each batch: load it, then for every metric either read its stored state (a unit of
the run's store, keyed by what it depends on) or run the metric family's ``update``
(:mod:`robustx.metrics.families`). What the metrics of one batch share - the clean
logits, each attack's examples, the coverage pass - is made once for the batch and
dropped with it, so memory does not grow with the number of inputs. At the end the
states of every batch and rank are merged in input order and each metric computed.

Ranks work in lockstep, one owned batch per step (batch i belongs to rank i mod world
size); rank 0 alone opens the store: per step it answers which units are stored and
writes the states the ranks made. Seeds are keyed by input index (``seed`` plus the
batch's first index), so results do not depend on the number of processes or on where a
run resumed.
"""
from __future__ import annotations

import contextlib
import ctypes
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from robustx import attacks as attack_lib
from robustx import metrics as suite
from robustx.metrics.families import FAMILIES, Family, State, concatenate
from robustx.modelutil import chunks, frozen_eval, progress_bar
from robustx.pipeline import distributed
from robustx.pipeline.config import attack_defaults, jsonable
from robustx.pipeline.store import ResultStore, json_digest
from robustx.pipeline.batch import _NOT_ISOLATED, Batch, SharedFailure, _attack_clock
from robustx.pipeline.stream import InputStream

__all__ = ["Run", "family_of"]

def family_of(name: str) -> Family:
    """The streaming definition of metric ``name`` (its registry entry names it)."""
    return FAMILIES[suite.get(name).definition]


@dataclass
class Run:
    """What every batch of one evaluation shares. ``models`` maps roles ("model",
    "defended", "surrogate", "baseline") to modules; ``digests`` their weights' digests
    (and "profile"); ``settings`` each config table's keyword arguments; ``attacks`` each
    attack's settings, the first one primary; ``minimal`` the minimal-perturbation attack
    ({name: settings}, or {}), whose examples only the metrics needing "minimal adversarial
    examples" see."""

    models: Dict[str, nn.Module]
    stream: InputStream
    store: Optional[ResultStore]
    settings: Dict[str, Dict[str, Any]]
    attacks: Dict[str, Dict[str, Any]]
    seed: int
    clip_values: Tuple[float, float]
    device: torch.device
    digests: Dict[str, str]
    profile: Optional[torch.Tensor] = None
    progress: bool = True
    channels_last: bool = False  # these two apply to the logits passes only (not attacks, not CLEVER)
    autocast: Optional[torch.dtype] = None
    save_adversarial: Optional[str] = None  # None, "float32" or "float16": attack examples kept in the store
    minimal: Dict[str, Any] = field(default_factory=dict)
    reused: int = 0
    computed: int = 0
    seconds: Dict[str, float] = field(default_factory=dict)  # per metric and per attack, computing time
    failed: Dict[str, str] = field(default_factory=dict)
    grid: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
    figures: Dict[str, bytes] = field(default_factory=dict)  # landscape plots
    _inputs: State = field(default_factory=dict)
    failed_figures: Dict[str, str] = field(default_factory=dict)
    _coverage: Any = None

    @property
    def primary(self) -> Optional[str]:
        return next(iter(self.attacks), None)

    @property
    def minimal_name(self) -> Optional[str]:
        return next(iter(self.minimal), None)

    def given(self, attack: str):
        """The settings (or the callable) of ``attack``: one of the run's attacks or its minimal one."""
        return self.attacks[attack] if attack in self.attacks else self.minimal[attack]

    @property
    def batch_size(self) -> int:
        return self.stream.batch_size

    # ------------------------------------------------------------------ unit keys
    def unit_key(self, name: str, batch_digest: str, start: int) -> str:
        """``metric/<name>/batch-<i>/<sha256>`` of what the metric's state of one batch depends on:
        the digests of the models (and profile) it uses, the batch's inputs and labels, its
        config table, the attacks' settings when it uses adversarial examples (the minimal
        attack's when it uses those), its seed, the run's clip_values and batch_size (and the
        inference options for logits)."""
        info = suite.get(name)
        family = FAMILIES[info.definition]
        key = {"metric": name, "roles": {r: self.digests[r] for r in _roles(info) if r in self.digests},
               "data": batch_digest,
               "settings": self.settings.get(family.table, {}) if family.table else {},
               "attacks": self.attacks if "adversarial examples" in info.needs else None,
               "seed": self.seed + start, "clip_values": list(self.clip_values), "batch_size": self.batch_size,
               "inference": [self.channels_last, str(self.autocast)]}
        if "minimal adversarial examples" in info.needs:
            key["minimal"] = self.minimal
        return f"metric/{name}/batch-{start // self.batch_size:04d}/{json_digest(jsonable(key), name)}"

    def attack_keys(self, batch_digest: str, start: int, with_surrogate: bool) -> Dict[str, str]:
        """With ``save_adversarial``: "attack/<name>@<model role>" -> the unit of that attack's
        examples for one batch (keyed by the model, the batch, the attack's settings, seed,
        clip_values and the stored precision); else nothing."""
        if self.save_adversarial is None:
            return {}
        roles = [("model", a) for a in {**self.attacks, **self.minimal}]
        roles += [("surrogate", self.primary)] if with_surrogate else []
        keys = {}
        for role, attack in roles:
            key = {"attack": attack, "settings": self.given(attack), "model": self.digests[role],
                   "data": batch_digest, "seed": self.seed + start, "clip_values": list(self.clip_values),
                   "precision": self.save_adversarial}
            keys[f"attack/{attack}@{role}"] = (f"attack/{attack}@{role}/batch-{start // self.batch_size:04d}/"
                                               f"{json_digest(jsonable(key), attack)}")
        return keys

    def inputs_key(self, batch_digest: str, start: int, attacks: List[str]) -> str:
        """The unit of a batch's per-input columns (label, clean prediction, the ``attacks``
        whose examples fool each input)."""
        key = {"roles": {"model": self.digests["model"]}, "data": batch_digest,
               "attacks": {a: self.attacks[a] for a in attacks}, "seed": self.seed + start,
               "clip_values": list(self.clip_values), "batch_size": self.batch_size,
               "inference": [self.channels_last, str(self.autocast)]}
        return f"inputs/batch-{start // self.batch_size:04d}/{json_digest(jsonable(key), 'inputs')}"

    def per_input(self) -> Dict[str, list]:
        """The report's per-input columns over the whole set: "label", "prediction" and, when
        the run attacked, "fooled_by" (the attacks whose example the model misclassifies,
        names joined by ";")."""
        if not self._inputs:
            return {}
        columns = {"label": self._inputs["label"].tolist(), "prediction": self._inputs["prediction"].tolist()}
        wrong = {k.split(":", 1)[1]: v.tolist() for k, v in self._inputs.items() if k.startswith("fooled:")}
        if wrong:
            columns["fooled_by"] = [";".join(a for a in wrong if wrong[a][i]) for i in range(len(columns["label"]))]
        return columns

    # ------------------------------------------------------------------ the loop
    def execute(self, names: List[str]) -> Dict[str, State]:
        """Every metric of ``names`` over every batch: {name: merged state} on every rank
        (metrics that failed are left out and named in :attr:`failed`). Ranks step in
        lockstep, one owned batch per step (a rank without one takes part in the store's
        collective lookups and writes)."""
        _bounded_heap()
        owned = distributed.owned(self.stream.n_batches)
        steps = _from_all(len(owned), max)
        states: Dict[str, Dict[int, State]] = {m: {} for m in [*names, "inputs"]}
        attacked = list(self.attacks) if any("adversarial examples" in suite.get(m).needs for m in names) else []
        batches = iter(self.stream.batches(owned))
        scale = self.batch_size * distributed.world()[1]  # inputs per step over all ranks
        for _ in progress_bar(range(steps), self.progress, "evaluate", steps, unit="img", unit_scale=scale):
            item = next(batches, None)
            batch = Batch(self, *item) if item is not None else None
            keys = self._keys(batch, names, attacked) if batch is not None else {}
            found = self._lookup(keys)
            made = self._step(batch, names, keys, found, states, attacked) if batch is not None else {}
            self._store({keys[m]: v for m, v in made.items()})
        return self._merge(names, states)

    def _keys(self, batch: Batch, names: List[str], attacked: List[str]) -> Dict[str, str]:
        """The store's units of one batch: each metric's, each saved attack's, its per-input columns'."""
        keys = {m: self.unit_key(m, batch.digest, batch.start) for m in names}
        keys.update(self.attack_keys(batch.digest, batch.start, "AA_B" in names and "surrogate" in self.models))
        keys["inputs"] = self.inputs_key(batch.digest, batch.start, attacked)
        return keys

    def _step(self, batch: Batch, names: List[str], keys: Dict[str, str], found: Dict[str, State], states,
              attacked: List[str]) -> Dict[str, Tuple[State, float]]:
        """One batch: the stored states taken, every other metric updated; returns the units
        made, label -> (state, seconds)."""
        batch.adopt({k: v for k, v in found.items() if k.startswith("attack/")})
        made: Dict[str, Tuple[State, float]] = {}
        for m in names:
            if m in self.failed:
                continue
            if m in found:
                states[m][batch.index] = found[m]
            elif (update := self._update(m, batch)) is not None:
                made[m] = update
                states[m][batch.index] = update[0]
        if "inputs" not in found:
            made["inputs"] = (batch.inputs_state(attacked), 0.0)
        states["inputs"][batch.index] = found["inputs"] if "inputs" in found else made["inputs"][0]
        examples = batch.made_examples(set(keys) - set(found))
        self.computed += len(examples)
        if batch.index == 0:
            self.grid = batch.grid()
        return {**made, **examples}

    def _update(self, name: str, batch: "Batch") -> Optional[Tuple[State, float]]:
        family = family_of(name)
        start, attacks_before = time.perf_counter(), sum(batch.attack_seconds.values())
        try:
            state = family.update(batch, self._settings(family), name)
        except _NOT_ISOLATED:
            raise
        except Exception as err:  # the point: one metric's failure is reported, not fatal
            if distributed.world()[1] > 1:  # a rank that went on would skip collectives its peers wait in
                raise
            self.failed[name] = str(err) if isinstance(err, SharedFailure) else f"{type(err).__name__}: {err}"
            return None
        seconds = time.perf_counter() - start - (sum(batch.attack_seconds.values()) - attacks_before)
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.computed += 1
        return {k: v.detach().cpu() for k, v in state.items()}, seconds

    def _settings(self, family: Family) -> Dict[str, Any]:
        return dict(self.settings.get(family.table, {})) if family.table else {}

    # ------------------------------------------------------------------ the store (rank 0)
    def _lookup(self, keys: Dict[str, str]) -> Dict[str, State]:
        """The stored states among every rank's ``keys`` (metric -> unit), for this rank."""
        wanted = _gather({distributed.world()[0]: keys})
        answers: Dict[int, Dict[str, State]] = {}
        if self.store is not None:
            for rank, rank_keys in wanted.items():
                answers[rank] = {}
                for metric, unit in rank_keys.items():
                    stored = self.store.load(unit)
                    if stored is not None:
                        answers[rank][metric] = stored.tensors
                        if metric != "inputs":  # the per-input columns are bookkeeping, not a unit of work
                            clock = _attack_clock(metric) if metric.startswith("attack/") else metric
                            self.seconds[clock] = self.seconds.get(clock, 0.0) + stored.seconds
                            self.reused += 1
        return _from_rank0(answers).get(distributed.world()[0], {})

    def _store(self, made: Dict[str, Tuple[State, float]]) -> None:
        for unit, (state, seconds) in _gather_flat(made).items():
            if self.store is not None:
                self.store.put(unit, state, {}, seconds)

    def _merge(self, names: List[str], states: Dict[str, Dict[int, State]]) -> Dict[str, State]:
        """Every rank's states merged in input order; the per-input columns kept for the report."""
        every: Dict[int, State] = {}
        for part in _gather({distributed.world()[0]: states.pop("inputs")}).values():
            every.update(part)
        self._inputs = concatenate([every[i] for i in sorted(every)]) if every else {}
        failed = _gather({distributed.world()[0]: self.failed})
        self.failed = {m: reason for part in failed.values() for m, reason in part.items()}
        merged: Dict[str, State] = {}
        for m in names:
            if m in self.failed:
                continue
            every = {}
            for part in _gather({distributed.world()[0]: states[m]}).values():
                every.update(part)
            merged[m] = family_of(m).merge([every[i] for i in sorted(every)])
        self.reused, self.computed = sum(_gather_values(self.reused)), sum(_gather_values(self.computed))
        return merged

    # ------------------------------------------------------------------ shared model passes
    def forward(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``net(x)`` in chunks of batch_size, float32 on the CPU, under the run's inference
        options (channels_last: the model's 4-D parameters converted for the pass; autocast)."""
        layout = torch.channels_last if self.channels_last else torch.preserve_format
        autocast = torch.autocast(self.device.type, self.autocast, enabled=self.autocast is not None)
        with frozen_eval(net), torch.no_grad(), _parameter_layout(net, layout), autocast:
            return torch.cat([net(_layout(x[b].to(self.device), layout)).float().cpu()
                              for b in chunks(x.shape[0], self.batch_size)])

    def attack(self, name: str, on: str, x: torch.Tensor, y: torch.Tensor, seed: int) -> torch.Tensor:
        """The examples of attack ``name`` against the ``on`` model for one batch (``seed``: the
        run's seed plus the batch's first index; a table's own seed replaces the run's)."""
        given = self.given(name)
        settings = {} if callable(given) else dict(given)
        seed += settings.pop("seed", self.seed) - self.seed
        attack = attack_lib.get_attack(given if callable(given) else name, attack_defaults(self.clip_values, seed),
                                       **settings)
        x_adv = attack_lib.run_attack(attack, self.models[on], x.to(self.device), y.to(self.device)).cpu()
        if self.save_adversarial == "float16":  # the examples every metric sees are the ones stored
            x_adv = x_adv.half().to(x_adv.dtype)
        return x_adv

    def coverage(self, settings: Dict[str, Any]):
        """The run's :class:`robustx.coverage.NeuronCoverage` (profiled once, sharded over ranks)."""
        if self._coverage is None:
            from robustx.coverage import NeuronCoverage

            cov = NeuronCoverage(self.models["model"], batch_size=self.batch_size, progress=False, **settings)
            if self.profile is not None:
                cov.profile_sharded(self.profile, self.batch_size)
            self._coverage = cov
        return self._coverage


def _roles(info) -> List[str]:
    """The models (and profile) a metric's states depend on: the model, the roles its
    needs name, the baseline of the corruption errors and the profile of every coverage
    metric (one coverage pass makes all their states)."""
    roles = ["model"]
    roles += ["defended"] if "defended model" in info.needs else []
    roles += ["surrogate"] if "surrogate" in info.needs else []
    roles += ["baseline"] if info.family == "corruption" else []
    roles += ["profile"] if info.family == "coverage" else []
    return roles


# ------------------------------------------------------------------ helpers
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


def _bounded_heap() -> None:
    """Fix glibc's mmap threshold at 1 MiB for this process (no-op elsewhere). glibc raises
    the threshold as large blocks are freed, after which batch-sized tensors come from the
    heap and their freed space is kept: peak memory then creeps up with the number of
    batches (measured: +350 MB over 24 batches of 64 224-px images, flat with the fixed
    threshold; bench/RESULTS.md)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(_M_MMAP_THRESHOLD, 1 << 20)


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def _gather(part: Dict[int, Any]) -> Dict[int, Any]:
    return distributed.gather_in_order(part)


def _gather_flat(made: Dict[str, Any]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for part in _gather({distributed.world()[0]: made}).values():
        out.update(part)
    return out


def _gather_values(value) -> List[Any]:
    return list(_gather({distributed.world()[0]: value}).values())


def _from_all(value, reduce):
    return reduce(_gather_values(value))


def _from_rank0(value):
    """Rank 0's ``value`` on every rank."""
    return distributed.gather_in_order({0: value} if distributed.world()[0] == 0 else {})[0]
