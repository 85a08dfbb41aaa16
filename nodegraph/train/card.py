"""`python -m nodegraph.train.card MODEL [--note TEXT]`: write MODEL.md beside the model's weights (in the
models directory, `nodegraph.weights`) from the weights' metadata and the run's log (architecture, parameter
count, command, steps, wall time, measured quality).

The card is generated rather than hand-written so its numbers are the ones the run recorded.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nodegraph import weights
from nodegraph.models.checkpoint import load_state_dict, read_metadata
from nodegraph.train.common import default_run_dir


def _evals(log: Path) -> tuple[list[dict], float, int, set[str]]:
    """Evaluation rows, total wall time (summed over resumed segments), the last step and the hardware used."""
    rows, wall, last_time, step, devices = [], 0.0, 0.0, 0, set()
    if not log.exists():
        return rows, wall, step, devices
    for line in log.read_text().splitlines():
        row = json.loads(line)
        if row["time"] < last_time:  # a resumed segment restarts its clock
            wall += last_time
        last_time = row["time"]
        step = max(step, row.get("step", 0))
        if "device" in row:  # a segment's start row
            devices.add(row.get("hardware", row["device"]))
        elif "loss" not in row and "planned_steps" not in row:
            rows.append(row)
    return rows, wall + last_time, step, devices


def _hardware(devices: set[str]) -> str:
    """Logs written before segments recorded their hardware ran on this project's 2-core CPU machine."""
    return " and ".join(f"the {d}" for d in sorted(devices)) if devices else "the 2-core CPU"


def write_card(model: str, note: str = "", run_dir: Path | None = None) -> Path:
    path = weights.default_path(model)
    meta = read_metadata(path)
    state = load_state_dict(path)
    n_params = sum(v.numel() for v in state.values())
    run = run_dir or default_run_dir(model)
    evals, wall, last_step, devices = _evals(run / "log.jsonl")
    cfg = json.loads((run / "best.json").read_text()) if (run / "best.json").exists() else {}
    lines = [
        f"# {model}.safetensors",
        "",
        f"- Kind: `{meta.get('kind')}`; {n_params / 1e6:.2f} M parameters, fp16 on disk "
        f"({path.stat().st_size / 1e6:.1f} MB).",
        f"- Architecture config: `{json.dumps(meta.get('config', meta.get('model_name')))}`",
    ]
    if "diffusion" in meta:
        lines.append(f"- Diffusion: `{json.dumps(meta['diffusion'])}`")
    lines += [
        f"- Training command: `python -m nodegraph.train {model}` (resumes from `runs/{model}/last.pt`; "
        "data and defaults in `nodegraph/train/" + model + ".py`).",
        f"- Trained {last_step} steps in {wall / 60:.0f} min of wall time on {_hardware(devices)}."
        if evals or last_step
        else f"- Trained to at least step {meta.get('step')}; the run's log did not survive (wall time not recorded).",
        f"- Exported: {meta.get('weights')} weights of step {meta.get('step')}, "
        f"metric {meta.get('metric')!r} = {meta.get('score', cfg.get('score'))}.",
    ]
    for key in ("accuracy_by_t", "retrieval_by_t"):
        if key in meta:
            lines.append(f"- {key.replace('_', ' ')} ({meta.get('weights', 'EMA')} weights): `{json.dumps(meta[key])}`")
    if note:
        lines += ["", note]
    if evals:
        keys = [k for k in evals[0] if k not in ("time", "step", "best", "best_step")]
        lines += ["", "Evaluation during training (held-out data):", "",
                  "| step | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for row in evals:
            vals = [f"{row[k]:.4g}" if isinstance(row.get(k), float) else str(row.get(k)) for k in keys]
            lines.append(f"| {row['step']} | " + " | ".join(vals) + " |")
    out = weights.card_path(model)
    out.write_text("\n".join(lines) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nodegraph.train.card", description=__doc__)
    ap.add_argument("model")
    ap.add_argument("--note", default="", help="free text appended to the card (how the run ended, caveats)")
    ap.add_argument("--run-dir", type=Path)
    args = ap.parse_args(argv)
    print(write_card(args.model, args.note, args.run_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
