"""Fig. 8: two classifiers share the device, coordinated vs uncoordinated vs static.

Two processes (:class:`~offline_tools.experiments.workers.WorkerPair`), ``A`` and ``B``, each with
its own engine and :class:`DynamicClassifier`, both back-to-back so that they really compete.
``A`` runs for the whole run, ``B`` only in the middle phase. Modes: ``coordinated`` (each
classifier with a :class:`Coordinator`; statuses through queues), ``uncoordinated`` (the same
classifiers reacting alone), ``static_alone`` and ``static_safe`` (locked levels). Budgets: ``A``'s
by :func:`~offline_tools.experiments.budgets.load_budget` with ``B`` running the top level as the
load; ``B``'s looser (see ``docs/experiments.md``). The top-level numbers pool both models.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from offline_tools.experiments.budgets import LoadBudget, load_budget, load_margins, lut_level, monotone
from offline_tools.experiments.context import Context, Outcome, SummaryRow, result_header
from offline_tools.experiments.plots import plot_pairs, plot_safely
from offline_tools.experiments.records import (
    Combined,
    EventReaction,
    Headline,
    LatencyStats,
    RunMetrics,
    RunRecord,
    analyse_run,
    combine_models,
    metric_fields,
    p95_of,
)
from offline_tools.experiments.workers import RunCmd, WorkerPair

__all__ = ["MODES", "run_fig8"]

#: Result name of each fig. 8 mode -> the workers' run mode.
MODES = {
    "coordinated": "coordinated",
    "uncoordinated": "reactive",
    "static_alone": "static",
    "static_safe": "static",
}
_NAMES = WorkerPair.names


@dataclass(frozen=True)
class _Plan:
    """Budgets, look-up latencies and static levels of the two models, from the measurements."""

    alone: dict[int, LatencyStats]
    contention: dict[int, LatencyStats]
    rule: LoadBudget
    budgets: dict[str, float]
    lut: dict[int, float]
    static_alone: dict[str, int]
    static_safe: dict[str, int]
    peer_timeout_s: float


def _plan(ctx: Context, pair: WorkerPair) -> _Plan:
    """Measure every level by ``A`` alone and against ``B`` at the top level; derive budgets and levels."""
    s = ctx.settings
    levels = ctx.levels
    top = levels[-1]
    alone = pair.measure(levels, s.calib_frames, s.fig8_fps)
    contention = pair.measure(levels, s.calib_frames, s.fig8_fps, hog_level=top)
    alone_p95, cont_p95 = p95_of(alone), p95_of(contention)
    rule = load_budget(alone_p95, cont_p95, load_margins(s.load_margin))
    safe_a = rule["static_safe"]
    level_b = min(top, safe_a + max(1, (top - safe_a) // 2))
    budgets = {"A": rule["budget_ms"], "B": max(rule["margin"] * cont_p95[level_b], rule["budget_ms"] * 1.25)}
    lut = monotone(alone_p95) if s.lut_source == "measured" else ctx.lut()
    return _Plan(
        alone=alone,
        contention=contention,
        rule=rule,
        budgets=budgets,
        lut=lut,
        static_alone={n: lut_level(lut, budgets[n]) for n in _NAMES},
        static_safe={
            n: max([lv for lv, ms in cont_p95.items() if ms <= budgets[n]] or [levels[0]]) for n in _NAMES
        },
        # a peer is forgotten when silent for this long: several windows at the slowest contended level
        peer_timeout_s=max(s.peer_timeout_s, 4.0 * ctx.window_size * max(cont_p95.values()) / 1000.0),
    )


def _run_mode(ctx: Context, pair: WorkerPair, plan: _Plan, mode_name: str) -> dict[str, RunRecord]:
    """Both models' runs of one mode, ``B``'s times moved onto ``A``'s clock."""
    s = ctx.settings
    fixed = {"static_alone": plan.static_alone, "static_safe": plan.static_safe}.get(mode_name)
    t1, t2, t3 = s.fig8_phases_s
    # both warm up before the common start (``warmup_frames`` each, contended at worst)
    slowest = max(p95_of(plan.contention).values())
    start = time.monotonic() + 0.3 + 2.0 * s.warmup_frames * slowest / 1000.0
    for n, (offset, duration) in {"A": (0.0, t1 + t2 + t3), "B": (t1, t2)}.items():
        cmd = RunCmd(
            name=n,
            mode=MODES[mode_name],
            level=None if fixed is None else fixed[n],
            budget_ms=plan.budgets[n],
            lut=plan.lut,
            start_at=start + offset,
            duration_s=duration,
            fps=s.fig8_fps,
            peer_timeout_s=plan.peer_timeout_s,
        )
        pair.send(n, cmd)
    got = pair.collect("run", timeout=t1 + t2 + t3 + 60.0)
    runs = {}
    for n in _NAMES:
        record = got[n].record
        if record is None:
            raise RuntimeError(f"fig8: {n}'s {mode_name} run came back without a record")
        runs[n] = record
    # both stamped with time.monotonic, one clock per host
    runs["B"].shift(runs["B"].t0_monotonic - runs["A"].t0_monotonic)
    return runs


