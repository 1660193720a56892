#!/usr/bin/env bash
# Builds the image every demo service runs ($AEGIS_IMAGE, default aegis:demo).
#
#   AEGIS_IMAGE_SOURCE=official demo/build-image.sh   the top-level Dockerfile via
#                                                     compose (pulls rust:, debian:)
#   AEGIS_IMAGE_SOURCE=local demo/build-image.sh      pulls nothing: the local base
#                                                     (demo/build-base.sh, cached)
#                                                     + host-built release binaries
#
# Binaries for `local`, first match wins:
#   AEGIS_BIN_DIR        a directory holding aegis, aegis-sandbox, aegis-loadgen
#   CARGO_TARGET_DIR     set: `cargo build --release` there (a no-op when fresh)
#   target/release/      all three present: reused as they are
#   otherwise            `cargo build --release` into target/
set -euo pipefail
source "$(dirname "$0")/lib.sh"
BINS=(aegis aegis-sandbox aegis-loadgen)

have_bins() { local b; for b in "${BINS[@]}"; do [[ -x "$1/$b" ]] || return 1; done; }

cargo_build() {
    say "cargo build --release (CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target})"
    (cd "$REPO" && cargo build --release -p aegis-proxy -p aegis-loadgen -p aegis-sandbox) \
        || die "cargo build failed (another crate mid-change? retry, or point AEGIS_BIN_DIR at built binaries)"
}

build_local() {
    local t0=$SECONDS bindir
    "$DEMO_DIR/build-base.sh"
    say "base image: $((SECONDS - t0))s"
    t0=$SECONDS
    if [[ -n "${AEGIS_BIN_DIR:-}" ]]; then
        bindir="$AEGIS_BIN_DIR"
    elif [[ -n "${CARGO_TARGET_DIR:-}" ]]; then
        cargo_build
        bindir="$CARGO_TARGET_DIR/release"
    elif have_bins "$REPO/target/release"; then
        bindir="$REPO/target/release"
        say "reusing the release build in $bindir (built $(date -r "$bindir/aegis" '+%F %T'))"
    else
        cargo_build
        bindir="$REPO/target/release"
    fi
    have_bins "$bindir" || die "missing binaries in $bindir (need ${BINS[*]})"
    say "binaries: $bindir ($((SECONDS - t0))s)"

    # A small, dedicated build context: the binaries and the baked config.
    local ctx="$DEMO_WORK/context"
    rm -rf "$ctx"
    mkdir -p "$ctx/bin" "$ctx/etc/aegis"
    for b in "${BINS[@]}"; do
        # Release builds carry debuginfo (~50 MB each); the image does not need it.
        if command -v strip >/dev/null; then
            strip --strip-debug -o "$ctx/bin/$b" "$bindir/$b"
        else
            cp "$bindir/$b" "$ctx/bin/"
        fi
    done
    cp "$REPO/configs/routes.yaml" "$REPO/configs/features.yaml" "$ctx/etc/aegis/"
    cp "$DEMO_DIR/aegis.container.yaml" "$ctx/etc/aegis/aegis.yaml"
    t0=$SECONDS
    docker build -f "$DEMO_DIR/Dockerfile.local" --build-arg "BASE_IMAGE=$AEGIS_BASE_IMAGE" \
        -t "$AEGIS_IMAGE" "$ctx" >"$DEMO_WORK/docker-build.log" 2>&1 \
        || { cat "$DEMO_WORK/docker-build.log"; die "docker build failed"; }
    say "docker build (Dockerfile.local): $((SECONDS - t0))s"
}

build_official() {
    pick_compose
    compose build proxy
}

case "$AEGIS_IMAGE_SOURCE" in
    local) build_local ;;
    official) build_official ;;
    *) die "AEGIS_IMAGE_SOURCE must be local or official, not \`$AEGIS_IMAGE_SOURCE\`" ;;
esac
docker run --rm --entrypoint aegis "$AEGIS_IMAGE" --version >/dev/null \
    || die "$AEGIS_IMAGE: aegis does not start in the image"
say "image $AEGIS_IMAGE ready ($AEGIS_IMAGE_SOURCE): $(docker run --rm --entrypoint aegis "$AEGIS_IMAGE" --version)"
