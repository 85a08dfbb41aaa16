"""A style-based generator of the StyleGAN2 family (Karras et al. 2020), in plain PyTorch.

    z ──► mapping MLP (PixelNorm, n_mlp equalised-lr layers) ──► w ∈ W
    W+ = one w per layer [B, n_latent, style_dim]: styles of the synthesis network
    const 4×4 ─► StyledConv ─► toRGB ─┐
      └─► (up) StyledConv ─► StyledConv ─► toRGB(+ upsampled skip) ─► ... ─► image [B, 3, size, size]

A StyledConv is a modulated and demodulated 3×3 convolution (the style scales the input channels, the
weight is renormalised per output channel), a per-pixel noise input with a learned strength and a biased
leaky ReLU; toRGB is a modulated 1×1 convolution without demodulation, summed over resolutions (skip
architecture). Layer i of W+ styles the i-th modulated convolution in forward order, the toRGBs sharing
the index of the conv after them, as in the reference implementation.

Parameter names and shapes follow rosinality's stylegan2-pytorch port (the layout the StyleCLIP and
StyleGAN-NADA code bases load), so one module serves the bundled Shapes World generator and real
checkpoints (`nodegraph.models.stylegan_checkpoint`). The widths per resolution are a config tuple,
not the reference's 512-then-halving table, so small generators and any real file's widths both fit.

The CUDA kernels of the reference (upfirdn2d, fused bias + leaky ReLU) are written as ordinary ops: a
depthwise convolution with the blur kernel and `leaky_relu(x + b) * √2`. Modulation scales activations
rather than building one weight per sample (the equivalent "non-fused" form, faster on a CPU).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# after_block(level, features, rgb) -> (features, rgb): a look at (or a change of) the synthesis after each resolution
BlockHook = Callable[[int, Tensor, Tensor], tuple[Tensor, Tensor]]


@dataclass
class StyleGANConfig:
    size: int = field(default=32, metadata={"min": 1, "max": 4096})  # output side, start_size times a power of 2
    style_dim: int = 128  # width of z, w and the mapping network
    n_mlp: int = field(default=4, metadata={"min": 1, "max": 16})
    # width at each resolution from start_size up to size (4, 8, 16, 32 for the defaults)
    channels: tuple[int, ...] = (128, 128, 64, 32)
    start_size: int = field(default=4, metadata={"min": 1, "max": 4096})  # side of the learned constant input
    lr_mlp: float = field(default=0.01, metadata={"min": 1e-6, "max": 1.0})  # equalised-lr multiplier of the MLP
    blur_kernel: tuple[int, ...] = (1, 3, 3, 1)

    def __post_init__(self) -> None:
        self.channels = tuple(self.channels)
        self.blur_kernel = tuple(self.blur_kernel)
        n = int(round(math.log2(self.size / self.start_size))) + 1
        if self.start_size * 2 ** (n - 1) != self.size or n < 1:
            raise ValueError(f"size {self.size} is not start_size {self.start_size} times a power of two")
        if len(self.channels) != n:
            raise ValueError(f"channels needs {n} widths (resolutions {self.start_size}..{self.size}), "
                             f"got {len(self.channels)}")

    @property
    def resolutions(self) -> list[int]:
        return [self.start_size * 2**i for i in range(len(self.channels))]

    @property
    def n_latent(self) -> int:
        """Entries of W+: two convs per upsampled resolution, the first conv and the final toRGB."""
        return 2 * len(self.channels)

    @property
    def num_layers(self) -> int:
        """Styled convolutions, each with one noise input."""
        return 2 * len(self.channels) - 1

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------- ops
def blur_kernel_2d(k: tuple[int, ...]) -> Tensor:
    t = torch.tensor(k, dtype=torch.float32)
    t = t[None, :] * t[:, None]
    return t / t.sum()


def upfirdn2d(x: Tensor, kernel: Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)) -> Tensor:
    """Upsample by zero insertion, pad (negative pads crop), FIR-filter with `kernel`, then decimate."""
    b, c, h, w = x.shape
    if up > 1:
        x = x.reshape(b, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(b, c, h * up, w * up)
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    k = torch.flip(kernel, [0, 1]).to(x.dtype)
    x = F.conv2d(x, k.expand(c, 1, *k.shape), groups=c)  # a true convolution: the kernel flipped
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


def fused_leaky_relu(x: Tensor, bias: Tensor, slope: float = 0.2, gain: float = math.sqrt(2)) -> Tensor:
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return F.leaky_relu(x + bias.view(shape), slope) * gain


class PixelNorm(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class FusedLeakyReLU(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return fused_leaky_relu(x, self.bias)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate: weights stored N(0, 1/lr_mul²) and scaled at run time, so
    Adam's per-parameter step is the same relative change for every layer (and lr_mul slows the mapping MLP)."""

    def __init__(self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activation: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        if self.activation:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class Blur(nn.Module):
    def __init__(self, kernel: tuple[int, ...], pad: tuple[int, int], gain: float = 1.0):
        super().__init__()
        self.register_buffer("kernel", blur_kernel_2d(kernel) * gain)
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """×2 upsampling by zero insertion and the blur kernel (scaled by 4 to keep the mean)."""

    def __init__(self, kernel: tuple[int, ...]):
        super().__init__()
        self.register_buffer("kernel", blur_kernel_2d(kernel) * 4)
        p = len(kernel) - 2
        self.pad = ((p + 1) // 2 + 1, p // 2)

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, up=2, pad=self.pad)


class ModulatedConv2d(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, style_dim: int, demodulate: bool = True,
                 upsample: bool = False, blur_kernel: tuple[int, ...] = (1, 3, 3, 1)):
        super().__init__()
        self.in_ch, self.out_ch, self.kernel_size = in_ch, out_ch, kernel_size
        self.upsample, self.demodulate = upsample, demodulate
        self.scale = 1 / math.sqrt(in_ch * kernel_size**2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_ch, in_ch, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_ch, bias_init=1.0)  # styles start at 1: plain convs
        if upsample:
            # transposed conv (stride 2) grows H to 2H + k - 2; the blur's padding brings it back to 2H
            p = (len(blur_kernel) - 2) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, ((p + 1) // 2 + 1, p // 2 + 1), gain=4)

    def forward(self, x: Tensor, w: Tensor, offset: Tensor | None = None) -> Tensor:
        b = x.shape[0]
        style = self.modulation(w)  # [B, in]: this conv's vector in S (StyleSpace), moved by `offset`
        if offset is not None:
            style = style + offset
        weight = self.weight[0] * self.scale  # [out, in, k, k]
        x = x * style.view(b, -1, 1, 1)
        if self.upsample:
            x = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2)
            x = self.blur(x)
        else:
            x = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            # 1/‖w ⊙ s‖ per sample and output channel: what demodulating the per-sample weight would do
            d = torch.rsqrt((weight.pow(2).sum((2, 3))[None] * style.pow(2)[:, None, :]).sum(2) + 1e-8)
            x = x * d.view(b, -1, 1, 1)
        return x


class NoiseInjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, noise: Tensor | None) -> Tensor:
        if noise is None:
            noise = torch.randn(x.shape[0], 1, x.shape[2], x.shape[3], device=x.device, dtype=x.dtype)
        return x + self.weight * noise


