"""Benchmark: scripts/status.py on a synthetic 10,000-prompt run in progress (issue 4: under a second).

    python benchmarks/status_10k.py                    # responses of 48 tokens, as configs/local.yaml
    python benchmarks/status_10k.py --max-tokens 256   # longer responses: a bigger generate checkpoint

The run has every response generated and teacher-forced, half of the judge items done and the oracle not
started, with a pipeline claim held by this process. Reports the time of status.collect + describe in-process
and of the whole command (interpreter start and imports included), best and median of several calls.
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from arena10k import liveness, status
from arena10k.testing import synthetic_run
from arena10k.config import load_config
from arena10k.pipeline import DEFAULT_CONFIG
from arena10k.workspace import Workspace

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def timed(call, repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=10_000)
    parser.add_argument("--max-tokens", type=int, default=48, help="length of every synthetic response")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    config = load_config(DEFAULT_CONFIG)
    config = config.model_copy(update={"policies": {name: policy.model_copy(update={"max_tokens": args.max_tokens})
                                                    for name, policy in config.policies.items()}})
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        started = time.perf_counter()
        synthetic_run.write_run(root, config, args.prompts, last_finished=time.time(),
                            settled={"judge": 0.5, "oracle_calibration": 0, "oracle_validation": 0})
        workspace = Workspace(root)
        sizes = {p.name: p.stat().st_size / 1e6 for p in sorted((root / "checkpoints").glob("*.jsonl"))}
        print(f"synthetic run: {args.prompts} prompts, {args.max_tokens}-token responses, written in "
              f"{time.perf_counter() - started:.0f}s; checkpoints (MB): " + ", ".join(f"{k} {v:.1f}" for k, v in sizes.items()))
        with liveness.claim(workspace):
            in_process = timed(lambda: status.describe(status.collect(workspace, config)), args.repeats)
            command = [sys.executable, str(PROJECT_ROOT / "scripts" / "status.py"), "--data-dir", str(root)]
            whole = timed(lambda: subprocess.run(command, check=True, capture_output=True), args.repeats)
            print(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    for name, seconds in (("status.collect + describe", in_process), ("scripts/status.py", whole)):
        print(f"{name}: best {min(seconds):.3f}s, median {statistics.median(seconds):.3f}s over {len(seconds)} calls")


if __name__ == "__main__":
    main()
