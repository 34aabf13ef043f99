#!/usr/bin/env bash
# bench/run.sh — pj side by side with no proxy (direct), HAProxy, nginx and
# socat, on loopback. See bench/README.md for what each mode measures.
#
#   bash bench/run.sh                       # everything, about 7 minutes
#   REPS=1 DURATION=1s bash bench/run.sh    # a smoke run
#
# Knobs (environment):
#   REPS        runs of every mode against every target          (3)
#   DURATION    measured time of up, down, lat1, latC and conn    (4s)
#   TARGETS     subset of: direct pj naive haproxy haproxy-splice nginx socat
#               the TLS terminators pj-tls naive-tls haproxy-tls nginx-tls, and
#               the routers by server name pj-sni haproxy-sni nginx-sni
#   MODES       subset of: up down lat1 latC conn connpaced idle (TCP; connpaced is conn
#               at CONN_RATE connections/s, not in the default MODES), tlsfull tlsresume
#               tlsbulk (TLS: run against the TLS terminators only, which run
#               no other mode), sni (run against direct and the routers by
#               name only, which run no other mode) and udp-64-1 udp-64-1000
#               udp-1400-1 udp-1400-1000 udp-lat (UDP: run against direct, pj,
#               nginx and socat only)
#   PJ_BIN      benchmark this pj binary instead of building one from the tree
#   PJ_BIN_B    a second pj binary, run as target pj-b beside pj (to compare two builds)
#   (target pj-acl: pj with an allow list of 1000 CIDRs and a per-client rate limit that
#   the load never reaches: what admission control costs; not in the default TARGETS)
#   (target pj-pool: pj with pool: {size: POOL_SIZE} — warm backend connections; compare
#   it with pj in the conn mode: TARGETS='pj pj-pool' MODES=conn; not in the default TARGETS)
#   (targets pj-tls-nopool and pj-tls-pool: pj with backend_tls to a TLS backend, a second
#   loadgen serving the same protocol inside TLS 1.3, without and with pool: {size: POOL_SIZE};
#   pj-nopool is pj-pool's file without the pool; compare them with
#   TARGETS='pj-nopool pj-pool pj-tls-nopool pj-tls-pool' MODES='conn connpaced'; not in the
#   default TARGETS)
#   BACKEND_DELAY  if set (e.g. 1ms), those four reach their backend through a delay line
#               (loadgen delay): every byte BACKEND_DELAY later each way, the first not before
#               a round trip after the connect; tc netem's job, where it is available (off)
#   POOL_SIZE   warm connections pj-pool and pj-tls-pool keep to the backend (64)
#   CONN_RATE   connections per second of the connpaced mode       (100)
#   IDLE_CONNS  connections the idle mode holds                   (3000)
#   HAPROXY_SPLICE  haproxy-splice's option: auto (splice-auto) or always
#               (splice-request + splice-response)                 (auto)
#
# Everything listens on 127.0.0.1. Every process started here is stopped by
# its PID on exit, and each also ends by itself after TARGET_LIFETIME.
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh" bench

REPS=${REPS:-3}
DURATION=${DURATION:-4s}
TARGETS=${TARGETS:-direct pj${PJ_BIN_B:+ pj-b} naive haproxy haproxy-splice nginx socat pj-tls naive-tls haproxy-tls nginx-tls pj-sni haproxy-sni nginx-sni}
MODES=${MODES:-up down lat1 latC conn sni idle tlsfull tlsresume tlsbulk udp-64-1 udp-64-1000 udp-1400-1 udp-1400-1000 udp-lat}
PJ_BIN_B=${PJ_BIN_B:-}
IDLE_CONNS=${IDLE_CONNS:-3000}
CONN_RATE=${CONN_RATE:-100}
BACKEND_DELAY=${BACKEND_DELAY:-}
POOL_SIZE=${POOL_SIZE:-64}
HAPROXY_SPLICE=${HAPROXY_SPLICE:-auto}
TARGET_LIFETIME=${TARGET_LIFETIME:-2h}

