"""The models folders: where released checkpoints are found (the user models directory's checkpoints/, clip/,
... and the folders an extra_model_paths.yaml adds, in ComfyUI's format), what loaders offer, and the
"put FILE in DIR" answer for a file that is not there."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodegraph import weights
from nodegraph.engine.node import DynamicChoices, In, Node, NodeSpec, Out
from nodegraph.engine.registry import Registry
from nodegraph.errors import CheckpointError, InputValueError


@pytest.fixture
def models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "models"
    monkeypatch.setenv("NODEGRAPH_MODELS", str(root))
    monkeypatch.delenv(weights.PATHS_ENV, raising=False)
    return root


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_user_models_dir_defaults_to_xdg_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NODEGRAPH_MODELS", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert weights.user_models_dir() == tmp_path / "nodegraph" / "models"
    # The bundled Shapes World weights keep resolving as before.
    assert weights.models_dir() == weights.BUNDLED_DIR


def test_files_are_found_listed_and_fingerprinted(models: Path) -> None:
    base = touch(models / "checkpoints" / "base.pt")
    touch(models / "checkpoints" / "sub" / "mine.safetensors")
    touch(models / "checkpoints" / "notes.txt")  # not a model file
    touch(models / "checkpoints" / ".hidden" / "x.pt")
    assert weights.list_models("checkpoints") == ["base.pt", "sub/mine.safetensors"]
    assert weights.find_model("checkpoints", "base.pt") == base
    assert weights.find_model("checkpoints", "sub/mine.safetensors").name == "mine.safetensors"
    before = weights.model_fingerprint(base)
    base.write_bytes(b"longer")
    assert weights.model_fingerprint(base) != before


def test_an_absent_file_says_what_to_put_where(models: Path) -> None:
    with pytest.raises(InputValueError) as info:
        weights.find_released("glide_base", "base.pt")
    assert info.value.code == "model_not_found" and info.value.input == "checkpoint"
    assert f"put base.pt in {models / 'checkpoints'}" in info.value.message
    with pytest.raises(InputValueError) as info:
        weights.find_released("glide_vocab", "glide", input="vocab")
    assert "encoder.json.gz" in info.value.message and str(models / "tokenizers" / "glide") in info.value.message


@pytest.mark.parametrize("name", ["../secret.pt", "/etc/passwd", "", "a/../../b.pt", "nul\x00.pt", "\ud800.pt", "~/x"])
def test_names_that_leave_the_folders_are_refused(models: Path, name: str) -> None:
    assert not weights.valid_model_name(name)
    with pytest.raises(InputValueError) as info:
        weights.find_model("checkpoints", name)
    assert info.value.code == "invalid_value"


def test_extra_model_paths_yaml_in_comfyuis_format(models: Path, tmp_path: Path) -> None:
    comfy = tmp_path / "ComfyUI"
    touch(comfy / "models" / "checkpoints" / "base.pt")
    touch(comfy / "models" / "text_encoders" / "ViT-L-14.safetensors")
    touch(comfy / "models" / "loras" / "ignored.safetensors")
    own = touch(models / "checkpoints" / "base.pt")  # the user models directory comes first
    touch(tmp_path / "more" / "ckpts" / "extra.ckpt")
    models.mkdir(exist_ok=True)
    (models / weights.CONFIG_FILE).write_text(f"""
comfyui:
  base_path: {comfy}
  is_default: true
  checkpoints: models/checkpoints/
  clip: |
    models/clip/
    models/text_encoders/
  loras: models/loras/
other:
  base_path: ../more
  diffusion_models:
    - ckpts
""")
    assert weights.search_dirs("checkpoints") == [models / "checkpoints", comfy / "models" / "checkpoints",
                                                  models / "../more/ckpts"]
    assert weights.find_model("checkpoints", "base.pt") == own
    assert weights.find_model("checkpoints", "extra.ckpt").name == "extra.ckpt"
    assert weights.list_models("clip") == ["ViT-L-14.safetensors"]
    assert weights.list_models("checkpoints") == ["base.pt", "extra.ckpt"]
    with pytest.raises(InputValueError, match="also looked in .*ComfyUI"):
        weights.find_model("checkpoints", "absent.pt")


def test_config_named_by_the_environment_and_broken_configs(models: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "paths.yaml"
    touch(tmp_path / "c" / "classifiers" / "64x64_classifier.pt")
    config.write_text("x:\n  classifiers: c/classifiers\n")
    monkeypatch.setenv(weights.PATHS_ENV, str(config))
    assert weights.list_models("classifiers") == ["64x64_classifier.pt"]
    for text, problem in [("[1, 2]", "must map section names"), ("x: {checkpoints: 3}", "must be a path"),
                          ("x: [", "not valid YAML"), ("x:\n  base_path: [1]\n", "base_path must be a path")]:
        config.write_text(text)
        with pytest.raises(CheckpointError, match=problem) as info:
            weights.search_dirs("checkpoints")
        assert str(config) in str(info.value)
        assert weights.list_models("checkpoints") == []  # listing never fails: the catalogue must still load
    monkeypatch.setenv(weights.PATHS_ENV, str(tmp_path / "absent.yaml"))
    with pytest.raises(CheckpointError, match="does not exist"):
        weights.find_model("checkpoints", "base.pt")


def test_loaders_offer_released_names_then_the_files_found(models: Path) -> None:
    touch(models / "checkpoints" / "my_glide.pt")
    touch(models / "tokenizers" / "glide" / "encoder.json.gz")
    assert weights.released_choices("glide_base") == ["base.pt", "my_glide.pt"]
    assert weights.released_choices("glide_vocab") == ["glide"]
    spec = Registry.discover(plugins=False)["GLIDELoader"]
    info = spec.describe()["inputs"]["checkpoint"]
    assert info["choices"] == ["base.pt", "my_glide.pt"] and info["default"] == "base.pt"
    touch(models / "checkpoints" / "added_later.safetensors")  # listed when asked, not when declared
    assert "added_later.safetensors" in spec.describe()["inputs"]["checkpoint"]["choices"]


def test_dynamic_choices_validate_by_acceptance_not_by_listing() -> None:
    listed = ["a.pt"]
    choices = DynamicChoices(lambda: listed, lambda v: isinstance(v, str) and v.endswith(".pt"))

    class Pick(Node):
        inputs = {"name": In("STRING", default="a.pt", choices=choices)}
        outputs = (Out("STRING"),)

        def run(self, ctx, name):
            return (name,)

    spec = NodeSpec.from_class(Pick)
    assert spec.inputs["name"].bounds_problem("b.pt") is None  # not listed, still acceptable
    assert spec.inputs["name"].bounds_problem("b.txt")[0] == "not_in_choices"
    assert list(choices) == ["a.pt"] and choices[0] == "a.pt" and len(choices) == 1
    listed.append("c.pt")
    assert spec.describe()["inputs"]["name"]["choices"] == ["a.pt", "c.pt"]
