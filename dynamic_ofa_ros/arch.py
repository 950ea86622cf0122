"""Sub-network descriptions of the OFA MobileNetV3 super-network.

The super-network ``ofa_mbv3_d234_e346_k357_w1.2`` has a fixed stem and first
block, then 20 elastic blocks in 5 stages of 4. A sub-network is chosen by

* ``ks``: the depth-wise kernel size of each of the 20 blocks (3, 5 or 7),
* ``e``: the expand ratio of each of the 20 blocks (3, 4 or 6),
* ``d``: how many of the 4 blocks of each stage run (2, 3 or 4),
* ``resolution``: the square input size in pixels.

Blocks beyond a stage's depth are skipped; their ``ks``/``e`` entries do not
change the network, so :meth:`SubnetConfig.canonical` and
:meth:`SubnetConfig.key` ignore them.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dynamic_ofa_ros.errors import ArchitectureError

N_STAGES = 5
BLOCKS_PER_STAGE = 4
N_BLOCKS = N_STAGES * BLOCKS_PER_STAGE
SUPERNET_NAME = "ofa_mbv3_d234_e346_k357_w1.2"


@dataclass(frozen=True)
class SearchSpace:
    """The choices a sub-network may take; defaults are the OFA MobileNetV3 space."""

    ks_choices: tuple[int, ...] = (3, 5, 7)
    e_choices: tuple[int, ...] = (3, 4, 6)
    d_choices: tuple[int, ...] = (2, 3, 4)
    resolutions: tuple[int, ...] = tuple(range(128, 225, 16))

    def __post_init__(self) -> None:
        for name in ("ks_choices", "e_choices", "d_choices", "resolutions"):
            values = getattr(self, name)
            if not values:
                raise ArchitectureError(f"search space: {name} is empty; give at least one value")
            if any(int(v) <= 0 for v in values):
                raise ArchitectureError(f"search space: {name}={values} must be positive integers")
            object.__setattr__(self, name, tuple(sorted({int(v) for v in values})))
        if max(self.d_choices) > BLOCKS_PER_STAGE:
            raise ArchitectureError(
                f"search space: depth choices {self.d_choices} exceed {BLOCKS_PER_STAGE} blocks per stage"
            )

    def largest(self) -> SubnetConfig:
        """The largest sub-network of the space (max kernel, expand, depth and resolution)."""
        return SubnetConfig(
            resolution=max(self.resolutions),
            ks=(max(self.ks_choices),) * N_BLOCKS,
            e=(max(self.e_choices),) * N_BLOCKS,
            d=(max(self.d_choices),) * N_STAGES,
        )

    def smallest(self) -> SubnetConfig:
        """The smallest sub-network of the space."""
        return SubnetConfig(
            resolution=min(self.resolutions),
            ks=(min(self.ks_choices),) * N_BLOCKS,
            e=(min(self.e_choices),) * N_BLOCKS,
            d=(min(self.d_choices),) * N_STAGES,
        )

    def sample(self, rng: random.Random) -> SubnetConfig:
        """A uniformly random sub-network, drawn from ``rng`` only (deterministic per seed)."""
        return SubnetConfig(
            resolution=rng.choice(self.resolutions),
            ks=tuple(rng.choice(self.ks_choices) for _ in range(N_BLOCKS)),
            e=tuple(rng.choice(self.e_choices) for _ in range(N_BLOCKS)),
            d=tuple(rng.choice(self.d_choices) for _ in range(N_STAGES)),
        ).canonical()

    def contains(self, config: SubnetConfig) -> bool:
        """Whether every active choice of ``config`` is in this space."""
        try:
            self.check(config)
        except ArchitectureError:
            return False
        return True

    def check(self, config: SubnetConfig) -> None:
        """Raise :class:`ArchitectureError` naming the first choice outside this space."""
        if config.resolution not in self.resolutions:
            raise ArchitectureError(
                f"resolution {config.resolution} is not in the search space {self.resolutions}"
            )
        for stage, depth in enumerate(config.d):
            if depth not in self.d_choices:
                raise ArchitectureError(f"d[{stage}]={depth} is not one of {self.d_choices}")
        for block in config.active_blocks():
            if config.ks[block] not in self.ks_choices:
                raise ArchitectureError(f"ks[{block}]={config.ks[block]} is not one of {self.ks_choices}")
            if config.e[block] not in self.e_choices:
                raise ArchitectureError(f"e[{block}]={config.e[block]} is not one of {self.e_choices}")


@dataclass(frozen=True)
class SubnetConfig:
    """One sub-network: resolution, per-block kernel size and expand ratio, per-stage depth."""

    resolution: int
    ks: tuple[int, ...]
    e: tuple[int, ...]
    d: tuple[int, ...]
    _key: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ks", tuple(int(v) for v in self.ks))
        object.__setattr__(self, "e", tuple(int(v) for v in self.e))
        object.__setattr__(self, "d", tuple(int(v) for v in self.d))
        object.__setattr__(self, "resolution", int(self.resolution))
        if len(self.ks) != N_BLOCKS:
            raise ArchitectureError(f"ks has {len(self.ks)} entries; it needs one per block ({N_BLOCKS})")
        if len(self.e) != N_BLOCKS:
            raise ArchitectureError(f"e has {len(self.e)} entries; it needs one per block ({N_BLOCKS})")
        if len(self.d) != N_STAGES:
            raise ArchitectureError(f"d has {len(self.d)} entries; it needs one per stage ({N_STAGES})")
        if any(not 1 <= v <= BLOCKS_PER_STAGE for v in self.d):
            raise ArchitectureError(f"d={list(self.d)}: each stage depth must be 1..{BLOCKS_PER_STAGE}")
        if self.resolution < 32 or self.resolution % 4:
            raise ArchitectureError(
                f"resolution {self.resolution} must be a multiple of 4 and at least 32 pixels"
            )
        active = [(self.ks[b], self.e[b]) for b in self.active_blocks()]
        key = f"r{self.resolution}-d{''.join(map(str, self.d))}-" + "".join(f"{k}{e}" for k, e in active)
        object.__setattr__(self, "_key", key)

    def active_blocks(self) -> Iterator[int]:
        """Indices (0..19) of the blocks that run, stage by stage."""
        for stage, depth in enumerate(self.d):
            start = stage * BLOCKS_PER_STAGE
            yield from range(start, start + depth)

    def canonical(self) -> SubnetConfig:
        """The same network with skipped blocks' ks/e set to the stage's last active block's."""
        ks = list(self.ks)
        e = list(self.e)
        for stage, depth in enumerate(self.d):
            start = stage * BLOCKS_PER_STAGE
            for block in range(start + depth, start + BLOCKS_PER_STAGE):
                ks[block] = ks[start + depth - 1]
                e[block] = e[start + depth - 1]
        return SubnetConfig(resolution=self.resolution, ks=tuple(ks), e=tuple(e), d=self.d)

    def key(self) -> str:
        """A short string that identifies the network (skipped blocks ignored); use it for caches."""
        return self._key

    def same_network(self, other: SubnetConfig) -> bool:
        """Whether both describe the same network (ignoring skipped blocks)."""
        return self.key() == other.key()

    def ofa_kwargs(self) -> dict[str, list[int]]:
        """Arguments for ``OFAMobileNetV3.set_active_subnet(**kwargs)``."""
        return {"ks": list(self.ks), "e": list(self.e), "d": list(self.d)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``{"resolution", "ks", "e", "d"}``."""
        return {"resolution": self.resolution, "ks": list(self.ks), "e": list(self.e), "d": list(self.d)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "architecture") -> SubnetConfig:
        """Build from a mapping with ``resolution``/``r``, ``ks``, ``e``, ``d``; errors name ``where``."""
        try:
            resolution = data["resolution"] if "resolution" in data else data["r"]
            if isinstance(resolution, Sequence):  # OFA stores r as a one-element list
                resolution = resolution[0]
            return cls(
                resolution=int(resolution), ks=tuple(data["ks"]), e=tuple(data["e"]), d=tuple(data["d"])
            )
        except KeyError as exc:
            raise ArchitectureError(
                f"{where}: missing field {exc.args[0]!r} (need resolution, ks, e, d)"
            ) from exc
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ArchitectureError):
                raise ArchitectureError(f"{where}: {exc}") from exc
            raise ArchitectureError(f"{where}: fields must be integers / lists of integers ({exc})") from exc

    def summary(self) -> str:
        """Human-readable one-liner, e.g. ``r160 d=[2,3,4,2,2] ks~4.2 e~3.9``."""
        active = list(self.active_blocks())
        mean_ks = sum(self.ks[b] for b in active) / len(active)
        mean_e = sum(self.e[b] for b in active) / len(active)
        return f"r{self.resolution} d={list(self.d)} ks~{mean_ks:.1f} e~{mean_e:.1f} ({len(active)} blocks)"
