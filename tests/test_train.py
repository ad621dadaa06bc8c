"""hpcai.train and hpcai.datasets: accuracy on real digits per precision, loss scaling, bit-identical resume
in a new process, checkpoint integrity, callbacks, data loading and error messages."""
import csv
import json
import os
import runpy
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from hpcai import Tensor, datasets, io, nn, optim
from hpcai.amp import DynamicLossScaler, get_policy
from hpcai.ops.loss import cross_entropy
from hpcai.train import (CSVLogger, Callback, DataLoader, Dataset, EarlyStopping, LivePlot, LRScheduler,
                         ModelCheckpoint, ProgressBar, evaluate, fit, predict)
from hpcai.train import plot as plot_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def digits_flat():
    return datasets.digits(flat=True)


@pytest.fixture(scope="module")
def digits_images():
    return datasets.digits()


def mlp(hidden=128, seed=0):
    return nn.Sequential(nn.Linear(64, hidden, rng=seed), nn.ReLU(), nn.Linear(hidden, 10, rng=seed + 1))


def cnn():
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, rng=0), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1, rng=1), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 16, 10, rng=2))


# -- accuracy on real data, per precision ----------------------------------------------------------------
_mlp_accuracy = {}


def _train_mlp(data, precision):
    if precision not in _mlp_accuracy:
        (xtr, ytr), (xte, yte) = data
        model = mlp()
        fit(model, (xtr, ytr), "cross_entropy", "adam", lr=3e-3, epochs=20, verbose=0, precision=precision)
        _mlp_accuracy[precision] = evaluate(model, (xte, yte), metrics=["accuracy"], precision=precision)["accuracy"]
    return _mlp_accuracy[precision]


def test_mlp_digits_fp32_reaches_95_percent(digits_flat):
    assert _train_mlp(digits_flat, "fp32") >= 0.95


@pytest.mark.parametrize("precision", ["mixed-bf16", "mixed-fp16"])
def test_mlp_digits_mixed_precision_within_one_point_of_fp32(digits_flat, precision):
    acc, ref = _train_mlp(digits_flat, precision), _train_mlp(digits_flat, "fp32")
    assert acc >= ref - 0.01, (acc, ref)


@pytest.mark.parametrize("precision", ["fp32", "mixed-bf16", "mixed-fp16"])
def test_cnn_digits_reaches_97_percent(digits_images, precision):
    (xtr, ytr), (xte, yte) = digits_images
    model = cnn()
    opt = optim.Adam(model.parameters(), lr=3e-3)
    history = fit(model, (xtr, ytr), "cross_entropy", opt, epochs=10, verbose=0, precision=precision,
                  callbacks=[LRScheduler(optim.CosineAnnealingLR(opt, T_max=10))], metrics=["accuracy"])
    assert history["lr"][0] == pytest.approx(3e-3) and history["lr"][-1] < 1e-4
    assert evaluate(model, (xte, yte), metrics=["accuracy"], precision=precision)["accuracy"] >= 0.97


# -- reduced precision: underflow and loss scaling --------------------------------------------------------
def _small_loss_grads(state, x, y, precision, scaler=None, factor=1e-6):
    model = mlp(32)
    model.load_state_dict(state)
    with get_policy(precision).autocast():
        loss = cross_entropy(model(Tensor(x)), Tensor(y)) * factor
    if scaler is None:
        loss.backward()
    else:
        scaler.scale_loss(loss).backward()
        assert scaler.unscale(model.parameters())
    return [p.grad.copy() for p in model.parameters()]


def test_pure_fp16_loses_small_gradients_and_loss_scaling_recovers_them(digits_flat):
    (x, y), _ = digits_flat
    x, y = x[:64], y[:64]
    model = mlp(32)
    get_policy("fp16").prepare(model)  # weights exactly representable in fp16: the same model in both runs
    state = model.state_dict()
    ref = _small_loss_grads(state, x, y, "fp32")
    lost = _small_loss_grads(state, x, y, "fp16")
    scaled = _small_loss_grads(state, x, y, "fp16", DynamicLossScaler(init_scale=2.0 ** 16))
    weights = [i for i, g in enumerate(ref) if g.ndim == 2]
    live = np.concatenate([ref[i][ref[i] != 0] for i in weights]).size
    zeroed = sum(int(((lost[i] == 0) & (ref[i] != 0)).sum()) for i in weights)
    assert zeroed / live > 0.9, f"only {zeroed} of {live} weight gradients underflowed"
    for g, r in zip(scaled, ref):
        assert not ((g == 0) & (r != 0)).any()
        np.testing.assert_allclose(g, r, rtol=0, atol=2e-3 * np.abs(r).max())  # fp16 has 11 significant bits


