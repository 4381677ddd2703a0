"""NATS plumbing: the embedded server, connections with the right defaults, KV buckets and the events stream."""
