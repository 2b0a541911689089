# stem — make targets. `make` alone lists them.
SHELL := /bin/bash
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/stemhq/stem/cli.Version=$(VERSION)
BIN := bin/stem

# Integration tests read these; the defaults are the local services.
export STEM_TEST_REDIS_URL ?= redis://127.0.0.1:6379/0
export STEM_TEST_POSTGRES_URL ?= postgres://postgres@127.0.0.1:5432/test?sslmode=disable

STATICCHECK ?= $(shell command -v staticcheck 2>/dev/null || echo $(HOME)/go/bin/staticcheck)

.PHONY: help build test test-race test-short lint verify bench demo clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

build: ## build a static, stripped bin/stem
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/stem

test: ## run every test with the race detector (needs Redis; see README)
	$(GO) test -race -count=1 -timeout 20m ./...

test-race: test ## same as test

test-short: ## unit tests only, no race detector (fast feedback)
	$(GO) test -short -count=1 ./...

lint: ## gofmt, go vet, staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "not gofmt-clean:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	@if [ -x "$(STATICCHECK)" ]; then $(STATICCHECK) ./...; else echo "staticcheck missing: go install honnef.co/go/tools/cmd/staticcheck@latest"; exit 1; fi

verify: ## generated files are current (README variable table, man pages, command tree), gofmt, go mod tidy
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "not gofmt-clean (gofmt -w):"; echo "$$out"; exit 1; fi
	@$(GO) mod tidy -diff >/dev/null 2>&1 || { echo "go.mod/go.sum are not tidy: run go mod tidy"; $(GO) mod tidy -diff; exit 1; }
	$(GO) run ./internal/readmegen -check README.md
	@dir=$$(mktemp -d /tmp/stem-verify.XXXXXX); \
	$(GO) run ./internal/gendocs -out $$dir -version verify -date 2026-01-01 && test -s $$dir/man/stem.1 && test -s $$dir/completions/stem.bash; rc=$$?; \
	rm -rf $$dir; [ $$rc -eq 0 ] || { echo "man pages or completions did not generate (go run ./internal/gendocs)"; exit 1; }
	$(GO) test -count=1 -run 'TestCommandList|TestREADME|TestEveryCommandTeaches|TestEveryBoundFlagIsDocumented' ./cli

bench: build ## throughput and latency on Redis, SQLite and Postgres (local services); prints the docs/benchmarks.md report
	@dir=$$(mktemp -d /tmp/stem-bench.XXXXXX); \
	$(GO) run ./internal/bench -redis '$(STEM_TEST_REDIS_URL)' -sqlite-dir $$dir -postgres '$(STEM_TEST_POSTGRES_URL)'; rc=$$?; \
	rm -rf $$dir; exit $$rc

demo: build ## the main job on the embedded SQLite default: two workers under multi, ping, 1,000 tasks, revoke, stop
	./scripts/demo.sh

clean: ## remove build output
	rm -rf bin dist

# Packages, man pages and completions, and the end-to-end test on a real
# systemd (docs/install.md, e2e/run.sh).
NFPM ?= $(shell command -v nfpm 2>/dev/null || echo $(HOME)/go/bin/nfpm)

.PHONY: package man completions e2e

package: ## build dist/stem_*.deb and dist/stem-*.rpm (nfpm v2.45.2), then lintian and rpmlint them
	VERSION=$(VERSION) NFPM=$(NFPM) GO=$(GO) packaging/build.sh
	packaging/lint.sh

man: ## man pages and shell completions from the command tree, into dist/docs/{man,completions}
	$(GO) run ./internal/gendocs -out dist/docs -version $(VERSION)

completions: man ## same as man: both are written together

e2e: package ## boot systemd 252 in a Debian 12 root under /var/tmp, dpkg -i the .deb there, check the units
	e2e/run.sh
