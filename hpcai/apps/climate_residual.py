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

from .. import amp, backend, checks, nn, ops, optim
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
                 crop: int = 48, batch: int = 8, seed: int = 0, optimizer: str = "adam", precision: str = "fp32",
                 comm=None, rng_seed: int | None = None):
        self.bound = None if bound is None else checks.number("bound", bound, 0, low_open=True)
        self.residual_scale = self.bound
        self.crop = checks.integer("crop", crop, 8)
        self.batch = checks.integer("batch", batch, 1)
        self.lr = checks.number("lr", lr, 0, low_open=True)
        self.model = ResidualNet(checks.integer("channels", channels, 1), checks.integer("layers", layers, 2), seed)
        self.halo = self.model.halo
        self.policy = amp.get_policy(precision)
        self.policy.prepare(self.model)
        self.opt = optim.get_optimizer(optimizer, self.model.parameters(), lr=self.lr)
        if comm is not None:  # data parallel: the same initial weights, gradients averaged over the ranks
            from ..parallel.data_parallel import DistributedOptimizer, broadcast_parameters
            broadcast_parameters(self.model, 0, comm)
            self.opt = DistributedOptimizer(self.opt, comm=comm)
        self.step = TrainStep(self.model, ops.mse_loss, self.opt, self.policy, where="residual learner")
        self.sinlat = np.sin(np.radians(np.asarray(lat, float)))
        self.rng = np.random.default_rng(seed if rng_seed is None else rng_seed)
        self.scale, self.inputs, self.targets, self.losses, self.seconds = None, [], [], [], 0.0

    def _input(self, decompressed):
        lat = np.broadcast_to(self.sinlat[:, None], decompressed.shape)
        return sphere_pad(np.stack([decompressed / self.scale, lat]).astype(np.float32), self.halo)

    def add(self, decompressed, original, residual_scale: float | None = None) -> None:
        """One training pair (float64 fields on the grid); ``residual_scale``: this pair's residual unit (the
        codec's quantiser step or bound, known to the decoder), else the learner's own."""
        if self.scale is None:
            self.scale = float(np.sqrt((original ** 2).mean())) or 1.0
        if self.residual_scale is None:
            self.residual_scale = float(np.sqrt(((original - decompressed) ** 2).mean())) or 1.0
        self.inputs.append(self._input(decompressed))
        unit = residual_scale if residual_scale and np.isfinite(residual_scale) else self.residual_scale
        self.targets.append(((original - decompressed) / unit).astype(np.float32))

    def train(self, iterations: int, final: bool = False, each=None) -> None:
        """``iterations`` optimizer steps on minibatches of random crops of random pairs; ``each(i, loss)`` is
        called after every step (progress reports)."""
        if not self.inputs:
            return
        start, h = time.perf_counter(), self.halo
        ny, nx = self.targets[0].shape
        c = min(self.crop, ny, nx)
        for i in range(iterations):
            if final:
                for group in self.opt.param_groups:
                    group["lr"] = self.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * i / iterations)))
            k = self.rng.integers(0, len(self.inputs), self.batch)
            y0, x0 = self.rng.integers(0, ny - c + 1, self.batch), self.rng.integers(0, nx - c + 1, self.batch)
            x = np.stack([self.inputs[j][:, a:a + c + 2 * h, b:b + c + 2 * h] for j, a, b in zip(k, y0, x0)])
            y = np.stack([self.targets[j][None, a:a + c, b:b + c] for j, a, b in zip(k, y0, x0)])
            result = self.step(x, y, f"iteration {i + 1}")
            if result.out is not None:  # None: an fp16 step the loss scaler skipped
                self.losses.append(result.loss)
            if each is not None:
                each(i, result.loss)
        self.seconds += time.perf_counter() - start

    def round_weights(self) -> dict:
        """Round the weights to float16, the format they are stored in; returns the stored state."""
        for p in self.model.parameters():
            p.data[...] = p.data.astype(np.float16).astype(p.data.dtype)
        return {k: v.astype(np.float16) for k, v in self.model.state_dict().items()}

    def restore(self, decompressed, residual_scale: float | None = None):
        """decompressed + residual scale * network, clamped to the codec's band [decompressed -+ bound] if it
        has one; ``residual_scale`` as given to :meth:`add` for this step."""
        unit = residual_scale if residual_scale and np.isfinite(residual_scale) else self.residual_scale
        restored = restore(self.model, decompressed, self.scale, unit, self.sinlat, self.policy)
        return restored if self.bound is None else _codec.clamp(restored, decompressed, self.bound)


