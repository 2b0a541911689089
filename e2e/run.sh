#!/usr/bin/env bash
# End-to-end test of the stem .deb on a real systemd 252 (make e2e).
#
# It boots Debian 12's systemd with systemd-nspawn in a root directory under
# /var/tmp (built with mmdebstrap once, then extracted from a cached
# tarball keyed on its inputs), installs dist/stem_*.deb with dpkg -i inside
# the running guest, and checks what docs/install.md promises: readiness,
# the healthcheck, ping and tasks, revoke --terminate, reload, a draining
# stop, the watchdog, the journal's priorities, and a clean purge. With
# each broker in $E2E_BROKERS (default: redis, and sqlite when this stem
# accepts sqlite:// URLs) the sequence runs once, purging in between.
#
# SAFETY: it never boots systemd on the host's root: see assert_guest_root
# in e2e/lib.sh. Processes it starts are stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=e2e/lib.sh
. e2e/lib.sh

[ "$(id -u)" -eq 0 ] || die "run as root (systemd-nspawn needs it)"
case "$(realpath -m -- "$E2E_BASE")" in
/var/tmp/?*) ;;
*) die "E2E_BASE=$E2E_BASE: guest roots live under /var/tmp only" ;;
esac
T0=$(now)
deb=$(ls dist/stem_*.deb 2>/dev/null | head -n1)
[ -n "$deb" ] || die "no dist/stem_*.deb: run make package first"
host_tools

if [ -z "${E2E_BROKERS:-}" ]; then
	E2E_BROKERS=redis
	if STEM_BROKER_URL=sqlite:///var/tmp/stem-e2e-probe.db dist/build/stem worker status >/dev/null 2>&1 ||
		[ $? -ne 78 ]; then
		E2E_BROKERS="redis sqlite"
	else
		echo "e2e: this stem does not accept sqlite:// broker URLs yet (exit 78): running with redis only"
	fi
	rm -f /var/tmp/stem-e2e-probe.db*
fi

run_dir="$E2E_BASE/run-$$"
root="$run_dir/root"
cleanup() {
	local rc=$?
	shutdown_guest
	if [ -n "${KEEP:-}" ]; then
		echo "e2e: kept $run_dir (KEEP set)"
	else
		rm -rf "$run_dir"
	fi
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

t=$(now)
how=$(make_root "$root")
echo "e2e: guest root $how in $(since "$t")s ($root)"
cp "$deb" "$root/root/stem.deb"

t=$(now)
boot "$root" "$run_dir/console.log"
echo "e2e: guest booted in $(since "$t")s: $(g systemctl --version | head -n1), guest PID 1 is host PID $GUEST_PID"
g systemctl is-active --quiet redis-server || die "redis-server is not running in the guest"

# --- the checks -------------------------------------------------------------

install_pkg() {
	g dpkg -i /root/stem.deb
	g getent passwd stem
	[ "$(g stat -c %U:%G:%a /etc/stem/stem.env)" = root:stem:640 ]
	[ "$(g stat -c %U:%G /var/lib/stem)" = stem:stem ]
	[ -x "$root/usr/bin/stem" ]
	[ -f "$root/usr/share/man/man1/stem-worker-run.1.gz" ]
	[ -f "$root/usr/share/bash-completion/completions/stem" ]
}

verify_units() {
	local out
	out=$(g systemd-analyze verify --man=no stem-worker@alpha.service stem-workers.target 2>&1)
	if [ -n "$out" ]; then
		echo "$out"
		return 1
	fi
	g systemd-analyze security --offline=true --threshold=15 --no-pager /lib/systemd/system/stem-worker@alpha.service | tail -n1
}

configure() {
	local broker=$1
	case "$broker" in
	redis) g sed -i 's|^#\?STEM_BROKER_URL=redis.*|STEM_BROKER_URL=redis://127.0.0.1:6379/0|; s|^STEM_BROKER_URL=sqlite|#STEM_BROKER_URL=sqlite|' /etc/stem/stem.env ;;
	sqlite) g sed -i 's|^STEM_BROKER_URL=redis|#STEM_BROKER_URL=redis|; s|^#STEM_BROKER_URL=sqlite|STEM_BROKER_URL=sqlite|' /etc/stem/stem.env ;;
	esac
	[ "$(g grep -c '^STEM_BROKER_URL=' /etc/stem/stem.env)" = 1 ]
	g grep "^STEM_BROKER_URL=$broker://" /etc/stem/stem.env
	# Each node has its own queue (so a test can aim a task at it) and the
	# shared default queue. A value with '%', '$' and spaces must reach the
	# worker unchanged.
	g stem units install --root / --node alpha --queue alpha,default --concurrency 2 --env 'E2E_VALUE=100% $HOME a b'
	g stem units install --root / --node beta --queue beta,default --concurrency 2 --env STEM_LOG_LEVEL=debug
	g systemctl daemon-reload
	[ "$(g systemctl is-enabled stem-worker@alpha)" = enabled ]
}

