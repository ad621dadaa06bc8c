"""Alloy surrogate: a neural energy model learned by active learning inside lattice Monte Carlo, and T_c.

The temperature dependence of an alloy's order needs Monte Carlo over very many configurations, each
energy from an expensive reference (first principles; here ASE's EMT or an exact pair model). A neural
surrogate (:mod:`.alloy_model`) trained on a few hundred reference energies replaces it inside the Monte
Carlo, and active learning chooses those few hundred: the Monte Carlo explores with the surrogate, the
configurations its ensemble is least sure about (plus random ones, which measure its error honestly) go
to the reference, and the surrogate retrains -- until its error on freshly sampled configurations is
below ``tolerance``. The final surrogate runs temperature scans at several sizes; T_c is where the
Binder cumulants of the order parameter cross: read off the scan's grid first, then located by a second,
narrow scan around it whose cumulants are reweighted between its temperatures (multiple histograms), as
:func:`hpcai.sim.alloy.critical_temperature` does. The first-order fcc orderings (L1_0, L1_2) are located
by the largest cell's reweighted heat-capacity peak instead.

It runs as a workflow (:func:`workflow`), on one rank in this process or on many: ``seed`` (random
starting configurations), then a loop of ``label`` (the reference, rows spread over the module's ranks)
-> ``learn`` (one rank) -> ``explore`` (Monte Carlo chains spread over ranks), then ``scan``. Data move
through the tuple space. ``selection="random"`` replaces the uncertain picks by random ones of the visited
configurations: the baseline active learning must beat (fewer reference calls for the same error);
``selection="structures"`` labels random configurations at the composition instead, as is done without
active learning (the error the loop measures is then on those).

References: Liu et al. (2019), Comput. Mater. Sci. 166, 245 (pair models with active learning from Monte
Carlo samples); Lakshminarayanan et al. (2017) (deep ensembles); Landau & Binder, "A Guide to Monte Carlo
Simulations in Statistical Physics" (Binder cumulant crossings).
"""
from __future__ import annotations

import dataclasses
import os
import time

import numpy as np

from .. import amp, checks, io, optim
from ..sim import alloy
from .alloy_model import Surrogate
from .fields import check_fields
from .result import Result

REFERENCES = ("pair", "emt")
REFINE_WIDTH = 0.1  # the second scan spans T_c +- 10 % of the first estimate ...
REFINE_MOVES = 2    # ... and moves by 10 % (twice at most) towards the transition if it is not inside
FIRST_ORDER = ("L1_0", "L1_2")  # fcc orderings: first-order, located by the heat-capacity peak of the largest L
SELECTIONS = ("active", "random", "structures")
STRUCTURE = {"sc": "B2", "bcc": "B2"}  # fcc: L1_2 off 50/50, L1_0 at it


# what each metric of the Result is: {name: (group, unit)}
METRICS = {"tc": ("critical temperature", "K"), "tc_error": ("critical temperature", "K"),
           "tc_reference": ("critical temperature", "K"), "tc_reference_error": ("critical temperature", "K"),
           "tc_first": ("critical temperature", "K"), "tc_reference_first": ("critical temperature", "K"),
           "tc_method": ("critical temperature", ""), "tc_reference_method": ("critical temperature", ""),
           "tc_exact": ("critical temperature", "K"), "final_mae_mev": ("error", "meV/atom"),
           "train_mae_mev": ("error", "meV/atom"), "reference_calls": ("cost", "calls"), "rounds": ("cost", "rounds"),
           "seconds_scan": ("timing", "s"), "structure": ("run", ""), "sizes": ("run", "L")}


