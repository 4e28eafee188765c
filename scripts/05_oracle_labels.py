"""Stage 5: oracle labels from a stronger judge on seeded slices of prompts: the logging policy's
responses (calibration) and the targets' responses (validation).

Writes checkpoints/oracle_calibration.jsonl and oracle_validation.jsonl. The work: arena10k/stages/judge.py.
"""

import sys

from arena10k.pipeline import main
from arena10k.stages.judge import ORACLE as STAGE

if __name__ == "__main__":
    sys.exit(main(stage=STAGE.name, description=__doc__))
