"""The study: Optuna's, in a journal file on a shared file system, so it survives a kernel restart or a lost job.

Optuna is imported here and only here, lazily (``pip install 'hpcai[tune]'``). Pruners and samplers are chosen
by short names (an Optuna object is taken as it is). A study file is opened with ``load_if_exists``: a second
Tuner on the same file continues where the first stopped, keeping every finished trial. Trials a dead session
left RUNNING are failed, saying so, and retried once (:func:`recover`); one Tuner works on a study at a time.
"""
from __future__ import annotations

import os

from .. import checks

RETRY_OF = "retry_of"  # user attribute of a trial that repeats a failed one (it does not count against n_trials)


def optuna():
    """The optuna module, or an ImportError naming the extra."""
    try:
        import optuna as module
    except ImportError:
        raise ImportError("hpcai.tune needs Optuna: pip install 'hpcai[tune]'") from None
    return module


def _pruners(opt) -> dict:
    """Pruners by name; intermediate steps are percent of a trial's training (0-100, see hpcai.tune.trial)."""
    return {
        "median": lambda: opt.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=30),
        "halving": lambda: opt.pruners.SuccessiveHalvingPruner(min_resource=10, reduction_factor=3),
        "hyperband": lambda: opt.pruners.HyperbandPruner(min_resource=10, max_resource=100, reduction_factor=3),
        "none": lambda: opt.pruners.NopPruner(),
    }


PRUNERS = ("median", "halving", "hyperband", "none")
SAMPLERS = ("tpe", "random")


def make_pruner(pruner):
    """An Optuna pruner from its short name (:data:`PRUNERS`), or the pruner object itself."""
    opt = optuna()
    if isinstance(pruner, opt.pruners.BasePruner):
        return pruner
    return _pruners(opt)[checks.choice("pruner", pruner, PRUNERS)]()


def make_sampler(sampler, seed: int | None):
    """An Optuna sampler from its short name (:data:`SAMPLERS`, seeded), or the sampler object itself."""
    opt = optuna()
    if isinstance(sampler, opt.samplers.BaseSampler):
        return sampler
    name = checks.choice("sampler", sampler, SAMPLERS)
    if name == "random":
        return opt.samplers.RandomSampler(seed=seed)
    return opt.samplers.TPESampler(seed=seed, n_startup_trials=5, constant_liar=True)  # liar: parallel asks


def journal_storage(path):
    """Optuna's journal storage in file ``path`` (created with its folder; on NFS too: a lock file, no sqlite)."""
    opt = optuna()
    path = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    journal = opt.storages.journal
    if hasattr(journal, "JournalFileBackend"):  # optuna >= 4
        backend = journal.JournalFileBackend(path, lock_obj=journal.JournalFileOpenLock(path))
        return journal.JournalStorage(backend)
    return opt.storages.JournalStorage(opt.storages.JournalFileStorage(  # optuna 3.x
        path, lock_obj=opt.storages.JournalFileOpenLock(path)))


def open_study(path, name: str, direction: str, sampler="tpe", pruner="median", seed: int | None = None):
    """The study ``name`` in journal file ``path``, loaded if it exists (its direction must then be the same)."""
    opt = optuna()
    checks.text("name", name)
    checks.choice("direction", direction, ("minimize", "maximize"))
    study = opt.create_study(storage=journal_storage(path), study_name=name, direction=direction,
                             sampler=make_sampler(sampler, seed), pruner=make_pruner(pruner), load_if_exists=True)
    if study.direction.name.lower() != direction:
        raise ValueError(f"direction: the study {name!r} in {path} was made to {study.direction.name.lower()}, "
                         f"got {direction!r}")
    return study


def counted(study) -> int:
    """Trials that count against ``n_trials``: every trial but the retries (and those still waiting)."""
    states = optuna().trial.TrialState
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state != states.WAITING and RETRY_OF not in t.user_attrs)


def waiting(study) -> int:
    """Trials enqueued and not yet asked for (retries, the defaults, :meth:`Tuner.enqueue`'s)."""
    return len(study.get_trials(deepcopy=False, states=(optuna().trial.TrialState.WAITING,)))


def fail(study, number: int, reason: str, retry: bool, params: dict) -> int | None:
    """Mark RUNNING trial ``number`` failed with ``reason``; enqueue its parameters once more unless it is a
    retry itself (or ``retry`` is false). Returns True when a retry was enqueued."""
    trial = study.get_trials(deepcopy=False)[number]
    again = retry and RETRY_OF not in trial.user_attrs
    study._storage.set_trial_user_attr(trial._trial_id, "error", reason + ("; retried" if again else ""))
    study.tell(number, state=optuna().trial.TrialState.FAIL, skip_if_finished=True)
    if again:
        study.enqueue_trial(params, user_attrs={RETRY_OF: number})
    return again


def recover(study) -> list[int]:
    """Fail the trials a previous session left RUNNING (its process or job died) and retry them once; their numbers."""
    states = optuna().trial.TrialState
    stale = study.get_trials(deepcopy=False, states=(states.RUNNING,))
    for t in stale:
        fail(study, t.number, "interrupted: the session that ran this trial ended before it finished", True,
             t.params)
    return [t.number for t in stale]
