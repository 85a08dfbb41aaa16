"""Where model weights live: the one module that locates them, for the loaders, training and the benches.

The bundled Shapes World weights (fp16 safetensors, each with its card `FAMILY.md`) are package data in
this folder, so a wheel or a non-editable install runs from any working directory. `NODEGRAPH_MODELS`
names an override directory that replaces this one: checkpoint names resolve inside it, and training
exports into it.

A checkpoint is named relative to the models directory; an empty name means the family's default file.
Names that leave the directory (absolute paths, `..`, symlinks pointing out) are refused, so a workflow
from an untrusted client cannot make the engine read arbitrary files.

Released checkpoints (GLIDE, guided-diffusion, Karlo, OpenAI CLIP) are the user's files, found by kind in the
models folders (`find_model`, `list_models`, `RELEASED`): the user models directory's checkpoints/,
upscale_models/, clip/, classifiers/ and tokenizers/, then the folders extra_model_paths.yaml adds (the
second half of this module; docs/real_checkpoints.md describes the convention).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from nodegraph.errors import CheckpointError, InputValueError

BUNDLED_DIR = Path(__file__).resolve().parent
ENV_VAR = "NODEGRAPH_MODELS"

# family -> the file a loader opens when no checkpoint is named (and training exports to)
DEFAULT_FILES: dict[str, str] = {
    "clip": "clip.safetensors",
    "prior": "prior.safetensors",
    "decoder": "decoder.safetensors",
    "inpaint": "inpaint.safetensors",
    "upsampler": "upsampler.safetensors",
    "classifier": "classifier.safetensors",
    "noised_clip": "noised_clip.safetensors",
    "stylegan": "stylegan.safetensors",
}


def models_dir() -> Path:
    """The directory checkpoint names resolve in: $NODEGRAPH_MODELS, else the bundled weights."""
    override = os.environ.get(ENV_VAR)
    return Path(override) if override else BUNDLED_DIR


def default_path(family: str) -> Path:
    """The family's default file in the models directory (it may not exist yet: training writes it)."""
    if family not in DEFAULT_FILES:
        raise KeyError(f"unknown model family {family!r}; known: {', '.join(DEFAULT_FILES)}")
    return models_dir() / DEFAULT_FILES[family]


def resolve(name: str, family: str) -> Path:
    """The existing checkpoint file `name` names for a family ("" = the default), or CheckpointError."""
    base = models_dir().resolve()
    rel = name.strip() or DEFAULT_FILES[family]
    if Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise CheckpointError(
            f"checkpoint {name!r} must be a path inside the models directory {base} (no absolute paths or '..'); "
            f"copy the file there or set {ENV_VAR}"
        )
    path = (base / rel).resolve()
    if not path.is_relative_to(base):
        raise CheckpointError(f"checkpoint {name!r} resolves outside the models directory {base}")
    if not path.is_file():
        hint = "" if name.strip() else f"; train it with `python -m nodegraph.train {family}`"
        raise CheckpointError(f"no {family} checkpoint at {path}{hint}")
    return path


def fingerprint(path: Path) -> str:
    """Identity of a checkpoint file for a cache key: a replaced file must be reloaded."""
    st = path.stat()
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"


def card_path(family: str) -> Path:
    """The model card beside a family's default weights."""
    return default_path(family).with_suffix(".md")


# ------------------------------------------------------------------ released checkpoints: the models folders
#
# Real checkpoints (GLIDE, guided-diffusion, Karlo, OpenAI CLIP) are the user's files, found by folder as in
# ComfyUI: the user models directory ($NODEGRAPH_MODELS, else $XDG_DATA_HOME/nodegraph/models) has one
# subfolder per kind of file, and a config file adds more folders of each kind (ComfyUI's
# extra_model_paths.yaml format, so a ComfyUI install's own file can be pointed at).

PATHS_ENV = "NODEGRAPH_MODEL_PATHS"  # more config files, separated by os.pathsep
CONFIG_FILE = "extra_model_paths.yaml"

# folder -> what goes in it
FOLDERS: dict[str, str] = {
    "checkpoints": "diffusion models: GLIDE base.pt / base_inpaint.pt, guided-diffusion *_diffusion.pt, Karlo's "
                   "prior and decoder .ckpt, ermongroup/ddim's DDPMs",
    "upscale_models": "diffusion upsamplers: GLIDE upsample.pt / upsample_inpaint.pt, guided-diffusion "
                      "*_upsampler.pt, Karlo's improved-sr .ckpt",
    "clip": "CLIP weights (OpenAI's, exported to safetensors), GLIDE's noised CLIP encoders, Karlo's "
            "ViT-L-14_stats.th",
    "classifiers": "guided-diffusion noisy classifiers (*_classifier.pt)",
    "tokenizers": "vocabularies, one folder each: glide/ holds GLIDE's encoder.json.gz and vocab.bpe.gz",
}
# ComfyUI's names for folders that hold the same kind of file (its other folders are ignored).
ALIASES = {"diffusion_models": "checkpoints", "unet": "checkpoints", "text_encoders": "clip", "clip_vision": "clip"}
MODEL_SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt", ".th", ".bin")
_MAX_LISTED = 10_000  # files offered per folder: a folder pointed at a whole disk must not stall the catalogue


