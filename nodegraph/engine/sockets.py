"""Socket types, each declared once: its name, the Python class of its value, and its conventions.

A socket type is a name that links compare (a `SocketType` is a `str`, so `In(IMAGE)` and `In("IMAGE")`
declare the same input) that also carries what travels on it: the value's class as "module:Class"
(resolved only when a value is checked, so the engine imports no library code to validate a
workflow), the conventions a node may rely on (shape, range, device, mask polarity) and, for model
sockets, the checkpoint kind. The executor checks every output against its declared class, so a
node that puts the wrong object on a socket is named at once, not three nodes later.

The four constant types (INT, FLOAT, STRING, BOOLEAN) may be given inline in a workflow; every other
type is link-only. A link is legal when both ends name the same type, when the input accepts ANY, or
through one of the coercions in COERCIONS. A third-party node may declare its own SocketType (the
registry collects it) or use a bare name, which is link-only with an undeclared value.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable
from typing import Any


class SocketType(str):
    """A socket type name with its value class ("module:Class"), conventions and model kind."""

    value: str
    convention: str
    kind: str | None

    def __new__(cls, name: str, value: str, convention: str, kind: str | None = None) -> SocketType:
        self = super().__new__(cls, name)
        self.value = value
        self.convention = convention
        self.kind = kind
        return self

    def __reduce__(self) -> tuple[Any, ...]:  # pickling and deepcopy must rebuild the attributes too
        return (SocketType, (str(self), self.value, self.convention, self.kind))

    def value_class(self) -> type:
        """The class values of this type are instances of (imported on first use)."""
        cls = self.__dict__.get("_class")
        if cls is None:
            module, _, name = self.value.partition(":")
            cls = getattr(importlib.import_module(module), name)
            self.__dict__["_class"] = cls
        return cls

    def check(self, value: Any) -> str | None:
        """Why `value` cannot travel on this socket, or None when it can."""
        cls = self.value_class()
        ok = type(value) is cls if cls in (int, bool) else isinstance(value, cls)
        if not ok:
            return f"{self} carries {self.value.replace(':', '.')}, not {type(value).__name__}"
        if self.kind is not None and getattr(value, "kind", None) != self.kind:
            return f"{self} carries a {self.kind!r} model, not a {getattr(value, 'kind', None)!r} one"
        return None

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"value": self.value.replace(":", "."), "convention": self.convention}
        if self.kind is not None:
            info["kind"] = self.kind
        info["constant"] = self in CONSTANT_TYPES
        return info


_DIFFUSION_MODEL = "nodegraph.models.diffusion_model:DiffusionModel"
_CONDITIONS = "nodegraph.generate.conditions"

INT = SocketType("INT", "builtins:int", "Python int (not bool)")
FLOAT = SocketType("FLOAT", "builtins:float", "Python float (finite); INT links and int constants are accepted")
STRING = SocketType("STRING", "builtins:str", "Python str")
BOOLEAN = SocketType("BOOLEAN", "builtins:bool", "Python bool")
ANY = SocketType("*", "builtins:object", "any value (inputs only); constants may be numbers, strings or booleans")

IMAGE = SocketType("IMAGE", "torch:Tensor", "float [B, C, H, W] in [-1, 1], C = 3 (1 for grey), on the device of "
                   "the node that made it; models resize it to their resolution")
MASK = SocketType("MASK", "torch:Tensor", "float [B, 1, H, W] in [0, 1]: 1 = the region to generate (repaint), "
                  "0 = keep; as LoadImage reads transparency and as ComfyUI does")
TEXT_EMBED = SocketType("TEXT_EMBED", "nodegraph.models.clip:TextEncoding", "one CLIP's encoding of B captions: "
                        "pooled embedding [B, D], token sequence [B, L, W] and its padding mask [B, L]")
IMAGE_EMBED = SocketType("IMAGE_EMBED", "torch:Tensor", "unit-norm CLIP image embeddings [B, D] (prior samples, "
                         "CLIPImageEmbed, mixes); a TextDiff direction is unit-norm too")
LATENT = SocketType("LATENT", f"{_CONDITIONS}:Latent", "a noised image x_t [B, C, H, W] with the timesteps "
                    "that denoise it: DDIM-inverted (decode it with DDIM on those steps) or noised forward (SDEdit: "
                    "any sampler)")
NOISE = SocketType("NOISE", f"{_CONDITIONS}:NoiseSpec", "a seed and a batch size; each consumer draws x_T in its own "
                   "shape on the CPU, so images match across devices")
GUIDANCE = SocketType("GUIDANCE", f"{_CONDITIONS}:Guidance", "weighted conditions for (composable) classifier-free "
                      "guidance plus optional classifier and CLIP terms")
CLASSIFIER_GUIDANCE = SocketType("CLASSIFIER_GUIDANCE", f"{_CONDITIONS}:ClassifierTerm",
                                 "a noisy classifier, the attributes to steer toward and a gradient scale")
CLIP_GUIDANCE = SocketType("CLIP_GUIDANCE", f"{_CONDITIONS}:ClipTerm",
                           "a CLIP (x̂0 mode) or noised CLIP tower (x_t mode), a text target and a gradient scale")
CLIP = SocketType("CLIP", "nodegraph.models.clip:ClipModel", "an open_clip CLIP with its tokenizer and "
                  "preprocessing, on the run's device")
PRIOR = SocketType("PRIOR", _DIFFUSION_MODEL, "DALL·E 2 prior: text -> CLIP image embedding", kind="prior")
DECODER = SocketType("DECODER", _DIFFUSION_MODEL, "decoder: images from text tokens and/or a CLIP image embedding "
                     "(GLIDE / unCLIP)", kind="decoder")
INPAINT_MODEL = SocketType("INPAINT_MODEL", _DIFFUSION_MODEL, "inpainting decoder: also sees the known pixels and "
                           "the mask (GLIDE)", kind="inpaint")
UPSAMPLER = SocketType("UPSAMPLER", _DIFFUSION_MODEL, "diffusion upsampler from a low-resolution IMAGE",
                       kind="upsampler")
CLASSIFIER = SocketType("CLASSIFIER", "nodegraph.models.classifier:NoisyClassifier",
                        "noise-aware attribute classifier on (x_t, t)")
NOISED_CLIP = SocketType("NOISED_CLIP", "nodegraph.models.noised_clip:NoisedImageTower",
                         "noise-aware CLIP image tower on (x_t, t)")

# Released checkpoints (nodegraph.models.real): one socket per role, so a graph that feeds GLIDE's upsampler
# where its base model belongs is refused when it is validated.
_REAL = "nodegraph.models.real:RealModel"
GLIDE_MODEL = SocketType("GLIDE_MODEL", _REAL, "GLIDE's 64x64 text-conditional UNet (base.pt) with its caption "
                         "tokenizer", kind="glide_base")
GLIDE_UPSAMPLER = SocketType("GLIDE_UPSAMPLER", _REAL, "GLIDE's text-conditional 64->256 upsampler (upsample.pt) with "
                             "its caption tokenizer", kind="glide_upsample")
GLIDE_INPAINT_MODEL = SocketType("GLIDE_INPAINT_MODEL", _REAL, "GLIDE's 64x64 inpainting UNet (base_inpaint.pt): "
                                 "also sees the known pixels and the mask", kind="glide_inpaint")
GLIDE_INPAINT_UPSAMPLER = SocketType("GLIDE_INPAINT_UPSAMPLER", _REAL, "GLIDE's 64->256 inpainting upsampler "
                                     "(upsample_inpaint.pt)", kind="glide_upsample_inpaint")
ADM_MODEL = SocketType("ADM_MODEL", _REAL, "a guided-diffusion UNet, unconditional or class-conditional "
                       "(*_diffusion.pt, lsun_*.pt)", kind="adm")
ADM_CLASSIFIER = SocketType("ADM_CLASSIFIER", _REAL, "a guided-diffusion noisy classifier on (x_t, t) "
                            "(*_classifier.pt)", kind="adm_classifier")
KARLO_PRIOR = SocketType("KARLO_PRIOR", _REAL, "Karlo's diffusion prior with its CLIP statistics: CLIP ViT-L/14 "
                         "text -> KARLO_IMAGE_EMBED", kind="karlo_prior")
KARLO_DECODER = SocketType("KARLO_DECODER", _REAL, "Karlo's 64x64 decoder: KARLO_IMAGE_EMBED and CLIP text -> "
                           "images", kind="karlo_decoder")
KARLO_SR = SocketType("KARLO_SR", _REAL, "Karlo's 64->256 super-resolution pair (first steps, last step)",
                      kind="karlo_sr")
KARLO_IMAGE_EMBED = SocketType("KARLO_IMAGE_EMBED", "torch:Tensor", "CLIP ViT-L/14 image embeddings [B, 768] at the "
                               "scale the image tower outputs them (not unit-norm): what Karlo's prior samples and "
                               "its decoder reads")
GENERATOR = SocketType("GENERATOR", "nodegraph.models.stylegan:GanModel", "a StyleGAN2 generator (frozen, eval mode) "
                       "with the centre of its W; loaded, or adapted by StyleGAN-NADA")
W_LATENT = SocketType("W_LATENT", "nodegraph.models.stylegan:StyleLatent", "StyleGAN W+ codes [B, n_latent, "
                      "style_dim], the noise maps they render with (none = the generator's fixed maps) and, after a "
                      "StyleCLIP edit in S, offsets of the style vectors; from sampling, GAN inversion or StyleCLIP; "
                      "any generator of the same layout renders them")
CLIP_OBJECTIVE = SocketType("CLIP_OBJECTIVE", "nodegraph.generate.clip_objective:ClipObjective", "the image-text "
                            "loss CLIP-driven editors minimise: CLIP (and the noised CLIP tower) over augmented "
                            "views, so specks and tints cannot lower it")

CONSTANT_TYPES = frozenset({INT, FLOAT, STRING, BOOLEAN})
BUILTIN: dict[str, SocketType] = {
    sock: sock
    for sock in (INT, FLOAT, STRING, BOOLEAN, ANY, IMAGE, MASK, TEXT_EMBED, IMAGE_EMBED, LATENT, NOISE, GUIDANCE,
                 CLASSIFIER_GUIDANCE, CLIP_GUIDANCE, CLIP, PRIOR, DECODER, INPAINT_MODEL, UPSAMPLER, CLASSIFIER,
                 NOISED_CLIP, GLIDE_MODEL, GLIDE_UPSAMPLER, GLIDE_INPAINT_MODEL, GLIDE_INPAINT_UPSAMPLER, ADM_MODEL,
                 ADM_CLASSIFIER, KARLO_PRIOR, KARLO_DECODER, KARLO_SR, KARLO_IMAGE_EMBED,
                 GENERATOR, W_LATENT, CLIP_OBJECTIVE)
}

# Documented coercions applied when a value crosses a link: (source type, input type) -> converter.
COERCIONS: dict[tuple[str, str], Callable[[Any], Any]] = {(INT, FLOAT): float}

_TYPE_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


def is_valid_type_name(name: object) -> bool:
    return isinstance(name, str) and (name == ANY or _TYPE_NAME.match(name) is not None)


def link_converter(source: str, target: str) -> tuple[bool, Callable[[Any], Any] | None]:
    """Whether a `source` output may feed a `target` input, and the converter to apply if any."""
    if source == target or target == ANY or source == ANY:
        return True, None
    converter = COERCIONS.get((source, target))
    return converter is not None, converter


def accepted_link_types(target: str) -> list[str]:
    """The output types that may link into an input of type `target` (for the catalogue)."""
    if target == ANY:
        return [ANY]
    return [target] + sorted(source for source, dest in COERCIONS if dest == target)


class ConstantError(ValueError):
    """A constant does not fit its declared type; `code` is the validation issue type."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


