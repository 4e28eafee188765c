"""Show how far a run is, from another terminal, while it runs or after it stopped: per stage and policy,
done, failed (by reason), remaining, recent rate, ETA and when the last item finished; and whether a pipeline
process is working on the directory. Reads files only; never blocks the pipeline.

    python scripts/status.py --data-dir data/runs/local
"""

import argparse
from pathlib import Path

from arena10k import status
from arena10k.config import load_config
from arena10k.errors import Arena10kError
from arena10k.pipeline import DEFAULT_CONFIG, user_errors
from arena10k.workspace import Workspace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True, help="the run's directory")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help="the run's config, only read when the run directory has none yet (it keeps a copy "
                             "from its latest start); default: configs/local.yaml")
    args = parser.parse_args()
    with user_errors():
        if not args.data_dir.is_dir():
            raise Arena10kError(f"{args.data_dir} does not exist: no run is there (give the --data-dir the pipeline was given).")
        workspace = Workspace(args.data_dir)
        config = workspace.saved_config() or load_config(args.config)
        print(status.describe(status.collect(workspace, config)))


if __name__ == "__main__":
    main()
