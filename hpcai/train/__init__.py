"""Training: a Keras-like ``fit`` loop, in-memory data loading, callbacks, checkpoints and live plots.

``fit(model, (x, y), "cross_entropy", "adam", lr=1e-3, epochs=10, metrics=["accuracy"])`` trains with a
progress line (tqdm in notebooks and terminals, plain lines in batch jobs, nothing at verbose=0) and
returns the History; ModelCheckpoint files let a killed run resume bit for bit.
"""
from .callbacks import Callback, CSVLogger, EarlyStopping, History, LRScheduler, ProgressBar
from .checkpoint import ModelCheckpoint, load_checkpoint, read_checkpoint, save_checkpoint
from .data import DataLoader, Dataset
from .fit import LOSSES, Loop, evaluate, fit, get_loss, predict
from .metrics import METRICS, get_metric
from .plot import LivePlot
from .step import StepResult, TrainStep

__all__ = ["CSVLogger", "Callback", "DataLoader", "Dataset", "EarlyStopping", "History", "LOSSES", "LRScheduler",
           "LivePlot", "Loop", "METRICS", "ModelCheckpoint", "ProgressBar", "evaluate", "fit", "get_loss",
           "get_metric", "load_checkpoint", "predict", "read_checkpoint", "save_checkpoint", "StepResult",
           "TrainStep"]
