"""``lattice import prompt FILE...``: Dotprompt ``.prompt`` files as Agent manifests (``lattice up -f`` and
``lattice apply -f`` take ``.prompt`` files directly; this shows, or saves, what they become)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
import yaml

from ..api.dotprompt import PromptError, load_prompt
from ..api.models import API_VERSION, Agent
from .common import USAGE, fail


def register(app: typer.Typer) -> None:
    import_app = typer.Typer(help="Turn other formats into lattice manifests.", no_args_is_help=True)
    import_app.command("prompt")(import_prompt)
    app.add_typer(import_app, name="import")


def import_prompt(
    files: Annotated[list[Path], typer.Argument(help=".prompt files (Dotprompt: YAML front matter, Handlebars).")],
    output: Annotated[str, typer.Option("--output", "-o", help="yaml or json.")] = "yaml",
) -> None:
    """Print the Agent manifest of each .prompt file (YAML documents, or a JSON list)."""
    if output not in ("yaml", "json"):
        fail(f"--output must be yaml or json, not {output!r}", code=USAGE)
    agents: list[Agent] = []
    problems: list[str] = []
    for file in files:
        if not file.is_file():
            problems.append(f"{file}: no such file")
            continue
        try:
            agents.append(load_prompt(file))
        except UnicodeDecodeError:
            problems.append(f"{file}: not UTF-8 text")
        except PromptError as exc:
            problems += [f"{file} {p.key}: {p.message}" if p.key else f"{file}: {p.message}" for p in exc.problems]
    if problems:
        fail(f"{len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems), code=USAGE)
    # apiVersion and kind are defaults of the model, but a manifest starts with them.
    docs = [{"apiVersion": API_VERSION, "kind": "Agent",
             **a.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_defaults=True)} for a in agents]
    if output == "json":
        print(json.dumps(docs, indent=2))
    else:
        print(yaml.safe_dump_all(docs, sort_keys=False, width=120), end="")
