#!/usr/bin/env bash
# Runs the examples end to end:
#   rpc_server + rpc_client (1000 requests, one and eight in flight), then SIGTERM: exit 0;
#   echo_server + a tiny bash client (a line, then 4 MiB both ways), then SIGINT: exit 0.
#   run_rpc_demo.sh RPC_SERVER RPC_CLIENT ECHO_SERVER
# Every wait is bounded, and every process started here is killed on any exit.
set -euo pipefail
rpc_server=$1 rpc_client=$2 echo_server=$3
tmp=$(mktemp -d)
pids=()

cleanup() {
	for p in "${pids[@]}"; do
		kill -KILL "$p" 2>/dev/null || true
	done
	wait 2>/dev/null || true
	rm -rf "$tmp"
}
trap cleanup EXIT

fail() {
	echo "run_rpc_demo: $*" >&2
	for f in "$tmp"/*.out; do
		[ -e "$f" ] && sed "s|^|  $(basename "$f"): |" "$f" >&2
	done
	exit 1
}

# The address a server printed ("listening on ADDRESS"), waiting up to 10 s for it.
address_of() {
	for _ in $(seq 100); do
		if line=$(grep -m1 '^listening on ' "$1"); then
			echo "${line#listening on }"
			return 0
		fi
		sleep 0.1
	done
	return 1
}

# Signals pid and waits up to 10 s for it to exit; fails unless it exits 0.
stop() {
	local pid=$1 sig=$2
	kill "-$sig" "$pid"
	for _ in $(seq 100); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -0 "$pid" 2>/dev/null && fail "pid $pid still runs 10 s after SIG$sig"
	local status=0
	wait "$pid" || status=$?
	[ "$status" -eq 0 ] || fail "pid $pid exited $status after SIG$sig"
}

# ---- rpc_server and rpc_client
"$rpc_server" "unix:@ura-rpc-demo-$$-$RANDOM" >"$tmp/rpc_server.out" 2>&1 &
server=$!
pids+=("$server")
addr=$(address_of "$tmp/rpc_server.out") || fail "rpc_server never said where it listens"
timeout 60 "$rpc_client" "$addr" 1000 >"$tmp/rpc_client.out" 2>&1 ||
	fail "rpc_client $addr 1000 failed"
timeout 60 "$rpc_client" "$addr" 1000 8 >>"$tmp/rpc_client.out" 2>&1 ||
	fail "rpc_client $addr 1000 8 failed"
grep -q '^1000 requests in .* requests/s (8 in flight)$' "$tmp/rpc_client.out" ||
	fail "rpc_client printed no rate"
cat "$tmp/rpc_client.out"
stop "$server" TERM
grep -q '^stopped$' "$tmp/rpc_server.out" || fail "rpc_server did not return from ura_main"

# Errors are non-zero exits: a service nobody listens on, a malformed address, bad usage.
if timeout 10 "$rpc_client" "unix:@ura-rpc-demo-nobody-$$" 3 2>/dev/null; then
	fail "rpc_client succeeded without a service"
fi
if timeout 10 "$rpc_client" "bogus:address" 3 2>/dev/null; then
	fail "rpc_client accepted a malformed address"
fi
if timeout 10 "$rpc_client" "$addr" 0 2>/dev/null; then
	fail "rpc_client accepted N = 0"
fi

# ---- echo_server and a tiny client
"$echo_server" 0 >"$tmp/echo_server.out" 2>&1 &
server=$!
pids+=("$server")
addr=$(address_of "$tmp/echo_server.out") || fail "echo_server never said where it listens"
port=${addr##*:}

# A line there and back.
exec 3<>"/dev/tcp/127.0.0.1/$port"
printf 'hello, ura\n' >&3
IFS= read -r -t 10 line <&3 || fail "no echo of the line"
[ "$line" = "hello, ura" ] || fail "echoed '$line'"

# 4 MiB through a second client, read only after a pause: meanwhile the server's sends
# block and its chunks hold every ring buffer (1 MiB), so its receive runs dry, pauses, and
# resumes as the echo drains. The writer runs beside the reader so neither side deadlocks.
head -c 4194304 /dev/urandom >"$tmp/in"
exec 4<>"/dev/tcp/127.0.0.1/$port"
cat "$tmp/in" >&4 &
pids+=("$!")
sleep 0.5
timeout 30 head -c 4194304 <&4 >"$tmp/back" || fail "the echo of 4 MiB did not come back"
cmp -s "$tmp/in" "$tmp/back" || fail "the echo of 4 MiB differs"
exec 4>&- 3>&-
echo "echo_server: a line and 4 MiB echoed"
stop "$server" INT
echo "examples: ok"
