"""Presets: the budgets of a run's metrics and attacks when its config does not set them.

A preset maps config tables (metric families' and attacks', :mod:`robustx.pipeline.config`)
to keyword arguments. A table's settings are, by precedence: the user's config table,
then the preset's table, then the family's defaults (:mod:`robustx.metrics.families`).

- ``quick``: the families' defaults, sized for a CPU (the default without a GPU);
- ``paper``: every metric at its paper's settings (the default on a CUDA device). Tables
  whose paper states no setting are absent here and keep the families' defaults; the
  README's "Presets" table names them.

Settings of ``paper`` and their sources:

- ``clever`` (Weng et al., ICLR 2018): N_b = 500 batches of N_s = 1024 samples (the
  paper; also the defaults of the authors' ``collect_gradients.py``, github.com/huanzhang12/CLEVER).
  Radius and images from the authors' code: ``estimate_gradient_norm.py`` samples
  perturbations of L2 norm up to 3, L-inf 0.1 and L1 30 around inputs of range 1
  ([-0.5, 0.5]): :data:`PAPER_CLEVER_RADII`, R for the table's norm (a config's norm without a
  radius gets its norm's R); ``run_networks.sh`` scores 4 x 25 = 100 images per model.
- ``ebd`` (Guo et al.'s AISafety platform, ``EvalBox/Evaluation/bd.py``): m = 10 random
  orthonormal directions, each searched on a grid of 64 magnitudes (0, 2, ..., 126 / 255
  per unit-variance element). robustx keeps its bisection of the last grid step on top:
  it sharpens the distance found, and the platform has none.
- ``coverage`` (DeepGauge, Ma et al. ASE 2018): KMNC with k = 1000 sections (the paper
  also runs 10000); TKNC's top-k (the paper: 1, 2, 3) and NC's threshold (0.5, 0.75) keep
  the defaults 2 and 0.5, values the papers run.
- ``pgd`` (Madry et al., ICLR 2018, CIFAR-10): L-inf eps 8/255 with 20 steps of 2/255,
  the white-box PGD of their evaluation (the default's 10 steps are a CPU budget).
- ``corruption`` (Hendrycks & Dietterich, ICLR 2019): every available benchmark
  corruption at severities 1..5, which :func:`robustx.metrics.corruption.corruption_errors`
  already runs by default (``CORRUPTIONS``, by reference): no table, quick = paper.
- DIV (Yu et al., IJCAI 2019), eps-ENI_noise (Guo et al.), NS and NU (Zhang et al.): the papers
  state no step count, restart count or draw count: no table, quick = paper.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import torch

from robustx import checks
from robustx.geometry import norm_name

__all__ = ["PRESETS", "PAPER_CLEVER_RADII", "preset_name", "preset_tables"]

#: CLEVER's sampling radius R per norm in the authors' code, for inputs of range 1.
PAPER_CLEVER_RADII = {"1": 30.0, "2": 3.0, "inf": 0.1}

PRESETS: Dict[str, Dict[str, Dict[str, Any]]] = {
    "quick": {},
    "paper": {
        "clever": {"norm": 2, "radius": PAPER_CLEVER_RADII["2"], "n_batches": 500, "n_samples": 1024,
                   "n_images": 100},
        "ebd": {"m": 10, "steps": 64},
        "coverage": {"sections": 1000},
        "pgd": {"eps": 8 / 255, "norm": "inf", "steps": 20, "step_size": 2 / 255},
    },
}


def preset_name(preset: Optional[str], device: Optional[torch.device] = None) -> str:
    """The preset a run uses: ``preset`` itself ("quick" or "paper"), or for None "paper"
    on a CUDA ``device`` and "quick" on any other (or when the device is not known yet)."""
    if preset is None:
        return "paper" if device is not None and device.type == "cuda" else "quick"
    return checks.choice(preset, "preset", tuple(PRESETS), also="or None (paper on CUDA, else quick)")


def preset_tables(preset: str,
                  config: Optional[Mapping[str, Mapping[str, Any]]] = None) -> Dict[str, Dict[str, Any]]:
    """The tables of ``preset`` (table -> keyword arguments) under ``config``: "paper"
    gives CLEVER the radius of the config's [clever] norm when the config sets a norm and
    no radius (an invalid norm is left to the [clever] check)."""
    tables = {table: dict(keys) for table, keys in PRESETS[preset_name(preset)].items()}
    clever = dict((config or {}).get("clever", {}))
    if "clever" in tables and "norm" in clever and "radius" not in clever:
        try:
            tables["clever"]["radius"] = PAPER_CLEVER_RADII[norm_name(clever["norm"])]
        except ValueError:
            pass
    return tables
