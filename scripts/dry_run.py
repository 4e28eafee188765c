"""Dry-run an experiment config through the API path before paying: every model of the config is served by the
project's loopback server (synthetic backend, no keys, no cost), with the config's own providers, SDKs, chat
templates, policies and limits. Writes to data/runs/<name>-dry-run unless --data-dir is given.

    python scripts/dry_run.py --config configs/arena_10k.yaml --samples 30 --dataset ../shared/arena/conversations_sample.jsonl
"""

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from arena10k.pipeline import PROJECT_ROOT
from arena10k.server import ServerConfig, run_subprocess
from arena10k.server.experiment import point_at_loopback


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--samples", default="20", help="number of prompts, or 'all'")
    parser.add_argument("--dataset", help="a local JSON/JSONL/Parquet file (default: the config's)")
    parser.add_argument("--data-dir", type=Path)
    args = parser.parse_args()

    config = yaml.safe_load(args.config.read_text())
    for model in config["models"].values():
        if model.get("api_key_env"):
            os.environ.setdefault(model["api_key_env"], "dry-run")  # the loopback server accepts any key
    data_dir = args.data_dir or PROJECT_ROOT / "data" / "runs" / f"{config['name']}-dry-run"
    with tempfile.TemporaryDirectory() as tmp, run_subprocess(ServerConfig("synthetic")) as server:
        dry_config = Path(tmp) / "config.yaml"
        dry_config.write_text(yaml.safe_dump(point_at_loopback(config, server.root_url)))
        command = [sys.executable, str(PROJECT_ROOT / "run_phase1_pipeline.py"), args.samples,
                   "--config", str(dry_config), "--data-dir", str(data_dir), "--dry-run"]
        if args.dataset:
            command += ["--dataset", args.dataset]
        result = subprocess.run(command, cwd=PROJECT_ROOT)
        print(f"dry run: {server.stats()['completions']} requests to the loopback server")
    sys.exit(result.returncode)


if __name__ == "__main__":
    main()
