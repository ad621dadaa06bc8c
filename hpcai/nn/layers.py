"""Layers: each a Module holding its parameters and calling one registered op in ``forward``.

Weights use PyTorch's layouts (Linear (out, in); Conv2d (out, in/groups, kh, kw)), so weights move
between the two frameworks unchanged. Initialisation draws from ``rng`` (a Generator or an int seed).
"""
from __future__ import annotations

import numpy as np

from .. import checks, ops
from ..ops.common import expect_ndim
from . import init as _init
from .module import Module, Parameter


MAX_WEIGHT_ELEMENTS = 2**31  # 8 GB of float32 in one weight: past this a size is a typo, not a model


def _positive(v, name):
    return checks.integer(name, v, 1)


def _weight_shape(shape: tuple, names: str) -> tuple:
    """``shape`` if a weight of that shape is of a size a layer can hold, else a ValueError naming ``names``."""
    if np.prod(shape, dtype=object) > MAX_WEIGHT_ELEMENTS:
        raise ValueError(f"{names}: a weight of shape {shape} has more than {MAX_WEIGHT_ELEMENTS:,} elements")
    return shape


class Linear(Module):
    """y = x W^T + b over the last axis of x."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init="glorot_uniform",
                 rng=None, dtype=np.float32):
        super().__init__()
        self.in_features, self.out_features = _positive(in_features, "in_features"), _positive(out_features,
                                                                                              "out_features")
        rng = _init.generator(rng)
        shape = _weight_shape((out_features, in_features), "in_features, out_features")
        self.weight = Parameter(_init.initialize(init, shape, rng, dtype))
        self.bias = Parameter(np.zeros(out_features, dtype)) if checks.flag("bias", bias) else None

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
        self.kernel_size, self.stride = checks.pair("kernel_size", kernel_size), checks.pair("stride", stride)
        self.dilation = checks.pair("dilation", dilation)
        self.padding = checks.choice("padding", padding, ("same", "valid")) if isinstance(padding, str) else \
            checks.pair("padding", padding, 0)
        reach = tuple(d * (k - 1) for d, k in zip(self.dilation, self.kernel_size))
        if not isinstance(self.padding, str) and any(p > r for p, r in zip(self.padding, reach)):
            raise ValueError(f"padding: expected at most dilation * (kernel_size - 1) = {reach} (more only adds "
                             f"borders of zeros), got {self.padding}")
        shape = _weight_shape(((in_channels, out_channels // groups) if transposed else
                               (out_channels, in_channels // groups)) + self.kernel_size,
                              "in_channels, out_channels, kernel_size")
        rng = _init.generator(rng)
        self.weight = Parameter(_init.initialize(init, shape, rng, dtype))
        self.bias = Parameter(np.zeros(out_channels, dtype)) if checks.flag("bias", bias) else None

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
        self.output_padding = checks.pair("output_padding", output_padding, 0)
        if any(o >= max(s, d) for o, s, d in zip(self.output_padding, self.stride, self.dilation)):
            raise ValueError(f"output_padding: expected less than stride or dilation, got {self.output_padding}")

    def forward(self, x):
        return ops.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding, self.output_padding,
                                    self.dilation, self.groups)


class MaxPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size = checks.pair("kernel_size", kernel_size)
        self.stride = self.kernel_size if stride is None else checks.pair("stride", stride)
        self.padding = checks.pair("padding", padding, 0)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"padding: expected at most half the kernel size {self.kernel_size}, got {self.padding}")

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
                 track_running_stats: bool = True, activation: str | None = None, dtype=np.float32):
        super().__init__()
        self.num_features = _positive(num_features, "num_features")
        self.activation = checks.choice("activation", activation, (None, "relu"))
        self.eps = checks.number("eps", eps, 0, 1, low_open=True)
        self.momentum, dtype = checks.number("momentum", momentum, 0, 1), _init.float_dtype(dtype)
        affine = checks.flag("affine", affine)
        track_running_stats = checks.flag("track_running_stats", track_running_stats)
        self.weight = Parameter(np.ones(num_features, dtype)) if affine else None
        self.bias = Parameter(np.zeros(num_features, dtype)) if affine else None
        self.register_buffer("running_mean", np.zeros(num_features, dtype) if track_running_stats else None)
        self.register_buffer("running_var", np.ones(num_features, dtype) if track_running_stats else None)

    def forward(self, x, residual=None):
        """The normalised x; with ``activation="relu"``, relu(that + ``residual``) (None adds nothing), which the
        CPU computes in batch norm's own passes: a residual block's end, one op instead of three."""
        if x.ndim not in self.ndim or x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}: x must be {' or '.join(f'{n}-d' for n in self.ndim)} with "
                             f"{self.num_features} channels on axis 1, got shape {tuple(x.shape)}")
        use_batch = self.training or self.running_mean is None
        return ops.batch_norm(x, self.weight, self.bias, self.running_mean, self.running_var,
                              training=use_batch, momentum=self.momentum, eps=self.eps, residual=residual,
                              activation=self.activation)

    def extra_repr(self):
        act = f", activation={self.activation!r}" if self.activation else ""
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}{act}"


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
        shape = (normalized_shape,) if isinstance(normalized_shape, (int, np.integer)) else \
            tuple(normalized_shape) if isinstance(normalized_shape, (tuple, list)) else normalized_shape
        if not isinstance(shape, tuple) or not shape:
            raise ValueError(f"normalized_shape: expected an int or a tuple of them, got {normalized_shape!r}")
        self.normalized_shape = tuple(_positive(n, "normalized_shape") for n in shape)
        self.eps, dtype = checks.number("eps", eps, 0, 1, low_open=True), _init.float_dtype(dtype)
        self.weight = Parameter(np.ones(self.normalized_shape, dtype)) if checks.flag("elementwise_affine",
                                                                                       elementwise_affine) else None
        self.bias = Parameter(np.zeros(self.normalized_shape, dtype)) if elementwise_affine else None

    def forward(self, x):
        return ops.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class Dropout(Module):
    """Zero each element with probability ``p`` while training (scaled by 1/(1-p)); identity in eval."""

    def __init__(self, p: float = 0.5, rng=None):
        super().__init__()
        self.p, self.rng = checks.number("p", p, 0, 1, high_open=True), _init.generator(rng)

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
        self.approximate = checks.choice("approximate", approximate, ("none", "tanh"))

    def forward(self, x):
        return ops.gelu(x, self.approximate)


class Softplus(Module):
    """log(1 + exp(beta x)) / beta, linear where beta x > threshold; beta in (0, 1e6], threshold in (0, 80]
    (exp of more overflows float32)."""

    def __init__(self, beta: float = 1.0, threshold: float = 20.0):
        super().__init__()
        self.beta = checks.number("beta", beta, 0, 1e6, low_open=True)
        self.threshold = checks.number("threshold", threshold, 0, 80, low_open=True)

    def forward(self, x):
        return ops.softplus(x, self.beta, self.threshold)


class LeakyReLU(Module):
    def __init__(self, slope: float = 0.01):
        super().__init__()
        self.slope = checks.number("slope", slope, -1e3, 1e3)

    def forward(self, x):
        return ops.leaky_relu(x, self.slope)


class ViewAverage(Module):
    """(N, V, ...) -> the mean over the V views of ``trunk``'s output for each view: one network shared by the
    views, each view a sample of one channel, (N·V, 1, ...), for the trunk (ORNL's CBED baseline reads a crystal's
    three zone-axis patterns this way and averages the logits)."""

    def __init__(self, trunk: Module, views: int):
        super().__init__()
        if not isinstance(trunk, Module):
            raise TypeError(f"trunk: expected an hpcai nn.Module, got {type(trunk).__name__}")
        self.trunk, self.views = trunk, checks.integer("views", views, 1)

    def forward(self, x):
        if x.ndim < 2 or x.shape[1] != self.views:
            raise ValueError(f"ViewAverage: x must have the {self.views} views on its axis 1, (N, {self.views}, "
                             f"...), got shape {tuple(x.shape)}")
        n, rest = x.shape[0], tuple(x.shape[2:])
        out = self.trunk(ops.reshape(x, (n * self.views, 1) + rest))
        return ops.mean(ops.reshape(out, (n, self.views) + tuple(out.shape[1:])), axis=1)


class ResidualBlock(Module):
    """relu(x + body(x)), body = conv-BN-ReLU-conv-BN (He et al. 2016), a 1x1 projection of x when shapes
    change. Each batch norm carries the ReLU after it, the second the shortcut's sum too (one op each,
    ``BatchNorm2d(activation="relu")``).

    ``padding_mode="circular"`` pads periodically (e.g. in longitude for global fields).
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, kernel_size: int = 3, stride: int = 1,
                 batch_norm: bool = True, padding_mode: str = "zeros", rng=None, dtype=np.float32):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        rng = _init.generator(rng)
        checks.choice("padding_mode", padding_mode, ("zeros", "circular"))
        kernel_size, batch_norm = _positive(kernel_size, "kernel_size"), checks.flag("batch_norm", batch_norm)
        self.pad, self.padding_mode = kernel_size // 2, padding_mode
        conv_pad = self.pad if padding_mode == "zeros" else 0
        self.conv1 = Conv2d(in_channels, out_channels, kernel_size, stride, conv_pad, bias=not batch_norm,
                            rng=rng, dtype=dtype)
        self.bn1 = BatchNorm2d(out_channels, activation="relu", dtype=dtype) if batch_norm else Identity()
        self.conv2 = Conv2d(out_channels, out_channels, kernel_size, 1, conv_pad, bias=not batch_norm, rng=rng,
                            dtype=dtype)
        self.bn2 = BatchNorm2d(out_channels, activation="relu", dtype=dtype) if batch_norm else Identity()
        needs_projection = stride != 1 or in_channels != out_channels
        self.shortcut = Conv2d(in_channels, out_channels, 1, stride, bias=False, rng=rng, dtype=dtype) \
            if needs_projection else Identity()

    def _padded(self, x):
        if self.padding_mode == "zeros":
            return x
        return ops.pad(x, ((0, 0), (0, 0), (self.pad, self.pad), (self.pad, self.pad)), mode="circular")

    def forward(self, x):
        if isinstance(self.bn1, Identity):
            h = ops.relu(self.conv1(self._padded(x)))
            return ops.relu(self.conv2(self._padded(h)) + self.shortcut(x))
        h = self.bn1(self.conv1(self._padded(x)))                   # batch norm and ReLU fused
        return self.bn2(self.conv2(self._padded(h)), residual=self.shortcut(x))