@dataclasses.dataclass
class Config:
    """The alloy, its reference energy, the active-learning loop and the temperature scan."""

    lattice: str = dataclasses.field(default="bcc", metadata={
        "choices": tuple(alloy.LATTICES), "help": "the crystal lattice the two species share: simple cubic, "
        "body-centred (orders as B2, like CuZn brass) or face-centred cubic"})
    size: int = dataclasses.field(default=4, metadata={
        "low": 2, "high": 32, "unit": "cells", "help": "L of the training cells and of the exploring Monte Carlo "
        "(L^3 unit cells); larger samples more of the order but each reference energy costs more"})
    elements: str = dataclasses.field(default="Cu,Zn", metadata={
        "help": "species 0 and 1, comma-separated chemical symbols (EMT knows Al, Cu, Ag, Au, Ni, Pd, Pt)"})
    composition: float = dataclasses.field(default=0.5, metadata={
        "low": 0.0, "low_open": True, "high": 1.0, "high_open": True,
        "help": "fraction of sites taken by the first element (0.5: equiatomic)"})
    reference: str = dataclasses.field(default="pair", metadata={
        "choices": REFERENCES, "help": "the 'expensive' energy the surrogate learns: pair, an exact nearest-"
        "neighbour pair model (fast, known T_c), or emt, ASE's effective-medium theory (needs ase)"})
    pair_v: float = dataclasses.field(default=0.04, metadata={
        "low": 0.0, "low_open": True, "high": 10.0, "unit": "eV",
        "help": "the pair model's ordering energy V = e_AA + e_BB - 2 e_AB (> 0 orders; bcc T_c ~ 737 K at "
        "0.04 eV, proportional to V)"})
    t_min: float = dataclasses.field(default=450.0, metadata={
        "low": 0.0, "low_open": True, "high": 100_000.0, "unit": "K",
        "help": "lowest temperature of the exploration and the T_c scan (well below the expected T_c)"})
    t_max: float = dataclasses.field(default=1050.0, metadata={
        "low": 0.0, "low_open": True, "high": 100_000.0, "unit": "K",
        "help": "highest temperature, above t_min (well above the expected T_c)"})
    temperatures: int = dataclasses.field(default=8, metadata={
        "low": 2, "high": 256, "help": "points of the temperature grid between t_min and t_max; more resolve "
        "the transition better"})
    initial: int = dataclasses.field(default=40, metadata={
        "low": 2, "high": 100_000, "unit": "configurations",
        "help": "random configurations labelled by the reference before the first training"})
    per_round: int = dataclasses.field(default=24, metadata={
        "low": 1, "high": 100_000, "unit": "configurations",
        "help": "configurations sent to the reference in each active-learning round"})
    random_fraction: float = dataclasses.field(default=0.33, metadata={
        "low": 0.0, "low_open": True, "high": 1.0,
        "help": "of them, the share picked at random rather than by the ensemble's doubt (they also measure "
        "the surrogate's error honestly)"})
    rounds: int = dataclasses.field(default=6, metadata={
        "low": 1, "high": 1000, "help": "at most this many rounds of label -> learn -> explore"})
    tolerance: float = dataclasses.field(default=1.0, metadata={
        "low": 0.0, "low_open": True, "high": 1e6, "unit": "meV/atom",
        "help": "stop once the surrogate's error on fresh Monte Carlo samples is below this"})
    selection: str = dataclasses.field(default="active", metadata={
        "choices": SELECTIONS, "help": "how configurations are chosen for labelling: active (where the "
        "ensemble disagrees most), random (random ones of those the Monte Carlo visited: the baseline active "
        "learning must beat) or structures (random configurations at the composition, as the initial ones, "
        "with no Monte Carlo: what is done without active learning)"})
    shells: int = dataclasses.field(default=1, metadata={
        "low": 1, "high": 8, "help": "neighbour shells the surrogate sees (a cluster expansion's pair range)"})
    triplets: int = dataclasses.field(default=0, metadata={
        "low": 0, "high": 8, "help": "also show the surrogate, per site, which of its neighbours in the first "
        "`triplets` shells are neighbours of each other and of which species (three-site clusters, as a "
        "cluster expansion has them); 0: species counts per shell only. At most `shells`; 1 with 4 shells lowers "
        "the held-out error on EMT Cu3Au below a CLEASE cluster expansion's, but a site then has too many "
        "environments for the look-up table, so each Monte Carlo trial gathers features and runs the networks"})
    ensemble: int = dataclasses.field(default=4, metadata={
        "low": 1, "high": 64, "help": "networks in the ensemble; their spread is the uncertainty that "
        "active learning follows"})
    hidden: int = dataclasses.field(default=16, metadata={
        "low": 1, "high": 4096, "help": "hidden width of each network"})
    epochs: int = dataclasses.field(default=150, metadata={
        "low": 1, "high": 100_000, "help": "training passes over the labelled set in each round"})
    lr: float = dataclasses.field(default=0.01, metadata={
        "low": 0.0, "low_open": True, "high": 100.0, "help": "learning rate of the surrogate's training"})
    optimizer: str = dataclasses.field(default="adam", metadata={
        "choices": tuple(optim.OPTIMIZERS), "help": "the surrogate's update rule (adam is a robust default)"})
    precision: str = dataclasses.field(default="fp32", metadata={
        "choices": tuple(amp.POLICIES), "help": "number format of the surrogate's arithmetic (fp16/bf16 and "
        "mixed-* emulate tensor-core half precision)"})
    explore_sweeps: int = dataclasses.field(default=30, metadata={
        "low": 1, "high": 1_000_000, "unit": "sweeps",
        "help": "Monte Carlo sweeps (a sweep: one trial swap per site) per round of exploration"})
    tc_sizes: str = dataclasses.field(default="4,6", metadata={
        "help": "the L (2 to 32) of the scans whose Binder cumulants cross at T_c, comma-separated; larger L "
        "locate T_c better and cost more"})
    scan_sweeps: int = dataclasses.field(default=300, metadata={
        "low": 8, "high": 1_000_000, "unit": "sweeps",
        "help": "Monte Carlo sweeps per temperature of the T_c scan; more: smoother curves"})
    refine: int = dataclasses.field(default=9, metadata={
        "low": 0, "high": 256, "help": "temperatures of a second scan, +-10 % around the first scan's estimate of "
        "T_c, whose Binder cumulants (first-order fcc orderings: the largest cell's heat capacity) are reweighted "
        "between temperatures (multiple histograms) to locate T_c; 0: the first scan's estimate only (read off "
        "its grid: good to about half a grid step)"})
    replicas: int = dataclasses.field(default=2, metadata={
        "low": 1, "high": 64, "help": "chains per temperature (replica exchange along temperature)"})
    seed: int = dataclasses.field(default=0, metadata={
        "low": 0, "high": 2**32 - 1, "help": "random seed of the configurations, the Monte Carlo and the networks"})
    output_dir: str | None = dataclasses.field(default=None, metadata={
        "path": True, "help": "folder for metrics, data and figures (None: nothing written)"})

    def validate(self) -> "Config":
        """Check every field, raising a ValueError that names it."""
        check_fields(self)
        if self.triplets > self.shells:
            raise ValueError(f"triplets: expected at most shells = {self.shells} (the neighbour pairs come from the "
                             f"shells the surrogate sees), got {self.triplets}")
        if self.t_max <= self.t_min:
            raise ValueError(f"t_max: expected a temperature above t_min = {self.t_min:g} K, got {self.t_max!r}")
        if 0 < self.refine < 3:
            raise ValueError(f"refine: expected 0 (no second scan) or at least 3 temperatures, got {self.refine}")
        self.element_list()
        sizes = self.sizes()
        for L in (self.size, *sizes):
            alloy.species_counts(len(alloy.LATTICES[self.lattice]) * L ** 3, self.fractions())
            self.cell(L, self.shells)  # a cell too small for the shells is refused, naming size
        if self.reference == "emt":
            alloy.AseReference(self.cell(), self.element_list())  # unknown elements and a missing ASE fail now
        return self

    def element_list(self) -> tuple:
        names = tuple(e.strip() for e in self.elements.split(","))
        if len(names) != 2 or not all(names) or names[0] == names[1]:
            raise ValueError(f"elements: expected two different chemical symbols separated by a comma, "
                             f"got {self.elements!r}")
        return names

    def sizes(self) -> tuple:
        try:
            sizes = tuple(int(s) for s in self.tc_sizes.split(","))
        except ValueError:
            sizes = ()
        if len(sizes) < 2 or len(set(sizes)) != len(sizes) or min(sizes) < 2 or max(sizes) > 32:
            raise ValueError(f"tc_sizes: expected two or more different sizes 2 <= L <= 32, e.g. '4,6', "
                             f"got {self.tc_sizes!r}")
        return tuple(sorted(sizes))

    def fractions(self) -> tuple:
        return (self.composition, 1.0 - self.composition)

    def structure(self) -> str:
        if self.lattice == "fcc":
            return "L1_0" if abs(self.composition - 0.5) < 1e-9 else "L1_2"
        return STRUCTURE[self.lattice]

    def kT(self) -> np.ndarray:
        """The temperature grid as k_B T in eV."""
        return alloy.KB_EV * np.linspace(self.t_min, self.t_max, self.temperatures)

    def cell(self, size: int | None = None, shells: int = 1) -> alloy.Lattice:
        return alloy.Lattice(self.lattice, self.size if size is None else size, shells)

    def reference_model(self, size: int | None = None):
        """The reference energy on cells of ``size``: the exact pair model, or EMT through ASE."""
        lattice = self.cell(size)
        if self.reference == "pair":
            return alloy.PairModel.from_bonds(lattice, 0.0, 0.0, -self.pair_v / 2)
        return alloy.AseReference(lattice, self.element_list())

    def surrogate(self, size: int | None = None) -> Surrogate:
        return Surrogate(self.cell(size, self.shells), 2, self.hidden, self.ensemble, self.seed, self.precision,
                         self.triplets)


