"""Climate compression with a network trained in situ: shallow-water output stored within a point-wise bound.

The Galewsky et al. (2004) barotropic jet runs on the sphere; every output step is compressed and only the
compressed data are stored. Two pipelines (``pipeline``):

- ``bounded`` (default): each step is compressed by the block DCT (or SZ3, ZFP) at the finest setting whose
  bytes, with the corrections the bound would need, fit the step's byte budget: what the run may still store
  over the steps left (``ratio``), so the bytes the smooth early steps do not need go to the developing flow;
  a small residual network (:mod:`.climate_residual`, ~1.4k parameters) learns, while the simulation runs,
  the residual ``original - decompressed`` (NeurLZ-style, Han et al. 2024, arXiv 2409.05785); at the end
  the points where the restored field errs by more than ``error_bound`` x the step's max |field| get a stored
  correction (:func:`hpcai.sim.compression.guard`), so the bound holds at every point of every restored step.
  Every byte counts: data, float16 weights, corrections.

What to expect from the defaults (T85, 6 days, output every 3 h, block codec, ratio 50, bound 0.5 % of each
step's max; 12-25 s on 2 cores): x50 in all; on the later window (days 4.6-6), where the vortices are finest,
x23: L2 error 2.7e-3 and max 3.0-3.9e-3 (the bound is not reached), where SZ3 at the same bytes has 5.3e-3
(max 2.1e-3) and ZFP 9.0e-3: ahead of SZ3 in L2, behind it in max error; the same on the other flow. At these
bytes the codec alone does it: the network takes nothing off the L2 (1.00x) and may raise the max error above
the codec's 3.0e-3, within the bound. At ``ratio=100`` the network takes
6.6x off the codec's L2 on the later window (x41: 1.1e-2 and max 5.0e-3 against SZ3's 1.2e-2 and 5.9e-3), but
the bound's corrections keep the run at x76. ``benchmarks/climate_rd.py`` measures the pipeline with bounds
below SZ3's own, where it beats SZ3 on both errors at ratios 20-200.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time

import numpy as np

from .. import amp, backend, io, ops, optim
from ..autograd import Tensor
from ..train import TrainStep
from ..sim import compression as _codec
from ..sim.shallow_water import INITIAL_CONDITIONS, ShallowWater
from .climate_residual import TELL_EVERY, BoundedLearner, InSituLearner, ResidualNet, parameter_count, step_bound
from .climate_net import Restorer, SphereConv2d, area_weights, position_channels, restore as _apply
from .climate_store import FIELDS, read_compressed, write_compressed
from .fields import check_fields
from .progress import as_progress
from .result import Result

__all__ = ["Config", "FIELDS", "Restorer", "SphereConv2d", "build_model", "example_batch", "read_compressed",
           "run", "workflow", "write_compressed"]

PIPELINES = ("bounded", "unet")
OTHER_FLOW = {"galewsky": {"h_hat": 60.0}, "williamson2": {"alpha": math.pi / 4}}  # the generalisation test's flow
PEERS = ("sz3", "zfp")  # codecs the restored steps are compared with, at the same total bytes


# what each metric of the Result is: {name: (group, unit)}. Errors are relative (latitude-weighted L2, or max
# over the field's max), on the held-out steps unless "other flow"; "peers": SZ3 and ZFP at the same total bytes
# (bounded pipeline: compression_ratio_held_out / _other, which count data, corrections and the weights' share)
METRICS = {
    **{f"{kind}_{what}": ("error", "") for kind in ("l2", "max") for what in ("compressed", "restored")},
    "l2_improvement": ("error", "x"), "max_improvement": ("error", "x"),
    **{f"{kind}_other_{what}": ("error, other flow", "") for kind in ("l2", "max")
       for what in ("compressed", "restored")},
    **{f"{kind}_{peer}": ("peers at the same bytes", "") for kind in ("l2", "max") for peer in PEERS},
    **{f"{kind}_{peer}_other": ("peers at the same bytes, other flow", "") for kind in ("l2", "max") for peer in PEERS},
    "worst_error_over_bound": ("error", "of the bound"),
    "compression_ratio": ("storage", "x"), "compression_ratio_with_weights": ("storage", "x"),
    "compression_ratio_total": ("storage", "x"), "compression_ratio_held_out": ("storage", "x"),
    "compression_ratio_other": ("storage", "x"), "bytes_corrections": ("storage", "B"),
    "bytes_raw": ("storage", "B"), "bytes_stored": ("storage", "B"), "bytes_weights": ("storage", "B"),
    "bytes_saved": ("storage", "B"),
    "final_training_loss": ("training", ""), "training_iterations": ("training", "iterations"),
    "output_steps": ("run", "steps"), "held_out_steps": ("run", "steps"), "training_steps": ("run", "steps"),
    "ranks": ("run", "ranks"),
    **{f"seconds_{part}": ("timing", "s") for part in ("total", "simulation", "simulation_wall", "simulation_other",
                                                       "compression", "training", "sends")},
}


def _number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) and math.isfinite(x)


def _integer(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


@dataclasses.dataclass
class Config:
    """What to simulate, how hard to compress, and how to train the restoration network."""

    nlon: int = dataclasses.field(default=256, metadata={
        "low": 32, "high": 2048, "unit": "points", "help": "grid points around a latitude circle, a multiple of 4; "
        "the resolution is T = nlon // 3 (128 x 64 is T42, 256 x 128 T85); finer grids cost ~8x per doubling"})
    nlat: int = dataclasses.field(default=128, metadata={
        "low": 16, "high": 1024, "unit": "points", "help": "grid points from pole to pole, a multiple of 4 "
        "(usually nlon / 2)"})
    days: float = dataclasses.field(default=6.0, metadata={
        "low": 0.0, "low_open": True, "high": 365.0, "unit": "days",
        "help": "model time simulated; the jet becomes unstable after ~4 days and fills with fine vortices"})
    initial_condition: str = dataclasses.field(default="galewsky", metadata={
        "choices": tuple(INITIAL_CONDITIONS), "help": "the flow: galewsky is the unstable mid-latitude jet "
        "(Galewsky et al. 2004), williamson2 a steady zonal flow (Williamson et al. 1992, a check of the solver)"})
    dt: float | None = dataclasses.field(default=None, metadata={
        "low": 0.0, "low_open": True, "high": 3600.0, "unit": "s",
        "help": "solver time step; None: the largest stable step that divides an hour"})
    output_hours: float = dataclasses.field(default=3.0, metadata={
        "low": 0.0, "low_open": True, "high": 240.0, "unit": "h",
        "help": "model time between two output steps (each compressed, stored and a training pair); "
        "smaller: more data, longer run"})
    field: str = dataclasses.field(default="vorticity", metadata={
        "choices": tuple(FIELDS), "help": "the variable compressed and restored: relative vorticity (1/s; "
        "fine structure, the hard case) or the fluid depth h (m; smooth)"})
    pipeline: str = dataclasses.field(default="bounded", metadata={
        "choices": PIPELINES, "help": "what is stored and restored: bounded, the codec + a small residual "
        "network trained in situ + stored corrections keeping error_bound at every point (the pipeline that "
        "competes with SZ3); unet, the older U-Net restoring a coarse codec, no bound kept (error_bound None)"})
    codec: str = dataclasses.field(default="block", metadata={
        "choices": tuple(_codec.CODECS), "help": "the lossy compressor: block a JPEG-like block DCT (tuned to "
        "each step), truncate keeps the lowest global DCT coefficients (the unet pipeline's; under a bound it "
        "errs nearly everywhere, so corrections take most bytes); sz3 and zfp are the error-bounded HPC "
        "compressors (need hdf5plugin; zfp one tolerance for the run)"})
    ratio: float = dataclasses.field(default=50.0, metadata={
        "low": 1.0, "low_open": True, "high": 10_000.0, "unit": "x",
        "help": "target compression ratio: raw float64 bytes over the codec's bytes plus (bounded pipeline) "
        "the network's weights; the corrections come on top, the total is reported; higher loses more detail"})
    error_bound: float | None = dataclasses.field(default=0.005, metadata={
        "low": 0.0, "low_open": True, "high": 1.0, "unit": "of max |field|",
        "help": "point-wise bound kept on every restored step (bounded pipeline): |restored - original| <= "
        "error_bound x the step's max |field|, by stored corrections where the network errs beyond it; "
        "None: no bound, no corrections"})
    holdout_every: int = dataclasses.field(default=4, metadata={
        "low": 2, "high": 1000, "help": "1 in k output steps is held out from training and used to measure "
        "the errors (with holdout=later: the last 1/k of the run)"})
    holdout: str = dataclasses.field(default="later", metadata={
        "choices": ("later", "interleaved"), "help": "which steps are held out: later, the last 1/k of the run "
        "(a later window never seen in training, the honest test), or interleaved, every k-th step (easier)"})
    channels: int = dataclasses.field(default=8, metadata={
        "low": 1, "high": 256, "help": "network width: the residual network's channels (bounded), or the "
        "U-Net's at full resolution (unet; x2 at 1/2, x4 at 1/4 resolution); wider restores more but its "
        "weights count against the compression"})
    layers: int = dataclasses.field(default=4, metadata={
        "low": 2, "high": 16, "unit": "layers", "help": "3x3 convolutions of the residual network (bounded "
        "pipeline; 8 channels x 4 layers: 1.4k parameters, 2.8 kB in float16)"})
    blocks: int = dataclasses.field(default=1, metadata={
        "low": 0, "high": 16, "help": "residual blocks at the U-Net's coarsest level (unet pipeline; depth)"})
    precision: str = dataclasses.field(default="fp32", metadata={
        "choices": tuple(amp.POLICIES), "help": "number format of the network's arithmetic (fp16/bf16 and "
        "mixed-* emulate tensor-core half precision); the simulation always runs in float64"})
    optimizer: str = dataclasses.field(default="adam", metadata={
        "choices": tuple(optim.OPTIMIZERS), "help": "the network's update rule (adam is a robust default)"})
    lr: float = dataclasses.field(default=3e-3, metadata={
        "low": 0.0, "low_open": True, "high": 100.0,
        "help": "learning rate: constant while the simulation runs, cosine-decayed to 1/100 in the final phase"})
    iters_per_output: int = dataclasses.field(default=2, metadata={
        "low": 0, "high": 1000, "unit": "iterations", "help": "training iterations after each new training step "
        "while the simulation runs (in situ); 0: train only at the end"})
    final_epochs: int = dataclasses.field(default=70, metadata={
        "low": 0, "high": 10_000, "unit": "epochs", "help": "passes over the stored training pairs once the "
        "simulation has ended (most of the run's time); more: lower error, longer run"})
    batch_size: int = dataclasses.field(default=4, metadata={
        "low": 1, "high": 1024, "unit": "steps", "help": "training pairs (output steps) per iteration on each "
        "learner rank"})
    seed: int = dataclasses.field(default=0, metadata={
        "low": 0, "high": 2**32 - 1, "help": "random seed of the network's initial weights and of the "
        "minibatches (the simulation and compression do not depend on it). A run on one rank repeats exactly "
        "when BLAS splits the network's float32 products the same way: the same BLAS threads (cores, "
        "OMP_NUM_THREADS), called from the same kind of thread (the panel trains in a background thread, the "
        "CLI and a notebook cell in the main one); otherwise errors differ in the 3rd-4th digit. "
        "OMP_NUM_THREADS=1 makes them equal everywhere. On 2+ engines the coupled run trains as many in situ "
        "iterations as fit while the simulation runs, so it differs more"})
    output_dir: str | None = dataclasses.field(default=None, metadata={
        "path": True, "help": "folder for the compressed data + weights (HDF5), the figures and metrics.json "
        "(None: nothing written)"})

    def validate(self) -> "Config":
        """Check every field, raising a ValueError that names it."""
        check_fields(self)  # types and the declared bounds of every field
        grid = lambda n, low: _integer(n) and n >= low and n % 4 == 0  # noqa: E731 (the U-Net halves twice)
        count = lambda n, low: _integer(n) and n >= low  # noqa: E731
        positive = lambda x: _number(x) and x > 0  # noqa: E731
        checks = [("nlon", grid(self.nlon, 32), "a multiple of 4 longitudes, >= 32"),
                  ("nlat", grid(self.nlat, 16), "a multiple of 4 latitudes, >= 16"),
                  ("days", positive(self.days), "a positive number of model days"),
                  ("initial_condition", self.initial_condition in INITIAL_CONDITIONS,
                   f"one of {sorted(INITIAL_CONDITIONS)}"),
                  ("dt", self.dt is None or positive(self.dt), "None or a positive number of seconds"),
                  ("output_hours", positive(self.output_hours), "positive hours"),
                  ("field", self.field in FIELDS, f"one of {list(FIELDS)}"),
                  ("pipeline", self.pipeline in PIPELINES, f"one of {list(PIPELINES)}"),
                  ("codec", self.codec in _codec.CODECS, f"one of {list(_codec.CODECS)}"),
                  ("error_bound", self.error_bound is None or (positive(self.error_bound) and self.error_bound <= 1),
                   "None or a number in (0, 1] (a fraction of each step's max |field|)"),
                  ("error_bound", self.pipeline == "bounded" or self.error_bound is None,
                   "None with pipeline='unet' (the U-Net keeps no point-wise bound; use pipeline='bounded')"),
                  ("layers", count(self.layers, 2), "an integer >= 2"),
                  ("ratio", _number(self.ratio) and self.ratio > 1, "a compression ratio > 1"),
                  ("holdout_every", count(self.holdout_every, 2), "an integer >= 2"),
                  ("holdout", self.holdout in ("later", "interleaved"), "'later' or 'interleaved'"),
                  ("channels", count(self.channels, 1), "a positive integer"),
                  ("blocks", count(self.blocks, 0), "an integer >= 0"),
                  ("optimizer", self.optimizer in optim.OPTIMIZERS, f"one of {sorted(optim.OPTIMIZERS)}"),
                  ("lr", positive(self.lr), "a positive learning rate"),
                  ("iters_per_output", count(self.iters_per_output, 0), "an integer >= 0"),
                  ("final_epochs", count(self.final_epochs, 0), "an integer >= 0"),
                  ("batch_size", count(self.batch_size, 1), "a positive integer")]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"{name}: expected {expected}, got {getattr(self, name)!r}")
        outputs = 1 + math.ceil(self.days * 24 / self.output_hours - 1e-9)  # the initial state included
        if outputs < self.holdout_every:
            raise ValueError(f"days: expected a run with a held-out step (every {self.holdout_every}th output, one "
                             f"every {self.output_hours} h: at least {(self.holdout_every - 1) * self.output_hours / 24:g}"
                             f" days), got {self.days!r}")
        amp.get_policy(self.precision)
        return self


# -- the network (climate_net) ----------------------------------------------------------------------
def build_model(config: Config):
    """The restoration network ``config`` trains: a :class:`~.climate_residual.ResidualNet` (bounded) or a
    :class:`Restorer` U-Net (unet)."""
    if config.pipeline == "bounded":
        return ResidualNet(config.channels, config.layers, seed=config.seed)
    return Restorer(config.channels, config.blocks, seed=config.seed)


def example_batch(config: Config, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` random inputs of the shape the network takes: bounded, (n, 2, nlat + 2 layers, nlon + 2 layers)
    (field and sin(latitude), with the halo); unet, (n, 4, nlat, nlon) (field and position channels)."""
    if config.pipeline == "bounded":
        return rng.standard_normal((n, 2, config.nlat + 2 * config.layers, config.nlon + 2 * config.layers))
    return rng.standard_normal((n, 4, config.nlat, config.nlon))


