#!/usr/bin/env bash
# The systems keystore is compared with, on loopback, durable settings:
#   etcd        three members, clients 127.0.0.1:12379,22379,32379 (peers :12380,22380,32380)
#   etcd-tls    the same over TLS: clients https://127.0.0.1:12479,22479,32479 with
#               client certificates required (--client-cert-auth), peers
#               https://127.0.0.1:12480,22480,32480 with mutual TLS; certificates
#               from ETCD_CERTS (a directory holding ca.crt and e1..e3.crt/.key,
#               as gencerts -nodes e1,e2,e3 writes them)
#   Redis       one server on 127.0.0.1:16379, appendonly yes, appendfsync always
#   PostgreSQL  15, one server on 127.0.0.1:15432, synchronous_commit=on, fsync=on
#
#   peers.sh install                 apt-get install the servers that are missing
#   peers.sh start DIR [SYSTEM...]   start the SYSTEMs (etcd, etcd-tls, redis, postgres;
#                                    default etcd redis postgres) with data under DIR,
#                                    wait until each answers; pid files DIR/etcd/e1.pid ..,
#                                    DIR/etcd-tls/e1.pid ..
#   peers.sh stop DIR                stop what start started (pid files under DIR)
set -euo pipefail

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
ETCD_CLIENT_PORTS=(12379 22379 32379)
ETCD_PEER_PORTS=(12380 22380 32380)
ETCD_TLS_CLIENT_PORTS=(12479 22479 32479)
ETCD_TLS_PEER_PORTS=(12480 22480 32480)
REDIS_PORT=16379
PG_PORT=15432
WAIT_SECONDS=60

as_root() {
	if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# as_postgres runs a command as the postgres user when we are root
# (PostgreSQL refuses to run as root), else as ourselves.
as_postgres() {
	if [ "$(id -u)" -eq 0 ]; then
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}

install() {
	local missing=()
	command -v etcd >/dev/null || missing+=(etcd-server)
	command -v etcdctl >/dev/null || missing+=(etcd-client)
	command -v redis-server >/dev/null || missing+=(redis-server)
	[ -x "$PG_BIN/postgres" ] || missing+=(postgresql)
	if [ ${#missing[@]} -eq 0 ]; then
		echo "peers: etcd, redis-server and PostgreSQL 15 are installed"
		return
	fi
	echo "peers: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	if ! as_root apt-get install -y "${missing[@]}"; then
		as_root apt-get update
		as_root apt-get install -y "${missing[@]}"
	fi
}

# wait_for NAME CMD... retries CMD until it succeeds, at most WAIT_SECONDS.
wait_for() {
	local name=$1
	shift
	local i
	for ((i = 0; i < WAIT_SECONDS * 4; i++)); do
		if "$@" >/dev/null 2>&1; then
			echo "peers: $name is up"
			return 0
		fi
		sleep 0.25
	done
	echo "peers: $name did not answer within ${WAIT_SECONDS}s" >&2
	return 1
}

# start_etcd DIR SUBDIR CERTS: three members with data and pid files under
# DIR/SUBDIR; plaintext when CERTS is empty, else client and peer TLS with
# client certificates required on both, from CERTS.
start_etcd() {
	local dir=$1 sub=$2 certs=$3
	local scheme=http cports=("${ETCD_CLIENT_PORTS[@]}") pports=("${ETCD_PEER_PORTS[@]}")
	if [ -n "$certs" ]; then
		scheme=https cports=("${ETCD_TLS_CLIENT_PORTS[@]}") pports=("${ETCD_TLS_PEER_PORTS[@]}")
	fi
	local cluster="" i
	for i in 0 1 2; do
		cluster+="${cluster:+,}e$((i + 1))=$scheme://127.0.0.1:${pports[$i]}"
	done
	mkdir -p "$dir/$sub"
	for i in 0 1 2; do
		local name="e$((i + 1))" tls=()
		if [ -n "$certs" ]; then
			tls=(--cert-file "$certs/$name.crt" --key-file "$certs/$name.key"
				--client-cert-auth --trusted-ca-file "$certs/ca.crt"
				--peer-cert-file "$certs/$name.crt" --peer-key-file "$certs/$name.key"
				--peer-client-cert-auth --peer-trusted-ca-file "$certs/ca.crt")
		fi
		etcd --name "$name" --data-dir "$dir/$sub/$name" \
			--listen-client-urls "$scheme://127.0.0.1:${cports[$i]}" \
			--advertise-client-urls "$scheme://127.0.0.1:${cports[$i]}" \
			--listen-peer-urls "$scheme://127.0.0.1:${pports[$i]}" \
			--initial-advertise-peer-urls "$scheme://127.0.0.1:${pports[$i]}" \
			--initial-cluster "$cluster" --initial-cluster-state new \
			--initial-cluster-token "keystore-bench-$sub" \
			"${tls[@]}" \
			--logger zap --log-outputs stderr \
			>"$dir/$sub/$name.log" 2>&1 &
		echo $! >"$dir/$sub/$name.pid"
	done
}

# etcd_health CERTS PORT...: etcdctl endpoint health, over TLS with the
# first member's certificate (it has client usage) when CERTS is given.
etcd_health() {
	local certs=$1
	shift
	local eps="" p
	if [ -z "$certs" ]; then
		for p in "$@"; do eps+="${eps:+,}127.0.0.1:$p"; done
		ETCDCTL_API=3 etcdctl --endpoints "$eps" --command-timeout 2s endpoint health
		return
	fi
	for p in "$@"; do eps+="${eps:+,}https://127.0.0.1:$p"; done
	ETCDCTL_API=3 etcdctl --endpoints "$eps" --command-timeout 2s \
		--cacert "$certs/ca.crt" --cert "$certs/e1.crt" --key "$certs/e1.key" endpoint health
}

start() {
	local dir=$1
	shift
	local systems=("$@") s
	[ ${#systems[@]} -gt 0 ] || systems=(etcd redis postgres)
	for s in "${systems[@]}"; do
		case "$s" in
		etcd | redis | postgres) ;;
		etcd-tls)
			local f
			for f in ca.crt e1.crt e1.key e2.crt e2.key e3.crt e3.key; do
				[ -r "${ETCD_CERTS:-}/$f" ] || { echo "peers: etcd-tls needs ETCD_CERTS with $f" >&2; return 2; }
			done
			;;
		*) echo "peers: unknown system $s (want etcd, etcd-tls, redis, postgres)" >&2; return 2 ;;
		esac
	done
	mkdir -p "$dir"
	dir=$(cd "$dir" && pwd)
	# PostgreSQL runs as the postgres user: it must reach its data dir.
	chmod 755 "$dir"

	for s in "${systems[@]}"; do
		case "$s" in
		# etcd: three members, default fsync behaviour.
		etcd) start_etcd "$dir" etcd "" ;;
		etcd-tls) start_etcd "$dir" etcd-tls "$(cd "$ETCD_CERTS" && pwd)" ;;
		redis)
			# Redis: every write fsynced to the AOF before the reply.
			mkdir -p "$dir/redis"
			redis-server --port "$REDIS_PORT" --bind 127.0.0.1 \
				--appendonly yes --appendfsync always --save "" \
				--dir "$dir/redis" --pidfile "$dir/redis/redis.pid" \
				--logfile "$dir/redis/redis.log" --daemonize yes
			;;
		postgres)
			# PostgreSQL 15: initdb, then the server with durable commits.
			mkdir -p "$dir/pg" "$dir/pgsock"
			if [ "$(id -u)" -eq 0 ]; then chown postgres: "$dir/pg" "$dir/pgsock"; fi
			if ! as_postgres "$PG_BIN/initdb" -D "$dir/pg/data" -U postgres --auth=trust -E UTF8 >"$dir/pg/initdb.log" 2>&1; then
				echo "peers: initdb failed (every parent of $dir must be searchable by the postgres user):" >&2
				cat "$dir/pg/initdb.log" >&2
				return 1
			fi
			if ! as_postgres "$PG_BIN/pg_ctl" -D "$dir/pg/data" -l "$dir/pg/postgres.log" -w -t "$WAIT_SECONDS" \
				-o "-p $PG_PORT -k $dir/pgsock -c listen_addresses=127.0.0.1 -c max_connections=300 -c synchronous_commit=on -c fsync=on" \
				start >/dev/null; then
				echo "peers: PostgreSQL did not start:" >&2
				tail -n 20 "$dir/pg/postgres.log" >&2
				return 1
			fi
			;;
		esac
	done

	for s in "${systems[@]}"; do
		case "$s" in
		etcd) wait_for etcd etcd_health "" "${ETCD_CLIENT_PORTS[@]}" ;;
		etcd-tls) wait_for etcd-tls etcd_health "$ETCD_CERTS" "${ETCD_TLS_CLIENT_PORTS[@]}" ;;
		redis) wait_for redis redis-cli -p "$REDIS_PORT" ping ;;
		postgres) wait_for postgres "$PG_BIN/pg_isready" -h 127.0.0.1 -p "$PG_PORT" -U postgres ;;
		esac
	done
}

