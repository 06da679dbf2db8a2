"""The shared settings layer: what every face (CLI, sync, service, proxy) configures alike.

- `secrets`: secrets (`{env: NAME}`, `{file: PATH}`) and the strict base of settings models;
- `durations`: `30s`, `6h`, `1h30m` and friends;
- `registries`: per-registry credentials, TLS and limits, and the client options and
  keychain they become;
- `schedule`: when a mirror runs (interval, cron, on demand);
- `config`: the mirror configuration file (and `compat`: the formats read as they are).

Nothing here imports a face; the package imports nothing until a module is asked for.
"""