def _learner(config: Config, lat, lon, **kw):
    """The learner of the config's pipeline: :class:`~.climate_residual.BoundedLearner` or :class:`_Learner`."""
    return (BoundedLearner if config.pipeline == "bounded" else _Learner)(config, lat, lon, **kw)


class _Learner(InSituLearner):
    """Keeps (compressed, original) pairs and fits the Restorer to them; data-parallel when given ``comm``.

    Inputs are the compressed field minus its mean over its standard deviation; the target is the residual
    (original - compressed) over its RMS, both taken from the first pair. The loss is the area-weighted MSE.
    Half of each minibatch is drawn uniformly, half in proportion to each pair's last loss, and a new pair
    starts as the worst seen (prioritised replay, Schaul et al. 2016): the vortices of a new step, unlike
    anything before, get attention at once. While the simulation runs the learning rate is constant; in
    the final phase it follows a cosine from ``lr`` to ``lr/100``.
    """

    def __init__(self, config: Config, lat, lon, comm=None, seed: int | None = None, progress=None):
        self.config, self.comm, self.progress = config, comm, as_progress(progress)
        self.pos, self.area = position_channels(lat, lon), area_weights(lat)
        self.sqrt_area = np.sqrt(self.area).astype(np.float32)
        self.model = build_model(config)
        self.policy = amp.get_policy(config.precision)
        self.policy.prepare(self.model)
        self.opt = optim.get_optimizer(config.optimizer, self.model.parameters(), lr=config.lr)
        if comm is not None:
            from ..parallel.data_parallel import DistributedOptimizer, broadcast_parameters
            broadcast_parameters(self.model, 0, comm)
            self.opt = DistributedOptimizer(self.opt, comm=comm)
        weight = Tensor(self.sqrt_area[None, None])  # the loss is area-weighted: a sphere, not a rectangle
        self.step = TrainStep(self.model, lambda out, y: ops.mse_loss(out * weight, y), self.opt, self.policy,
                              where="learner")
        self.rng = np.random.default_rng(config.seed if seed is None else seed)
        self.inputs, self.targets, self.losses, self.norm, self.seconds = [], [], [], None, 0.0
        self.priority = []  # each pair's last loss: half of every minibatch is drawn in proportion to it

    def add(self, compressed, original, knob=None) -> None:
        if self.norm is None:
            rms = lambda a: float(np.sqrt((self.area * a ** 2).mean())) or 1.0  # noqa: E731
            mean = float((self.area * compressed).mean())
            self.norm = (mean, rms(compressed - mean), rms(original - compressed))
        mean, xscale, yscale = self.norm
        self.inputs.append(np.concatenate([((compressed - mean) / xscale)[None].astype(np.float32), self.pos]))
        self.targets.append((self.sqrt_area * (original - compressed) / yscale)[None].astype(np.float32))
        self.priority.append(max(self.priority, default=1.0))  # a new pair is sampled as the worst one seen

    def train(self, iterations: int, final: bool = False, progress=None) -> None:
        """``iterations`` steps on random minibatches; ``final``: learning rate cosine-decayed to lr/100, each
        step a step of the progress phase. ``progress(done, total, loss)`` is told every
        :data:`TELL_EVERY` iterations and at the last."""
        if not self.inputs:
            return
        start = time.perf_counter()
        lr = self.config.lr
        for i in range(iterations):
            if final:
                for group in self.opt.param_groups:
                    group["lr"] = lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * i / iterations)))
            n, priority = len(self.inputs), np.array(self.priority)
            p = 0.5 / n + 0.5 * priority / priority.sum()
            idx = self.rng.choice(n, self.config.batch_size, replace=n < self.config.batch_size, p=p)
            x, y = np.stack([self.inputs[j] for j in idx]), np.stack([self.targets[j] for j in idx])
            result = self.step(x, y, f"iteration {i + 1}")
            if result.out is not None:  # None: an fp16 loss that overflowed, a step the scaler skipped
                errors = ((backend.to_host(result.out.data) * self.sqrt_area - y) ** 2).mean(axis=(1, 2, 3))
                for j, e in zip(idx, errors):
                    self.priority[j] = float(e)
                self.losses.append(result.loss)
                if not final:
                    self.progress.loss(result.loss)
            if final:
                self.progress.update(loss=result.loss)
            if progress is not None and self.losses and ((i + 1) % TELL_EVERY == 0 or i + 1 == iterations):
                progress(i + 1, iterations, float(np.mean(self.losses[-10:])))
        self.seconds += time.perf_counter() - start

    def restore(self, compressed):
        return _apply(self.model, self.policy, self.norm, self.pos, compressed)

    def evaluate(self, held_out, weights, other=()) -> dict:
        """Errors of compressed and restored fields on the held-out steps ``[(time, original, compressed)]``
        and on the steps ``other`` of another flow; the fields of the last of each; the held-out originals
        (the peers' codecs compress them); the loss history and the trained state (what the producer writes).

        The weights are first rounded to float16, the format they are stored in, so the errors reported are
        those of the file (rounding changes the restored field by ~1e-3 of the correction).
        """
        for p in self.model.parameters():
            p.data[...] = p.data.astype(np.float16).astype(p.data.dtype)
        before, after = [], []
        for _, original, compressed, *_ in held_out:
            before.append(_codec.relative_errors(compressed, original, weights))
            after.append(_codec.relative_errors(self.restore(compressed), original, weights))
        other_before, other_after = [], []
        for _, original, compressed, *_ in other:
            other_before.append(_codec.relative_errors(compressed, original, weights))
            other_after.append(_codec.relative_errors(self.restore(compressed), original, weights))
        if other:
            _, original, compressed = other[-1][:3]
            last_other = {"other_original": original, "other_compressed": compressed,
                          "other_restored": self.restore(compressed)}
        else:
            last_other = {}
        t, original, compressed = held_out[-1][:3]
        return {"before": np.array(before), "after": np.array(after), "day": t / 86400,
                "other_before": np.array(other_before).reshape(-1, 2),
                "other_after": np.array(other_after).reshape(-1, 2), **last_other,
                "held_originals": np.stack([h[1] for h in held_out]),
                "held_out_days": np.array([h[0] / 86400 for h in held_out]), "original": original,
                "compressed": compressed, "restored": self.restore(compressed), "loss": np.array(self.losses),
                "state": {k: v.astype(np.float16) for k, v in self.model.state_dict().items()},
                "norm": self.norm, "iterations": len(self.losses)}


