#!/usr/bin/env bash
# fresh-machine-check.sh: the README's first two commands, verbatim, on a fresh Debian 12 (bookworm).
#
# Builds a minimal Debian 12 root with debootstrap (variant minbase, plus git, make and ca-certificates: what a
# user needs to have cloned the repository and to type `make`), puts a clean clone of this repository's
# committed HEAD in it (uncommitted changes are not taken) with ../shared beside it as CI has it, and runs the
# two command lines of the README's first code block inside it (chroot in a private mount namespace: /proc,
# /sys, /dev, resolv.conf and locally added CA certificates from the host, and the /etc/hosts every installed
# Debian has, nothing else). Prints PASS or FAIL and the time of each command;
# exits 0 only when both passed. Needs root, debootstrap (apt-get install debootstrap) and a Debian mirror and
# PyPI to reach. About 20-40 minutes on 2 cores, most of it `make test`; run it as `nice bash ...` on a shared
# machine.
#
# Usage: bash scripts/fresh-machine-check.sh [--ref REF] [--cold] [--keep]
#   --ref REF   the commit to check (default HEAD), cloned as branch main
#   --cold      ignore the download caches below (apt .debs, pip's cache): everything comes from the network
#   --keep      leave the root in place afterwards (to look inside: chroot $WORK/root bash)
# Caches (outside the repository, kept between runs): $MIXATT_FRESH_CACHE (default /var/cache/mixatt-fresh)
# holds the debootstrapped root as a tarball (made once, then unpacked in seconds; delete it to start over),
# the .deb files apt downloaded and pip's cache. The root itself is made anew each run in $MIXATT_FRESH_DIR
# (default /tmp/mixatt-fresh). Logs: $MIXATT_FRESH_DIR/logs/.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${MIXATT_FRESH_CACHE:-/var/cache/mixatt-fresh}
WORK=${MIXATT_FRESH_DIR:-/tmp/mixatt-fresh}
MIRROR=${MIXATT_FRESH_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
TARBALL=$CACHE/$SUITE-minbase.tar.gz
ROOT=$WORK/root
LOGS=$WORK/logs
REF=HEAD COLD=0 KEEP=0

while [ $# -gt 0 ]; do
    case $1 in
    --ref) REF=$2; shift 2 ;;
    --cold) COLD=1; shift ;;
    --keep) KEEP=1; shift ;;
    -h | --help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "fresh-machine-check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

