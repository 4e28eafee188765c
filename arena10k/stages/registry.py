"""The stages of the Phase 1 pipeline, in order: the one list the runner, the stage scripts, coverage, status, the
estimate, `--force` and the synthetic run writer read (their rules are `Plan`'s, in base.py). Adding a stage is
adding it here."""

from arena10k.stages import analyze, generate, judge, phase2, prompts, teacher_force
from arena10k.stages.base import Plan

STAGES = Plan((prompts.STAGE, generate.STAGE, teacher_force.STAGE, judge.JUDGE, judge.ORACLE, phase2.STAGE, analyze.STAGE))
