"""The stages of Phase 1: what each one is (registry.py) and the work it does."""
