"""The wire contract shared by the runtime, the operator and the CLI.

* :mod:`.ids` - validation of ids that become subject tokens
* :mod:`.specs`, :mod:`.selectors` - the desired state of each resource (it travels in records and definitions)
* :mod:`.subjects` - every subject, bucket and stream name
* :mod:`.messages` - every message model; :mod:`.events` - CloudEvents
* :mod:`.codec` - bytes <-> models; :mod:`.errors` - the error tree

A leaf: imports only pydantic and the standard library (an import-linter contract in ``pyproject.toml`` keeps it
so). ``station_runtime.api`` builds the user-facing resources on top of it. Import the submodules; this package
re-exports nothing.
"""
