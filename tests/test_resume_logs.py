"""Resuming from a checkpoint: an appended CSV log holds every epoch once, and only callback state that
records something is missed with a warning."""
import csv
import warnings

import numpy as np
import pytest

from hpcai import nn
from hpcai.train import CSVLogger, EarlyStopping, ModelCheckpoint, fit


def _data():
    rng = np.random.default_rng(0)
    return rng.random((48, 4)).astype(np.float32), rng.integers(0, 2, 48)


def _model():
    return nn.Sequential(nn.Linear(4, 8, rng=0), nn.ReLU(), nn.Linear(8, 2, rng=1))


def test_appended_csv_log_has_each_epoch_once_after_a_resume(tmp_path):
    """The run wrote epoch 3's row, then died before epoch 3's checkpoint: the resumed run redoes epoch 3."""
    log, data = tmp_path / "log.csv", _data()
    fit(_model(), data, "cross_entropy", "sgd", lr=0.1, epochs=3, verbose=0,
        callbacks=[CSVLogger(log, append=True), ModelCheckpoint(tmp_path / "ck{epoch}.npz", every=2)])
    fit(_model(), data, "cross_entropy", "sgd", lr=0.1, epochs=4, verbose=0, resume_from=tmp_path / "ck2.npz",
        callbacks=[CSVLogger(log, append=True)])
    with open(log) as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"]
    assert all(r["loss"] for r in rows)


def test_resume_warns_only_about_callback_state_that_records_something(tmp_path):
    path, data = tmp_path / "ck.npz", _data()
    fit(_model(), data, "cross_entropy", "sgd", lr=0.1, epochs=2, verbose=0,
        callbacks=[ModelCheckpoint(path), EarlyStopping("loss", patience=5)])
    with pytest.warns(UserWarning, match="no EarlyStopping callback in this run") as caught:
        fit(_model(), data, "cross_entropy", "sgd", lr=0.1, epochs=3, verbose=0, resume_from=path)
    assert not [w for w in caught if "ModelCheckpoint" in str(w.message)]  # its state was {"best": None}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit(_model(), data, "cross_entropy", "sgd", lr=0.1, epochs=3, verbose=0, resume_from=path,
            callbacks=[EarlyStopping("loss", patience=5)])
