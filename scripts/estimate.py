"""Estimate a run before starting it, without calling any model: calls, input and output tokens, cost per
provider and the time implied by the providers' rate limits, per stage. On a run in progress, only what is left;
with --force NAME, what recomputing NAME costs. The same as `run_phase1_pipeline.py --estimate`.

    python scripts/estimate.py 10000 --config configs/local.yaml
    python scripts/estimate.py --data-dir data/runs/local      # what is left of a run
"""

import sys

from arena10k.pipeline import main

if __name__ == "__main__":
    sys.exit(main([*sys.argv[1:], "--estimate"], description=__doc__))