# -- the producer: simulation, codec, storage -------------------------------------------------------------
class _Producer:
    """Runs the model, compresses every output step and keeps what is stored; decides the held-out steps.

    Constructing it runs the solver's own checks (initial condition, a stable ``dt``, an output interval
    that is a whole number of steps) and the codec's (a ratio that keeps something), so a bad parameter
    fails before anything runs. ``config`` is validated (:meth:`Config.validate` refuses a run too short for
    a held-out step: with a whole number of solver steps per output, its count of outputs is this one's).
    """

    def __init__(self, config: Config):
        self.config = config
        self.sim = ShallowWater(nlon=config.nlon, nlat=config.nlat, dt=config.dt)
        self.sim.initial_condition(config.initial_condition)
        self.sim.run(0.0, output_hours=config.output_hours)  # raises the solver's ValueError for dt now
        every = round(config.output_hours * 3600 / self.sim.dt_used)
        steps = math.ceil(config.days * 86400 / self.sim.dt_used - 1e-9)
        self.outputs = 1 + steps // every + (steps % every > 0)  # output steps, the initial state included
        self.lat, self.lon = self.sim.lat, self.sim.lon
        self.weights = np.cos(np.radians(self.lat))[:, None]
        self.ratio = config.ratio  # the codec's target: bounded, the bytes left after the weights
        self.budget = None  # bounded: the bytes of codec + corrections the whole run may store
        if config.pipeline == "bounded":
            budget = self.outputs * config.nlat * config.nlon * 8 / config.ratio
            weights = 2 * parameter_count(config.channels, config.layers)  # float16
            if budget < 64 * self.outputs:
                raise ValueError(f"ratio: {config.ratio:g} leaves {budget / self.outputs:.1f} bytes a step, too few "
                                 "for any codec's header and data")
            if weights > 0.5 * budget:
                raise ValueError(f"channels: a network of {config.channels} channels x {config.layers} layers has "
                                 f"{weights} bytes of weights, more than half the {budget:.0f} bytes this run may "
                                 f"store at ratio {config.ratio:g} ({self.outputs} steps); use fewer channels or "
                                 "layers, a lower ratio or a longer run")
            self.ratio = config.ratio * budget / (budget - weights)
            self.budget = budget - weights
        first = _field(self.sim, config.field)
        if self.budget is not None and config.error_bound is not None and config.codec == "zfp":
            self.codec = _bounded_codec("zfp", first, self.budget / self.outputs,
                                        step_bound(config.error_bound, first))[0]
        else:
            self.codec = _compressor(config, first, self.ratio)
        self.stored, self.times, self.step_errors, self.other_nbytes, self.knobs = [], [], [], [], []
        self.budgets, self.spent = [], 0.0  # bounded: each step's byte budget, and the bytes the steps took
        self.timers = {"simulation": 0.0, "compression": 0.0, "training": 0.0, "sends": 0.0,
                       "simulation_wall": 0.0}

    def output(self, model):
        """(k, time, original, compressed, held_out) for the output step the model has just reached."""
        t0 = time.perf_counter()
        k, original = len(self.stored), _field(model, self.config.field)
        if self.budget is not None:  # a step may take what is left over the steps to come: unspent bytes roll over
            self.budgets.append((self.budget - self.spent) / max(1, self.outputs - k))
        codec, size = self.codec_for(original, self.budgets[k] if self.budgets else None)
        c = codec.compress(original)  # block, sz3: a step or bound for each field
        self.spent += c.nbytes if size is None else size
        compressed = _codec.decompress(c)
        self.stored.append(c)
        self.knobs.append(_knob(c))
        self.times.append(model.time)
        self.step_errors.append(_codec.relative_errors(compressed, original, self.weights)[0])
        self.timers["compression"] += time.perf_counter() - t0
        return k, model.time, original, compressed, self.held_out(k)

    def codec_for(self, original, budget=None):
        """(the codec compressing ``original``, its bytes with corrections or None): truncate and zfp, one for
        the run; block and sz3, tuned to each step -- to the data ratio, or (bounded, with a bound) to the
        step's byte ``budget`` with corrections. Early steps of a flow are smooth and take far less than
        their share, so the budget of step k is what is left over the steps left (:meth:`output`): the
        developing flow gets the bytes the smooth one did not need."""
        config = self.config
        if budget is not None and config.error_bound is not None and config.codec in ("block", "sz3"):
            return _bounded_codec(config.codec, original, budget, step_bound(config.error_bound, original))
        return (self.codec if config.codec in ("truncate", "zfp") else _compressor(config, original, self.ratio)), None

    def held_out(self, k: int) -> bool:
        """Whether output step ``k`` is held out: in the last 1/holdout_every of the run, or every k-th step."""
        if self.config.holdout == "later":
            return k >= self.outputs - self.outputs // self.config.holdout_every
        return (k + 1) % self.config.holdout_every == 0

    def run(self, callback) -> None:
        """Integrate, calling ``callback(model)`` at every output step; times the loop."""
        start = time.perf_counter()
        self.sim.run(self.config.days, output_hours=self.config.output_hours, callback=callback)
        wall = time.perf_counter() - start
        self.timers["simulation_wall"] = wall
        self.timers["simulation"] = wall - sum(self.timers[k] for k in ("compression", "training", "sends"))

    def run_other(self, callback) -> None:
        """Simulate the other flow (:data:`OTHER_FLOW`: another perturbation of the same case) and call
        ``callback(time, original, compressed, knob)`` at its held-out steps, compressed as the run's are; nothing
        is stored. Its time counts as ``simulation_other``."""
        params = OTHER_FLOW.get(self.config.initial_condition)
        if params is None:
            return
        start, config, k = time.perf_counter(), self.config, [0]
        sim = ShallowWater(nlon=config.nlon, nlat=config.nlat, dt=config.dt)
        sim.initial_condition(config.initial_condition, **params)

        def on_output(model):
            if self.held_out(k[0]):
                original = _field(model, config.field)
                c = self.codec_for(original, self.budgets[k[0]] if self.budgets else None)[0].compress(original)
                self.other_nbytes.append(c.nbytes)
                callback(model.time, original, _codec.decompress(c), _knob(c))
            k[0] += 1
        sim.run(config.days, output_hours=config.output_hours, callback=on_output)
        self.timers["simulation_other"] = time.perf_counter() - start

    def report(self, k, t, held, loss=None) -> None:
        loss = f", training loss {loss:.3g}" if loss is not None else ""
        print(f"day {t / 86400:5.2f}: compressed x{self.stored[k].ratio:.0f} (L2 error {self.step_errors[k]:.2e})"
              f"{', held out' if held else ''}{loss}", flush=True)


