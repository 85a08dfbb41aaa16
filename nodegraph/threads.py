"""Sizing torch's thread pool so that a busy machine slows a run down in proportion, not by 10-30x.

Every op of these small networks is split across the intra-op (OpenMP) threads and ends at a barrier. With
OpenMP's default waits, a thread that reaches the barrier first spins, holding its CPU, while the thread it
waits for may have been preempted by another process: on the 2-core machine beside one busy process, two
threads took a median 2.9 s and at worst 27.9 s for 50 decoder steps that one thread does in 1.2 s (0.8 s on
two idle cores). bench/threads.py, with other sessions keeping both cores busy, 50 steps, median (worst):
2 threads 36 s (134 s), 44 s (103 s) beside a spinning process; 1 thread 3.3 s (11.8 s), 7.6 s (16.3 s).
Three remedies, measured there:

- passive waits (OMP_WAIT_POLICY=PASSIVE): a waiting thread sleeps and gives its CPU back. Two such threads
  took 3.4 s (6.8 s), and 3.7 s (5.8 s) beside the spinner, since each thread also gets its own share of a
  contended CPU. But every op's barrier then wakes a sleeping thread: on two idle cores the same 50 steps
  took 1.81-1.99 s against 1.15-1.18 s with spinning waits, slower than one thread (1.80 s);
- sizing the pool to the CPUs that are free: those this process may run on (`os.sched_getaffinity`, capped
  by a cgroup CPU quota) less what other processes used over a recent window (`/proc/stat`'s per-CPU busy
  time minus this process's own CPU time), decided when a run starts (over at least 50 ms since the policy
  was made: the CLI makes it before torch loads, so the look costs a run nothing) and again at most every
  half second while it runs (`check`, from a progress callback, without waiting). With default waits
  that avoids the collapse (3.9 s, 7.2 s under other sessions' load) but cannot use a partly busy CPU;
- brief spins (GOMP_SPINCOUNT=3000): a waiter spins about 0.1 ms, long enough for the next op's work to
  arrive on an idle machine, then sleeps. Two threads with brief spins took 3.6 s beside a busy process where
  default spins took 4.7 s and 100 000 spins 30 s.

The CLI combines the last two (`prepare_openmp` sets the spin count before torch loads OpenMP, which reads it
once, unless the user chose a wait policy): on two idle cores 1.22 s (worst 1.31 s), beside a busy process
1.76 s (1.96 s) on one thread, against the passive policy's 1.81 s and 2.03 s (bench/threads.py, 4 repeats,
interleaved). With passive waits set by the user, `auto` takes every usable CPU without looking.

The setting is the environment variable NODEGRAPH_THREADS:
- "auto" (the default): as above, never more than torch's own default (the physical cores);
- N: always N threads;
- "torch": leave torch and OpenMP alone (also the default when OMP_NUM_THREADS is set: the user chose).

Torch's inter-op pool (used only by torch.jit.fork, not by eager ops) is kept to one thread so that the two
pools never compete for the same cores. The CLI asks for brief spins for every command and sizes the pool
before each `run` and, under `serve`, before each prompt (the server's PromptRunner); `ThreadPolicy` is also
for other long-lived callers (a bench).
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from nodegraph.errors import ConfigError

ENV = "NODEGRAPH_THREADS"
LOOK_S = 0.05  # the first look at the machine when a run starts
CHECK_EVERY_S = 0.5  # re-decisions while running; also the window they average over
FREE_FRACTION = 0.75  # a CPU counts as free when at least this much of it was idle
SPIN_COUNT = 3000  # OpenMP waits spin this many times before sleeping (see the module docstring)


def current_setting() -> str:
    """NODEGRAPH_THREADS, or its default ("torch" when the user set OMP_NUM_THREADS, else "auto")."""
    return os.environ.get(ENV) or ("torch" if os.environ.get("OMP_NUM_THREADS") else "auto")


def prepare_openmp() -> bool:
    """Ask OpenMP for brief spins (SPIN_COUNT) before torch loads it, unless the user chose a wait policy or the
    setting is "torch"; True when it did. Does nothing once torch is imported (OpenMP has read its settings then)."""
    return "torch" not in sys.modules and ask_for_brief_spins()


def ask_for_brief_spins() -> bool:
    """Set GOMP_SPINCOUNT for OpenMP to read when it loads, unless the user chose a wait policy or the setting is
    "torch"; True when it did. A process that has loaded torch already must start over for it to act (a bench)."""
    chosen = os.environ.get("OMP_WAIT_POLICY") or os.environ.get("GOMP_SPINCOUNT")
    if chosen or current_setting() == "torch":
        return False
    os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    return True


def passive_waits() -> bool:
    """Whether OpenMP's waiting threads sleep (as the environment says: it is read when torch loads)."""
    return os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity set, capped by a cgroup v2 CPU quota (containers)."""
    cpus = len(_affinity())
    quota = _cgroup_quota()
    return max(1, min(cpus, math.floor(quota)) if quota else cpus)


def _affinity() -> set[int]:
    try:
        return os.sched_getaffinity(0)
    except (AttributeError, OSError):  # not Linux
        return set(range(os.cpu_count() or 1))


def _cgroup_quota() -> float | None:
    """CPUs allowed by /sys/fs/cgroup/cpu.max ("max 100000" = no limit); None when there is no quota."""
    try:
        limit, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if limit == "max" else int(limit) / int(period)
    except (OSError, ValueError):
        return None


def _busy_seconds(cpus: set[int]) -> float | None:
    """CPU-seconds the CPUs in `cpus` have spent not idle since boot (steal counts as busy); None off Linux."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    ticks = 0
    for line in lines:
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            v = [int(x) for x in values[:8]]  # user nice system idle iowait irq softirq steal
            ticks += sum(v) - v[3] - v[4]
    return ticks / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


