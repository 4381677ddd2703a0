"""Example manifests and agent functions (bundled so that `lattice demo` works from an installed package)."""

from pathlib import Path

EXAMPLES_DIR = Path(__file__).parent
DEMO_DIR = EXAMPLES_DIR / "demo"
