"""``dofa-levels plot``: Fig. 3 from a search report, Fig. 4 from level tables, or measured records."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from dynamic_ofa_ros.levels import load_level_table
from offline_tools.cli.common import UsageError, add_progress_flag, check_out
from offline_tools.measure import load_records, plot_measured_vs_predicted
from offline_tools.plot import load_search_report, plot_search, plot_tables

__all__ = ["PlotRequest", "register", "run_plot"]


@dataclass(frozen=True)
class PlotRequest:
    """Draw ``search_report`` (Fig. 3), ``tables`` + ``compare`` (Fig. 4) or ``records`` into ``out``."""

    out: str
    search_report: str | None = None
    tables: tuple[str, ...] = ()
    compare: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    """Legend labels of ``tables`` then ``compare`` (default: the file names)."""
    log_latency: bool = False
    title: str | None = None
    records: str | None = None
    """Records of ``dofa-levels measure``: measured against predicted top-1."""

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> PlotRequest:
        """The request of a parsed ``plot`` command line."""
        return cls(
            out=args.out,
            search_report=args.search_report,
            tables=tuple(args.table or ()),
            compare=tuple(args.compare),
            labels=tuple(args.labels or ()),
            log_latency=args.log_latency,
            title=args.title,
            records=args.records,
        )


def run_plot(request: PlotRequest) -> Path:
    """Write the figure; returns its path."""
    check_out(request.out, ".png", "--out")
    if [bool(request.search_report), bool(request.tables), bool(request.records)].count(True) != 1:
        raise UsageError(
            "give --search-report (Fig. 3), --table (Fig. 4) or --records (measured vs predicted)"
        )
    if request.records:
        plot_measured_vs_predicted(load_records(request.records), request.out, title=request.title)
    elif request.search_report:
        plot_search(load_search_report(request.search_report), request.out, title=request.title)
    else:
        paths = [*request.tables, *request.compare]
        labels = request.labels
        if labels and len(labels) != len(paths):
            raise UsageError(f"--labels has {len(labels)} entries for {len(paths)} tables")
        tables = [
            (labels[i] if labels else Path(p).stem, load_level_table(p, require_bn=False))
            for i, p in enumerate(paths)
        ]
        plot_tables(tables, request.out, title=request.title, log_latency=request.log_latency)
    print(f"wrote {request.out}")
    return Path(request.out)


def _plot_handler(args: argparse.Namespace) -> int:
    run_plot(PlotRequest.from_args(args))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``plot`` to the ``dofa-levels`` subcommands."""
    pl = sub.add_parser(
        "plot", help="Fig. 3 from a search report, Fig. 4 from level tables, or measured vs predicted"
    )
    pl.add_argument("--search-report", help="search report JSON (Fig. 3)")
    pl.add_argument("--records", help="records of `dofa-levels measure`: measured against predicted top-1")
    pl.add_argument("--table", nargs="+", help="level table(s) to draw (Fig. 4)")
    pl.add_argument("--compare", nargs="*", default=[], help="more tables to compare against (Fig. 4)")
    pl.add_argument("--labels", nargs="*", help="legend labels of --table/--compare, in order")
    pl.add_argument("--log-latency", action="store_true", help="Fig. 4: logarithmic latency axis")
    pl.add_argument("--title")
    pl.add_argument("--out", required=True, help="output .png")
    add_progress_flag(pl)
    pl.set_defaults(handler=_plot_handler)