all_targets="direct pj pj-b pj-acl pj-nopool pj-pool pj-tls-nopool pj-tls-pool naive haproxy haproxy-splice nginx socat pj-tls naive-tls haproxy-tls nginx-tls pj-sni haproxy-sni nginx-sni"
all_modes="up down lat1 latC conn connpaced sni idle tlsfull tlsresume tlsbulk udp-64-1 udp-64-1000 udp-1400-1 udp-1400-1000 udp-lat"
udp_targets="direct pj pj-b nginx socat" # the targets that proxy UDP
tls_targets="pj-tls naive-tls haproxy-tls nginx-tls"
tls_modes="tlsfull tlsresume tlsbulk"
sni_targets="pj-sni haproxy-sni nginx-sni" # routers by the ClientHello's server name
sni_name=bench.example.com                 # the name loadgen's ClientHello asks for
# pairs MODE TARGET: TLS modes go to the TLS terminators, and only they do;
# sni goes to the routers by name and direct, and only sni goes to them.
pairs() {
	if in_list "$1" "$tls_modes"; then
		in_list "$2" "$tls_targets"
	elif [[ $1 == sni ]]; then
		in_list "$2" "direct $sni_targets"
	else
		! in_list "$2" "$tls_targets $sni_targets"
	fi
}
nginx_stream_module=/usr/lib/nginx/modules/ngx_stream_module.so

in_list() { # WORD LIST
	local w
	for w in $2; do [[ $w == "$1" ]] && return 0; done
	return 1
}

# --- knobs -------------------------------------------------------------------

