# keystore — see README.md. Everything here needs only Go: the tools that
# `make verify` runs are pinned as `tool` directives in modules of their own,
# tools/go.mod (buf, staticcheck) and tools/protogen/go.mod (protoc-gen-go,
# protoc-gen-go-grpc, run by proto/buf.gen.yaml), so that their requirements
# stay out of the module graph of every importer of keystore's packages.

SHELL     := /bin/bash
.SHELLFLAGS := -o pipefail -c

GO        ?= go
BIN       := bin
PKGS      := ./...
TESTFLAGS ?=
TOOL      := $(GO) tool -modfile=$(CURDIR)/tools/go.mod

.PHONY: all build test client-mincheck unit verify cluster-secure certs fuzz-short fmt vet staticcheck buf-lint buf-breaking proto proto-check cluster cluster-test cluster-test-long cluster-test-knobs cluster-test-bugs bench-churn bench bench-mtls bench-large bench-peers image compose-up compose-down docker-test clean

all: build

# The commit keystored and keystorectl report (version package), when git
# knows one; "-dirty" marks a modified working tree.
COMMIT  := $(shell git rev-parse HEAD 2>/dev/null)$(shell git diff --quiet HEAD 2>/dev/null || echo -dirty)
LDFLAGS := -X github.com/keystore-dev/keystore/version.commit=$(COMMIT)

build:
	CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/keystored ./cmd/keystored
	CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/keystorectl ./cmd/keystorectl
	mkdir -p $(BIN)/data

## test: every check and every test (what CI runs), the short fault runs included.
test: verify client-mincheck unit fuzz-short cluster-test

## client-mincheck: importing client forces no unreleased protobuf or gRPC
## and no newer Go than needed on a caller: go.mod's go line is the floor its
## dependencies set, and scripts/consumer (a module importing client,
## grpcidem and httpidem) builds against the minimum versions its go.mod
## states with -mod=readonly, under that oldest Go release (GOTOOLCHAIN,
## fetched from the module proxy once). See scripts/client-mincheck.sh.
client-mincheck:
	GO=$(GO) ./scripts/client-mincheck.sh

## fuzz-short: every native fuzz target for FUZZTIME (3s) each: request
## validation, the state machine's command decoding and apply, the storage key
## decoders, WAL replay, the peer frame reader, the entry envelope. Longer:
## FUZZTIME=5m make fuzz-short.
FUZZTIME ?= 3s
fuzz-short:
	FUZZTIME=$(FUZZTIME) GO=$(GO) ./scripts/fuzz-short.sh

## unit: go test -race of every package; the fault runs have their own targets.
unit:
	$(GO) test -race -count=1 -skip 'TestFaults|TestRollingUpgrade' $(TESTFLAGS) $(PKGS)
	cd bench && $(GO) test -race -count=1 $(TESTFLAGS) ./...

## cluster-test: 5 seeded fault runs of 20s (real processes, fault proxies), and
## one with client TLS, peer mutual TLS and a policy (-faults.secure),
## checked for violations and convergence; a failing run saves its history,
## visualization and logs under cluster-test/results/seed-N. Then the rolling
## upgrade from the release before cluster versions (TestRollingUpgrade).
RUNS ?= 5
SEED ?= 1
FAULT_DURATION ?= 20s
cluster-test:
	$(GO) test -count=1 -timeout 30m -run 'TestFaults' ./cluster-test -v \
		-faults.runs $(RUNS) -faults.seed $(SEED) -faults.duration $(FAULT_DURATION) $(FAULT_FLAGS)
	$(GO) test -count=1 -timeout 30m -run 'TestFaults' ./cluster-test -v \
		-faults.runs 1 -faults.seed $(SEED) -faults.duration $(FAULT_DURATION) -faults.secure $(FAULT_FLAGS)
	$(GO) test -count=1 -timeout 15m -run 'TestRollingUpgrade' ./cluster-test -v

