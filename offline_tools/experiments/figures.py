"""Figs. 6 and 7: one classifier, a dynamic run against two static baselines under one schedule.

* **fig6** -- the latency budget changes over time (tight -> loose -> medium) on an otherwise idle
  device; the levels must follow within one window.
* **fig7** -- a co-located training job (:mod:`~offline_tools.experiments.loads`) starts in the
  middle of the run and stops later; the manager steps down until the budget is met and back up
  after the job ends.

Baselines (never switching): ``static_alone``, the level the look-up table picks for the
(loosest) budget, which meets it only when the model is alone; ``static_safe``, the level that
meets it always (measured).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from dynamic_ofa_ros.manager import Decision
from offline_tools.experiments.budgets import fig6_budgets, load_budget, load_margins, lut_level
from offline_tools.experiments.context import (
    Context,
    Outcome,
    SummaryRow,
    levels_block,
    result_header,
)
from offline_tools.experiments.loads import TrainingLoad, start_training_load
from offline_tools.experiments.plots import plot_runs, plot_safely
from offline_tools.experiments.records import (
    Headline,
    LatencyStats,
    LoadInterval,
    RunRecord,
    analyse_run,
    metric_fields,
    p95_of,
)
from offline_tools.experiments.runs import Schedule, measure_levels, run_frames

__all__ = ["assemble", "count_switches", "run_dynamic_and_static", "run_fig6", "run_fig7"]


def count_switches(reasons: dict[str, int]) -> Callable[[Decision], None]:
    """An ``on_switch`` callback counting the manager's switches by reason into ``reasons``."""

    def on_switch(decision: Decision) -> None:
        reasons[decision.reason] = reasons.get(decision.reason, 0) + 1

    return on_switch


def run_dynamic_and_static(
    ctx: Context,
    lut: Mapping[int, float],
    base: Mapping[str, int],
    schedule: Schedule,
    *,
    after_run: Callable[[RunRecord], None] | None = None,
) -> dict[str, RunRecord]:
    """The dynamic classifier's run, then one run locked at each level of ``base``, same schedule.

    The dynamic run's ``switch_reasons`` count its manager's switches by reason;
    ``after_run(record)`` is called right after each run, before the next starts.
    """
    runs: dict[str, RunRecord] = {}
    for name in ("dynamic", *base):
        reasons: dict[str, int] = {}
        if name == "dynamic":
            classifier = ctx.rig.classifier(lut, on_switch=count_switches(reasons))
        else:
            classifier = ctx.rig.classifier(lut, level=base[name])
        rec = run_frames(
            classifier, ctx.rig.images, schedule, name=name, warmup_frames=ctx.settings.warmup_frames
        )
        if after_run is not None:
            after_run(rec)
        rec.switch_reasons = reasons
        runs[name] = rec
    return runs


def assemble(
    ctx: Context,
    experiment: str,
    runs: Mapping[str, RunRecord],
    base: Mapping[str, int],
    extra: Mapping[str, object],
) -> tuple[dict[str, object], dict[str, Headline]]:
    """Analyse the dynamic run and the baselines the same way: the JSON object and each run's headline."""
    lut = ctx.lut()
    dyn = analyse_run(runs["dynamic"], window=ctx.window_size, accuracy=ctx.accuracy, alone_lut=lut)
    headlines = {"dynamic": metric_fields(dyn)}
    result = result_header(ctx, experiment)
    result.update(headlines["dynamic"])
    dyn["switch_reasons"] = runs["dynamic"].switch_reasons
    dyn["manager"] = runs["dynamic"].manager or {}
    result["dynamic"] = dyn
    baselines: dict[str, object] = {}
    for name, lvl in base.items():
        m = analyse_run(
            runs[name],
            window=ctx.window_size,
            accuracy=ctx.accuracy,
            alone_lut=lut,
            reaction_from=dyn["events"],
            static=True,
        )
        headlines[name] = metric_fields(m)
        baselines[name] = {"level": lvl, **headlines[name], "detail": m}
    result["baselines"] = baselines
    result.update(extra)
    result["timeline"] = {name: rec.compact(ctx.settings.max_timeline_points) for name, rec in runs.items()}
    return result, headlines


def _outcome(
    ctx: Context,
    experiment: str,
    runs: Mapping[str, RunRecord],
    base: Mapping[str, int],
    extra: Mapping[str, object],
    title: str,
) -> Outcome:
    """Assemble, plot and summarise one of figs. 6/7."""
    result, headlines = assemble(ctx, experiment, runs, base, extra)
    png = ctx.inputs.out / f"{experiment}-{ctx.tag}.png"
    plot_safely(
        result,
        lambda: plot_runs(png, runs, headlines, title=title, levels=ctx.levels, device_name=ctx.device_name),
    )
    rows = [SummaryRow("dynamic", "", headlines["dynamic"])]
    rows += [SummaryRow(name, str(lvl), headlines[name]) for name, lvl in base.items()]
    return Outcome(result=result, rows=rows)


