#!/usr/bin/env bash
# The systems keystore is compared with, on loopback, durable settings:
#   etcd        three members, clients 127.0.0.1:12379,22379,32379 (peers :12380,22380,32380)
#   Redis       one server on 127.0.0.1:16379, appendonly yes, appendfsync always
#   PostgreSQL  15, one server on 127.0.0.1:15432, synchronous_commit=on, fsync=on
#
#   peers.sh install        apt-get install the servers that are missing
#   peers.sh start DIR      start all three with data under DIR, wait until each answers
#   peers.sh stop DIR       stop what start started (pid files under DIR)
set -euo pipefail

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
ETCD_CLIENT_PORTS=(12379 22379 32379)
ETCD_PEER_PORTS=(12380 22380 32380)
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

start() {
	local dir=$1
	mkdir -p "$dir"
	dir=$(cd "$dir" && pwd)
	# PostgreSQL runs as the postgres user: it must reach its data dir.
	chmod 755 "$dir"

	# etcd: three members, default fsync behaviour.
	local cluster="" i
	for i in 0 1 2; do
		cluster+="${cluster:+,}e$((i + 1))=http://127.0.0.1:${ETCD_PEER_PORTS[$i]}"
	done
	for i in 0 1 2; do
		local name="e$((i + 1))"
		mkdir -p "$dir/etcd"
		etcd --name "$name" --data-dir "$dir/etcd/$name" \
			--listen-client-urls "http://127.0.0.1:${ETCD_CLIENT_PORTS[$i]}" \
			--advertise-client-urls "http://127.0.0.1:${ETCD_CLIENT_PORTS[$i]}" \
			--listen-peer-urls "http://127.0.0.1:${ETCD_PEER_PORTS[$i]}" \
			--initial-advertise-peer-urls "http://127.0.0.1:${ETCD_PEER_PORTS[$i]}" \
			--initial-cluster "$cluster" --initial-cluster-state new \
			--initial-cluster-token keystore-bench \
			--logger zap --log-outputs stderr \
			>"$dir/etcd/$name.log" 2>&1 &
		echo $! >"$dir/etcd/$name.pid"
	done

	# Redis: every write fsynced to the AOF before the reply.
	mkdir -p "$dir/redis"
	redis-server --port "$REDIS_PORT" --bind 127.0.0.1 \
		--appendonly yes --appendfsync always --save "" \
		--dir "$dir/redis" --pidfile "$dir/redis/redis.pid" \
		--logfile "$dir/redis/redis.log" --daemonize yes

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

	local eps
	eps=$(printf '127.0.0.1:%s,' "${ETCD_CLIENT_PORTS[@]}")
	wait_for etcd env ETCDCTL_API=3 etcdctl --endpoints "${eps%,}" --command-timeout 2s endpoint health
	wait_for redis redis-cli -p "$REDIS_PORT" ping
	wait_for postgres "$PG_BIN/pg_isready" -h 127.0.0.1 -p "$PG_PORT" -U postgres
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
	for f in "$dir"/etcd/*.pid; do
		[ -e "$f" ] || continue
		stop_pid "$f" "etcd $(basename "$f" .pid)"
	done
}

cmd=${1:-}
case "$cmd" in
install) install ;;
start | stop)
	[ $# -eq 2 ] || { echo "usage: $0 $cmd DIR" >&2; exit 2; }
	"$cmd" "$2"
	;;
*)
	echo "usage: $0 install | start DIR | stop DIR" >&2
	exit 2
	;;
esac
