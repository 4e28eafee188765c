"""The stage order, and the command line shared by the runner and every stage script."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from arena10k import liveness
from arena10k.stages import phase2, work as stages
from arena10k.config import ExperimentConfig, load_config
from arena10k.errors import Arena10kError
from arena10k.providers import check_config
from arena10k.runner import StageReport
from arena10k.workspace import STAGES, Workspace

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "local.yaml"
log = logging.getLogger("arena10k.pipeline")


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="experiment YAML (default: configs/local.yaml)")
    parser.add_argument("--data-dir", type=Path, help="this run's directory (default: data/runs/<experiment name>)")


def open_run(args: argparse.Namespace, check_providers: bool = True) -> tuple[ExperimentConfig, Workspace]:
    """check_providers=False for what calls no model (the estimate): it then needs no API key."""
    config = load_config(args.config)
    if check_providers:
        check_config(config)
    if getattr(args, "dataset", None):
        config = config.model_copy(update={"dataset": str(args.dataset)})
    elif not Path(config.dataset).is_absolute() and (PROJECT_ROOT / config.dataset).exists():
        config = config.model_copy(update={"dataset": str(PROJECT_ROOT / config.dataset)})
    workspace = Workspace(args.data_dir or PROJECT_ROOT / "data" / "runs" / config.name)
    workspace.root.mkdir(parents=True, exist_ok=True)
    return config, workspace


def stages_after(stage: str) -> list[str]:
    return list(STAGES[STAGES.index(stage):])


def run_stage(stage: str, config: ExperimentConfig, workspace: Workspace, samples: int | str | None = None) -> str:
    """Runs one stage and returns the lines to print about it."""
    started = time.monotonic()
    if stage == "prepare":
        prompts, filter_report = stages.prepare(config, workspace, samples if samples is not None else config.samples)
        if filter_report is None:
            return f"prepare: {len(prompts)} prompts already prepared in {workspace.prompts_path}"
        counts = ", ".join(f"{k} {filter_report[k]}" for k in ("rows", "empty", "duplicate", "non_english", "sampled_out", "kept"))
        return f"prepare: {counts} -> {workspace.prompts_path} ({time.monotonic() - started:.1f}s)"
    if stage == "phase2":
        info = phase2.build(config, workspace)
        table = phase2.summary_table(info)
        (workspace.phase2_dir / "summary.txt").write_text(table + "\n")
        from arena10k import report  # matplotlib takes a second to import; only stage 6 needs it

        report_path = report.write_report(report.phase2_input(workspace.phase2_dir, config), workspace.phase2_dir)
        return f"{table}\n\nPhase 2 files: {workspace.phase2_dir}\nDiagnostics: {report_path}"
    if stage == "oracle" and not config.oracle.enabled:
        return "oracle: disabled in the config"
    runs: dict[str, Callable] = {"generate": stages.generate, "teacher_force": stages.teacher_force,
                                 "judge": stages.judge, "oracle": stages.oracle}
    reports = runs[stage](config, workspace)
    return "\n".join(_describe(r) for r in (reports if isinstance(reports, list) else [reports]))


def _describe(report: StageReport) -> str:
    text = (f"{report.stage}: {report.done}/{report.expected} done, {report.failed_total} failed, "
            f"{report.attempted} tried in this run ({report.seconds:.1f}s)")
    for reason, count in list(report.failed.items()) + [(f"blocked, {r}", n) for r, n in report.blocked.items()]:
        text += f"\n    {count} x {reason}"
    return text


def main_for_stage(stage: str, description: str) -> None:
    """Entry point of a stage script: the same --config and --data-dir as the runner."""
    parser = argparse.ArgumentParser(description=description)
    add_common_arguments(parser)
    parser.add_argument("--force", action="store_true", help="recompute this stage (and delete the stages after it)")
    if stage == "prepare":
        parser.add_argument("--dataset", help="a local JSON/JSONL/Parquet file or a Hugging Face dataset id")
        parser.add_argument("--samples", help="how many prompts, or 'all' (default: the config's samples)")
    args = parser.parse_args()
    with user_errors():
        config, workspace = open_run(args)
        with liveness.claim(workspace):
            workspace.start_log()
            if args.force:
                workspace.forget(stages_after(stage))
            samples = getattr(args, "samples", None)
            print(run_stage(stage, config, workspace, None if samples is None else parse_samples(samples)))


def parse_samples(value: str) -> int | str:
    return value if value == "all" else int(value)


@contextmanager
def user_errors() -> Iterator[None]:
    """An Arena10kError is printed as its message, not a traceback, and exits with status 2."""
    try:
        yield
    except Arena10kError as error:
        log.error("%s", error)
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def fresh_start(workspace: Workspace) -> None:
    """--fresh: delete everything in this run's data directory (and nothing else), but this process's claim on it."""
    for child in workspace.root.iterdir():
        if child != workspace.pid_path:
            shutil.rmtree(child) if child.is_dir() else child.unlink()
