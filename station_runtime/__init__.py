"""Station Lattice: LLM-agent work placed by auction on a lattice of stations over NATS."""

__version__ = "0.1.0"
