"""Benchmark: the whole pipeline through the API path against the loopback server, limited like a hosted tier.

    python benchmarks/api_pipeline.py --prompts 300 --rpm 600 --latency-ms 300 --jitter-ms 100 --concurrency 16

Runs each stage with `--only` and counts the server's completion requests per stage; reports wall time, calls
per prompt, the lower bound (calls / rate limit) and the ratio to it, then reruns the finished pipeline.
Needs ../shared/arena/conversations_sample.jsonl beside the project for enough English prompts.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from arena10k.server import FaultConfig, ServerConfig, run_subprocess
from arena10k.testing.loopback_config import KEY_ENV, write_loopback_config
from arena10k.stages.registry import STAGES

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATASET = PROJECT_ROOT.parent / "shared" / "arena" / "conversations_sample.jsonl"


def run(data_dir: Path, config: Path, *args: str) -> None:
    command = [sys.executable, str(PROJECT_ROOT / "run_phase1_pipeline.py"), "--config", str(config), "--data-dir", str(data_dir), *args]
    subprocess.run(command, check=True, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=300)
    parser.add_argument("--rpm", type=int, default=600)
    parser.add_argument("--latency-ms", type=float, default=300)
    parser.add_argument("--jitter-ms", type=float, default=100)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()

    os.environ[KEY_ENV] = "benchmark"
    faults = FaultConfig(latency_ms=args.latency_ms, latency_jitter_ms=args.jitter_ms, rpm=args.rpm)
    results: dict = {"settings": vars(args), "stages": {}}
    with tempfile.TemporaryDirectory() as tmp, run_subprocess(ServerConfig("synthetic", faults=faults)) as server:
        config = write_loopback_config(
            Path(tmp) / "config.yaml", server.base_url, samples=args.prompts, dataset=str(DATASET),
            concurrency=args.concurrency, requests_per_minute=args.rpm, request_timeout=30,
            calibration_fraction=0.25, validation_fraction=0.1)
        data_dir = Path(tmp) / "data"
        total_started = time.monotonic()
        for stage in STAGES.names:
            before, started = server.stats()["completions"], time.monotonic()
            run(data_dir, config, "--only", stage)
            results["stages"][stage] = {"seconds": round(time.monotonic() - started, 1), "calls": server.stats()["completions"] - before}
        wall = time.monotonic() - total_started
        calls = sum(s["calls"] for s in results["stages"].values())
        stats = server.stats()
        before, started = stats["completions"], time.monotonic()
        run(data_dir, config)
        results["rerun"] = {"seconds": round(time.monotonic() - started, 1), "calls": server.stats()["completions"] - before}
    bound = calls / args.rpm * 60
    results |= {"wall_seconds": round(wall, 1), "calls": calls, "calls_per_prompt": round(calls / args.prompts, 2),
                "lower_bound_seconds": round(bound, 1), "ratio_to_bound": round(wall / bound, 3),
                "rate_limited_429": sum(e.get("rate_limited", 0) for e in stats["endpoints"].values())}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
