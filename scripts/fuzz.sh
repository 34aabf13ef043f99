#!/usr/bin/env bash
# Fuzzes every Fuzz target of the repository for FUZZTIME each, then prints
# one line per target: executions, new interesting inputs, and the result.
# Targets are found with `go test -list`, in every package that has a file
# declaring one, so a target added anywhere joins without editing this.
#
#   FUZZTIME=10m scripts/fuzz.sh                 # what make fuzz-long runs
#   FUZZTIME=5s scripts/fuzz.sh                  # what make test runs
#   FUZZFLAGS=-parallel=1 nice -n 19 scripts/fuzz.sh   # politely, on a shared machine
#
# An input that panics, fails a target's checks, or costs one call more
# than 1 s or 64 MiB (internal/testutil.WithinBudget) is a finding: go test
# keeps it in the package's testdata/fuzz/TARGET, where every later go test
# runs it again. The script exits 1 if any target found one.
set -uo pipefail
cd "$(dirname "$0")/.."

GO=${GO:-go}
FUZZTIME=${FUZZTIME:-60s}
read -r -a flags <<<"${FUZZFLAGS:-}"

# go test's own -timeout (10 minutes by default) must outlast the fuzzing,
# or a 10-minute run fails as it ends: FUZZTIME plus 10 minutes.
seconds() {
	case $1 in
	*h) echo $((${1%h} * 3600)) ;;
	*m) echo $((${1%m} * 60)) ;;
	*s) echo "${1%s}" ;;
	*) echo 600 ;; # a count of executions (1000x): no duration to add to
	esac
}
timeout="$(($(seconds "$FUZZTIME") + 600))s"
log=$(mktemp -d)
trap 'rm -rf "$log"' EXIT

mapfile -t dirs < <(grep -rlE --include='*_test.go' '^func Fuzz[A-Z0-9_]' . | xargs -r -n1 dirname | sort -u)
results=()
failed=0
for dir in "${dirs[@]}"; do
	mapfile -t targets < <("$GO" test -list '^Fuzz' "$dir" | grep '^Fuzz')
	for target in "${targets[@]}"; do
		pkg=${dir#./}
		out="$log/${pkg//\//_}.$target"
		echo "== $pkg $target: $FUZZTIME"
		"$GO" test "./$pkg" -run '^$' -fuzz "^$target\$" -fuzztime "$FUZZTIME" -timeout "$timeout" "${flags[@]}" 2>&1 |
			tee "$out" | { grep -v '^fuzz: elapsed' || true; }
		status=${PIPESTATUS[0]}
		# The last progress line has the totals.
		last=$(grep '^fuzz: elapsed' "$out" | tail -n 1)
		execs=$(sed -nE 's/.*execs: ([0-9]+).*/\1/p' <<<"$last")
		interesting=$(sed -nE 's/.*new interesting: ([0-9]+).*/\1/p' <<<"$last")
		result=ok
		if [ "$status" -ne 0 ]; then
			if grep -q 'Failing input written' "$out" || grep -qE '^ +--- FAIL' "$out" ||
				! grep -q 'context deadline exceeded' "$out"; then
				result=FINDING
				failed=1
			else
				# Go 1.26's fuzzer can report its own deadline as a failure
				# when the time is up (go.dev/issue/75804, fixed in Go
				# 1.27): no input failed, none was written.
				result="ok (the fuzzer's end-of-time race, go.dev/issue/75804)"
			fi
		fi
		results+=("$(printf '%-22s %-18s %14s %12s  %s' "$pkg" "$target" "${execs:-?}" "${interesting:-?}" "$result")")
	done
done

echo
printf '%-22s %-18s %14s %12s  %s\n' package target executions interesting result
printf '%s\n' "${results[@]}"
exit $failed
