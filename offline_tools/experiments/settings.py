"""What shapes a run of the experiments: :class:`Settings` (written into every result) and :class:`Inputs`."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, replace
from pathlib import Path

from dynamic_ofa_ros.timing import device_kind

__all__ = ["EXPERIMENTS", "Inputs", "Phases", "Settings"]

#: The experiments, by the paper's figure numbers.
EXPERIMENTS = ("fig6", "fig7", "fig8")

#: Durations (s) of the three phases of an experiment.
Phases = tuple[float, float, float]


@dataclass(frozen=True, kw_only=True)
class Inputs:
    """What the experiments run on and where their results go.

    Attributes:
        table: the level table JSON (its BN file beside it).
        out: folder for ``fig<N>-<tag>.json`` / ``.png``.
        model: the super-network source (``embedded``, ``ofa_zoo``, ``random[:seed]`` or a path).
        allow_random: allow ``model="random"`` (latency-only runs).
        images: folder or zip of JPEG/PNG photos; ``None``: Imagenette in ``shared/``, else synthetic.
        tag: file-name tag; ``None``: the GPU model (e.g. ``h100``) or ``cpu``.
    """

    table: Path
    out: Path
    model: str = "embedded"
    allow_random: bool = False
    images: str | None = None
    tag: str | None = None


def _halved(phases: Phases) -> Phases:
    return (phases[0] / 2, phases[1] / 2, phases[2] / 2)


@dataclass(frozen=True)
class Settings:
    """Everything that shapes a run; written into every result file.

    Durations are in seconds of wall time. ``fps`` paces figs. 6/7 like a camera (0 = next frame
    as soon as the previous result is out); ``fig8_fps`` paces both classifiers of fig. 8 (by
    default back-to-back, so that they really compete for the device).
    """

    device: str = "cpu"
    fps: float = 0.0
    fig8_fps: float = 0.0
    fig6_phases_s: Phases = (3.0, 3.0, 3.0)
    fig7_phases_s: Phases = (3.0, 5.0, 4.0)
    fig8_phases_s: Phases = (2.0, 5.0, 3.0)
    calib_frames: int = 60
    warmup_frames: int = 20
    margin: float = 1.1
    load_margin: float = 1.25
    window_size: int | None = None
    load_batch: int = 128
    load_resolution: int = 224
    load_threads: int = 0
    threads: int | None = None
    lut_source: str = "measured"
    statistic: str = "p95"
    n_images: int = 32
    image_size: int = 224
    max_timeline_points: int = 2000
    peer_timeout_s: float = 0.5
    worker_start_timeout_s: float = 240.0
    seed: int = 0

    @classmethod
    def for_device(cls, device: str, *, quick: bool = False) -> Settings:
        """Defaults for ``device``.

        On a GPU a 100 fps camera and a batch-128 training job; on a CPU back-to-back frames,
        one inference thread and a small training job on all cores. ``quick`` halves the phases
        and the calibration frames (at least 10).
        """
        if device_kind(device) == "cuda":
            settings = cls(device=device, fps=100.0, load_batch=128, load_resolution=224, calib_frames=100)
        else:
            settings = cls(
                device=device,
                fps=0.0,
                load_batch=8,
                load_resolution=96,
                load_threads=os.cpu_count() or 2,
                threads=1,
                calib_frames=20,
                warmup_frames=5,
            )
        if quick:
            settings = replace(
                settings,
                fig6_phases_s=_halved(settings.fig6_phases_s),
                fig7_phases_s=_halved(settings.fig7_phases_s),
                fig8_phases_s=_halved(settings.fig8_phases_s),
                calib_frames=max(10, settings.calib_frames // 2),
            )
        return settings

    def to_dict(self) -> dict[str, object]:
        """JSON-ready copy (tuples as lists), fields in declaration order."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items()}
