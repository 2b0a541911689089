#!/usr/bin/env bash
# The main job, end to end, on the embedded default (a SQLite file; no
# server to install): two workers started with `stem worker multi`, ping,
# 1,000 tasks, stats, a revoke with terminate, a failure, a warm stop.
# Everything lives in a temp dir; set STEM_BROKER_URL to run it on Redis
# or Postgres instead.
set -euo pipefail
cd "$(dirname "$0")/.."
STEM=${STEM:-$PWD/bin/stem}
work=$(mktemp -d /tmp/stem-demo.XXXXXX)
export XDG_STATE_HOME="$work/state"      # where the default SQLite file goes
export STEM_WORKER_NAMESPACE="demo$$"
nodes=(alpha beta)
multi=(--pidfile "$work/%n.pid" --logfile "$work/%n.log")
cleanup() {
  "$STEM" worker multi stop "${nodes[@]}" "${multi[@]}" --timeout 10s >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
wait_for() { # wait_for SECONDS COMMAND...: poll until COMMAND succeeds
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then echo "timed out: $*" >&2; return 1; fi
    sleep 0.05
  done
}

step "start two workers (alpha, beta) with stem worker multi"
"$STEM" worker multi start "${nodes[@]}" "${multi[@]}" --command=--concurrency=4
wait_for 20 grep -q 'worker ready' "$work/alpha.log"
wait_for 20 grep -q 'worker ready' "$work/beta.log"
"$STEM" worker multi status "${nodes[@]}" "${multi[@]}"
grep -h 'stem worker starting' "$work/alpha.log" | sed -E 's/.*(url=[^ ]*).*/  broker: \1/'

step "who is alive (control plane: returns when both answered)"
wait_for 20 "$STEM" worker ping --timeout 2s
"$STEM" worker ping

step "enqueue 1,000 tasks and wait for all of them"
time "$STEM" enqueue stem.echo --arg greeting=hello --count 1000 --wait --timeout 120s

step "one task, its result"
id=$("$STEM" enqueue stem.echo --args '{"report": "2026-10", "pages": 12}')
wait_for 20 sh -c "'$STEM' task status $id | grep -q 'state: *succeeded'"
"$STEM" task status "$id"

step "worker stats"
"$STEM" worker stats

step "revoke a running task with --terminate"
long=$("$STEM" enqueue stem.sleep --arg duration=60s)
wait_for 20 sh -c "'$STEM' task status $long | grep -q 'state: *started'"
"$STEM" worker inspect
"$STEM" worker revoke --task "$long" --terminate --reason "demo: no longer needed"
wait_for 20 sh -c "'$STEM' task status $long | grep -q 'state: *revoked'"
"$STEM" task status "$long"

step "a task that fails (exit 1, error shown)"
"$STEM" enqueue stem.fail --args '{"message": "disk full", "permanent": true}' --wait --timeout 20s || echo "  (exit $?)"

step "warm stop (SIGTERM): running tasks finish, then the workers exit"
"$STEM" worker multi stop "${nodes[@]}" "${multi[@]}"
grep -h 'worker stopped' "$work"/alpha.log "$work"/beta.log | sed 's/^/  /'
