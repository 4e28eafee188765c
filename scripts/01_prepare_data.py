"""Stage 1: sample unique English first-turn prompts from ChatBot Arena conversations.

Reads the config's dataset (or --dataset), keeps first user turns that are non-empty and English, drops exact
duplicates, and samples N of them with the run seed. Writes prompts.jsonl and filter_report.json.
The work: arena10k/stages/prompts.py, arena10k/data.py, arena10k/language.py.
"""

import sys

from arena10k.pipeline import main
from arena10k.stages.prompts import STAGE as STAGE

if __name__ == "__main__":
    sys.exit(main(stage=STAGE.name, description=__doc__))