def run_fig6(ctx: Context) -> Outcome:
    """Budget tight -> loose -> medium on an idle device; dynamic vs two static levels."""
    s = ctx.settings
    budgets = fig6_budgets(p95_of(ctx.alone), s.margin)
    order = ("tight", "loose", "medium")
    edges = [float(e) for e in np.cumsum(s.fig6_phases_s)]

    def budget_at(t: float) -> float:
        return next(
            (budgets[name][0] for name, edge in zip(order, edges, strict=True) if t < edge),
            budgets[order[-1]][0],
        )

    lut = ctx.lut()
    base = {
        "static_alone": budgets["loose"][1],
        "static_safe": lut_level(lut, min(b for b, _ in budgets.values())),
    }
    runs = run_dynamic_and_static(
        ctx, lut, base, Schedule(duration_s=edges[-1], fps=s.fps, budget_at=budget_at)
    )
    rounded = {k: {"budget_ms": round(b, 4), "level": lvl} for k, (b, lvl) in budgets.items()}
    extra = {
        "settings": s.to_dict(),
        "budget_rule": "fig6_budgets: target levels at 25 %, 50 %, 100 % of the range; budget = margin x "
        "alone p95 of the target, below the next level's p95; static_alone = LUT level of the loosest "
        "budget, static_safe = LUT level of the tightest",
        "budgets": rounded,
        "phases": [{"budget": k, "until_s": e} for k, e in zip(order, edges, strict=True)],
        "levels": levels_block(ctx),
    }
    outcome = _outcome(ctx, "fig6", runs, base, extra, "Fig. 6: budget changes (tight -> loose -> medium)")
    outcome.notes.append("budgets " + ", ".join(f"{k} {v['budget_ms']:.3f}" for k, v in rounded.items()))
    return outcome


def _measure_under_load(ctx: Context, load: TrainingLoad) -> tuple[dict[int, LatencyStats], LoadInterval]:
    """Every level's latency while the job trains; the job's step rate meanwhile (it is idle after)."""
    s = ctx.settings
    load.on()
    load.wait_running()
    loaded = measure_levels(ctx.rig, ctx.levels, frames=s.calib_frames, fps=s.fps, warmup=s.warmup_frames)
    return loaded, load.wait_idle()


def _load_check(
    ctx: Context,
    loaded: Mapping[int, LatencyStats],
    probe: int,
    calib: LoadInterval,
    runs: Mapping[str, RunRecord],
) -> dict[str, object]:
    """Evidence that the job really loads the device: the slowdown of level ``probe`` and the step rates."""
    return {
        "level": probe,
        "alone_ms_p50": round(ctx.alone[probe]["p50"], 4),
        "loaded_ms_p50": round(loaded[probe]["p50"], 4),
        "slowdown_p50": round(loaded[probe]["p50"] / ctx.alone[probe]["p50"], 3),
        "calibration_steps_per_s": calib["steps_per_s"],
        "runs": {k: r.load_interval for k, r in runs.items()},
    }


def run_fig7(ctx: Context, load: TrainingLoad | None = None) -> Outcome:
    """A ResNet-18 training job (``load``, else a new one) starts mid-run in another process, stops later."""
    s = ctx.settings
    job = load or start_training_load(s)
    try:
        job.wait_ready()
        loaded, calib = _measure_under_load(ctx, job)
        rule = load_budget(p95_of(ctx.alone), p95_of(loaded), load_margins(s.load_margin))
        budget = rule["budget_ms"]
        before, during, after = s.fig7_phases_s
        base = {"static_alone": rule["static_alone"], "static_safe": rule["static_safe"]}

        def record_load(rec: RunRecord) -> None:
            rec.load_interval = job.wait_idle()  # also waits for the job to be idle before the next run

        schedule = Schedule(
            duration_s=before + during + after,
            fps=s.fps,
            budget_at=lambda _t: budget,
            load_flag=lambda: job.running,
            actions=((before, job.on), (before + during, job.off)),
        )
        runs = run_dynamic_and_static(ctx, ctx.lut(), base, schedule, after_run=record_load)
        check = _load_check(ctx, loaded, base["static_alone"], calib, runs)
    finally:
        job.close()
    extra = {
        "settings": s.to_dict(),
        "budget_ms": round(budget, 4),
        "budget_rule": "load_budget: candidates margin x p95 under load per level; keep the one with the "
        "largest gap LUT(alone) - safe level (ties: higher safe level); margins tried in order until "
        "one gives a gap",
        "budget_margin": rule["margin"],
        "budget_candidates": rule["candidates"],
        "load_effect": rule["load_effect"],
        "load_job": {
            **job.settings,
            "model": "torchvision resnet18",
            "optimizer": "SGD(lr=0.01, momentum=0.9)",
            "startup_s": round(job.startup_s, 2),
        },
        "load_check": check,
        "levels": levels_block(ctx, loaded),
    }
    outcome = _outcome(ctx, "fig7", runs, base, extra, "Fig. 7: co-located ResNet-18 training job")
    probe = base["static_alone"]
    outcome.notes += [
        f"budget {round(budget, 4):.3f} ms",
        f"load slows level {probe} x{check['slowdown_p50']} ({ctx.alone[probe]['p50']:.2f} -> "
        f"{loaded[probe]['p50']:.2f} ms p50), {calib['steps_per_s']} train steps/s",
    ]
    return outcome
