"""`lattice demo`, as a new user meets it first (`make demo`): it succeeds, and says nothing alarming about what
it does on purpose (it kills a station mid-run)."""

from __future__ import annotations

import pytest

from tests.support.cli import lattice

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


async def test_the_demo_succeeds_without_warnings() -> None:
    result = await lattice("demo", timeout_s=100)
    out = result.stdout + result.stderr
    assert result.code == 0, out
    assert "9/9 succeeded" in out and "20/20 succeeded" in out
    # Act three: a tool-using agent on the stand-in model (which says what it is) delegates to two others.
    assert "modelsim" in out and "not a real LLM" in out
    assert "calling define" in out and "calling lattice_submit" in out and "lattice_await answered" in out
    assert "3 model calls, 5 tool calls" in out and out.count("child demo-plan-") == 2, out
    assert "WARNING" not in out and "malformed" not in out and "Traceback" not in out, out
    assert max(len(line) for line in out.splitlines()) < 400  # nothing as wide as a pipe's console
