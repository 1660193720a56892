#!/usr/bin/env bash
# Runs the README's "Try it" section as written, in one bash session (so
# `&` jobs and `kill %3` mean what they mean to a reader), and checks every
# `#> expected` comment: each piece of it between `…` must appear, in order,
# in what that command printed. Any other failing command fails the run too.
#
#   bash tests/walkthrough.sh            # from the repository root
#
# It uses the README's own fixed ports (8080, 8443, 9001, 9002, 9005, 9901)
# and /tmp paths, so it refuses to start when one of those ports is taken,
# and it must not run beside the test suite. CI runs it after the suite.
set -euo pipefail
cd "$(dirname "$0")/.."

for port in 8080 8443 9001 9002 9005 9901; do
	if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
		echo "walkthrough: port $port is in use; stop what listens there first" >&2
		exit 2
	fi
done
python3 -c 'import websockets' 2>/dev/null || {
	echo "walkthrough: the WebSocket step needs python3 -m pip install websockets" >&2
	exit 2
}

exec python3 - "$@" <<'PY'
import os, re, select, subprocess, sys, tempfile, time

README = open("README.md", encoding="utf-8").read()
start = README.index("\n## Try it\n")
end = README.index("\n## ", start + 1)
section = README[start:end]
blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
if not blocks:
    sys.exit("walkthrough: no sh blocks under ## Try it")

def complete(text):
    return subprocess.run(["bash", "-n"], input=text, text=True,
                          capture_output=True).returncode == 0

EXPECT = re.compile(r"\s{2,}#>\s?(.*)$")
COMMENT = re.compile(r"\s{2,}#(?!>).*$")
commands = []  # (text, expected or None)
for block in blocks:
    pending = []
    for line in block.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending.append(line)
        # A trailing backslash continues the command (bash -n accepts one
        # at the end of its input, so it is checked here).
        if not line.endswith("\\") and complete("\n".join(pending) + "\n"):
            expected = None
            last = pending[-1]
            m = EXPECT.search(last)
            if m:
                expected = m.group(1).strip()
                last = last[: m.start()]
            else:
                last = COMMENT.sub("", last)
            pending[-1] = last
            commands.append(("\n".join(pending), expected))
            pending = []
    if pending:
        sys.exit("walkthrough: an incomplete command in README: " + "\n".join(pending))

work = tempfile.mkdtemp(prefix="aegis-walkthrough-")
shell = subprocess.Popen(["bash", "--noprofile", "--norc"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         bufsize=1)

def run(cmd, timeout):
    """Runs one command in the session; returns (exit status, output)."""
    out = os.path.join(work, "out")
    marker = "__walkthrough_done__"
    background = cmd.rstrip().endswith("&")
    if background:
        # A job: its output to a log of its own, the job table kept.
        n = len(os.listdir(work))
        body = cmd.rstrip()[:-1] + f" > {work}/job{n}.log 2>&1 &\n"
        script = body + f"echo {marker} 0\n"
    else:
        script = f"{{\n{cmd}\n}} > {out} 2>&1\necho {marker} $?\n"
    shell.stdin.write(script)
    shell.stdin.flush()
    deadline = time.time() + timeout
    line = ""
    while time.time() < deadline:
        ready, _, _ = select.select([shell.stdout], [], [], 1)
        if ready:
            line = shell.stdout.readline()
            if line.startswith(marker):
                break
    else:
        return None, open(out).read() if os.path.exists(out) else ""
    status = int(line.split()[1])
    text = "" if background else open(out, encoding="utf-8", errors="replace").read()
    return status, text

def matches(text, expected):
    at = 0
    for piece in (p.strip() for p in expected.split("…")):
        if not piece:
            continue
        i = text.find(piece, at)
        if i < 0:
            return False
        at = i + len(piece)
    return True

failed = False
try:
    for i, (cmd, expected) in enumerate(commands, 1):
        shown = cmd if len(cmd) < 120 else cmd[:117] + "..."
        status, text = run(cmd, timeout=600 if cmd.startswith("cargo") else 120)
        ok = status == 0 and (expected is None or matches(text, expected))
        print(f"{'ok  ' if ok else 'FAIL'} {i:2} {shown.splitlines()[0]}")
        if not ok:
            failed = True
            why = "timed out" if status is None else f"exit {status}"
            if status == 0:
                why = f"output does not match `{expected}`"
            print(f"     {why}; it printed:\n" + "".join("     | " + l + "\n" for l in text.splitlines()[-20:]))
            break
finally:
    try:
        shell.stdin.write("kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; exit 0\n")
        shell.stdin.flush()
        shell.wait(timeout=30)
    except Exception:
        shell.kill()
    if failed:
        for name in sorted(os.listdir(work)):
            if name.startswith("job"):
                tail = open(os.path.join(work, name), errors="replace").read().splitlines()[-15:]
                print(f"--- {name} (last lines)\n" + "\n".join(tail))

print(f"walkthrough: {len(commands)} commands, {'FAILED' if failed else 'all as the README says'}")
sys.exit(1 if failed else 0)
PY
