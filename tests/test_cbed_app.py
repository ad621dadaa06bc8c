"""The CBED application: generation and training as a workflow, in this process and under mpiexec; the files
in the ORNL layout; training again on existing files; the baselines; bad input."""
import dataclasses
import json
import os
import sys
import tempfile

import numpy as np
import pytest

pytest.importorskip("spglib")
pytest.importorskip("h5py")

from hpcai import nn, optim  # noqa: E402
from hpcai.autograd import Tensor  # noqa: E402
from hpcai.apps import cbed as app  # noqa: E402
from hpcai.runner import run_app  # noqa: E402
from hpcai.sim import cbed  # noqa: E402

from mpijob import MPIEXEC, mpirun  # noqa: E402

TINY = dict(materials_per_group=2, pixels=64, input_size=32, epochs=2, width=4, batch_size=16)


def test_system_index_matches_the_international_tables():
    groups = np.array([1, 2, 3, 15, 16, 74, 75, 142, 143, 167, 168, 194, 195, 230])
    assert list(app.system_index(groups)) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]
    assert {app.SYSTEMS[i] for i in app.system_index(app.PER_SYSTEM)} == set(app.SYSTEMS)  # all 7 systems


def test_baselines_on_a_case_worked_by_hand():
    """Stacks of constant value v (distance between two stacks: |v - w| times a constant)."""
    def stacks(values):
        return np.array(values, np.float32)[:, None, None, None] * np.ones((1, 3, 4, 4), np.float32)
    train_groups = np.array([225, 225, 194, 2])  # cubic, cubic, hexagonal, triclinic: cubic is the majority
    test_groups = np.array([221, 1, 225])  # cubic, triclinic, cubic
    got = app.baselines(stacks([0, 1, 2, 3]), train_groups, stacks([0.1, 2.9, 1.8]), test_groups)
    # nearest training stacks: 0 (225, cubic), 3 (2, triclinic), 2 (194, hexagonal)
    assert got == {"majority_system_accuracy": pytest.approx(2 / 3),
                   "nearest_neighbour_system_accuracy": pytest.approx(2 / 3),
                   "nearest_neighbour_group_accuracy": 0.0}
    with pytest.raises(ValueError, match="x_train, groups_train, x_test, groups_test: expected"):
        app.baselines(stacks([0, 1]), train_groups, stacks([0.1]), test_groups[:1])
    with pytest.raises(ValueError, match="x_test: expected stacks of the training shape"):
        app.baselines(stacks([0, 1, 2, 3]), train_groups, np.zeros((3, 3, 2, 2)), test_groups)


def test_learning_rate_schedule_is_pytorchs_cosine_annealing():
    config = app.Config(epochs=4, lr=0.01, width=2)
    opt = optim.Adam(app.build_model(config).parameters(), lr=config.lr)
    schedule = app.lr_schedule(config, opt)
    rates = [opt.param_groups[0]["lr"]]
    for _ in range(config.epochs):
        schedule.step()
        rates.append(opt.param_groups[0]["lr"])
    # torch.optim.lr_scheduler.CosineAnnealingLR, closed form: lr (1 + cos(pi e / T)) / 2
    np.testing.assert_allclose(rates, [0.01 * (1 + np.cos(np.pi * e / 4)) / 2 for e in range(5)], atol=1e-15)
    assert rates[-1] < 1e-15
    assert app.lr_schedule(app.Config(schedule="constant"), opt) is None


def test_generate_and_train_in_this_process(tmp_path):
    result = run_app("cbed", app.Config(**TINY, output_dir=str(tmp_path)), verbose=0)
    m = result.metrics
    assert m["train_materials"] + m["test_materials"] <= 2 * len(app.PER_SYSTEM) and m["test_materials"] > 0
    for key in ("system_accuracy", "majority_system_accuracy", "nearest_neighbour_system_accuracy", "test_top5"):
        assert 0.0 <= m[key] <= 1.0
    assert result.arrays["confusion"].sum() == m["test_materials"]
    assert result.arrays["examples"].shape == (7, 3, 32, 32)
    assert np.isfinite(m["final_train_loss"]) and len(result.arrays["loss"]) == TINY["epochs"]
    assert {"examples", "confusion", "per_class"} <= set(result.figures)
    # the files are in the ORNL layout and open with plain h5py
    h5py = pytest.importorskip("h5py")
    files = cbed.dataset_files(tmp_path / "data")
    assert {os.path.basename(f).split("_")[1] for f in files} >= {"train", "test"}
    with h5py.File(files[0], "r") as f:
        name = next(iter(f))
        assert f[name]["cbed_stack"].shape == (3, 64, 64) and f[name]["cbed_stack"].dtype == np.float32
        assert 1 <= int(f[name].attrs["space_group"]) <= 230 and f[name].attrs["energy_keV"] == 100.0
    assert json.loads((tmp_path / "metrics.json").read_text())["metrics"]["ranks"] == 1
    assert m["trained_per_epoch"] == m["train_materials"]

    # the same files again, as a user points the application at existing (e.g. ORNL's) files
    again = run_app("cbed", app.Config(**TINY, data_dir=str(tmp_path / "data"), target="space_group"),
                    verbose=0)
    assert again.metrics["train_materials"] == m["train_materials"] and again.metrics["target"] == "space_group"


