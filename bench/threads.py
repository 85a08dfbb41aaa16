"""Thread policy under contention: the main job's decoder (50 DDIM steps, CFG 3, batch 2) with 1 and 2 torch
threads as torch sets them up, and with nodegraph.threads' policy, alone and beside a busy process, median and
worst over repeats.

    .venv/bin/python bench/threads.py [--repeats 7] [--steps 50] [--spin] [--settings "1,2,auto,2 PASSIVE"]

Settings: N = N threads with OpenMP's default (spinning) waits; "auto" = the CLI's policy (brief spins, the
CPUs other processes leave free); "auto spinning" = the policy for a library caller that imported torch first
(default spins, the free CPUs); "auto PASSIVE" = the policy under passive waits (every usable CPU); "N PASSIVE"
/ "N SPIN=k" = N threads with OMP_WAIT_POLICY=PASSIVE / GOMP_SPINCOUNT=k. Each setting runs in its own warm
worker process (models loaded once); the busy process is a Python spin loop this bench starts (one CPU's
worth of work). Runs are interleaved: every repeat runs each setting alone and then each beside the spinner,
in an order rotated per repeat. "Other load" is what other processes on the machine (not this bench's) kept
busy, in CPUs, measured just before each block.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SPIN = "while True:\n    pass\n"


def worker(setting: str, steps: int) -> None:
    """Serve runs on stdin ("run" -> one JSON line: seconds and the thread counts used)."""
    from nodegraph.threads import prepare_openmp

    if setting == "auto":
        prepare_openmp()  # as the CLI does, before torch loads OpenMP
    import torch
    import torch.nn.functional as F

    from nodegraph.generate.conditions import Condition, Guidance
    from nodegraph.generate.sampling import SamplerSettings, run_denoiser
    from nodegraph.models import loader
    from nodegraph.threads import ThreadPolicy

    policy = ThreadPolicy(setting.split()[0])
    clip, decoder = loader.load("clip"), loader.load("decoder")
    text = clip.encode_text(["a large red circle on the left on a blue background"])
    embed = F.normalize(torch.randn(1, 128, generator=torch.Generator().manual_seed(0)), dim=-1)
    guidance = Guidance.cfg(Condition(text=text, image_embed=embed), 3.0)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def run(n: int) -> dict:
        seen = {policy.start()}

        def step(*_):
            seen.add(policy.check())

        t0 = time.perf_counter()
        with torch.no_grad():
            run_denoiser(decoder, x, guidance, SamplerSettings(steps=n), callback=step)
        return {"seconds": time.perf_counter() - t0, "threads": sorted(t for t in seen if t)}

    run(2)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip() == "run":
            print(json.dumps(run(steps)), flush=True)


class Worker:
    def __init__(self, setting: str, steps: int) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
        for word in setting.split()[1:]:  # "2 PASSIVE", "2 SPIN=10000": OpenMP's wait settings for this worker
            if word == "PASSIVE":
                env["OMP_WAIT_POLICY"] = "PASSIVE"
            elif word.startswith("SPIN="):
                env["GOMP_SPINCOUNT"] = word[5:]
        self.setting = setting
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", setting, "--steps", str(steps)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                     preexec_fn=_renice)
        json.loads(self.proc.stdout.readline())

    def run(self) -> dict:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


NICE = [0]  # --nice: the workers' and the spinner's niceness


def _renice() -> None:
    if NICE[0]:
        os.nice(NICE[0])


def other_load() -> float:
    """CPUs' worth of work other processes did over half a second (this one sleeps meanwhile)."""
    from nodegraph.threads import look

    return look(0.5) or 0.0


def measure(settings: list[str], repeats: int, steps: int) -> tuple[dict, dict]:
    workers = [Worker(s, steps) for s in settings]
    results: dict = {(s, c): [] for s in settings for c in ("alone", "busy")}
    load: dict = {"alone": [], "busy": []}
    try:
        for r in range(repeats):
            order = workers[r % len(workers):] + workers[:r % len(workers)]
            for cond in ("alone", "busy"):
                load[cond].append(other_load())  # before the spinner starts: the machine's own background
                spinner = subprocess.Popen([sys.executable, "-c", SPIN], preexec_fn=_renice) if cond == "busy" else None
                try:
                    time.sleep(0.3 if spinner else 0.0)
                    for w in order:
                        results[(w.setting, cond)].append(w.run())
                finally:
                    if spinner is not None:
                        spinner.kill()
                        spinner.wait()
                print(f"repeat {r + 1}/{repeats} {cond}: " + ", ".join(
                    f"{w.setting} {results[(w.setting, cond)][-1]['seconds']:.2f}s" for w in workers), file=sys.stderr)
    finally:
        for w in workers:
            w.close()
    return results, load


def report(results: dict, load: dict, settings: list[str], steps: int, repeats: int) -> None:
    print(f"\n## Decoder, {steps} DDIM steps with CFG (batch 2), {repeats} repeats per cell, "
          f"{len(os.sched_getaffinity(0))} usable CPUs\n")
    print(f"Other load on the machine (CPUs busy, outside this bench): alone blocks median "
          f"{statistics.median(load['alone']):.2f}, busy blocks median {statistics.median(load['busy']):.2f} "
          f"(max {max(load['alone'] + load['busy']):.2f})\n")
    print("| threads | alone median (s) | alone worst (s) | beside a busy process median (s) | worst (s) | "
          "threads used (alone / busy) |")
    print("|---|---|---|---|---|---|")
    for s in settings:
        cells = []
        for cond in ("alone", "busy"):
            t = [x["seconds"] for x in results[(s, cond)]]
            cells += [f"{statistics.median(t):.2f}", f"{max(t):.2f}"]
        used = " / ".join(",".join(sorted({str(n) for x in results[(s, c)] for n in x["threads"]}) or "?")
                          for c in ("alone", "busy"))
        print(f"| {s} | " + " | ".join(cells) + f" | {used} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--spin", action="store_true", help="also 2 threads spinning briefly (GOMP_SPINCOUNT=3000)")
    ap.add_argument("--settings", default="", help="comma-separated, e.g. '1,2,2 PASSIVE,2 SPIN=10000,auto'")
    ap.add_argument("--nice", type=int, default=0,
                    help="niceness of the workers and the spinner; negative (root) emulates an otherwise idle machine "
                    "by putting the bench ahead of background work (which it then starves while it runs)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.steps)
        return
    NICE[0] = args.nice
    settings = [s.strip() for s in args.settings.split(",") if s.strip()] or (
        ["1", "2", "auto", "auto PASSIVE", "auto spinning"] + (["2 SPIN=3000"] if args.spin else []))
    results, load = measure(settings, args.repeats, args.steps)
    report(results, load, settings, args.steps, args.repeats)


if __name__ == "__main__":
    main()
