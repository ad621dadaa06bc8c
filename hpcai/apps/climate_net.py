"""The climate SR restoration network: a U-Net on the lat-lon grid (periodic in longitude, mirrored at the
poles) and the helpers that feed it (position channels, area weights) and apply it."""
from __future__ import annotations

import numpy as np

from .. import backend, nn, ops
from ..autograd import Tensor, no_grad


class SphereConv2d(nn.Module):
    """3x3 convolution on a lat-lon grid: periodic in longitude, mirrored at the poles."""

    def __init__(self, cin: int, cout: int, rng, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=0, rng=rng)

    def forward(self, x):
        x = ops.pad(x, ((0, 0), (0, 0), (0, 0), (1, 1)), mode="circular")
        return self.conv(ops.pad(x, ((0, 0), (0, 0), (1, 1), (0, 0)), mode="reflect"))


class Restorer(nn.Module):
    """U-Net over 3 resolutions (c, 2c, 4c channels; stride-2 down, sub-pixel up, skip concatenation).

    Maps (compressed field, position channels) to the correction added to the compressed field. The
    truncated DCT keeps only large scales, so most of the work is done at 1/4 resolution, where a 3x3
    kernel spans 12 grid points; the full-resolution levels put back the sharp fronts. 125k parameters at
    ``channels=12`` (250 kB in float16).
    """

    def __init__(self, channels: int = 12, blocks: int = 1, in_channels: int = 4, seed: int = 0):
        super().__init__()
        rng = np.random.default_rng(seed)
        c1, c2, c3 = channels, 2 * channels, 4 * channels
        self.enc1, self.down1 = SphereConv2d(in_channels, c1, rng), SphereConv2d(c1, c2, rng, stride=2)
        self.enc2, self.down2 = SphereConv2d(c2, c2, rng), SphereConv2d(c2, c3, rng, stride=2)
        self.body = nn.Sequential(*[SphereConv2d(c3, c3, rng) for _ in range(2 * blocks)])
        self.up2, self.dec2 = SphereConv2d(c3, 4 * c2, rng), SphereConv2d(2 * c2, c2, rng)
        self.up1, self.dec1 = SphereConv2d(c2, 4 * c1, rng), SphereConv2d(2 * c1, c1, rng)
        self.out = SphereConv2d(c1, 1, rng)
        self.out.conv.weight.data *= 0.1  # start close to the identity map (restored = compressed)

    def forward(self, x):
        relu = ops.relu
        h1 = relu(self.enc1(x))
        h2 = relu(self.enc2(relu(self.down1(h1))))
        h = relu(self.down2(h2))
        layers = list(self.body)
        for a, b in zip(layers[::2], layers[1::2]):
            h = relu(h + b(relu(a(h))))
        g = relu(self.dec2(ops.concatenate(relu(ops.pixel_shuffle(self.up2(h), 2)), h2, axis=1)))
        g = relu(self.dec1(ops.concatenate(relu(ops.pixel_shuffle(self.up1(g), 2)), h1, axis=1)))
        return self.out(g)


def position_channels(lat, lon):
    """sin(lat), cos(lon), sin(lon) on the grid: lets the network learn where the codec errs (edges, poles)."""
    la, lo = np.meshgrid(np.radians(lat), np.radians(lon), indexing="ij")
    return np.stack([np.sin(la), np.cos(lo), np.sin(lo)]).astype(np.float32)


def area_weights(lat):
    """cos(latitude) normalised to mean 1, shape (nlat, 1): the weights of every L2 norm here."""
    w = np.cos(np.radians(np.asarray(lat, float)))
    return (w / w.mean())[:, None]


def restore(model, policy, norm, pos, compressed):
    """compressed + residual scale * network(normalised compressed, positions), in float64."""
    mean, xscale, yscale = norm
    x = np.concatenate([((compressed - mean) / xscale)[None].astype(np.float32), pos])[None]
    model.eval()
    with no_grad(), policy.autocast():
        out = model(Tensor(x)).numpy()[0, 0]
    model.train()
    return compressed + yscale * backend.to_host(out).astype(np.float64)