class ConstantInput(nn.Module):
    def __init__(self, channels: int, size: int):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> Tensor:
        return self.input.expand(batch, -1, -1, -1)


class StyledConv(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, style_dim: int, upsample: bool = False,
                 blur_kernel: tuple[int, ...] = (1, 3, 3, 1)):
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, 3, style_dim, upsample=upsample, blur_kernel=blur_kernel)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_ch)

    def forward(self, x: Tensor, w: Tensor, noise: Tensor | None, offset: Tensor | None = None) -> Tensor:
        return self.activate(self.noise(self.conv(x, w, offset), noise))


class ToRGB(nn.Module):
    def __init__(self, in_ch: int, style_dim: int, upsample: bool = True,
                 blur_kernel: tuple[int, ...] = (1, 3, 3, 1)):
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_ch, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: Tensor, w: Tensor, skip: Tensor | None = None, offset: Tensor | None = None) -> Tensor:
        out = self.conv(x, w, offset) + self.bias
        return out if skip is None else out + self.upsample(skip)


# ------------------------------------------------------------------------------------------ generator
class Generator(nn.Module):
    def __init__(self, cfg: StyleGANConfig):
        super().__init__()
        self.cfg = cfg
        d, k, ch = cfg.style_dim, cfg.blur_kernel, cfg.channels
        self.style = nn.Sequential(PixelNorm(), *(EqualLinear(d, d, lr_mul=cfg.lr_mlp, activation=True)
                                                  for _ in range(cfg.n_mlp)))
        self.input = ConstantInput(ch[0], cfg.start_size)
        self.conv1 = StyledConv(ch[0], ch[0], d, blur_kernel=k)
        self.to_rgb1 = ToRGB(ch[0], d, upsample=False)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        for c_in, c_out in zip(ch[:-1], ch[1:], strict=True):
            self.convs.append(StyledConv(c_in, c_out, d, upsample=True, blur_kernel=k))
            self.convs.append(StyledConv(c_out, c_out, d, blur_kernel=k))
            self.to_rgbs.append(ToRGB(c_out, d, blur_kernel=k))
        # fixed noise maps (a reference checkpoint ships them; deterministic synthesis uses them)
        self.noises = nn.Module()
        for i, res in enumerate(self.noise_sizes()):
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, res, res))

    @property
    def n_latent(self) -> int:
        return self.cfg.n_latent

    @property
    def style_dim(self) -> int:
        return self.cfg.style_dim

    def noise_sizes(self) -> list[int]:
        res = self.cfg.resolutions
        return [res[0]] + [r for r in res[1:] for _ in range(2)]

    def fixed_noise(self) -> list[Tensor]:
        return [getattr(self.noises, f"noise_{i}") for i in range(self.cfg.num_layers)]

    def make_noise(self, batch: int = 1, generator: torch.Generator | None = None) -> list[Tensor]:
        """Fresh noise maps, drawn on the CPU from `generator` (so they match across devices)."""
        device = self.input.input.device
        return [torch.randn(batch, 1, r, r, generator=generator).to(device) for r in self.noise_sizes()]

    def mapping(self, z: Tensor) -> Tensor:
        """z [B, style_dim] -> w [B, style_dim]."""
        return self.style(z)

    @torch.no_grad()
    def mean_latent(self, n: int = 4096, generator: torch.Generator | None = None) -> Tensor:
        """The centre of W: the mapping's mean over n draws of z, [style_dim]."""
        z = torch.randn(n, self.style_dim, generator=generator).to(self.input.input.device)
        return self.mapping(z).mean(0)

    def broadcast(self, w: Tensor) -> Tensor:
        """w [B, D] -> W+ [B, n_latent, D] (every layer the same style); W+ passes through."""
        return w if w.dim() == 3 else w.unsqueeze(1).expand(-1, self.n_latent, -1)

    def synthesis(self, w_plus: Tensor, noise: list[Tensor | None] | None = None,
                  style_offsets: list[Tensor | None] | tuple[Tensor | None, ...] | None = None,
                  after_block: BlockHook | None = None) -> Tensor:
        """Images [B, 3, size, size] (about [-1, 1]) from W+ [B, n_latent, D] (or W [B, D]).

        `noise`: one map per styled conv ([B or 1, 1, r, r]), or None entries / None for fresh noise.
        `style_offsets`: one per modulated convolution in `style_layers()` order ([B or 1, width] added to its style
        vector, None = unmoved): an edit in S (StyleSpace), finer than a W+ entry, which moves every channel of a
        conv and of the toRGB beside it together.
        `after_block(level, features, rgb)`: called after each resolution (level 0 = 4 px) with its feature maps
        and the RGB image summed so far; what it returns continues the synthesis (local editing blends another
        render's maps in here: `generate.gan_sampling.render_keeping`).
        """
        w_plus = self.broadcast(w_plus)
        if w_plus.shape[1] != self.n_latent:
            raise ValueError(f"W+ has {w_plus.shape[1]} layers; this generator takes {self.n_latent}")
        noise = list(noise) if noise is not None else [None] * self.cfg.num_layers
        n_styles = 2 + 3 * len(self.to_rgbs)  # len(self.style_layers()), without building it every forward
        s = list(style_offsets) if style_offsets is not None else [None] * n_styles
        if len(s) != n_styles:
            raise ValueError(f"{len(s)} style offsets; this generator has {n_styles} modulated convs")
        out = self.conv1(self.input(w_plus.shape[0]), w_plus[:, 0], noise[0], s[0])
        skip = self.to_rgb1(out, w_plus[:, 1], offset=s[1])
        if after_block is not None:
            out, skip = after_block(0, out, skip)
        i = 1
        for j, to_rgb in enumerate(self.to_rgbs):
            out = self.convs[2 * j](out, w_plus[:, i], noise[2 * j + 1], s[2 + 3 * j])
            out = self.convs[2 * j + 1](out, w_plus[:, i + 1], noise[2 * j + 2], s[3 + 3 * j])
            skip = to_rgb(out, w_plus[:, i + 2], skip, offset=s[4 + 3 * j])
            if after_block is not None:
                out, skip = after_block(j + 1, out, skip)
            i += 2
        return skip

    def style_layers(self) -> list[tuple[int, int]]:
        """(W+ entry, style width) of every modulated convolution, in the order `synthesis` applies them: the
        4-px conv, its toRGB, then per resolution the upsampling conv, the conv and the toRGB (which shares its
        entry with the next resolution's upsampling conv)."""
        out = [(0, self.conv1.conv.in_ch), (1, self.to_rgb1.conv.in_ch)]
        for j, to_rgb in enumerate(self.to_rgbs):
            i = 1 + 2 * j
            out += [(i, self.convs[2 * j].conv.in_ch), (i + 1, self.convs[2 * j + 1].conv.in_ch),
                    (i + 2, to_rgb.conv.in_ch)]
        return out

    def forward(self, z: Tensor, noise: list[Tensor | None] | None = None, truncation: float = 1.0,
                w_avg: Tensor | None = None) -> Tensor:
        w = self.mapping(z)
        if truncation != 1.0:
            if w_avg is None:
                raise ValueError("truncation needs the mean latent w_avg")
            w = w_avg + truncation * (w - w_avg)
        return self.synthesis(w, noise)

    def layer_widths(self) -> list[int]:
        """Input width of the modulated conv each W+ entry styles (for per-layer statistics)."""
        ch = self.cfg.channels
        widths = [ch[0], ch[0]]
        for c_in, c_out in zip(ch[:-1], ch[1:], strict=True):
            widths += [c_in, c_out]
        return widths