want_count REPS IDLE_CONNS CONN_RATE POOL_SIZE
[[ -z $BACKEND_DELAY || $BACKEND_DELAY =~ ^[0-9.]+(us|µs|ms|s)$ ]] || die "BACKEND_DELAY=$BACKEND_DELAY: want a duration (1ms)"
for t in $TARGETS; do in_list "$t" "$all_targets" || die "TARGETS: unknown target '$t' (known: $all_targets)"; done
for m in $MODES; do in_list "$m" "$all_modes" || die "MODES: unknown mode '$m' (known: $all_modes)"; done
[[ $HAPROXY_SPLICE == auto || $HAPROXY_SPLICE == always ]] || die "HAPROXY_SPLICE=$HAPROXY_SPLICE: want auto or always"
[[ -n ${TARGETS// /} ]] || die "TARGETS is empty"
[[ -n ${MODES// /} ]] || die "MODES is empty"

# --- what is installed ---------------------------------------------------------

declare -A skip=() # target -> why it is not run
missing=()
if ! command -v haproxy >/dev/null; then
	skip[haproxy]="haproxy is not installed"
	skip[haproxy-splice]="haproxy is not installed"
	skip[haproxy-tls]="haproxy is not installed"
	skip[haproxy-sni]="haproxy is not installed"
	missing+=(haproxy)
fi
if ! command -v nginx >/dev/null; then
	skip[nginx]="nginx is not installed"
	skip[nginx-tls]="nginx is not installed"
	skip[nginx-sni]="nginx is not installed"
	missing+=(nginx libnginx-mod-stream)
elif [[ ! -e $nginx_stream_module ]]; then
	skip[nginx]="nginx's stream module ($nginx_stream_module) is not installed"
	skip[nginx-tls]=${skip[nginx]}
	skip[nginx-sni]=${skip[nginx]}
	missing+=(libnginx-mod-stream)
fi
if ! command -v socat >/dev/null; then
	skip[socat]="socat is not installed"
	missing+=(socat)
fi
wanted_missing=()
for t in "${!skip[@]}"; do in_list "$t" "$TARGETS" && wanted_missing+=("$t"); done
if ((${#wanted_missing[@]})); then
	say "skipping ${wanted_missing[*]}: not installed. To include them (Debian):"
	say "  apt-get install -y ${missing[*]}"
	for t in "${!skip[@]}"; do skip[$t]="${skip[$t]}; apt-get install -y ${missing[*]}"; done
fi

# --- set-up --------------------------------------------------------------------

# Descriptors: idle holds IDLE_CONNS connections, so the generator, the
# backend and each proxy need that many or twice that many.
raise_open_files
need=$((2 * IDLE_CONNS + 256))
if (($(ulimit -n) < need)); then
	say "warning: open-files limit $(ulimit -n) is below the $need that IDLE_CONNS=$IDLE_CONNS needs; idle will fail"
fi

started=$(date +%s)
new_results ""

declare -A pid=() port=() # target -> PID of its process (or wrapper), listen port
declare -A upid=() uport=() # the same for a target's UDP process
declare -A failed_starts=() start_why=() # target -> failed starts so far, the last reason
max_failed_starts=2
backend_pid=""
tls_backend_pid="" # the TLS backend of pj-tls-nopool and pj-tls-pool, if either runs
delay_pids=()      # the delay lines, with BACKEND_DELAY

# stop_in MAP TARGET NAME: stop the process MAP[TARGET] (MAP is pid or
# upid), if there is one, and forget it.
stop_in() {
	local -n procs=$1
	[[ -n ${procs[$2]:-} ]] || return 0
	stop_pid "${procs[$2]}" "$3"
	unset "procs[$2]"
}
stop_target() { stop_in pid "$1" "$1"; }
stop_udp_target() { stop_in upid "$1" "$1 (UDP)"; }

cleanup() {
	local rc=$? t
	trap - EXIT INT TERM
	for t in "${!pid[@]}"; do stop_target "$t"; done
	for t in "${!upid[@]}"; do stop_udp_target "$t"; done
	[[ -n $backend_pid ]] && stop_pid "$backend_pid" backend
	[[ -n $tls_backend_pid ]] && stop_pid "$tls_backend_pid" "TLS backend"
	for t in "${delay_pids[@]}"; do stop_pid "$t" "delay line"; done
	rm -rf "$tmp"
	exit "$rc"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT
trap 'say "terminated"; exit 143' TERM

# --- build ---------------------------------------------------------------------

say "results in ${results#"$root"/}"
say "building the load generator"
build_tools

uses_pj=""
for t in pj pj-acl pj-nopool pj-pool pj-tls-nopool pj-tls-pool pj-tls pj-sni; do in_list "$t" "$TARGETS" && uses_pj=1; done
if [[ -n $uses_pj ]]; then pick_pj; fi

{
	echo "date: $stamp"
	echo "host: $(uname -srm), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
	echo "knobs: REPS=$REPS DURATION=$DURATION IDLE_CONNS=$IDLE_CONNS POOL_SIZE=$POOL_SIZE CONN_RATE=$CONN_RATE BACKEND_DELAY=${BACKEND_DELAY:-off} HAPROXY_SPLICE=$HAPROXY_SPLICE TARGETS='$TARGETS' MODES='$MODES' PJ_BIN=${PJ_BIN:-built from the tree}"
	echo "open files: $(ulimit -n)"
	if [[ -n $uses_pj ]]; then
		if [[ -n $PJ_BIN ]]; then
			echo "pj: $pj: $("$pj" -V 2>&1 | head -n 1)"
		else
			# Read-only: which commit the work tree was on, and whether it had changes.
			echo "pj: built from the work tree at $(git -C "$root" describe --tags --always --dirty 2>/dev/null || echo 'an unknown commit')"
		fi
	fi
	[[ -z ${skip[haproxy]:-} ]] && echo "haproxy: $(haproxy -v 2>&1 | head -n 1)"
	[[ -z ${skip[nginx]:-} ]] && echo "nginx: $(nginx -v 2>&1 | head -n 1)"
	[[ -z ${skip[socat]:-} ]] && echo "socat: $(socat -V 2>&1 | grep -m 1 'socat version')"
	echo "go: $("$GO" version)"
} >"$results/meta.txt" 2>&1 || true

# --- the backend ---------------------------------------------------------------

"$loadgen" serve -listen 127.0.0.1:0 -port-file "$tmp/backend.port" -parent $$ -lifetime "$TARGET_LIFETIME" \
	</dev/null >>"$results/backend.log" 2>&1 &
backend_pid=$!
wait_file "$tmp/backend.port" "$backend_pid" "the backend" "$results/backend.log"
backend_port=$(<"$tmp/backend.port")
say "backend on 127.0.0.1:$backend_port (PID $backend_pid)"

# --- the targets -----------------------------------------------------------------

read -r -a free_ports <<<"$("$loadgen" ports -n "$(wc -w <<<"$all_targets $udp_targets")")"
i=0
for t in $all_targets; do
	port[$t]=${free_ports[$i]}
	i=$((i + 1))
done
port[direct]=$backend_port
for t in $udp_targets; do
	[[ $t == direct ]] && continue
	uport[$t]=${free_ports[$i]}
	i=$((i + 1))
done
uport[direct]=$backend_port # the backend echoes UDP on its TCP port's number

# write_acl_cfg FILE: pj on port[pj-acl] with 1000 allowed CIDRs (10.x.y.0/24,
# then 127.0.0.0/8 for the load generator, last in the list) and a per-client
# rate limit far above what the load reaches.
write_acl_cfg() {
	{
		echo "proxies:"
		echo "  - listen: \"127.0.0.1:${port[pj-acl]}\""
		echo "    backends: [\"127.0.0.1:$backend_port\"]"
		echo "    rate_limit: { per_client: 1000000, burst: 1000000 }"
		echo "    allow:"
		for ((i = 0; i < 999; i++)); do echo "      - \"10.$((i / 250)).$((i % 250)).0/24\""; done
		echo "      - \"127.0.0.0/8\""
	} >"$1"
}

# The TLS terminators serve an ECDSA P-256 certificate for bench.pj.test;
# the generator trusts its CA and offers only TLS 1.3 and X25519.
tlsdir="$tmp/tls"
"$loadgen" cert -dir "$tlsdir" -name bench.pj.test || die "loadgen cert failed"

# pj-tls-nopool and pj-tls-pool originate TLS (backend_tls) to a second
# backend: the same protocol inside TLS 1.3, with the same certificate.
if in_list pj-tls-nopool "$TARGETS" || in_list pj-tls-pool "$TARGETS"; then
	"$loadgen" serve -listen 127.0.0.1:0 -port-file "$tmp/tls-backend.port" -parent $$ -lifetime "$TARGET_LIFETIME" \
		-tls-cert "$tlsdir/cert.pem" -tls-key "$tlsdir/key.pem" </dev/null >>"$results/tls-backend.log" 2>&1 &
	tls_backend_pid=$!
	wait_file "$tmp/tls-backend.port" "$tls_backend_pid" "the TLS backend" "$results/tls-backend.log"
	tls_backend_port=$(<"$tmp/tls-backend.port")
	say "TLS backend on 127.0.0.1:$tls_backend_port (PID $tls_backend_pid)"
fi

# start_delay NAME PORT: a delay line to 127.0.0.1:PORT; sets delay_port.
start_delay() {
	rm -f "$tmp/$1.port"
	"$loadgen" delay -to "127.0.0.1:$2" -delay "$BACKEND_DELAY" -port-file "$tmp/$1.port" -parent $$ \
		-lifetime "$TARGET_LIFETIME" </dev/null >>"$results/$1.log" 2>&1 &
	delay_pids+=($!)
	wait_file "$tmp/$1.port" "$!" "the delay line $1" "$results/$1.log"
	delay_port=$(<"$tmp/$1.port")
}

# The backends of the pool comparison: through delay lines with BACKEND_DELAY.
pool_backend_port=$backend_port
pool_tls_backend_port=${tls_backend_port:-}
if [[ -n $BACKEND_DELAY ]]; then
	start_delay delay "$backend_port"
	pool_backend_port=$delay_port
	if [[ -n $pool_tls_backend_port ]]; then
		start_delay tls-delay "$tls_backend_port"
		pool_tls_backend_port=$delay_port
	fi
	say "delay lines of $BACKEND_DELAY each way: to the backend on $pool_backend_port${pool_tls_backend_port:+, to the TLS backend on $pool_tls_backend_port}"
fi

write_pj_backend_tls_cfg() { # FILE TARGET: pj-tls-nopool or pj-tls-pool
	{
		echo "proxies:"
		echo "  - listen: \"127.0.0.1:${port[$2]}\""
		echo "    backends: [\"127.0.0.1:$pool_tls_backend_port\"]"
		echo "    backend_tls: { server_name: bench.pj.test, ca: \"$tlsdir/ca.pem\" }"
		[[ $2 == pj-tls-pool ]] && echo "    pool: { size: $POOL_SIZE, max_age: 30s }"
	} >"$1"
}

write_pj_tls_cfg() { # FILE
	cat >"$1" <<EOF
proxies:
  - listen: "127.0.0.1:${port[pj-tls]}"
    backends: ["127.0.0.1:$backend_port"]
    tls:
      certificates: [{ cert: "$tlsdir/cert.pem", key: "$tlsdir/key.pem" }]
      min_version: "1.3"
EOF
}

# haproxy_head COMMENT [GLOBAL]: the start of a haproxy.cfg for pj's
# benchmark, up to its frontend: COMMENT on top, two threads, the
# connection caps, TCP mode and its timeouts; GLOBAL adds lines to the
# global section.
haproxy_head() {
	cat <<EOF
# $1
global
    nbthread 2
    # Room for idle's connections plus conn's churn. haproxy sizes its
    # descriptor limit from this (2 per connection, plus pipes for splice)
    # and refuses to start above the hard limit (20000 here).
    maxconn 6000
${2:-}
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    maxconn 6000
EOF
}

write_haproxy_tls_cfg() { # FILE
	{
		haproxy_head "haproxy-tls for pj's benchmark: terminate TLS 1.3 (X25519, the ECDSA P-256 certificate), relay plaintext, no logging. Session tickets are on by default, so tlsresume resumes." \
			$'    ssl-default-bind-options ssl-min-ver TLSv1.3\n    ssl-default-bind-curves X25519'
		cat <<EOF
frontend fe
    bind 127.0.0.1:${port[haproxy-tls]} ssl crt $tlsdir/bundle.pem
    default_backend be
backend be
    server backend 127.0.0.1:$backend_port
EOF
	} >"$1"
}

write_haproxy_cfg() { # TARGET FILE
	local splice=""
	if [[ $1 == haproxy-splice ]]; then
		splice="    option splice-auto"
		[[ $HAPROXY_SPLICE == always ]] && splice=$'    option splice-request\n    option splice-response'
	fi
	{
		haproxy_head "$1 for pj's benchmark: plain TCP relay, no logging."
		cat <<EOF
$splice
frontend fe
    bind 127.0.0.1:${port[$1]}
    default_backend be
backend be
    server backend 127.0.0.1:$backend_port
EOF
	} >"$2"
}

# write_pj_sni_cfg FILE: pj on port[pj-sni] with two routes by server name,
# the benchmark's name to the backend and another to nowhere; a client
# that asks for neither is closed.
write_pj_sni_cfg() {
	cat >"$1" <<EOF
proxies:
  - name: sni
    listen: "127.0.0.1:${port[pj-sni]}"
    routes:
      - name: other
        match: { sni: ["other.example.com"] }
        backends: ["127.0.0.1:1"]
      - name: bench
        match: { sni: ["$sni_name"] }
        backends: ["127.0.0.1:$backend_port"]
EOF
}

# write_haproxy_sni_cfg FILE: haproxy routing the same two names with
# req.ssl_sni, as its documentation does it.
write_haproxy_sni_cfg() {
	{
		haproxy_head "haproxy-sni for pj's benchmark: TCP routed by the ClientHello's name."
		cat <<EOF
frontend fe
    bind 127.0.0.1:${port[haproxy-sni]}
    tcp-request inspect-delay 5s
    tcp-request content accept if { req.ssl_hello_type 1 }
    use_backend other if { req.ssl_sni -i other.example.com }
    use_backend be if { req.ssl_sni -i $sni_name }
backend other
    server other 127.0.0.1:1
backend be
    server backend 127.0.0.1:$backend_port
EOF
	} >"$1"
}

# nginx_head DIR NAME COMMENT: the start of an nginx.conf for pj's
# benchmark, up to its stream block: the stream module, the workers (as
# root, nginx's workers switch to "nobody" unless told otherwise: keep
# them as the user running the benchmark), the pid file in DIR, errors to
# NAME-error.log. COMMENT heads the file. DIR/logs must exist.
nginx_head() {
	local user=""
	((EUID == 0)) && user="user $(id -un) $(id -gn);"
	cat <<EOF
# $3
load_module $nginx_stream_module;
$user
daemon off;
master_process on;
worker_processes 2;
worker_rlimit_nofile 20000;
pid $1/nginx.pid;
error_log $results/$2-error.log warn;
events {
    worker_connections 10000;
}
EOF
}

# write_nginx_sni_conf DIR: nginx routing the same two names with
# ssl_preread.
write_nginx_sni_conf() {
	mkdir -p "$1/logs"
	{
		nginx_head "$1" nginx-sni "nginx stream proxy for pj's benchmark, routed by the ClientHello's name."
		cat <<EOF
stream {
    map \$ssl_preread_server_name \$sni_backend {
        other.example.com 127.0.0.1:1;
        $sni_name 127.0.0.1:$backend_port;
        default 127.0.0.1:1;
    }
    server {
        listen 127.0.0.1:${port[nginx-sni]};
        ssl_preread on;
        preread_timeout 5s;
        proxy_pass \$sni_backend;
        proxy_connect_timeout 5s;
        proxy_timeout 1h;
        proxy_half_close on;
    }
}
EOF
	} >"$1/nginx.conf"
}

write_nginx_conf() { # DIR TARGET: nginx (plain) or nginx-tls
	local server
	if [[ $2 == nginx-tls ]]; then
		# Terminate TLS 1.3 (X25519, the ECDSA P-256 certificate) and
		# relay plaintext; tickets and a session cache let tlsresume
		# resume.
		server="listen 127.0.0.1:${port[nginx-tls]} ssl;
        ssl_certificate $tlsdir/cert.pem;
        ssl_certificate_key $tlsdir/key.pem;
        ssl_protocols TLSv1.3;
        ssl_ecdh_curve X25519;
        ssl_session_cache shared:SSL:10m;
        ssl_session_tickets on;"
	else
		server="listen 127.0.0.1:${port[nginx]};"
	fi
	mkdir -p "$1/logs"
	{
		nginx_head "$1" "$2" "$2: nginx stream proxy for pj's benchmark; the stream module logs nothing by default, so only errors are written."
		cat <<EOF
stream {
    server {
        $server
        proxy_pass 127.0.0.1:$backend_port;
        proxy_connect_timeout 5s;
        proxy_timeout 1h;
        # Pass a client's FIN on and keep the other direction open, as pj,
        # haproxy and socat do; without it nginx ends the whole session
        # when the client finishes sending, and up's final count is lost.
        proxy_half_close on;
    }
}
EOF
	} >"$1/nginx.conf"
}

# start_target NAME: start it, wait until an echo through it works. On
# failure: say why, stop it, return 1.
start_target() {
	local t=$1 log="$results/$1.log" cmd
	[[ $t == direct ]] && return 0
	if ((${failed_starts[$t]:-0} >= max_failed_starts)); then
		return 1 # gave up on it; start_why says why
	fi
	case $t in
	pj)
		cmd=("$pj" --proxy "127.0.0.1:${port[pj]}:127.0.0.1:$backend_port")
		;;
	pj-b)
		[[ -x $PJ_BIN_B ]] || { say "pj-b needs PJ_BIN_B, an executable pj"; return 1; }
		cmd=("$PJ_BIN_B" --proxy "127.0.0.1:${port[pj-b]}:127.0.0.1:$backend_port")
		;;
	pj-acl)
		write_acl_cfg "$tmp/pj-acl.yaml"
		cmd=("$pj" -c "$tmp/pj-acl.yaml")
		;;
	pj-pool | pj-nopool)
		printf 'proxies:\n  - listen: "127.0.0.1:%s"\n    backends: ["127.0.0.1:%s"]\n' "${port[$t]}" "$pool_backend_port" >"$tmp/$t.yaml"
		[[ $t == pj-pool ]] && echo "    pool: { size: $POOL_SIZE, max_age: 30s }" >>"$tmp/$t.yaml"
		cmd=("$pj" -c "$tmp/$t.yaml")
		;;
	pj-tls-nopool | pj-tls-pool)
		write_pj_backend_tls_cfg "$tmp/$t.yaml" "$t"
		cmd=("$pj" -c "$tmp/$t.yaml")
		;;
	haproxy | haproxy-splice)
		write_haproxy_cfg "$t" "$tmp/$t.cfg"
		cmd=(haproxy -db -f "$tmp/$t.cfg")
		;;
	nginx | nginx-tls)
		write_nginx_conf "$tmp/$t" "$t"
		cmd=(nginx -p "$tmp/$t/" -c "$tmp/$t/nginx.conf" -e "$results/$t-error.log")
		;;
	pj-tls)
		write_pj_tls_cfg "$tmp/pj-tls.yaml"
		cmd=("$pj" -c "$tmp/pj-tls.yaml")
		;;
	pj-sni)
		write_pj_sni_cfg "$tmp/pj-sni.yaml"
		cmd=("$pj" -c "$tmp/pj-sni.yaml")
		;;
	haproxy-sni)
		write_haproxy_sni_cfg "$tmp/haproxy-sni.cfg"
		cmd=(haproxy -db -f "$tmp/haproxy-sni.cfg")
		;;
	nginx-sni)
		write_nginx_sni_conf "$tmp/nginx-sni"
		cmd=(nginx -p "$tmp/nginx-sni/" -c "$tmp/nginx-sni/nginx.conf" -e "$results/nginx-sni-error.log")
		;;
	haproxy-tls)
		write_haproxy_tls_cfg "$tmp/haproxy-tls.cfg"
		cmd=(haproxy -db -f "$tmp/haproxy-tls.cfg")
		;;
	naive-tls)
		cmd=("$tmp/naive" "127.0.0.1:${port[naive-tls]}" "127.0.0.1:$backend_port" "$tlsdir/cert.pem" "$tlsdir/key.pem")
		;;
	naive)
		cmd=("$tmp/naive" "127.0.0.1:${port[naive]}" "127.0.0.1:$backend_port")
		;;
	socat)
		cmd=(socat "TCP-LISTEN:${port[socat]},bind=127.0.0.1,fork,reuseaddr" "TCP:127.0.0.1:$backend_port")
		;;
	esac
	echo "--- $(date -u +%FT%TZ) start: ${cmd[*]}" >>"$log"
	# timeout(1) makes each target end by itself even if this script is
	# killed before its trap runs; its TERM is passed on to the target.
	timeout -k 5 "$TARGET_LIFETIME" "${cmd[@]}" </dev/null >>"$log" 2>&1 &
	pid[$t]=$!
	local why
	local tlsargs=()
	in_list "$t" "$tls_targets" && tlsargs=(-tls-ca "$tlsdir/ca.pem")
	in_list "$t" "$sni_targets" && tlsargs=(-sni) # a router by name takes only a ClientHello
	if ! why=$("$loadgen" wait -addr "127.0.0.1:${port[$t]}" -pid "${pid[$t]}" -timeout 10s "${tlsargs[@]}" 2>&1); then
		say "$t failed to start: $why"
		say "  last lines of ${log#"$root"/}:"
		tail -n 5 "$log" | sed 's/^/    /' >&2
		stop_target "$t"
		local n=$((${failed_starts[$t]:-0} + 1))
		failed_starts[$t]=$n
		start_why[$t]=$why
		if ((n >= max_failed_starts)); then
			say "$t failed to start $max_failed_starts times: giving up on it for the rest of the runs"
		fi
		return 1
	fi
	return 0
}