# stop_pid PIDFILE NAME: TERM, wait up to 15s, then KILL.
stop_pid() {
	local pidfile=$1 name=$2 pid i
	[ -f "$pidfile" ] || return 0
	pid=$(head -n1 "$pidfile")
	rm -f "$pidfile"
	[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < 60; i++)); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.25
	done
	echo "peers: $name ($pid) ignored TERM, killing" >&2
	kill -KILL "$pid" 2>/dev/null || true
}

stop() {
	local dir=$1
	[ -d "$dir" ] || return 0
	if [ -f "$dir/pg/data/postmaster.pid" ]; then
		as_postgres "$PG_BIN/pg_ctl" -D "$dir/pg/data" -m fast -w -t 30 stop >/dev/null 2>&1 || true
		# pg_ctl failed? Stop the postmaster by its pid file.
		stop_pid "$dir/pg/data/postmaster.pid" postgres
	fi
	stop_pid "$dir/redis/redis.pid" redis
	local f
	for f in "$dir"/etcd/*.pid "$dir"/etcd-tls/*.pid; do
		[ -e "$f" ] || continue
		stop_pid "$f" "etcd $(basename "$f" .pid)"
	done
}

cmd=${1:-}
case "$cmd" in
install) install ;;
start)
	[ $# -ge 2 ] || { echo "usage: $0 start DIR [etcd|etcd-tls|redis|postgres]..." >&2; exit 2; }
	shift
	start "$@"
	;;
stop)
	[ $# -eq 2 ] || { echo "usage: $0 stop DIR" >&2; exit 2; }
	stop "$2"
	;;
*)
	echo "usage: $0 install | start DIR [SYSTEM...] | stop DIR" >&2
	exit 2
	;;
esac
