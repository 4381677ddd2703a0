"""The station runtime: presence, hosted agents, and the invoke service. The same code runs as a child process of
``lattice up`` and in a Kubernetes pod (``lattice station run``)."""
