"""A wheel is the product a user installs: it must carry the bundled weights and run from any directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


def _run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{args}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.slow
def test_wheel_installed_in_a_fresh_venv_runs_the_main_job_from_an_unrelated_directory(tmp_path: Path) -> None:
    # Build from a copy of the files git tracks or would, so the checkout gets no build/ or egg-info litter.
    source = tmp_path / "source"
    listing = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    tracked = subprocess.run(listing, cwd=REPO, capture_output=True, check=True).stdout
    for name in tracked.decode().split("\0"):
        if name and (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist, source,
         cwd=tmp_path)
    [wheel] = dist.glob("nodegraph-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "nodegraph/weights/decoder.safetensors" in names and "nodegraph/weights/decoder.md" in names
    # the data folders: the workflows' default input images, the CLIP config, the GUI's extension script
    for folder, pattern in (("world/example_images", ".png"), ("models/configs", ".json"), ("server/web", ".js")):
        assert any(n.startswith(f"nodegraph/{folder}/") and n.endswith(pattern) for n in names), folder

    # A fresh venv; its dependencies (torch, open_clip, ...) come from this environment through a .pth
    # line, which adds the directory without running the editable install's hooks in it, so the only
    # nodegraph it can import is the wheel's.
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path)
                .stdout.strip())
    (site / "outer_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel, cwd=tmp_path)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    workflow = shutil.copy(REPO / "workflows" / "dalle2_text2img.json", elsewhere / "wf.json")
    env = {k: v for k, v in os.environ.items() if k not in ("NODEGRAPH_MODELS", "PYTHONPATH")}
    env["OMP_NUM_THREADS"] = "1"
    where = _run(python, "-c", "import nodegraph.weights as w; print(w.BUNDLED_DIR)", cwd=elsewhere, env=env)
    assert Path(where.stdout.strip()).is_relative_to(venv)
    _run(venv / "bin" / "nodegraph", "run", workflow, "--out", "out", "--param", "prior_steps=2", "--param",
         "steps=3", "--param", "upsample_steps=2", cwd=elsewhere, env=env)
    [png] = (elsewhere / "out").glob("*.png")
    assert Image.open(png).size == (64, 64)


def _pins() -> dict[str, str]:
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"constraints.txt: {line!r} is not NAME==VERSION"
            pins[canonicalize_name(name)] = version
    return pins


def test_every_declared_dependency_is_pinned_and_installed_at_its_pin() -> None:
    """The README's install and .ci/run take constraints.txt: a dependency added to pyproject.toml without a
    pin would float to whatever the registry serves on the day (one test broke that way on torch 2.14)."""
    import tomllib
    from importlib.metadata import version

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]
    pins = _pins()
    unpinned = [r.name for r in declared if canonicalize_name(r.name) not in pins]
    assert not unpinned, f"add pins for {unpinned} to constraints.txt (pip freeze of a venv the tests passed in)"
    for requirement in declared:
        pinned = pins[canonicalize_name(requirement.name)]
        assert requirement.specifier.contains(pinned, prereleases=True), (requirement, pinned)
        if os.environ.get("NODEGRAPH_UNPINNED"):  # .ci/latest: the newest releases on purpose
            continue
        installed = version(requirement.name).split("+")[0]
        assert installed == pinned, f"{requirement.name} {installed} is installed, constraints.txt pins {pinned}"


def test_every_package_in_the_tree_is_listed_for_the_wheel() -> None:
    """pyproject.toml names the packages by hand (nodes/ and server/ install under nodegraph.*); a new
    subpackage left off the list imports in a checkout and is missing from the wheel a user installs."""
    import tomllib

    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    roots = {folder: package for package, folder in setuptools["package-dir"].items()}
    in_tree = set()
    for folder, package in roots.items():
        for init in (REPO / folder).rglob("__init__.py"):
            inner = init.parent.relative_to(REPO / folder).parts
            if not any(part.startswith((".", "__")) for part in inner):
                in_tree.add(".".join((package, *inner)))
    listed = set(setuptools["packages"])
    assert not in_tree - listed, f"add {sorted(in_tree - listed)} to [tool.setuptools] packages in pyproject.toml"
    # a folder of data files only is listed as a package of its own, with its files in package-data
    data_only = {package for package in listed - in_tree if package in setuptools["package-data"]}
    for package in data_only:  # under the longest package-dir root it extends
        folder, root = max(((f, p) for f, p in roots.items() if package.startswith(p + ".")), key=lambda r: len(r[1]))
        inner = package[len(root) + 1:].split(".")
        assert (REPO / folder).joinpath(*inner).is_dir(), f"{package} is listed for its data but has no folder"
    stray = listed - in_tree - data_only
    assert not stray, f"{sorted(stray)} are listed in pyproject.toml but not in the tree"
