#!/usr/bin/env bash
# A Debian bookworm base image with python3 and venv, for the Dockerfile's PYTHON_IMAGE where no registry
# is reachable: debootstrap (minbase) from a Debian mirror, then `docker import`. Needs root.
#   deploy/base-image.sh [IMAGE (recsys-base:bookworm)] [MIRROR (http://deb.debian.org/debian)]
set -euo pipefail
image=${1:-recsys-base:bookworm}
mirror=${2:-http://deb.debian.org/debian}
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$mirror" >/dev/null
tar -C "$rootfs" -c . | docker import - "$image" >/dev/null
echo "$image"
