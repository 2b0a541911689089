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

.PHONY: help build test test-race test-short lint bench demo clean

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
