"""Precision policies: what a model stores, what its products compute in, and whether to scale the loss.

``fp64``/``fp32``: everything in that dtype. ``fp16``/``bf16``: *pure* reduced precision — parameters
are kept rounded to the format (an update smaller than half an ulp is lost), products run as on tensor
cores (rounded operands, fp32 accumulation, rounded results and gradients). ``mixed-fp16``/``mixed-bf16``:
fp32 master parameters, with the same reduced-precision products — the weights are rounded on their way
into each product, so the gradients reach the fp32 masters intact (Micikevicius et al. 2018). fp16's
narrow range makes small gradients underflow, hence dynamic loss scaling by default for mixed-fp16.
On the CPU the reduced formats are emulated in float32 arrays holding exactly representable values.
"""
from __future__ import annotations

import contextlib
import dataclasses

import numpy as np

from .. import precision as _precision
from ..autograd.function import set_autocast


@dataclasses.dataclass(frozen=True)
class Policy:
    """How to train in one precision; see the module docstring."""

    name: str
    param_dtype: np.dtype       # the dtype of the parameter arrays
    compute: str | None         # the autocast precision of tensor-core ops (None: the parameter dtype)
    pure: bool                  # parameters themselves are kept rounded to ``compute``
    loss_scaling: bool          # dynamic loss scaling by default

    @contextlib.contextmanager
    def autocast(self):
        """Run ops of this thread in the policy's compute precision inside the block."""
        old = set_autocast(_precision.get_precision(self.compute) if self.compute else None)
        try:
            yield self
        finally:
            set_autocast(old)

    def prepare(self, model) -> None:
        """Cast the model's parameters to the policy's dtype (and round them, for a pure policy)."""
        model.astype(self.param_dtype)
        self.round_parameters(model.parameters())

    def round_parameters(self, params) -> None:
        """Round parameters to the compute format in place (pure policies only; a no-op otherwise)."""
        if self.pure:
            for p in params:
                p.data[...] = _precision.round_to(p.data, self.compute)


POLICIES: dict[str, Policy] = {p.name: p for p in [
    Policy("fp64", np.dtype(np.float64), None, False, False),
    Policy("fp32", np.dtype(np.float32), None, False, False),
    Policy("bf16", np.dtype(np.float32), "bf16", True, False),
    Policy("fp16", np.dtype(np.float32), "fp16", True, False),
    Policy("mixed-bf16", np.dtype(np.float32), "bf16", False, False),
    Policy("mixed-fp16", np.dtype(np.float32), "fp16", False, True),
]}


def get_policy(policy) -> Policy:
    """The :class:`Policy` named ``policy`` (a Policy passes through), or a ValueError listing the names."""
    if isinstance(policy, Policy):
        return policy
    if policy not in POLICIES:
        raise ValueError(f"precision: expected one of {list(POLICIES)}, got {policy!r}")
    return POLICIES[policy]


def autocast(precision):
    """Context manager: tensor-core ops of this thread compute in ``precision`` ("fp16", "bf16", or None)."""
    return Policy("autocast", np.dtype(np.float32), precision, False, False).autocast()
