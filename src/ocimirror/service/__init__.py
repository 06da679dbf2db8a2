"""`ocimirror serve`: the mirror as an HTTP service (Cloud Run mirror API, jobs, dashboard)."""