def _field(model, name):
    return backend.to_host(model.vorticity() if name == "vorticity" else model.fields()["h"]).astype(np.float64)


KNOB_FACTORS = 2.0 ** np.arange(-4, 7.5, 0.5)  # the block step or SZ3 bound tried, times the step's bound


def _bounded_codec(name, original, budget: float, bound: float):
    """(codec, bytes): the finest codec (block step, SZ3 or ZFP bound, from :data:`KNOB_FACTORS` x ``bound``) whose
    bytes plus the corrections that keep ``bound`` on the decompressed field fit ``budget``; where none fits,
    the one with the fewest bytes (the ratio is then missed, and reported). The network, trained later, usually removes
    corrections (it is not forced to: the run reports the bytes it ends with)."""
    def make(x):
        return _codec.Block(step=x) if name == "block" else _codec.get_codec(name, bound=x)
    best = None
    for x in bound * KNOB_FACTORS:
        codec = make(float(x))
        c = codec.compress(original)
        size = c.nbytes + _codec.guard(_codec.decompress(c), original, bound).nbytes + 8  # + the bound itself
        if size <= budget:
            return codec, size
        if best is None or size < best[1]:
            best = (codec, size)
    return best


def _knob(c) -> float:
    """The step's residual unit: the block codec's quantiser step, SZ3's or ZFP's bound (NaN otherwise)."""
    return float(c.params.get("step", c.params.get("bound", math.nan)))


