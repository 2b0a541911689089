#!/usr/bin/env bash
# The main job, end to end: two workers, ping, 1,000 tasks, stats, a
# revoke with terminate, a failure, a warm shutdown. Uses bin/stem and the broker in STEM_BROKER_URL (default:
# the local Redis). Everything runs in a fresh namespace and a temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."
STEM=${STEM:-./bin/stem}
export STEM_WORKER_NAMESPACE="demo$$"
work=$(mktemp -d /tmp/stem-demo.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "start two workers (alpha, beta), 4 slots each"
for node in alpha beta; do
  "$STEM" worker run --node "$node" --concurrency 4 --pidfile "$work/$node.pid" 2>"$work/$node.log" &
  pids+=($!)
done
for node in alpha beta; do
  for _ in $(seq 100); do grep -q 'worker ready' "$work/$node.log" && break; sleep 0.05; done
  grep 'worker ready' "$work/$node.log" | sed "s/^/  $node: /"
done

step "who is alive (control plane: returns when both answered)"
"$STEM" worker ping

step "enqueue 1,000 tasks and wait for all of them"
time "$STEM" enqueue stem.echo --arg greeting=hello --count 1000 --wait --timeout 60s

step "one task, its result"
id=$("$STEM" enqueue stem.echo --args '{"report": "2026-10", "pages": 12}')
"$STEM" enqueue stem.sleep --arg duration=200ms --wait --timeout 10s >/dev/null
"$STEM" task status "$id"

step "worker stats"
"$STEM" worker stats

step "revoke a running task with --terminate"
long=$("$STEM" enqueue stem.sleep --arg duration=60s)
for _ in $(seq 100); do "$STEM" task status "$long" | grep -q 'state: *started' && break; sleep 0.05; done
"$STEM" worker inspect
"$STEM" worker revoke --task "$long" --terminate --reason "demo: no longer needed"
for _ in $(seq 100); do "$STEM" task status "$long" | grep -q 'state: *revoked' && break; sleep 0.05; done
"$STEM" task status "$long"

step "a task that fails (exit 1, error shown)"
"$STEM" enqueue stem.fail --args '{"message": "disk full", "permanent": true}' --wait --timeout 10s || echo "  (exit $?)"

step "warm shutdown (SIGTERM): running tasks finish, then the workers exit"
for p in "${pids[@]}"; do kill -TERM "$p"; done
wait "${pids[@]}" || true
pids=()
grep -h 'worker stopped' "$work"/alpha.log "$work"/beta.log | sed 's/^/  /'
