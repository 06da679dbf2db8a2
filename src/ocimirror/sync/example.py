"""The commented starting config that `ocimirror config init` writes."""

EXAMPLE_CONFIG = """\
# ocimirror mirror configuration (`ocimirror config validate FILE` checks it).
version: 1

# Where runs and mirrored digests are remembered. Default: a SQLite file next to this
# config (NAME.state.db). PostgreSQL: postgresql://user@host/db
# state: sqlite:///var/lib/ocimirror/state.db
# keep_history: 30d    # finished runs and jobs older than this are pruned (0: never);
#                      # each mirror's last run and last successful run always stay

concurrency: 16        # images copied at once
max_errors: 0          # `ocimirror run` stops after N failed passes in a row (0: never)

logging:
  format: text         # text | json
  level: info          # debug | info | warning | error
  # color: auto        # auto | always | never
  # output: stderr     # stderr | stdout | a file path (appended to)

# metrics:
#   listen: 127.0.0.1:9108   # Prometheus metrics at /metrics

registries:
  registry.example.com:
    credentials:
      username: mirror
      password: ${MIRROR_PASSWORD}        # or {file: /run/secrets/mirror}
    # tls: {verify: true, ca_file: /etc/ssl/my-ca.pem}
    # max_concurrency: 32
    # requests_per_second: 10
    # adaptive: true                      # back off on 429/503 and recover (the above as ceilings)
    # min_concurrency: 1
  docker.io:
    credentials:
      docker_config: true                 # use ~/.docker/config.json
    rate_limit_reserve: 20                # pause pulls while RateLimit-Remaining is below 20
    rate_limit_wait: 5m                   # then look again (with a free HEAD) every 5 minutes

# Buckets holding the registry layout (targets like s3://my-bucket/org/app, see
# docs/static-registry.md); what is left out comes from AWS_*, GOOGLE_*, AZURE_*.
# buckets:
#   s3://my-bucket:
#     region: eu-west-1
#     credentials: {username: AKIA..., password: ${AWS_SECRET_ACCESS_KEY}}
#     prefix: mirror                      # the layout under mirror/v2/...
#     # endpoint: https://minio.example.com
#     # public_read: true                 # each object public-read (S3 only; the aws extra)

# Inherited by every mirror that does not set its own.
defaults:
  schedule: 6h         # 30m, 6h, 1d, 1w; a cron expression ("0 3 * * *"); 0 = on demand
  # platforms: [linux/amd64, linux/arm64]
  # Signatures, SBOMs, attestations are copied with each image (docs/referrers.md):
  # referrers: {exclude: ["application/spdx+json"], require_signed: false, check_interval: 6h}
  # trust_state: true  # skip the target HEAD of a tag the state says was written there
  # verify_every: 24h  # ...but look at every target again this often (and on --verify)

mirrors:
  # A repository (no tag): the tags the filter selects.
  - name: postgres
    source: postgres
    targets: [registry.example.com/mirror/postgres]
    tags:
      semver: ">=16"
      latest: 3
    immutable_tags: ["*.*.*"]   # release tags never change: once mirrored, never checked

  # Single images (a tag each), all to one target repository prefix.
  - name: base-images
    source: [alpine:3.20, busybox:1.36]
    targets: [registry.example.com/mirror]
    schedule: "0 3 * * *"
"""
