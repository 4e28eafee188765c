"""Show how far a run is, from another terminal, while it runs or after it stopped: per stage and policy,
done, failed (by reason), remaining, recent rate, ETA and when the last item finished; and whether a pipeline
process is working on the directory. Reads files only; never blocks the pipeline.

    python scripts/status.py --data-dir data/runs/local
"""

import argparse
from pathlib import Path

from arena10k import status
from arena10k.config import load_config
from arena10k.pipeline import DEFAULT_CONFIG, user_errors
from arena10k.workspace import Workspace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True, help="the run's directory")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help="the run's config (default: configs/local.yaml); only needed for the oracle slices "
                             "before stage 5 starts, after that they are read from its checkpoints")
    args = parser.parse_args()
    with user_errors():
        print(status.describe(status.collect(Workspace(args.data_dir), load_config(args.config))))


if __name__ == "__main__":
    main()
