"""The command line of the runner and of every stage script: open the run, check it, run the stages in order.

`main` returns the exit status instead of exiting, so tests run whole pipelines in-process.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from arena10k import batches, forecast, liveness, preflight, report
from arena10k.checkpoint import reset_failed
from arena10k.config import ExperimentConfig, load_config
from arena10k.errors import Arena10kError, ConfigError
from arena10k.providers import check_config
from arena10k.stages import analyze, phase2
from arena10k.stages.base import Plan, Stage, StageRun, Unit
from arena10k.stages.registry import STAGES
from arena10k.workspace import Workspace

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "local.yaml"
log = logging.getLogger("arena10k.pipeline")
# A wrapper that runs the pipeline (scripts/dry_run.py) names itself here, so "Continue with" names a command that works.
RESUME_COMMAND_ENV = "ARENA10K_RESUME_COMMAND"
PARTIAL = 4  # the exit status of a run whose answer leaves out prompts or labels that failed for good
FORCE_HELP = ("recompute NAME: a stage (all its items), a policy (its items in every stage) or STAGE:POLICY, "
              "each with what is computed from it; repeatable. 'prepare' recomputes everything")


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="experiment YAML (default: the one the run was made with; for a new "
                                                    "run configs/local.yaml)")
    parser.add_argument("--data-dir", type=Path, help="this run's directory (default: data/runs/<experiment name>)")


def open_run(args: argparse.Namespace) -> tuple[ExperimentConfig, Workspace]:
    """The config and the run directory. Without --config, a run resumes with the config it was made with (its path is
    recorded in the run), not the default one."""
    made_with = Workspace(args.data_dir).made_with() if args.data_dir and not args.config else None
    if made_with is not None and not made_with.is_file():
        raise ConfigError(f"{args.data_dir} was made with --config {made_with}, which no longer exists; pass --config "
                          "with the run's config (a copy of it is in config.json there).")
    args.config = args.config or made_with or DEFAULT_CONFIG
    config = load_config(args.config)
    if getattr(args, "dataset", None):
        config = config.model_copy(update={"dataset": str(args.dataset)})
    elif not Path(config.dataset).is_absolute() and (PROJECT_ROOT / config.dataset).exists():
        config = config.model_copy(update={"dataset": str(PROJECT_ROOT / config.dataset)})
    return config, Workspace(args.data_dir or PROJECT_ROOT / "data" / "runs" / config.name)


def samples_argument(value: str) -> int | str:
    """N on the command line: a whole number of prompts of at least 1, or 'all'."""
    if value == "all":
        return value
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"'{value}': must be a whole number of prompts of at least 1, or 'all'")
    return number


def run_parser(description: str, stage: str | None = None, plan: Plan = STAGES) -> argparse.ArgumentParser:
    """The runner's options; a stage script (`stage` given) has the same ones but --from and --only."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    if stage in (None, "prepare"):
        parser.add_argument("samples", nargs="?", type=samples_argument,
                            help="number of prompts, or 'all' (default: the run's own size; for a new run the config's samples)")
        parser.add_argument("--dataset", help="a local JSON/JSONL/Parquet file or Hugging Face dataset id (overrides the config)")
    add_common_arguments(parser)
    if stage is None:
        parser.add_argument("--from", dest="start", choices=plan.names, help="start at this stage")
        parser.add_argument("--only", choices=plan.names, help="run only this stage")
        parser.add_argument("--fresh", action="store_true", help="delete this run's files (and nothing else) and start over")
        parser.add_argument("--retry-failed", action="store_true",
                            help="give every item that failed (for good or not) its max_attempts again, and run")
        parser.add_argument("--dry-run", action="store_true",
                            help="mark the directory as a dry run's (scripts/dry_run.py sets it): a real run refuses it")
    parser.add_argument("--force", action="append", default=[], metavar="NAME", help=FORCE_HELP)
    parser.add_argument("--preflight", action="store_true",
                        help="only measure whether the hosted endpoints' log-probs can give valid weights (every run "
                             "that generates or teacher-forces on a hosted model does this first)")
    parser.add_argument("--cancel-batches", action="store_true",
                        help="cancel this run's batches that are running at a provider (batch: true) and stop; a rerun "
                             "collects what they finished and submits the rest again")
    parser.add_argument("--estimate", action="store_true",
                        help="print the calls, tokens, cost and rate-limited time of what is left (with --force: of "
                             "recomputing it), without calling any model")
    return parser


