"""The thread policy: torch's pool sized by the CPUs other processes leave free (nodegraph.threads)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from nodegraph import threads
from nodegraph.cli import main
from nodegraph.errors import ConfigError
from nodegraph.threads import ThreadPolicy, threads_for, usable_cpus


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(("busy", "cpus", "ceiling", "expected"), [
    (0.0, 2, 2, 2), (0.2, 2, 2, 2),  # idle, or a little background noise: every CPU
    (0.3, 2, 2, 1), (1.0, 2, 2, 1), (1.9, 2, 2, 1), (7.0, 2, 2, 1),  # a CPU counts only when 3/4 of it is idle
    (0.0, 8, 4, 4), (3.0, 8, 8, 5), (8.0, 8, 8, 1),  # never above torch's default, never below one
])
def test_threads_follow_the_free_cpus(busy, cpus, ceiling, expected):
    assert threads_for(busy, cpus, ceiling) == expected


def test_settings_are_checked_and_fixed_counts_are_set(monkeypatch):
    for bad in ("x", "0", "-1", "2.5"):
        with pytest.raises(ConfigError, match="NODEGRAPH_THREADS"):
            ThreadPolicy(bad)
    assert ThreadPolicy("1").start() == 1 and torch.get_num_threads() == 1
    torch.set_num_threads(1)
    assert ThreadPolicy("torch").start() is None and torch.get_num_threads() == 1  # left alone
    monkeypatch.delenv(threads.ENV, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert ThreadPolicy().setting == "torch"  # the user already chose
    monkeypatch.setenv(threads.ENV, "2")
    assert ThreadPolicy().setting == "2"


class FakeMachine:
    """/proc/stat and this process's CPU time as a test drives them: `others` CPUs busy besides our own work."""

    def __init__(self, monkeypatch, cpus: int = 2) -> None:
        self.clock, self.busy, self.own, self.others, self.ours = 0.0, 0.0, 0.0, 0.0, 0.0
        monkeypatch.setattr(threads, "usable_cpus", lambda: cpus)
        monkeypatch.setattr(threads, "_busy_seconds", lambda _cpus: self.busy)
        monkeypatch.setattr(threads, "_own_cpu_seconds", lambda: self.own)
        monkeypatch.setattr(threads.time, "monotonic", lambda: self.clock)
        monkeypatch.setattr(threads.time, "sleep", self.advance)
        torch.set_num_threads(cpus)  # the policy's ceiling is torch's default

    def advance(self, seconds: float) -> None:
        self.clock += seconds
        self.busy += (self.others + self.ours) * seconds
        self.own += self.ours * seconds


def test_auto_counts_other_processes_not_its_own_work(monkeypatch):
    machine = FakeMachine(monkeypatch)
    policy = ThreadPolicy("auto", passive=False)
    assert policy.start() == 2  # idle machine
    machine.ours = 2.0  # our own two threads at work: not a reason to shrink
    machine.advance(0.6)
    assert policy.check() == 2
    machine.others = 1.0  # another process starts mid-run
    machine.advance(0.6)
    assert policy.check() == 1 and torch.get_num_threads() == 1
    machine.ours = 1.0
    machine.advance(0.1)
    assert policy.check() == 1  # within CHECK_EVERY_S: no new decision, nothing read
    machine.others = 0.0  # it stops
    machine.advance(0.6)
    assert policy.check() == 2
    machine.others = 1.0
    assert policy.start() == 1  # the next run starts beside it


def test_progress_events_drive_the_checks(monkeypatch):
    machine = FakeMachine(monkeypatch)
    seen = []
    policy = ThreadPolicy("auto", passive=False)
    callback = policy.watch(lambda kind, data: seen.append(kind))
    policy.start()
    machine.others = 1.5
    machine.advance(1.0)
    callback("executing", {"node": "a"})
    assert policy.threads == 2  # only progress events re-decide
    callback("progress", {"node": "a", "value": 1, "max": 2})
    assert policy.threads == 1 and seen == ["executing", "progress"]


def test_for_run_looks_at_the_machine_once_then_re_decides_without_waiting(monkeypatch):
    """What the CLI (each run of a batch) and `serve` (each prompt) call: a batch of short runs pays one look."""
    machine = FakeMachine(monkeypatch)
    policy = ThreadPolicy("auto", passive=False)
    seen = []
    callback = policy.for_run(lambda kind, data: seen.append(kind))
    assert machine.clock == threads.LOOK_S and policy.threads == 2  # the first run: one look
    machine.others = 1.5
    machine.advance(1.0)
    waited_from = machine.clock
    policy.for_run()
    assert machine.clock == waited_from and policy.threads == 1  # the next: re-decided, no waiting
    callback("progress", {"node": "a", "value": 1, "max": 2})
    assert seen == ["progress"]


