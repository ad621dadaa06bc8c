"""Layers: each a Module holding its parameters and calling one registered op in ``forward``.

Weights use PyTorch's layouts (Linear (out, in); Conv2d (out, in/groups, kh, kw)), so weights move
between the two frameworks unchanged. Initialisation draws from ``rng`` (a Generator or an int seed).
"""
from __future__ import annotations

import numpy as np

from .. import ops
from ..ops.common import expect_ndim
from . import init as _init
from .module import Module, Parameter


def _pair(v, name):
    pair = (v, v) if isinstance(v, (int, np.integer)) else tuple(v)
    if len(pair) != 2 or any(not isinstance(n, (int, np.integer)) or n < 1 for n in pair):
        raise ValueError(f"{name}: expected a positive int or a pair of them, got {v!r}")
    return tuple(int(n) for n in pair)


def _positive(v, name):
    if not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name}: expected a positive integer, got {v!r}")
    return int(v)


class Linear(Module):
    """y = x W^T + b over the last axis of x."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init="glorot_uniform",
                 rng=None, dtype=np.float32):
        super().__init__()
        self.in_features, self.out_features = _positive(in_features, "in_features"), _positive(out_features,
                                                                                              "out_features")
        rng = _init.generator(rng)
        self.weight = Parameter(_init.initialize(init, (out_features, in_features), rng, dtype))
        self.bias = Parameter(np.zeros(out_features, dtype)) if bias else None

    def forward(self, x):
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"Linear: x must end in {self.in_features} features, got shape {tuple(x.shape)}")
        return ops.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


class _ConvNd(Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, init,
                 rng, dtype, transposed):
        super().__init__()
        self.in_channels, self.out_channels = _positive(in_channels, "in_channels"), _positive(out_channels,
                                                                                              "out_channels")
        self.groups = _positive(groups, "groups")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups: in_channels ({in_channels}) and out_channels ({out_channels}) must both "
                             f"be divisible by groups ({groups})")
        self.kernel_size, self.stride = _pair(kernel_size, "kernel_size"), _pair(stride, "stride")
        self.dilation = _pair(dilation, "dilation")
        self.padding = padding if isinstance(padding, str) else tuple(
            (padding, padding) if isinstance(padding, (int, np.integer)) else padding)
        shape = ((in_channels, out_channels // groups) if transposed else
                 (out_channels, in_channels // groups)) + self.kernel_size
        rng = _init.generator(rng)
        self.weight = Parameter(_init.initialize(init, shape, rng, dtype))
        self.bias = Parameter(np.zeros(out_channels, dtype)) if bias else None

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}")


class Conv2d(_ConvNd):
    """2-d convolution over (N, C, H, W) input (cross-correlation, as in every framework)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, init="he_uniform", rng=None, dtype=np.float32):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, init,
                         rng, dtype, transposed=False)

    def forward(self, x):
        return ops.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class ConvTranspose2d(_ConvNd):
    """The adjoint of Conv2d: upsamples (N, C_in, H, W) by ``stride``."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0,
                 dilation=1, groups=1, bias=True, init="he_uniform", rng=None, dtype=np.float32):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, init,
                         rng, dtype, transposed=True)
        self.output_padding = output_padding

    def forward(self, x):
        return ops.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding, self.output_padding,
                                    self.dilation, self.groups)


class MaxPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x):
        return ops.max_pool2d(x, self.kernel_size, self.stride, self.padding)


class AvgPool2d(MaxPool2d):
    def forward(self, x):
        return ops.avg_pool2d(x, self.kernel_size, self.stride, self.padding)


class GlobalAvgPool2d(Module):
    """(N, C, H, W) -> (N, C): the mean over each feature map."""

    def forward(self, x):
        expect_ndim(x, 4, "x", "GlobalAvgPool2d", "N, C, H, W")
        return ops.mean(x, axis=(2, 3))


class _BatchNorm(Module):
    ndim = None

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True,
                 track_running_stats: bool = True, dtype=np.float32):
        super().__init__()
        self.num_features, self.eps, self.momentum = _positive(num_features, "num_features"), eps, momentum
        self.weight = Parameter(np.ones(num_features, dtype)) if affine else None
        self.bias = Parameter(np.zeros(num_features, dtype)) if affine else None
        self.register_buffer("running_mean", np.zeros(num_features, dtype) if track_running_stats else None)
        self.register_buffer("running_var", np.ones(num_features, dtype) if track_running_stats else None)

    def forward(self, x):
        if x.ndim not in self.ndim or x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}: x must be {' or '.join(f'{n}-d' for n in self.ndim)} with "
                             f"{self.num_features} channels on axis 1, got shape {tuple(x.shape)}")
        use_batch = self.training or self.running_mean is None
        return ops.batch_norm(x, self.weight, self.bias, self.running_mean, self.running_var,
                              training=use_batch, momentum=self.momentum, eps=self.eps)

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of (N, C) or (N, C, L) input (Ioffe & Szegedy 2015)."""

    ndim = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of (N, C, H, W) input, per channel."""

    ndim = (4,)


class LayerNorm(Module):
    """Normalise over the trailing ``normalized_shape`` axes (Ba et al. 2016)."""

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, dtype=np.float32):
        super().__init__()
        self.normalized_shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.eps = eps
        self.weight = Parameter(np.ones(self.normalized_shape, dtype)) if elementwise_affine else None
        self.bias = Parameter(np.zeros(self.normalized_shape, dtype)) if elementwise_affine else None

    def forward(self, x):
        return ops.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class Dropout(Module):
    """Zero each element with probability ``p`` while training (scaled by 1/(1-p)); identity in eval."""

    def __init__(self, p: float = 0.5, rng=None):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"p: expected a probability in [0, 1), got {p!r}")
        self.p, self.rng = float(p), _init.generator(rng)

    def forward(self, x):
        return ops.dropout(x, self.p, training=self.training, generator=self.rng)


class Flatten(Module):
    """(N, ...) -> (N, prod(...))."""

    def forward(self, x):
        return ops.reshape(x, (x.shape[0], -1))


class Identity(Module):
    def forward(self, x):
        return x


class PixelShuffle(Module):
    """(N, C r^2, H, W) -> (N, C, H r, W r): sub-pixel upsampling (Shi et al. 2016)."""

    def __init__(self, upscale_factor: int):
        super().__init__()
        self.upscale_factor = _positive(upscale_factor, "upscale_factor")

    def forward(self, x):
        return ops.pixel_shuffle(x, self.upscale_factor)


class ReLU(Module):
    def forward(self, x):
        return ops.relu(x)


class Tanh(Module):
    def forward(self, x):
        return ops.tanh(x)


class Sigmoid(Module):
    def forward(self, x):
        return ops.sigmoid(x)


class GELU(Module):
    def __init__(self, approximate: str = "none"):
        super().__init__()
        self.approximate = approximate

    def forward(self, x):
        return ops.gelu(x, self.approximate)


class Softplus(Module):
    def __init__(self, beta: float = 1.0, threshold: float = 20.0):
        super().__init__()
        self.beta, self.threshold = beta, threshold

    def forward(self, x):
        return ops.softplus(x, self.beta, self.threshold)


class LeakyReLU(Module):
    def __init__(self, slope: float = 0.01):
        super().__init__()
        self.slope = slope

    def forward(self, x):
        return ops.leaky_relu(x, self.slope)


class ResidualBlock(Module):
    """x + body(x), body = conv-BN-ReLU-conv-BN (He et al. 2016), a 1x1 projection when shapes change.

    ``padding_mode="circular"`` pads periodically (e.g. in longitude for global fields).
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, kernel_size: int = 3, stride: int = 1,
                 batch_norm: bool = True, padding_mode: str = "zeros", rng=None, dtype=np.float32):
        super().__init__()
        out_channels = out_channels or in_channels
        rng = _init.generator(rng)
        if padding_mode not in ("zeros", "circular"):
            raise ValueError(f"padding_mode: expected 'zeros' or 'circular', got {padding_mode!r}")
        self.pad, self.padding_mode = kernel_size // 2, padding_mode
        conv_pad = self.pad if padding_mode == "zeros" else 0
        self.conv1 = Conv2d(in_channels, out_channels, kernel_size, stride, conv_pad, bias=not batch_norm,
                            rng=rng, dtype=dtype)
        self.bn1 = BatchNorm2d(out_channels, dtype=dtype) if batch_norm else Identity()
        self.conv2 = Conv2d(out_channels, out_channels, kernel_size, 1, conv_pad, bias=not batch_norm, rng=rng,
                            dtype=dtype)
        self.bn2 = BatchNorm2d(out_channels, dtype=dtype) if batch_norm else Identity()
        needs_projection = stride != 1 or in_channels != out_channels
        self.shortcut = Conv2d(in_channels, out_channels, 1, stride, bias=False, rng=rng, dtype=dtype) \
            if needs_projection else Identity()

    def _padded(self, x):
        if self.padding_mode == "zeros":
            return x
        return ops.pad(x, ((0, 0), (0, 0), (self.pad, self.pad), (self.pad, self.pad)), mode="circular")

    def forward(self, x):
        h = ops.relu(self.bn1(self.conv1(self._padded(x))))
        h = self.bn2(self.conv2(self._padded(h)))
        return ops.relu(h + self.shortcut(x))
