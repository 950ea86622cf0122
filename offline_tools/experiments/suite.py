"""Run the chosen experiments in one go: helper processes, set-up, each experiment, result files, summary.

The other processes (fig. 7's training job, fig. 8's two classifiers) are spawned first and build
their models while this process builds its engine; all of them then idle (without touching the
device) until their experiment, so their start-up costs wall time only once and never overlaps a
measurement.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import traceback
from collections.abc import Callable, Sequence

from offline_tools.experiments.context import (
    Context,
    Outcome,
    SummaryRow,
    build_context,
    measure_alone,
    write_result,
)
from offline_tools.experiments.fig8 import run_fig8
from offline_tools.experiments.figures import run_fig6, run_fig7
from offline_tools.experiments.loads import TrainingLoad, start_training_load
from offline_tools.experiments.plots import fmt_pct
from offline_tools.experiments.settings import EXPERIMENTS, Inputs, Settings
from offline_tools.experiments.workers import WorkerPair

__all__ = ["run_experiments"]

_COLUMNS = (("exp", 5), ("run", 14), ("level", 5), ("hit", 9), ("react", 7), ("react_ms", 8), ("recover", 7))


def run_experiments(
    inputs: Inputs, settings: Settings, only: Sequence[str] = EXPERIMENTS
) -> tuple[dict[str, dict[str, object]], int]:
    """Run ``only`` (names from :data:`EXPERIMENTS`), write their results; ``(results, failures)``.

    ``results`` maps each experiment that ran to its JSON object (as written to
    ``<out>/<name>-<tag>.json``); an experiment that raised counts as a failure and the others
    still run.
    """
    unknown = [name for name in only if name not in EXPERIMENTS]
    if unknown:
        raise ValueError(f"unknown experiment(s) {unknown}; choose from {', '.join(EXPERIMENTS)}")
    inputs.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars (also in the spawned processes)
    setup_lock = mp.get_context("spawn").Lock()
    load = start_training_load(settings, setup_lock) if "fig7" in only else None
    pair = WorkerPair(inputs, settings, setup_lock) if "fig8" in only else None
    try:
        ctx = build_context(inputs, settings, measure=False, setup_lock=setup_lock)
        t0 = time.monotonic()
        for helper in (load, pair):
            try:
                if helper is not None:
                    helper.wait_ready()
            except Exception as exc:  # the experiment that needs it fails, the others run
                print(f"helper process failed to start: {exc}", flush=True)
        print(f"helper processes ready after {time.monotonic() - t0:.1f} s more", flush=True)
        measure_alone(ctx)
        runners: dict[str, Callable[[], Outcome]] = {
            "fig6": lambda: run_fig6(ctx),
            "fig7": lambda: run_fig7(ctx, load),
            "fig8": lambda: run_fig8(ctx, pair),
        }
        return _run_all(ctx, [(name, runners[name]) for name in only])
    finally:
        _close(load, pair)


def _close(load: TrainingLoad | None, pair: WorkerPair | None) -> None:
    if load is not None:
        load.close()
    if pair is not None:
        pair.close()


def _run_all(
    ctx: Context, runners: Sequence[tuple[str, Callable[[], Outcome]]]
) -> tuple[dict[str, dict[str, object]], int]:
    outcomes: dict[str, Outcome] = {}
    failures = 0
    for name, runner in runners:
        t0 = time.monotonic()
        try:
            outcome = runner()
            outcome.result["wall_s"] = round(time.monotonic() - t0, 2)
            path = write_result(ctx, name, outcome.result)
            outcomes[name] = outcome
            print(f"{name}: {time.monotonic() - t0:.1f} s -> {path}", flush=True)
        except Exception as exc:
            failures += 1
            print(
                f"{name}: FAILED after {time.monotonic() - t0:.1f} s: {type(exc).__name__}: {exc}", flush=True
            )
            print("".join(traceback.format_exc(limit=6).splitlines(keepends=True)[-12:]), flush=True)
    _print_summary(ctx, outcomes)
    return {name: outcome.result for name, outcome in outcomes.items()}, failures


def _row(experiment: str, row: SummaryRow) -> str:
    m = row.headline
    rf, rms, rec = m["reaction_frames"], m["reaction_ms"], m["recovery_frames"]
    return (
        f"{experiment:5} {row.label:14} {row.level:>5} {fmt_pct(m['deadline_hit_after_reaction']):>9} "
        f"{'-' if rf is None else rf:>7} {'-' if rms is None else f'{rms:.1f}':>8} "
        f"{'-' if rec is None else rec:>7} {m['mean_accuracy']:8.2f}"
    )


def _print_summary(ctx: Context, outcomes: dict[str, Outcome]) -> None:
    """The console table: one line per run of every experiment, then its budgets and load check."""
    alone = ", ".join(f"{lvl}:{ctx.alone[lvl]['p95']:.2f}" for lvl in ctx.levels)
    print(
        f"\n{ctx.device_name} | window {ctx.window_size} frames | levels {ctx.levels} | alone p95 ms {alone}"
    )
    if not ctx.accuracy_meaningful:
        print("NOTE: random-weight super-network: the accuracies are the table's numbers, not this model's")
    head = f"{_COLUMNS[0][0]:5} {_COLUMNS[1][0]:14} " + " ".join(f"{h:>{w}}" for h, w in _COLUMNS[2:])
    print(f"{head} {'acc %':>8}")
    for name, outcome in outcomes.items():
        for row in outcome.rows:
            print(_row(name, row))
        if outcome.notes:
            print(f"{'':5} " + "; ".join(outcome.notes))
