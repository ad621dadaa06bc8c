"""CBED classification: a generated data set over all 7 crystal systems, hpcai against PyTorch on the same files.

  python benchmarks/cbed.py                # ~2,000 materials (all 230 groups x 9), about 15-25 minutes on 2 cores
  python benchmarks/cbed.py --quick        # 28 groups x 6 materials, about 2 minutes

1. Generation of the data set (ORNL layout, 128 x 128 detector here) with ``mpiexec -n 2``: the application's
   ``generate`` module on 2 ranks (the speed-up against 1 rank is ``benchmarks/cbed_sim.py``).
2. The same residual CNN (``hpcai.apps.cbed.build_model``) trained with hpcai and with PyTorch on the same
   preprocessed inputs (3 x 64 x 64), same optimizer (Adam), batch, epochs and initial weights; crystal-system
   top-1 on held-out *materials* (the test split), next to the majority class and a nearest-neighbour
   classifier on the same inputs. Goal: >= 80 % and >= 20 points above both; PyTorch within 2 points;
   hpcai's time per epoch <= 1.0x PyTorch's.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
from _common import blas_threads, find_mpiexec, report  # noqa: E402

from hpcai import optim  # noqa: E402
from hpcai.apps import cbed as app  # noqa: E402
from hpcai.sim import cbed  # noqa: E402
from hpcai.train import fit, predict  # noqa: E402


def generate(config, folder) -> float:
    """The data set written by the application's generate module on 2 MPI ranks; seconds."""
    import subprocess
    mpiexec = find_mpiexec()
    code = (f"from hpcai.apps import cbed; from hpcai.workflow import run_workflow; from hpcai.parallel import world\n"
            f"c = cbed.Config(**{dataclasses.asdict(config)!r})\n"
            f"control, _ = cbed.workflow(c, 2, 0)\n"
            f"control['modules'].pop('train'); control['modules']['generate']['params']['folder'] = {folder!r}\n"
            f"run_workflow(control, world(), 0)\n")
    t0 = time.perf_counter()
    command = [mpiexec, "-n", "2", sys.executable, "-c", code] if mpiexec else [sys.executable, "-c",
                                                                                 code.replace("world()", "None")]
    subprocess.run(command, check=True, cwd=ROOT)
    return time.perf_counter() - t0


def torch_twin(config, model):
    """``app.build_model(config)`` rebuilt in PyTorch, layer for layer, with ``model``'s initial weights."""
    import torch

    class Residual(torch.nn.Module):  # hpcai.nn.ResidualBlock: conv-BN-ReLU-conv-BN + shortcut, ReLU
        def __init__(self, cin, cout, stride=1):
            super().__init__()
            self.conv1 = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = torch.nn.BatchNorm2d(cout)
            self.conv2 = torch.nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = torch.nn.BatchNorm2d(cout)
            self.shortcut = torch.nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout \
                else torch.nn.Identity()

        def forward(self, x):
            return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + self.shortcut(x))

    w = config.width
    twin = torch.nn.Sequential(torch.nn.Conv2d(3, w, 3, padding=1), torch.nn.BatchNorm2d(w), torch.nn.ReLU(),
                               torch.nn.MaxPool2d(2), Residual(w, w), Residual(w, 2 * w, 2), Residual(2 * w, 4 * w, 2),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(4 * w, config.classes()))
    ours, theirs = model.parameters(), list(twin.parameters())
    assert [tuple(p.shape) for p in ours] == [tuple(p.shape) for p in theirs], "the two networks differ"
    with torch.no_grad():
        for p, q in zip(ours, theirs):
            q.copy_(torch.tensor(np.asarray(p.data)))
    return twin