def test_three_views_through_one_shared_network_average_its_logits(tmp_path):
    """``inputs="views"`` (ORNL's baseline): the logits are the mean of one network's logits for each zone axis
    alone, computed here view by view with the network's own trunk; and the application trains and evaluates with
    it."""
    config = app.Config(**TINY, inputs="views")
    model = app.build_model(config)
    assert isinstance(model, nn.ViewAverage) and model.trunk[0].weight.shape[1] == 1
    model.eval()                                     # batch norm on running statistics: each view alone is the same
    x = app.example_batch(config, 4, np.random.default_rng(1)).astype(np.float32)
    each = [model.trunk(Tensor(x[:, v:v + 1])).data for v in range(3)]
    np.testing.assert_allclose(model(Tensor(x)).data, np.mean(each, axis=0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="3 views on its axis 1"):
        model(Tensor(x[:, :2]))
    result = run_app("cbed", dataclasses.replace(config, output_dir=str(tmp_path)), verbose=0)
    assert np.isfinite(result.metrics["final_train_loss"]) and 0 <= result.metrics["system_accuracy"] <= 1


def test_training_learns_the_training_set(tmp_path, monkeypatch):
    """A network that cannot fit a few dozen materials would say nothing about held-out ones. Without an
    output folder the data set goes to a temporary folder, which the run removes."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    result = run_app("cbed", app.Config(materials_per_group=1, pixels=64, input_size=32, epochs=40, width=8,
                                batch_size=8, lr=3e-3), verbose=0)
    assert result.metrics["final_train_loss"] < 0.5 * np.log(7)
    assert result.metrics["trained_per_epoch"] == result.metrics["train_materials"]
    assert list(tmp_path.iterdir()) == []


def test_a_failed_generation_leaves_no_temporary_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def broken(items, folder, *args, **kwargs):
        os.makedirs(folder, exist_ok=True)
        open(os.path.join(folder, "batch_train_0_0.h5"), "wb").close()      # a partial file, then the failure
        raise OSError("disk full")

    monkeypatch.setattr(cbed, "generate_dataset", broken)
    with pytest.raises(Exception, match="disk full"):
        run_app("cbed", app.Config(**TINY), verbose=0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not os.access(MPIEXEC, os.X_OK) or os.environ.get("PMI_SIZE", "1") != "1",
                    reason=f"needs an mpiexec next to {sys.executable}")
def test_generation_and_data_parallel_training_on_two_ranks(tmp_path):
    options = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()] + [f"--output-dir={tmp_path}"]
    code, out, err, _ = mpirun(2, ["-m", "hpcai", "run", "cbed", *options], timeout=300)
    assert code == 0, err[-3000:]
    assert out.count("held-out materials: crystal system top-1") == 1, out[-2000:]
    files = cbed.dataset_files(tmp_path / "data")
    ranks = {os.path.basename(f).split("_")[2] for f in files}
    assert ranks == {"0", "1"}  # each rank wrote its own files
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert metrics["ranks"] == 2 and metrics["train_materials"] + metrics["test_materials"] <= 56
    # every training material is used in an epoch (one rank's extra one aside), not a shard of each rank's shard
    assert metrics["train_materials"] - 1 <= metrics["trained_per_epoch"] <= metrics["train_materials"], metrics


@pytest.mark.skipif(not os.access(MPIEXEC, os.X_OK) or os.environ.get("PMI_SIZE", "1") != "1",
                    reason=f"needs an mpiexec next to {sys.executable}")
def test_two_ranks_without_an_output_folder_share_one_temporary_data_set(tmp_path, monkeypatch):
    """Without ``output_dir`` the ranks write to and read from one temporary folder, the one rank 0's control names
    (each rank made its own before: rank 0 trained on 24 of the 45 training materials and tested on 2 of 6), and
    the run removes it."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    code = ("import json; from hpcai.runner import run_app; from hpcai.apps import cbed\n"
            "from hpcai.parallel import world\n"
            f"metrics = run_app('cbed', cbed.Config(**{TINY!r}), verbose=0).metrics\n"
            "if world().rank == 0: print('METRICS', json.dumps(metrics))\n")
    rc, out, err, _ = mpirun(2, ["-c", code], timeout=300)
    assert rc == 0, err[-3000:]
    metrics = json.loads(out.split("METRICS ", 1)[1].splitlines()[0])
    items = cbed.plan_materials(app.Config(**TINY).space_groups(), TINY["materials_per_group"], 0)
    assert metrics["train_materials"] == sum(item.split == "train" for item in items), metrics
    assert metrics["test_materials"] == sum(item.split == "test" for item in items), metrics
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad, match", [
    ({"groups": "some"}, "groups: expected one of"),
    ({"target": "point_group"}, "target: expected one of"),
    ({"pixels": 4}, "pixels: expected an integer in \\[16, 2048\\]"),
    ({"input_size": 256, "pixels": 128}, "input_size: expected at most pixels = 128"),
    ({"lr": 0.0}, "lr: expected a number in \\(0, 100\\]"),
    ({"schedule": "linear"}, "schedule: expected one of"),
    ({"inputs": "stack"}, "inputs: expected one of"),
    ({"data_dir": "/nonexistent/cbed"}, "data_dir: no batch_train_.*h5 files"),
])
def test_bad_input_names_the_field(bad, match):
    with pytest.raises(ValueError, match=match):
        app.Config(**bad).validate()


def test_every_space_group_gives_a_material():
    """groups="all": a material of each of the 230 groups builds with the application's crystal options."""
    for item in cbed.plan_materials(range(1, 231), 1, seed=0):
        crystal = cbed.make_crystal(item, **app.CRYSTALS)
        assert crystal.space_group == item.space_group