def test_fit_pure_fp16_first_layer_learns_only_with_a_loss_scaler(digits_flat):
    (x, y), _ = digits_flat
    tiny = lambda pred, target: cross_entropy(pred, target) * 1e-6  # noqa: E731
    first = {}
    for scaler in (False, DynamicLossScaler()):
        model = mlp(32)
        get_policy("fp16").prepare(model)
        before = model[0].weight.data.copy()
        fit(model, (x[:128], y[:128]), tiny, "adam", lr=1e-3, epochs=1, verbose=0, precision="fp16",
            loss_scaler=scaler)
        first[scaler is False] = np.array_equal(model[0].weight.data, before)
    assert first == {True: True, False: False}


def test_scaler_skips_the_step_and_halves_the_scale_on_inf_gradient():
    model = mlp(8)
    opt = optim.SGD(model.parameters(), lr=0.1)
    before = [p.data.copy() for p in model.parameters()]
    for p in model.parameters():
        p.grad = np.ones_like(p.data)
    model[0].weight.grad[0, 0] = np.inf
    scaler = DynamicLossScaler(init_scale=1024.0)
    assert scaler.step(opt) is False
    assert scaler.scale == 512.0 and scaler.skipped_steps == 1
    assert all(np.array_equal(p.data, b) for p, b in zip(model.parameters(), before))


def test_fit_counts_steps_skipped_on_fp16_overflow_and_keeps_training(digits_flat):
    (x, y), _ = digits_flat
    huge = lambda pred, target: cross_entropy(pred, target) * 1e4  # noqa: E731  (gradients overflow fp16)
    scaler = DynamicLossScaler()
    history = fit(mlp(32), (x[:640], y[:640]), huge, "adam", lr=1e-3, epochs=2, verbose=0,
                  precision="mixed-fp16", loss_scaler=scaler)
    assert history["skipped_steps"][-1] == scaler.skipped_steps >= 5
    assert scaler.scale <= 2.0 ** 8
    assert history["loss"][1] < history["loss"][0]


# -- checkpoint, kill, resume in a new process -------------------------------------------------------------
RESUME_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from hpcai import datasets, io, nn, optim
    from hpcai.train import LRScheduler, ModelCheckpoint, fit

    def run(precision, epochs, checkpoint=None, resume_from=None):
        (x, y), (xv, yv) = datasets.digits(flat=True)
        model = nn.Sequential(nn.Linear(64, 32, rng=0), nn.ReLU(), nn.Dropout(0.3, rng=7), nn.Linear(32, 10, rng=1))
        opt = optim.Adam(model.parameters(), lr=1e-2)
        callbacks = [LRScheduler(optim.StepLR(opt, step_size=1, gamma=0.7))]
        if checkpoint:
            callbacks.append(ModelCheckpoint(checkpoint))
        history = fit(model, (x[:320], y[:320]), "cross_entropy", opt, epochs=epochs, batch_size=24, seed=3,
                      validation=(xv[:64], yv[:64]), metrics=["accuracy"], callbacks=callbacks, verbose=0,
                      precision=precision, resume_from=resume_from)
        return model, history

    if __name__ == "__main__":
        precision, checkpoint, out = sys.argv[1:]
        model, history = run(precision, 4, resume_from=checkpoint)
        io.save_arrays(out, model.state_dict(), meta={"loss": history["loss"], "epoch": history.epoch})