write_nginx_udp_conf() { # DIR
	mkdir -p "$1/logs"
	{
		nginx_head "$1" nginx-udp "nginx stream proxy of UDP for pj's benchmark: a socket per worker (reuseport), sessions that last until the run ends, nothing logged."
		cat <<EOF
stream {
    server {
        listen 127.0.0.1:${uport[nginx]} udp reuseport;
        proxy_pass 127.0.0.1:$backend_port;
        proxy_timeout 1h;
    }
}
EOF
	} >"$1/nginx.conf"
}

# start_udp_target NAME: start its UDP process, wait until an echo through
# it works. Each UDP run gets a fresh one, so that no session (or, for
# socat, no forked process) of an earlier run is left.
start_udp_target() {
	local t=$1 log="$results/$1-udp.log" cmd
	[[ $t == direct ]] && return 0
	case $t in
	# A short grace period: on SIGTERM pj lets open sessions run for it,
	# and the runner's sessions stay open (idle timeout 30s) until it ends.
	pj) cmd=("$pj" --proxy "127.0.0.1:${uport[pj]}/udp:127.0.0.1:$backend_port" --grace-period 1s) ;;
	pj-b) cmd=("$PJ_BIN_B" --proxy "127.0.0.1:${uport[pj-b]}/udp:127.0.0.1:$backend_port" --grace-period 1s) ;;
	nginx)
		write_nginx_udp_conf "$tmp/nginx-udp"
		cmd=(nginx -p "$tmp/nginx-udp/" -c "$tmp/nginx-udp/nginx.conf" -e "$results/nginx-udp-error.log")
		;;
	socat) cmd=(socat -T 3600 "UDP-LISTEN:${uport[socat]},bind=127.0.0.1,fork,reuseaddr" "UDP:127.0.0.1:$backend_port") ;;
	esac
	echo "--- $(date -u +%FT%TZ) start: ${cmd[*]}" >>"$log"
	timeout -k 5 "$TARGET_LIFETIME" "${cmd[@]}" </dev/null >>"$log" 2>&1 &
	upid[$t]=$!
	local why
	if ! why=$("$loadgen" wait -udp -addr "127.0.0.1:${uport[$t]}" -pid "${upid[$t]}" -timeout 10s 2>&1); then
		say "$t (UDP) failed to start: $why"
		tail -n 5 "$log" | sed 's/^/    /' >&2
		stop_udp_target "$t"
		start_why[$t]=$why
		return 1
	fi
	return 0
}