def _compressor(config: Config, field, ratio: float):
    if config.codec == "truncate":
        return _codec.Truncate.for_ratio(field.shape, ratio)
    if config.codec in ("sz3", "zfp"):  # zfp: one bound for the run (the file's dataset holds one filter)
        return _codec.for_ratio(config.codec, [field], ratio)
    return _codec.Block(step=_block_step_for_ratio(field, ratio))


def _block_step_for_ratio(field, ratio: float) -> float:
    """The quantiser step of the block codec reaching ``ratio`` on ``field`` (bisection in log)."""
    top = float(np.abs(field).max()) or 1.0
    if _codec.Block(top).compress(field).ratio < ratio:
        raise ValueError(f"ratio: the block codec cannot reach {ratio} on this field (at most "
                         f"{_codec.Block(top).compress(field).ratio:.0f})")
    lo, hi = 1e-6 * top, top
    for _ in range(40):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if _codec.Block(mid).compress(field).ratio < ratio else (lo, mid)
    if not np.any(_codec.decompress(_codec.Block(hi).compress(field))):
        raise ValueError(f"ratio: {ratio} would keep nothing of the field with the block codec")
    return hi


PRINT_EVERY = 50  # iterations between two printed lines of it


def _progress(done, total, loss) -> None:
    if done % PRINT_EVERY == 0 or done == total:
        print(f"final training: iteration {done}/{total}, loss {loss:.3g}", flush=True)


def _training_pairs(producer) -> int:
    """How many of the producer's output steps are training pairs (not held out)."""
    return sum(not producer.held_out(k) for k in range(producer.outputs))


SIMULATION_COST = 0.2  # an output step's simulation and compression, in training iterations (T42, 2 cores)


def _final_iterations(config, producer, learners: int = 1) -> int:
    """The final training's iterations: ``final_epochs`` passes over the training pairs, global batch."""
    return math.ceil(config.final_epochs * _training_pairs(producer) / (config.batch_size * learners))


