# bench/lib.sh — what bench/run.sh and bench/scale.sh share. They source
# it with one argument, the name their messages start with:
#
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh" NAME

prog=$1
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd) # bench/
root=$(cd "$here/.." && pwd)
# haproxy and nginx live in /usr/sbin, which a user's PATH may lack.
PATH="$PATH:/usr/local/go/bin:/usr/sbin:/sbin"
GO=${GO:-go}
PJ_BIN=${PJ_BIN:-}

say() { printf '%s: %s\n' "$prog" "$*" >&2; }
die() {
	say "$*"
	exit 1
}

# want_count VAR...: each of these variables holds a whole number >= 1.
want_count() {
	local v
	for v in "$@"; do
		[[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v=${!v}: want a whole number >= 1"
	done
}

# raise_open_files: the open-files limit up to the hard limit.
raise_open_files() {
	local hard
	hard=$(ulimit -Hn)
	[[ $hard == unlimited ]] && hard=1048576
	ulimit -n "$hard" || say "could not raise the open-files limit to $hard"
}

# new_results NAME: a results directory bench/results/NAME-STAMP (NAME
# empty: bench/results/STAMP), an empty raw.jsonl in it and a temporary
# directory; sets stamp, results, raw and tmp.
new_results() {
	stamp=$(date -u +%Y%m%dT%H%M%SZ)
	results="$here/results/${1:+$1-}$stamp"
	mkdir -p "$results"
	tmp=$(mktemp -d "${TMPDIR:-/tmp}/pj-${1:-bench}.XXXXXX")
	raw="$results/raw.jsonl"
	: >"$raw"
}

# build_tools: loadgen, summarize and naive into $tmp; sets loadgen.
build_tools() {
	(cd "$root" && "$GO" build -o "$tmp/loadgen" ./bench/loadgen && "$GO" build -o "$tmp/summarize" ./bench/summarize &&
		"$GO" build -o "$tmp/naive" ./bench/naive) ||
		die "building bench/loadgen, bench/summarize or bench/naive failed"
	loadgen="$tmp/loadgen"
}

# pick_pj: the pj to benchmark, PJ_BIN or one built from the work tree
# into $tmp (as it is, uncommitted changes included); sets pj.
pick_pj() {
	if [[ -n $PJ_BIN ]]; then
		[[ -x $PJ_BIN ]] || die "PJ_BIN=$PJ_BIN is not an executable file"
		pj=$(cd "$(dirname "$PJ_BIN")" && pwd)/$(basename "$PJ_BIN")
		return
	fi
	say "building pj from $root"
	(cd "$root" && CGO_ENABLED=0 "$GO" build -trimpath -o "$tmp/pj" ./cmd/pj) ||
		die "building pj failed; fix the tree, or set PJ_BIN to a pj binary to benchmark"
	pj="$tmp/pj"
}

# alive PID: the process exists and is not a zombie (a child of this shell
# that exited stays a zombie until waited for, and kill -0 still succeeds).
alive() {
	local stat
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	stat=${stat##*) }
	[[ ${stat%% *} != Z ]]
}

# stop_pid PID NAME: SIGTERM, up to 10 s to exit, then SIGKILL.
stop_pid() {
	local p=$1 name=$2 i
	if alive "$p"; then
		kill -TERM "$p" 2>/dev/null || true
		for ((i = 0; i < 100; i++)); do
			alive "$p" || break
			sleep 0.1
		done
		if alive "$p"; then
			say "$name (PID $p) did not stop within 10s of SIGTERM: sending SIGKILL"
			kill -KILL "$p" 2>/dev/null || true
		fi
	fi
	wait "$p" 2>/dev/null || true
}

# wait_file FILE PID NAME LOG: wait, 10 s at most, until the process PID
# (NAME, writing to LOG) has written FILE, as loadgen writes its port
# file once it listens. Dies if the process exits first or the time
# passes.
wait_file() {
	local i
	for ((i = 0; i < 100; i++)); do
		[[ -s $1 ]] && return 0
		alive "$2" || die "$3 exited at start-up: $(tail -n 3 "$4")"
		sleep 0.1
	done
	die "$3 did not write ${1##*/} within 10s"
}
