#!/usr/bin/env bash
# bench/scale.sh — pj at scale, on loopback: many connections held at once
# (memory and descriptors per connection, the cost of listing the connection
# table), a configuration of 100 proxies and a pool of 1000 backends (the
# accept and connect path, and what the pool's health checks cost at rest),
# and what happens when clients ask for more connections than the
# descriptor limit allows. See bench/README.md.
#
#   bash bench/scale.sh                         # about 3 minutes
#
# Knobs (environment):
#   REPS        conn runs against each target                    (3)
#   DURATION    measured time of each conn run                   (3s)
#   HELD        connections the idle run holds through pj        (9000)
#   OVER        connections the over-the-limit run asks for      (16000)
#   PJ_BIN      benchmark this pj binary instead of building one from the tree
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh" scale
REPS=${REPS:-3}
DURATION=${DURATION:-3s}
HELD=${HELD:-9000}
OVER=${OVER:-16000}
proxies=100 pool=1000

want_count REPS HELD OVER
command -v curl >/dev/null || die "curl is needed to time the connection table: apt-get install -y curl"

raise_open_files
say "open-files limit $(ulimit -n) per process: pj holds 2 per connection, so at most about $((($(ulimit -n) - 100) / 2)) connections"

new_results scale
declare -a pids=()
cleanup() {
	local rc=$? p
	trap - EXIT INT TERM
	for p in "${pids[@]}"; do stop_pid "$p" "PID $p"; done
	rm -rf "$tmp"
	exit "$rc"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT
trap 'say "terminated"; exit 143' TERM

build_tools
pick_pj

# The backend: one port, and $pool more for the pool.
"$loadgen" serve -port-file "$tmp/backend.port" -more "$pool" -more-file "$tmp/pool.ports" \
	-parent $$ -lifetime 1h </dev/null >>"$results/backend.log" 2>&1 &
backend_pid=$!
pids+=("$backend_pid")
wait_file "$tmp/backend.port" "$backend_pid" "the backend" "$results/backend.log"
wait_file "$tmp/pool.ports" "$backend_pid" "the backend" "$results/backend.log"
backend=$(<"$tmp/backend.port")

read -r -a ports <<<"$("$loadgen" ports -n $((proxies + 2)))"
single=${ports[0]} admin=${ports[1]}
many=("${ports[@]:2}") # many[0]: the pool of $pool; many[1..]: one backend each
{
	echo "proxies:"
	echo "  - name: pool"
	echo "    listen: \"127.0.0.1:${many[0]}\""
	echo "    backends:"
	while read -r p; do echo "      - \"127.0.0.1:$p\""; done <"$tmp/pool.ports"
	for ((i = 1; i < proxies; i++)); do
		echo "  - name: p$i"
		echo "    listen: \"127.0.0.1:${many[$i]}\""
		echo "    backends: [\"127.0.0.1:$backend\"]"
	done
} >"$tmp/many.yaml"

# start VAR NAME ADDR ARGS...: start pj, wait until an echo through ADDR
# works; its PID goes to VAR and to pids (so not in a subshell, which
# would lose it and leave pj running after the clean-up).
start() {
	local -n started=$1
	local name=$2 addr=$3
	shift 3
	timeout -k 5 1h "$pj" "$@" </dev/null >>"$results/$name.log" 2>&1 &
	started=$!
	pids+=("$started")
	"$loadgen" wait -addr "$addr" -pid "$started" -timeout 30s >&2 || die "$name did not start: $(tail -n 3 "$results/$name.log")"
}
start one pj "127.0.0.1:$single" --proxy "127.0.0.1:$single:127.0.0.1:$backend" --admin "127.0.0.1:$admin"
start big pj-100 "127.0.0.1:${many[1]}" -c "$tmp/many.yaml"
# The pool's backends are checked every 2 s; wait until pj has them all up.
"$loadgen" wait -addr "127.0.0.1:${many[0]}" -pid "$big" -timeout 30s >&2 || die "the pool proxy does not answer"

run() { # REP MODE TARGET ADDR PID [ARGS...]
	local rep=$1 mode=$2 t=$3 addr=$4 pid=$5 out
	shift 5
	out=$(timeout 600 "$loadgen" run -mode "$mode" -target "$t" -rep "$rep" -addr "$addr" -pids "$pid" \
		-backend-pid "$backend_pid" -duration "$DURATION" "$@" 2>>"$results/loadgen.log") ||
		out="{\"target\":\"$t\",\"mode\":\"$mode\",\"rep\":$rep,\"error\":\"loadgen failed; see loadgen.log\"}"
	printf '%s\n' "$out" >>"$raw"
	printf '  %s\n' "$out" >&2
}

cpu_of() { # PID: utime+stime of it and its children (pj under timeout), in clock ticks
	local p files=("/proc/$1/stat")
	for p in $(pgrep -P "$1"); do files+=("/proc/$p/stat"); done
	awk '{ s = $0; sub(/^.*\) /, "", s); split(s, f, " "); n += f[12] + f[13] } END { print n }' "${files[@]}"
}

say "at rest for 5 s: pj with 1 proxy, and with $proxies proxies and a pool of $pool backends (health checks every 2 s)"
a1=$(cpu_of "$one") a2=$(cpu_of "$big")
sleep 5
b1=$(cpu_of "$one") b2=$(cpu_of "$big")
hz=$(getconf CLK_TCK)
echo "{\"target\":\"pj\",\"mode\":\"rest\",\"cpu_ms_per_s\":$(((b1 - a1) * 1000 / hz / 5))}" >>"$raw"
echo "{\"target\":\"pj-100\",\"mode\":\"rest\",\"cpu_ms_per_s\":$(((b2 - a2) * 1000 / hz / 5))}" >>"$raw"
say "  CPU at rest: pj $(((b1 - a1) * 1000 / hz / 5)) ms/s, pj-100 $(((b2 - a2) * 1000 / hz / 5)) ms/s"

say "conn: 1 proxy / one of $proxies proxies / the pool of $pool backends, $REPS times in turn"
for ((rep = 1; rep <= REPS; rep++)); do
	run "$rep" conn pj "127.0.0.1:$single" "$one"
	run "$rep" conn pj-100 "127.0.0.1:${many[1]}" "$big"
	run "$rep" conn pj-pool1000 "127.0.0.1:${many[0]}" "$big"
done

say "idle: $HELD connections held through pj; the connection table timed while they are"
run 1 idle pj "127.0.0.1:$single" "$one" -idle-conns "$HELD" -idle-hold 20s &
idle_pid=$!
# Wait (bounded) until pj holds them all, then time the listings. The wait
# reads the metrics, not the table: building listings of thousands while
# the generator measures pj's memory would count their buffers in it.
count() {
	curl -s --max-time 30 "http://127.0.0.1:$admin/metrics" |
		awk '/^pj_active_connections[ {]/ { n += $NF } END { print n + 0 }'
}
for ((i = 0; i < 150; i++)); do
	(($(count) >= HELD)) && break
	sleep 0.1
done
for what in "" "?limit=100"; do
	for ((i = 1; i <= 3; i++)); do
		t=$(curl -s --max-time 30 -o "$tmp/list.json" -w '%{time_total}' "http://127.0.0.1:$admin/api/v1/connections$what")
		n=$(grep -o '"id"' "$tmp/list.json" | wc -l)
		echo "{\"target\":\"pj\",\"mode\":\"list\",\"query\":\"$what\",\"rep\":$i,\"listed\":$n,\"bytes\":$(stat -c %s "$tmp/list.json"),\"seconds\":$t}" >>"$raw"
		say "  GET /api/v1/connections$what: $n listed, $(stat -c %s "$tmp/list.json") bytes, ${t}s"
	done
done
wait "$idle_pid" || true

say "over the limit: $OVER connections asked of pj at once, for 60 s (those beyond its descriptors wait in the accept queue)"
timeout 60 "$loadgen" run -mode idle -target pj -addr "127.0.0.1:$single" -pids "$one" -idle-conns "$OVER" \
	>/dev/null 2>>"$results/loadgen.log" || true
# No line at all when pj was never short of descriptors (a small OVER).
most=$(grep -o 'connections=[0-9]*' "$results/pj.log" | cut -d= -f2 | sort -n | tail -n 1) || true
echo "{\"target\":\"pj\",\"mode\":\"over\",\"asked\":$OVER,\"held_most\":${most:-0},\"shortage_lines\":$(grep -c 'too many open files' "$results/pj.log"),\"accepting_again_lines\":$(grep -c 'accepting again' "$results/pj.log")}" >>"$raw"
grep -E "too many open files|accepting again" "$results/pj.log" | tail -n 2 | cut -c1-240 | sed 's/^/  pj: /' >&2 || true

{
	echo "# pj at scale — $stamp"
	echo
	echo "    host: $(uname -srm), $(nproc) cores; open files $(ulimit -n); load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
	echo
	grep -E '"mode":"(conn|idle)"' "$raw" >"$tmp/runs.jsonl" || true
	"$tmp/summarize" "$tmp/runs.jsonl" || echo "(summarize failed: see raw.jsonl)"
	echo
	echo "At rest, the connection table's listings, and over the descriptor limit:"
	echo
	grep -E '"mode":"(rest|list|over)"' "$raw" | sed 's/^/    /' || true
} >"$results/table.md"
cat "$results/table.md"
say "raw results in ${results#"$root"/}/"