def restore(model, decompressed, scale: float, residual_scale: float, sinlat, policy=None):
    """``decompressed + residual_scale * model(decompressed / scale, sin(latitude))`` in float64: what
    :meth:`ResidualLearner.restore` does, from stored weights and scales alone (the file's reader)."""
    lat = np.broadcast_to(np.asarray(sinlat, float)[:, None], decompressed.shape)
    x = sphere_pad(np.stack([decompressed / scale, lat]).astype(np.float32), model.halo)[None]
    policy = policy or amp.get_policy("fp32")
    model.eval()
    with no_grad(), policy.autocast():
        out = model(Tensor(x)).numpy()[0, 0]
    model.train()
    return decompressed + residual_scale * backend.to_host(out).astype(np.float64)


def parameter_count(channels: int, layers: int) -> int:
    """Parameters of ``ResidualNet(channels, layers)`` (its float16 weights take twice as many bytes)."""
    widths = [2] + [channels] * (layers - 1) + [1]
    return sum(9 * a * b + b for a, b in zip(widths[:-1], widths[1:]))


def state_nbytes(state: dict) -> int:
    """Bytes of stored weights."""
    return int(sum(a.nbytes for a in state.values()))


TELL_EVERY = 10  # iterations between two progress reports of the final training


class InSituLearner:
    """What the climate_sr learners share: the closing training after the run, as a progress phase of its
    own, of ``final_epochs`` passes over the pairs with the global batch of all learners. A subclass has
    ``config``, ``comm``, ``progress``, ``inputs`` and ``train(iterations, final, progress)``."""

    def final_iterations(self) -> int:
        """Iterations of ``final_epochs`` passes over the pairs (``batch_size`` samples each, on every rank)."""
        ranks = self.comm.size if self.comm is not None else 1
        return math.ceil(self.config.final_epochs * len(self.inputs) / (self.config.batch_size * ranks))

    def train_final(self, progress=None) -> None:
        iterations = self.final_iterations()
        self.progress.phase("final training", iterations)
        self.train(iterations, final=True, progress=progress)


