"""The oracle-truth check where there is a truth to find: a loopback run whose synthetic models give the policies
different true values and grade with judges that track them (arena10k/server/synthetic.py, "Judging").

    python benchmarks/oracle_truth_loopback.py --prompts 200 --out /tmp/oracle_truth_run

Writes that many made-up English prompts, runs the whole pipeline with the analysis through the loopback server
(configs of arena10k/testing/loopback_config.py, half the prompts oracle-labelled for calibration and half for
validation), and prints stage 7's table: each target's truth, each estimator against it, and the coverage ablation.
tests/test_api_path.py runs the same at its own size and checks what it shows.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from arena10k.server import ServerConfig, run_subprocess
from arena10k.testing.loopback_config import KEY_ENV, made_up_prompts, write_loopback_config

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--out", type=Path, help="keep the run here (default: a temporary directory)")
    args = parser.parse_args()
    os.environ[KEY_ENV] = "benchmark"
    with tempfile.TemporaryDirectory() as tmp, run_subprocess(ServerConfig("synthetic")) as server:
        root = args.out or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        config = write_loopback_config(root / "config.yaml", server.base_url, samples=args.prompts,
                                       dataset=str(made_up_prompts(root / "prompts.jsonl", args.prompts)),
                                       calibration_fraction=0.5, validation_fraction=0.5, analysed=True)
        started = time.monotonic()
        result = subprocess.run([sys.executable, str(PROJECT_ROOT / "run_phase1_pipeline.py"), "--config", str(config),
                                 "--data-dir", str(root / "data")], cwd=PROJECT_ROOT, capture_output=True, text=True)
        print(result.stdout[result.stdout.find("Estimates (cje-eval"):])
        print(f"exit status {result.returncode}; {time.monotonic() - started:.1f} s for the whole run", file=sys.stderr)
        estimates = json.loads((root / "data" / "analysis" / "estimates.json").read_text())
        print(json.dumps({"oracle_truth": estimates["oracle_truth"]}, indent=1))


if __name__ == "__main__":
    main()