def user_models_dir() -> Path:
    """The user models directory: $NODEGRAPH_MODELS, else $XDG_DATA_HOME/nodegraph/models
    (~/.local/share/nodegraph/models). It need not exist: nothing is found in it then."""
    override = os.environ.get(ENV_VAR)
    if override:
        return Path(override).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "nodegraph" / "models"


def config_files() -> list[Path]:
    """The extra-paths config files read, in order: the user models directory's extra_model_paths.yaml (if
    present), then each file $NODEGRAPH_MODEL_PATHS names."""
    files = [user_models_dir() / CONFIG_FILE]
    files = [f for f in files if f.is_file()]
    for part in os.environ.get(PATHS_ENV, "").split(os.pathsep):
        if part.strip():
            files.append(Path(part.strip()).expanduser())
    return files


def read_extra_paths(config: Path) -> dict[str, list[Path]]:
    """Folders per kind from one config file in ComfyUI's extra_model_paths.yaml format:

        my_comfyui:                      # any number of named sections
          base_path: /home/me/ComfyUI/   # optional; relative paths below start here (default: the file's folder)
          checkpoints: models/checkpoints/
          clip: |                        # several folders: one per line (or a YAML list)
            models/clip/
            models/text_encoders/

    Keys other than FOLDERS and ALIASES (ComfyUI's vae, loras, ...) and `is_default` are ignored; `~` and
    $VARIABLES are expanded. A file that cannot be read or has another shape is a CheckpointError naming it.
    """
    import yaml  # only when a config file exists: declaring nodes must stay cheap

    try:
        data = yaml.safe_load(config.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CheckpointError(f"model paths config {config} cannot be read: {exc}", input=None) from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"model paths config {config} is not valid YAML: {exc}", input=None) from None
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise CheckpointError(f"model paths config {config} must map section names to mappings of folder kind -> "
                              "path(s), as ComfyUI's extra_model_paths.yaml does", input=None)
    found: dict[str, list[Path]] = {}
    for section, entries in data.items():
        base_value = entries.get("base_path", "")
        if not isinstance(base_value, str):
            raise CheckpointError(f"model paths config {config}: {section}.base_path must be a path", input=None)
        base = config.parent / _expand(base_value) if base_value else config.parent
        for key, value in entries.items():
            folder = ALIASES.get(str(key), str(key))
            if folder not in FOLDERS:
                continue
            paths = value.splitlines() if isinstance(value, str) else value
            if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
                raise CheckpointError(f"model paths config {config}: {section}.{key} must be a path, several paths "
                                      "one per line, or a list of paths", input=None)
            found.setdefault(folder, []).extend(base / _expand(p.strip()) for p in paths if p.strip())
    return found


def _expand(text: str) -> Path:
    return Path(os.path.expandvars(os.path.expanduser(text)))


def search_dirs(folder: str) -> list[Path]:
    """Where files of a kind are looked for, in order: the user models directory's subfolder, then the
    config files' folders of that kind (duplicates removed). CheckpointError for a broken config file."""
    if folder not in FOLDERS:
        raise KeyError(f"unknown model folder {folder!r}; known: {', '.join(FOLDERS)}")
    dirs = [user_models_dir() / folder]
    for config in config_files():
        if not config.is_file():
            raise CheckpointError(f"model paths config {config} (named by {PATHS_ENV}) does not exist", input=None)
        dirs.extend(read_extra_paths(config).get(folder, []))
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def valid_model_name(name: object) -> bool:
    """A name that may be looked up in a models folder: a relative path without '..', NUL or unencodable
    characters (a workflow from an untrusted client must not name files outside the folders)."""
    if not isinstance(name, str) or not name.strip() or len(name) > 1024 or "\x00" in name:
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    path = Path(name)
    return not path.is_absolute() and ".." not in path.parts and not name.startswith(("~", "\\"))


def list_models(folder: str, suffixes: tuple[str, ...] = MODEL_SUFFIXES) -> list[str]:
    """Names (relative, '/'-separated) of the files of a kind found in its folders, sorted; the first folder
    holding a name wins. Never raises: a broken config or an unreadable folder lists what it can."""
    try:
        dirs = search_dirs(folder)
    except CheckpointError:
        dirs = [user_models_dir() / folder]
    names: set[str] = set()
    for d in dirs:
        try:
            for path in d.rglob("*"):
                rel = path.relative_to(d)
                if any(part.startswith(".") for part in rel.parts) or path.suffix.lower() not in suffixes:
                    continue
                if path.is_file():
                    names.add(rel.as_posix())
                if len(names) >= _MAX_LISTED:
                    break
        except OSError:
            continue
    return sorted(names)


