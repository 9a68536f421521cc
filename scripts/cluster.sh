#!/usr/bin/env bash
# Starts a three-node keystore cluster on loopback as three processes, with
# data under keystore-data/n1..n3, prints the client endpoints and stops all
# three on Ctrl-C (or when any one of them exits on its own, it keeps the
# others running so you can watch failover).
set -euo pipefail
bin=${1:-bin/keystored}
data=${KEYSTORE_DATA:-keystore-data}
cluster="n1=127.0.0.1:7101,n2=127.0.0.1:7102,n3=127.0.0.1:7103"
mkdir -p "$data"
pids=()
stop() {
	echo
	echo "stopping the cluster..."
	for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
	wait
	exit 0
}
trap stop INT TERM
for i in 1 2 3; do
	# Gossip on 127.0.0.1:7201-7203, each seeded with the other two: a
	# fourth node finds the cluster through any of them (README, Membership).
	seeds=$(for j in 1 2 3; do [ "$j" = "$i" ] || printf '127.0.0.1:720%s,' "$j"; done)
	"$bin" --name "n$i" --data-dir "$data/n$i" \
		--client-addr "127.0.0.1:700$i" --peer-addr "127.0.0.1:710$i" \
		--gossip-addr "127.0.0.1:720$i" --join "${seeds%,}" \
		--initial-cluster "$cluster" >"$data/n$i.log" 2>&1 &
	pids+=($!)
	echo "n$i: pid $! client 127.0.0.1:700$i (log $data/n$i.log)"
done
echo
echo "client endpoints: 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003 (gossip: 127.0.0.1:7201-7203)"
echo "Ctrl-C stops all three."
wait
