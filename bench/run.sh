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
#   SYSTEMS="keystore-3 keystore-1 etcd-3 redis-1 postgres-1"   (etcd, redis, postgres also accepted)
#   OUT=bench/results      where raw-<timestamp>.jsonl, results.md and the SVGs go
#   KEYSTORE_CLIENTS=1     client.Client instances the keystore workers share
#   BENCH_TMP=/tmp         parent of the temporary data directory (must be a real disk, not tmpfs)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)

REPS=${REPS:-3}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONCURRENCY=${CONCURRENCY:-1 16 64 256}
SYSTEMS=${SYSTEMS:-keystore-3 keystore-1 etcd-3 redis-1 postgres-1}
OUT=${OUT:-$here/results}
KEYSTORE_CLIENTS=${KEYSTORE_CLIENTS:-1}

# Own ports, away from make cluster's 7001-7003/7101-7103.
KS3_CLIENT=(17001 17002 17003)
KS3_PEER=(17101 17102 17103)
KS1_CLIENT=17004
KS1_PEER=17104
ETCD_ENDPOINTS=127.0.0.1:12379,127.0.0.1:22379,127.0.0.1:32379
REDIS_ENDPOINT=127.0.0.1:16379
PG_ENDPOINT=127.0.0.1:15432

[[ "$REPS" =~ ^[0-9]+$ ]] && [ "$REPS" -ge 1 ] && [ "$REPS" -le 100 ] || { echo "REPS=$REPS: want 1..100" >&2; exit 2; }

# Every port must be free: another session's servers would be measured instead.
for port in "${KS3_CLIENT[@]}" "${KS3_PEER[@]}" "$KS1_CLIENT" "$KS1_PEER" 12379 12380 22379 22380 32379 32380 16379 15432; do
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

echo "bench: starting keystore (three nodes on ${KS3_CLIENT[*]}, one on $KS1_CLIENT) in $tmp"
cluster=""
for i in 0 1 2; do cluster+="${cluster:+,}n$((i + 1))=127.0.0.1:${KS3_PEER[$i]}"; done
for i in 0 1 2; do
	"$tmp/bin/keystored" --name "n$((i + 1))" --data-dir "$tmp/ks3/n$((i + 1))" \
		--client-addr "127.0.0.1:${KS3_CLIENT[$i]}" --peer-addr "127.0.0.1:${KS3_PEER[$i]}" \
		--initial-cluster "$cluster" --log-level warn >"$tmp/ks3-n$((i + 1)).log" 2>&1 &
	ks_pids+=($!)
done
"$tmp/bin/keystored" --name s1 --data-dir "$tmp/ks1/s1" \
	--client-addr "127.0.0.1:$KS1_CLIENT" --peer-addr "127.0.0.1:$KS1_PEER" \
	--log-level warn >"$tmp/ks1.log" 2>&1 &
ks_pids+=($!)
ks3_endpoints=$(printf '127.0.0.1:%s,' "${KS3_CLIENT[@]}")
ks3_endpoints=${ks3_endpoints%,}
ks3_pids=$(IFS=,; echo "${ks_pids[*]:0:3}")
ks1_pid=${ks_pids[3]}

echo "bench: starting etcd, Redis and PostgreSQL"
"$here/peers.sh" start "$tmp/peers"

"$kb" ping -backend keystore -endpoints "$ks3_endpoints" -timeout 60s
"$kb" ping -backend keystore -endpoints "127.0.0.1:$KS1_CLIENT" -timeout 60s
"$kb" ping -backend etcd -endpoints "$ETCD_ENDPOINTS" -timeout 60s
"$kb" ping -backend redis -endpoints "$REDIS_ENDPOINT" -timeout 60s
"$kb" ping -backend postgres -endpoints "$PG_ENDPOINT" -timeout 60s
echo "bench: all systems answer"

# args_for SYSTEM prints the keystore-bench flags of one system.
args_for() {
	case "$1" in
	keystore-3) echo "-backend keystore -label keystore-3 -endpoints $ks3_endpoints -clients $KEYSTORE_CLIENTS -server-pids $ks3_pids" ;;
	keystore-1) echo "-backend keystore -label keystore-1 -endpoints 127.0.0.1:$KS1_CLIENT -clients $KEYSTORE_CLIENTS -server-pids $ks1_pid" ;;
	etcd | etcd-3) echo "-backend etcd -label etcd-3 -endpoints $ETCD_ENDPOINTS -server-comm etcd" ;;
	redis | redis-1) echo "-backend redis -label redis-1 -endpoints $REDIS_ENDPOINT -server-comm redis-server" ;;
	postgres | postgres-1) echo "-backend postgres -label postgres-1 -endpoints $PG_ENDPOINT -server-comm postgres" ;;
	*) return 1 ;;
	esac
}
read -r -a systems <<<"$SYSTEMS"
read -r -a concs <<<"$CONCURRENCY"
for s in "${systems[@]}"; do args_for "$s" >/dev/null || { echo "bench: unknown system $s in SYSTEMS" >&2; exit 2; }; done

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

"$kb" report -in "$raw" -out "$OUT"
if [ "$failed" -gt 0 ]; then
	echo "bench: $failed run(s) failed; see above and $OUT/results.md" >&2
	exit 1
fi
echo "bench: done: $OUT/results.md"