## cluster-test-long: the nightly version, e.g. make cluster-test-long RUNS=100
## (LONG_DURATION per run, 60s unless given). FAULT_FLAGS=-faults.secure runs
## the nodes with client TLS, peer mutual TLS and a policy.
LONG_DURATION ?= 60s
cluster-test-long:
	$(GO) test -count=1 -timeout 0 -run 'TestFaults' ./cluster-test -v \
		-faults.runs $(RUNS) -faults.seed $(SEED) -faults.duration $(LONG_DURATION) $(FAULT_FLAGS)

## cluster-test-knobs: the fault suite once with each tuning knob turned off
## (KNOB_RUNS seeded runs of FAULT_DURATION each): the knobs are performance
## choices, never correctness rules.
KNOB_RUNS ?= 2
KNOBS ?= --raft-commit-hold=-1ms --raft-sender-yield=false --raft-caller-readies=-1 --raft-pack-rounds=-1 --raft-max-pack-proposals=1 --stream-gather-yields=-1
cluster-test-knobs:
	@set -e; for k in $(KNOBS); do echo "=== fault suite with $$k"; \
		$(GO) test -count=1 -timeout 30m -run 'TestFaults' ./cluster-test -v \
			-faults.runs $(KNOB_RUNS) -faults.seed $(SEED) -faults.duration $(FAULT_DURATION) -faults.args "$$k"; \
	done

## verify: formatting, vet, staticcheck, buf lint, buf breaking, generated
## code fresh.
verify: fmt vet staticcheck buf-lint buf-breaking proto-check

