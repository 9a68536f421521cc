#!/usr/bin/env bash
# make bench-large: keystore with a large state, on real processes and real
# disks. Three keystored nodes (built here) on their own ports; keystore-bench
# large preloads them to each RECORDS count and measures lifecycles/s at
# CONCURRENCY clients against the empty cluster, a follower's restart to
# SERVING, a stopped follower's catch-up by snapshot (time, peak RSS of
# sender and receiver, checksums), and the same catch-up with a state of
# BIG_COUNT responses of BIG_SIZE bytes; and at each state size membership:
# a fourth node's join to voter (then its removal) and a killed follower's
# replacement, under a light write load. Report: OUT/REPORT.md (and
# .jsonl). See bench/README.md, "Large state".
#
# Knobs (environment):
#   RECORDS="1000000 5000000"  live-record counts measured at, ascending
#   DURATION=10s WARMUP=2s     each throughput run (as make bench)
#   CONCURRENCY=64             clients of the throughput runs
#   SETTLE=2m                  before each throughput run, wait at most this for the nodes to fall idle
#   PRELOAD_WORKERS=256        concurrent lifecycles of the preload
#   CATCHUP=100000             lifecycles written at least while a follower is down
#   CATCHUP_WORKERS=64         their concurrency
#   SNAPSHOT_ENTRIES=10000 KEEP_ENTRIES=5000   keystored's log compaction
#   BIG_COUNT=600 BIG_SIZE=1000000 BIG_SMALL=3000   the big-state catch-up (BIG_COUNT=0: skip)
#   MEMBERSHIP=1               the membership steps at each state size (0: skip)
#   MEMBERSHIP_ONLY=1          after each preload only the membership steps (no throughput,
#                              restart, catch-up, big state); REPORT defaults to large-membership
#   MEMBER_RATE=300 MEMBER_WORKERS=16   the paced writes during the membership steps
#   REPORT=large-state         the report's file name in OUT (.md and .jsonl)
#   LOGS=dir                   keep the nodes' logs there (else they go with the temporary directory)
#   OUT=bench/results          where large-state.md and large-state.jsonl go
#   BENCH_TMP=/tmp             parent of the temporary data directory (a real disk, not tmpfs)
#   MAX_TIME=4h                the whole run is interrupted after this
#   KEYSTORED=path             measure this keystored binary instead of building one from the tree
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)

RECORDS=${RECORDS:-1000000 5000000}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONCURRENCY=${CONCURRENCY:-64}
SETTLE=${SETTLE:-2m}
PRELOAD_WORKERS=${PRELOAD_WORKERS:-256}
CATCHUP=${CATCHUP:-100000}
CATCHUP_WORKERS=${CATCHUP_WORKERS:-64}
SNAPSHOT_ENTRIES=${SNAPSHOT_ENTRIES:-10000}
KEEP_ENTRIES=${KEEP_ENTRIES:-5000}
BIG_COUNT=${BIG_COUNT:-600}
BIG_SIZE=${BIG_SIZE:-1000000}
BIG_SMALL=${BIG_SMALL:-3000}
OUT=${OUT:-$here/results}
MAX_TIME=${MAX_TIME:-4h}
MEMBERSHIP=${MEMBERSHIP:-1}
MEMBERSHIP_ONLY=${MEMBERSHIP_ONLY:-0}
MEMBER_RATE=${MEMBER_RATE:-300}
MEMBER_WORKERS=${MEMBER_WORKERS:-16}
only=
if [ "$MEMBERSHIP_ONLY" = 1 ]; then
	only=membership
	MEMBERSHIP=1
	REPORT=${REPORT:-large-membership}
fi
REPORT=${REPORT:-large-state}
membership=true
[ "$MEMBERSHIP" = 1 ] || membership=false

# Own ports: away from make cluster (7001-7003/7101-7103) and make bench
# (17001-17104, etcd, Redis, PostgreSQL). The fourth node of the
# membership steps takes the next ones (27004, 27104).
CLIENT_PORTS=(27001 27002 27003)
PEER_PORTS=(27101 27102 27103)
for port in "${CLIENT_PORTS[@]}" "${PEER_PORTS[@]}" 27004 27104; do
	if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
		echo "bench-large: port $port on 127.0.0.1 is in use (nodes of an earlier run still up?)" >&2
		exit 1
	fi
