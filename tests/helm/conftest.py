"""Fixtures of the chart tests: the helm binary (skip, or fail with LATTICE_REQUIRE_K8S=1, when absent)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helm.helmtool import MISSING_HELM, Helm, find_helm, measurements
from tests.support.kube_fixtures import skip_or_fail


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    binary = find_helm()
    if binary is None:
        skip_or_fail(MISSING_HELM)
    assert binary is not None
    return Helm(binary, tmp_path_factory.mktemp("helm-home"))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in measurements:
        terminalreporter.write_line(line)
