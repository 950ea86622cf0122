"""Exceptions raised only by the design-time tools (latency tables, predictors, datasets, search).

They derive from :class:`dynamic_ofa_ros.errors.DofaError`, like the core's, so a caller (the
``dofa-levels`` CLI, the demo) can catch every deliberate error in one place and print its
message without a traceback. The runtime core never raises them.
"""

from __future__ import annotations

from dynamic_ofa_ros.errors import DofaError

__all__ = ["AccuracyPredictorError", "DatasetError", "LatencyTableError", "SearchError"]


class LatencyTableError(DofaError):
    """A per-operator latency look-up table is missing, malformed or lacks a resolution."""


class AccuracyPredictorError(DofaError):
    """An accuracy predictor file that cannot be loaded or has the wrong shape."""


class DatasetError(DofaError):
    """An image source (ImageFolder, zip, rosbag topic) with no usable images."""


class SearchError(DofaError):
    """The architecture search could not satisfy the requested constraints."""