""")


@pytest.mark.parametrize("precision", ["fp32", "fp64", "mixed-fp16"])
def test_resume_in_a_new_process_is_bit_identical(tmp_path, precision):
    script = tmp_path / "resume.py"
    script.write_text(RESUME_SCRIPT)
    run = runpy.run_path(str(script))["run"]
    full, full_history = run(precision, 4)
    ckpt = tmp_path / "ckpt.npz"
    run(precision, 2, checkpoint=str(ckpt))  # this process "dies" here: nothing of it is reused below
    out = tmp_path / "resumed.npz"
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, str(script), precision, str(ckpt), str(out)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    resumed, meta = io.load_arrays(out)
    state = full.state_dict()
    assert state.keys() == resumed.keys()
    for name, value in state.items():
        assert resumed[name].dtype == value.dtype == get_policy(precision).param_dtype
        assert np.array_equal(resumed[name], value), name
    assert meta["epoch"] == [1, 2, 3, 4] and meta["loss"] == full_history["loss"]


def _checkpoint(tmp_path, name="ckpt.npz"):
    (x, y), _ = datasets.digits(flat=True)
    path = tmp_path / name
    fit(mlp(16), (x[:96], y[:96]), "cross_entropy", "sgd", lr=0.1, epochs=1, verbose=0,
        callbacks=[ModelCheckpoint(path)])
    return path, (x[:96], y[:96])


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_truncated_or_altered_checkpoint_is_refused(tmp_path, suffix):
    pytest.importorskip("h5py") if suffix == ".h5" else None
    path, data = _checkpoint(tmp_path, "ckpt" + suffix)
    raw = path.read_bytes()
    truncated, flipped = tmp_path / ("trunc" + suffix), tmp_path / ("flip" + suffix)
    truncated.write_bytes(raw[: len(raw) * 2 // 3])
    stored = io.load_arrays(path)[0]["model:0.weight"]
    at = raw.find(stored.tobytes()[:64])
    assert at > 0
    altered = bytearray(raw)
    altered[at + 10] ^= 0x40
    flipped.write_bytes(bytes(altered))
    for bad in (truncated, flipped):
        with pytest.raises(io.CorruptFileError):
            fit(mlp(16), data, "cross_entropy", "sgd", lr=0.1, epochs=2, verbose=0, resume_from=bad)


def test_resume_into_a_different_model_is_refused(tmp_path):
    path, data = _checkpoint(tmp_path)
    with pytest.raises(ValueError, match="does not match the model"):
        fit(mlp(24), data, "cross_entropy", "sgd", lr=0.1, epochs=2, verbose=0, resume_from=path)
    with pytest.raises(ValueError, match="precision 'fp32'"):
        fit(mlp(16), data, "cross_entropy", "sgd", lr=0.1, epochs=2, verbose=0, resume_from=path, precision="fp64")


def test_model_checkpoint_resume_flag_continues_a_finished_run(tmp_path):
    path, data = _checkpoint(tmp_path)
    history = fit(mlp(16), data, "cross_entropy", "sgd", lr=0.1, epochs=3, verbose=0,
                  callbacks=[ModelCheckpoint(path, resume=True)])
    assert history.epoch == [1, 2, 3]
    assert io.load_arrays(path)[1]["epoch"] == 3


# -- callbacks ---------------------------------------------------------------------------------------------
def test_csv_logger_rewrites_and_appends(tmp_path, digits_flat):
    (x, y), (xv, yv) = digits_flat
    path = tmp_path / "log.csv"
    history = fit(mlp(16), (x[:200], y[:200]), "cross_entropy", "adam", epochs=3, verbose=0, metrics=["accuracy"],
                  validation=(xv[:50], yv[:50]), callbacks=[CSVLogger(path)])
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "lr", "time"} <= set(rows[0])
    assert [float(r["val_loss"]) for r in rows] == history["val_loss"]
    appended = tmp_path / "append.csv"
    for _ in range(2):
        fit(mlp(16), (x[:64], y[:64]), "cross_entropy", "sgd", lr=0.1, epochs=2,
            verbose=0, callbacks=[CSVLogger(appended, append=True)])
    lines = appended.read_text().splitlines()
    assert len(lines) == 5 and lines[0].startswith("epoch,loss") and [ln.split(",")[0] for ln in lines[1:]] == \
        ["1", "2", "1", "2"]


class _Inject(Callback):
    """Sets logs["score"] from a fixed sequence and snapshots the weights at every epoch end."""

    order = 10

    def __init__(self, values):
        self.values, self.snapshots = values, []

    def on_epoch_end(self, epoch, logs=None):
        logs["score"] = self.values[epoch]
        self.snapshots.append(self.loop.model.state_dict())


def test_early_stopping_stops_and_restores_the_best_weights(digits_flat):
    (x, y), _ = digits_flat
    inject = _Inject([3.0, 2.0, 1.0, 1.5, 1.2, 1.01, 0.1, 0.1])
    stop = EarlyStopping(monitor="score", patience=3, min_delta=0.0, restore_best=True)
    model = mlp(16)
    history = fit(model, (x[:96], y[:96]), "cross_entropy", "sgd", lr=0.1, epochs=8, verbose=0,
                  callbacks=[stop, inject])
    assert history.epoch == [1, 2, 3, 4, 5, 6]
    assert (stop.best_epoch, stop.stopped_epoch, stop.best) == (3, 6, 1.0)
    for name, value in model.state_dict().items():
        assert np.array_equal(value, inject.snapshots[2][name])
        assert not np.array_equal(value, inject.snapshots[-1][name]) or name.endswith("bias")
    with pytest.raises(ValueError, match="monitor 'nope' is not logged"):
        fit(mlp(16), (x[:32], y[:32]), "cross_entropy", "sgd", verbose=0, callbacks=[EarlyStopping("nope")])


def test_progress_output_at_verbose_1_and_none_at_verbose_0(capsys, digits_flat):
    (x, y), _ = digits_flat
    fit(mlp(16), (x[:64], y[:64]), "cross_entropy", "sgd", lr=0.1, epochs=2, verbose=1, metrics=["accuracy"])
    out = capsys.readouterr().out
    assert "epoch 2/2" in out and "loss" in out and "accuracy" in out and "ms/step" in out
    fit(mlp(16), (x[:64], y[:64]), "cross_entropy", "sgd", lr=0.1, epochs=2, verbose=0)
    assert capsys.readouterr() == ("", "")
    pytest.importorskip("tqdm")
    fit(mlp(16), (x[:64], y[:64]), "cross_entropy", "sgd", lr=0.1, epochs=1,
        callbacks=[ProgressBar(mode="tqdm", file=sys.stdout)])
    out = capsys.readouterr().out
    assert "epoch 1/1" in out and "2/2" in out and "ms/step" in out


class _Comm:
    def __init__(self, rank, size):
        self.rank, self.size, self.averaged = rank, size, []

    def average(self, value):
        self.averaged.append(value)
        return -1.0


def test_comm_hook_shards_data_averages_metrics_and_silences_other_ranks(capsys, tmp_path, digits_flat):
    (x, y), _ = digits_flat
    comm = _Comm(rank=1, size=2)
    steps = []
    counter = type("Count", (Callback,), {"on_batch_end": lambda self, step, logs=None: steps.append(step)})()
    history = fit(mlp(16), (x[:100], y[:100]), "cross_entropy", "sgd", lr=0.1, epochs=1, batch_size=10,
                  verbose=1, comm=comm, callbacks=[counter, CSVLogger(tmp_path / "r1.csv")])
    assert len(steps) == 5                                 # 50 of the 100 samples on this rank
    assert history["loss"] == [-1.0] and len(comm.averaged) >= 3  # loss, lr, time went through comm
    assert capsys.readouterr().out == "" and not (tmp_path / "r1.csv").exists()


def test_live_plot_saves_png_and_updates_one_display_in_ipython(tmp_path, monkeypatch, digits_flat):
    pytest.importorskip("matplotlib")
    (x, y), _ = digits_flat
    path = tmp_path / "curves.png"
    fit(mlp(16), (x[:64], y[:64]), "cross_entropy", "sgd", lr=0.1, epochs=2, verbose=0, metrics=["accuracy"],
        validation=(x[64:96], y[64:96]), callbacks=[LivePlot(path=path)])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    calls = []

    class Handle:
        def update(self, obj):
            calls.append(("update", obj))

    def display(obj, display_id=False):
        calls.append(("display", obj, display_id))
        return Handle()
    monkeypatch.setattr(plot_module, "_ipython_display", lambda: (display, lambda data, format: data))
    live = LivePlot()
    fit(mlp(16), (x[:64], y[:64]), "cross_entropy", "sgd", lr=0.1, epochs=3, verbose=0, callbacks=[live])
    assert [c[0] for c in calls] == ["display", "update", "update"] and calls[0][2] is True
    assert calls[-1][1][:4] == b"\x89PNG" and live.figure.axes[0].get_title() == "loss"


# -- evaluate, predict, data --------------------------------------------------------------------------------
def test_evaluate_and_predict_shapes(digits_flat):
    (x, y), (xv, yv) = digits_flat
    model = mlp(16)
    fit(model, (x[:200], y[:200]), "cross_entropy", "adam", lr=1e-2, epochs=2, verbose=0)
    out = predict(model, xv[:103], batch_size=25)
    assert out.shape == (103, 10) and out.dtype == np.float32
    res = evaluate(model, (xv, yv), "cross_entropy", metrics=["accuracy", "top5"], batch_size=64)
    assert set(res) == {"loss", "accuracy", "top5"} and 0 <= res["accuracy"] <= res["top5"] <= 1
    assert res["accuracy"] == pytest.approx(np.mean(predict(model, xv).argmax(1) == yv))
    assert model.training  # evaluate/predict put the model back in training mode


def test_regression_fit_with_named_loss_and_metrics():
    x, y = datasets.smooth_regression(256)
    model = nn.Sequential(nn.Linear(2, 32, rng=0), nn.Tanh(), nn.Linear(32, 1, rng=1))
    history = fit(model, Dataset(x, y), "mse", "adam", lr=1e-2, epochs=50, verbose=0, metrics=["mae", "mse"])
    assert history["loss"][-1] < 0.2 * history["loss"][0]
    assert history["mse"] == pytest.approx(history["loss"])


def test_dataloader_shards_are_disjoint_equal_and_cover_the_data():
    for n, size in ((100, 4), (103, 4)):
        data = Dataset(np.arange(n), np.arange(n) * 2)
        shards = [DataLoader(data, batch_size=7, seed=5).shard(r, size) for r in range(size)]
        parts = [np.concatenate([b[0] for b in loader]) for loader in shards]
        assert {len(p) for p in parts} == {n // size} and {len(s) for s in shards} == {len(shards[0])}
        union = np.concatenate(parts)
        assert len(np.unique(union)) == len(union) == size * (n // size)
        if n % size == 0:
            assert np.array_equal(np.sort(union), np.arange(n))
    loader = DataLoader(data, batch_size=10, seed=1)
    first, second = np.concatenate([b[0] for b in loader]), np.concatenate([b[0] for b in loader])
    assert not np.array_equal(first, second)  # a new order every epoch ...
    again = DataLoader(data, batch_size=10, seed=1)
    assert np.array_equal(np.concatenate([b[0] for b in again]), first)  # ... fixed by the seed
    assert [len(b[1]) for b in DataLoader(data, 40, drop_last=True)] == [40, 40]
    assert all(np.array_equal(b[1], 2 * b[0]) for b in loader)


def test_datasets_are_fixed_by_seed_and_stratified():
    (xtr, ytr), (xte, yte) = datasets.digits(seed=0)
    assert xtr.shape[1:] == (1, 8, 8) and xtr.dtype == np.float32 and ytr.dtype == np.int64
    assert 0 <= xtr.min() and xtr.max() == 1 and len(xtr) + len(xte) == 1797
    assert np.abs(np.bincount(yte) / len(yte) - np.bincount(ytr) / len(ytr)).max() < 0.01
    (xf, yf), _ = datasets.digits(seed=0, flat=True)
    assert xf.shape == (len(xtr), 64) and np.array_equal(xf, xtr.reshape(len(xtr), 64)) and np.array_equal(yf, ytr)
    assert not np.array_equal(datasets.digits(seed=1)[0][1], ytr)
    for make in (datasets.spirals, datasets.blobs, datasets.smooth_regression):
        a, b = make(seed=2), make(seed=2)
        assert all(np.array_equal(u, v) for u, v in zip(a, b)) and a[0].dtype == np.float32
    x, y = datasets.spirals(300, classes=3)
    assert x.shape == (300, 2) and np.bincount(y).tolist() == [100, 100, 100]


# -- bad input ------------------------------------------------------------------------------------------------
def test_clear_errors_for_bad_input(digits_flat):
    (x, y), _ = digits_flat
    x, y = x[:96], y[:96]
    with pytest.raises(ValueError, match=r"same length.*\[96, 95\]"):
        Dataset(x, y[:95])
    with pytest.raises(ValueError, match="name: expected one of"):
        fit(mlp(16), (x, y), "cross_entropy", "adamm", verbose=0)
    with pytest.raises(ValueError, match="precision: expected one of"):
        fit(mlp(16), (x, y), "cross_entropy", "sgd", verbose=0, precision="fp8")
    with pytest.raises(ValueError, match="metric: expected a callable or one of"):
        fit(mlp(16), (x, y), "cross_entropy", "sgd", verbose=0, metrics=["accuracyy"])
    with pytest.raises(ValueError, match="loss: expected a callable or one of"):
        fit(mlp(16), (x, y), "crossentropy", "sgd", verbose=0)
    with pytest.raises(ValueError, match="must end in 64 features"):
        fit(mlp(16), (x[:, :60], y), "cross_entropy", "sgd", verbose=0)
    with pytest.raises(ValueError, match=r"target values must lie in \[0, 10\)"):
        fit(mlp(16), (x, y + 5), "cross_entropy", "sgd", verbose=0)
    with pytest.raises(ValueError, match="expected batches of"):
        fit(mlp(16), Dataset(x), "cross_entropy", "sgd", verbose=0)
    calls = []

    def flaky(pred, target):  # finite until the 6th call: epoch 2, step 3 with 3 steps per epoch
        calls.append(1)
        loss = cross_entropy(pred, target)
        return loss * float("nan") if len(calls) == 6 else loss
    with pytest.raises(FloatingPointError, match=r"non-finite loss at epoch 2, step 3 \(global step 6\)"):
        fit(mlp(16), (x, y), flaky, "sgd", epochs=2, verbose=0)
    bad = x.copy()
    bad[70, 3] = np.nan  # in batch 3 of 32 without shuffling
    with pytest.raises(FloatingPointError, match="non-finite loss at epoch 1, step 3"):
        fit(mlp(16), (bad, y), "cross_entropy", "sgd", verbose=0, shuffle=False)


def test_history_is_json_able(digits_flat):
    (x, y), _ = digits_flat
    history = fit(mlp(16), (x[:64], y[:64]), "cross_entropy", "sgd", lr=0.1, epochs=2, verbose=0)
    assert json.loads(json.dumps(history)) == dict(history) and history.epoch == [1, 2]


def test_accumulating_data_parallel_optimizer_steps_once_per_k_passes_however_often_synchronized():
    """scaler.step and step() synchronize too: a repeated call must not count as another backward pass."""
    from hpcai.amp import DynamicLossScaler
    from hpcai.parallel import DistributedOptimizer, SerialCommunicator
    model = nn.Linear(3, 2, rng=0)
    opt = DistributedOptimizer(optim.SGD(model.parameters(), lr=0.1), comm=SerialCommunicator(),
                               backward_passes_per_step=2)
    scaler, before = DynamicLossScaler(init_scale=1.0), model.weight.data.copy()
    x = Tensor(np.ones((4, 3), np.float32))
    for _ in range(2):  # pass 1: accumulate only, whoever asks
        opt.zero_grad()
        model(x).sum().backward()
        assert opt.synchronize() is False and opt.synchronize() is False
        assert scaler.step(opt) is None
        np.testing.assert_array_equal(model.weight.data, before)
        opt.zero_grad()  # pass 2: the exchange and one step, with the mean of both passes' gradients
        model(x).sum().backward()
        assert scaler.step(opt) is True
        np.testing.assert_allclose(model.weight.data, before - 0.1 * 4.0, rtol=1e-6)
        before = model.weight.data.copy()
