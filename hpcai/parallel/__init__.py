"""Parallel training over MPI: communicators, synchronous data parallel, asynchronous SGD."""
from .comm import Communicator, SerialCommunicator, install_abort_hook, world

__all__ = ["Communicator", "SerialCommunicator", "install_abort_hook", "world"]
