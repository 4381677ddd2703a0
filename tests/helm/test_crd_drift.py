"""The platform chart's CRDs are copies of crds/ (the generated single source); they must not drift."""

from __future__ import annotations

import subprocess

import pytest

from tests.helm.helmtool import PLATFORM_CHART, REPO

pytestmark = pytest.mark.timeout(30)

SOURCE = REPO / "crds"
COPY = PLATFORM_CHART / "crds"
FIX = "run `bash scripts/sync-chart-crds.sh` after regenerating crds/"


def test_chart_crds_are_identical_to_the_generated_crds() -> None:
    source = {p.name: p.read_bytes() for p in SOURCE.glob("*.yaml")}
    copy = {p.name: p.read_bytes() for p in COPY.glob("*.yaml")}
    assert source, f"no CRDs in {SOURCE}"
    assert sorted(copy) == sorted(source), f"{COPY} has {sorted(copy)}, crds/ has {sorted(source)}: {FIX}"
    differing = [name for name in source if copy[name] != source[name]]
    assert not differing, f"{differing} differ from crds/: {FIX}"


def test_sync_script_check_mode_agrees() -> None:
    result = subprocess.run(["bash", str(REPO / "scripts" / "sync-chart-crds.sh"), "--check"], capture_output=True,
                            text=True, timeout=20, check=False)
    assert result.returncode == 0, result.stderr
