"""Store implementations (registry, OCI layout directory, in-memory) and the scheme table."""