# record LINE: append a result line and show it.
record() {
	printf '%s\n' "$1" >>"$raw"
	printf '  %s\n' "$1" >&2
}

json_str() { # escape for a JSON string
	local s=${1//\\/\\\\}
	s=${s//\"/\\\"}
	printf '%s' "${s//$'\n'/ }"
}

run_one() { # REP MODE TARGET
	local rep=$1 mode=$2 t=$3 pids="" out rc=0 p=${port[$3]}
	[[ $t != direct ]] && pids=${pid[$t]:-}
	if [[ $mode == udp-* ]]; then
		p=${uport[$t]}
		[[ $t != direct ]] && pids=${upid[$t]}
	fi
	out=$(timeout 300 "$loadgen" run -mode "$mode" -target "$t" -rep "$rep" \
		-addr "127.0.0.1:$p" -pids "$pids" -backend-pid "$backend_pid" \
		-duration "$DURATION" -idle-conns "$IDLE_CONNS" -conn-rate "$CONN_RATE" -tls-ca "$tlsdir/ca.pem" 2>>"$results/loadgen.log") || rc=$?
	if [[ -z $out ]]; then
		out="{\"target\":\"$t\",\"mode\":\"$mode\",\"rep\":$rep,\"error\":\"loadgen exited with status $rc and no result; see loadgen.log\"}"
	fi
	record "$out"
}

failed_start() { # REP MODE TARGET
	record "{\"target\":\"$3\",\"mode\":\"$2\",\"rep\":$1,\"error\":\"$(json_str "$3 could not be started: ${start_why[$3]:-see $3.log in the results}")\"}"
}

tcp_modes=""
for m in $MODES; do [[ $m != udp-* ]] && tcp_modes+=" $m"; done
# pj-tls runs once pj terminates TLS from its configuration file; a pj
# that refuses the tls key is skipped, with its reason.
if in_list pj-tls "$TARGETS"; then
	write_pj_tls_cfg "$tmp/pj-tls.yaml"
	if ! why=$("$pj" check -c "$tmp/pj-tls.yaml" 2>&1 >/dev/null); then
		skip[pj-tls]="this pj does not terminate TLS: pj check says: $(head -n 1 <<<"$why")"
	fi
fi

run_targets=""
for t in $TARGETS; do
	if [[ -n ${skip[$t]:-} ]]; then
		for m in $MODES; do
			pairs "$m" "$t" || continue
			[[ $m == udp-* ]] && ! in_list "$t" "$udp_targets" && continue
			record "{\"target\":\"$t\",\"mode\":\"$m\",\"skipped\":\"$(json_str "${skip[$t]}")\"}"
		done
		continue
	fi
	run_targets+=" $t"
	# The TCP process; a UDP mode starts a UDP process of its own.
	[[ -n $tcp_modes ]] && { start_target "$t" || true; }
done
say "targets:$run_targets; ports: $(for t in $run_targets; do printf '%s=%s ' "$t" "${port[$t]}"; done)"

# --- the runs ------------------------------------------------------------------
#
# Every mode against every target in turn, REPS times over, so that noise
# from the machine falls on all targets alike.

nmodes=$(wc -w <<<"$MODES")
ntargets=$(wc -w <<<"$run_targets")
say "$((REPS * nmodes * ntargets)) runs of $DURATION each (idle takes longer)"
for ((rep = 1; rep <= REPS; rep++)); do
	for mode in $MODES; do
		say "rep $rep/$REPS: $mode"
		for t in $run_targets; do
			pairs "$mode" "$t" || continue
			if [[ $mode == udp-* ]]; then
				in_list "$t" "$udp_targets" || continue
				if ! start_udp_target "$t"; then
					failed_start "$rep" "$mode" "$t"
					continue
				fi
				run_one "$rep" "$mode" "$t"
				stop_udp_target "$t"
				continue
			fi
			if [[ $t != direct ]]; then
				# idle measures the cost of connections against a
				# freshly started target: memory that earlier runs
				# grew and kept would hide the growth.
				if [[ $mode == idle ]]; then
					stop_target "$t"
				fi
				if [[ -z ${pid[$t]:-} ]] || ! alive "${pid[$t]}"; then
					if [[ -n ${pid[$t]:-} ]]; then
						say "$t (PID ${pid[$t]}) has exited; restarting it"
						stop_target "$t"
					fi
					if ! start_target "$t"; then
						failed_start "$rep" "$mode" "$t"
						continue
					fi
				fi
			fi
			run_one "$rep" "$mode" "$t"
		done
	done
done

# --- the table -----------------------------------------------------------------

elapsed=$(($(date +%s) - started))
{
	echo "# pj side by side — $stamp"
	echo
	sed 's/^/    /' "$results/meta.txt"
	echo "    run time: $((elapsed / 60))m$((elapsed % 60))s"
	echo
	"$tmp/summarize" "$raw"
} >"$results/table.md"
cat "$results/table.md"
say "raw results and the table are in ${results#"$root"/}/ (run time $((elapsed / 60))m$((elapsed % 60))s)"
