"""`ocimirror proxy`: serve one or more upstream registries under the proxy's own name.

A pull-only registry proxy, a drop-in for serverless-registry-proxy (same environment
variables) with several upstreams, upstream credentials, client credentials, a
pull-through cache and metrics.
See `docs/proxy.md` for the configuration and for containerd and Docker.

- `settings`: the environment, the flags and the YAML config, as `ProxySettings`.
- `upstream`: one `Upstream` (host, repository prefix, auth) and the name mapping.
- `paths`: the strict parse of a raw `/v2/...` path; `routing`: `Proxy` (the state the
  handlers share) and `Route` (a client's names <-> the upstream's).
- `replies`, `errorbody`: the proxy's own answers; `rewrite`: headers in the client's
  names; `forward`: requests sent upstream and answers passed back.
- `ping`, `tokens`, `handlers`: the routes; `app`: the aiohttp application
  (`make_proxy_app`) and its middleware.
- `policy`: `PullPolicy`, when the cache may answer and whom (facts in, decisions out,
  no I/O); `pullthrough`, `cachedblobs`: the cache in the answers, carrying its
  decisions out; `cache`, `blobstream`, `cachestore`, `flights`: the cache's mechanism.
- `clientauth`, `metrics`: credentials to the proxy itself, and Prometheus metrics.
- `commands`: the typer command `proxy`.
"""
