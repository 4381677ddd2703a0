"""Running a lattice on one machine: ``lattice up`` (embedded NATS + station child processes)."""
