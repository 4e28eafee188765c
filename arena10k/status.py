"""How far a run is, read from another terminal while the pipeline runs or after it stopped.

Only reads: the checkpoints (for done and failed), the progress lines (for rate, ETA and finish times) and
the pid file (for liveness). Nothing is locked or written, so a running pipeline never waits for it.
Checkpoint records are not decoded (see `checkpoint.scan_states`): that keeps a 10,000-prompt run under a second.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from arena10k.batches import Batch, Ledger
from arena10k.checkpoint import Coverage, ItemState, scan_states, tally
from arena10k.config import ExperimentConfig
from arena10k.liveness import Claim, finish_times, read_claim
from arena10k.stages import analyze
from arena10k.stages.base import Plan
from arena10k.stages.registry import STAGES
from arena10k.workspace import Workspace, policy_of

RECENT_SECONDS = 600  # the rate is measured over the last ten minutes of finished items
# An ETA from fewer items is mostly the start's own pace (a model loading, a burst of calls finishing together).
ETA_AFTER_ITEMS = 10

@dataclass
class Progress:
    coverage: Coverage
    last_finished: float | None = None  # seconds since the epoch
    rate_per_minute: float | None = None  # items settled per minute, recently
    eta_seconds: float | None = None  # only while the pipeline works on this stage
    measuring: bool = False  # working on it, but too few items have finished for an ETA


@dataclass
class StageStatus:
    name: str
    total: Progress
    by_policy: dict[str, Progress] = field(default_factory=dict)


@dataclass
class RunStatus:
    root: Path
    now: float
    claim: Claim | None
    prompts: int | None  # None: stage 1 has not written prompts yet
    last_write: float | None  # the latest change to any checkpoint
    stages: list[StageStatus] = field(default_factory=list)
    phase2_written: float | None = None
    batches: list[Batch] = field(default_factory=list)  # sent to Batch APIs, as the pipeline last saw them


def collect(workspace: Workspace, config: ExperimentConfig, now: float | None = None, plan: Plan = STAGES) -> RunStatus:
    now = time.time() if now is None else now
    claim = read_claim(workspace)
    alive = claim is not None and bool(claim.alive)
    checkpoint_times = [_mtime(workspace.checkpoint_path(name)) for name in plan.checkpoints]
    status = RunStatus(
        root=workspace.root, now=now, claim=claim,
        prompts=None, last_write=max((t for t in checkpoint_times if t is not None), default=None),
        phase2_written=_mtime(workspace.phase2_dir / "dataset_info.json"),
        batches=list(Ledger(workspace.batches_path).batches.values()),
    )
    if not workspace.prompts_path.exists():
        return status
    prompt_ids = [p.prompt_id for p in workspace.load_prompts()]
    status.prompts = len(prompt_ids)
    finished = {name: finish_times(workspace, name) for name in plan.checkpoints}
    latest = max(((times[-1][0], name) for name, times in finished.items() if times), default=None)
    for name, keys in plan.expected_keys(config, prompt_ids).items():
        if not keys:
            continue
        states = scan_states(workspace.checkpoint_path(name))[0]
        working = alive and latest is not None and latest[1] == name
        total = _progress(keys, states, [t for t, _ in finished[name]], working, now, config.max_attempts)
        if total.last_finished is None and states:
            total.last_finished = _mtime(workspace.checkpoint_path(name))  # a run from before progress lines
        stage = StageStatus(name, total)
        keys_by_policy, times_by_policy = defaultdict(list), defaultdict(list)
        for key in keys:
            keys_by_policy[policy_of(key)].append(key)
        for t, key in finished[name]:
            times_by_policy[policy_of(key)].append(t)
        for policy in config.policy_names:
            if keys_by_policy[policy]:
                stage.by_policy[policy] = _progress(keys_by_policy[policy], states, times_by_policy[policy], working, now,
                                                    config.max_attempts)
        status.stages.append(stage)
    return status


def _progress(keys: list[str], states: dict[str, ItemState], times: list[float], working: bool, now: float,
              max_attempts: int) -> Progress:
    progress = Progress(tally(keys, states, max_attempts), last_finished=times[-1] if times else None)
    working = working and progress.coverage.missing > 0
    progress.rate_per_minute = _rate(times, working, now)
    progress.measuring = working and len(times) < ETA_AFTER_ITEMS
    if working and progress.rate_per_minute and not progress.measuring:
        progress.eta_seconds = 60 * progress.coverage.missing / progress.rate_per_minute
    return progress


def _rate(times: list[float], working: bool, now: float) -> float | None:
    """Items per minute over the last RECENT_SECONDS of this stage's work. While the stage is being worked
    on, the window runs up to now, so a stall shows as a falling rate rather than a frozen one."""
    if not times:
        return None
    end = now if working else times[-1]
    recent = [t for t in times if t >= end - RECENT_SECONDS]
    if len(recent) < 2 or end <= recent[0]:
        return None
    return 60 * (len(recent) - 1) / (end - recent[0])


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return None


# ---------------------------------------------------------------- text


def describe(status: RunStatus) -> str:
    lines = [f"Run {status.root}", f"  pipeline: {_describe_claim(status)}"]
    if status.prompts is None:
        lines.append("  prompts: not prepared yet (stage 1 has not finished)")
        return "\n".join(lines)
    lines += [f"  prompts: {status.prompts}", ""]
    header = (f"  {'stage / policy':<22}{'done':>15}{'failed':>8}{'retrying':>10}{'remaining':>11}{'rate/min':>10}"
              f"{'ETA':>13}   last finished")
    lines.append(header)
    failures = []
    for stage in status.stages:
        lines.append(_row(stage.name, stage.total, status.now, indent=""))
        lines += [_row(policy, progress, status.now, indent="  ") for policy, progress in stage.by_policy.items()]
        for reason, count in stage.total.coverage.failed.most_common():
            where = ", ".join(f"{policy} {p.coverage.failed[reason]}" for policy, p in stage.by_policy.items() if p.coverage.failed[reason])
            retrying = stage.total.coverage.retrying_by_reason[reason]
            where += f"; {retrying} of them awaiting retry" if retrying else ""
            failures.append(f"  {stage.name}: {count} x {reason} ({where})")
    if status.batches:
        lines += ["", "Batches (batch: true), in the state the pipeline last saw:",
                  f"  {'batch':<40}{'stage':<20}{'model':<14}{'state':<22}{'done':>12}{'failed':>8}   submitted"]
        lines += [_batch_row(batch, status.now) for batch in status.batches]
    if failures:
        lines += ["", "Failed items by reason (their latest error; 'retrying': awaiting retry, within max_attempts):", *failures]
    if status.phase2_written is not None:
        report = status.root / "phase2" / "report.md"
        lines += ["", f"Phase 2 written {_when(status.phase2_written, status.now)}: {status.root / 'phase2'}"
                  + (f"; diagnostics in {report}" if report.exists() else "")]
        made = analyze.current_estimates(Workspace(status.root))
        if made is None:
            lines.append("Estimates: none of a finished analysis of these Phase 2 files (stage 7, analyze, makes them)")
        elif not made["analysed"]:
            lines.append(f"Estimates: not made: {made['reason']}")
        else:
            lines.append("Estimates: " + ("DRY RUN (synthetic responses, not a result): " if made["dry_run"] else "")
                         + f"{made['verdict']} ({status.root / 'analysis' / 'estimates.json'})")
    return "\n".join(lines)


def _row(name: str, progress: Progress, now: float, indent: str) -> str:
    c = progress.coverage
    done = f"{c.done}/{c.expected}"
    rate = "-" if progress.rate_per_minute is None else f"{progress.rate_per_minute:.3g}"
    eta = "measuring" if progress.measuring else "-" if progress.eta_seconds is None else _duration(progress.eta_seconds)
    last = "-" if progress.last_finished is None else _when(progress.last_finished, now)
    return (f"  {indent + name:<22}{done:>15}{sum(c.failed.values()) - c.retrying:>8}{c.retrying:>10}{c.missing:>11}"
            f"{rate:>10}{eta:>13}   {last}")


def _batch_row(batch: Batch, now: float) -> str:
    state = batch.status + (", collected" if batch.collected else ", abandoned" if batch.abandoned else "")
    submitted = "not yet" if batch.submitted is None else _when(batch.submitted, now)
    return (f"  {batch.batch_id or batch.id:<40}{batch.checkpoint:<20}{batch.model:<14}{state:<22}"
            f"{f'{batch.completed}/{batch.requests}':>12}{batch.failed:>8}   {submitted}")


def _describe_claim(status: RunStatus) -> str:
    claim = status.claim
    if claim is None:
        last = "never" if status.last_write is None else _when(status.last_write, status.now)
        return f"not running (no {Workspace(status.root).pid_path.name}); last checkpoint write: {last}"
    since = _when(claim.started, status.now)
    if claim.alive is None:
        return f"pid {claim.pid} on host {claim.host}, started {since}: cannot check from this host"
    if claim.alive:
        return f"running, pid {claim.pid}, started {since}"
    return f"not running: pid {claim.pid}, started {since}, ended without cleaning up (killed?); resume with the same command"


def _when(t: float, now: float) -> str:
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(t))} ({_duration(now - t)} ago)"


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{minutes} min"
    if seconds < 86400:
        return f"{hours} h {minutes % 60} min"
    return f"{days} d {hours % 24} h"
