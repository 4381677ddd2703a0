"""Finding and running the helm v3 binary for the chart tests.

The binary comes from ``scripts/helm-bin.sh`` (built once with Go into the station-lattice cache), from
``LATTICE_HELM``, or from PATH. Every call runs with its own HELM_*_HOME dirs, so the tests never read or write the
user's helm config, repositories or cache, and only ever talk to the kubeconfig they are given.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHARTS = REPO / "helm"
PLATFORM_CHART = CHARTS / "station-lattice"
ORG_CHART = CHARTS / "lattice-org"
DEFAULT_HELM_VERSION = "v3.22.0"  # keep in step with scripts/helm-bin.sh

#: Measurements shown at the end of the run (install-to-Ready and friends), by tests/helm/conftest.py.
measurements: list[str] = []

MISSING_HELM = (
    "no helm v3 binary: run `bash scripts/helm-bin.sh` (builds helm with Go from the module proxy once, about "
    "2 min on 2 cores), put helm v3 on PATH, or set LATTICE_HELM=/path/to/helm"
)


def _is_helm3(path: str | Path) -> bool:
    try:
        out = subprocess.run([str(path), "version", "--short"], capture_output=True, text=True, timeout=10,
                             check=False, env={"PATH": os.environ.get("PATH", ""), "HOME": "/nonexistent"})
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and out.stdout.strip().startswith("v3.")


def find_helm() -> Path | None:
    """LATTICE_HELM, else the cached build for HELM_VERSION, else any cached build, else helm v3 on PATH."""
    if explicit := os.environ.get("LATTICE_HELM"):
        return Path(explicit) if _is_helm3(explicit) else None
    cache = Path(os.environ.get("LATTICE_CACHE") or Path.home() / ".cache" / "station-lattice") / "helm"
    wanted = os.environ.get("HELM_VERSION", DEFAULT_HELM_VERSION).removeprefix("v")
    candidates = [cache / wanted, *sorted((p for p in cache.glob("*") if p.name != wanted), reverse=True)]
    for version_dir in candidates:
        binary = version_dir / "bin" / "helm"
        if (version_dir / ".complete").is_file() and os.access(binary, os.X_OK):
            return binary
    on_path = shutil.which("helm")
    return Path(on_path) if on_path and _is_helm3(on_path) else None


class HelmError(AssertionError):
    pass


class Helm:
    """``helm`` with private HELM_*_HOME dirs, and optionally a kubeconfig."""

    def __init__(self, binary: Path, home: Path, kubeconfig: Path | None = None) -> None:
        self.binary = binary
        self.home = home
        self.kubeconfig = kubeconfig
        self.values_dir = home / "values"
        self.values_dir.mkdir(parents=True, exist_ok=True)
        self._files = 0

    def with_kubeconfig(self, kubeconfig: Path) -> Helm:
        return Helm(self.binary, self.home, kubeconfig)

    def env(self) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home),
               "HELM_CACHE_HOME": str(self.home / "cache"), "HELM_CONFIG_HOME": str(self.home / "config"),
               "HELM_DATA_HOME": str(self.home / "data"), "HELM_NO_PLUGINS": "1"}
        # No kubeconfig: point at nothing, so that an offline command that wanted a cluster fails loudly.
        env["KUBECONFIG"] = str(self.kubeconfig) if self.kubeconfig else str(self.home / "no-kubeconfig")
        return env

    def run(self, *args: str, timeout_s: float = 60.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(self.binary), *args], capture_output=True, text=True, timeout=timeout_s,
                              env=self.env(), check=False)
        if check and proc.returncode != 0:
            raise HelmError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}\n{proc.stdout}"[-6000:])
        return proc

    def values_file(self, values: dict[str, Any] | None) -> list[str]:
        if not values:
            return []
        self._files += 1
        path = self.values_dir / f"values-{self._files}.yaml"
        path.write_text(yaml.safe_dump(values, sort_keys=False))
        return ["--values", str(path)]

    def template(self, chart: Path, values: dict[str, Any] | None = None, *, release: str = "test",
                 namespace: str = "lattice-system", extra: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        out = self.run("template", release, str(chart), "--namespace", namespace, "--include-crds",
                       *self.values_file(values), *extra).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]

    def template_error(self, chart: Path, values: dict[str, Any] | None = None) -> str:
        """The error of a `helm template` that must fail."""
        proc = self.run("template", "test", str(chart), *self.values_file(values), check=False)
        if proc.returncode == 0:
            raise HelmError(f"helm template {chart.name} with {values} succeeded but should have failed")
        return proc.stderr

    def lint(self, chart: Path, values: dict[str, Any] | None = None) -> str:
        return self.run("lint", "--strict", str(chart), *self.values_file(values)).stdout

    def install(self, release: str, chart: Path, namespace: str, values: dict[str, Any] | None = None, *,
                timeout_s: float = 120.0, create_namespace: bool = False) -> str:
        args = ["install", release, str(chart), "--namespace", namespace, "--wait", "--timeout", f"{int(timeout_s)}s",
                *self.values_file(values)]
        if create_namespace:
            args.append("--create-namespace")
        return self.run(*args, timeout_s=timeout_s + 30).stdout

    def upgrade(self, release: str, chart: Path, namespace: str, *, timeout_s: float = 120.0) -> str:
        """`helm upgrade --reuse-values`: the same release again, which re-runs its pre-upgrade hooks."""
        return self.run("upgrade", release, str(chart), "--namespace", namespace, "--reuse-values", "--wait",
                        "--timeout", f"{int(timeout_s)}s", timeout_s=timeout_s + 30).stdout

    def uninstall(self, release: str, namespace: str, *, wait: bool = True, timeout_s: float = 60.0) -> None:
        args = ["uninstall", release, "--namespace", namespace, "--ignore-not-found"]
        if wait:
            args += ["--wait", "--timeout", f"{int(timeout_s)}s"]
        self.run(*args, timeout_s=timeout_s + 30, check=False)


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [d for d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]
    if len(matches) != 1:
        found = sorted(f"{d.get('kind')}/{d.get('metadata', {}).get('name')}" for d in docs)
        raise AssertionError(f"expected one {kind} {name or ''}, found {len(matches)} in {found}")
    return matches[0]


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(d["kind"] for d in docs)
