"""Dry-run an experiment config through the API path before paying: every model of the config is served by the
project's loopback server (synthetic backend, no keys, no cost), with the config's own providers, SDKs, chat
templates, policies and limits. Writes to data/runs/<name>-dry-run unless --data-dir is given.

    python scripts/dry_run.py --config configs/arena_10k.yaml --samples 30 --dataset ../shared/arena/conversations_sample.jsonl

Any other option (--retry-failed, --force NAME, --fresh) is passed to the pipeline.
"""

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import urllib.error
from pathlib import Path

import yaml

from arena10k.config import load_config
from arena10k.errors import Arena10kError
from arena10k.pipeline import PROJECT_ROOT, RESUME_COMMAND_ENV
from arena10k.server import ServerConfig, run_subprocess
from arena10k.server.experiment import point_at_loopback


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--samples", default="20", help="number of prompts, or 'all'")
    parser.add_argument("--dataset", help="a local JSON/JSONL/Parquet file (default: the config's)")
    parser.add_argument("--data-dir", type=Path)
    args, pipeline_options = parser.parse_known_args()
    try:
        name = load_config(args.config).name  # every mistake in the config is said before a server starts
    except Arena10kError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    config = yaml.safe_load(args.config.read_text(encoding="utf-8"))
    for model in config["models"].values():
        if model.get("api_key_env"):
            os.environ.setdefault(model["api_key_env"], "dry-run")  # the loopback server accepts any key
    data_dir = args.data_dir or PROJECT_ROOT / "data" / "runs" / f"{name}-dry-run"
    # What the pipeline tells the user to run next is this script again, not its own command on a temporary config.
    resume = shlex.join(["python", "scripts/dry_run.py", *sys.argv[1:]])
    try:
        with tempfile.TemporaryDirectory() as tmp, run_subprocess(ServerConfig("synthetic")) as server:
            dry_config = Path(tmp) / "config.yaml"
            dry_config.write_text(yaml.safe_dump(point_at_loopback(config, server.root_url)))
            command = [sys.executable, str(PROJECT_ROOT / "run_phase1_pipeline.py"), args.samples,
                       "--config", str(dry_config), "--data-dir", str(data_dir), "--dry-run"]
            if args.dataset:
                command += ["--dataset", args.dataset]
            command += pipeline_options
            pipeline = subprocess.Popen(command, cwd=PROJECT_ROOT, env={**os.environ, RESUME_COMMAND_ENV: resume})
            try:
                returncode = pipeline.wait()
            except KeyboardInterrupt:  # the pipeline got the Ctrl-C too: it says what it saved as it stops
                pipeline.wait()
                print(f"dry run interrupted; resume with: {resume}", file=sys.stderr)
                return 130
            try:
                print(f"dry run: {server.stats()['completions']} requests to the loopback server")
            except (urllib.error.URLError, OSError) as error:
                print(f"dry run: the loopback server stopped answering before the run ended ({error}); the run's own "
                      "messages above say what finished", file=sys.stderr)
    except KeyboardInterrupt:  # a second Ctrl-C, or one while the server starts
        print(f"dry run interrupted; resume with: {resume}", file=sys.stderr)
        return 130
    return returncode


if __name__ == "__main__":
    sys.exit(main())