def main(argv: list[str] | None = None, stage: str | None = None, description: str = __doc__, plan: Plan = STAGES) -> int:
    """The runner (all stages, or --from/--only) or, with `stage`, one stage's script."""
    parser = run_parser(description, stage, plan)
    args = parser.parse_args(argv)
    command = os.environ.get(RESUME_COMMAND_ENV) or " ".join(["python", parser.prog, *(sys.argv[1:] if argv is None else argv)])
    command = command.replace(" --fresh", "").replace(" --retry-failed", "")  # what continues the run, not what restarts it
    try:
        return _run(args, stage, command, plan)
    except Arena10kError as error:
        report_error(error)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: every finished item is saved; resume with: {command}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return stopped_reading()
    except OSError as error:  # the disk, not the pipeline: full, gone, or not writable
        log.exception("file system error")
        print(f"error: {error.filename or 'a file'}: {error.strerror or error}. Every finished item is saved; fix this "
              "and rerun the same command to resume.", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, stage: str | None, command: str, plan: Plan) -> int:
    samples = getattr(args, "samples", None)
    config, workspace = open_run(args)
    plan.check_policy_names(config)
    if stage is not None:
        selected = [plan.stage(stage)]
    elif args.only:
        selected = [plan.stage(args.only)]
    else:
        selected = plan.stages_from(args.start or plan.names[0])
    forced = plan.forced_units(config, [n for n in args.force if n != "prepare"])
    if args.estimate:
        print(forecast.describe(forecast.forecast(config, workspace, samples, forced)))
        return 0
    check_config(config, plan.models_called(config, selected))
    if any(s.preflighted for s in selected):
        for warning in config.max_tokens_warnings():
            log.warning("%s", warning)
            print(f"warning: {warning}")
    if analyze.STAGE in selected:
        analyze.check_environment(config)
    workspace.refuse_foreign_directory()
    workspace.create()
    with liveness.claim(workspace):  # a second pipeline on the same directory is refused
        if args.cancel_batches:
            print(batches.cancel_all(config, workspace))
            return 0
        new_run = not workspace.marker_path.exists()
        try:
            _open(args, config, workspace, selected, forced, plan)
            if args.preflight:
                _preflight(config, workspace)
                return 0
            timings = []
            # The preflight (paid calls) comes right before the first stage that needs it, after stage 1, which is free
            # and reads the dataset.
            first_preflighted = next((s for s in selected if s.preflighted), None)
            for each in selected:
                if each is first_preflighted:
                    _preflight(config, workspace)
                started = time.monotonic()
                print(each.run(StageRun(config, workspace, samples, plan)), flush=True)
                timings.append(f"{each.name} {time.monotonic() - started:.1f}s")
            print("stage times: " + ", ".join(timings))
            _report(config, workspace, plan, selected)
        except Arena10kError:
            if new_run and not workspace.prompts_path.exists():
                workspace.unmark()  # a start refused before it had prompts leaves no run behind
            _report(config, workspace, plan, selected)  # a failed analysis leaves the report of the Phase 2 files
            raise
    if selected[-1].name in (phase2.STAGE.name, analyze.STAGE.name):
        info = phase2.dataset_info(workspace)
        incomplete = phase2.incomplete(info)
        if incomplete:
            print(f"error: {incomplete} Continue with: {command}", file=sys.stderr)
            return 3
        answer_leaves_out = phase2.partial(info)
        if answer_leaves_out:
            print(f"partial: {answer_leaves_out} Retry with: {command} --retry-failed", file=sys.stderr)
            return PARTIAL
    elif left := plan.still_to_do(config, workspace, selected):
        print(f"error: {left} Continue with: {command}", file=sys.stderr)
        return 3
    return 0


def _report(config: ExperimentConfig, workspace: Workspace, plan: Plan, selected: list[Stage]) -> None:
    """The report, once, at the end of a run that ran stage 6 or 7 (if there are Phase 2 files to report on)."""
    if phase2.STAGE in selected or analyze.STAGE in selected:
        if path := report.write_for_run(config, workspace, plan):
            print(f"Report: {path}")


def _preflight(config: ExperimentConfig, workspace: Workspace) -> None:
    if preflight.models_probed(config):
        check_config(config, preflight.models_probed(config))
        print(preflight.describe(preflight.check_endpoints(config, workspace)))


def _open(args: argparse.Namespace, config: ExperimentConfig, workspace: Workspace, selected: list[Stage], forced: set[Unit],
          plan: Plan) -> None:
    """Under the lock, before any model is called: marks the run, applies --fresh, --force and --retry-failed, refuses a
    changed configuration and records the config the run is made with."""
    workspace.mark_run(dry_run=getattr(args, "dry_run", False))
    if getattr(args, "fresh", False):
        for line in batches.forgotten_by_fresh(workspace):
            print(f"warning: {line}")
        workspace.delete_run_files()
    log_path = workspace.start_log()
    for line in workspace.quarantine_damaged(plan.checkpoints):
        log.warning("%s", line)
        print(line)
    if "prepare" in args.force:
        workspace.forget_prompts()
    if getattr(args, "retry_failed", False):
        for name in plan.checkpoints:
            if count := reset_failed(workspace.checkpoint_path(name)):
                print(f"--retry-failed: {name}: {count} failed items get their attempts again")
    if workspace.prompts_path.exists():
        plan.check_changes(config, workspace, selected[-1].name, forced)
        for line in plan.renamed_policies(config, workspace):
            log.warning("%s", line)
            print(f"warning: {line}")
    _recompute(workspace, forced)
    workspace.save_config(config, args.config)
    print(f"arena10k: experiment '{config.name}', data in {workspace.root}, log {log_path}")


def _recompute(workspace: Workspace, units: set[Unit]) -> None:
    by_checkpoint: dict[str, set[str]] = defaultdict(set)
    for checkpoint, policy in units:
        by_checkpoint[checkpoint].add(policy)
    for line in batches.abandon(workspace, units):
        log.warning("%s", line)
        print(f"warning: {line}")
    for checkpoint, policies in sorted(by_checkpoint.items()):
        dropped = workspace.drop(checkpoint, policies)
        log.info("--force: dropped %d items of %s (%s)", dropped, checkpoint, ", ".join(sorted(policies)))
        print(f"recomputing {checkpoint}: {', '.join(sorted(policies))} ({dropped} finished items dropped)")


def report_error(error: Arena10kError) -> None:
    log.error("%s", error)
    print(f"error: {error}", file=sys.stderr)


def stopped_reading() -> int:
    """The reader of the output went away (`| head`): not an error. Later writes go nowhere, so exiting is quiet."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


@contextmanager
def user_errors() -> Iterator[None]:
    """An Arena10kError is printed as its message, not a traceback, and exits with status 2; a reader that stops
    reading (`| head`) ends the command quietly."""
    try:
        yield
        sys.stdout.flush()
    except Arena10kError as error:
        report_error(error)
        sys.exit(2)
    except BrokenPipeError:
        sys.exit(stopped_reading())
