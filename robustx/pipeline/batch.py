"""One batch of an evaluation and the work its metrics share.

A :class:`Batch` holds the batch's inputs, labels, seed and content digest, and makes
what several metrics of the batch need at most once: each model's logits, each attack's
examples (timed on the run's "attack <name>" clock), the coverage pass. It is dropped with
the batch, so nothing of it outlives its batch but the metrics' small states. Work that
several metrics share and that raised raises :class:`SharedFailure` for every metric
that asks again, naming the work and the reason.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple

import torch
from torch import nn

from robustx.metrics.families import State
from robustx.pipeline.digests import data_digest

if TYPE_CHECKING:
    from robustx.pipeline.run import Run

__all__ = ["Batch", "SharedFailure", "GRID_IMAGES"]

GRID_IMAGES = 8  # inputs of the report's image grid (kept from the first batch)
# Not isolated: the user's interrupt, and running out of memory (the next metric would too).
_NOT_ISOLATED = (KeyboardInterrupt, MemoryError, torch.OutOfMemoryError)


class SharedFailure(Exception):
    """Work several metrics share (an attack's examples, the coverage pass) raised; the
    message is the whole reason ("<work> failed: ExceptionType: message")."""


class Batch:
    """One batch of the run and the work its metrics share, made at most once and dropped
    with the batch (the protocol :mod:`robustx.metrics.families` relies on)."""

    def __init__(self, run: "Run", index: int, start: int, x: torch.Tensor, y: torch.Tensor):
        self.run, self.index, self.start, self.x, self.y = run, index, start, x, y
        self.seed = run.seed + start
        self.digest = data_digest(x, y)
        self._memo: Dict[Any, Any] = {}
        self.attack_seconds: Dict[str, float] = {}

    attacks = property(lambda self: list(self.run.attacks))
    primary = property(lambda self: self.run.primary)
    minimal = property(lambda self: self.run.minimal_name)
    clip_values = property(lambda self: self.run.clip_values)
    batch_size = property(lambda self: self.run.batch_size)
    device = property(lambda self: self.run.device)
    run_seed = property(lambda self: self.run.seed)
    n_inputs = property(lambda self: self.run.stream.n)

    def net(self, role: str) -> nn.Module:
        return self.run.models[role]

    def has(self, role: str) -> bool:
        return role in self.run.models

    def memo(self, key, fn: Callable[[], Any]):
        """``fn()`` made once for the batch; if it raised, every later ask raises
        :class:`SharedFailure` naming ``key`` (a string key) and the reason."""
        if key not in self._memo:
            try:
                self._memo[key] = fn()
            except _NOT_ISOLATED:
                raise
            except Exception as err:
                if not isinstance(key, str):
                    raise
                self._memo[key] = SharedFailure(f"{key} failed: {type(err).__name__}: {err}")
        if isinstance(self._memo[key], SharedFailure):
            raise self._memo[key]
        return self._memo[key]

    def logits(self, role: str, x: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The ``role`` model's logits on ``x`` (default the batch's inputs), made once."""
        x = self.x if x is None else x
        return self.memo(("logits", role, id(x)), lambda: self.run.forward(self.net(role), x))

    def adversarial(self, attack: str, on: str = "model") -> torch.Tensor:
        """The examples of ``attack`` made against the ``on`` model for this batch, made once
        (their seconds go to the run's "attack <name>" clock, not to the metric asking)."""
        clock = _attack_clock(f"attack/{attack}@{on}")

        def make() -> torch.Tensor:
            start = time.perf_counter()
            try:
                return self.run.attack(attack, on, self.x, self.y, self.seed)
            finally:
                self.attack_seconds[clock] = time.perf_counter() - start
                self.run.seconds[clock] = self.run.seconds.get(clock, 0.0) + self.attack_seconds[clock]
        return self.memo(f"{clock} on the model" if on == "model" else clock, make)

    def adopt(self, stored: Dict[str, State]) -> None:
        """Take stored attack examples ("attack/<name>@<role>" -> {"x_adv"}) as this batch's."""
        for label, state in stored.items():
            self._memo[_memo_key(label)] = state["x_adv"].to(self.x.dtype)

    def made_examples(self, labels) -> Dict[str, Tuple[State, float]]:
        """The attack examples this batch made, for the store: label -> ({"x_adv"}, seconds)."""
        made = {}
        for label in labels:
            x_adv = self._memo.get(_memo_key(label)) if label.startswith("attack/") else None
            if isinstance(x_adv, torch.Tensor):
                precision = torch.float16 if self.run.save_adversarial == "float16" else x_adv.dtype
                made[label] = ({"x_adv": x_adv.to(precision)}, self.attack_seconds.get(_attack_clock(label), 0.0))
        return made

    def inputs_state(self, attacks) -> State:
        """Label, clean prediction and, per attack, whether its example fools the model."""
        state = {"label": self.y.cpu(), "prediction": self.logits("model").argmax(1)}
        for attack in attacks:
            try:
                state[f"fooled:{attack}"] = self.logits("model", self.adversarial(attack)).argmax(1) != self.y.cpu()
            except SharedFailure:  # the attack failed: its metrics say so; no column
                continue
        return state

    def coverage_state(self, settings: Dict[str, Any]) -> State:
        return self.run.coverage(settings).batch_state(self.x)

    def grid(self) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """The first inputs and their primary attack's examples, if this batch made them."""
        key = _memo_key(f"attack/{self.run.primary}@model")
        if not isinstance(self._memo.get(key), torch.Tensor):
            return None
        return self.x[:GRID_IMAGES].clone(), self._memo[key][:GRID_IMAGES].clone()


def _attack_clock(label: str) -> str:
    """"attack/<name>@<role>" -> the report's clock name, "attack <name>" (on the model) or
    "attack <name> on the <role>"."""
    attack, role = label[len("attack/"):].split("@")
    return f"attack {attack}" + ("" if role == "model" else f" on the {role}")


def _memo_key(label: str) -> str:
    """"attack/<name>@<role>" -> the batch's memo key of those examples."""
    clock = _attack_clock(label)
    return f"{clock} on the model" if label.endswith("@model") else clock