# ------------------------------------------------------------------------------- the GENERATOR value
class GanModel:
    """What travels on a GENERATOR socket: a generator (eval mode, no grad) and the centre of its W.

    `origin` says where it came from (a file, or an adaptation such as StyleGAN-NADA's) for messages.
    """

    kind = "generator"

    def __init__(self, net: Generator, w_avg: Tensor, origin: str = ""):
        self.net = net.eval().requires_grad_(False)
        self.w_avg = w_avg.detach().reshape(-1).to(next(net.parameters()).device)
        self.origin = origin

    @property
    def device(self) -> torch.device:
        return self.w_avg.device

    @property
    def image_size(self) -> int:
        return self.net.cfg.size

    @property
    def n_latent(self) -> int:
        return self.net.n_latent

    def to(self, device: torch.device | str) -> GanModel:
        self.net.to(device)
        self.w_avg = self.w_avg.to(device)
        return self

    @torch.no_grad()
    def render(self, latent: StyleLatent) -> Tensor:
        """The images a latent stands for, clamped to [-1, 1]."""
        return render_latent(self.net, latent.to(self.device)).clamp(-1, 1)


@dataclass(eq=False)
class StyleLatent:
    """What travels on a W_LATENT socket: W+ codes [B, n_latent, style_dim], the noise maps they are
    rendered with (one per styled conv, [B or 1, 1, r, r]; None = the generator's fixed maps) and, after an edit
    in S, offsets of the style vectors (`Generator.synthesis`'s `style_offsets`; None = none moved)."""

    w: Tensor
    noise: tuple[Tensor, ...] | None = None
    styles: tuple[Tensor | None, ...] | None = None

    @property
    def batch(self) -> int:
        return self.w.shape[0]

    def noise_on(self, device: torch.device) -> list[Tensor] | None:
        return None if self.noise is None else [n.to(device) for n in self.noise]

    def styles_on(self, device: torch.device) -> list[Tensor | None] | None:
        return None if self.styles is None else [None if s is None else s.to(device) for s in self.styles]

    def to(self, device: torch.device) -> StyleLatent:
        """This latent on `device`, W+ in fp32 (what the generator computes in); itself when it is so already."""
        tensors = [self.w, *(self.noise or ()), *(t for t in self.styles or () if t is not None)]
        if self.w.dtype == torch.float32 and all(t.device == torch.device(device) for t in tensors):
            return self
        noise = None if self.noise is None else tuple(self.noise_on(device))
        styles = None if self.styles is None else tuple(self.styles_on(device))
        return StyleLatent(self.w.to(device, torch.float32), noise, styles)

    def item(self, i: int) -> StyleLatent:
        """The i-th latent of the batch, with its noise and style offsets, as a batch of one."""
        def one(t: Tensor | None) -> Tensor | None:
            return t if t is None or t.shape[0] == 1 else t[i : i + 1]

        noise = None if self.noise is None else tuple(one(n) for n in self.noise)
        styles = None if self.styles is None else tuple(one(s) for s in self.styles)
        return StyleLatent(self.w[i : i + 1], noise, styles)

    def detached(self) -> StyleLatent:
        def copy(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.detach().clone()

        return StyleLatent(self.w.detach().clone(), None if self.noise is None else tuple(map(copy, self.noise)),
                           None if self.styles is None else tuple(map(copy, self.styles)))


def latent_noise(net: Generator, latent: StyleLatent, device: torch.device) -> list[Tensor]:
    """The noise maps a latent renders with: its own, or the generator's fixed maps where it has none."""
    return latent.noise_on(device) if latent.noise is not None else [n.to(device) for n in net.fixed_noise()]


def render_latent(net: Generator, latent: StyleLatent, after_block: BlockHook | None = None) -> Tensor:
    """Differentiable rendering of a latent (the generator's fixed noise where the latent has none)."""
    device = latent.w.device
    return net.synthesis(latent.w, latent_noise(net, latent, device), latent.styles_on(device), after_block)


def count_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