say() { echo "fresh-machine-check: $*"; }
die() { echo "fresh-machine-check: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot, mount)"
command -v debootstrap >/dev/null || die "debootstrap not found: apt-get install debootstrap"
command -v unshare >/dev/null || die "unshare not found (util-linux)"

# The README's first code block, its first two lines: the commands a new user types.
mapfile -t CMDS < <(awk '/^```/ { if (inblock) exit; inblock = 1; next } inblock && NF { print }' "$REPO/README.md" | head -2)
[ "${#CMDS[@]}" = 2 ] || die "could not read the two commands from README.md's first code block"
COMMIT=$(git -C "$REPO" rev-parse --verify "$REF^{commit}") || die "no commit '$REF' in $REPO"
say "checking $(git -C "$REPO" log -1 --format='%h %s' "$COMMIT")"
for c in "${CMDS[@]}"; do say "  will run: $c"; done

T_START=$(date +%s)
mkdir -p "$CACHE/apt" "$CACHE/pip" "$WORK"

# 1. The root: debootstrap once into the tarball, then unpack it.
if [ ! -s "$TARBALL" ]; then
    say "debootstrap $SUITE (minbase) from $MIRROR into the cache (once; a few minutes)"
    tmp=$(mktemp -d "$WORK/debootstrap.XXXX")
    debootstrap --variant=minbase --include=ca-certificates,git,make "$SUITE" "$tmp" "$MIRROR" \
        >"$WORK/debootstrap.log" 2>&1 || die "debootstrap failed: see $WORK/debootstrap.log"
    # the sources a Debian 12 installation has: the release, its updates and the security archive
    printf 'deb %s %s main\ndeb %s %s-updates main\ndeb http://deb.debian.org/debian-security %s-security main\n' \
        "$MIRROR" "$SUITE" "$MIRROR" "$SUITE" "$SUITE" >"$tmp/etc/apt/sources.list"
    rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/*
    chmod 755 "$tmp"   # mktemp's 0700 would keep apt's _apt user out of the root
    tar -C "$tmp" --numeric-owner -czf "$TARBALL.tmp" . && mv "$TARBALL.tmp" "$TARBALL"
    rm -rf "$tmp"
fi
T_ROOT0=$(date +%s)
if [ -d "$ROOT" ]; then
    # a root left by an earlier run (--keep, or killed): nothing of its may still be mounted
    grep -q " $ROOT/" /proc/mounts && die "$ROOT still has mounts: umount them first (grep $ROOT /proc/mounts)"
    rm -rf "$ROOT"
fi
mkdir -p "$ROOT" "$LOGS"
tar -C "$ROOT" --numeric-owner -xzf "$TARBALL"
chmod 755 "$ROOT"
T_ROOT=$(($(date +%s) - T_ROOT0))

# 2. A clean clone of the commit, as branch main, and shared/ beside it without write bits (as CI lays it).
DEST=/root/work/mixatt
mkdir -p "$ROOT/root/work"
git init -q -b main "$ROOT$DEST"
git -C "$ROOT$DEST" fetch -q "$REPO" "$COMMIT" 2>/dev/null || git -C "$ROOT$DEST" fetch -q "$REPO" "$REF"
git -C "$ROOT$DEST" reset -q --hard "$COMMIT"
if [ -d "$REPO/../shared" ]; then
    cp -r "$REPO/../shared" "$ROOT/root/work/shared"
    chmod -R a-w "$ROOT/root/work/shared"
fi
# The network as the host has it: its resolver and the certificate authorities added to its trust store (a
# TLS-inspecting proxy's, where the network has one: without it pip cannot reach PyPI from any new machine here).
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
# /etc/hosts as the Debian installer (netcfg) and Debian's cloud images write it; debootstrap leaves none, and
# without it "localhost" does not resolve (selenium reaches chromedriver at localhost:PORT).
[ -e "$ROOT/etc/hosts" ] || printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$ROOT/etc/hosts"
LOCAL_CAS=$(ls /usr/local/share/ca-certificates/ 2>/dev/null | grep -c '\.crt$' || true)
if [ "$LOCAL_CAS" -gt 0 ]; then
    cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
    chroot "$ROOT" update-ca-certificates >/dev/null 2>&1 || die "update-ca-certificates failed in the root"
fi

# 3. Inside: a private mount namespace (mounts vanish with it), chroot, an empty environment but for CI.
APT_CACHE=$CACHE/apt PIP_CACHE=$CACHE/pip
if [ "$COLD" = 1 ]; then APT_CACHE="" PIP_CACHE=""; fi
inside() {   # inside LOG COMMAND: runs COMMAND in the root, its output to the terminal and to LOG
    unshare -m --propagation private bash -c '
        set -e
        R=$1 APT=$2 PIP=$3 CMD=$4
        mount -t proc proc "$R/proc"
        mount -t sysfs sys "$R/sys"
        mount --rbind /dev "$R/dev"
        mount -t tmpfs -o mode=1777 shm "$R/dev/shm"
        if [ -n "$APT" ]; then mount --bind "$APT" "$R/var/cache/apt/archives"; fi
        if [ -n "$PIP" ]; then mkdir -p "$R/root/.cache/pip"; mount --bind "$PIP" "$R/root/.cache/pip"; fi
        exec chroot "$R" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb CI="${CI:-}" \
            PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            bash -c "cd /root/work/mixatt && $CMD"
    ' inside "$ROOT" "$APT_CACHE" "$PIP_CACHE" "$2" 2>&1 | tee "$1"
    return "${PIPESTATUS[0]}"
}
# apt keeps its downloads when told to (a fresh install deletes none anyway; this only says so)
echo 'Binary::apt::APT::Keep-Downloaded-Packages "true";' >"$ROOT/etc/apt/apt.conf.d/01keep-debs"

cleanup() {
    # processes still running in the root (a daemon a test left behind): ours, found by their root directory
    local p
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/root" 2>/dev/null)" = "$ROOT" ] && kill "${p#/proc/}" 2>/dev/null || true
    done
    if [ "$KEEP" = 0 ] && ! grep -q " $ROOT/" /proc/mounts; then rm -rf "$ROOT"; fi
}
trap cleanup EXIT

declare -a RESULT TIME
ok=1
for i in 0 1; do
    c=${CMDS[$i]}
    say "---- $c"
    t0=$(date +%s)
    if inside "$LOGS/command-$((i + 1)).log" "$c"; then RESULT[$i]=PASS; else RESULT[$i]=FAIL; ok=0; fi
    TIME[$i]=$(($(date +%s) - t0))
    [ "${RESULT[$i]}" = PASS ] || break
done

fmt() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }
echo
say "Debian $SUITE minbase root unpacked in $(fmt "$T_ROOT") (+ the host's resolv.conf and $LOCAL_CAS local CA certificates); commit $(git -C "$REPO" rev-parse --short "$COMMIT")$([ "$COLD" = 1 ] && echo ', cold caches')"
for i in 0 1; do
    say "$(printf '%-5s %8s  %s' "${RESULT[$i]:-SKIP}" "$(fmt "${TIME[$i]:-0}")" "${CMDS[$i]}")"
done
say "total $(fmt $(($(date +%s) - T_START))); logs in $LOGS"
[ "$ok" = 1 ] && say "PASS" || say "FAIL"
[ "$ok" = 1 ]