def _plan(progress, config, producer, learners: int = 1, producer_rank: bool = True) -> None:
    """The phases of this rank weighed in training iterations, so that one progress bar spans the run: the
    simulation with in situ training, the other flow's simulation (the producer's rank only), the final
    training and the evaluation."""
    simulation = SIMULATION_COST * producer.outputs
    in_situ = config.iters_per_output * _training_pairs(producer) / learners
    weights = [simulation + in_situ + 1] + [simulation + 1] * producer_rank
    progress.plan(*weights, _final_iterations(config, producer, learners) + 1, 10 + producer.outputs // 4)


# -- the run --------------------------------------------------------------------------------------------
def run(config: Config | None = None, verbose: int = 1, comm=None, progress=None, **overrides) -> Result:
    """Simulate, compress each output step, train the restorer in situ, evaluate on held-out steps.

    Fields of ``config`` may be overridden by keyword (``run(days=2, ratio=50)``). One rank: the
    simulation and the training interleave. On several ranks the run is the workflow :func:`workflow`
    (what ``run_app`` and ``hpcai run`` do under ``mpiexec`` and on engines). With ``verbose`` a line per
    output step and training progress are printed. ``progress``: a
    :class:`~hpcai.apps.progress.Progress` (or a callable receiving its snapshots) told of every output step
    and training iteration.
    """
    config = dataclasses.replace(config or Config(), **overrides).validate()
    if comm is not None and comm.size > 1:
        raise ValueError(f"comm: one rank runs the simulation and the training in turn; on {comm.size} ranks run "
                         "the application's workflow (hpcai.runner.run_app does), see climate_sr.workflow")
    progress = as_progress(progress)
    start = time.perf_counter()
    producer = _Producer(config)
    learner = _learner(config, producer.lat, producer.lon, progress=progress)
    held_out = []
    _plan(progress, config, producer)
    progress.phase("simulation + in situ training", producer.outputs)

    def on_output(model):
        k, t, original, compressed, held = producer.output(model)
        if held:
            held_out.append((t, original, compressed, producer.knobs[k]))
        else:
            t0 = time.perf_counter()
            learner.add(compressed, original, producer.knobs[k])
            learner.train(config.iters_per_output)
            producer.timers["training"] += time.perf_counter() - t0
        if verbose:
            producer.report(k, t, held, np.mean(learner.losses[-5:]) if learner.losses else None)
        progress.update(k + 1, message=f"day {t / 86400:.2f}")

    producer.run(on_output)
    progress.phase("simulation of the other flow", 0, "the generalisation test")
    other = []
    producer.run_other(lambda *step: other.append(step))
    t0 = time.perf_counter()
    learner.train_final(progress=_progress if verbose else None)
    producer.timers["training"] += time.perf_counter() - t0
    progress.phase("evaluation", 0, "held-out steps, the other flow, SZ3 and ZFP at the same bytes")
    evaluation = learner.evaluate(held_out, producer.weights, other)
    result = _finish(config, producer, evaluation, start, ranks=1, verbose=verbose)
    progress.finish(f"held-out L2 error {result.metrics['l2_compressed']:.3g} -> {result.metrics['l2_restored']:.3g}")
    return result



def _error_metrics(evaluation) -> dict:
    """Mean relative errors (L2, max) of the codec alone and restored, on the held-out steps and the other
    flow's, and the restoration's improvement factors: what both pipelines report."""
    out = {}
    for flow in ("", "other_"):
        before, after = evaluation[f"{flow}before"], evaluation[f"{flow}after"]
        for k, kind in enumerate(("l2", "max")):
            out[f"{kind}_{flow}compressed"] = float(before[:, k].mean()) if len(before) else math.nan
            out[f"{kind}_{flow}restored"] = float(after[:, k].mean()) if len(after) else math.nan
    out["l2_improvement"] = out["l2_compressed"] / out["l2_restored"]
    out["max_improvement"] = out["max_compressed"] / out["max_restored"]
    return out

def _finish(config, producer, evaluation, start, ranks, verbose) -> Result:
    """Metrics and arrays from the producer's storage and the learner's evaluation, for both pipelines: the
    bytes of data, weights and (bounded) corrections; the errors of the codec alone and of the restored steps
    on the held-out steps and on the other flow, next to SZ3 and ZFP at the same total bytes there; (bounded)
    the rate-distortion curve's points. Writes the files."""
    bounded = config.pipeline == "bounded"
    keeps_bound = bounded and config.error_bound is not None
    steps, cell = len(producer.stored), config.nlat * config.nlon * 8
    held = [producer.held_out(k) for k in range(steps)]
    if bounded:
        corrections, bounds = _in_step_order(evaluation, held)
    else:
        corrections, bounds = [np.zeros(0, np.uint8)] * steps, np.full(steps, math.nan)
    raw, kept = steps * cell, sum(c.nbytes for c in producer.stored)
    weight_bytes = sum(a.nbytes for a in evaluation["state"].values())
    corr_bytes = sum(c.nbytes for c in corrections) + 8 * steps * keeps_bound  # + each step's bound
    total = kept + weight_bytes + corr_bytes
    # the held-out steps' bytes: their data and corrections, and their share of the weights
    n_held = sum(held)
    held_bytes = sum(producer.stored[k].nbytes + corrections[k].nbytes + 8 * keeps_bound
                     for k in range(steps) if held[k]) + weight_bytes * n_held / steps
    before, after = evaluation["before"], evaluation["after"]
    metrics = {"compression_ratio": raw / kept, "compression_ratio_with_weights": raw / (kept + weight_bytes),
               "compression_ratio_total": raw / total, "bytes_raw": raw, "bytes_stored": kept,
               "bytes_weights": weight_bytes, "bytes_saved": raw - total, "output_steps": steps,
               "held_out_steps": len(before), "training_steps": steps - len(before),
               "final_training_loss": float(np.mean(evaluation["loss"][-20:])) if len(evaluation["loss"]) else math.nan,
               "training_iterations": evaluation["iterations"], "ranks": ranks,
               **{f"seconds_{k}": v for k, v in producer.timers.items()}}
    if bounded:
        metrics.update(compression_ratio_held_out=n_held * cell / held_bytes, bytes_corrections=corr_bytes,
                       worst_error_over_bound=float(evaluation["worst_error_over_bound"]))
    metrics.update(_error_metrics(evaluation))
    # the peers at the restored steps' own total ratio (the U-Net's codec has one ratio for every step)
    ratio = metrics["compression_ratio_held_out" if bounded else "compression_ratio_with_weights"]
    metrics.update(_peers(evaluation["held_originals"], ratio, producer.weights))
    other_before = evaluation["other_before"]
    if bounded and len(other_before):
        other_bytes = (sum(producer.other_nbytes) + evaluation["other_corrections_bytes"].sum()
                       + 8 * len(other_before) * keeps_bound + weight_bytes * n_held / steps)
        metrics["compression_ratio_other"] = len(other_before) * cell / other_bytes
        metrics.update(_peers(evaluation["other_originals"], metrics["compression_ratio_other"], producer.weights,
                              "_other"))
    arrays = {k: evaluation[k] for k in ("day", "original", "compressed", "restored", "held_out_days", "loss")}
    arrays.update({k: evaluation[k] for k in ("other_original", "other_compressed", "other_restored")
                   if k in evaluation})
    arrays.update(lat=producer.lat, lon=producer.lon, l2_compressed=before[:, 0], l2_restored=after[:, 0],
                  step_days=np.array(producer.times) / 86400, step_l2_compressed=np.array(producer.step_errors))
    if bounded:  # the rate-distortion figure: the codecs alone around the run's ratio, and the run's own points
        originals = evaluation["held_originals"]
        for name in RD_CODECS:
            arrays[f"rd_{name}"] = np.array([_codec_point(name, originals, ratio * f, producer.weights, 12)
                                             for f in RD_FACTORS])
        held_data = sum(producer.stored[k].nbytes for k in range(steps) if held[k])
        arrays["rd_codec_alone"] = np.array([[n_held * cell / held_data, metrics["l2_compressed"],
                                              metrics["max_compressed"]]])
        arrays["rd_hpcai"] = np.array([[ratio, metrics["l2_restored"], metrics["max_restored"]]])
    result = Result(metrics, arrays)
    metrics["seconds_total"] = time.perf_counter() - start  # without writing the files
    if config.output_dir:
        _write(config, result, producer, evaluation, *((corrections, bounds) if keeps_bound else (None, None)))
    if verbose:
        _print_summary(config, metrics, ratio)
    return result


def _print_summary(config, metrics, ratio) -> None:
    """The run's bytes and errors, next to the peers' at the same total bytes (``ratio``)."""
    m = metrics
    if config.pipeline == "bounded":
        bound = "" if config.error_bound is None else (
            f"; |error| <= {config.error_bound:g} x max |field| at every point of every step (worst "
            f"{m['worst_error_over_bound']:.2f} of the bound)")
        print(f"stored x{m['compression_ratio_total']:.1f} in all (data x{m['compression_ratio']:.0f}, weights "
              f"{m['bytes_weights']} B, corrections {m['bytes_corrections']} B){bound}; {m['seconds_total']:.1f} s",
              flush=True)
        if m["compression_ratio_total"] < 0.98 * config.ratio:
            print(f"the bound costs more corrections than ratio {config.ratio:g} leaves room for: x"
                  f"{m['compression_ratio_total']:.1f} reached (a looser error_bound or a lower ratio meets it)",
                  flush=True)
        print(f"held-out L2 error: {config.codec} codec {m['l2_compressed']:.3e} -> restored {m['l2_restored']:.3e} "
              f"({m['l2_improvement']:.2f}x; max error {m['max_compressed']:.3e} -> {m['max_restored']:.3e}) at "
              f"x{ratio:.1f} counting weights and corrections", flush=True)
    else:
        print(f"held-out L2 error: compressed {m['l2_compressed']:.3e} -> restored {m['l2_restored']:.3e}"
              f" ({m['l2_improvement']:.1f}x better; max error {m['max_improvement']:.1f}x) at compression "
              f"x{m['compression_ratio']:.0f} (x{m['compression_ratio_with_weights']:.1f} counting the "
              f"weights); {m['seconds_total']:.1f} s", flush=True)
    print("at the same total bytes on the held-out steps: " + ", ".join(
        f"{name} L2 {m[f'l2_{name}']:.3e} (max {m[f'max_{name}']:.3e})" for name in PEERS)
        + f"; restored max {m['max_restored']:.3e}", flush=True)
    if not math.isnan(m["l2_other_restored"]):
        other = f"other flow ({OTHER_FLOW[config.initial_condition]}), same network: L2 error " \
                f"{m['l2_other_compressed']:.3e} -> {m['l2_other_restored']:.3e}"
        if "compression_ratio_other" in m:
            other += (f" (max {m['max_other_restored']:.3e}) at x{m['compression_ratio_other']:.1f}; at those bytes "
                      + ", ".join(f"{name} L2 {m[f'l2_{name}_other']:.3e} (max {m[f'max_{name}_other']:.3e})"
                                  for name in PEERS))
        print(other, flush=True)


def _codec_point(name, originals, ratio, weights, iterations=20):
    """(ratio reached, mean relative L2, mean relative max) of codec ``name`` tuned to at least ``ratio`` on
    ``originals`` together; NaNs where it cannot reach it (or without hdf5plugin)."""
    try:
        codec = _codec.for_ratio(name, list(originals), ratio, iterations=iterations)
        stored = [codec.compress(f) for f in originals]
    except (ValueError, ImportError):
        return math.nan, math.nan, math.nan
    e = np.array([_codec.relative_errors(_codec.decompress(c), f, weights) for c, f in zip(stored, originals)])
    ratio = sum(f.nbytes for f in originals) / sum(c.nbytes for c in stored)
    return ratio, float(e[:, 0].mean()), float(e[:, 1].mean())


def _peers(originals, ratio, weights, suffix="") -> dict:
    """``l2_<peer><suffix>``, ``max_<peer><suffix>``: the mean errors of each codec of :data:`PEERS` on
    ``originals`` at a total ratio of at least ``ratio`` (NaN where it cannot reach it, or without hdf5plugin)."""
    out = {}
    for name in PEERS:
        _, out[f"l2_{name}{suffix}"], out[f"max_{name}{suffix}"] = _codec_point(name, originals, ratio, weights)
    return out


RD_FACTORS = (0.5, 1.0, 2.0, 4.0)  # the rate-distortion figure's ratios, times the run's total ratio
RD_CODECS = ("block", "sz3", "zfp")  # the codecs alone on its curve


def _in_step_order(evaluation, held) -> tuple[list, np.ndarray]:
    """The corrections (uint8 arrays) and absolute bounds of every stored step, in step order, from the
    evaluation's training steps and held-out steps (each in their own order)."""
    parts = {"train": iter(range(len(held))), "held": iter(range(len(held)))}
    corrections, bounds = [], []
    for h in held:
        kind = "held" if h else "train"
        i = next(parts[kind])
        corrections.append(np.asarray(evaluation["corrections"][kind][str(i)], np.uint8))
        bounds.append(float(evaluation["bounds"][kind][i]))
    return corrections, np.array(bounds)


def _write(config, result, producer, evaluation, corrections=None, bounds=None) -> None:
    """Compressed steps, the network's weights (and the corrections) in one HDF5 file; figures (PNG) and
    metrics (JSON) beside it."""
    out = config.output_dir
    os.makedirs(out, exist_ok=True)
    result.files["data"] = write_compressed(os.path.join(out, "compressed.h5"), config, producer.stored,
                                            np.array(producer.times) / 3600, producer.lat, producer.lon,
                                            evaluation["state"], evaluation["norm"], corrections, bounds)
    from . import climate_plots
    result.figures.update(climate_plots.save_figures(result, out, config.field, FIELDS[config.field]))
    result.files["metrics"] = os.path.join(out, "metrics.json")
    io.write_json(result.files["metrics"], {"config": dataclasses.asdict(config), "metrics": result.metrics})


# -- several ranks: the run as a workflow ------------------------------------------------------------------
_POLL_S = 0.005  # a learner with nothing to train on sleeps this long between looks at its channel


def workflow(config: Config, ranks: int, verbose: int = 1) -> tuple[dict, str]:
    """The run on ``ranks`` ranks as a workflow: (control, the module whose value is the run's Result).

    :func:`simulate` runs on one rank and :func:`learn` on the others, coupled by the channel ``fields``.
    Every rank checks the parameters first (the solver's and codec's checks, ~0.1 s), so a bad one raises
    the same ValueError on every rank before anything starts.
    """
    if not isinstance(ranks, int) or ranks < 2:
        raise ValueError(f"ranks: the coupled run needs at least 2 ranks (one simulates, the others learn), "
                         f"got {ranks!r}")
    _Producer(config.validate())
    params = {**dataclasses.asdict(config), "verbose": int(verbose)}
    return ({"workflow": {"name": "climate_sr"},
             "modules": {"simulate": {"entry": f"{__name__}:simulate", "params": params},
                         "learn": {"entry": f"{__name__}:learn", "ranks": ranks - 1, "params": params}},
             "channels": [{"from": "simulate", "to": "learn", "name": "fields"}]}, "simulate")


def _config(params) -> tuple[Config, int]:
    params = dict(params)
    verbose = params.pop("verbose", 1)
    return Config(**params).validate(), verbose


def simulate(ctx) -> Result:
    """Workflow module: simulate, compress, store and send every output step; then finish with the evaluation.

    Each output step goes to the learners as one float64 array ``[step, time (s), knob, compressed, original]``
    (knob: the codec's quantiser step or bound, the residual network's unit)
    with non-blocking sends (a training pair to every learner, a held-out step to the first), reclaimed
    without waiting inside the loop; then ``{"kind": "end"}``. The first learner answers with its progress
    lines and, last, the evaluation (the weights among it); this module writes the files.
    """
    config, verbose = _config(ctx.params)
    start = time.perf_counter()
    producer = _Producer(config)
    fields = ctx.channel("fields")
    learners = range(fields.peer_size)
    for rank in learners:
        fields.send(producer.lat, rank)
        fields.send(producer.lon, rank)
    pending = []

    def on_output(model):
        k, t, original, compressed, held = producer.output(model)
        t0 = time.perf_counter()
        message = np.concatenate([[k, t, producer.knobs[k]], compressed.ravel(), original.ravel()])
        for rank in [0] if held else learners:
            pending.append(fields.isend(message, rank, meta={"kind": "held" if held else "pair"}))
        pending[:] = [p for p in pending if not p.done()]  # reclaim, never wait
        producer.timers["sends"] += time.perf_counter() - t0
        if verbose:
            producer.report(k, t, held)
        ctx.progress.update(k + 1, message=f"day {t / 86400:.2f}")

    _plan(ctx.progress, config, producer, fields.peer_size)
    final = _final_iterations(config, producer, fields.peer_size)
    ctx.progress.phase("simulation", producer.outputs)
    producer.run(on_output)
    ctx.progress.phase("simulation of the other flow", 0, "the generalisation test")
    producer.run_other(lambda t, original, compressed, knob: pending.append(fields.isend(
        np.concatenate([[-1, t, knob], compressed.ravel(), original.ravel()]), 0, meta={"kind": "other"})))
    for rank in learners:
        fields.send({"kind": "end"}, rank)
    for p in pending:
        p.wait()
    ctx.progress.phase("final training (learners)", final, "the learners finish their in situ training")
    while (message := fields.recv(rank=0)).meta.get("kind") == "progress":  # the learners' final training
        done, total, loss = (message.value[k] for k in ("done", "total", "loss"))
        ctx.progress.update(done, message=f"loss {loss:.3g}")
        if verbose:
            _progress(done, total, loss)
    ctx.progress.phase("evaluation", 0, "held-out steps, the other flow, SZ3 and ZFP at the same bytes")
    evaluation = fields.recv_tree(header=message)
    producer.timers["training"] = evaluation.pop("seconds_training")
    result = _finish(config, producer, evaluation, start, ranks=1 + fields.peer_size, verbose=verbose)
    ctx.progress.finish(f"held-out L2 error {result.metrics['l2_compressed']:.3g} -> "
                        f"{result.metrics['l2_restored']:.3g}")
    return result


def learn(ctx) -> dict:
    """Workflow module: train data-parallel on what has arrived while the simulation runs, then finish
    training; the first rank evaluates on the held-out steps and sends the evaluation back.

    Between iterations every rank takes what has arrived without waiting; then the ranks agree (one small
    allreduce) on whether to train and whether the data are complete, so their collectives never go out
    of step. Once complete they train the serial run's in situ budget (if not yet spent), then
    ``final_epochs``, in fewer iterations with more ranks (global batch). How many iterations fit while
    the simulation runs depends on timing, so coupled runs are not bitwise reproducible; the stored data
    are (they come from :func:`simulate` alone, as in the serial run).
    """
    config, verbose = _config(ctx.params)
    fields, comm = ctx.channel("fields"), ctx.comm
    lat, lon = fields.recv(rank=0).value, fields.recv(rank=0).value
    learner = _learner(config, lat, lon, comm=comm, seed=config.seed + 1000 * (comm.rank + 1), progress=ctx.progress)
    producer = _Producer(config)  # the plan of output steps (the solver's checks, ~0.1 s; nothing runs)
    _plan(ctx.progress, config, producer, comm.size, producer_rank=False)
    ctx.progress.phase("in situ training", _training_pairs(producer), "training pairs received")
    shape, n = (config.nlat, config.nlon), config.nlat * config.nlon
    held_out, other, ended, agreed = [], [], False, np.zeros(2)
    while True:
        while not ended and (got := fields.poll(rank=0)) is not None:
            if got.meta.get("kind") not in ("pair", "held", "other"):
                ended = True  # the end message comes after every step
                continue
            buf = got.value
            compressed, original = buf[3:3 + n].reshape(shape), buf[3 + n:].reshape(shape)
            if got.meta["kind"] == "pair":
                learner.add(compressed, original, buf[2])
                ctx.progress.update(len(learner.inputs), message=f"{len(learner.losses)} iterations")
            elif got.meta["kind"] == "other":
                other.append((buf[1], original, compressed, buf[2]))
            else:
                held_out.append((buf[1], original, compressed, buf[2]))
        agreed[:] = (len(learner.inputs), ended)
        comm.allreduce_(agreed, "min")  # the fewest pairs any rank has; whether all have every step
        if agreed[1]:
            break
        if agreed[0] == 0:
            time.sleep(_POLL_S)
            continue
        learner.train(1)
    in_situ = math.ceil(config.iters_per_output * len(learner.inputs) / comm.size)
    learner.train(max(0, in_situ - len(learner.losses)))  # the serial run's in situ budget, if not yet spent
    root = comm.rank == 0

    def tell(done, total, loss):
        fields.send({"done": done, "total": total, "loss": loss}, rank=0, meta={"kind": "progress"})
    learner.train_final(progress=tell if root else None)
    if root:
        ctx.progress.phase("evaluation", 0, "held-out steps and the other flow")
        evaluation = learner.evaluate(held_out, np.cos(np.radians(lat))[:, None], other)
        fields.send_tree({**evaluation, "seconds_training": learner.seconds}, rank=0)
    ctx.progress.finish(f"{len(learner.losses)} training iterations")
    return {"iterations": len(learner.losses)}
