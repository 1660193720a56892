#!/usr/bin/env bash
# Builds the local base image `aegis-base:bookworm` (override with AEGIS_BASE_IMAGE)
# from Debian's own packages, for machines whose Docker engine cannot pull images.
#
# A Debian bookworm minbase made with debootstrap, plus ca-certificates, curl (the
# healthchecks) and procps (ps/pkill for the demo's worker-kill step), loaded with
# `docker import`. Cached: nothing is done when the image exists (FORCE=1 rebuilds).
#
# Needs root (debootstrap), debootstrap and the Debian mirror
# (AEGIS_DEBIAN_MIRROR, default http://deb.debian.org/debian).
set -euo pipefail

IMAGE="${AEGIS_BASE_IMAGE:-aegis-base:bookworm}"
MIRROR="${AEGIS_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm

if [[ "${FORCE:-0}" != 1 ]] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "base image $IMAGE present (FORCE=1 rebuilds)"
    exit 0
fi
command -v debootstrap >/dev/null || { echo "build-base: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
[[ $(id -u) == 0 ]] || { echo "build-base: debootstrap needs root" >&2; exit 1; }

work="$(mktemp -d /tmp/aegis-base.XXXXXX)"
cleanup() {
    # debootstrap may leave proc/sys mounted on failure
    for m in proc sys dev/pts dev; do umount -l "$work/root/$m" 2>/dev/null || true; done
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT

start=$SECONDS
echo "build-base: debootstrap $SUITE (minbase) from $MIRROR ..."
debootstrap --variant=minbase --include=ca-certificates,curl,procps \
    "$SUITE" "$work/root" "$MIRROR" >"$work/debootstrap.log" 2>&1 || {
    tail -30 "$work/debootstrap.log" >&2
    echo "build-base: debootstrap failed (log above)" >&2
    exit 1
}

# Slim it: no apt lists, caches, docs or man pages in the image.
root="$work/root"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
       "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
       "$root"/var/log/*.log "$root"/tmp/* 2>/dev/null || true
printf 'deb %s %s main\n' "$MIRROR" "$SUITE" >"$root/etc/apt/sources.list"

echo "build-base: docker import -> $IMAGE"
tar -C "$root" --numeric-owner --one-file-system --exclude=./proc/* --exclude=./sys/* -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    --message "debootstrap --variant=minbase $SUITE + ca-certificates curl procps" \
    - "$IMAGE" >/dev/null
docker run --rm "$IMAGE" sh -c 'curl --version | head -1 && pkill --version && test -s /etc/ssl/certs/ca-certificates.crt' >/dev/null
echo "build-base: $IMAGE built in $((SECONDS - start))s ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
