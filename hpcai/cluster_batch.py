"""The batch job behind a cluster's engines: its state in the queue, why it waits, and where the controller listens.

ipyparallel's batch launchers submit and cancel the job but never look at it again ("poll not implemented"),
so a job that pends forever or that the scheduler cancels looked like engines that were slow to register.
:class:`BatchJob` asks the scheduler (``scontrol`` for Slurm, ``qstat`` for PBS) so :mod:`hpcai.cluster` can
say what happened: still pending and why, cancelled, failed, or gone.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import time

ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING", "HELD", "QUEUED"}
# Slurm's reasons for a pending job that no amount of waiting resolves (the request exceeds the partition,
# the account or QOS may not run it, a dependency failed)
NEVER = {"PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "BadConstraints", "InvalidAccount",
         "InvalidQOS", "AccountNotAllowed", "QOSNotAllowed", "DependencyNeverSatisfied"}
GONE = "GONE"  # no longer known to the scheduler (ended long enough ago to be purged)
_PBS_STATES = {"Q": "PENDING", "H": "HELD", "W": "PENDING", "T": "PENDING", "R": "RUNNING", "B": "RUNNING",
               "E": "COMPLETING", "S": "SUSPENDED", "F": "FINISHED", "X": "FINISHED"}


class BatchJob:
    """One submitted job of a batch system ("slurm" or "pbs"), looked up by id."""

    def __init__(self, kind: str, job_id: str):
        if kind not in ("slurm", "pbs"):
            raise ValueError(f"kind: expected 'slurm' or 'pbs', got {kind!r}")
        self.kind, self.job_id = kind, str(job_id)

    def state(self) -> tuple[str, str]:
        """(state, reason): e.g. ("PENDING", "Resources"), ("CANCELLED", "None"), ("GONE", "")."""
        cmd = ["scontrol", "show", "job", "-o", self.job_id] if self.kind == "slurm" else ["qstat", "-f", self.job_id]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.TimeoutExpired):
            return "UNKNOWN", f"{cmd[0]} did not answer"
        if self.kind == "slurm":
            state = re.search(r"\bJobState=(\S+)", out)
            reason = re.search(r"\bReason=(\S+)", out)
            return (state.group(1), reason.group(1) if reason else "") if state else (GONE, "")
        state = re.search(r"job_state\s*=\s*(\S+)", out)
        comment = re.search(r"comment\s*=\s*(.+)", out)
        if not state:
            return GONE, ""
        return _PBS_STATES.get(state.group(1), state.group(1)), comment.group(1).strip() if comment else ""

    def cancel_command(self) -> list:
        """The command that ends this job (what the guard runs if the client dies)."""
        return ["scancel" if self.kind == "slurm" else "qdel", self.job_id]

    def active(self) -> bool:
        """Running, or waiting for something that can happen (not finished, cancelled, failed, gone, or pending
        for a reason in :data:`NEVER`); unknown counts as active."""
        state, reason = self.state()
        return (state in ACTIVE and reason.split(",")[0] not in NEVER) or state == "UNKNOWN"

    def wait_ended(self, seconds: float, every: float = 1.0) -> bool:
        """Ask the scheduler every ``every`` s, up to ``seconds``, until the job has ended; whether it did."""
        deadline = time.monotonic() + seconds
        while self.active():
            if time.monotonic() >= deadline:
                return False
            time.sleep(every)
        return True

    def describe(self) -> str:
        """E.g. "Slurm job 12 is PENDING (reason: Resources)"."""
        state, reason = self.state()
        name = f"{'Slurm' if self.kind == 'slurm' else 'PBS'} job {self.job_id}"
        if state == GONE:
            return f"{name} is no longer in the queue"
        why = f" (reason: {reason})" if reason and reason != "None" else ""
        never = ", which it never leaves: the request cannot run there" if reason.split(",")[0] in NEVER else ""
        return f"{name} is {state}{why}{never}"


def controller_ip(explicit: str | None = None) -> str:
    """The one address the controller of batch engines listens on: ``explicit``, else ``HPCAI_CONTROLLER_IP``,
    else this host's address on its route out (the interface the compute nodes share with it), else the
    address its name resolves to. Listening there, not on every interface, keeps the controller off networks
    the compute nodes do not use; a site whose nodes talk over another network sets ``HPCAI_CONTROLLER_IP``."""
    chosen = explicit or os.environ.get("HPCAI_CONTROLLER_IP")
    if chosen:
        return chosen
    name = socket.gethostname()
    try:
        resolved = socket.gethostbyname(name)
    except OSError:
        resolved = "127.0.0.1"
    if not resolved.startswith("127."):
        return resolved
    try:  # a UDP "connect" sends nothing: it only asks the kernel which interface would carry the traffic
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))
            return s.getsockname()[0]
    except OSError:
        return resolved
