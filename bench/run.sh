#!/usr/bin/env bash
# make bench: keystore (a three-node cluster and a single node) against etcd
# (three members), Redis and PostgreSQL, all on loopback on this machine,
# interleaved and repeated; then the report (bench/results/results.md and
# the SVG charts). See bench/README.md.
#
# Knobs (environment):
#   REPS=3                 repetitions of the whole matrix
#   DURATION=10s           measured time per run (plus WARMUP=2s not measured)
#   CONCURRENCY="1 16 64 256"
#   SYSTEMS="keystore-3 keystore-1 etcd-3 redis-1 postgres-1"   (etcd, redis, postgres also accepted;
#                          keystore-3-mtls and etcd-3-mtls are the three-node systems over mutual TLS)
#   MTLS=1                 the secure comparison: SYSTEMS="keystore-3 etcd-3 keystore-3-mtls etcd-3-mtls",
#                          CONCURRENCY="1 64 256", OUT=bench/results/mtls unless given
#   OUT=bench/results      where raw-<timestamp>.jsonl, results.md and the SVGs go
#   KEYSTORE_CLIENTS=1     client.Client instances the keystore workers share
#   BENCH_TMP=/tmp         parent of the temporary data directory (must be a real disk, not tmpfs)
# Only the systems of SYSTEMS are started.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)

MTLS=${MTLS:-0}
REPS=${REPS:-3}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
if [ "$MTLS" = 1 ]; then
	CONCURRENCY=${CONCURRENCY:-1 64 256}
	SYSTEMS=${SYSTEMS:-keystore-3 etcd-3 keystore-3-mtls etcd-3-mtls}
	OUT=${OUT:-$here/results/mtls}
fi
CONCURRENCY=${CONCURRENCY:-1 16 64 256}
SYSTEMS=${SYSTEMS:-keystore-3 keystore-1 etcd-3 redis-1 postgres-1}
OUT=${OUT:-$here/results}
KEYSTORE_CLIENTS=${KEYSTORE_CLIENTS:-1}

# Own ports, away from make cluster's 7001-7003/7101-7103.
KS3_CLIENT=(17001 17002 17003)
KS3_PEER=(17101 17102 17103)
KS1_CLIENT=17004
KS1_PEER=17104
KS3M_CLIENT=(17011 17012 17013) # keystore-3-mtls
KS3M_PEER=(17111 17112 17113)
ETCD_ENDPOINTS=127.0.0.1:12379,127.0.0.1:22379,127.0.0.1:32379
ETCD_TLS_ENDPOINTS=127.0.0.1:12479,127.0.0.1:22479,127.0.0.1:32479 # etcd-3-mtls (peers.sh etcd-tls)
REDIS_ENDPOINT=127.0.0.1:16379
PG_ENDPOINT=127.0.0.1:15432

[[ "$REPS" =~ ^[0-9]+$ ]] && [ "$REPS" -ge 1 ] && [ "$REPS" -le 100 ] || { echo "REPS=$REPS: want 1..100" >&2; exit 2; }

# canonical SYSTEM prints a system's label (etcd is etcd-3, and so on).
canonical() {
	case "$1" in
	keystore-3 | keystore-1 | keystore-3-mtls | etcd-3-mtls) echo "$1" ;;
	etcd | etcd-3) echo etcd-3 ;;
	redis | redis-1) echo redis-1 ;;
	postgres | postgres-1) echo postgres-1 ;;
	*) return 1 ;;
	esac
}
systems=()
for s in $SYSTEMS; do
	c=$(canonical "$s") || { echo "bench: unknown system $s in SYSTEMS" >&2; exit 2; }
	systems+=("$c")
