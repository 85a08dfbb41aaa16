"""Training is seeded and resumable: a run stopped and resumed equals a run that never stopped."""

from __future__ import annotations

import json
import time

import pytest
import torch

from nodegraph.errors import CheckpointError
from nodegraph.models.checkpoint import load_state_dict, read_metadata
from nodegraph.models.clip import build_clip
from nodegraph.train import decoder as decoder_train
from nodegraph.train.__main__ import main as train_main
from nodegraph.train.common import EMA, TrainConfig, export


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "clip.safetensors"
    export(build_clip().model, path, {"kind": "clip", "model_name": "shapes-clip"})
    return path


def _decoder_cfg(tmp, clip_file, steps: int, run: str) -> TrainConfig:
    return TrainConfig(
        name="decoder", steps=steps, batch_size=4, lr=1e-3, warmup=2, ckpt_every=2, log_every=1,
        eval_every=1000, threads=1, run_dir=str(tmp / run), out_dir=str(tmp / f"{run}-out"),
        extra={**decoder_train.DEFAULTS["extra"], "pool": 64, "channels": 16, "eval_n": 2, "eval_steps": 2,
               "clip": str(clip_file)},
    )


@pytest.mark.slow
def test_decoder_run_resumed_midway_equals_an_uninterrupted_run(tmp_path, clip_file):
    decoder_train.main(_decoder_cfg(tmp_path, clip_file, 4, "straight"))
    decoder_train.main(_decoder_cfg(tmp_path, clip_file, 2, "resumed"))
    assert json.loads((tmp_path / "resumed" / "log.jsonl").read_text().splitlines()[-1])["step"] == 2
    decoder_train.main(_decoder_cfg(tmp_path, clip_file, 4, "resumed"))  # picks up last.pt at step 2
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 4
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0)
        torch.testing.assert_close(a["ema"][key], b["ema"][key], rtol=0, atol=0)
    # Every checkpoint also leaves the fp16 raw + EMA pair that `--set init=` continues from.
    pair = load_state_dict(tmp_path / "straight" / "weights.safetensors")
    for key in a["model"]:
        torch.testing.assert_close(pair[f"ema.{key}"].float(), a["ema"][key].float(), atol=2e-3, rtol=2e-3)
        torch.testing.assert_close(pair[f"raw.{key}"].float(), a["model"][key].float(), atol=2e-3, rtol=2e-3)
    # The exported weights carry what is needed to rebuild the model, in fp16.
    out = tmp_path / "straight-out" / "decoder.safetensors"
    meta = read_metadata(out)
    assert meta["kind"] == "decoder" and meta["config"]["model_channels"] == 16
    assert meta["weights"] in ("raw", "ema")
    assert all(v.dtype == torch.float16 for v in load_state_dict(out).values() if v.is_floating_point())


def test_ema_warm_up_follows_early_training():
    """With warm-up the average tracks the weights early on; a plain 0.999 EMA would barely move."""
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = EMA(model, max_decay=0.999)
    with torch.no_grad():
        model.weight.fill_(1.0)
    for _ in range(100):
        ema.update(model)
    plain = 1 - 0.999**100  # what a 0.999 EMA starting at 0 would hold
    assert ema.model.weight.item() > 0.9 > plain


def test_train_cli_rejects_unknown_model_and_bad_set(capsys):
    with pytest.raises(SystemExit) as err:
        train_main(["gan"])
    assert err.value.code == 2
    with pytest.raises(SystemExit):
        train_main(["clip", "--set", "novalue"])
    assert "KEY=VALUE" in capsys.readouterr().err