def list_model_dirs(folder: str) -> list[str]:
    """Names of the subfolders of a kind's folders (tokenizer vocabularies are folders), sorted."""
    try:
        dirs = search_dirs(folder)
    except CheckpointError:
        dirs = [user_models_dir() / folder]
    names: set[str] = set()
    for d in dirs:
        try:
            names.update(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            continue
    return sorted(names)


def find_model(folder: str, name: str, *, input: str = "checkpoint", what: str = "", directory: bool = False) -> Path:
    """The file (or, with `directory`, the folder) `name` in the first of a kind's folders that holds it.

    Absent: an InputValueError on `input` with code "model_not_found" saying where to put it ("put base.pt
    in /home/me/.local/share/nodegraph/models/checkpoints"); `what` says what the file is (e.g. "GLIDE's
    64x64 base model, base.pt from glide-text2im"). A name that leaves the folders is refused.
    """
    if not valid_model_name(name):
        raise InputValueError(input, f"{name!r:.80} is not a file name inside the {folder} folder (a relative "
                              "path without '..')", "invalid_value")
    dirs = search_dirs(folder)
    for d in dirs:
        candidate = d / name
        if (candidate.is_dir() if directory else candidate.is_file()):
            return candidate
    also = f" (also looked in {', '.join(str(d) for d in dirs[1:])})" if len(dirs) > 1 else ""
    if directory:  # a folder of files: say which files go into which folder
        message = f"the {name} folder is not installed: put {what or 'its files'} in {dirs[0] / name}{also}"
    else:
        message = f"{name}{f' ({what})' if what else ''} is not installed: put {name} in {dirs[0]}{also}"
    raise InputValueError(input, message, "model_not_found")


def model_fingerprint(path: Path) -> str:
    """Identity of a models-folder file, or of a folder by its files, for a cache key."""
    if path.is_dir():
        return "|".join(fingerprint(p) for p in sorted(path.iterdir()) if p.is_file())
    return fingerprint(path)


@dataclass(frozen=True)
class Released:
    """Where the released files of one kind of model go, their names as published, and what they are."""

    folder: str
    names: tuple[str, ...]
    what: str
    directory: bool = False  # a folder of files (a tokenizer vocabulary), not one file


# model kind (as nodegraph.models.real.RealModel.kind names it) -> its released files
RELEASED: dict[str, Released] = {
    "glide_base": Released("checkpoints", ("base.pt",), "GLIDE's 64x64 text-to-image model, from glide-text2im"),
    "glide_inpaint": Released("checkpoints", ("base_inpaint.pt",), "GLIDE's 64x64 inpainting model"),
    "glide_upsample": Released("upscale_models", ("upsample.pt",), "GLIDE's 64->256 upsampler"),
    "glide_upsample_inpaint": Released("upscale_models", ("upsample_inpaint.pt",),
                                       "GLIDE's 64->256 inpainting upsampler"),
    "glide_vocab": Released("tokenizers", ("glide",), "GLIDE's encoder.json.gz and vocab.bpe.gz, from glide-text2im's "
                            "glide_text2im/tokenizer/", directory=True),
    "adm": Released("checkpoints", (
        "256x256_diffusion.pt", "256x256_diffusion_uncond.pt", "128x128_diffusion.pt", "64x64_diffusion.pt",
        "512x512_diffusion.pt", "lsun_bedroom.pt", "lsun_cat.pt", "lsun_horse.pt",
    ), "a guided-diffusion UNet, from openai/guided-diffusion"),
    "adm_classifier": Released("classifiers", (
        "256x256_classifier.pt", "128x128_classifier.pt", "64x64_classifier.pt", "512x512_classifier.pt",
    ), "a guided-diffusion noisy classifier"),
    "karlo_prior": Released("checkpoints", ("prior-ckpt-step=01000000-of-01000000.ckpt",), "Karlo's prior"),
    "karlo_decoder": Released("checkpoints", ("decoder-ckpt-step=01000000-of-01000000.ckpt",),
                              "Karlo's 64x64 decoder"),
    "karlo_sr": Released("upscale_models", ("improved-sr-ckpt-step=1.2M.ckpt",), "Karlo's 64->256 super-resolution"),
    "karlo_clip_stats": Released("clip", ("ViT-L-14_stats.th",), "Karlo's CLIP image-embedding statistics"),
    "openai_clip": Released("clip", ("ViT-L-14.safetensors", "ViT-B-16.safetensors", "ViT-B-32.safetensors"),
                            "OpenAI's CLIP weights exported to safetensors, see docs/real_checkpoints.md"),
}


def released_choices(kind: str) -> list[str]:
    """What a loader offers: the released names first, then every other file (or folder) of the kind's folder."""
    spec = RELEASED[kind]
    found = list_model_dirs(spec.folder) if spec.directory else list_models(spec.folder)
    return list(spec.names) + [name for name in found if name not in spec.names]


def find_released(kind: str, name: str, input: str = "checkpoint") -> Path:
    """`find_model` for a model kind's folder; the "put FILE in DIR" error says what the file is."""
    spec = RELEASED[kind]
    return find_model(spec.folder, name, input=input, what=spec.what, directory=spec.directory)
