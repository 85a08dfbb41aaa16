"""Start-up cost of the command line: wall time and peak RSS of `nodegraph --help`, `nodes`, `validate` and
a cold `run` of the main job, beside `python -c "import torch"` and importing torch plus loading the main
job's four models, all measured in this one run (median of --repeats fresh processes each).

    .venv/bin/python bench/startup.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MAIN = ["workflows/dalle2_text2img.json", "--param", "prompt=a large red circle on the left on a blue background"]
LOAD_MODELS = ("from nodegraph.models import loader\n"
               "for family in ('clip', 'prior', 'decoder', 'upsampler'): loader.load(family)")


def measure(argv: list[str], repeats: int) -> tuple[float, float]:
    """Median wall seconds and peak RSS (MB) of fresh processes running argv."""
    times, peaks = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        times.append(time.perf_counter() - start)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{' '.join(argv)} failed")
        peaks.append(usage.ru_maxrss / 1024)
    return statistics.median(times), statistics.median(peaks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    python, cli = sys.executable, [sys.executable, "-m", "nodegraph"]
    out = tempfile.mkdtemp(prefix="startup-")
    rows = {
        "import torch": [python, "-c", "import torch"],
        "import torch + load 4 models": [python, "-c", LOAD_MODELS],
        "nodegraph --help": [*cli, "--help"],
        "nodegraph nodes": [*cli, "nodes"],
        "nodegraph validate": [*cli, "validate", MAIN[0]],
        "nodegraph run (cold, main job)": [*cli, "run", *MAIN, "--out", out],
    }
    results = {name: measure(argv, args.repeats) for name, argv in rows.items()}
    torch_s = results["import torch"][0]
    print(f"{'command':<34}{'wall s':>8}{'x torch':>9}{'peak MB':>9}")
    print("-" * 60)
    for name, (seconds, peak) in results.items():
        print(f"{name:<34}{seconds:>8.2f}{seconds / torch_s:>9.2f}{peak:>9.0f}")
    over = results["nodegraph run (cold, main job)"][0] - results["import torch + load 4 models"][0]
    print(f"\ncold run minus (import torch + load models): {over:.2f} s (the job itself, plus engine start-up)")


if __name__ == "__main__":
    main()