def test_init_starts_a_fresh_run_from_exported_weights_and_a_missing_file_is_a_clear_error(tmp_path):
    from nodegraph.train.common import export, start_or_resume

    source = torch.nn.Linear(3, 2)
    export(source, tmp_path / "w.safetensors", {"kind": "test"})
    cfg = TrainConfig(name="t", steps=1, batch_size=1, lr=1e-3, run_dir=str(tmp_path / "run"),
                      extra={"init": str(tmp_path / "w.safetensors")})
    model = torch.nn.Linear(3, 2)
    state = start_or_resume(model, cfg)
    # fp16 on disk: equal to the source within half precision, and the EMA starts from the same weights
    torch.testing.assert_close(model.weight, source.weight, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(state.ema.model.weight, model.weight)
    missing = TrainConfig(name="t", steps=1, batch_size=1, lr=1e-3, run_dir=str(tmp_path / "r2"),
                          extra={"init": str(tmp_path / "missing.safetensors")})
    with pytest.raises(CheckpointError, match="missing.safetensors"):
        start_or_resume(torch.nn.Linear(3, 2), missing)


def test_init_from_a_weight_pair_continues_raw_and_ema_weights_and_the_ema_warm_up(tmp_path):
    """What a run on a lent machine brings back (fp16 raw + EMA, no optimiser) continues both halves."""
    from nodegraph.train.common import WEIGHT_PAIR, RunState, save_weight_pair, start_or_resume

    first = TrainConfig(name="t", steps=1, batch_size=1, lr=1e-3, run_dir=str(tmp_path / "first"))
    model = torch.nn.Linear(3, 2)
    state = RunState(model, EMA(model, 0.999), torch.optim.AdamW(model.parameters()), 7, torch.Generator())
    with torch.no_grad():
        model.weight.add_(1.0)  # raw moves away from the average
    state.ema.update(model)
    state.ema.updates = 40
    (tmp_path / "first").mkdir()
    save_weight_pair(state, first)
    pair = tmp_path / "first" / WEIGHT_PAIR
    assert pair.stat().st_size < 2 * 2 * sum(p.numel() for p in model.parameters()) + 1000  # fp16, both halves

    cont = TrainConfig(name="t", steps=1, batch_size=1, lr=1e-3, run_dir=str(tmp_path / "cont"),
                       extra={"init": str(pair)})
    fresh = torch.nn.Linear(3, 2)
    resumed = start_or_resume(fresh, cont)
    torch.testing.assert_close(fresh.weight, model.weight, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(resumed.ema.model.weight, state.ema.model.weight, atol=2e-3, rtol=2e-3)
    assert not torch.allclose(resumed.ema.model.weight, fresh.weight)
    assert resumed.ema.updates == 40 and resumed.step == 0


def test_clip_kind_twins_differ_from_their_scene_only_in_one_shapes_kind():
    from nodegraph.train.clip import kind_twins
    from nodegraph.world.scene import random_scenes

    scenes = random_scenes(50, seed=3)
    twins = kind_twins(scenes, torch.Generator().manual_seed(0))
    for sc, tw in zip(scenes, twins, strict=True):
        assert tw.background == sc.background and len(tw.shapes) == len(sc.shapes)
        changed = [(a, b) for a, b in zip(sc.shapes, tw.shapes, strict=True) if a != b]
        assert len(changed) == 1
        a, b = changed[0]
        assert a.kind != b.kind
        assert (a.color, a.size, a.position, a.dx, a.dy, a.ds) == (b.color, b.size, b.position, b.dx, b.dy, b.ds)


def test_clip_swap_accuracy_separates_a_trained_clip_from_a_random_one(clip_file):
    """The zero-shot attribute reading that picks CLIP weights: the bundled CLIP reads colour and size
    from images; a random CLIP answers one fixed caption and reads nothing."""
    from nodegraph.models import loader
    from nodegraph.models.clip import load_clip
    from nodegraph.train.clip import SWAPS, swap_accuracy

    trained = swap_accuracy(loader.load("clip"), n=24)
    random = swap_accuracy(load_clip(clip_file), n=24)
    assert set(trained) == set(random) == set(SWAPS)
    assert trained["color"] >= 0.9 and trained["size"] >= 0.9
    assert all(v < 0.9 for v in random.values())


def test_export_keeps_the_best_weights_and_a_changed_metric_starts_a_new_best(tmp_path):
    """A resumed run must not overwrite better weights with worse ones, but a best scored under an older
    metric (say accuracy alone, before validity joined it) is not comparable and must not block export."""
    from nodegraph.train.common import export_if_best, start_or_resume

    cfg = TrainConfig(name="t", steps=1, batch_size=1, lr=1e-3, run_dir=str(tmp_path / "run"))
    model = torch.nn.Linear(2, 1)
    state = start_or_resume(model, cfg)
    out = tmp_path / "w.safetensors"
    acc = {"metric": "accuracy"}
    assert export_if_best(state, cfg, {"raw": 0.8, "ema": 0.7}, out, acc)["best"] == 0.8
    assert read_metadata(out)["weights"] == "raw"
    first = out.read_bytes()
    with torch.no_grad():
        model.weight.add_(1.0)
    assert export_if_best(state, cfg, {"raw": 0.6, "ema": 0.5}, out, acc)["best"] == 0.8
    assert out.read_bytes() == first  # worse: the file stays as it was
    mixed = {"metric": "mean of accuracy and validity"}
    assert export_if_best(state, cfg, {"raw": 0.6, "ema": 0.65}, out, mixed)["best"] == 0.65
    assert read_metadata(out)["weights"] == "ema" and read_metadata(out)["metric"] == mixed["metric"]


def test_export_records_the_table_of_the_weights_it_writes(tmp_path):
    """The classifier's per-t accuracy table in the file must describe the exported weights: a raw export
    with the EMA's table (as before) reported numbers for weights the file does not hold."""
    from nodegraph.train.common import export_if_best, start_or_resume

    cfg = TrainConfig(name="t", steps=1, batch_size=1, lr=1e-3, run_dir=str(tmp_path / "run"))
    state = start_or_resume(torch.nn.Linear(2, 1), cfg)
    out = tmp_path / "w.safetensors"
    tables = {"raw": {"accuracy_by_t": {"0": 0.9}}, "ema": {"accuracy_by_t": {"0": 0.4}}}
    export_if_best(state, cfg, {"raw": 0.9, "ema": 0.4}, out, {"metric": "m"}, tables)
    assert read_metadata(out)["weights"] == "raw" and read_metadata(out)["accuracy_by_t"] == {"0": 0.9}
    export_if_best(state, cfg, {"raw": 0.5, "ema": 0.95}, out, {"metric": "m"}, tables)
    assert read_metadata(out)["weights"] == "ema" and read_metadata(out)["accuracy_by_t"] == {"0": 0.4}


def test_time_limit_plans_the_run_to_end_inside_it():
    from nodegraph.train.common import fit_steps_to_deadline

    cfg = TrainConfig(name="t", steps=10_000, batch_size=1, lr=1e-3, deadline=1000.0)
    # 90 s left at 0.2 s/step: 90% of that is 405 more steps
    assert fit_steps_to_deadline(cfg, 50, 0.2, now=910.0) == 455
    # a run that fits is left alone, and one already past its deadline still ends on a step after this one
    short = TrainConfig(name="t", steps=60, batch_size=1, lr=1e-3, deadline=1000.0)
    assert fit_steps_to_deadline(short, 50, 0.2, now=910.0) == 60
    assert fit_steps_to_deadline(cfg, 50, 0.2, now=1050.0) == 51


def test_time_limit_replans_from_the_steady_speed_after_slow_first_steps(tmp_path, monkeypatch):
    """First steps slowed by one-off costs (CUDA's start-up) must not plan the whole run short: the second plan,
    from the next steps' speed alone, lengthens it again, never past the steps asked for, inside the limit."""
    from nodegraph.train import common

    clock = [1000.0]
    monkeypatch.setattr(common.time, "time", lambda: clock[0])
    model = torch.nn.Linear(1, 1)
    state = common.RunState(model, EMA(model, 0.9), torch.optim.SGD(model.parameters(), lr=0.1), 0,
                            torch.Generator().manual_seed(0))
    cfg = TrainConfig(name="t", steps=5_000, batch_size=1, lr=0.1, warmup=1, ckpt_every=10_000, eval_every=10_000,
                      deadline=1100.0, run_dir=str(tmp_path / "run"))

    def step(m, i):
        clock[0] += 1.0 if i < 10 else 0.1  # ten slow steps, then the steady speed
        return m(torch.ones(1, 1)).pow(2).sum(), {}

    common.train_loop(cfg, state, step, plan_after=10)
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    planned = [r["planned_steps"] for r in rows if "planned_steps" in r]
    # at step 10: 90 s left at 1 s/step -> 10 + 81; at step 20: 89 s left at 0.1 s/step -> 20 + 801 (+-1: the
    # fake clock's sums of 0.1 are not exact)
    assert planned[0] == 91 and len(planned) == 2 and abs(planned[1] - 821) <= 1
    assert state.step == planned[1] and clock[0] <= cfg.deadline
    cfg2 = TrainConfig(name="t", steps=500, batch_size=1, lr=0.1, warmup=1, ckpt_every=10_000, eval_every=10_000,
                       deadline=clock[0] + 100.0, run_dir=str(tmp_path / "run2"))
    state.step = 0
    common.train_loop(cfg2, state, step, plan_after=10)
    assert state.step == 500  # the second plan never goes past the steps asked for


@pytest.mark.slow
def test_decoder_run_with_a_time_limit_shortens_its_steps_and_still_exports(tmp_path, clip_file):
    cfg = _decoder_cfg(tmp_path, clip_file, 10_000, "timed")
    cfg.deadline = time.time() + 0.5  # seconds: far less than 10 000 steps need
    decoder_train.main(cfg)
    rows = [json.loads(line) for line in (tmp_path / "timed" / "log.jsonl").read_text().splitlines()]
    planned = [r["planned_steps"] for r in rows if "planned_steps" in r]
    assert len(planned) == 1 and 50 < planned[0] < 10_000
    assert rows[-1]["step"] == planned[0] and "best" in rows[-1]  # final eval ran at the planned end
    assert (tmp_path / "timed-out" / "decoder.safetensors").exists()


def test_scene_pool_rendered_by_worker_processes_equals_one_process():
    from nodegraph.world.dataset import PoolSpec, ScenePool

    spec = PoolSpec(size=40, seed=3, resolutions=(32,))
    one, many = ScenePool(spec, chunk=16), ScenePool(spec, chunk=16, workers=2)
    assert torch.equal(one.images[32], many.images[32])


def test_train_cli_device_errors_name_the_fix(capsys):
    with pytest.raises(SystemExit):
        train_main(["prior", "--device", "cuda"])
    assert "CPU only so far; drop --device" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            train_main(["decoder", "--device", "cuda"])
        assert "no CUDA device is visible" in capsys.readouterr().err


def test_card_reads_evaluations_and_hardware_from_a_resumed_log(tmp_path):
    from nodegraph.train.card import _evals, _hardware

    rows = [
        {"time": 0.0, "step": 0, "device": "cuda", "hardware": "NVIDIA H200 GPU", "batch_size": 256},
        {"time": 5.0, "step": 50, "planned_steps": 900, "seconds_left": 100.0},
        {"time": 60.0, "step": 500, "loss": 0.1},
        {"time": 61.0, "step": 500, "acc_raw": 0.9},
        {"time": 0.0, "step": 500, "device": "cpu", "hardware": "2-core CPU", "batch_size": 32},  # resumed
        {"time": 30.0, "step": 900, "acc_raw": 0.95},
    ]
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(json.dumps(r) for r in rows))
    evals, wall, last, hardware = _evals(log)
    assert [r["step"] for r in evals] == [500, 900] and wall == 91.0 and last == 900
    assert _hardware(hardware) == "the 2-core CPU and the NVIDIA H200 GPU"
    assert _hardware(set()) == "the 2-core CPU"  # logs from before segments recorded their hardware


def test_train_cli_names_an_init_file_that_does_not_fit_the_model(tmp_path, capsys):
    export(torch.nn.Linear(3, 2), tmp_path / "linear.safetensors", {"kind": "test"})
    with pytest.raises(SystemExit) as err:
        train_main(["upsampler", "--steps", "1", "--threads", "1", "--run-dir", str(tmp_path / "run"),
                    "--out-dir", str(tmp_path / "out"), "--set", "pool=8",
                    "--set", f"init={tmp_path / 'linear.safetensors'}"])
    assert err.value.code == 2
    message = capsys.readouterr().err
    assert "linear.safetensors does not match the architecture" in message
    assert "unexpected keys: bias, weight" in message
