"""Stage 2: a response from every policy (the logging policy and each target) to every prompt.

Each item samples with the policy's model, system prompt, temperature and max_tokens, seeded per item, and
records the text, token ids and the sampled tokens' log-probs. Writes checkpoints/generate.jsonl.
The work: arena10k/stages/generate.py.
"""

import sys

from arena10k.pipeline import main
from arena10k.stages.generate import STAGE as STAGE

if __name__ == "__main__":
    sys.exit(main(stage=STAGE.name, description=__doc__))
