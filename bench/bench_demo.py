"""Where `robustx demo`'s wall time goes: per attack and per metric, from one run's report.

    python3 bench/bench_demo.py [--out bench/out/demo] [--append]

Runs the demo (the whole suite on 128 digits test images), then prints a Markdown table of
the shared attacks' and every metric's seconds (a metric's seconds include the model passes
it makes; the attacks are made once, before the metrics, and shared) and the total wall
time; ``--append`` adds it to bench/RESULTS.md with the command.
"""
import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "demo"))
    ap.add_argument("--append", action="store_true")
    args = ap.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "robustx", "demo", "--out", args.out, "--no-progress"], check=True,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    doc = json.loads((Path(args.out) / "report.json").read_text())
    rows = list(doc["run"]["attack_seconds"].items())
    rows += [(name, m["seconds"]) for name, m in doc["metrics"].items() if m["value"] is not None]
    rows.sort(key=lambda r: -r[1])
    inside = doc["run"]["seconds"]
    lines = ["| work | seconds | share of evaluate |", "| --- | --- | --- |"]
    lines += [f"| {name} | {s:.2f} | {s / inside:.1%} |" for name, s in rows if s >= 0.05]
    small = sum(s for _, s in rows if s < 0.05)
    lines.append(f"| every other metric (pure functions of stored tensors) | {small:.2f} | {small / inside:.1%} |")
    table = "\n".join(lines)
    summary = (f"Wall time of `robustx demo`: {wall:.1f} s, of which evaluate {inside:.1f} s (the rest: interpreter "
               f"start, imports, loading the digits data and writing the report).")
    print(summary + "\n\n" + table)
    if args.append:
        with open(ROOT / "bench" / "RESULTS.md", "a") as f:
            f.write(f"\n## Where the demo's time goes (bench/bench_demo.py)\n\nCommand: `python3 bench/bench_demo.py "
                    f"--append` (2-core CPU, shared).\n{summary}\n\n{table}\n")


if __name__ == "__main__":
    main()