def _analyse(
    ctx: Context, plan: _Plan, runs: dict[str, dict[str, RunRecord]]
) -> dict[str, tuple[Combined, dict[str, RunMetrics]]]:
    """Per mode: both models pooled and each model's metrics; baselines scored like the coordinated run."""
    per_mode: dict[str, tuple[Combined, dict[str, RunMetrics]]] = {}
    coordinated: dict[str, list[EventReaction]] = {}
    for mode_name in MODES:  # "coordinated" first: the others are scored on its reactions
        models: dict[str, RunMetrics] = {}
        for n in _NAMES:
            rec = runs[mode_name][n]
            m = analyse_run(
                rec,
                window=ctx.window_size,
                accuracy=ctx.accuracy,
                alone_lut=plan.lut,
                reaction_from=None if mode_name == "coordinated" else coordinated.get(n),
                static=mode_name.startswith("static"),
            )
            if mode_name == "coordinated":
                coordinated[n] = m["events"]
            m["switch_reasons"] = rec.switch_reasons
            m["statuses"] = rec.statuses or {}
            m["manager"] = rec.manager or {}
            models[n] = m
        per_mode[mode_name] = (combine_models(models, ctx.window_size), models)
    return per_mode


def _baselines(
    plan: _Plan, per_mode: dict[str, tuple[Combined, dict[str, RunMetrics]]]
) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for mode_name in ("static_alone", "static_safe", "uncoordinated"):
        combined, models = per_mode[mode_name]
        entry: dict[str, object] = {
            **metric_fields(combined),
            "models": {n: metric_fields(m) for n, m in models.items()},
        }
        if mode_name == "static_alone":
            entry["level"] = plan.static_alone
        elif mode_name == "static_safe":
            entry["level"] = plan.static_safe
        out[mode_name] = entry
    return out


def _levels_rows(ctx: Context, plan: _Plan) -> list[dict[str, object]]:
    return [
        {
            "level": lvl,
            "accuracy": ctx.accuracy[lvl],
            "alone_ms_p50": round(plan.alone[lvl]["p50"], 4),
            "alone_ms_p95": round(plan.alone[lvl]["p95"], 4),
            "contention_ms_p50": round(plan.contention[lvl]["p50"], 4),
            "contention_ms_p95": round(plan.contention[lvl]["p95"], 4),
        }
        for lvl in ctx.levels
    ]


def _result(
    ctx: Context,
    pair: WorkerPair,
    plan: _Plan,
    runs: dict[str, dict[str, RunRecord]],
    per_mode: dict[str, tuple[Combined, dict[str, RunMetrics]]],
) -> dict[str, object]:
    """The JSON object of fig. 8."""
    s = ctx.settings
    t1, t2, t3 = s.fig8_phases_s
    result = result_header(ctx, "fig8")
    result.update(metric_fields(per_mode["coordinated"][0]))
    result["models"] = {
        n: {**metric_fields(m), "budget_ms": round(plan.budgets[n], 4), "detail": m}
        for n, m in per_mode["coordinated"][1].items()
    }
    result["baselines"] = _baselines(plan, per_mode)
    result.update(
        {
            "settings": s.to_dict(),
            "budgets_ms": {n: round(b, 4) for n, b in plan.budgets.items()},
            "budget_rule": "A: load_budget with the peer running the top level back-to-back as the load; "
            "B: the budget that makes B's safe level half-way between A's safe level and the top "
            "(at least 1.25 x A's)",
            "budget_candidates": plan.rule["candidates"],
            "budget_margin": plan.rule["margin"],
            "load_effect": plan.rule["load_effect"],
            "phases": {"A": [0.0, t1 + t2 + t3], "B": [t1, t1 + t2]},
            "worker_startup_s": round(pair.startup_s, 2),
            "peer_timeout_s": round(plan.peer_timeout_s, 3),
            "levels": _levels_rows(ctx, plan),
            "timeline": {
                mode_name: {n: rec.compact(s.max_timeline_points // 2) for n, rec in pair_runs.items()}
                for mode_name, pair_runs in runs.items()
            },
        }
    )
    return result


def _static_text(levels: dict[str, int]) -> str:
    return "/".join(str(levels[n]) for n in _NAMES)


def run_fig8(ctx: Context, pair: WorkerPair | None = None) -> Outcome:
    """Two classifiers (``pair``, else two new processes) share the device; four modes, A and B each."""
    workers = pair or WorkerPair(ctx.inputs, ctx.settings)
    try:
        workers.wait_ready()
        plan = _plan(ctx, workers)
        runs = {mode_name: _run_mode(ctx, workers, plan, mode_name) for mode_name in MODES}
    finally:
        workers.close()
    per_mode = _analyse(ctx, plan, runs)
    result = _result(ctx, workers, plan, runs, per_mode)
    headlines: dict[str, Headline] = {mode_name: metric_fields(c) for mode_name, (c, _) in per_mode.items()}
    png = ctx.inputs.out / f"fig8-{ctx.tag}.png"
    plot_safely(
        result, lambda: plot_pairs(png, runs, headlines, levels=ctx.levels, device_name=ctx.device_name)
    )
    rows = [
        SummaryRow("coordinated", "", headlines["coordinated"]),
        SummaryRow("static_alone", _static_text(plan.static_alone), headlines["static_alone"]),
        SummaryRow("static_safe", _static_text(plan.static_safe), headlines["static_safe"]),
        SummaryRow("uncoordinated", "", headlines["uncoordinated"]),
    ]
    notes = ["budgets " + ", ".join(f"{n} {round(b, 4):.3f} ms" for n, b in plan.budgets.items())]
    return Outcome(result=result, rows=rows, notes=notes)
