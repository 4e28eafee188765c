"""Stage 3: the log-probability of every logging-policy response under every policy.

Each item scores the logged response in the scoring policy's own context and at its sampling temperature
(token ids where the tokenizer is the same, a verified retokenization otherwise). A target's importance
weight is exp(its log-prob - the logging policy's). Writes checkpoints/teacher_force.jsonl.
The work: arena10k/stages/teacher_force.py and the providers' teacher_force().
"""

import sys

from arena10k.pipeline import main
from arena10k.stages.teacher_force import STAGE as STAGE

if __name__ == "__main__":
    sys.exit(main(stage=STAGE.name, description=__doc__))