def build_model(config: Config):
    """One network of the ensemble (what the tests gradient-check end to end)."""
    return config.surrogate().nets[0]


def example_batch(config: Config, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` configurations as the network's inputs: (n, sites, inputs)."""
    surrogate = config.surrogate()
    occupation = alloy.random_occupation(surrogate.lattice, config.fractions(), (n,), seed=rng)
    return surrogate.inputs(occupation)


# -- the workflow --------------------------------------------------------------------------------------------
def workflow(config: Config, ranks: int, verbose: int = 1) -> tuple[dict, str]:
    """The run on ``ranks`` ranks (one serves the tuple space): (control, the module whose value is the Result)."""
    config.validate()
    ranks = checks.integer("ranks", ranks, 1)
    workers = max(1, ranks - 1)
    params = {"config": dataclasses.asdict(config), "verbose": int(verbose)}
    entry = f"{__name__}:"
    module = lambda name, n=1, after=(): {"entry": entry + name, "ranks": n, "params": params,  # noqa: E731
                                          **({"after": list(after)} if after else {})}
    return ({"workflow": {"name": "alloy_surrogate"}, "tuple_space": {},
             "modules": {"seed": module("seed"), "label": module("label", workers, ["seed"]),
                         "learn": module("learn", 1, ["label"]), "explore": module("explore", workers, ["learn"]),
                         "scan": module("scan", workers, ["explore"])},
             "loop": {"modules": ["label", "learn", "explore"], "until": "learn", "max_iterations": config.rounds}},
            "scan")


def _config(ctx) -> Config:
    return Config(**ctx.params["config"])


def _rows(occupation: np.ndarray, energies: np.ndarray) -> np.ndarray:
    """Configurations and their energies as one float64 array [energy, species...] (exact for small ints)."""
    return np.concatenate([energies[:, None], occupation.astype(np.float64)], axis=1)


def _split(rows: np.ndarray) -> tuple:
    return rows[:, 1:].astype(alloy.lattice.SPECIES_DTYPE), rows[:, 0].copy()


def seed(ctx) -> dict:
    """Before the loop: ``initial`` random configurations at the composition, to be labelled first."""
    config = _config(ctx)
    lattice = config.cell()
    occupation = alloy.random_occupation(lattice, config.fractions(), (config.initial,), seed=config.seed)
    ctx.space.put("pending/random", occupation.astype(np.float64))
    ctx.space.put("pending/uncertain", np.zeros((0, lattice.n_sites)))
    ctx.space.put("curve", {"calls": [], "mae": [], "rmse": []})
    return {"initial": config.initial}


def label(ctx) -> dict:
    """The reference energies of the pending configurations, rows spread over this module's ranks."""
    config = _config(ctx)
    reference = config.reference_model()
    labelled = {}
    for kind in ("random", "uncertain"):
        pending = ctx.space.read(f"pending/{kind}", timeout=600)[1].astype(alloy.lattice.SPECIES_DTYPE)
        energies = np.zeros(len(pending))
        mine = slice(ctx.rank, None, ctx.size)
        ctx.progress.phase(f"round {ctx.iteration}: reference energies ({kind})", len(pending[mine]))
        for k in range(ctx.rank, len(pending), ctx.size):
            energies[k] = reference.energies(pending[k:k + 1])[0]
            ctx.progress.update()
        ctx.comm.allreduce_(energies, "sum")  # every row was computed by exactly one rank
        labelled[kind] = _rows(pending, energies)
    ctx.comm.barrier(poll=True)              # every rank has read the pending rows
    if ctx.rank == 0:
        for kind, rows in labelled.items():
            ctx.space.get(f"pending/{kind}")
            ctx.space.put(f"labelled/{kind}", rows)
    return {"labelled": sum(len(r) for r in labelled.values())}


def learn(ctx) -> dict:
    """Measure the current surrogate on the fresh random picks, add the labelled rows, retrain, publish it."""
    config = _config(ctx)
    surrogate = config.surrogate()
    fresh, uncertain = ctx.space.get("labelled/random")[1], ctx.space.get("labelled/uncertain")[1]
    old = ctx.space.try_get("data")
    data = np.concatenate([old[1], fresh, uncertain]) if old is not None else np.concatenate([fresh, uncertain])
    curve = ctx.space.get("curve")[1]
    error = None
    state = ctx.space.try_get("surrogate")
    if state is not None:
        surrogate.load_vector(state[1])     # training continues from the previous round's weights
    if state is not None and len(fresh):    # the previous round's surrogate on configurations it never saw
        occupation, energies = _split(fresh)
        diff = (surrogate.energies(occupation) - energies) / surrogate.lattice.n_sites * 1000
        error = float(np.abs(diff).mean())
        curve["calls"].append(len(data) - len(fresh) - len(uncertain))
        curve["mae"].append(error)
        curve["rmse"].append(float(np.sqrt((diff ** 2).mean())))
    ctx.progress.phase(f"round {ctx.iteration}: training {config.ensemble} networks on {len(data)} energies", 1)
    surrogate.fit(*_split(data), epochs=config.epochs, lr=config.lr, optimizer=config.optimizer)
    ctx.progress.update()
    done = error is not None and error < config.tolerance
    ctx.space.try_get("status")
    kept = ctx.space.try_get("rounds")     # every round's weights, one row each (an array: JSON would outgrow
    rounds = surrogate.vector()[None]      # the space's limit on a value for large surrogates)
    rounds = np.concatenate([kept[1], rounds]) if kept is not None else rounds
    for key, value in (("data", data), ("curve", curve), ("surrogate", surrogate.vector()), ("rounds", rounds),
                       ("status", {"done": done, "round": ctx.iteration})):
        ctx.space.put(key, value)
    if ctx.params["verbose"]:
        said = f"; error on fresh samples {error:.3f} meV/atom" if error is not None else ""
        print(f"round {ctx.iteration}: {len(data)} reference energies{said}", flush=True)
    return {"done": done, "reference_calls": len(data), "error": error}


def explore(ctx) -> dict:
    """Monte Carlo with the surrogate over the temperature grid; picks the next configurations to label."""
    config = _config(ctx)
    if ctx.space.read("status")[1]["done"]:
        return {"picked": 0}
    # a stream of its own per round and rank (a spawn key: numpy's default_rng([seed, 0, 0]) is default_rng(seed),
    # the initial configurations' stream)
    rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(ctx.iteration, ctx.rank)))
    if config.selection == "structures":   # no Monte Carlo: random configurations, as the initial ones
        if ctx.rank == 0:
            chosen = alloy.random_occupation(config.cell(), config.fractions(), (config.per_round,), seed=rng)
            ctx.space.put("pending/uncertain", np.zeros((0, chosen.shape[1])))
            ctx.space.put("pending/random", chosen.astype(np.float64))
        return {"picked": config.per_round, "visited": 0}
    surrogate = config.surrogate()
    surrogate.load_vector(ctx.space.read("surrogate")[1])
    kT = config.kT()
    start = alloy.random_occupation(surrogate.lattice, config.fractions(), (config.replicas, len(kT)), seed=rng)
    mc = alloy.MonteCarlo(surrogate.features, start, np.broadcast_to(kT, (config.replicas, len(kT))), seed=rng)
    ctx.progress.phase(f"round {ctx.iteration}: Monte Carlo with the surrogate", config.explore_sweeps)
    visited = []
    for sweep in range(config.explore_sweeps):
        mc.sweep(1)
        if sweep >= config.explore_sweeps // 3:  # after a first relaxation from the random start
            visited.append(mc.occupation.reshape(-1, surrogate.lattice.n_sites).copy())
        ctx.progress.update()
    visited = np.unique(np.concatenate(visited), axis=0)
    n_random = max(1, round(config.per_round * config.random_fraction)) if config.selection == "active" \
        else config.per_round
    n_uncertain = config.per_round - n_random
    order = rng.permutation(len(visited))
    random_pick = visited[order[:n_random]]
    spread = surrogate.spread(visited[order[n_random:]]) if n_uncertain else np.zeros(0)
    most = np.argsort(-spread)[:n_uncertain]
    candidates = np.concatenate([visited[order[n_random:][most]], random_pick]).astype(np.float64)
    scores = np.concatenate([spread[most], np.full(len(random_pick), -1.0)])  # -1 marks a random pick
    # every rank offers the same number of rows; rank 0 keeps the globally most uncertain and random ones
    offer = np.zeros((config.per_round, 1 + surrogate.lattice.n_sites))
    offer[:len(candidates)] = np.concatenate([scores[:, None], candidates], axis=1)
    offer[len(candidates):, 0] = np.nan
    everyone = ctx.comm.allgather(offer).reshape(-1, offer.shape[1])
    everyone = everyone[~np.isnan(everyone[:, 0])]
    if ctx.rank == 0:
        uncertain = everyone[everyone[:, 0] >= 0]
        uncertain = uncertain[np.argsort(-uncertain[:, 0])][:n_uncertain, 1:]
        pool = everyone[everyone[:, 0] < 0, 1:]
        chosen = pool[rng.permutation(len(pool))[:n_random]]
        ctx.space.put("pending/uncertain", uncertain)
        ctx.space.put("pending/random", chosen)
    return {"picked": config.per_round, "visited": int(len(visited))}


def scan(ctx) -> Result:
    """The final surrogate's temperature scans at every size of ``tc_sizes`` (spread over the ranks), T_c from
    their Binder-cumulant crossing, refined by a second scan (:func:`_refine`); with the pair reference, the
    same scans on it and the exact Ising T_c."""
    config, start = _config(ctx), time.perf_counter()
    state, data = ctx.space.read("surrogate")[1], ctx.space.read("data")[1]
    curve, rounds = ctx.space.read("curve")[1], ctx.space.read("rounds")[1]
    sizes, kT = config.sizes(), config.kT()
    jobs = [(L, model) for L in sizes for model in (("surrogate", "reference") if config.reference == "pair"
                                                     else ("surrogate",))]
    ctx.progress.phase("temperature scans", len(jobs[ctx.rank::ctx.size]))
    mine = {}
    for k, (L, which) in enumerate(jobs):
        if k % ctx.size != ctx.rank:
            continue
        model = config.surrogate(L).load_vector(state).features if which == "surrogate" else \
            config.reference_model(L)
        found = alloy.temperature_scan(model, kT, composition=config.fractions(), structure=config.structure(),
                                       replicas=config.replicas, sweeps=config.scan_sweeps,
                                       seed=[config.seed, L, which == "reference"])
        mine[k] = np.stack([found.energy.value, found.energy.error, found.heat_capacity.value,
                            found.heat_capacity.error, found.order.value, found.order.error, found.binder.value,
                            found.binder.error, found.sro.value[:, 0, 0, 1]])
        ctx.progress.update()
    table = np.zeros((len(jobs), 9, len(kT)))
    for k, rows in mine.items():
        table[k] = rows
    ctx.comm.allreduce_(table, "sum")        # each job was run by exactly one rank
    models = [which for which in ("surrogate", "reference") if any(w == which for _, w in jobs)]
    first_order = config.structure() in FIRST_ORDER
    first = {which: _grid_estimate(kT, np.stack([table[k] for k, (_, w) in enumerate(jobs) if w == which]),
                                   first_order) for which in models}
    found = _refine(ctx, config, state, first) if config.refine else {}
    result = _result(config, kT, sizes, jobs, table, data, state, curve, rounds, first, found)
    result.metrics["seconds_scan"] = time.perf_counter() - start
    if ctx.rank == 0 and config.output_dir:
        _write(config, result, data)
    if ctx.params["verbose"] and ctx.rank == 0:
        m = result.metrics
        exact = f" (exact Ising {m['tc_exact']:.0f} K)" if "tc_exact" in m else ""
        print(f"T_c = {m['tc']:.0f} +- {m['tc_error']:.0f} K from the surrogate{exact}, after {m['reference_calls']} "
              f"reference energies; surrogate error {m['final_mae_mev']:.3g} meV/atom", flush=True)
    ctx.progress.finish(f"T_c {result.metrics['tc']:.0f} K")
    return result


def _grid_estimate(kT, rows, first_order: bool = False) -> tuple:
    """T_c (K) and its resolution from one model's first scan (``rows``: one row block per size, ascending).
    A continuous transition: where the Binder cumulant of the largest size falls below the next one's on the
    grid, linearly interpolated, at the fall nearest the largest size's heat-capacity peak (far above T_c
    both cumulants are near 0 and cross by noise; a fit through the whole grid is pulled away by its flat
    ends). A first-order one (or no fall on the grid): that heat-capacity peak."""
    d, peak = rows[-1, 6] - rows[-2, 6], kT[np.argmax(rows[-1, 2])]
    falls = np.flatnonzero((d[:-1] > 0) & (d[1:] <= 0))
    if first_order or not falls.size:       # (the grid has at least 2 temperatures: Config.temperatures)
        return float(peak / alloy.KB_EV), float(np.diff(kT).max() / 2 / alloy.KB_EV)
    i = falls[np.argmin(abs(kT[falls] + kT[falls + 1] - 2 * peak))]
    tc = kT[i] + (kT[i + 1] - kT[i]) * d[i] / (d[i] - d[i + 1])
    return float(tc / alloy.KB_EV), float((kT[i + 1] - kT[i]) / 2 / alloy.KB_EV)


def _refine(ctx, config, state, first: dict) -> dict:
    """Per model, T_c (K) and its jackknife error from a second scan of ``refine`` temperatures around the
    first estimate, reweighted between them (multiple histograms): where the Binder cumulants of the sizes
    cross (:func:`hpcai.sim.alloy.critical_temperature`), or for a first-order transition the largest size's
    heat-capacity peak (:func:`hpcai.sim.alloy.transition_temperatures`); nan where it is not resolved. A
    window the transition lies outside of moves towards it. One model's sizes run on one rank (the
    reweighting's jackknife needs them together)."""
    first_order = config.structure() in FIRST_ORDER
    sizes = config.sizes()[-1:] if first_order else config.sizes()
    found = np.zeros((len(first), 2))
    for k, (which, (tc, _)) in enumerate(first.items()):
        if k % ctx.size != ctx.rank:
            continue
        found[k] = np.nan
        for attempt in range(REFINE_MOVES + 1):
            grid = tc * alloy.KB_EV * np.linspace(1 - REFINE_WIDTH, 1 + REFINE_WIDTH, config.refine)
            scans = [alloy.temperature_scan(config.surrogate(L).load_vector(state).features if which == "surrogate"
                                            else config.reference_model(L), grid, composition=config.fractions(),
                                            structure=config.structure(), replicas=config.replicas,
                                            sweeps=config.scan_sweeps, seed=[config.seed, L, k, attempt + 1])
                     for L in sizes]
            move = _located(scans, grid, first_order, found[k])
            if not move:
                break
            tc *= 1 + move * REFINE_WIDTH
    ctx.comm.allreduce_(found, "sum")       # each model was refined by exactly one rank
    return {which: (float(tc), float(error)) for which, (tc, error) in zip(first, found)}


def _located(scans, grid, first_order: bool, out) -> int:
    """Write T_c and its error (K) into ``out`` if the second scan locates it; else the way to move the
    window: +1 (the transition lies above), -1 (below) or 0 (inside but not resolved: give up)."""
    if first_order:
        peak = alloy.transition_temperatures(scans[-1])["heat_capacity_peak"]
        edge = (grid[-1] - grid[0]) / (len(grid) - 1) / 2      # half a step of the scan
        if peak.value > grid[-1] - edge or peak.value < grid[0] + edge:
            return 1 if peak.value > grid[-1] - edge else -1
        out[:] = peak.value / alloy.KB_EV, peak.error / alloy.KB_EV
        return 0
    try:
        crossing = alloy.critical_temperature(scans)
    except ValueError:                      # no falling crossing in the window, or one the samples lose
        d = scans[-1].binder.value - scans[-2].binder.value     # > 0: the largest size is the more ordered
        return 1 if d[-1] > 0 else -1 if d[0] < 0 else 0
    out[:] = crossing.tc / alloy.KB_EV, crossing.error / alloy.KB_EV
    return 0


def _tc_metrics(name: str, first: tuple, found: tuple | None, config) -> dict:
    """T_c from the reweighted second scan where it was resolved, else the first scan's grid estimate; the
    method says which."""
    refined = found is not None and np.isfinite(found[0])
    tc, error = found if refined else first
    if not refined:
        method = "grid"
    elif config.structure() in FIRST_ORDER:
        method = f"heat-capacity peak, L={config.sizes()[-1]}"
    else:
        method = "Binder crossing"
    return {name: tc, f"{name}_error": error, f"{name}_first": first[0], f"{name}_method": method}


def _result(config, kT, sizes, jobs, table, data, state, curve, rounds, first, found) -> Result:
    occupation, energies = _split(data)
    fitted = config.surrogate().load_vector(state)
    predicted = fitted.energies(occupation)
    n = fitted.lattice.n_sites
    metrics = {**_tc_metrics("tc", first["surrogate"], found.get("surrogate"), config),
               "reference_calls": int(len(data)),
               "rounds": len(curve["mae"]) + 1, "final_mae_mev": curve["mae"][-1] if curve["mae"] else float("nan"),
               "train_mae_mev": float(np.abs(predicted - energies).mean() / n * 1000),
               "structure": config.structure(), "sizes": list(sizes)}
    arrays = {"temperature_k": kT / alloy.KB_EV, "learning_calls": np.array(curve["calls"], float),
              "learning_mae_mev": np.array(curve["mae"]), "learning_rmse_mev": np.array(curve["rmse"]),
              "parity_reference_ev_per_atom": energies / n, "parity_surrogate_ev_per_atom": predicted / n,
              "surrogate_weights": np.asarray(state, np.float64),  # Surrogate(...).load_vector() takes it
              # every round's surrogate and the reference energies it was trained on: its learning curve on
              # any test set of the user's (the benchmark's held-out Monte Carlo samples)
              # (round k's surrogate, trained on calls[k] energies, is the one round k + 1 measured)
              "round_training_calls": np.array(curve["calls"] + [len(data)], float),
              "round_surrogate_weights": np.asarray(rounds, np.float64)}
    names = ("energy", "energy_error", "heat_capacity", "heat_capacity_error", "order", "order_error", "binder",
             "binder_error", "sro1")
    for k, (L, which) in enumerate(jobs):
        for name, row in zip(names, table[k]):
            arrays[f"{which}_L{L}_{name}"] = row
    if config.reference == "pair":
        metrics.update(_tc_metrics("tc_reference", first["reference"], found.get("reference"), config))
        # the exact Ising T_c holds on the bipartite lattices at 50/50 only (the Ising model in zero field)
        if config.lattice in ("sc", "bcc") and config.composition == 0.5:
            exact = alloy.ising_critical_temperature(config.reference_model(sizes[0]))
            metrics["tc_exact"] = exact / alloy.KB_EV
    return Result(metrics, arrays)


def _write(config: Config, result: Result, data: np.ndarray) -> None:
    """Scans and learning curve as HDF5 (xarray reads it), sampled configurations as extended XYZ, figures."""
    out = config.output_dir
    os.makedirs(out, exist_ok=True)
    result.files["data"] = _write_h5(os.path.join(out, "alloy.h5"), config, result)
    occupation, energies = _split(data)
    result.files["configurations"] = _write_xyz(os.path.join(out, "configurations.xyz"), config, occupation, energies)
    from . import alloy_plots
    result.figures.update(alloy_plots.save_figures(result, out))
    result.files["metrics"] = os.path.join(out, "metrics.json")
    io.write_json(result.files["metrics"], {"config": dataclasses.asdict(config), "metrics": result.metrics})


def _write_h5(path, config, result) -> str:
    import h5py

    def write(tmp):
        with h5py.File(tmp, "w") as f:
            t = f.create_dataset("temperature", data=result.arrays["temperature_k"])
            t.attrs["units"] = "K"
            t.make_scale("temperature")
            for name, values in result.arrays.items():
                if name.startswith(("surrogate_L", "reference_L")):
                    d = f.create_dataset(name, data=values)
                    d.dims[0].attach_scale(t)
            r = f.create_dataset("round_reference_calls", data=result.arrays["learning_calls"])
            r.make_scale("round_reference_calls")
            for name in ("learning_mae_mev", "learning_rmse_mev"):
                d = f.create_dataset(name, data=result.arrays[name])
                d.attrs["units"] = "meV/atom"
                d.dims[0].attach_scale(r)
            f.attrs.update({k: v for k, v in result.metrics.items() if isinstance(v, (int, float, str))})
            f.attrs["elements"] = config.elements
    io.atomic_write(path, write)
    return path


def _write_xyz(path, config, occupation, energies) -> str:
    """The labelled configurations with their reference energies, as extended XYZ (``ase.io.read`` reads it)."""
    import ase.io
    lattice = config.cell()
    constant = alloy.vegard_lattice_constant(config.lattice, config.element_list(), config.fractions()) \
        if config.reference == "emt" else 1.0
    frames = alloy.to_atoms(lattice, occupation, config.element_list(), constant)
    for atoms, energy in zip(frames, energies):
        atoms.info["energy_ev"] = float(energy)

    def write(tmp):
        ase.io.write(tmp, frames, format="extxyz", parallel=False)  # ASE would broadcast over MPI's world
    io.atomic_write(path, write)
    return path
