"""A table's level as a compiled artefact: cache key, export on a miss, compile.

:func:`compile_table_level` is what :class:`~dynamic_ofa_ros.engine.LevelEngine` calls for
every level at start-up. With a warm cache the super-network is not touched: the key needs
only checksums (the model's, the level's BN tensors', both computed without torch) and the
architecture, and the ONNX file comes from disk, so a process that finds every level in the
cache never imports torch. On a miss the super-network is loaded (:meth:`SupernetSource.load
<dynamic_ofa_ros.supernet.SupernetSource.load>`), the level extracted, its BN statistics loaded,
exported (:func:`~dynamic_ofa_ros.backends.export.export_onnx`) and written to the cache.
"""

from __future__ import annotations

from dataclasses import dataclass

from dynamic_ofa_ros.backends import CompiledLevel, CompileOptions, backend_version, compiled_backend
from dynamic_ofa_ros.backends.cache import ArtefactCache, CachedLevel, CacheKey
from dynamic_ofa_ros.backends.onnx_spec import exporter_version
from dynamic_ofa_ros.checksum import array_state_sha256
from dynamic_ofa_ros.levels import Level, LevelTable
from dynamic_ofa_ros.supernet import Supernet, SupernetSource, as_loaded

__all__ = ["CompiledTableLevel", "compile_table_level", "export_table_level", "level_cache_key"]


@dataclass(frozen=True)
class CompiledTableLevel:
    """A compiled level and the cache entry its ONNX file came from."""

    compiled: CompiledLevel
    artefact: CachedLevel
    key: CacheKey


def level_cache_key(
    supernet: Supernet | SupernetSource, table: LevelTable, level: Level, *, backend: str, precision: str
) -> CacheKey:
    """The cache key of ``level`` of ``table`` for ``backend`` at ``precision`` (no torch needed)."""
    if table.bn is None:
        raise ValueError("a table without BN statistics cannot be compiled")
    return CacheKey(
        supernet_sha256=supernet.sha256,
        architecture=level.config.key(),
        bn_sha256=array_state_sha256(table.bn_arrays(level.level)),
        exporter=exporter_version(),
        backend=backend,
        backend_version=backend_version(backend),
        precision=precision,
    )


def export_table_level(supernet: Supernet | SupernetSource, table: LevelTable, level: Level) -> bytes:
    """The ONNX bytes of ``level``: extracted, the table's BN statistics loaded, softmax appended.

    Loads the super-network's weights (torch) when ``supernet`` is a source not loaded yet.
    """
    from dynamic_ofa_ros.backends.export import export_onnx
    from dynamic_ofa_ros.bn import extract_subnet, load_bn_state

    if table.bn is None:
        raise ValueError("a table without BN statistics cannot be exported")
    module = extract_subnet(as_loaded(supernet).net, level.config)
    load_bn_state(
        module, table.bn_arrays(level.level), where=f"{table.path or 'level table'}: level {level.level}"
    )
    return export_onnx(module.to("cpu").eval(), level.config.resolution)


def compile_table_level(
    supernet: Supernet | SupernetSource,
    table: LevelTable,
    level: Level,
    *,
    backend: str,
    options: CompileOptions,
    cache: ArtefactCache,
) -> CompiledTableLevel:
    """``level`` of ``table`` compiled by ``backend``; exported first when the cache has no valid entry."""
    key = level_cache_key(supernet, table, level, backend=backend, precision=options.precision)
    artefact = cache.get(key, lambda: export_table_level(supernet, table, level))
    compiled = compiled_backend(backend)(str(artefact.model), options)
    return CompiledTableLevel(compiled=compiled, artefact=artefact, key=key)
