"""Neuron sensitivity of standard, PGD-adversarially-trained and SNS-trained models.

Checks two claims of Zhang et al. (arXiv 1909.06978): adversarial training lowers
neuron sensitivity, and SNS training lowers it further or reaches similar robustness.

Part 1 trains three (or more) DigitsCNNs on robustx.data.digits with the same budget
(architecture, optimiser, batches, epochs, PGD settings, seeds) and reports clean
accuracy, PGD accuracy and the mean neuron sensitivity of every Conv/Linear layer,
sensitivity measured with white-box PGD examples against each model, and a relative
sensitivity with each layer's activation scale divided out. Part 2 reports the
same for the three real CIFAR-10 ResNet-20s of ../shared/data/aisafety-cifar10 (PGD L-inf
8/255, 10 steps of 2/255). Prints markdown tables; weights and plots go to --out.

    python3 bench/exp_sensitivity.py            # ~4 min on 2 busy cores
"""
import argparse
import time
from pathlib import Path

import torch


from robustx.attacks import pgd
from robustx.data import aisafety_cifar10, aisafety_dir, digits
from robustx.defenses import train_adversarial
from robustx.models import DigitsCNN, resnet20_cifar
from robustx.modelutil import LayerOutputs, resolve_layers
from robustx.sensitivity import LayerScores, neuron_sensitivity

CIFAR_WEIGHTS = {
    "natural (resnet20_cifar.pt)": "resnet20_cifar.pt",
    "PGD-AT (CIFAR10_PAT_enhanced.pt)": "CIFAR10_PAT_enhanced.pt",
    "RAND (CIFAR10_RAND_enhanced.pt)": "CIFAR10_RAND_enhanced.pt",
}


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(dim=1) == y).float().mean().item()


def relative_sensitivity(model, x, sens: LayerScores) -> float:
    """Mean over layers of (layer-mean sigma) / (mean |F_l(x)| on the benign inputs): the
    sensitivity with each layer's activation scale divided out (a model can lower raw
    sigma by shrinking its activations)."""
    modules = resolve_layers(model, list(sens))
    with torch.no_grad(), LayerOutputs(modules) as rec:
        model(x)
        scale = {n: rec.outputs[n].abs().mean().item() for n in modules}
    return sum(sens[n].mean().item() / scale[n] for n in modules) / len(modules)


def evaluate(model, x, y, eps, steps, step_size, seed):
    """Clean accuracy, PGD accuracy, the sensitivity on (x, PGD(x)) and its relative value."""
    model.eval()
    x_adv = pgd(model, x, y, eps, steps=steps, step_size=step_size, seed=seed)
    sens = neuron_sensitivity(model, x, x_adv, progress=False)
    return accuracy(model, x, y), accuracy(model, x_adv, y), sens, relative_sensitivity(model, x, sens)


def table(rows, layers) -> str:
    head = "| model | train s | clean acc | PGD acc | " + " | ".join(f"σ {n}" for n in layers)
    lines = [head + " | σ all | rel σ |", "|" + " --- |" * (6 + len(layers))]
    for name, secs, clean, robust, sens, rel in rows:
        means = sens.layer_means()
        cells = " | ".join(f"{means[n]:.4f}" for n in layers)
        lines.append(f"| {name} | {secs} | {clean:.3f} | {robust:.3f} | {cells} | {sens.value:.4f} | {rel:.3f} |")
    return "\n".join(lines)


def digits_part(args, out: Path) -> str:
    x, y = digits("train")
    xt, yt = digits("test")
    runs = [("standard", "standard", 0.0), ("PGD-AT", "pgd", 0.0)]
    runs += [(f"SNS λ={lam:g}", "sns", lam) for lam in args.lam]
    rows = []
    for label, method, lam in runs:
        torch.manual_seed(args.seed)
        model = DigitsCNN()
        start = time.perf_counter()
        hist = train_adversarial(model, (x, y), method=method, epochs=args.epochs, lr=args.lr, eps=args.eps,
                                 steps=args.train_steps, sns_lambda=lam, sns_top_k=args.top_k,
                                 refresh_every=args.refresh_every, seed=args.seed)
        secs = time.perf_counter() - start
        tag = method + (f"_{lam:g}" if method == "sns" else "")
        torch.save(model.state_dict(), out / f"digits_{tag}.pt")
        clean, robust, sens, rel = evaluate(model, xt, yt, args.eps, args.eval_steps, None, args.seed + 1)
        sens.plot(out / f"sensitivity_digits_{tag}.png", title=f"digits {label}")
        print(f"{label}: {secs:.0f} s, last epoch {hist[-1]}", flush=True)
        rows.append((label, f"{secs:.0f}", clean, robust, sens, rel))
    return table(rows, list(rows[0][4]))


def cifar_part(args, out: Path) -> str:
    folder = aisafety_dir()
    x, y = aisafety_cifar10()
    rows = []
    for label, file in CIFAR_WEIGHTS.items():
        model = resnet20_cifar(folder / file)
        clean, robust, sens, rel = evaluate(model, x, y, 8 / 255, 10, 2 / 255, args.seed)
        sens.plot(out / f"sensitivity_cifar_{file.split('.')[0]}.png", title=label)
        rows.append((label, "-", clean, robust, sens, rel))
    layers = list(rows[0][4])
    summary = table([(n, s, c, r, by_stage(v), rel) for n, s, c, r, v, rel in rows],
                    ["conv1", "layer1", "layer2", "layer3", "fc"])
    per_layer = ["| layer | " + " | ".join(r[0].split()[0] for r in rows) + " |", "|" + " --- |" * (1 + len(rows))]
    per_layer += [f"| {n} | " + " | ".join(f"{r[4].layer_means()[n]:.4f}" for r in rows) + " |" for n in layers]
    return summary + "\n\nPer layer (mean σ over the layer's neurons):\n\n" + "\n".join(per_layer)


def by_stage(sens: LayerScores) -> LayerScores:
    """Neurons grouped by ResNet stage (conv1, layer1, layer2, layer3, fc)."""
    groups = {}
    for name, s in sens.items():
        groups.setdefault(name.split(".")[0], []).append(s)
    return LayerScores({g: torch.cat(v) for g, v in groups.items()}, sens.n_inputs, sens.quantity)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eps", type=float, default=0.1, help="L-inf eps for training and evaluation (digits)")
    parser.add_argument("--train-steps", type=int, default=7)
    parser.add_argument("--eval-steps", type=int, default=20)
    parser.add_argument("--lam", type=float, nargs="+", default=[0.1, 0.3], help="SNS lambda values")
    parser.add_argument("--top-k", type=float, default=0.1, help="SNS: fraction of sensitive neurons per layer")
    parser.add_argument("--refresh-every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for tiny models)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    parser.add_argument("--skip-cifar", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"## digits (eps {args.eps:g}, {args.epochs} epochs, PGD-{args.train_steps} training, "
          f"PGD-{args.eval_steps} evaluation)\n")
    print(digits_part(args, args.out) + "\n", flush=True)
    if not args.skip_cifar:
        if not (aisafety_dir() / "resnet20_cifar.pt").is_file():
            print(f"(CIFAR-10 part skipped: no data at {aisafety_dir()})")
            return
        print("## CIFAR-10 ResNet-20 (100 AISafety images, PGD L-inf 8/255, 10 x 2/255, random start)\n")
        print(cifar_part(args, args.out))


if __name__ == "__main__":
    main()
