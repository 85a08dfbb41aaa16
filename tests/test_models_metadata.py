"""A checkpoint's metadata is user input: every field it can carry, damaged in every way, gives a
CheckpointError naming the file (exit 2 on the command line), never a Python exception or a giant allocation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import save_file

from nodegraph.errors import CheckpointError
from nodegraph.models import loader
from nodegraph.models.checkpoint import load_state_dict, read_metadata
from nodegraph.models.classifier import ClassifierConfig
from nodegraph.models.diffusion_model import DiffusionSpec
from nodegraph.models.noised_clip import NoisedClipConfig
from nodegraph.models.prior import PriorConfig
from nodegraph.models.unet import UNetConfig

from fixtures_models import build_tiny_models

CONFIGS = {"decoder": UNetConfig, "inpaint": UNetConfig, "upsampler": UNetConfig, "prior": PriorConfig,
           "classifier": ClassifierConfig, "noised_clip": NoisedClipConfig}
BAD_VALUES = ["x", -1, 10**9, 2.5, None, [1, "a"], True, {"nested": 1}]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_tiny_models(tmp_path_factory.mktemp("tiny"))


def rewrite(source: Path, target: Path, change: Any) -> Path:
    """A copy of `source` whose metadata `change(meta)` edited in place (weights untouched)."""
    meta = {key: value for key, value in read_metadata(source).items()}
    change(meta)
    save_file(load_state_dict(source), str(target), metadata={k: json.dumps(v) for k, v in meta.items()})
    return target


def refused_clearly(family: str, path: Path) -> None:
    with pytest.raises(CheckpointError) as info:
        loader.load_file(family, path)
    assert str(path) in str(info.value) and info.value.input == "checkpoint"


def cases() -> list[tuple[str, str, Any]]:
    out = []
    for family, cls in CONFIGS.items():
        for f in dataclasses.fields(cls):  # a boolean field takes True: that one is not damage
            out += [(family, f"config.{f.name}", v) for v in BAD_VALUES if not (v is True and f.type == "bool")]
        out += [(family, f"diffusion.{f.name}", value) for f in dataclasses.fields(DiffusionSpec)
                for value in [*BAD_VALUES, 0, "cosine2"]]
    out += [("upsampler", key, value) for key in ("low_res", "aug_level") for value in BAD_VALUES]
    return out


@pytest.mark.parametrize(("family", "where", "value"), cases())
def test_every_metadata_field_damaged_any_way_is_a_clear_error(tiny: dict[str, Path], tmp_path: Path,
                                                                       family: str, where: str, value: Any) -> None:
    section, _, name = where.rpartition(".")

    def change(meta: dict[str, Any]) -> None:
        (meta.setdefault(section, {}) if section else meta)[name] = value

    refused_clearly(family, rewrite(tiny[family], tmp_path / "damaged.safetensors", change))


@pytest.mark.parametrize("family", sorted(CONFIGS))
@pytest.mark.parametrize("config", [[1, 2], "decoder", 7, None, {"not_a_field": 1}])
def test_a_config_that_is_not_a_mapping_of_known_fields_is_named(tiny: dict[str, Path], tmp_path: Path,
                                                                 family: str, config: Any) -> None:
    path = rewrite(tiny[family], tmp_path / "damaged.safetensors", lambda meta: meta.update(config=config))
    with pytest.raises(CheckpointError, match="config"):
        loader.load_file(family, path)


def test_absurd_sizes_are_refused_without_allocating_them(tiny: dict[str, Path], tmp_path: Path) -> None:
    # 60 000 channels describe a ~100 GB network: it is refused from the metadata, on the meta device.
    path = rewrite(tiny["decoder"], tmp_path / "huge.safetensors",
                   lambda meta: meta["config"].update(model_channels=60_000, norm_groups=1))
    with pytest.raises(CheckpointError, match="does not match the architecture"):
        loader.load_file("decoder", path)
    path = rewrite(tiny["decoder"], tmp_path / "deep.safetensors",
                   lambda meta: meta["config"].update(num_res_blocks=100_000))
    with pytest.raises(CheckpointError, match="num_res_blocks"):
        loader.load_file("decoder", path)


def test_a_config_whose_forward_pass_cannot_work_is_refused_at_load(tiny: dict[str, Path], tmp_path: Path) -> None:
    # 3 heads do not divide the prior's width: the weights still fit, the forward pass would not.
    path = rewrite(tiny["prior"], tmp_path / "heads.safetensors", lambda meta: meta["config"].update(heads=3))
    with pytest.raises(CheckpointError, match="does not describe a working network"):
        loader.load_file("prior", path)
