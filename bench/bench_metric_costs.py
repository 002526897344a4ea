"""CPU seconds of every metric family for ONE image under each preset (quick, paper):
the built-in digits CNN (8x8 digits) and the real CIFAR ResNet-20 (AISafety weights and
images, ../shared/data/aisafety-cifar10).

Each row is one ``robustx.evaluate`` run on the first test image with that family's
metrics only, timed as the process's CPU time (``time.process_time``: every thread's
seconds, so a busy shared machine slows the wall clock but not this much). Every run
includes the pipeline's fixed cost (digests, checks, one clean forward pass, the store):
the "CA" row is that floor. "attack (pgd)" is the run of AA_W (the attack plus one
forward pass of its examples); the rows of the families of adversarial examples
("adversarial means", eps-ENI, NS) are their run with AA_W minus the AA_W run. KMNC / NBC / SNAC get a profile of
--profile-n training inputs (its cost is in the coverage row); the metrics needing a
second model (defense utility, AA_B, a baseline for mCE) are left out. One pass over the
digits quick rows first warms up the imports and first calls, and is not reported.

CLEVER: the quick preset's runs in full; the paper preset's 500 batches x 1024 samples
run at --clever-batches batches with ``on_fallback="max"`` (no resampling, so exactly
that many batches) and the seconds above the floor are extrapolated linearly to 500
(its cost is N_b identical batches; resampling after an ill-conditioned fit, up to
4 N_b, would add to it).

    python3 bench/bench_metric_costs.py [--threads 1] [--clever-batches 5] [--profile-n 64] [--only corruption,...]
"""
import argparse
import platform
import time
import warnings

import torch

from robustx.data import aisafety_cifar10, aisafety_dir, digits
from robustx.metrics import available, get
from robustx.models import digits_cnn, resnet20_cifar
from robustx.pipeline.config import table_settings
from robustx.pipeline.evaluate import evaluate

NEEDS_ANOTHER_MODEL = {"defended model", "surrogate"}
FAMILIES = ["adversarial means", "corruption", "DIV", "eps-ENI", "eps-ENI_noise", "EBD", "NS", "NU", "coverage"]


def cpu_seconds(model, x, y, profile, preset, metrics, config=None) -> float:
    start = time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        evaluate(model, (x, y), metrics=metrics, preset=preset, profile=profile, config=config or {}, batch_size=1,
                 progress=False)
    return time.process_time() - start


def shown(seconds: float) -> str:
    """Seconds to 3 digits; below 0.01 s (differences of runs are then timer noise, even < 0) "< 0.01"."""
    return "< 0.01" if seconds < 0.01 else f"{seconds:.3g}"


def family(name: str) -> str:
    return get(name).definition


def costs(model, x, y, profile, preset, clever_batches, only=None):
    usable = [m for m in available() if not (get(m).needs & NEEDS_ANOTHER_MODEL)]
    run = lambda metrics, config=None: cpu_seconds(model, x, y, profile, preset, metrics, config)  # noqa: E731
    rows = {"CA": run(["CA"]), "attack (pgd)": run(["AA_W"])}
    for fam in [f for f in FAMILIES if only is None or f in only]:
        metrics = [m for m in usable if family(m) == fam]
        if any("adversarial examples" in get(m).needs for m in metrics):  # their cost above the attack's
            rows[fam] = run(["AA_W"] + metrics) - rows["attack (pgd)"]
        else:
            rows[fam] = run(metrics)
    n_b = table_settings({}, preset)["clever"]["n_batches"]
    if only is not None and "CLEVER" not in only:
        return rows, 0, n_b
    measured = n_b if preset == "quick" else min(clever_batches, n_b)
    config = {} if measured == n_b else {"clever": {"n_batches": measured, "on_fallback": "max"}}
    rows["CLEVER"] = rows["CA"] + (run(["CLEVER"], config) - rows["CA"]) * n_b / measured
    return rows, measured, n_b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clever-batches", type=int, default=5)
    parser.add_argument("--profile-n", type=int, default=64)
    parser.add_argument("--only", default=None, help="comma-separated rows to measure (besides CA and the attack), "
                        "e.g. corruption,CLEVER (default: all)")
    args = parser.parse_args()
    only = None if args.only is None else set(args.only.split(","))
    torch.set_num_threads(args.threads)
    xd, yd = digits("test")
    xc, yc = aisafety_cifar10()
    models = {"digits": (digits_cnn(), xd[:1], yd[:1], digits("train")[0][: args.profile_n]),
              "CIFAR": (resnet20_cifar(aisafety_dir() / "resnet20_cifar.pt"), xc[:1], yc[:1],
                        xc[1: 1 + args.profile_n])}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {platform.machine()}")
    costs(*models["digits"], "quick", 1)  # warm-up: lazy imports, first calls of every path
    table, notes = {}, []
    for name, (model, x, y, profile) in models.items():
        for preset in ("quick", "paper"):
            rows, measured, n_b = costs(model, x, y, profile, preset, args.clever_batches, only)
            table[name, preset] = rows
            print(f"{name} {preset}: " + ", ".join(f"{k} {v:.3f}" for k, v in rows.items()), flush=True)
            if measured:
                notes.append(f"{name} {preset}: CLEVER measured at {measured} of {n_b} batches"
                             + (f", extrapolated x {n_b / measured:g}" if measured < n_b else ""))
    columns = [(m, p) for m in models for p in ("quick", "paper")]
    print("\n| metric family, one image (CPU s) | " + " | ".join(f"{m} {p}" for m, p in columns) + " |")
    print("|---|" + "---|" * len(columns))
    for row in table[columns[0]]:
        print(f"| {row} | " + " | ".join(shown(table[c][row]) for c in columns) + " |")
    print("\n" + "\n".join(notes))


if __name__ == "__main__":
    main()