def test_the_look_starts_when_the_policy_is_made(monkeypatch):
    """The CLI makes its policy before torch loads: by the first run the look is done, and it saw that window."""
    machine = FakeMachine(monkeypatch)
    policy = ThreadPolicy("auto", passive=False)
    machine.ours, machine.others = 1.0, 1.0  # importing torch on one CPU, another process on the other
    machine.advance(1.3)
    started = machine.clock
    assert policy.start() == 1 and machine.clock == started  # no waiting; the other process was seen
    torch.set_num_threads(2)  # a new process's ceiling: torch's default
    fresh = ThreadPolicy("auto", passive=False)
    machine.ours, machine.others = 0.0, 0.0
    machine.advance(0.01)
    started = machine.clock
    assert fresh.start() == 2
    assert machine.clock == pytest.approx(started + threads.LOOK_S - 0.01)  # waits out the rest of the look


def test_usable_cpus_is_at_least_one_and_at_most_the_affinity_set():
    import os

    assert 1 <= usable_cpus() <= len(os.sched_getaffinity(0))


@pytest.mark.skipif(usable_cpus() > 4, reason="needs one spinning process per usable CPU")
def test_auto_takes_one_thread_when_every_cpu_is_busy():
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(usable_cpus())]
    try:
        time.sleep(0.5)
        assert ThreadPolicy("auto", passive=False).start() == 1
    finally:
        for p in spinners:
            p.kill()
            p.wait()


def test_cli_refuses_a_bad_setting_as_invalid_input(monkeypatch, capsys):
    monkeypatch.setenv(threads.ENV, "many")
    assert main(["run", "workflows/utility_add.json"]) == 2
    assert "NODEGRAPH_THREADS must be" in capsys.readouterr().err


def test_with_passive_waits_auto_takes_every_usable_cpu_even_beside_others(monkeypatch):
    """Sleeping waiters give a preempted partner's CPU back, and each thread gets its own share of a busy CPU
    (bench/threads.py: 2 passive threads beat 1 beside a busy process), so nothing is held back or measured."""
    machine = FakeMachine(monkeypatch)
    machine.others = 2.0
    policy = ThreadPolicy("auto", passive=True)
    assert policy.start() == 2 and machine.clock == 0.0  # no look at the machine
    machine.advance(1.0)
    assert policy.check() == 2


@pytest.mark.parametrize(("env", "code", "expected"), [
    ({}, "", "True None 3000"),
    ({"OMP_WAIT_POLICY": "PASSIVE"}, "", "False PASSIVE None"),  # the user's choice stands
    ({"GOMP_SPINCOUNT": "1000"}, "", "False None 1000"),
    ({"NODEGRAPH_THREADS": "torch"}, "", "False None None"),
    ({}, "import torch; ", "False None None"),  # too late: OpenMP has read its settings
])
def test_prepare_openmp_asks_for_brief_spins_only_before_torch_loads(env, code, expected):
    import os

    clean = {k: v for k, v in os.environ.items()
             if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "NODEGRAPH_THREADS", "OMP_NUM_THREADS")}
    script = (f"{code}import os; from nodegraph.threads import prepare_openmp; "
              "print(prepare_openmp(), os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))")
    out = subprocess.run([sys.executable, "-c", script], env={**clean, **env}, capture_output=True, text=True)
    assert out.stdout.strip() == expected, out.stderr


def test_cli_prepares_openmp_before_any_command(monkeypatch):
    calls = []
    monkeypatch.setattr(threads, "prepare_openmp", lambda: calls.append(1) or False)
    assert main(["nodes"]) == 0
    assert calls == [1]


def test_serve_sizes_threads_before_each_prompt_and_on_its_progress(tmp_path, monkeypatch):
    """`nodegraph serve` runs prompts under the same policy as `nodegraph run`: one look before the first prompt,
    a re-decision (no waiting) before each later one and on progress events, which still reach the client."""
    from nodegraph.server import app
    from nodegraph.server.config import parse_args

    from test_server_support import Client, ServerPool, steps_workflow

    calls: list[str] = []

    class Recording(ThreadPolicy):
        def start(self):
            calls.append("start")
            return super().start()

        def check(self):
            calls.append("check")
            return super().check()

    monkeypatch.setattr(app, "ThreadPolicy", Recording)
    assert parse_args([])[0].size_threads  # the CLI's serve asks for it
    with ServerPool(tmp_path) as pool:
        server = pool.start(size_threads=True)
        with Client(server, "c") as client:
            for tag in ("a", "b"):
                prompt_id = client.submit(steps_workflow(3, tag=tag))
                frames = client.until_done(prompt_id)
                assert sum(1 for f in frames if isinstance(f, dict) and f.get("type") == "progress") == 3
    assert calls[0] == "start" and calls.count("start") == 1
    assert calls.count("check") >= 1 + 2 * 3  # before the second prompt, then on every progress event
    (tmp_path / "embedded").mkdir()
    with ServerPool(tmp_path / "embedded") as pool:  # an embedding program's server leaves torch's threads alone
        calls.clear()
        server = pool.start()
        with Client(server, "c") as client:
            client.until_done(client.submit(steps_workflow(2, tag="c")))
    assert calls == []
