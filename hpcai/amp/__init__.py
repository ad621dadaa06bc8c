"""Mixed and reduced precision training: policies, autocast, dynamic loss scaling."""
from .policy import POLICIES, Policy, autocast, get_policy
from .scaler import DynamicLossScaler

__all__ = ["POLICIES", "DynamicLossScaler", "Policy", "autocast", "get_policy"]