def train_torch(model, x, y, config):
    import torch
    torch.manual_seed(config.seed)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    xt, yt = torch.tensor(x), torch.tensor(y)
    rng = np.random.default_rng(config.seed)
    seconds = []
    for _ in range(config.epochs):
        t0 = time.perf_counter()
        model.train()
        for idx in np.array_split(rng.permutation(len(y)), max(1, len(y) // config.batch_size)):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
        seconds.append(time.perf_counter() - t0)
    return seconds


def train(framework: str, folder: str, config) -> dict:
    """Train ``framework``'s network on the arrays in ``folder``; top-1 on the test split and seconds per epoch.
    Runs in a process of its own, so the two frameworks' idle threads never compete."""
    data = np.load(os.path.join(folder, "arrays.npz"), allow_pickle=False)
    x, y, xt, yt = data["x"], data["y"], data["xt"], data["yt"]
    model = app.build_model(config)
    if framework == "hpcai":
        history = fit(model, (x, y), "cross_entropy", optim.Adam(model.parameters(), lr=config.lr),
                      epochs=config.epochs, batch_size=config.batch_size, verbose=0, seed=config.seed)
        return {"accuracy": float((np.argmax(predict(model, xt), 1) == yt).mean()),
                "epoch_seconds": float(np.median(history["time"]))}
    import torch
    twin = torch_twin(config, model)
    seconds = train_torch(twin, x, y, config)
    twin.eval()
    with torch.no_grad():
        accuracy = float((twin(torch.tensor(xt)).argmax(1).numpy() == yt).mean())
    return {"accuracy": accuracy, "epoch_seconds": float(np.median(seconds))}


def main(quick: bool) -> None:
    import json
    import subprocess
    config = _config(quick)
    with tempfile.TemporaryDirectory() as folder:
        seconds = generate(config, folder)
        n = len(cbed.CBEDFiles(cbed.dataset_files(folder)))
        report("generation on 2 ranks (materials/s)", n / seconds, f"{n} materials in {seconds:.0f} s")
        x, g = app.load(cbed.dataset_files(folder, "train"), config)
        xt, gt = app.load(cbed.dataset_files(folder, "test"), config)
        y, yt = app.system_index(g), app.system_index(gt)
        np.savez(os.path.join(folder, "arrays.npz"), x=x, y=y, xt=xt, yt=yt)
        print(f"  train {len(y)} materials, test {len(yt)} (held-out materials); classes in train: "
              f"{np.bincount(y, minlength=7).tolist()}")
        majority = float((yt == np.bincount(y).argmax()).mean())
        flat, flat_t = x.reshape(len(x), -1), xt.reshape(len(xt), -1)
        nearest = y[np.argmin((flat_t ** 2).sum(1)[:, None] - 2 * flat_t @ flat.T + (flat ** 2).sum(1)[None], 1)]
        report("majority class, crystal-system top-1", majority)
        report("nearest neighbour, crystal-system top-1", float((nearest == yt).mean()))
        runs = {}
        for framework in ("hpcai", "torch"):
            done = subprocess.run([sys.executable, __file__, "--train", framework, folder] + (["--quick"] * quick),
                                  check=True, capture_output=True, text=True)
            runs[framework] = json.loads(done.stdout.strip().splitlines()[-1])
    for framework, name in (("hpcai", "hpcai"), ("torch", "PyTorch")):
        report(f"{name}, crystal-system top-1 on held-out materials", runs[framework]["accuracy"])
        report(f"time per epoch, {name} (s)", runs[framework]["epoch_seconds"])
    report("hpcai / PyTorch time per epoch", runs["hpcai"]["epoch_seconds"] / runs["torch"]["epoch_seconds"],
           "goal <= 1.0")


def _config(quick: bool):
    return app.Config(groups="per_system" if quick else "all", materials_per_group=6 if quick else 9,
                      pixels=128, input_size=64, width=16, epochs=8 if quick else 25, batch_size=32)


if __name__ == "__main__":
    quick = "--quick" in sys.argv[1:]
    if "--train" in sys.argv:
        at = sys.argv.index("--train")
        import json
        print(json.dumps(train(sys.argv[at + 1], sys.argv[at + 2], _config(quick))))
    else:
        print(f"numpy {np.__version__}; BLAS threads {blas_threads()}; cpus {os.cpu_count()}")
        main(quick)
