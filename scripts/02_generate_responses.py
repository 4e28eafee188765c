"""Stage 2: generate responses from P0 and the four target policies."""

from arena10k.pipeline import main_for_stage

if __name__ == "__main__":
    main_for_stage("generate", __doc__)
