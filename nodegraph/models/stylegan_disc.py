"""The StyleGAN2 residual discriminator, with rosinality's parameter names (so a reference train
checkpoint's `d` loads into it).

    image ─► 1×1 conv ─► ResBlock(↓2) ─► ... ─► 4×4 features ─► + minibatch-stddev channel ─► 3×3 conv
          ─► linear ─► linear ─► one logit per image

A ResBlock is conv3×3 then a blurred stride-2 conv3×3, plus a blurred stride-2 1×1 skip, summed and
scaled by 1/√2. Convolutions and linears use the equalised learning rate of the generator's module.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nodegraph.models.stylegan import Blur, EqualLinear, FusedLeakyReLU


@dataclass
class DiscriminatorConfig:
    size: int = 32
    # width at each resolution from size down to 4 (32, 16, 8, 4 for the defaults)
    channels: tuple[int, ...] = (32, 64, 128, 128)
    blur_kernel: tuple[int, ...] = (1, 3, 3, 1)
    stddev_group: int = 4

    def __post_init__(self) -> None:
        self.channels = tuple(self.channels)
        self.blur_kernel = tuple(self.blur_kernel)
        n = int(round(math.log2(self.size))) - 1
        if 2 ** (n + 1) != self.size or len(self.channels) != n:
            raise ValueError(f"channels needs one width per resolution {self.size}..4 ({n}), got {len(self.channels)}")

    def to_dict(self) -> dict:
        return asdict(self)


class EqualConv2d(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        self.scale = 1 / math.sqrt(in_ch * kernel_size**2)
        self.stride, self.padding = stride, padding

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)


class ConvLayer(nn.Sequential):
    """[blur] conv [bias + leaky ReLU]: a Sequential so its parameters are numbered as the reference's."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, downsample: bool = False,
                 blur_kernel: tuple[int, ...] = (1, 3, 3, 1), bias: bool = True, activate: bool = True):
        layers: list[nn.Module] = []
        if downsample:
            p = (len(blur_kernel) - 2) + (kernel_size - 1)
            layers.append(Blur(blur_kernel, ((p + 1) // 2, p // 2)))
            stride, padding = 2, 0
        else:
            stride, padding = 1, kernel_size // 2
        layers.append(EqualConv2d(in_ch, out_ch, kernel_size, stride, padding, bias=bias and not activate))
        if activate:
            layers.append(FusedLeakyReLU(out_ch))
        super().__init__(*layers)


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, blur_kernel: tuple[int, ...]):
        super().__init__()
        self.conv1 = ConvLayer(in_ch, in_ch, 3, blur_kernel=blur_kernel)
        self.conv2 = ConvLayer(in_ch, out_ch, 3, downsample=True, blur_kernel=blur_kernel)
        self.skip = ConvLayer(in_ch, out_ch, 1, downsample=True, blur_kernel=blur_kernel, bias=False, activate=False)

    def forward(self, x: Tensor) -> Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2)


class Discriminator(nn.Module):
    def __init__(self, cfg: DiscriminatorConfig):
        super().__init__()
        self.cfg = cfg
        ch, k = cfg.channels, cfg.blur_kernel
        blocks: list[nn.Module] = [ConvLayer(3, ch[0], 1)]
        blocks += [ResBlock(c_in, c_out, k) for c_in, c_out in zip(ch[:-1], ch[1:], strict=True)]
        self.convs = nn.Sequential(*blocks)
        self.final_conv = ConvLayer(ch[-1] + 1, ch[-1], 3)
        self.final_linear = nn.Sequential(EqualLinear(ch[-1] * 16, ch[-1], activation=True),
                                          EqualLinear(ch[-1], 1))

    def forward(self, x: Tensor) -> Tensor:
        out = self.convs(x)
        b, c, h, w = out.shape
        # minibatch standard deviation: how varied the group is, so a collapsed generator is visible
        group = min(b, self.cfg.stddev_group)
        if b % group:
            group = 1
        std = out.view(group, -1, 1, c, h, w)
        std = torch.sqrt(std.var(0, unbiased=False) + 1e-8).mean([2, 3, 4], keepdim=True).squeeze(2)
        out = torch.cat([out, std.repeat(group, 1, h, w)], 1)
        return self.final_linear(self.final_conv(out).view(b, -1))
