#!/usr/bin/env bash
# wait-port.sh PORT: waits up to 10 s for 127.0.0.1:PORT to accept.
for _ in $(seq 1 200); do
	if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
		exit 0
	fi
	sleep 0.05
done
echo "nothing listening on 127.0.0.1:$1" >&2
exit 1
