"""Local registries and sample images for tests, the demo and benchmarks.

- `ocimirror.testkit.images`: deterministic sample images, indexes and corpora.
- `ocimirror.testkit.registry`: `LocalRegistry` (a distribution registry subprocess on
  loopback, with request counting from its access log, read by `ocimirror.testkit.accesslog`).
- `ocimirror.testkit.skopeo`: `Skopeo` (skopeo isolated from the host's configuration).
- `ocimirror.testkit.tokenserver`: `TokenServer`, a Docker registry token server.
- `ocimirror.testkit.tls`: a self-signed CA and server certificate (`make_tls_files`).
- `ocimirror.testkit.polling`: `wait_for`, polling a condition with a deadline.
- `ocimirror.testkit.browser`: Debian's headless Chromium through Playwright.
- `ocimirror.testkit.postgres`: `LocalPostgres`, a throwaway PostgreSQL server on loopback.
- `ocimirror.testkit.secrets`: the secrets a suite uses, and the scan of what ocimirror
  said for them (commands' output, processes' logs, answers; tests/secretscan.py).
- `ocimirror.testkit.child`: `LoggedChild`, a server run as a child process with its
  requests read from its log (moto's S3, the cloud emulators), and `http_answers`.
- `ocimirror.testkit.scripted`: `ScriptedServer`, a test's own scripted HTTP handler
  served on loopback from a thread.

Nothing is imported here, so `ocimirror.testkit.images` needs neither aiohttp's server
side nor `cryptography` (a test extra) and the modules load only when used.
"""
