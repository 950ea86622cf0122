"""Exceptions raised by the ROS-free core.

Every error says what is wrong and what to do about it. All derive from
:class:`DofaError` so a caller (the node, a CLI) can catch them in one place
and report the message without a traceback. The errors only the design-time tools
raise (latency tables, accuracy predictors, datasets, search) live in
:mod:`offline_tools.errors` and derive from :class:`DofaError` too.
"""

from __future__ import annotations


class DofaError(Exception):
    """Base class of every error raised on purpose by ``dynamic_ofa_ros``."""


class ArchitectureError(DofaError, ValueError):
    """A sub-network description is outside the super-network's search space."""


class ModelSourceError(DofaError):
    """The super-network weights cannot be found, read or verified."""


class LevelTableError(DofaError):
    """A level table (JSON + BN statistics) is malformed or does not match the model."""


class UnknownLevelError(DofaError, ValueError):
    """A level number that the loaded table does not have."""


class ConstraintError(DofaError, ValueError):
    """A latency budget or accuracy floor that cannot be applied (NaN, negative, out of range)."""


class ImageError(DofaError, ValueError):
    """An input image that cannot be classified (wrong shape, dtype, encoding or size)."""