fmt:
	@out=$$(gofmt -l $$(git ls-files --cached --others --exclude-standard '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

# bench/ is a module of its own (its peers' clients stay out of go.mod):
# vet, staticcheck and test it too.
vet:
	$(GO) vet $(PKGS)
	cd bench && $(GO) vet ./...

staticcheck:
	$(TOOL) staticcheck $(PKGS)
	cd bench && $(TOOL) staticcheck ./...

buf-lint:
	cd proto && $(TOOL) buf lint

## buf-breaking: proto/ stays compatible with the main branch (the FILE
## rules of proto/buf.yaml). The baseline is BUF_AGAINST when given (any git
## revision: make buf-breaking BUF_AGAINST=v1.2.0), else the first of these
## that exists: the branch main (a clone of main has it), origin/main (a
## detached checkout may have only that), HEAD (catches uncommitted changes
## at least). The target prints the one it used. A checkout with no commit to
## compare with says SKIPPED; one whose baseline cannot be read fails.
BUF_AGAINST ?=
buf-breaking:
	@if ! git rev-parse --git-dir >/dev/null 2>&1; then \
		if [ -e .git ]; then echo "buf-breaking: .git exists but git cannot read it"; exit 1; fi; \
		echo "buf-breaking: SKIPPED: not a git checkout, no baseline to compare proto/ with"; exit 0; \
	fi; \
	against="$(BUF_AGAINST)"; \
	if [ -z "$$against" ]; then \
		for ref in refs/heads/main refs/remotes/origin/main HEAD; do \
			if git rev-parse -q --verify "$$ref^{commit}" >/dev/null; then against=$$ref; break; fi; \
		done; \
		if [ -z "$$against" ]; then echo "buf-breaking: SKIPPED: no main, origin/main or HEAD commit to compare proto/ with"; exit 0; fi; \
	fi; \
	sha=$$(git rev-parse -q --verify "$$against^{commit}") || { echo "buf-breaking: baseline $$against is not a commit"; exit 1; }; \
	gitdir=$$(git rev-parse --path-format=absolute --git-common-dir) || exit 1; \
	echo "buf breaking: proto/ against $$against ($$sha)"; \
	cd proto && $(TOOL) buf breaking --against "$$gitdir#ref=$$sha,subdir=proto"

## proto: regenerate the committed Go code from proto/.
proto:
	cd proto && $(TOOL) buf generate

## proto-check: fail if the committed generated code is stale.
proto-check:
	@tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	cd proto && $(TOOL) buf generate -o $$tmp && \
	for f in $$(cd $$tmp && find . -name '*.go'); do \
		cmp -s $$tmp/$$f $$f || { echo "generated code is stale: proto/$$f (run make proto)"; exit 1; }; \
	done

## cluster: three local nodes as three processes; Ctrl-C stops them all.
cluster: build
	./scripts/cluster.sh $(BIN)/keystored

## cluster-secure: the same three nodes with TLS on the client port, mutual TLS
## between them and an authorization policy (certificates of a local CA and
## random tokens made once in keystore-data/certs; the script prints how to call).
cluster-secure: build
	KEYSTORE_SECURE=1 ./scripts/cluster.sh $(BIN)/keystored

## certs: a local CA and certificates for nodes n1-n3 and clients admin and app
## in certs/ (no network; see internal/certgen). FORCE=1 replaces them.
certs:
	$(GO) run ./internal/certgen/cmd/gencerts -out certs -nodes n1,n2,n3 -clients admin,app $(if $(FORCE),-force)

## cluster-test-bugs: checker efficacy. Each deliberate bug of internal/bugs
## (compiled in only by its build tag) must make the suite fail within
## BUG_RUNS runs. Missing fsync shows only on power loss, so it is shown by
## the in-process crash test on Pebble's crash-consistent filesystem.
BUG_RUNS ?= 10
cluster-test-bugs:
	@if $(GO) test -tags bug_nofsync -count=1 -run TestClusterCompletedSurviveCrashOfAllNodes ./server >/dev/null 2>&1; \
		then echo "bug_nofsync: NOT caught"; exit 1; \
		else echo "bug_nofsync: caught (acknowledged completions lost after a crash of all nodes)"; fi
	@for b in bug_localclock bug_notoken bug_leasereads; do \
		$(GO) test -count=1 -timeout 30m -run 'TestFaults' ./cluster-test -v -faults.tags $$b \
			-faults.expect-violations -faults.runs $(BUG_RUNS) -faults.duration 20s | grep -E '^build tags|^(ok|FAIL|---)' || exit 1; \
	done

## image: the FROM scratch image of the static binary (nothing is pulled).
image: build
	docker build -t keystore:dev .

## compose-up / compose-down: the three-node cluster in containers, clients on
## 127.0.0.1:7001-7003 (not together with make cluster: same ports).
compose-up: build
	docker-compose up -d --build
compose-down:
	docker-compose down -v

## docker-test: the container harness alone (kill, network disconnect, pause
## of the leader's container); make unit runs it too, and it skips when no
## Docker engine answers.
docker-test:
	$(GO) test -count=1 -run 'TestDockerCluster' -v ./cluster-test

## bench-churn: TTL expiry keeps disk flat under a stream of short-lived keys.
CHURN ?= 5m
bench-churn:
	$(GO) test -run '^$$' -bench Churn -benchtime 1x -timeout 30m ./server -churn.duration $(CHURN)

## bench: keystore (three nodes and one) against etcd, Redis and PostgreSQL.
## Knobs: REPS, DURATION, CONCURRENCY, SYSTEMS, OUT (see bench/README.md).
bench:
	./bench/run.sh

## bench-mtls: keystore-3 and etcd-3 in plaintext and over mutual TLS (keystore
## also with an authorization policy and a bearer token), at 1, 64 and 256
## clients; report in bench/results/mtls/. Knobs as for bench.
bench-mtls:
	MTLS=1 ./bench/run.sh

## bench-large: keystore holding 1M and 5M live records, and 600 responses of
## 1 MB: lifecycles/s against the empty cluster, a follower's restart to
## SERVING, its catch-up by snapshot (time, peak RSS, checksums), a node's
## join to voter and the replacement of a dead one; about 30 minutes on 2
## cores. Knobs: RECORDS, DURATION, CATCHUP, SNAPSHOT_ENTRIES, KEEP_ENTRIES,
## BIG_COUNT, MEMBERSHIP (0: skip), MEMBERSHIP_ONLY (1: preload, then only
## membership), MEMBER_RATE, REPORT, LOGS, OUT (see bench/README.md).
bench-large:
	./bench/large.sh
bench-peers:
	./bench/peers.sh install

clean:
	rm -rf $(BIN) keystore-data
