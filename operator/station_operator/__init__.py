"""The Station Lattice Kubernetes operator (kopf): Station, Agent and WorkItem resources, one NATS account per org.

Importing this package registers the handlers; ``lattice operator`` runs them.
"""
