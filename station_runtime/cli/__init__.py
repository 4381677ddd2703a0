"""The ``lattice`` command line."""
