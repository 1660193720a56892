#!/usr/bin/env bash
# Byte-level conformance suite: varnishtest scripts both the client and the
# origin servers, Aegis stands between them.
#
#   tests/conformance/run.sh AEGIS_BINARY [CASE.vtc ...]
#
# Each case gets a free port for Aegis (${aegis_port}) and a port with nothing
# listening (${dead_port}); the case writes its config with aegis-config.sh and
# starts the binary as a varnishtest process. Needs varnishtest (Debian's
# `varnish` package: apt-get install varnish) and python3.
set -euo pipefail

if [ $# -lt 1 ]; then
	echo "usage: $0 AEGIS_BINARY [CASE.vtc ...]" >&2
	exit 2
fi
AEGIS=$(realpath "$1")
shift
HERE=$(cd "$(dirname "$0")" && pwd)
if ! command -v varnishtest >/dev/null; then
	echo "varnishtest not found: apt-get install varnish" >&2
	exit 2
fi
cases=("$@")
if [ ${#cases[@]} -eq 0 ]; then
	cases=("$HERE"/*.vtc)
fi
free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
pass=0
fail=0
failed=()
for c in "${cases[@]}"; do
	name=$(basename "$c" .vtc)
	if varnishtest -q -t 60 \
		-D aegis="$AEGIS" \
		-D aegis_port="$(free_port)" \
		-D dead_port="$(free_port)" \
		-D here="$HERE" \
		"$c"; then
		echo "ok   $name"
		pass=$((pass + 1))
	else
		echo "FAIL $name"
		fail=$((fail + 1))
		failed+=("$name")
	fi
done
echo "conformance: $pass passed, $fail failed"
if [ "$fail" -gt 0 ]; then
	echo "failed: ${failed[*]} (rerun one with: varnishtest -v -D aegis=... see $0)" >&2
	exit 1
fi
