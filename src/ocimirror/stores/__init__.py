"""Store implementations: registry, OCI layout directory and in-memory."""
