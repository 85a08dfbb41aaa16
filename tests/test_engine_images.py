"""LoadImage / SaveImage: conversions, PNG metadata, naming, and paths confined to their folders."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from nodegraph.engine.api import Engine
from nodegraph.engine.imageio import from_pil, mask_from_alpha, preview_image, to_pil
from nodegraph.errors import NodeExecutionError, WorkflowError


def save_workflow(image: str = "in.png", prefix: str = "result") -> dict[str, Any]:
    return {
        "nodes": {
            "load": {"class_type": "LoadImage", "inputs": {"image": image}},
            "save": {"class_type": "SaveImage", "inputs": {"images": ["load", 0], "filename_prefix": prefix}},
            "mask": {"class_type": "Preview", "inputs": {"value": ["load", 1]}},
        },
        "params": {"prefix": {"node": "save", "input": "filename_prefix"}, "image": {"node": "load", "input": "image"}},
    }


@pytest.fixture
def picture(engine: Engine) -> Image.Image:
    image = Image.new("RGB", (6, 4), (255, 0, 0))
    image.putpixel((1, 1), (0, 128, 255))
    image.save(engine.input_dir / "in.png")
    return image


def test_imageio_round_trip_is_exact_for_uint8() -> None:
    image = Image.frombytes("RGB", (3, 2), bytes(range(18)))
    tensor = from_pil(image)
    assert tensor.shape == (1, 3, 2, 3) and tensor.dtype == torch.float32
    assert tensor.min() >= -1 and tensor.max() <= 1
    assert to_pil(tensor)[0].tobytes() == image.tobytes()


def test_imageio_modes_and_masks() -> None:
    assert to_pil(torch.zeros(2, 1, 4, 4))[1].mode == "L"
    assert to_pil(torch.zeros(3, 4, 4))[0].mode == "RGB"
    with pytest.raises(ValueError, match="channels"):
        to_pil(torch.zeros(1, 2, 4, 4))
    rgba = Image.new("RGBA", (2, 1), (0, 0, 0, 255))
    rgba.putpixel((1, 0), (0, 0, 0, 0))
    mask = mask_from_alpha(rgba)
    assert mask is not None and mask.tolist() == [[[[0.0, 1.0]]]]
    assert mask_from_alpha(Image.new("RGB", (2, 2))) is None
    big = preview_image(torch.zeros(1, 3, 1024, 600))
    assert max(big.size) == 512


def test_load_and_save(engine: Engine, picture: Image.Image) -> None:
    result = engine.run(save_workflow(), {"prefix": "batch/result"})
    (path,) = result.files
    assert path == engine.output_dir.resolve() / "batch" / "result_00001_.png"
    assert result.outputs["save"] == {
        "images": [{"filename": "result_00001_.png", "subfolder": "batch", "type": "output"}]
    }
    with Image.open(path) as saved:
        assert saved.convert("RGB").tobytes() == picture.tobytes()
        prompt = json.loads(saved.text["prompt"])
        params = json.loads(saved.text["params"])
    assert prompt["save"]["inputs"]["filename_prefix"] == "batch/result"
    assert prompt["load"]["class_type"] == "LoadImage"
    assert params == {"prefix": "batch/result"}
    mask = result.outputs["mask"]["value"]
    assert mask.shape == (1, 1, 4, 6) and float(mask.abs().sum()) == 0.0


def test_alpha_becomes_the_mask(engine: Engine) -> None:
    image = Image.new("RGBA", (2, 2), (10, 20, 30, 255))
    image.putpixel((0, 1), (10, 20, 30, 0))
    image.save(engine.input_dir / "alpha.png")
    result = engine.run(save_workflow("alpha.png"))
    assert result.outputs["mask"]["value"].tolist() == [[[[0.0, 0.0], [1.0, 0.0]]]]


def test_save_never_overwrites(engine: Engine, picture: Image.Image) -> None:
    engine.output_dir.mkdir(parents=True)
    (engine.output_dir / "result_00001_.png").write_bytes(b"someone else's file")
    (engine.output_dir / "result_00007_.png").write_bytes(b"and another")
    first = engine.run(save_workflow())
    assert [path.name for path in first.files] == ["result_00008_.png"]
    assert (engine.output_dir / "result_00001_.png").read_bytes() == b"someone else's file"
    second = engine.run(save_workflow(), {"prefix": "other"})
    assert [path.name for path in second.files] == ["other_00001_.png"]


def test_a_batch_writes_one_file_per_image(engine: Engine) -> None:
    from nodegraph.engine.context import RunContext
    from nodegraph.engine.node import Node, Out

    class Batch(Node):
        outputs = (Out("IMAGE"),)

        def run(self, ctx: RunContext) -> tuple[torch.Tensor]:
            return (torch.linspace(-1, 1, 3 * 3 * 4 * 4).reshape(3, 3, 4, 4),)

    engine.registry.register(Batch)
    result = engine.run(
        {"b": {"class_type": "Batch"}, "s": {"class_type": "SaveImage", "inputs": {"images": ["b", 0]}}}
    )
    assert [path.name for path in result.files] == [f"nodegraph_0000{i}_.png" for i in (1, 2, 3)]


def test_cached_save_reports_its_files_and_a_deleted_file_is_written_again(
    engine: Engine, picture: Image.Image
) -> None:
    first = engine.run(save_workflow())
    again = engine.run(save_workflow())
    assert again.executed == [] and again.files == first.files
    first.files[0].unlink()
    third = engine.run(save_workflow())
    assert "save" in third.executed and third.files[0].exists()


def test_load_image_rereads_a_changed_file(engine: Engine, picture: Image.Image) -> None:
    first = engine.run(save_workflow())
    Image.new("RGB", (6, 4), (0, 0, 0)).save(engine.input_dir / "in.png")
    second = engine.run(save_workflow())
    assert "load" in second.executed and second.files != first.files


def test_missing_input_file_is_invalid_input(engine: Engine) -> None:
    with pytest.raises(WorkflowError) as caught:
        engine.run(save_workflow("nope.png"))
    (issue,) = caught.value.errors
    assert (issue.node, issue.input, issue.type) == ("load", "image", "file_not_found")


def test_validate_checks_input_files(engine: Engine, picture: Image.Image) -> None:
    assert engine.validate(save_workflow()) == []
    (issue,) = engine.validate(save_workflow("nope.png"))
    assert (issue.node, issue.input, issue.type) == ("load", "image", "file_not_found")


def test_unreadable_image_is_an_input_error(engine: Engine) -> None:
    (engine.input_dir / "fake.png").write_bytes(b"not a png at all")
    with pytest.raises(NodeExecutionError) as caught:
        engine.run(save_workflow("fake.png"))
    assert caught.value.is_input_error and caught.value.node_id == "load"


@pytest.mark.parametrize("name", ["../secret.png", "a/../../secret.png", "/etc/passwd", ""])
def test_load_refuses_paths_leaving_the_input_dir(engine: Engine, name: str) -> None:
    (engine.input_dir.parent / "secret.png").write_bytes(b"x")
    with pytest.raises(WorkflowError) as caught:
        engine.run(save_workflow(name))
    (issue,) = caught.value.errors
    assert (issue.node, issue.input, issue.type) == ("load", "image", "path_not_allowed")


def test_load_refuses_symlinks_leaving_the_input_dir(engine: Engine, tmp_path: Path) -> None:
    outside = tmp_path / "outside.png"
    Image.new("RGB", (2, 2)).save(outside)
    os.symlink(outside, engine.input_dir / "link.png")
    with pytest.raises(WorkflowError) as caught:
        engine.run(save_workflow("link.png"))
    assert caught.value.errors[0].type == "path_not_allowed"
    assert "symlink" in caught.value.errors[0].message


def test_symlinks_inside_the_input_dir_are_fine(engine: Engine, picture: Image.Image) -> None:
    os.symlink(engine.input_dir / "in.png", engine.input_dir / "alias.png")
    assert engine.run(save_workflow("alias.png")).files


@pytest.mark.parametrize("prefix", ["../escape", "/tmp/escape", "a/../../escape"])
def test_save_refuses_prefixes_leaving_the_output_dir(engine: Engine, picture: Image.Image, prefix: str) -> None:
    # Refused when the workflow is checked, before any node runs.
    with pytest.raises(WorkflowError) as caught:
        engine.run(save_workflow(), {"prefix": prefix})
    [issue] = caught.value.errors
    assert (issue.node, issue.input, issue.type) == ("save", "filename_prefix", "path_not_allowed")
    assert "output directory" in issue.message
    assert engine.validate(save_workflow(), {"prefix": prefix}) == [issue]


def test_save_refuses_a_symlinked_folder_leaving_the_output_dir(
    engine: Engine, picture: Image.Image, tmp_path: Path
) -> None:
    engine.output_dir.mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", engine.output_dir / "sub")
    with pytest.raises(WorkflowError) as caught:
        engine.run(save_workflow(), {"prefix": "sub/x"})
    assert caught.value.errors[0].input == "filename_prefix"
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_the_clients_ui_workflow_travels_in_the_png(engine: Engine, picture: Image.Image) -> None:
    ui = {"nodes": [{"id": 1, "type": "LoadImage", "pos": [10, 20]}], "links": []}
    result = engine.run(save_workflow(), extra_pnginfo={"workflow": ui, "bad\x00key": 1, "ünïcode-ok": "x"})
    with Image.open(result.files[0]) as saved:
        assert json.loads(saved.text["workflow"]) == ui  # what ComfyUI's canvas reads back from a dropped PNG
        assert "prompt" in saved.text and "bad\x00key" not in saved.text


def test_an_interrupted_save_leaves_no_partial_file(engine: Engine, picture: Image.Image,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    real_save = Image.Image.save

    def dies_halfway(self: Image.Image, fp: Any, *args: Any, **kwargs: Any) -> None:
        fp.write(b"\x89PNG half an image")
        raise KeyboardInterrupt  # Ctrl-C while the bytes are going out

    monkeypatch.setattr(Image.Image, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        engine.run(save_workflow())
    assert not engine.output_dir.exists() or list(engine.output_dir.iterdir()) == []
    monkeypatch.setattr(Image.Image, "save", real_save)
    assert [p.name for p in engine.run(save_workflow()).files] == ["result_00001_.png"]


@pytest.mark.parametrize(("prefix", "fragment"), [
    (".", "names a folder"),
    ("sub/", "names a folder"),
    ("x" * 250, "longer than 255 bytes"),
    ("blocker/x", "is a file"),
])
def test_unusable_output_prefixes_are_refused_before_anything_runs(engine: Engine, picture: Image.Image,
                                                                   prefix: str, fragment: str) -> None:
    engine.output_dir.mkdir(parents=True)
    (engine.output_dir / "blocker").write_text("a file where a folder would go")
    events: list[str] = []
    with pytest.raises(WorkflowError) as caught:
        engine.run(save_workflow(), {"prefix": prefix}, on_event=lambda kind, data: events.append(kind))
    [issue] = caught.value.errors
    assert issue.input == "filename_prefix" and fragment in issue.message
    assert events == []  # not a single node ran


def test_an_output_directory_that_is_a_file_or_unwritable_is_refused_before_anything_runs(
    tmp_path: Path, picture: Image.Image, engine: Engine
) -> None:
    as_file = Engine("cpu", input_dir=engine.input_dir, output_dir=tmp_path / "out.txt", plugins=False)
    (tmp_path / "out.txt").write_text("not a folder")
    assert "is a file" in as_file.validate(save_workflow())[0].message
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    unwritable = Engine("cpu", input_dir=engine.input_dir, output_dir=locked / "out", plugins=False)
    if os.access(locked, os.W_OK):  # root may write anywhere; nothing to prove there
        pytest.skip("this user can write into a read-only folder")
    assert "permission denied" in unwritable.validate(save_workflow())[0].message


def test_a_file_name_that_arrives_over_a_link_is_read_again_when_the_file_changes(engine: Engine) -> None:
    Image.new("RGB", (4, 4), (255, 0, 0)).save(engine.input_dir / "in.png")
    workflow = {"name": {"class_type": "String", "inputs": {"value": "in.png"}},
                "load": {"class_type": "LoadImage", "inputs": {"image": ["name", 0]}},
                "out": {"class_type": "Preview", "inputs": {"value": ["load", 0]}}}
    red = engine.run(workflow).outputs["out"]["value"]
    Image.new("RGB", (4, 4), (0, 0, 255)).save(engine.input_dir / "in.png")
    blue = engine.run(workflow).outputs["out"]["value"]
    assert red[0, 0, 0, 0] == 1.0 and blue[0, 2, 0, 0] == 1.0 and blue[0, 0, 0, 0] == -1.0


@pytest.mark.parametrize("make", ["huge", "text_bomb", "truncated"])
def test_unreadable_or_oversized_images_are_input_errors(engine: Engine, make: str) -> None:
    from PIL import PngImagePlugin

    path = engine.input_dir / "bad.png"
    if make == "huge":
        Image.new("L", (4100, 4100)).save(path)
    elif make == "text_bomb":
        info = PngImagePlugin.PngInfo()
        info.add_text("comment", "A" * (20 << 20), zip=True)  # a few kB that inflate to 20 MB of text
        Image.new("RGB", (2, 2)).save(path, pnginfo=info)
    else:
        Image.new("RGB", (64, 64), (9, 9, 9)).save(path)
        path.write_bytes(path.read_bytes()[:80])
    with pytest.raises(NodeExecutionError) as caught:
        engine.run(save_workflow(image="bad.png"))
    assert caught.value.is_input_error and caught.value.input == "image", caught.value


def test_shipped_examples_load_by_name_and_unknown_ones_are_named(engine: Engine) -> None:
    from nodegraph.world.examples import EXAMPLES

    workflow = {"load": {"class_type": "LoadImage", "inputs": {"image": "example:red_circle_on_blue.png"}},
                "out": {"class_type": "Preview", "inputs": {"value": ["load", 0]}}}
    assert engine.run(workflow).outputs["out"]["value"].shape == (1, 3, 64, 64)
    workflow["load"]["inputs"]["image"] = "example:../../../etc/passwd"
    [issue] = engine.validate(workflow)
    assert issue.input == "image" and all(name in issue.message for name in EXAMPLES)


def test_any_size_and_shape_is_centre_cropped_then_resized() -> None:
    from nodegraph.models.resize import fit_square

    wide = torch.zeros(1, 3, 40, 100)
    wide[..., 30:70] = 1.0  # the centred 40x40 square is all ones; the sides are cut away
    assert torch.equal(fit_square(wide, 40), torch.ones(1, 3, 40, 40))
    assert fit_square(wide, 20).shape == (1, 3, 20, 20) and fit_square(wide, 20).min() == 1.0
    small = torch.rand(1, 1, 8, 8)
    assert fit_square(small, 32).shape == (1, 1, 32, 32)  # grown bilinearly
    big = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(fit_square(big, 32), big.unfold(2, 2, 2).unfold(3, 2, 2).mean((-1, -2)))


@pytest.mark.slow
def test_an_editing_workflow_edits_the_users_own_jpeg(tmp_path: Path) -> None:
    from conftest import REPO, run_cli

    photo = Image.new("RGB", (96, 60), (40, 70, 220))  # a wide blue JPEG with a red disc in the middle
    for x in range(96):
        for y in range(60):
            if (x - 48) ** 2 + (y - 30) ** 2 < 18**2:
                photo.putpixel((x, y), (220, 40, 40))
    photo.save(tmp_path / "mine.jpg", quality=95)
    proc = run_cli("run", str(REPO / "workflows" / "ddim_invert_reconstruct.json"), "--input-dir", str(tmp_path),
                   "--param", "image=mine.jpg", "--param", "steps=10", "--param",
                   "caption=a large red circle in the center on a blue background", "--param",
                   "score_prompt=a large red circle in the center on a blue background", "--out", str(tmp_path / "o"),
                   "--json")
    assert proc.returncode == 0, proc.stderr
    [run] = json.loads(proc.stdout)["runs"]
    assert run["outputs"]["score"]["attribute_accuracy"] == 1.0  # the user's disc came back, centred
