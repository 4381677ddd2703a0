"""Load and validate a directory (or file) of YAML manifests.

Every document is validated; all problems are collected and reported together with the file, the document's
index in that file and the field path, so a user fixes a whole directory in one pass.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..errors import LatticeError
from . import boundedyaml
from .dotprompt import PromptError, load_prompt
from .models import API_VERSION, KINDS, Agent, Manifest, Station, ToolServer, WorkItem

MAX_MANIFEST_BYTES = 1024 * 1024


@dataclass(frozen=True)
class ManifestProblem:
    file: Path
    index: int  # zero-based position of the document in its file
    path: str  # dotted field path, empty for the whole document
    message: str

    def __str__(self) -> str:
        where = f"{self.file}[{self.index}]"
        return f"{where} {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ManifestError(LatticeError, ValueError):
    """One or more manifests are invalid; ``problems`` lists each."""

    def __init__(self, problems: list[ManifestProblem]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s) in manifests:\n{lines}")


@dataclass
class ManifestSet:
    stations: list[Station] = field(default_factory=list)
    agents: list[Agent] = field(default_factory=list)
    tool_servers: list[ToolServer] = field(default_factory=list)
    work_items: list[WorkItem] = field(default_factory=list)

    def add(self, manifest: Manifest) -> None:
        if isinstance(manifest, Station):
            self.stations.append(manifest)
        elif isinstance(manifest, Agent):
            self.agents.append(manifest)
        elif isinstance(manifest, ToolServer):
            self.tool_servers.append(manifest)
        else:
            self.work_items.append(manifest)

    def __len__(self) -> int:
        return len(self.stations) + len(self.agents) + len(self.tool_servers) + len(self.work_items)


def _loc(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_document(doc: Any, file: Path, index: int) -> tuple[Manifest | None, list[ManifestProblem]]:
    """Validate one already-parsed YAML document."""
    if not isinstance(doc, dict):
        return None, [ManifestProblem(file, index, "", f"expected a mapping, got {type(doc).__name__}")]
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    if api_version != API_VERSION:
        msg = f"apiVersion must be {API_VERSION!r}, got {api_version!r}"
        return None, [ManifestProblem(file, index, "apiVersion", msg)]
    model = KINDS.get(kind) if isinstance(kind, str) else None
    if model is None:
        msg = f"kind must be one of {', '.join(KINDS)}, got {kind!r}"
        return None, [ManifestProblem(file, index, "kind", msg)]
    try:
        return model.model_validate(doc), []
    except ValidationError as exc:
        return None, [
            ManifestProblem(file, index, _loc(err["loc"]), err["msg"]) for err in exc.errors(include_url=False)
        ]


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"no manifest file or directory at {path}")
    return sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml", ".prompt") and p.is_file())


def load_manifests(*paths: Path | str) -> ManifestSet:
    """Load every ``*.yaml``/``*.yml`` (and ``*.prompt``: Dotprompt agents) under the given files or directories;
    raise :class:`ManifestError` listing every problem if any document is invalid."""
    result, problems = ManifestSet(), []
    #: Where each (kind, org, name) was first defined: a second definition names both places.
    defined: dict[tuple[str, str | None, str], tuple[Path, int]] = {}
    for root in paths:
        for file in _files(Path(root)):
            parsed: list[tuple[int, Manifest | None, list[ManifestProblem]]]
            if file.suffix == ".prompt":
                parsed = [(0, *_prompt(file))]
            else:
                docs, problem = _read(file)
                if problem is not None:
                    problems.append(problem)
                    continue
                parsed = [(index, *parse_document(doc, file, index))
                          for index, doc in enumerate(d for d in docs if d is not None)]
            for index, manifest, errs in parsed:
                problems.extend(errs)
                if manifest is None:
                    continue
                key = (manifest.kind, manifest.spec.org, manifest.name)
                if (first := defined.get(key)) is not None:
                    problems.append(ManifestProblem(file, index, "metadata.name",
                                                    f"duplicate {manifest.kind} {manifest.name!r} (first defined at "
                                                    f"{first[0]}[{first[1]}])"))
                    continue
                defined[key] = (file, index)
                result.add(manifest)
    if problems:
        raise ManifestError(problems)
    return result


def _prompt(file: Path) -> tuple[Manifest | None, list[ManifestProblem]]:
    """A ``.prompt`` file (Dotprompt) as the Agent it describes, or its problems by front-matter key."""
    if file.stat().st_size > MAX_MANIFEST_BYTES:
        return None, [ManifestProblem(file, 0, "", f"file is larger than {MAX_MANIFEST_BYTES} bytes")]
    try:
        return load_prompt(file), []
    except UnicodeDecodeError:
        return None, [ManifestProblem(file, 0, "", "not UTF-8 text")]
    except PromptError as exc:
        return None, [ManifestProblem(file, 0, p.key, p.message) for p in exc.problems]


def _read(file: Path) -> tuple[list[Any], ManifestProblem | None]:
    """The YAML documents of one file, or the problem with it (too large, not UTF-8, not YAML, beyond bounds)."""
    if file.stat().st_size > MAX_MANIFEST_BYTES:
        return [], ManifestProblem(file, 0, "", f"file is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        return [], ManifestProblem(file, 0, "", f"not UTF-8 text (byte {exc.start}): save it as UTF-8")
    try:
        return boundedyaml.load_all(text), None
    except yaml.YAMLError as exc:
        return [], ManifestProblem(file, 0, "", f"not valid YAML: {' '.join(str(exc).split())}")
