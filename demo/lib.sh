# Shared by demo/build-image.sh, demo/run.sh and demo/ci.sh (sourced, not run).
#
# Variables (all optional):
#   AEGIS_IMAGE_SOURCE  official (default): docker-compose builds the top-level
#                       Dockerfile (pulls rust: and debian: images);
#                       local: no pull at all, a debootstrap base + host binaries
#   AEGIS_IMAGE         image every service runs (default aegis:demo)
#   AEGIS_BASE_IMAGE    local base image (default aegis-base:bookworm)
#   COMPOSE_PROJECT_NAME  (default aegis-demo for the scripts)
#   AEGIS_HTTP_PORT / AEGIS_ADMIN_PORT  host loopback ports (default 8080 / 9901;
#                       the scripts pick free ones when those are taken)
#   AEGIS_ADMIN_TOKEN   admin bearer token (default aegis-demo)

DEMO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$DEMO_DIR/.." && pwd)"
export AEGIS_IMAGE_SOURCE="${AEGIS_IMAGE_SOURCE:-official}"
export AEGIS_IMAGE="${AEGIS_IMAGE:-aegis:demo}"
export AEGIS_BASE_IMAGE="${AEGIS_BASE_IMAGE:-aegis-base:bookworm}"
export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-aegis-demo}"
export AEGIS_ADMIN_TOKEN="${AEGIS_ADMIN_TOKEN:-aegis-demo}"
# Scratch space (git-ignored through /target-*): the staged image context and
# the demo's copy of configs/.
DEMO_WORK="${AEGIS_DEMO_WORK:-$REPO/target-demo/demo}"

if [[ -t 1 && -z "${NO_COLOR:-}" ]]; then
    C_B=$'\e[1m' C_G=$'\e[32m' C_R=$'\e[31m' C_Y=$'\e[33m' C_0=$'\e[0m'
else
    C_B='' C_G='' C_R='' C_Y='' C_0=''
fi
say()  { printf '%s\n' "$*"; }
head_() { printf '\n%s==> %s%s  (%ss)\n' "$C_B" "$*" "$C_0" "$SECONDS"; }
ok()   { printf '  %sok%s   %s\n' "$C_G" "$C_0" "$*"; }
warn() { printf '  %swarn%s %s\n' "$C_Y" "$C_0" "$*"; }
die()  { printf '%sdemo: %s%s\n' "$C_R" "$*" "$C_0" >&2; exit 1; }

# `docker compose` (v2 plugin) when present, else docker-compose (v1).
pick_compose() {
    if docker compose version >/dev/null 2>&1; then
        COMPOSE=(docker compose)
    elif command -v docker-compose >/dev/null 2>&1; then
        COMPOSE=(docker-compose)
    else
        die "neither \`docker compose\` nor \`docker-compose\` is installed"
    fi
}
compose() { (cd "$REPO" && "${COMPOSE[@]}" "$@"); }
