"""Stage 1: sample unique English first-turn prompts from ChatBot Arena."""

from arena10k.pipeline import main_for_stage

if __name__ == "__main__":
    main_for_stage("prepare", __doc__)