done

tmp=$(mktemp -d "${BENCH_TMP:-/tmp}/keystore-large.XXXXXX")
cleanup() {
	local rc=$?
	set +e
	trap - EXIT INT TERM
	# keystore-bench stops its nodes itself; these are the ones it could
	# not (it was killed): each running node has a pid file under $tmp.
	local f pid i
	for f in "$tmp"/pids/*.pid; do
		[ -e "$f" ] || continue
		pid=$(cat "$f")
		if grep -qF "$tmp" "/proc/$pid/cmdline" 2>/dev/null; then
			echo "bench-large: stopping leftover node $pid"
			kill -TERM "$pid" 2>/dev/null
			for ((i = 0; i < 40; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
			kill -KILL "$pid" 2>/dev/null
		fi
	done
	if [ -n "${LOGS:-}" ]; then
		mkdir -p "$LOGS"
		for f in "$tmp"/*/n*.log; do
			[ -e "$f" ] || continue
			cp "$f" "$LOGS/$(basename "$(dirname "$f")")-$(basename "$f")"
		done
		echo "bench-large: nodes' logs copied to $LOGS"
	fi
	rm -rf "$tmp"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fstype=$(stat -f -c %T "$tmp")
if [ "$fstype" = tmpfs ] || [ "$fstype" = ramfs ]; then
	echo "bench-large: WARNING: $tmp is on $fstype: fsync, restart and catch-up cost nothing like on a disk (set BENCH_TMP)" >&2
fi
# A rough need: ~0.6 KB per record per node (state, log, Pebble's WAL), the
# big state three times over per node; the membership steps add a fourth node.
maxrec=$(echo "$RECORDS" | tr ', ' '\n\n' | { grep -E '^[0-9]+$' || true; } | sort -n | tail -1)
big_mb=$((BIG_COUNT * BIG_SIZE * 3 * 3 / 1000000))
[ -z "$only" ] || big_mb=0
need_mb=$(((${maxrec:-0} + CATCHUP * 2) * 4 * 600 / 1000000 + big_mb))
avail_mb=$(df -Pm "$tmp" | awk 'NR == 2 { print $4 }')
if [ "${avail_mb:-0}" -lt "$need_mb" ]; then
	echo "bench-large: WARNING: $tmp has ${avail_mb} MB free; this run may need about ${need_mb} MB" >&2
fi

mkdir -p "$tmp/bin" "$OUT"
if [ -n "${KEYSTORED:-}" ]; then
	echo "bench-large: using $KEYSTORED; building keystore-bench into $tmp/bin"
	cp "$KEYSTORED" "$tmp/bin/keystored"
else
	echo "bench-large: building keystored and keystore-bench into $tmp/bin"
	(cd "$root" && CGO_ENABLED=0 go build -o "$tmp/bin/keystored" ./cmd/keystored)
fi
(cd "$here" && go build -o "$tmp/bin/keystore-bench" .)

# keystore-bench bounds each step itself; MAX_TIME bounds the whole run
# (SIGINT: it stops its nodes and writes what it has). --foreground: Ctrl-C
# at the terminal reaches it too.
timeout --foreground --signal=INT --kill-after=60 "$MAX_TIME" "$tmp/bin/keystore-bench" large \
	-keystored "$tmp/bin/keystored" -dir "$tmp" -fstype "$fstype" -out "$OUT" \
	-records "$RECORDS" -duration "$DURATION" -warmup "$WARMUP" -concurrency "$CONCURRENCY" -settle "$SETTLE" \
	-preload-workers "$PRELOAD_WORKERS" -catchup "$CATCHUP" -catchup-workers "$CATCHUP_WORKERS" \
	-snapshot-entries "$SNAPSHOT_ENTRIES" -keep-entries "$KEEP_ENTRIES" \
	-big-count "$BIG_COUNT" -big-size "$BIG_SIZE" -big-small "$BIG_SMALL" \
	-membership="$membership" -only "$only" -member-rate "$MEMBER_RATE" -member-workers "$MEMBER_WORKERS" -report "$REPORT" \
	-client-port "${CLIENT_PORTS[0]}" -peer-port "${PEER_PORTS[0]}"
