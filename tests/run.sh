#!/usr/bin/env bash
# Run Docxy's whole test suite on a Debian machine, installing what it needs:
# the real registry, clients and daemons from Debian, Python packages into
# .venv. Needs root (apt-get, dockerd, containerd). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

debs=(docker-registry skopeo docker.io containerd podman pebble curl ca-certificates systemd
      mmdebstrap catatonit nginx haproxy wrk)
need=()
for bin in docker-registry skopeo dockerd containerd ctr podman pebble curl systemd-socket-activate systemd-analyze \
           mmdebstrap catatonit nginx haproxy wrk; do
    command -v "$bin" >/dev/null 2>&1 || need+=("$bin")
done
if ((${#need[@]})); then
    echo "==> installing Debian packages (missing: ${need[*]})"
    export DEBIAN_FRONTEND=noninteractive
    # The tests start their own dockerd, containerd, nginx and haproxy on
    # loopback: the packages' services (nginx and haproxy on *:80) must not
    # start. policy-rc.d is what invoke-rc.d and deb-systemd-invoke ask.
    own_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
        own_policy=1
    fi
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${debs[@]}" python3-venv
    if [ -n "$own_policy" ]; then rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi
fi

if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv"
    python3 -m venv .venv || {
        apt-get install -y -q python3-venv && python3 -m venv .venv
    }
fi
echo "==> installing Python packages"
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q '.[test,dev]'

echo "==> ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "==> mypy"
.venv/bin/mypy
echo "==> pytest"
exec .venv/bin/python -m pytest "$@"
