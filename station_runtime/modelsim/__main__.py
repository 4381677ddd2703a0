"""``python -m station_runtime.modelsim``: serve the stand-in model server until SIGINT or SIGTERM.

The one line it prints says plainly that this is not a real LLM (so a demo's output cannot be mistaken for a
model's) and gives both base URLs; it is printed once the port is listening, so a parent can wait for it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from station_runtime.modelsim.script import ScriptError, load_scripts
from station_runtime.modelsim.server import ModelSim


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m station_runtime.modelsim",
                                     description="A local stand-in model server (not a real LLM) speaking the "
                                                 "OpenAI and Anthropic APIs and playing scripts.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default 0: a free one)")
    parser.add_argument("--scripts", metavar="FILE", help="YAML or JSON file of scripts, added to the built-in ones")
    parser.add_argument("--tokens-per-s", type=float, default=None, metavar="X",
                        help="stream at X tokens per second (default: as fast as possible)")
    parser.add_argument("--require-key", action="store_true", help="answer 401 to requests without an API key")
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    scripts = load_scripts(args.scripts).values() if args.scripts else ()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with ModelSim(scripts, tokens_per_s=args.tokens_per_s, require_key=args.require_key, host=args.host,
                        port=args.port, record=False) as sim:
        print(f"modelsim: a local stand-in model server, not a real LLM; models {', '.join(sim.scripts)}; "
              f"OpenAI base URL {sim.openai_base_url} ; Anthropic base URL {sim.anthropic_base_url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    if args.tokens_per_s is not None and not args.tokens_per_s > 0:
        print("modelsim: --tokens-per-s must be > 0", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(args))
    except ScriptError as e:
        print(f"modelsim: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"modelsim: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