done
[ ${#systems[@]} -gt 0 ] || { echo "bench: SYSTEMS is empty" >&2; exit 2; }
# wants SYSTEM: whether SYSTEM (a canonical label) is to be measured.
wants() { [[ " ${systems[*]} " == *" $1 "* ]]; }

# Every port of a system to start must be free: another session's servers
# would be measured instead.
ports=()
if wants keystore-3; then ports+=("${KS3_CLIENT[@]}" "${KS3_PEER[@]}"); fi
if wants keystore-1; then ports+=("$KS1_CLIENT" "$KS1_PEER"); fi
if wants keystore-3-mtls; then ports+=("${KS3M_CLIENT[@]}" "${KS3M_PEER[@]}"); fi
if wants etcd-3; then ports+=(12379 12380 22379 22380 32379 32380); fi
if wants etcd-3-mtls; then ports+=(12479 12480 22479 22480 32479 32480); fi
if wants redis-1; then ports+=(16379); fi
if wants postgres-1; then ports+=(15432); fi
for port in "${ports[@]}"; do
	if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
		echo "bench: port $port on 127.0.0.1 is in use (servers of an earlier run still up?)" >&2
		exit 1
	fi
done

tmp=$(mktemp -d "${BENCH_TMP:-/tmp}/keystore-bench.XXXXXX")
chmod 755 "$tmp" # PostgreSQL runs as the postgres user and must reach its data dir
ks_pids=()
cleanup() {
	local rc=$?
	set +e
	trap - EXIT INT TERM
	echo "bench: stopping servers"
	local pid i
	for pid in "${ks_pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
	for pid in "${ks_pids[@]}"; do
		for ((i = 0; i < 60; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
		kill -KILL "$pid" 2>/dev/null
	done
	"$here/peers.sh" stop "$tmp/peers"
	rm -rf "$tmp"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fstype=$(stat -f -c %T "$tmp")
if [ "$fstype" = tmpfs ] || [ "$fstype" = ramfs ]; then
	echo "bench: WARNING: $tmp is on $fstype: fsync costs nothing there and the comparison means little (set BENCH_TMP)" >&2
fi

"$here/peers.sh" install

echo "bench: building keystored and keystore-bench"
mkdir -p "$tmp/bin" "$OUT"
(cd "$root" && CGO_ENABLED=0 go build -o "$tmp/bin/keystored" ./cmd/keystored)
(cd "$here" && go build -o "$tmp/bin/keystore-bench" .)
kb="$tmp/bin/keystore-bench"

# The secure systems' certificates (gencerts: a CA per system, ECDSA
# P-256; node certificates with server and client usage naming the member,
# localhost and 127.0.0.1; a client certificate "bench"), the keystore
# client's bearer token and the authorization policy that names it.
certs="$tmp/certs"
if wants keystore-3-mtls || wants etcd-3-mtls; then
	echo "bench: generating certificates, a token and a policy in $certs"
	(cd "$root" && go build -o "$tmp/bin/gencerts" ./internal/certgen/cmd/gencerts)
	"$tmp/bin/gencerts" -out "$certs/keystore" -nodes n1,n2,n3 -clients bench >/dev/null
	"$tmp/bin/gencerts" -out "$certs/etcd" -nodes e1,e2,e3 -clients bench >/dev/null
	(
		umask 077
		od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$certs/bench.token"
	)
	token_sha256=$(tr -d '\n' <"$certs/bench.token" | sha256sum | cut -d' ' -f1)
	cat >"$certs/policy.yaml" <<-EOF
		# keystore-bench: the bench principal may use the bench namespace only.
		principals:
		  - name: bench
		    token_sha256: $token_sha256
		    namespaces: [bench]
	EOF
fi
ks_tls_client=(-tls-ca "$certs/keystore/ca.crt" -tls-cert "$certs/keystore/client-bench.crt"
	-tls-key "$certs/keystore/client-bench.key" -token-file "$certs/bench.token")
etcd_tls_client=(-tls-ca "$certs/etcd/ca.crt" -tls-cert "$certs/etcd/client-bench.crt" -tls-key "$certs/etcd/client-bench.key")

# start_ks3 LABEL DATADIR CLIENT_PORTS PEER_PORTS [keystored flags...]
# starts a three-node cluster n1..n3 and appends its pids to ks_pids.
start_ks3() {
	local label=$1 dir=$2
	local -a cports pports
	read -r -a cports <<<"$3"
	read -r -a pports <<<"$4"
	shift 4
	local cluster="" i n
	for i in 0 1 2; do cluster+="${cluster:+,}n$((i + 1))=127.0.0.1:${pports[$i]}"; done
	for i in 0 1 2; do
		n="n$((i + 1))"
		local extra=() a
		for a in "$@"; do extra+=("${a//@NODE@/$n}"); done
		"$tmp/bin/keystored" --name "$n" --data-dir "$dir/$n" \
			--client-addr "127.0.0.1:${cports[$i]}" --peer-addr "127.0.0.1:${pports[$i]}" \
			--initial-cluster "$cluster" --log-level warn "${extra[@]}" >"$tmp/$label-$n.log" 2>&1 &
		ks_pids+=($!)
	done
}
# endpoints PORT...: 127.0.0.1:PORT,...
endpoints() {
	local e="" p
	for p in "$@"; do e+="${e:+,}127.0.0.1:$p"; done
	echo "$e"
}

if wants keystore-3; then
	echo "bench: starting keystore-3 (clients ${KS3_CLIENT[*]}) in $tmp"
	start_ks3 ks3 "$tmp/ks3" "${KS3_CLIENT[*]}" "${KS3_PEER[*]}"
	ks3_pids=$(IFS=,; echo "${ks_pids[*]: -3}")
	ks3_endpoints=$(endpoints "${KS3_CLIENT[@]}")
fi
if wants keystore-1; then
	echo "bench: starting keystore-1 (client $KS1_CLIENT) in $tmp"
	"$tmp/bin/keystored" --name s1 --data-dir "$tmp/ks1/s1" \
		--client-addr "127.0.0.1:$KS1_CLIENT" --peer-addr "127.0.0.1:$KS1_PEER" \
		--log-level warn >"$tmp/ks1.log" 2>&1 &
	ks_pids+=($!)
	ks1_pid=$!
fi
if wants keystore-3-mtls; then
	echo "bench: starting keystore-3-mtls (clients ${KS3M_CLIENT[*]}: TLS, client certificates required, a token per call; peers: mutual TLS) in $tmp"
	k="$certs/keystore"
	start_ks3 ks3m "$tmp/ks3m" "${KS3M_CLIENT[*]}" "${KS3M_PEER[*]}" \
		--tls-cert-file "$k/@NODE@.crt" --tls-key-file "$k/@NODE@.key" \
		--tls-client-ca-file "$k/ca.crt" --tls-client-cert-required \
		--peer-tls-cert-file "$k/@NODE@.crt" --peer-tls-key-file "$k/@NODE@.key" --peer-tls-ca-file "$k/ca.crt" \
		--auth-policy-file "$certs/policy.yaml"
	ks3m_pids=$(IFS=,; echo "${ks_pids[*]: -3}")
	ks3m_endpoints=$(endpoints "${KS3M_CLIENT[@]}")
fi

peers=()
if wants etcd-3; then peers+=(etcd); fi
if wants etcd-3-mtls; then peers+=(etcd-tls); fi
if wants redis-1; then peers+=(redis); fi
if wants postgres-1; then peers+=(postgres); fi
if [ ${#peers[@]} -gt 0 ]; then
	echo "bench: starting ${peers[*]}"
	ETCD_CERTS="$certs/etcd" "$here/peers.sh" start "$tmp/peers" "${peers[@]}"
fi
# etcd's CPU is measured by pid: with both etcd clusters up, a match on the
# command name would add the idle one's.
pids_of() { cat "$@" | paste -sd, -; }
if wants etcd-3; then etcd_pids=$(pids_of "$tmp"/peers/etcd/e*.pid); fi
if wants etcd-3-mtls; then etcd_tls_pids=$(pids_of "$tmp"/peers/etcd-tls/e*.pid); fi

if wants keystore-3; then "$kb" ping -backend keystore -endpoints "$ks3_endpoints" -timeout 60s; fi
if wants keystore-1; then "$kb" ping -backend keystore -endpoints "127.0.0.1:$KS1_CLIENT" -timeout 60s; fi
if wants keystore-3-mtls; then "$kb" ping -backend keystore -endpoints "$ks3m_endpoints" "${ks_tls_client[@]}" -timeout 60s; fi
if wants etcd-3; then "$kb" ping -backend etcd -endpoints "$ETCD_ENDPOINTS" -timeout 60s; fi
if wants etcd-3-mtls; then "$kb" ping -backend etcd -endpoints "$ETCD_TLS_ENDPOINTS" "${etcd_tls_client[@]}" -timeout 60s; fi
if wants redis-1; then "$kb" ping -backend redis -endpoints "$REDIS_ENDPOINT" -timeout 60s; fi
if wants postgres-1; then "$kb" ping -backend postgres -endpoints "$PG_ENDPOINT" -timeout 60s; fi
echo "bench: all systems answer"

# args_for SYSTEM prints the keystore-bench flags of one system.
args_for() {
	case "$1" in
	keystore-3) echo "-backend keystore -label keystore-3 -endpoints $ks3_endpoints -clients $KEYSTORE_CLIENTS -server-pids $ks3_pids" ;;
	keystore-1) echo "-backend keystore -label keystore-1 -endpoints 127.0.0.1:$KS1_CLIENT -clients $KEYSTORE_CLIENTS -server-pids $ks1_pid" ;;
	keystore-3-mtls) echo "-backend keystore -label keystore-3-mtls -endpoints $ks3m_endpoints -clients $KEYSTORE_CLIENTS -server-pids $ks3m_pids ${ks_tls_client[*]}" ;;
	etcd-3) echo "-backend etcd -label etcd-3 -endpoints $ETCD_ENDPOINTS -server-pids $etcd_pids" ;;
	etcd-3-mtls) echo "-backend etcd -label etcd-3-mtls -endpoints $ETCD_TLS_ENDPOINTS -server-pids $etcd_tls_pids ${etcd_tls_client[*]}" ;;
	redis-1) echo "-backend redis -label redis-1 -endpoints $REDIS_ENDPOINT -server-comm redis-server" ;;
	postgres-1) echo "-backend postgres -label postgres-1 -endpoints $PG_ENDPOINT -server-comm postgres" ;;
	*) return 1 ;;
	esac
}
read -r -a concs <<<"$CONCURRENCY"

