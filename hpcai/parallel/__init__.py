"""Parallel training over MPI: communicators, synchronous data parallel, asynchronous SGD.

Synchronous data parallel follows Horovod's API (``init``, ``rank``, ``size``, ``DistributedOptimizer``,
``broadcast_parameters``); ``train_async`` runs Hogwild threads, a parameter server, or one-sided MPI
RMA windows behind one interface, next to a synchronous baseline; ``straggler_study`` races them against
each other with one slow worker, over several seeds, in measured or simulated time. Gradient codecs
(fp16/bf16 words for compressed exchanges) live in :mod:`.compression`.
"""
from .asynchronous import METHODS, AsyncResult, train_async
from .compression import CODECS
from .comm import Communicator, SerialCommunicator, StallWarning, default_comm, install_abort_hook, world
from .data_parallel import (COMPRESSIONS, DistributedOptimizer, broadcast_optimizer_state, broadcast_parameters,
                            init, local_rank, rank, size)
from .rma import ParamWindow
from .straggler import StudyResult
from .straggler import study as straggler_study

__all__ = ["CODECS", "COMPRESSIONS", "METHODS", "AsyncResult", "Communicator", "DistributedOptimizer", "ParamWindow",
           "SerialCommunicator", "StallWarning", "broadcast_optimizer_state", "broadcast_parameters", "default_comm", "init",
           "install_abort_hook", "local_rank", "rank", "size", "straggler_study", "StudyResult", "train_async", "world"]
