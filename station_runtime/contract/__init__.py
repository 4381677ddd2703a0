"""The wire contract shared by the runtime, the operator and the CLI.

* :mod:`.ids` - validation of ids that become subject tokens
* :mod:`.subjects` - every subject, bucket and stream name
* :mod:`.messages` - every message model; :mod:`.events` - CloudEvents
* :mod:`.codec` - bytes <-> models; :mod:`.errors` - the error tree

A leaf: imports only pydantic, the standard library and ``station_runtime.api`` (itself a leaf). Import the
submodules; this package re-exports nothing, so that ``api`` can use ``contract.ids`` without a cycle.
"""
