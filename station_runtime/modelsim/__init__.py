"""modelsim: a local stand-in model server speaking the OpenAI and Anthropic wire formats, playing scripts.

It is not a model. It lets the providers' tests, ``make demo`` without an API key and the benchmarks talk to
something the official SDKs cannot tell from the real APIs (streaming, tool calls, usage, errors, retries), with
replies that are deterministic and pacing that is chosen. A leaf package: it imports nothing else of the runtime.
"""

from station_runtime.modelsim.script import (
    DEFAULT_SCRIPTS,
    ErrorStep,
    Script,
    ScriptError,
    Step,
    ToolCallStep,
    load_scripts,
    parse_scripts,
)
from station_runtime.modelsim.server import ModelSim, Recorded

__all__ = ["DEFAULT_SCRIPTS", "ErrorStep", "ModelSim", "Recorded", "Script", "ScriptError", "Step", "ToolCallStep",
           "load_scripts", "parse_scripts"]
