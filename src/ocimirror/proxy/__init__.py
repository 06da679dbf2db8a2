"""`ocimirror proxy`: serve one or more upstream registries under the proxy's own name.

A pull-only registry proxy, a drop-in for serverless-registry-proxy (same environment
variables) with several upstreams, upstream credentials, client credentials, a
pull-through cache and metrics.
See `docs/proxy.md` for the configuration and for containerd and Docker.

- `settings`: the environment, the flags and the YAML config, as `ProxySettings`.
- `upstream`: one `Upstream` (host, repository prefix, auth) and the name mapping.
- `app`: the aiohttp application (`make_proxy_app`); `serve_manifest` / `serve_blob` go
  through the pull-through cache when there is one.
- `cache`: the cache store (`ProxyCache`); `pullthrough`: how the proxy serves from it,
  revalidates tags, stands in for a failing upstream and checks who may read what.
- `clientauth`, `metrics`: credentials to the proxy itself, and Prometheus metrics.
- `commands`: the typer command `proxy`.
"""
