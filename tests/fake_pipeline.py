"""The pipeline on fake models (arena10k.testing.fake_provider), as a process of its own: for the tests of what
only a process shows, such as signals and two pipelines started at once.

    python tests/fake_pipeline.py [--latency SECONDS] <the runner's arguments>
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from arena10k import pipeline, providers  # noqa: E402
from arena10k.testing.fake_provider import FakeModels  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds each fake call takes")
    own, rest = parser.parse_known_args()
    with providers.substituted(FakeModels(latency=own.latency)):
        sys.exit(pipeline.main(rest))
