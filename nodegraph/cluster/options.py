"""The backend options `nodegraph run` and `nodegraph serve` share, their checks, and the engine they describe.

    --backend local|ray  --address auto|HOST:PORT  --workers N|auto  --gpus-per-worker G

One place for both commands, so a run and a server given the same options build the same pool and refuse
the same mistakes. Ray is imported only when a ray engine is built.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodegraph.errors import ConfigError

BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class BackendOptions:
    backend: str = "local"  # local (one Engine in this process) or ray (a pool of workers on a Ray cluster)
    address: str | None = None  # with ray: the cluster to join (auto, HOST:PORT); None starts a local one
    workers: int | str = 2  # with ray: pool workers (runs at once), or "auto" (one per GPU, else per CPU)
    gpus_per_worker: float = 0.0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BackendOptions:
        return cls(args.backend, args.address, args.workers, args.gpus_per_worker)

    def problems(self) -> list[str]:
        """What is wrong with these options (empty when they can be used)."""
        found = []
        if self.backend not in BACKENDS:
            found.append(f"--backend must be local or ray, got {self.backend!r}")
        if self.workers != "auto" and not (isinstance(self.workers, int) and self.workers >= 1):
            found.append(f"--workers must be a positive number or auto, got {self.workers!r}")
        if self.gpus_per_worker < 0:
            found.append("--gpus-per-worker cannot be negative")
        if self.backend == "local" and (self.address is not None or self.gpus_per_worker):
            found.append("--address and --gpus-per-worker need --backend ray")
        return found

    def cluster_engine(self, input_dir: Path | str | None, output_dir: Path | str | None, device: str) -> Any:
        """A ClusterEngine over a new pool with these options; ConfigError when Ray is not installed."""
        try:
            import ray  # noqa: F401  (only to say clearly that it is missing)
        except ImportError:
            raise ConfigError("--backend ray needs Ray: pip install 'nodegraph[ray]'") from None
        from nodegraph.cluster.engine import ClusterEngine

        return ClusterEngine(input_dir=input_dir, output_dir=output_dir, workers=self.workers, address=self.address,
                             gpus_per_worker=self.gpus_per_worker, device=device)


def add_arguments(parser: argparse.ArgumentParser, local_help: str) -> None:
    """Add the four options; `local_help` says what the local backend means for this command."""
    defaults = BackendOptions()
    parser.add_argument("--backend", choices=BACKENDS, default=defaults.backend,
                        help=f"local ({local_help}) or ray: a pool of workers on a Ray cluster")
    parser.add_argument("--address", default=defaults.address, metavar="auto|HOST:PORT",
                        help="with --backend ray: the cluster to join (default: start a local one)")
    parser.add_argument("--workers", type=_workers, default=defaults.workers, metavar="N|auto",
                        help="with --backend ray: workers to start (auto: one per GPU, else per CPU; default 2)")
    parser.add_argument("--gpus-per-worker", type=float, default=defaults.gpus_per_worker, metavar="G",
                        help="with --backend ray: GPUs each worker holds (fractions share a GPU)")


def _workers(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or auto, got {text!r}") from None
