#!/usr/bin/env bash
# Build Docxy's image with podman, without any image registry:
#
#   1. the base image is made from Debian packages (mmdebstrap minbase with
#      python3, python3-venv, ca-certificates) and `podman import`ed; the
#      rootfs tar is cached between runs;
#   2. Docxy and its dependencies are built as wheels on this host (pip uses
#      this host's index configuration and CA certificates), so the build
#      itself needs no network;
#   3. `podman build --pull=never --build-arg BASE=<that base>` builds
#      deploy/image/Containerfile, the same file `docker build` uses with the
#      public base.
#
# Usage: deploy/image/build.sh [TAG]      (default TAG: localhost/docxy:<version>)
# Environment:
#   PODMAN      podman command (default: podman); podman also reads
#               CONTAINERS_STORAGE_CONF / CONTAINERS_CONF (the tests: a private store)
#   PYTHON      python with pip, for the wheels (default: .venv/bin/python or python3)
#   SUITE       Debian suite of the base (default: bookworm)
#   BASE        use this existing image as the base instead of making one
#   CACHE_DIR   where the base tar is kept (default: $XDG_CACHE_HOME/docxy-image)
#   BASE_MAX_AGE_DAYS  remake a cached base older than this (default: 7)
# Needs root (mmdebstrap, podman), Debian packages mmdebstrap and podman.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"

read -r -a podman <<<"${PODMAN:-podman}"
version="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' docxy/__init__.py)"
tag="${1:-localhost/docxy:$version}"
suite="${SUITE:-bookworm}"
cache="${CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/docxy-image}"
packages="python3,python3-venv,ca-certificates"
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

log() { echo "==> $*" >&2; }

base="${BASE:-}"
if [ -z "$base" ]; then
    base="localhost/docxy-base:$suite"
    tar="$cache/base-$suite-${packages//,/-}.tar"
    mkdir -p "$cache"
    if [ -f "$tar" ] && [ -z "$(find "$tar" -mtime +"${BASE_MAX_AGE_DAYS:-7}")" ]; then
        log "base rootfs: cached $tar"
    else
        log "base rootfs: mmdebstrap $suite ($packages)"
        part="${tar%.tar}.part-$$.tar"  # a .tar name: mmdebstrap's format
        mmdebstrap --quiet --format=tar --variant=minbase --include="$packages" \
            --aptopt='Acquire::Languages "none"' \
            --dpkgopt='path-exclude=/usr/share/doc/*' \
            --dpkgopt='path-exclude=/usr/share/man/*' \
            --dpkgopt='path-exclude=/usr/share/locale/*' \
            "$suite" "$part"
        mv "$part" "$tar"
    fi
    # Import only when the tar is not what the base image was made from.
    stamp="$(stat -c %Y "$tar")"
    if [ "$("${podman[@]}" image inspect --format '{{index .Labels "docxy.base-stamp"}}' \
            "$base" 2>/dev/null || true)" != "$stamp" ]; then
        log "base image: podman import -> $base"
        "${podman[@]}" import --change "LABEL docxy.base-stamp=$stamp" \
            --change 'CMD ["/bin/bash"]' "$tar" "$base" >/dev/null
    else
        log "base image: $base (up to date)"
    fi
fi

# A clean copy of the tree: a stale build/ or egg-info must not reach the image.
context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
tar --create --exclude-vcs --exclude=./.venv --exclude=./build --exclude=./dist \
    --exclude='*.egg-info' --exclude=__pycache__ --exclude='.*_cache' \
    --exclude=./deploy/image/wheels . | tar --extract --directory "$context"

log "wheels: $PYTHON -m pip wheel (dependencies kept in $cache/wheels)"
wheels="$context/deploy/image/wheels"
mkdir -p "$wheels" "$cache/wheels"
rm -f "$cache/wheels"/docxy-*.whl  # left by an older build.sh
"$PYTHON" -m pip wheel --quiet --wheel-dir "$wheels" --find-links "$cache/wheels" "$context"
# Keep the dependencies for the next build (never Docxy's own wheel: another
# checkout may build at the same time); a rename, so no one reads half a file.
for wheel in "$wheels"/*.whl; do
    name="$(basename "$wheel")"
    case "$name" in docxy-*) continue ;; esac
    if [ ! -f "$cache/wheels/$name" ]; then
        cp "$wheel" "$cache/wheels/.$name.$$" && mv "$cache/wheels/.$name.$$" "$cache/wheels/$name"
    fi
done

log "image: podman build $tag (BASE=$base)"
# --format docker: the OCI format has no HEALTHCHECK.
"${podman[@]}" build --pull=never --format docker --layers \
    --build-arg BASE="$base" --build-arg VERSION="$version" \
    --file "$context/deploy/image/Containerfile" --tag "$tag" "$context"
log "built $tag"
