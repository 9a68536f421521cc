#!/usr/bin/env bash
# Starts a three-node keystore cluster on loopback as three processes, with
# data under keystore-data/n1..n3, prints the client endpoints and stops all
# three on Ctrl-C (or when any one of them exits on its own, it keeps the
# others running so you can watch failover).
#
# KEYSTORE_PORT_OFFSET=N moves every port by N (client 7001-7003, peer
# 7101-7103, gossip 7201-7203, metrics 9101-9103 by default); every keystored
# flag can also come from the environment (KEYSTORE_NAMESPACE_MAX_RECORDS=10).
#
# KEYSTORE_SECURE=1 (make cluster-secure) turns on TLS on the client port,
# mutual TLS between the nodes and an authorization policy: certificates of a
# local CA (made once, by internal/certgen's gencerts, no network) and two
# random bearer tokens go to $data/certs, and the script prints how to call.
set -euo pipefail
bin=${1:-bin/keystored}
data=${KEYSTORE_DATA:-keystore-data}
off=${KEYSTORE_PORT_OFFSET:-0}
addr() { echo "127.0.0.1:$(($1 + off))"; } # addr 7101: 127.0.0.1:7101, moved by the offset
cluster="n1=$(addr 7101),n2=$(addr 7102),n3=$(addr 7103)"
mkdir -p "$data"
chmod 700 "$data"
secure=()
if [ "${KEYSTORE_SECURE:-}" = 1 ]; then
	certs="$data/certs"
	if [ ! -f "$certs/ca.crt" ]; then
		go run ./internal/certgen/cmd/gencerts -out "$certs" -nodes n1,n2,n3 -clients admin,app >/dev/null
	fi
	for who in app admin; do
		if [ ! -f "$certs/$who.token" ]; then
			(umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$certs/$who.token")
		fi
	done
	hash() { sha256sum "$1" | cut -d' ' -f1; }
	cat >"$certs/policy.yaml" <<POLICY
# keystore authorization policy (make cluster-secure). Reloaded on change.
principals:
  - name: app                       # the token in app.token
    token_sha256: $(hash "$certs/app.token")
    namespaces: [payments, orders]
  - name: ops                       # the token in admin.token
    token_sha256: $(hash "$certs/admin.token")
    namespaces: ["*"]
    admin: true
  - name: ops-cert                  # the client certificate client-admin.crt
    cert_cn: admin
    namespaces: ["*"]
    admin: true
POLICY
	secure=(--tls-client-ca-file "$certs/ca.crt" --peer-tls-ca-file "$certs/ca.crt" --auth-policy-file "$certs/policy.yaml")
fi
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
	seeds=$(for j in 1 2 3; do [ "$j" = "$i" ] || printf '%s,' "$(addr $((7200 + j)))"; done)
	tls=()
	if [ ${#secure[@]} -gt 0 ]; then
		tls=("${secure[@]}" --tls-cert-file "$certs/n$i.crt" --tls-key-file "$certs/n$i.key"
			--peer-tls-cert-file "$certs/n$i.crt" --peer-tls-key-file "$certs/n$i.key")
	fi
	"$bin" --name "n$i" --data-dir "$data/n$i" \
		--client-addr "$(addr $((7000 + i)))" --peer-addr "$(addr $((7100 + i)))" \
		--gossip-addr "$(addr $((7200 + i)))" --join "${seeds%,}" \
		--metrics-addr "$(addr $((9100 + i)))" \
		--initial-cluster "$cluster" ${tls[@]+"${tls[@]}"} >"$data/n$i.log" 2>&1 &
	pids+=($!)
	echo "n$i: pid $! client $(addr $((7000 + i))) metrics http://$(addr $((9100 + i)))/metrics (log $data/n$i.log)"
done
echo
echo "client endpoints: $(addr 7001),$(addr 7002),$(addr 7003) (gossip: $(addr 7201),$(addr 7202),$(addr 7203))"
if [ ${#secure[@]} -gt 0 ]; then
	echo "TLS and authorization on; certificates, tokens and policy in $certs:"
	echo "  go run ./cmd/keystorectl --cacert $certs/ca.crt --token-file $certs/app.token claim --namespace payments --key order-1"
	echo "  go run ./cmd/keystorectl --cacert $certs/ca.crt --cert $certs/client-admin.crt --cert-key $certs/client-admin.key status"
fi
echo "Ctrl-C stops all three."
wait
