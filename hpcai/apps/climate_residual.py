"""Residual learning on top of an error-bounded codec (NeurLZ-style), with the codec's bound kept point-wise.

An error-bounded codec (SZ3) with absolute bound ``eb`` leaves a residual ``original - decompressed`` in
[-eb, eb] that is not white: where the quantisation code is zero it is the predictor's interpolation error,
which follows the decompressed field's curvature. A small convolutional network, trained on (decompressed,
original) pairs while the simulation runs, predicts it (Han et al. 2024, "NeurLZ", arXiv 2409.05785). The
restored field is clamped to [decompressed - eb, decompressed + eb] (the original lies there, so this never
adds error and costs nothing), and where a user bound ``E`` must hold the points beyond it are stored as
corrections (:func:`hpcai.sim.compression.guard`), so ``|restored - original| <= E`` at every point.

The network sees the field with a halo (periodic in longitude, mirrored at the poles) and uses unpadded
("valid") 3x3 convolutions, so it trains on random crops and restores a whole field with the same
numbers. Its weights are stored in float16 and counted with the data.
"""
from __future__ import annotations

import math
import time

import numpy as np

from .. import checks, nn, ops, optim
from ..autograd import Tensor, no_grad
from ..sim import compression as _codec
from ..train import TrainStep


class ResidualNet(nn.Module):
    """``layers`` valid 3x3 convolutions (ReLU between): (n, 2, H + 2L, W + 2L) -> (n, 1, H, W).

    Input channels: the decompressed field over its scale, and sin(latitude); output: the residual over the
    codec's bound. ``channels=16, layers=4`` has 5.1k parameters (10.2 kB in float16), ``layers=5`` 7.4k.
    """

    def __init__(self, channels: int = 16, layers: int = 4, seed: int = 0):
        super().__init__()
        rng = np.random.default_rng(seed)
        widths = [2] + [channels] * (layers - 1) + [1]
        self.convs = nn.Sequential(*[nn.Conv2d(a, b, 3, rng=rng) for a, b in zip(widths[:-1], widths[1:])])
        self.convs[-1].weight.data *= 0.1  # start near "no correction"
        self.halo = layers

    def forward(self, x):
        layers = list(self.convs)
        for conv in layers[:-1]:
            x = ops.relu(conv(x))
        return layers[-1](x)


def sphere_pad(a, halo: int):
    """``a`` (..., nlat, nlon) with ``halo`` points added: periodic in longitude, mirrored across the poles."""
    a = np.concatenate([a[..., -halo:], a, a[..., :halo]], axis=-1)
    return np.concatenate([a[..., halo:0:-1, :], a, a[..., -2:-halo - 2:-1, :]], axis=-2)


class ResidualLearner:
    """Keeps (decompressed, original) pairs and fits a :class:`ResidualNet` to their residuals on random crops.

    ``bound``: an error-bounded codec's absolute bound (the residual's scale, and the clamp); None for a
    codec without one (the block DCT): the scale is then the first residual's RMS, and nothing is clamped.
    Adam with a constant learning rate while pairs arrive; :meth:`train` with ``final`` decays it by a
    cosine to lr/100.
    """

    def __init__(self, lat, bound: float | None = None, channels: int = 16, layers: int = 4, lr: float = 3e-3,
                 crop: int = 48, batch: int = 8, seed: int = 0):
        self.bound = None if bound is None else checks.number("bound", bound, 0, low_open=True)
        self.residual_scale = self.bound
        self.crop = checks.integer("crop", crop, 8)
        self.batch = checks.integer("batch", batch, 1)
        self.lr = checks.number("lr", lr, 0, low_open=True)
        self.model = ResidualNet(checks.integer("channels", channels, 1), checks.integer("layers", layers, 2), seed)
        self.halo = self.model.halo
        self.opt = optim.get_optimizer("adam", self.model.parameters(), lr=self.lr)
        self.step = TrainStep(self.model, ops.mse_loss, self.opt, where="residual learner")
        self.sinlat = np.sin(np.radians(np.asarray(lat, float)))
        self.rng = np.random.default_rng(seed)
        self.scale, self.inputs, self.targets, self.losses, self.seconds = None, [], [], [], 0.0

    def _input(self, decompressed):
        lat = np.broadcast_to(self.sinlat[:, None], decompressed.shape)
        return sphere_pad(np.stack([decompressed / self.scale, lat]).astype(np.float32), self.halo)

    def add(self, decompressed, original) -> None:
        """One training pair (float64 fields on the grid)."""
        if self.scale is None:
            self.scale = float(np.sqrt((original ** 2).mean())) or 1.0
        if self.residual_scale is None:
            self.residual_scale = float(np.sqrt(((original - decompressed) ** 2).mean())) or 1.0
        self.inputs.append(self._input(decompressed))
        self.targets.append(((original - decompressed) / self.residual_scale).astype(np.float32))

    def train(self, iterations: int, final: bool = False) -> None:
        """``iterations`` Adam steps on minibatches of random crops of random pairs."""
        if not self.inputs:
            return
        start, h, c = time.perf_counter(), self.halo, self.crop
        ny, nx = self.targets[0].shape
        for i in range(iterations):
            if final:
                for group in self.opt.param_groups:
                    group["lr"] = self.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * i / iterations)))
            k = self.rng.integers(0, len(self.inputs), self.batch)
            y0, x0 = self.rng.integers(0, ny - c + 1, self.batch), self.rng.integers(0, nx - c + 1, self.batch)
            x = np.stack([self.inputs[j][:, a:a + c + 2 * h, b:b + c + 2 * h] for j, a, b in zip(k, y0, x0)])
            y = np.stack([self.targets[j][None, a:a + c, b:b + c] for j, a, b in zip(k, y0, x0)])
            self.losses.append(self.step(x, y, f"iteration {i + 1}").loss)
        self.seconds += time.perf_counter() - start

    def round_weights(self) -> dict:
        """Round the weights to float16, the format they are stored in; returns the stored state."""
        for p in self.model.parameters():
            p.data[...] = p.data.astype(np.float16).astype(p.data.dtype)
        return {k: v.astype(np.float16) for k, v in self.model.state_dict().items()}

    def restore(self, decompressed):
        """decompressed + scale * network, clamped to the codec's band [decompressed -+ bound] if it has one."""
        self.model.eval()
        with no_grad():
            out = self.model(Tensor(self._input(decompressed)[None])).numpy()[0, 0]
        self.model.train()
        restored = decompressed + self.residual_scale * out.astype(np.float64)
        return restored if self.bound is None else _codec.clamp(restored, decompressed, self.bound)


def state_nbytes(state: dict) -> int:
    """Bytes of stored weights."""
    return int(sum(a.nbytes for a in state.values()))
