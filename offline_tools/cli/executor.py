"""The executor flags (``--executor local|ray``, ``--ray-address``, ``--workers``, ...) and what they build.

``measure``, ``search`` (measured accuracy), ``calibrate`` and ``build`` take them; ``profile`` and
``validate-latency`` accept ``--executor`` only to refuse a parallel one with the reason
(:func:`offline_tools.executors.refuse_parallel`).
"""

from __future__ import annotations

import argparse

from offline_tools.cli.common import UsageError
from offline_tools.executors import EXECUTOR_KINDS, ExecutorError, ExecutorSpec

__all__ = ["add_executor_args", "executor_spec"]


def add_executor_args(p: argparse.ArgumentParser, *, latency: bool = False) -> None:
    """``--executor`` (and, unless ``latency``, ``--ray-address --workers --worker-threads --ray-data``)."""
    g = p.add_argument_group("executor")
    if latency:
        g.add_argument(
            "--executor",
            choices=EXECUTOR_KINDS,
            default="local",
            help="latency is measured in this process only (a parallel executor is refused)",
        )
        return
    g.add_argument(
        "--executor",
        choices=EXECUTOR_KINDS,
        default="local",
        help="where candidates are measured: local (this process, default) or ray (Ray workers)",
    )
    g.add_argument(
        "--ray-address", help="an existing Ray cluster (e.g. HEAD:6379); default: a local Ray instance"
    )
    g.add_argument(
        "--workers", type=int, help="Ray workers (default: the cluster's GPUs with cuda, else its CPUs)"
    )
    g.add_argument("--worker-threads", type=int, help="torch threads per Ray worker (default 1)")
    g.add_argument(
        "--ray-data",
        choices=("store", "path"),
        default="store",
        help="store: decode the images here once and ship them to the workers (default); "
        "path: every worker decodes them once from the same paths (a cluster that sees the data)",
    )


def executor_spec(args: argparse.Namespace) -> ExecutorSpec:
    """The :class:`ExecutorSpec` of :func:`add_executor_args`' flags (``--executor`` alone: local)."""
    try:
        return ExecutorSpec(
            kind=args.executor,
            address=getattr(args, "ray_address", None),
            workers=getattr(args, "workers", None),
            threads=getattr(args, "worker_threads", None),
            data=getattr(args, "ray_data", "store"),
        )
    except ExecutorError as exc:
        raise UsageError(str(exc)) from exc
