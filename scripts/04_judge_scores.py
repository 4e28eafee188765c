"""Stage 4: the judge scores every response: a greedy digit (deterministic score) and the distribution
over digits at that position (mean and variance: the score with uncertainty), in [0, 1].

A reply without a digit fails the item with the reply kept, never a stand-in score. Writes checkpoints/judge.jsonl.
The work: arena10k/stages/judge.py, arena10k/judging.py.
"""

import sys

from arena10k.pipeline import main
from arena10k.stages.judge import JUDGE as STAGE

if __name__ == "__main__":
    sys.exit(main(stage=STAGE.name, description=__doc__))