@dataclass(frozen=True)
class Sample:
    at: float  # time.monotonic()
    busy: float  # CPU-seconds the usable CPUs were busy since boot
    own: float  # CPU-seconds this process has used


def sample(cpus: set[int] | None = None) -> Sample | None:
    """The counters `others_busy` compares (None where /proc/stat cannot be read)."""
    busy = _busy_seconds(cpus if cpus is not None else _affinity())
    return None if busy is None else Sample(time.monotonic(), busy, _own_cpu_seconds())


def others_busy(before: Sample, after: Sample) -> float:
    """CPUs' worth of work other processes did on the usable CPUs between two samples."""
    elapsed = max(after.at - before.at, 1e-3)
    return max(0.0, (after.busy - before.busy) - (after.own - before.own)) / elapsed


def look(seconds: float = LOOK_S) -> float | None:
    """`others_busy` over the next `seconds` (waiting meanwhile); None off Linux."""
    before = sample()
    time.sleep(seconds)
    after = sample()
    return None if before is None or after is None else others_busy(before, after)


def threads_for(busy: float, cpus: int, ceiling: int) -> int:
    """Threads to use when other processes keep `busy` CPUs busy on average: the free ones, at least 1."""
    free = math.floor(cpus - busy + (1.0 - FREE_FRACTION))
    return max(1, min(free, cpus, ceiling))


@dataclass
class ThreadPolicy:
    """The policy for one process; `start` before each run, `check` as often as convenient while it runs."""

    setting: str = field(default_factory=current_setting)
    passive: bool = field(default_factory=passive_waits)  # OpenMP's waits: passive -> every usable CPU
    threads: int | None = None  # the count last set
    others_busy: float | None = None  # what the last decision saw (CPUs' worth of other processes' work)
    _ceiling: int = 0
    _cpus: set[int] = field(default_factory=set)
    _last: Sample | None = None

    def __post_init__(self) -> None:
        if self.setting not in ("auto", "torch") and not (self.setting.isdigit() and int(self.setting) > 0):
            raise ConfigError(f"{ENV} must be 'auto', 'torch' or a positive number of threads, not {self.setting!r}")
        if self.setting == "auto" and not self.passive:
            # The look starts now: a policy made before torch loads has looked long enough by the first run.
            self._cpus = _affinity()
            self._last = sample(self._cpus)

    def start(self) -> int | None:
        """Decide for a run about to start (auto with spinning waits: on what other processes did since the policy
        was made or last decided, waiting until that window is LOOK_S long); the count set."""
        import torch

        if not self._ceiling:
            self._ceiling = torch.get_num_threads()  # torch's default: the physical cores
            self._cpus = _affinity()
            _single_interop_thread(torch)
        if self.setting == "torch":
            return None
        if self.setting != "auto":
            return self._set(int(self.setting))
        if self.passive:
            return self._set(min(usable_cpus(), self._ceiling))
        if self._last is None:
            self._last = sample(self._cpus)
        if self._last is not None:
            time.sleep(max(0.0, LOOK_S - (time.monotonic() - self._last.at)))
        return self._decide()

    def for_run(self, on_event=None):
        """Size the pool for a run about to start and return its on_event callback (see `watch`). The first run
        looks at the machine (`start`); later ones re-decide without waiting (`check`), so a batch of short runs
        or a server's stream of prompts pays the look once."""
        if self._ceiling:
            self.check()
        else:
            self.start()
        return self.watch(on_event)

    def check(self) -> int | None:
        """Re-decide if CHECK_EVERY_S has passed since the last decision (no waiting); the count in force."""
        if self.setting != "auto" or self._last is None or time.monotonic() - self._last.at < CHECK_EVERY_S:
            return self.threads
        return self._decide()

    def watch(self, on_event=None):
        """An engine on_event callback that re-decides on progress events, then passes events on."""

        def callback(kind: str, data: dict) -> None:
            if kind == "progress":
                self.check()
            if on_event is not None:
                on_event(kind, data)

        return callback

    def _decide(self) -> int:
        now = sample(self._cpus)
        if now is None or self._last is None:  # no /proc/stat: all usable CPUs
            return self._set(min(usable_cpus(), self._ceiling))
        self.others_busy = others_busy(self._last, now)
        self._last = now
        return self._set(threads_for(self.others_busy, usable_cpus(), self._ceiling))

    def _set(self, n: int) -> int:
        if n != self.threads:
            import torch

            torch.set_num_threads(n)
            self.threads = n
        return n


def _single_interop_thread(torch) -> None:
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only possible before the pool first runs; then it is already what it will be
        pass


__all__ = ["ENV", "SPIN_COUNT", "Sample", "ThreadPolicy", "ask_for_brief_spins", "current_setting", "look",
           "others_busy", "passive_waits", "prepare_openmp", "sample", "threads_for", "usable_cpus"]