def _int(value: Any) -> int:
    if type(value) is int:
        return value
    raise ConstantError("wrong_type", f"expected an integer (INT), got {_describe(value)}")


def _float(value: Any) -> float:
    kind = type(value)
    if kind is float:
        if math.isfinite(value):
            return value
        raise ConstantError("non_finite", f"expected a finite number (FLOAT), got {value!r}")
    if kind is int:
        return float(value)
    raise ConstantError("wrong_type", f"expected a number (FLOAT), got {_describe(value)}")


def _string(value: Any) -> str:
    if type(value) is str:
        return value
    raise ConstantError("wrong_type", f"expected a string (STRING), got {_describe(value)}")


def _boolean(value: Any) -> bool:
    if type(value) is bool:
        return value
    raise ConstantError("wrong_type", f"expected true or false (BOOLEAN), got {_describe(value)}")


def _any(value: Any) -> Any:
    kind = type(value)
    if kind is float and not math.isfinite(value):
        raise ConstantError("non_finite", f"expected a finite number, got {value!r}")
    if kind in (int, float, str, bool):
        return value
    raise ConstantError("wrong_type", f"expected a number, string or boolean, got {_describe(value)}")


CONSTANT_CHECKS: dict[str, Callable[[Any], Any]] = {
    INT: _int,
    FLOAT: _float,
    STRING: _string,
    BOOLEAN: _boolean,
    ANY: _any,
}


def check_constant(type_name: str, value: Any) -> Any:
    """Return `value` converted to `type_name`'s Python type, or raise ConstantError."""
    check = CONSTANT_CHECKS.get(type_name)
    if check is None:
        raise ConstantError(
            "wrong_type", f"{type_name} values cannot be written inline; link this input to a node output"
        )
    return check(value)


def parse_text(type_name: str, text: str) -> Any:
    """Parse a command-line style value ("5", "0.5", "true") into `type_name`'s Python type."""
    if type_name in (STRING, ANY):
        return text
    stripped = text.strip()
    if type_name == INT:
        try:
            return int(stripped)
        except ValueError:
            raise ConstantError("invalid_param_value", f"{text!r} is not an integer") from None
    if type_name == FLOAT:
        try:
            number = float(stripped)
        except ValueError:
            raise ConstantError("invalid_param_value", f"{text!r} is not a number") from None
        return _float(number)
    if type_name == BOOLEAN:
        lowered = stripped.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ConstantError("invalid_param_value", f"{text!r} is not a boolean (use true or false)")
    return check_constant(type_name, text)


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"
