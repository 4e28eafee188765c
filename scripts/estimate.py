"""Estimate a run before starting it, without calling any model: calls, input and output tokens, cost per
provider and the time implied by the providers' rate limits, per stage. On a run in progress, only what is left.

    python scripts/estimate.py 10000 --config configs/local.yaml
    python scripts/estimate.py --data-dir data/runs/local      # what is left of a run
"""

import argparse

from arena10k import estimate
from arena10k.pipeline import add_common_arguments, open_run, parse_samples, user_errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("samples", nargs="?", help="number of prompts, or 'all' (default: the prepared prompts, or the config's samples)")
    add_common_arguments(parser)
    parser.add_argument("--dataset", help="a local JSON/JSONL/Parquet file or Hugging Face dataset id (overrides the config)")
    args = parser.parse_args()
    with user_errors():
        config, workspace = open_run(args, check_providers=False)
        samples = parse_samples(args.samples) if args.samples else None
        print(estimate.describe(estimate.estimate_run(config, workspace, samples)))


if __name__ == "__main__":
    main()
