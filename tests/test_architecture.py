"""The architecture as pyproject.toml's import-linter contracts state it: no import cycle, each layer importing only
the layers below it."""

import shutil
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, capture_output=True, text=True,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


def test_the_project_keeps_its_import_contracts():
    result = lint_imports(PROJECT_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


def test_a_stage_that_imports_the_registry_back_breaks_the_build(tmp_path):
    shutil.copytree(PROJECT_ROOT / "arena10k", tmp_path / "arena10k", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PROJECT_ROOT / "pyproject.toml", tmp_path)
    phase2 = tmp_path / "arena10k" / "stages" / "phase2.py"
    phase2.write_text(phase2.read_text() + "\n\ndef _plan():\n    from arena10k.stages import registry\n\n    return registry\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1
    assert "No import cycle among the modules of a package BROKEN" in result.stdout
    assert "arena10k.stages.phase2 -> arena10k.stages.registry" in result.stdout
