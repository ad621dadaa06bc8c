"""Workflows in the spirit of openDIEL: modules on their own MPI communicators, coupled by channels and a
tuple space, declared in a control file and run by one Executive inside one MPI job.

    mpiexec -n 4 python -m hpcai workflow run control.toml

``run_workflow(control)`` does the same from Python (every rank calls it); :mod:`.spec` reads and checks
control files, :mod:`.context` is what a module's ``main(ctx)`` receives.
"""
from .context import Channel, Context, Received
from .executive import ModuleFailed, WorkflowResult, run_workflow
from .spec import SpecError, WorkflowSpec, load

__all__ = ["Channel", "Context", "ModuleFailed", "Received", "SpecError", "WorkflowResult", "WorkflowSpec", "load",
           "run_workflow"]
