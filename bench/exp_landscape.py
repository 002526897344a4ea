"""Landscapes and the prediction-divergence bound of standard vs adversarially trained models.

    python3 bench/exp_landscape.py [--part digits|cifar|cifar-div|all] [--attack pgd] [--threads N]
                                   [--figures bench/figures]

Digits (robustx.data.digits, 359 test images): the shipped standard CNN and two CNNs
trained with robustx.defenses.train_adversarial (``--attack``, default PGD; L-inf eps 0.1
and 0.2, 7 steps, 30 epochs, seed 0).
CIFAR-10 (the 100 AISafety images): ResNet-20 standard, PAT (adversarially trained) and
RAND weights from ../shared/data/aisafety-cifar10.

For each model: landscape pictures (PNG under --figures), landscape statistics on many
test images, then the divergence bound (mean KL, Yu et al. 2019) and PGD accuracy at the
same eps / steps / restarts, all with L-inf balls clipped to [0, 1] (digits: also the JS
divergence). The bound is the default one, invariant to the logit scale; ``cifar-div``
runs only the CIFAR bound and PGD accuracy, with the plain-softmax bound beside it
("KL PLAIN", ``normalize=False``). Prints markdown.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from robustx import attacks, data, defenses, models
from robustx.divergence import divergence_bound, logit_temperature
from robustx.landscape import input_landscape

CLIP = (0.0, 1.0)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).double().mean().item()


def digits_models(epochs: int, attack: str) -> dict:
    x, y = data.digits("train")
    out = {"standard": models.digits_cnn()}
    for eps in (0.1, 0.2):
        name = f"{attack.upper()}-AT {eps:g}"
        t0 = time.perf_counter()
        model = models.DigitsCNN()
        defenses.train_adversarial(model, (x, y), method="pgd", attack=attack, epochs=epochs, eps=eps, steps=7,
                                   seed=0, progress=False)
        out[name] = model.eval()
        log(f"trained {name} in {time.perf_counter() - t0:.0f} s")
    return out


def cifar_models(root: Path) -> dict:
    files = {"standard": "resnet20_cifar.pt", "PAT": "CIFAR10_PAT_enhanced.pt", "RAND": "CIFAR10_RAND_enhanced.pt"}
    return {name: models.resnet20_cifar(root / f) for name, f in files.items()}


def boundary_distance(land) -> torch.Tensor:
    """Smallest alpha > 0 with margin <= 0 along +d1 (the adversarial direction); inf if none."""
    pos = land.axis > 0
    crossed = land.slice_margins[0][:, pos] <= 0
    dist = land.axis[pos][crossed.double().argmax(1)]
    return torch.where(crossed.any(1), dist, torch.full_like(dist, float("inf")))


def landscape_stats(model, x, y, span, steps) -> dict:
    land = input_landscape(model, x, y, span=span, steps=steps, surface="loss", clip_values=None, progress=False)
    c = steps // 2
    dist = boundary_distance(land)
    return {
        "loss at x": land.values[:, c, c].mean().item(),
        "max loss on grid": land.values.amax((1, 2)).mean().item(),
        "grid correct": (land.margin > 0).double().mean().item(),
        "median boundary dist (adv dir)": dist.median().item(),
        "no boundary within span": (dist == float("inf")).double().mean().item(),
    }


def examples(zoo: dict, x, y, count: int) -> torch.Tensor:
    """Indices of the first test images, of distinct labels, that every model classifies right."""
    with torch.no_grad():
        ok = torch.stack([m(x).argmax(1) == y for m in zoo.values()]).all(0).nonzero()[:, 0].tolist()
    chosen, labels = [], set()
    for i in ok:
        if int(y[i]) not in labels:
            chosen.append(i)
            labels.add(int(y[i]))
    return torch.tensor(chosen[:count])


def agreed(zoo: dict, x, y) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack([m(x).argmax(1) == y for m in zoo.values()]).all(0).nonzero()[:, 0]


def pictures(name_prefix: str, zoo: dict, x, y, span: float, figures: Path) -> list:
    paths = []
    titles = [f"label {int(t)}" for t in y]
    for name, model in zoo.items():
        land = input_landscape(model, x, y, span=span, steps=41, surface="loss", clip_values=None, progress=False)
        tag = f"{name_prefix}_{name.lower().replace('-', '').replace(' ', '').replace('.', '')}"
        paths.append(land.plot(figures / f"{tag}_loss_contour.png", "contour", list(range(len(y))),
                               [f"{name}, {t}" for t in titles]))
        paths.append(land.plot(figures / f"{tag}_loss_surface.png", "surface", 0, [f"{name}, {titles[0]}"]))
        paths.append(land.plot_slices(figures / f"{tag}_slices.png", list(range(len(y))),
                                      [f"{name}, {t}" for t in titles]))
    return paths


def divergence_vs_pgd(zoo: dict, x, y, eps_list, settings, divergences=("kl",), plain=False) -> list:
    rows = []
    for eps in eps_list:
        for name, model in zoo.items():
            for steps, restarts in settings:
                t0 = time.perf_counter()
                row = {"eps": eps, "model": name, "steps": steps, "restarts": restarts}
                for div in divergences:
                    for normalize in (True, False) if plain else (True,):
                        key = div if normalize else f"{div} plain"
                        row[key] = divergence_bound(model, x, eps=eps, steps=steps, restarts=restarts, divergence=div,
                                                    clip_values=CLIP, seed=0, progress=False,
                                                    normalize=normalize).mean
                x_adv = attacks.pgd(model, x, y, eps, steps=steps, restarts=restarts, clip_values=CLIP, seed=0,
                                    progress=False)
                row["pgd_acc"] = accuracy(model, x_adv, y)
                rows.append(row)
                log(f"{row} ({time.perf_counter() - t0:.0f} s)")
    return rows


def fmt_eps(eps: float, cifar: bool) -> str:
    return f"{round(eps * 255)}/255" if cifar else f"{eps:g}"


def tables(title: str, zoo, clean: dict, stats: dict, rows: list, cifar: bool) -> str:
    names = list(zoo)
    cols = list(next(iter(stats.values())))
    out = [f"### {title}", "", "| model | clean acc | " + " | ".join(cols) + " |", "|---" * (2 + len(cols)) + "|"]
    for name in names:
        out.append(f"| {name} | {clean[name]:.3f} | " + " | ".join(f"{v:.3g}" for v in stats[name].values()) + " |")
    divs = [d for d in ("kl", "kl plain", "js", "js plain") if d in rows[0]]
    settings = sorted({(r["steps"], r["restarts"]) for r in rows}, key=lambda s: (s[1], s[0]))
    eps_list = sorted({r["eps"] for r in rows})
    get = {(r["eps"], r["model"], r["steps"], r["restarts"]): r for r in rows}
    head = " | ".join(f"{s} st x {r} rs" for s, r in settings)
    quantities = " / ".join(f"mean {d.upper()} bound" for d in divs)
    out += ["", f"{quantities} (lower = more robust) / PGD accuracy (higher = more robust) at the same eps, "
            "steps and restarts; spread = (max - min) / mean over the settings.", "",
            f"| eps | model | {head} | " + " | ".join(f"{d.upper()} spread" for d in divs) + " | acc spread |",
            "|---" * (3 + len(settings) + len(divs)) + "|"]
    agree = []
    for eps in eps_list:
        for name in names:
            cell = [get[eps, name, s, r] for s, r in settings]
            cells = " | ".join(" / ".join([f"{c[d]:.4f}" for d in divs] + [f"{c['pgd_acc']:.3f}"]) for c in cell)
            spreads = " | ".join(f"{spread([c[d] for c in cell]):.2f}" for d in divs)
            out.append(f"| {fmt_eps(eps, cifar)} | {name} | {cells} | {spreads} | "
                       f"{spread([c['pgd_acc'] for c in cell]):.2f} |")
        for s, r in settings:
            ranks = {d: sorted(names, key=lambda n: get[eps, n, s, r][d]) for d in divs}
            ranks["PGD acc"] = sorted(names, key=lambda n: -get[eps, n, s, r]["pgd_acc"])
            agree.append((eps, s, r, ranks))
    out += ["", "Ranking, most robust first:", ""]
    for eps, s, r, ranks in agree:
        same = all(v == ranks["PGD acc"] for v in ranks.values())
        listed = "; ".join(f"{k.upper() if k in divs else k}: {' > '.join(v)}" for k, v in ranks.items())
        out.append(f"- eps {fmt_eps(eps, cifar)}, {s} steps x {r} restarts: {listed} "
                   f"({'same' if same else 'DIFFERENT'})")
    return "\n".join(out) + "\n"


def spread(values) -> float:
    mean = sum(values) / len(values)
    return (max(values) - min(values)) / mean if mean > 0 else float("nan")


def run_digits(args) -> str:
    zoo = digits_models(args.epochs, args.attack)
    x, y = data.digits("test")
    clean = {n: accuracy(m, x, y) for n, m in zoo.items()}
    pick = examples(zoo, x, y, 4)
    pics = pictures("digits", zoo, x[pick], y[pick], 0.5, args.figures)
    ok = agreed(zoo, x, y)[:100]
    stats = {n: landscape_stats(m, x[ok], y[ok], 0.5, 41) for n, m in zoo.items()}
    rows = divergence_vs_pgd(zoo, x, y, (0.05, 0.1, 0.2), [(5, 1), (10, 1), (20, 1), (50, 1), (20, 5)], ("kl", "js"))
    text = tables("Digits CNN: standard vs PGD adversarial training (L-inf, 359 test images)", zoo, clean, stats,
                  rows, False)
    return text + figure_list(pics, "digits loss landscapes (span 0.5, 41x41, 4 test images correct for all "
                              "models; red = decision boundary)")


def run_cifar(args) -> str:
    root = data.aisafety_dir(args.data_root)
    zoo = cifar_models(root)
    x, y = data.aisafety_cifar10(root)
    clean = {n: accuracy(m, x, y) for n, m in zoo.items()}
    span = 32 / 255
    pick = examples(zoo, x, y, 3)
    pics = pictures("cifar", zoo, x[pick], y[pick], span, args.figures)
    ok = agreed(zoo, x, y)[:12]
    stats = {n: landscape_stats(m, x[ok], y[ok], span, 21) for n, m in zoo.items()}
    rows = divergence_vs_pgd(zoo, x, y, (2 / 255, 8 / 255), [(5, 1), (10, 1), (20, 1), (10, 3)])
    text = tables("CIFAR-10 ResNet-20 (AISafety weights, L-inf, 100 images)", zoo, clean, stats, rows, True)
    return text + figure_list(pics, "CIFAR-10 loss landscapes (span 32/255, 41x41, 3 images correct for all "
                              "models; red = decision boundary)")


def run_cifar_div(args) -> str:
    root = data.aisafety_dir(args.data_root)
    zoo = cifar_models(root)
    x, y = data.aisafety_cifar10(root)
    clean = {n: accuracy(m, x, y) for n, m in zoo.items()}
    with torch.no_grad():
        stats = {n: {"mean clean-logit std (temperature)": logit_temperature(m(x)).mean().item()}
                 for n, m in zoo.items()}
    rows = divergence_vs_pgd(zoo, x, y, (2 / 255, 8 / 255), [(5, 1), (10, 1), (20, 1), (10, 3)], plain=True)
    return tables("CIFAR-10 ResNet-20 (AISafety weights, L-inf, 100 images): scale-invariant vs plain KL bound",
                  zoo, clean, stats, rows, True)


def figure_list(paths, caption: str) -> str:
    return f"\nFigures, {caption}: " + ", ".join(f"[{p.name}](figures/{p.name})" for p in paths) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("digits", "cifar", "cifar-div", "all"), default="all")
    parser.add_argument("--epochs", type=int, default=30, help="adversarial training epochs (digits)")
    parser.add_argument("--attack", choices=tuple(attacks.ATTACKS), default="pgd",
                        help="attack of the adversarial training (digits; default: pgd)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--figures", type=Path, default=Path(__file__).resolve().parent / "figures")
    parser.add_argument("--data-root", default=None, help="AISafety CIFAR-10 folder")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.part in ("digits", "all"):
        print(run_digits(args), flush=True)
    if args.part in ("cifar", "all"):
        print(run_cifar(args), flush=True)
    if args.part == "cifar-div":
        print(run_cifar_div(args), flush=True)
    log(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
