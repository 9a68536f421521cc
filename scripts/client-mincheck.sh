#!/usr/bin/env bash
# client-mincheck.sh: importing keystore's Go client must force neither
# unreleased dependencies nor the newest Go patch release on its callers
# (issue 21). It fails, saying why, unless all of these hold:
#
#   1. go.mod has no `tool` directive (the developer tools live in tools/,
#      their requirements out of every importer's module graph), and its go
#      line is the floor its dependencies set: what `go mod tidy` makes of
#      it when started from go 1.21. A higher minor version (new language
#      features) is allowed as its .0 release, never a patch above either.
#   2. scripts/consumer, a module of its own that imports client,
#      client/grpcidem and client/httpidem (replace: this checkout), states
#      the minimum versions: its go.mod is tidy and its go line is keystore's.
#   3. The consumer builds with -mod=readonly (nothing in go.mod or go.sum to
#      add) under the oldest Go release keystore's go line allows, e.g.
#      GOTOOLCHAIN=go1.26.0, which the go command fetches from the module
#      proxy once (then it is in the module cache).
#   4. The protobuf and gRPC versions the consumer selects, and the protobuf
#      version of protoc-gen-go in tools/protogen, are releases (no
#      pseudo-version, no pre-release), and the consumer's module graph holds
#      none of the developer tools' modules.
#
#   GO   the go command (default go)
set -euo pipefail
cd "$(dirname "$0")/.."

GO=${GO:-go}
consumer=scripts/consumer
start=$SECONDS

fail() {
	echo "client-mincheck: FAIL: $*" >&2
	exit 1
}

# x.y or x.y.z -> x.y.z
full() {
	case $1 in
	*.*.*) echo "$1" ;;
	*) echo "$1.0" ;;
	esac
}
minor() { echo "$1" | cut -d. -f1,2; }
patch() { echo "$1" | cut -d. -f3; }

# 1. keystore's go.mod.
if grep -Eq '^[[:space:]]*tool([[:space:]]|$)' go.mod; then
	fail "go.mod has tool directives: the developer tools belong in tools/go.mod or tools/protogen/go.mod"
fi
goline=$(full "$($GO mod edit -json | sed -n 's/^[[:space:]]*"Go": "\(.*\)",*$/\1/p')")
[ -n "$goline" ] && [ "$goline" != ".0" ] || fail "cannot read go.mod's go line"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp go.mod go.sum "$tmp/"
$GO mod edit -modfile="$tmp/go.mod" -go=1.21
$GO mod tidy -modfile="$tmp/go.mod" || fail "go mod tidy of a copy of go.mod failed"
floor=$(full "$($GO mod edit -json "$tmp/go.mod" | sed -n 's/^[[:space:]]*"Go": "\(.*\)",*$/\1/p')")
echo "client-mincheck: go.mod says go $goline; its dependencies need go $floor"
if [ "$goline" != "$floor" ]; then
	if [ "$(minor "$goline")" = "$(minor "$floor")" ] || [ "$(patch "$goline")" != 0 ]; then
		fail "go.mod's go line $goline is above the floor $floor that its dependencies set: lower it (go mod edit -go=$floor)"
	fi
	echo "client-mincheck: (go $goline: a newer language version than the dependencies need, at its .0 release)"
fi

# 2. The consumer states the minimum versions.
cgoline=$(full "$(cd $consumer && $GO mod edit -json | sed -n 's/^[[:space:]]*"Go": "\(.*\)",*$/\1/p')")
[ "$cgoline" = "$goline" ] || fail "$consumer/go.mod says go $cgoline, keystore's go.mod go $goline: they must match (cd $consumer && go mod edit -go=$goline && go mod tidy)"
if ! diff=$(cd $consumer && $GO mod tidy -diff 2>&1); then
	echo "$diff" >&2
	fail "$consumer/go.mod or go.sum is not tidy, so it does not state the versions a caller gets: cd $consumer && go mod tidy"
fi

# 3. The consumer builds with the oldest Go release allowed, changing nothing.
toolchain=go$goline
echo "client-mincheck: building $consumer with GOTOOLCHAIN=$toolchain -mod=readonly"
got=$(cd $consumer && GOTOOLCHAIN=$toolchain $GO env GOVERSION) || fail "cannot run Go $toolchain (GOTOOLCHAIN=$toolchain: fetched from the module proxy)"
[ "$got" = "$toolchain" ] || fail "GOTOOLCHAIN=$toolchain ran $got"
(cd $consumer && GOTOOLCHAIN=$toolchain $GO build -mod=readonly -o /dev/null .) ||
	fail "$consumer does not build with $toolchain and -mod=readonly"

# 4. Released protobuf and gRPC; no developer tools in the graph.
mods=$(cd $consumer && $GO list -mod=readonly -m all)
for m in google.golang.org/protobuf google.golang.org/grpc; do
	v=$(echo "$mods" | awk -v m="$m" '$1 == m { print $2 }')
	[ -n "$v" ] || fail "$consumer selects no $m"
	echo "client-mincheck: $m $v"
	case $v in
	*-*) fail "$m $v is a pseudo-version or a pre-release: require a released version in go.mod" ;;
	esac
done
gen=$(cd tools/protogen && $GO list -mod=readonly -m -f '{{.Version}}' google.golang.org/protobuf)
echo "client-mincheck: protoc-gen-go (tools/protogen) $gen"
case $gen in
*-*) fail "tools/protogen pins protoc-gen-go at $gen, not a release: the generated code must come from a released generator" ;;
esac
for m in github.com/bufbuild/buf honnef.co/go/tools google.golang.org/grpc/cmd/protoc-gen-go-grpc; do
	if echo "$mods" | awk -v m="$m" '$1 == m { found = 1 } END { exit !found }'; then
		fail "$m, a developer tool's module, is in a caller's module graph: it belongs in tools/"
	fi
done
echo "client-mincheck: ok: a caller of client needs go $goline (toolchain $toolchain), no unreleased protobuf or gRPC ($((SECONDS - start))s)"
