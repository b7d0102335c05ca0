"""The floor plan holds (docs/design.md): bkd's packages import only from the
layers below them, with no cycle, and bkctl imports nothing of the daemon
and nothing beyond the standard library. The contracts are pyproject.toml's
[tool.importlinter]; this runs them."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp

ROOT = Path(__file__).parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def test_the_import_contracts_hold():
    result = subprocess.run([str(LINT_IMPORTS), "--no-cache", "--config", str(ROOT / "pyproject.toml")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout, result.stdout


def test_the_layers_are_the_floor_plan_of_design_md():
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = [set(layer.split(" | ")) for layer in next(c for c in contracts if c["id"] == "layers")["layers"]]
    rows = re.findall(r"^\| \d+ \| (.+?) \|", (ROOT / "docs" / "design.md").read_text(), re.M)
    documented = [set(re.findall(r"`([a-z_]+)/?`", row)) for row in rows]
    assert documented == [layers[0] | layers[1], *layers[2:]]  # its top row: the command line, app and cli/


def test_the_client_needs_the_standard_library_only():
    graph = grimp.build_graph("bkctl", include_external_packages=True)
    external = {module for importer in graph.modules if importer.startswith("bkctl")
                for module in graph.find_modules_directly_imported_by(importer) if not module.startswith("bkctl")}
    assert {module.split(".")[0] for module in external} <= sys.stdlib_module_names, external
