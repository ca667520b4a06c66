#!/bin/sh
# Sluice's container entrypoint: one process of a flow's Bytewax cluster, one pod of a StatefulSet.
#
#   SLUICE_FLOW                 fraud | assistant | personalize | review; unset: run the arguments as a
#                               command instead (`sluice train fraud`, `sluice stack topics`, ...)
#   BYTEWAX_POD_NAME            the pod's name (downward API); its ordinal is the process id, as
#   BYTEWAX_STATEFULSET_NAME    bytewax.run and Bytewax's Helm chart derive it: <statefulset>-<ordinal>
#   BYTEWAX_REPLICAS            processes in the cluster (rendered beside the StatefulSet's replicas)
#   SLUICE_CLUSTER_SERVICE      headless Service (default: the StatefulSet's name)
#   SLUICE_CLUSTER_NAMESPACE    the pod's namespace (downward API)
#   SLUICE_CLUSTER_DOMAIN       cluster DNS domain (default cluster.local)
#   SLUICE_CLUSTER_PORT         Bytewax's port between processes (default 9999)
#   BYTEWAX_ADDRESSES           taken as is when set, instead of the addresses computed from the above
#   SLUICE_RECOVERY_DIR         recovery store shared by every process (-r); process 0 creates the
#   SLUICE_RECOVERY_PARTITIONS  partitions once (default: BYTEWAX_REPLICAS), the others wait for them
#   BYTEWAX_SNAPSHOT_INTERVAL   -s in seconds (default 1), BYTEWAX_RECOVERY_BACKUP_INTERVAL -b (default 0)
#   SLUICE_START_WAIT_S         how long to wait for the pod's own DNS name and for the partitions (300)
#   SLUICE_DRY_RUN=1            print the command, one argument a line, instead of running it (the
#                               partitions are still prepared; the DNS wait is skipped)
#
# Arguments after the image name go to bytewax.run (e.g. -w 2). The address list is computed here
# rather than written by an init container into a hostfile (the Helm chart's way): it is the same
# information, and BYTEWAX_REPLICAS is rendered from the same number as the StatefulSet's replicas.
set -eu

die() {
	echo "sluice-entrypoint: $*" >&2
	exit 2
}

is_count() {
	case $1 in '' | *[!0-9]* | 0*) return 1 ;; esac
}

wait_for() { # what, test...: poll once a second until the test passes or SLUICE_START_WAIT_S runs out
	what=$1
	shift
	waited=0
	until "$@"; do
		[ "$waited" -lt "$wait_s" ] || die "gave up after ${wait_s}s waiting for $what (SLUICE_START_WAIT_S)"
		sleep 1
		waited=$((waited + 1))
	done
}

resolves() { getent hosts "$1" >/dev/null; }

has_partitions() {
	for f in "$1"/part-*.sqlite3; do
		[ -e "$f" ] && return 0
	done
	return 1
}

create_partitions_once() { # process 0 only: a complete set appears in $dir, or nothing does
	marker=$dir/.sluice-partitions
	[ -e "$marker" ] && return 0
	mkdir -p "$dir"
	staged=$dir/.staged
	if [ ! -d "$staged" ] && ! has_partitions "$dir"; then
		rm -rf "$dir/.creating"
		mkdir "$dir/.creating"
		python -m bytewax.recovery "$dir/.creating" "$partitions"
		mv "$dir/.creating" "$staged" # atomic: from here on the set is complete
	fi
	if [ -d "$staged" ]; then # also finishes a move that a crash interrupted
		for f in "$staged"/*; do
			[ -e "$f" ] && mv "$f" "$dir/"
		done
		rmdir "$staged"
	fi
	echo "$partitions" >"$marker.tmp"
	mv "$marker.tmp" "$marker"
}

wait_s=${SLUICE_START_WAIT_S:-300}
is_count "$wait_s" || [ "$wait_s" = 0 ] || die "SLUICE_START_WAIT_S=$wait_s is not a whole number of seconds"

if [ -z "${SLUICE_FLOW:-}" ]; then
	[ $# -gt 0 ] || die "set SLUICE_FLOW to fraud, assistant, personalize or review, or give a command to run"
	if [ "${SLUICE_DRY_RUN:-0}" = 1 ]; then
		printf '%s\n' "$@"
		exit 0
	fi
	exec "$@"
fi

replicas=${BYTEWAX_REPLICAS:-1}
is_count "$replicas" || die "BYTEWAX_REPLICAS=$replicas is not a positive whole number"

process=""
own_host=""
if [ -n "${BYTEWAX_POD_NAME:-}" ]; then
	statefulset=${BYTEWAX_STATEFULSET_NAME:-}
	[ -n "$statefulset" ] || die "BYTEWAX_POD_NAME is set, so BYTEWAX_STATEFULSET_NAME must be too"
	process=${BYTEWAX_POD_NAME#"$statefulset"-}
	case $process in
	'' | *[!0-9]*) die "pod $BYTEWAX_POD_NAME is not named $statefulset-<ordinal> (BYTEWAX_STATEFULSET_NAME)" ;;
	esac
	[ "$process" -lt "$replicas" ] ||
		die "pod ordinal $process is not below BYTEWAX_REPLICAS=$replicas: render and apply again so both agree"
	addresses=${BYTEWAX_ADDRESSES:-}
	if [ -z "$addresses" ]; then
		service=${SLUICE_CLUSTER_SERVICE:-$statefulset}
		namespace=${SLUICE_CLUSTER_NAMESPACE:-}
		[ -n "$namespace" ] || die "set SLUICE_CLUSTER_NAMESPACE to the pod's namespace (downward API)"
		port=${SLUICE_CLUSTER_PORT:-9999}
		domain=${SLUICE_CLUSTER_DOMAIN:-cluster.local}
		i=0
		while [ "$i" -lt "$replicas" ]; do
			host=$statefulset-$i.$service.$namespace.svc.$domain
			[ "$i" = "$process" ] && own_host=$host
			addresses=$addresses${addresses:+;}$host:$port
			i=$((i + 1))
		done
	fi
	set -- -i "$process" -a "$addresses" "$@"
fi

if [ -n "${SLUICE_RECOVERY_DIR:-}" ]; then
	dir=$SLUICE_RECOVERY_DIR
	partitions=${SLUICE_RECOVERY_PARTITIONS:-$replicas}
	is_count "$partitions" || die "SLUICE_RECOVERY_PARTITIONS=$partitions is not a positive whole number"
	if [ "${process:-0}" = 0 ]; then
		create_partitions_once
	else
		wait_for "process 0 to create the recovery partitions in $dir" test -e "$dir/.sluice-partitions"
	fi
	set -- -r "$dir" -s "${BYTEWAX_SNAPSHOT_INTERVAL:-1}" -b "${BYTEWAX_RECOVERY_BACKUP_INTERVAL:-0}" "$@"
fi

set -- sluice run "$SLUICE_FLOW" -- "$@"
if [ "${SLUICE_DRY_RUN:-0}" = 1 ]; then
	printf '%s\n' "$@"
	exit 0
fi
# Timely binds this process's own address by name: wait until the cluster DNS publishes it.
[ -z "$own_host" ] || wait_for "DNS to resolve $own_host" resolves "$own_host"
exec "$@"
