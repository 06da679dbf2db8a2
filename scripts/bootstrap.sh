# Sourced by the other scripts: install what ocimirror needs on a fresh Debian machine.
# Debian's docker-registry (the CNCF distribution registry), skopeo (the independent judge),
# apache2-utils (htpasswd) and postgresql (initdb and postgres, for the throwaway server the
# state database tests start; Debian keeps them in /usr/lib/postgresql/*/bin, off PATH),
# chromium (the headless browser the dashboard test drives through Playwright; never
# `playwright install`, which downloads a browser of its own), podman and containerd (more
# clients pulling through `ocimirror proxy` in the tests: containerd's registry mirrors
# send `?ns=`), nginx (serving a bucket layout written to a directory: the tested recipe of
# docs/static-registry.md), then a venv in .venv with the project and its test extras, and
# Azurite (the Azure Blob Storage emulator, from npm) in .cache/azurite.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
need=()
command -v docker-registry >/dev/null 2>&1 || need+=(docker-registry)
command -v skopeo >/dev/null 2>&1 || need+=(skopeo)
command -v htpasswd >/dev/null 2>&1 || need+=(apache2-utils)
command -v initdb >/dev/null 2>&1 || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null \
    || need+=(postgresql)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v containerd >/dev/null 2>&1 || need+=(containerd)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
# The container image test: runc (podman's crun refuses these machines' hybrid cgroups)
# and mmdebstrap, which makes the test's base image from Debian's packages.
command -v runc >/dev/null 2>&1 || need+=(runc)
command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
# Node.js and npm: Azurite, Microsoft's Azure Storage emulator, comes from npm (below).
command -v npm >/dev/null 2>&1 || need+=(nodejs npm)
if [ "${#need[@]}" -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "installing Debian packages: ${need[*]}" >&2
    $SUDO apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need[@]}" >&2
fi
PY="${PYTHON:-python3}"
if [ ! -x "$ROOT/.venv/bin/python" ]; then
    "$PY" -m venv "$ROOT/.venv"
fi
stamp="$ROOT/.venv/.installed-$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    rm -f "$ROOT"/.venv/.installed-*
    # Chained so the stamp is only written when the install succeeded, even where
    # a caller's `&&` list switches off errexit.
    "$ROOT/.venv/bin/pip" install -q --upgrade pip >&2 \
        && "$ROOT/.venv/bin/pip" install -q -e "$ROOT[test]" >&2 \
        && touch "$stamp"
    [ -f "$stamp" ] || { echo "bootstrap: installing the venv failed" >&2; return 1 2>/dev/null || exit 1; }
fi
# Azurite for the az:// bucket tests, pinned, in .cache/azurite (ignored by git); the tests
# skip with a line saying so where it could not be installed.
AZURITE_VERSION=3.37.0
azurite_stamp="$ROOT/.cache/azurite/.installed-$AZURITE_VERSION"
if [ ! -f "$azurite_stamp" ]; then
    mkdir -p "$ROOT/.cache/azurite"
    rm -f "$ROOT"/.cache/azurite/.installed-*
    echo "installing Azurite $AZURITE_VERSION (npm) in .cache/azurite" >&2
    npm install --prefix "$ROOT/.cache/azurite" --no-audit --no-fund --loglevel=error \
        "azurite@$AZURITE_VERSION" >&2 \
        && touch "$azurite_stamp" \
        || echo "bootstrap: installing Azurite failed: the az:// emulator tests will skip" >&2
fi
export PATH="$ROOT/.venv/bin:$PATH"
