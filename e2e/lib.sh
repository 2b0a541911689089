# shellcheck shell=bash
# Helpers of e2e/run.sh: the guest root (built once, cached as a tarball),
# booting systemd in it with systemd-nspawn, running commands inside it, and
# recording checks. Sourced, not run.
#
# SAFETY: systemd is only ever booted with a root directory under /var/tmp
# that this script built and marked (assert_guest_root): never the host's
# root, which systemd would take over (systemd-tmpfiles empties /tmp).

E2E_SUITE=bookworm
# Redis runs in the guest for the redis:// broker; procps gives /bin/kill.
E2E_INCLUDE=systemd,systemd-sysv,dbus,procps,redis-server
E2E_MARKER=etc/stem-e2e-root
E2E_BASE=${E2E_BASE:-/var/tmp/stem-e2e}
E2E_CACHE=${E2E_CACHE:-/var/tmp/stem-e2e-cache}

die() {
	echo "e2e: $*" >&2
	exit 1
}

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# host_tools installs what the host needs, once.
host_tools() {
	local need=()
	command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
	command -v systemd-nspawn >/dev/null || need+=(systemd-container)
	command -v zstd >/dev/null || need+=(zstd)
	command -v nsenter >/dev/null || need+=(util-linux)
	if [ ${#need[@]} -gt 0 ]; then
		echo "e2e: installing ${need[*]}"
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
	fi
}

# mirror prints the Debian mirror apt already uses on this host.
mirror() {
	local m
	m=$(grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -n1 || true)
	if [ -z "$m" ]; then
		m=$(grep -h '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | grep -v security | head -n1 || true)
	fi
	[ -n "$m" ] || die "no Debian mirror found in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list"
	echo "$m"
}

# prepare_root makes a freshly bootstrapped root boot unattended inside
# nspawn. Its text is part of the cache key: change it and the root is
# rebuilt.
prepare_root() {
	local r=$1
	systemd-machine-id-setup --root="$r" >/dev/null
	local u
	for u in console-getty.service getty@tty1.service container-getty@.service systemd-firstboot.service \
		apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer systemd-networkd-wait-online.service \
		systemd-sysctl.service; do
		ln -sf /dev/null "$r/etc/systemd/system/$u"
	done
	mkdir -p "$r/etc/systemd/journald.conf.d"
	printf '[Journal]\nStorage=volatile\n' >"$r/etc/systemd/journald.conf.d/e2e.conf"
	echo "stem e2e guest root: boot it only with systemd-nspawn -D" >"$r/$E2E_MARKER"
}

# cache_key identifies a built root by everything that goes into it.
cache_key() {
	{
		echo "$E2E_SUITE $E2E_INCLUDE minbase"
		declare -f prepare_root
	} | sha256sum | cut -c1-16
}

# assert_guest_root refuses any root that is not a directory under
# /var/tmp built by this script, and in particular the host's own root.
assert_guest_root() {
	local r
	r=$(realpath -e -- "$1") || die "guest root $1 does not exist"
	case "$r" in
	/var/tmp/?*) ;;
	*) die "refusing to use $r as a guest root: not under /var/tmp" ;;
	esac
	[ "$r" != / ] || die "refusing to boot the host root"
	[ "$(stat -Lc %d:%i -- "$r")" != "$(stat -Lc %d:%i /)" ] || die "refusing: $r is the host root"
	[ -f "$r/$E2E_MARKER" ] || die "refusing: $r lacks the e2e marker $E2E_MARKER"
	[ -x "$r/lib/systemd/systemd" ] || die "refusing: $r has no systemd"
}

# make_root extracts the cached root into $1, building the cache first when
# it is missing. Prints "cached" or "built".
make_root() {
	local r=$1 tarball
	tarball="$E2E_CACHE/root-$E2E_SUITE-$(cache_key).tar.zst"
	mkdir -p "$E2E_CACHE" "$r"
	if [ ! -s "$tarball" ]; then
		local tmp="$E2E_BASE/build-$$"
		rm -rf "$tmp"
		mkdir -p "$tmp"
		mmdebstrap --quiet --variant=minbase --include="$E2E_INCLUDE" "$E2E_SUITE" "$tmp" "$(mirror)" >&2
		prepare_root "$tmp"
		tar --numeric-owner -C "$tmp" -cf - . | zstd -q -T0 -o "$tarball.part"
		mv "$tarball.part" "$tarball"
		rm -rf "$tmp"
		echo built
	else
		echo cached
	fi
	zstd -q -d -c "$tarball" | tar --numeric-owner -xpf - -C "$r"
}

NSPAWN_PID=""
GUEST_PID=""
GUEST_ROOT=""

# boot starts systemd in root $1 (after assert_guest_root) and waits until
# the guest's manager answers and the system is up.
boot() {
	GUEST_ROOT=$1
	assert_guest_root "$GUEST_ROOT"
	local log=$2
	setsid systemd-nspawn -D "$GUEST_ROOT" --boot --register=no --keep-unit --private-network \
		--console=read-only -M stem-e2e </dev/null >"$log" 2>&1 &
	NSPAWN_PID=$!
	local deadline=$((SECONDS + 60)) c
	while [ -z "$GUEST_PID" ]; do
		[ $SECONDS -lt $deadline ] || die "the guest's PID 1 did not appear (see $log)"
		kill -0 "$NSPAWN_PID" 2>/dev/null || die "systemd-nspawn exited (see $log)"
		for c in /proc/"$NSPAWN_PID"/task/*/children; do
			GUEST_PID=$(awk '{print $1}' "$c" 2>/dev/null)
			[ -n "$GUEST_PID" ] && break
		done
		[ -n "$GUEST_PID" ] || sleep 0.1
	done
	# The guest's /run is its own tmpfs: look from inside.
	until nsenter -t "$GUEST_PID" -m -- test -S /run/systemd/private 2>/dev/null; do
		[ $SECONDS -lt $deadline ] || die "the guest's systemd did not start (see $log)"
		sleep 0.1
	done
	local state
	state=$(g timeout 60 systemctl is-system-running --wait 2>/dev/null || true)
	case "$state" in
	running | degraded) ;;
	*) die "the guest did not boot: is-system-running says '$state' (see $log)" ;;
	esac
	if [ "$state" = degraded ]; then
		echo "e2e: guest degraded; failed units: $(g systemctl --failed --plain --no-legend | awk '{print $1}' | tr '\n' ' ')"
	fi
}

# shutdown powers the guest off (SIGTERM to nspawn: a clean poweroff) and
# removes the cgroups nspawn left next to ours.
shutdown_guest() {
	[ -n "$NSPAWN_PID" ] || return 0
	if kill -0 "$NSPAWN_PID" 2>/dev/null; then
		kill -TERM "$NSPAWN_PID" 2>/dev/null || true
		local deadline=$((SECONDS + 30))
		while kill -0 "$NSPAWN_PID" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
		if kill -0 "$NSPAWN_PID" 2>/dev/null; then
			echo "e2e: nspawn $NSPAWN_PID did not stop; killing the guest's PID 1 ($GUEST_PID) and nspawn" >&2
			[ -n "$GUEST_PID" ] && kill -KILL "$GUEST_PID" 2>/dev/null || true
			kill -KILL "$NSPAWN_PID" 2>/dev/null || true
		fi
	fi
	wait "$NSPAWN_PID" 2>/dev/null || true
	NSPAWN_PID=""
	local base own d
	for base in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified; do
		own=$(awk -F: -v h="$([ "$base" = /sys/fs/cgroup/unified ] && echo "" || echo name=systemd)" '$2 == h {print $3}' /proc/self/cgroup)
		for d in payload supervisor; do
			[ -d "$base$own/$d" ] && find "$base$own/$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
		done
	done
}

# g runs a command inside the guest (every namespace of its PID 1), with a
# clean environment.
g() {
	nsenter -t "$GUEST_PID" -a -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"
}

# stem_cli runs the stem CLI in the guest as the stem user, with the
# packaged env file (as docs/install.md tells operators to).
stem_cli() {
	g runuser -u stem -- stem --env-file /etc/stem/stem.env "$@"
}

# prop prints one property of a unit (one at a time: systemctl prints
# several in the unit's order, not the order asked).
prop() { g systemctl show -p "$2" --value "$1"; }

# wait_for runs "$@" until it succeeds, for at most $WAIT seconds (default
# 30). No fixed sleeps: it polls every 0.2 s.
wait_for() {
	local deadline=$((SECONDS + ${WAIT:-30}))
	until "$@" >/dev/null 2>&1; do
		[ $SECONDS -lt $deadline ] || return 1
		sleep 0.2
	done
}

PASSED=0
FAILED=0
FAILURES=()

# check NAME CMD...: run a check and record it.
check() {
	local name=$1
	shift
	local t0 out rc
	t0=$(now)
	# errexit inside the check itself: any failing step fails the check
	# (a function called as an if-condition would run with -e off).
	set +e
	out=$(
		set -e
		"$@" 2>&1
	)
	rc=$?
	set -e
	if [ $rc -eq 0 ]; then
		PASSED=$((PASSED + 1))
		printf 'PASS  %-62s %5ss\n' "$name" "$(since "$t0")"
	else
		FAILED=$((FAILED + 1))
		FAILURES+=("$name")
		printf 'FAIL  %-62s %5ss\n' "$name" "$(since "$t0")"
		printf '%s\n' "$out" | tail -n 25 | sed 's/^/      | /'
	fi
}