class BoundedLearner(InSituLearner):
    """The climate_sr learner of ``pipeline="bounded"``: a :class:`ResidualLearner` fed the run's training
    pairs in situ, then the stored corrections that keep the user's point-wise bound on every step.

    It has the interface of the application's U-Net learner (``add``, ``train``, ``train_final``,
    ``final_iterations``, ``evaluate``), so the serial run and the coupled workflow use either. The absolute
    bound of a step is ``config.error_bound`` times the step's max |field| (stored with it); where the
    restored field errs beyond it a correction is stored (:func:`hpcai.sim.compression.guard`), so
    ``|restored - original| <= bound`` at every point of every restored step, whatever the network learned.
    """

    def __init__(self, config, lat, lon, comm=None, seed: int | None = None, progress=None):
        from .progress import as_progress
        self.config, self.comm, self.progress = config, comm, as_progress(progress)
        self.net = ResidualLearner(lat, None, config.channels, config.layers, config.lr,
                                   crop=min(48, config.nlat, config.nlon), batch=config.batch_size, seed=config.seed,
                                   optimizer=config.optimizer, precision=config.precision, comm=comm, rng_seed=seed)
        self.pairs = []  # (decompressed, original) of the training steps in order: their corrections at the end

    inputs = property(lambda self: self.net.inputs)
    losses = property(lambda self: self.net.losses)
    seconds = property(lambda self: self.net.seconds)

    def add(self, compressed, original, knob: float | None = None) -> None:
        """A training pair; ``knob``: the codec's quantiser step or bound of the step, the residual's unit."""
        self.net.add(compressed, original, knob)
        self.pairs.append((compressed, original, knob))

    def train(self, iterations: int, final: bool = False, progress=None) -> None:
        """``iterations`` steps; ``final``: cosine-decayed learning rate, each a step of the progress phase;
        ``progress(done, total, loss)`` every :data:`TELL_EVERY` iterations and at the last."""
        def each(i, loss):
            if final:
                self.progress.update(loss=loss)
            else:
                self.progress.loss(loss)
            if progress is not None and self.losses and ((i + 1) % TELL_EVERY == 0 or i + 1 == iterations):
                progress(i + 1, iterations, float(np.mean(self.losses[-10:])))
        self.net.train(iterations, final, each)

    def bounded(self, decompressed, original, knob=None):
        """(restored field within the bound, its corrections (uint8), the absolute bound); without a bound
        (``error_bound=None``) the network's output, no corrections and NaN."""
        restored = self.net.restore(decompressed, knob)
        if self.config.error_bound is None:
            return restored, np.zeros(0, np.uint8), math.nan
        bound = step_bound(self.config.error_bound, original)
        corrections = _codec.guard(restored, original, bound)
        return _codec.apply_guard(restored, corrections, bound), corrections, bound

    def evaluate(self, held_out, weights, other=()) -> dict:
        """``held_out``, ``other``: [(time, original, decompressed, knob)]. Weights rounded to float16 (as
        stored); corrections and bounds of every training step (in order)
        and held-out step ``[(time, original, compressed)]``; errors of the codec alone and of the restored
        steps on the held-out steps and on the other flow's; the worst |error| / bound seen anywhere."""
        state = self.net.round_weights()
        worst, parts = 0.0, {}

        def run(name, steps):  # steps: [(decompressed, original, knob)]
            nonlocal worst
            before, after, corrections, bounds, last = [], [], {}, [], None
            for i, (d, o, knob) in enumerate(steps):
                r, c, b = self.bounded(d, o, knob)
                before.append(_codec.relative_errors(d, o, weights))
                after.append(_codec.relative_errors(r, o, weights))
                corrections[str(i)], last = c, (o, d, r)
                bounds.append(b)
                if np.isfinite(b):
                    worst = max(worst, float(np.abs(r - o).max()) / b)
            parts[name] = (np.array(before).reshape(-1, 2), np.array(after).reshape(-1, 2), corrections,
                           np.array(bounds, float), last)

        run("train", self.pairs)
        run("held", [(d, o, knob) for _, o, d, knob in held_out])
        run("other", [(d, o, knob) for _, o, d, knob in other])
        before, after, held_corrections, held_bounds, (original, compressed, restored) = parts["held"]
        out = {"before": before, "after": after, "day": held_out[-1][0] / 86400,
               "held_originals": np.stack([h[1] for h in held_out]),
               "held_out_days": np.array([h[0] / 86400 for h in held_out]),
               "original": original, "compressed": compressed, "restored": restored,
               "corrections": {"train": parts["train"][2], "held": held_corrections},
               "bounds": {"train": parts["train"][3], "held": held_bounds},
               "other_before": parts["other"][0], "other_after": parts["other"][1],
               "other_corrections_bytes": np.array([c.nbytes for c in parts["other"][2].values()], float),
               "worst_error_over_bound": worst if self.config.error_bound is not None else math.nan,
               "loss": np.array(self.losses), "state": state,
               "norm": np.array([self.net.scale, self.net.residual_scale], float), "iterations": len(self.losses)}
        if other:
            o, d, r = parts["other"][4]
            out.update(other_original=o, other_compressed=d, other_restored=r,
                       other_originals=np.stack([s[1] for s in other]))
        return out


def step_bound(error_bound: float, original) -> float:
    """The absolute point-wise bound of a step: ``error_bound`` times its max |value| (``error_bound`` itself
    for a field that is zero everywhere)."""
    peak = float(np.abs(original).max())
    return error_bound * peak if peak > 0 else error_bound
