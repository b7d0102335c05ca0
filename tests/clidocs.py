"""scripts/clidocs.py (the generator of the man pages and the bash completion)
loaded as a module, and its files written where a test wants them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "scripts" / "clidocs.py"


def load():
    spec = importlib.util.spec_from_file_location("clidocs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write(outdir: Path) -> Path:
    """Every generated file under outdir (as `make man` writes them)."""
    for name, text in load().generate().items():
        path = outdir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return outdir