start_nodes() {
	g systemctl start stem-worker@alpha stem-worker@beta
	# Type=notify: start returned, so READY=1 arrived; STATUS= came with it.
	local n
	for n in alpha beta; do
		[ "$(prop stem-worker@$n ActiveState)" = active ] || { echo "$n not active"; return 1; }
		prop stem-worker@$n StatusText | grep -E '^ready: [0-9]+/[0-9]+ busy; queues '"$n"',default$'
	done
}

healthcheck_ran() {
	prop stem-worker@alpha ExecStartPost | grep -E 'code=exited ; status=0( |/|$)'
	g journalctl -u stem-worker@alpha --no-pager -o cat | grep -E '^alpha: healthy \(pid [0-9]+'
}

env_reaches_worker() {
	local pid
	pid=$(prop stem-worker@alpha MainPID)
	g cat "/proc/$pid/environ" | tr '\0' '\n' | grep -Fx 'E2E_VALUE=100% $HOME a b'
	g cat "/proc/$pid/environ" | tr '\0' '\n' | grep -Fx 'STEM_WORKER_QUEUES=alpha,default'
}

ping_both() {
	local out
	out=$(stem_cli worker ping)
	echo "$out"
	echo "$out" | grep -q 'alpha@' && echo "$out" | grep -q 'beta@'
}

tasks_complete() {
	local id q
	for q in alpha beta default; do
		stem_cli enqueue stem.echo --queue "$q" --args '{"e2e": "'"$q"'"}' --wait --timeout 20s
	done
	id=$(stem_cli enqueue stem.echo --count 50 | tail -n1)
	WAIT=30 wait_for task_in_state "$id" succeeded
}

task_in_state() {
	stem_cli task status "$1" --json | grep -q '"state": "'"$2"'"'
}

revoke_terminate() {
	local id
	id=$(stem_cli enqueue stem.sleep --queue alpha --arg duration=120s)
	WAIT=20 wait_for task_in_state "$id" started || { echo "task $id never started"; return 1; }
	stem_cli worker revoke --task "$id" --terminate
	WAIT=20 wait_for task_in_state "$id" revoked || { stem_cli task status "$id"; return 1; }
	stem_cli task status "$id"
}

# An exec task (a tasks file command) runs under the unit's sandbox, and
# when the worker's main process is SIGKILLed its task's processes, a
# grandchild included, are gone within a second (the supervisor sees the
# worker die), before systemd even restarts the node.
exec_task_dies_with_worker() {
	local id sh_pid sleep_pid old t
	g sh -c 'cat > /etc/stem/e2e-tasks.yaml' <<'YAML'
tasks:
  e2e.hello:
    command: ["sh", "-c", "echo '\"hi\"'"]
    queue: alpha
  e2e.sleeper:
    command: ["sh", "-c", "sleep 300 & echo $! > /var/lib/stem/e2e-sleep.pid; echo $$ > /var/lib/stem/e2e-sh.pid; wait"]
    queue: alpha
YAML
	g chmod 0644 /etc/stem/e2e-tasks.yaml
	g sh -c 'echo STEM_TASKS_FILE=/etc/stem/e2e-tasks.yaml >> /etc/stem/nodes/alpha.env'
	g systemctl restart stem-worker@alpha
	stem_cli enqueue e2e.hello --queue alpha --wait --timeout 20s | grep -E '^result: +"hi"$'
	# An isolated task (a child re-executed from /proc/self/exe) in the sandbox too.
	stem_cli enqueue stem.spin --queue alpha --arg duration=10ms --wait --timeout 20s | grep -E '^state: +succeeded$'
	g rm -f /var/lib/stem/e2e-sleep.pid /var/lib/stem/e2e-sh.pid
	id=$(stem_cli enqueue e2e.sleeper --queue alpha)
	pids_written() { g test -s /var/lib/stem/e2e-sleep.pid && g test -s /var/lib/stem/e2e-sh.pid; }
	WAIT=20 wait_for pids_written || { stem_cli task status "$id"; return 1; }
	sh_pid=$(g cat /var/lib/stem/e2e-sh.pid)
	sleep_pid=$(g cat /var/lib/stem/e2e-sleep.pid)
	old=$(prop stem-worker@alpha MainPID)
	g kill -0 "$sh_pid" && g kill -0 "$sleep_pid"
	t=$(date +%s%N)
	g systemctl kill --kill-who=main -s SIGKILL stem-worker@alpha
	gone() { ! g kill -0 "$sh_pid" 2>/dev/null && ! g kill -0 "$sleep_pid" 2>/dev/null; }
	WAIT=1 wait_for gone || { echo "task processes $sh_pid/$sleep_pid alive 1s after the worker was killed"; g ps -ef; return 1; }
	echo "task processes gone $(( ($(date +%s%N) - t) / 1000000 )) ms after SIGKILL of worker $old"
	back() { local n; n=$(prop stem-worker@alpha MainPID) && [ "$n" != 0 ] && [ "$n" != "$old" ] && [ "$(prop stem-worker@alpha ActiveState)" = active ]; }
	WAIT=30 wait_for back || { g journalctl -u stem-worker@alpha --no-pager -n 30; return 1; }
	# The killed copy would run again once its lease expires: revoke it.
	stem_cli worker revoke --task "$id" || true
	g sed -i '/^STEM_TASKS_FILE=/d' /etc/stem/nodes/alpha.env
	g rm -f /etc/stem/e2e-tasks.yaml /var/lib/stem/e2e-sleep.pid /var/lib/stem/e2e-sh.pid
	g systemctl restart stem-worker@alpha
}

