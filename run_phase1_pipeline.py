"""Run Phase 1 end to end: prepare -> generate -> teacher_force -> judge -> oracle -> phase2.

Resumes by default: finished work items are read from the per-stage checkpoints and never redone.

    python run_phase1_pipeline.py 20                  # 20 prompts, embedded local model
    python run_phase1_pipeline.py --force judge       # recompute judge, oracle and phase2
    python run_phase1_pipeline.py --only phase2       # just rewrite the Phase 2 files
"""

import argparse
import time

from arena10k import estimate, liveness
from arena10k.pipeline import (add_common_arguments, fresh_start, open_run, parse_samples, run_stage, stages_after,
                               user_errors)
from arena10k.workspace import STAGES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("samples", nargs="?", help="number of prompts, or 'all' (default: the config's samples)")
    add_common_arguments(parser)
    parser.add_argument("--dataset", help="a local JSON/JSONL/Parquet file or Hugging Face dataset id (overrides the config)")
    parser.add_argument("--from", dest="start", choices=STAGES, help="start at this stage")
    parser.add_argument("--only", choices=STAGES, help="run only this stage")
    parser.add_argument("--force", choices=STAGES, help="recompute this stage and every stage after it")
    parser.add_argument("--fresh", action="store_true", help="delete this run's data directory and start over")
    parser.add_argument("--estimate", action="store_true",
                        help="print the calls, tokens, cost and rate-limited time of what is left, without calling any model")
    args = parser.parse_args()

    samples = parse_samples(args.samples) if args.samples else None
    with user_errors():
        config, workspace = open_run(args, check_providers=not args.estimate)
        if args.estimate:
            print(estimate.describe(estimate.estimate_run(config, workspace, samples)))
            return
        with liveness.claim(workspace):  # a second pipeline on the same directory is refused
            if args.fresh:
                fresh_start(workspace)
            log_path = workspace.start_log()
            if args.force:
                workspace.forget(stages_after(args.force))
            selected = [args.only] if args.only else stages_after(args.start or STAGES[0])
            print(f"arena10k: experiment '{config.name}', data in {workspace.root}, log {log_path}")
            timings = []
            for stage in selected:
                started = time.monotonic()
                print(run_stage(stage, config, workspace, samples), flush=True)
                timings.append(f"{stage} {time.monotonic() - started:.1f}s")
            print("stage times: " + ", ".join(timings))


if __name__ == "__main__":
    main()