raw="$OUT/raw-$(date -u +%Y%m%dT%H%M%SZ).jsonl"
# A run's wall-clock bound: warm-up + duration + a generous minute for
# connecting, in-flight operations and teardown.
# secs D: whole seconds of a Go duration like 10s or 2m (300, the cap, otherwise).
secs() {
	if [[ $1 =~ ^([0-9]+)s$ ]]; then echo "${BASH_REMATCH[1]}"
	elif [[ $1 =~ ^([0-9]+)m$ ]]; then echo $((BASH_REMATCH[1] * 60))
	else echo 300; fi
}
dur_s=$(secs "$DURATION")
warm_s=$(secs "$WARMUP")
bound=$((dur_s + warm_s + 60))
runs=$((REPS * (${#concs[@]} * ${#systems[@]} + 1)))
echo "bench: $runs runs of ${DURATION} (+${WARMUP} warm-up), about $((runs * (dur_s + warm_s + 1) / 60 + 1)) min; raw results in $raw"

failed=0
for ((rep = 1; rep <= REPS; rep++)); do
	echo "bench: repetition $rep/$REPS: fsync"
	if ! timeout --signal=INT "$bound" "$kb" -backend fsync -label fsync -concurrency 1 \
		-duration "$DURATION" -warmup "$WARMUP" -fsync-dir "$tmp/fsync" -out "$raw"; then
		failed=$((failed + 1))
	fi
	for ci in "${!concs[@]}"; do
		c=${concs[$ci]}
		# Rotate the order per repetition and concurrency, so no system always
		# runs right after the same one (or first, on a cold cache).
		n=${#systems[@]}
		for ((k = 0; k < n; k++)); do
			s=${systems[$(((k + rep - 1 + ci) % n))]}
			read -r -a args <<<"$(args_for "$s")"
			if ! timeout --signal=INT "$bound" "$kb" "${args[@]}" -concurrency "$c" \
				-duration "$DURATION" -warmup "$WARMUP" -out "$raw"; then
				echo "bench: $s at concurrency $c FAILED" >&2
				failed=$((failed + 1))
			fi
		done
	done
done

cmdline="REPS=$REPS DURATION=$DURATION WARMUP=$WARMUP CONCURRENCY=\"$CONCURRENCY\" SYSTEMS=\"${systems[*]}\""
if [ "$MTLS" = 1 ]; then cmdline="MTLS=1 $cmdline"; fi
if [ "$KEYSTORE_CLIENTS" != 1 ]; then cmdline+=" KEYSTORE_CLIENTS=$KEYSTORE_CLIENTS"; fi
"$kb" report -in "$raw" -out "$OUT" -command "$cmdline ./bench/run.sh"
if [ "$failed" -gt 0 ]; then
	echo "bench: $failed run(s) failed; see above and $OUT/results.md" >&2
	exit 1
fi
echo "bench: done: $OUT/results.md"