# reload is a warm restart: the running task finishes and succeeds, a new
# process starts with the node's env file re-read.
reload_warm_restart() {
	local old new id
	old=$(prop stem-worker@alpha MainPID)
	g sed -i 's/^STEM_WORKER_CONCURRENCY=2$/STEM_WORKER_CONCURRENCY=3/' /etc/stem/nodes/alpha.env
	id=$(stem_cli enqueue stem.sleep --queue alpha --arg duration=3s)
	WAIT=20 wait_for task_in_state "$id" started || { echo "task $id never started"; return 1; }
	g systemctl reload stem-worker@alpha
	new_pid() { new=$(prop stem-worker@alpha MainPID) && [ "$new" != 0 ] && [ "$new" != "$old" ] && [ "$(prop stem-worker@alpha ActiveState)" = active ]; }
	WAIT=60 wait_for new_pid || { echo "no new main process after reload (was $old)"; g journalctl -u stem-worker@alpha --no-pager -n 30; return 1; }
	new=$(prop stem-worker@alpha MainPID)
	echo "main PID $old -> $new"
	task_in_state "$id" succeeded || { stem_cli task status "$id"; return 1; }
	alpha_max3() { stem_cli worker stats --worker alpha --json | grep -q '"maxConcurrency": 3'; }
	WAIT=20 wait_for alpha_max3 || { stem_cli worker stats --worker alpha --json; return 1; }
}

stop_drains() {
	local id t
	id=$(stem_cli enqueue stem.sleep --queue beta --arg duration=4s)
	WAIT=20 wait_for task_in_state "$id" started || { echo "task $id never started"; return 1; }
	t=$(now)
	g systemctl stop stem-worker@beta
	echo "stop took $(since "$t")s"
	task_in_state "$id" succeeded || { stem_cli task status "$id"; return 1; }
	[ "$(prop stem-worker@beta ActiveState)" = inactive ]
	[ "$(prop stem-worker@beta Result)" = success ]
	g journalctl -u stem-worker@beta --no-pager -o cat | grep -E 'Stopped|Deactivated successfully'
}

# A worker whose main loop hangs (SIGSTOP: no more watchdog pings) is killed
# by the watchdog and restarted. Node gamma gets WatchdogSec=4s from a
# runtime drop-in, so the test waits seconds, not the shipped 30 s.
watchdog_restarts() {
	local old new
	g stem units install --root / --node gamma --no-enable
	g mkdir -p /run/systemd/system/stem-worker@gamma.service.d
	g sh -c 'printf "[Service]\nWatchdogSec=4s\n" > /run/systemd/system/stem-worker@gamma.service.d/e2e.conf'
	g systemctl daemon-reload
	g systemctl start stem-worker@gamma
	old=$(prop stem-worker@gamma MainPID)
	g kill -STOP "$old"
	gamma_restarted() { new=$(prop stem-worker@gamma MainPID) && [ "$new" != 0 ] && [ "$new" != "$old" ] && [ "$(prop stem-worker@gamma ActiveState)" = active ]; }
	WAIT=40 wait_for gamma_restarted || { g journalctl -u stem-worker@gamma --no-pager -n 30; return 1; }
	echo "main PID $old -> $(prop stem-worker@gamma MainPID), NRestarts=$(prop stem-worker@gamma NRestarts)"
	g journalctl -u stem-worker@gamma --no-pager -o cat | grep -F 'Watchdog timeout'
	[ "$(prop stem-worker@gamma NRestarts)" -ge 1 ]
	g systemctl stop stem-worker@gamma
	g rm -r /run/systemd/system/stem-worker@gamma.service.d
	g systemctl daemon-reload
}

