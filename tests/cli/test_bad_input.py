"""Bad input to the ``lattice`` command, as a user's day produced it: each gets one clear line on stderr and exit
code 2, within bounded time and memory, and output that reads well in a pipe."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.cli import CliResult, lattice

pytestmark = pytest.mark.timeout(120)

STATION = "apiVersion: lattice.station.dev/v1alpha1\nkind: Station\nmetadata: {name: worker}\nspec: {}\n"
AGENT = "apiVersion: lattice.station.dev/v1alpha1\nkind: Agent\nmetadata: {name: %s}\nspec: {model: {provider: echo}}\n"


def _files(tmp: Path) -> dict[str, Path]:
    tmp.mkdir(parents=True, exist_ok=True)
    files = {
        "not-utf8": b"apiVersion: lattice.station.dev/v1alpha1\nkind: Agent\nmetadata: {name: caf\xe9}\n",
        "deep": b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n",
        # 700 bytes that expand to 10^9 items through aliases: refused by the alias limit, not by running out.
        "alias-bomb": (b'a: &a ["x","x","x","x","x","x","x","x","x","x"]\n'
                       + b"".join(b"%c: &%c [%s]\n" % (c, c, b",".join([b"*%c" % (c - 1)] * 10))
                                  for c in range(ord("b"), ord("j")))),
        "inf": (STATION + "---\napiVersion: lattice.station.dev/v1alpha1\nkind: WorkItem\nmetadata: {name: w}\n"
                "spec: {agent: echo, timeouts: {startToCloseSeconds: .inf}}\n").encode(),
        "bad-name": (AGENT % "Bad_Name").encode(),
        "dupes": (AGENT % "same" + "---\n" + AGENT % "same").encode(),
        "empty": b"",
    }
    out = {}
    for name, data in files.items():
        path = tmp / f"{name}.yaml"
        path.write_bytes(data)
        out[name] = path
    (tmp / "empty-dir").mkdir(exist_ok=True)
    out["empty-dir"] = tmp / "empty-dir"
    return out


async def _refused(*args: str, says: str, within_s: float = 15.0) -> CliResult:
    started = time.monotonic()
    result = await lattice(*args, env={"COLUMNS": "80"})
    took = time.monotonic() - started
    assert result.code == 2, (args, result)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert says in result.stderr, (args, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert took < within_s, (args, took)
    return CliResult(result.code, result.stdout, "\n".join(lines))


async def test_bad_manifests_are_refused_in_one_line_within_bounds(tmp_path: Path, nats_url: str, org: str) -> None:
    files = _files(tmp_path)
    base = ("--nats", nats_url, "--org", org)
    checks = [
        (("apply", "-f", str(files["not-utf8"])), "not UTF-8"),
        (("apply", "-f", str(files["deep"])), "nested deeper than"),
        (("apply", "-f", str(files["alias-bomb"])), "aliases"),
        (("up", "-f", str(files["inf"]), "--state-dir", str(tmp_path / "s")), "finite number"),
        (("apply", "-f", str(files["bad-name"])), "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
        (("apply", "-f", str(files["dupes"])), f"{files['dupes']}[1] metadata.name: duplicate Agent 'same'"),
        (("apply", "-f", str(files["empty"])), "no manifests in"),
        (("apply", "-f", str(files["empty-dir"])), "no manifests in"),
    ]
    results = await asyncio.gather(*(_refused(*base, *args, says=says) for args, says in checks))
    # The pattern is printed as it is (not read as rich markup), and the file's path stays on one line.
    assert "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" in results[4].stderr
    assert any(str(files["dupes"]) in line for line in results[5].stderr.splitlines())


async def test_bad_arguments_are_refused_in_one_line(nats_url: str, org: str) -> None:
    base = ("--nats", nats_url, "--org", org)
    checks = [
        (("work", "get", "*"), "invalid work id '*'"),
        (("work", "cancel", "x>y"), "invalid work id 'x>y'"),
        (("up", "-f", ".", "--port", "99999"), "'--port': Input should be less than or equal to 65535"),
        (("submit", "echo", "x", "--id", "[/x]"), "invalid work id '[/x]'"),
        (("submit", "echo", "x", "--timeout", "inf"), "--timeout"),
        (("events", "-o", "xml"), "'xml' is not one of"),
        (("events", "--type", "work.bogus"), "unknown event type 'work.bogus'"),
        (("work", "list", "--phase", "Bogus"), "'Bogus' is not one of"),
    ]
    await asyncio.gather(*(_refused(*base, *args, says=says) for args, says in checks))
    await _refused("--nats", nats_url, "--org", "", "get", "stations", says="invalid org id ''")


async def test_output_in_a_pipe_is_plain_and_unwrapped(nats_url: str, org: str, tmp_path: Path) -> None:
    long_dir = tmp_path / ("a-directory-with-a-rather-long-name-" * 3)
    long_dir.mkdir()
    result = await lattice("--nats", nats_url, "--org", org, "apply", "-f", str(long_dir), env={"COLUMNS": "80"})
    assert result.code == 2 and str(long_dir) in result.stderr  # on one line, not cut at 80 columns
    help_text = (await lattice("up", "--help", env={"COLUMNS": "80"})).stdout
    for option in ("--heartbeat-interval", "--state-dir", "--use-nats", "--no-sync"):
        assert option in help_text, help_text


def test_a_yaml_bomb_costs_bounded_memory(tmp_path: Path) -> None:
    """The 9-level alias bomb grew a process past 3 GB before: loading it now stays within a small bound."""
    path = _files(tmp_path)["alias-bomb"]
    code = ("import resource, sys\n"
            "from station_runtime.api.loader import ManifestError, load_manifests\n"
            f"try:\n    load_manifests({str(path)!r})\nexcept ManifestError as e:\n    print(e)\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ}).stdout.splitlines()
    assert any("aliases" in line for line in out[:-1]), out
    assert int(out[-1]) < 300 * 1024, f"max RSS {int(out[-1]) / 1024:.0f} MiB"  # KiB on Linux
