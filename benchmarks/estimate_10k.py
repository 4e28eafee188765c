"""Benchmark: `--estimate` of the flagship config (configs/arena_10k.yaml) at 10,000 prompts, online and through Batch
APIs side by side, per stage and model. The prompts are the synthetic run writer's made-up ones (3 to 120 words each),
since the shared ChatBot Arena sample holds fewer than 10,000 conversations; no model is called.

    python benchmarks/estimate_10k.py [--prompts N]
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from arena10k.config import load_config  # noqa: E402
from arena10k.stages.registry import STAGES  # noqa: E402
from arena10k.testing import synthetic_run  # noqa: E402

CONFIG = PROJECT_ROOT / "configs" / "arena_10k.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        run = Path(temporary) / "run"
        synthetic_run.write_run(run, load_config(CONFIG), args.prompts, settled={name: 0.0 for name in STAGES.checkpoints})
        result = subprocess.run([sys.executable, str(PROJECT_ROOT / "run_phase1_pipeline.py"), "--estimate",
                                 "--config", str(CONFIG), "--data-dir", str(run)], capture_output=True, text=True)
    print(result.stdout + result.stderr)
    sys.exit(result.returncode)


if __name__ == "__main__":
    main()