journal_priorities() {
	local j
	j=$(g journalctl -u stem-worker@beta --no-pager -o json --output-fields=PRIORITY,MESSAGE)
	# "worker ready" at info (6); debug lines (7) from STEM_LOG_LEVEL=debug;
	# no raw "<N>" prefix left in a message (journald parsed it).
	echo "$j" | grep '"MESSAGE":"[^"]*worker ready' | grep -q '"PRIORITY":"6"'
	echo "$j" | grep -q '"PRIORITY":"7"'
	if echo "$j" | grep -q '"MESSAGE":"<[0-7]>'; then
		echo "a message kept its <N> prefix"
		return 1
	fi
	g journalctl -u stem-worker@alpha --no-pager -p info -o cat | grep -c . >/dev/null
	echo "priorities seen for beta: $(echo "$j" | grep -o '"PRIORITY":"[0-7]"' | sort | uniq -c | tr '\n' ' ')"
}

target_restarts_all() {
	g systemctl start stem-workers.target
	local a b
	a=$(prop stem-worker@alpha MainPID)
	b=$(prop stem-worker@beta MainPID)
	[ "$b" != 0 ] || { echo "beta was not started by the target"; return 1; }
	g systemctl restart stem-workers.target
	[ "$(prop stem-worker@alpha MainPID)" != "$a" ] && [ "$(prop stem-worker@beta MainPID)" != "$b" ]
	[ "$(prop stem-worker@alpha ActiveState)" = active ] && [ "$(prop stem-worker@beta ActiveState)" = active ]
}

purge_clean() {
	g dpkg --purge stem
	local left
	left=$(g systemctl list-units --all --plain --no-legend 'stem-*' | grep -v 'not-found' || true)
	[ -z "$left" ] || { echo "units left: $left"; return 1; }
	for p in /lib/systemd/system/stem-worker@.service /etc/stem /var/lib/stem /var/log/stem /run/stem \
		/etc/systemd/system/multi-user.target.wants/stem-worker@alpha.service \
		/etc/systemd/system/stem-workers.target.wants /usr/bin/stem; do
		if [ -e "$root$p" ] || [ -L "$root$p" ]; then
			echo "left behind: $p"
			return 1
		fi
	done
	left=$(g find / -xdev -user stem -not -path '/proc/*' 2>/dev/null || true)
	[ -z "$left" ] || { echo "files owned by stem left: $left"; return 1; }
	if g pgrep -u stem -l; then
		echo "processes of stem left"
		return 1
	fi
}

for broker in $E2E_BROKERS; do
	echo "== broker: $broker"
	tb=$(now)
	check "[$broker] dpkg -i in the running guest: user, env file root:stem 0640, man, completions" install_pkg
	check "[$broker] systemd-analyze verify clean; security exposure <= 1.5" verify_units
	check "[$broker] env file, stem units install --node alpha/beta (packaged units reused)" configure "$broker"
	check "[$broker] systemctl start alpha beta returns after READY=1; StatusText" start_nodes
	check "[$broker] ExecStartPost healthcheck ran and passed" healthcheck_ran
	check "[$broker] node env file reaches the worker ('%', '\$', spaces intact)" env_reaches_worker
	check "[$broker] stem worker ping (in the guest) sees alpha and beta" ping_both
	check "[$broker] tasks enqueued with stem enqueue complete" tasks_complete
	check "[$broker] stem worker revoke --terminate stops a running task" revoke_terminate
	check "[$broker] exec and isolated tasks run in the sandbox; exec processes die within 1s of a SIGKILL of the worker" exec_task_dies_with_worker
	check "[$broker] systemctl reload = warm restart: task succeeds, env re-read" reload_warm_restart
	check "[$broker] systemctl stop drains: the task in flight succeeds" stop_drains
	check "[$broker] a hung main loop (SIGSTOP) is killed by the watchdog, restarted" watchdog_restarts
	check "[$broker] journalctl -u carries the log lines with their priorities" journal_priorities
	check "[$broker] systemctl restart stem-workers.target restarts every node" target_restarts_all
	check "[$broker] dpkg --purge leaves no unit, stem-owned file or process" purge_clean
	echo "== broker $broker: $(since "$tb")s"
done

echo "e2e: took $(since "$T0")s (guest root $how)"
if [ "$FAILED" -gt 0 ]; then
	printf 'e2e: failed: %s\n' "${FAILURES[@]}"
fi
echo "e2e: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
