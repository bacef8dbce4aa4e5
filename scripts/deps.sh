#!/usr/bin/env bash
# Installs the Debian packages capstan needs to build, test and benchmark,
# only when one is missing. Safe to run again.
#   scripts/deps.sh            to build
#   scripts/deps.sh --package  to build the .deb (scripts/package.sh)
#   scripts/deps.sh --test     to build and run every test (the package's too)
set -euo pipefail
# libpq-dev: libpq-fe.h for the PostgreSQL store's types (libpq.so.5 is
# loaded at run time, with dlmopen).
build_pkgs=(build-essential cmake pkg-config android-libboringssl-dev libuv1-dev liblmdb-dev
  libprotobuf-c-dev protobuf-c-compiler libhttp-parser-dev libexpat1-dev libpq-dev)
test_pkgs=(libcmocka-dev python3 python3-cryptography curl tftp-hpa atftp openssl android-boringssl
  lmdb-utils procps iproute2 jq valgrind prometheus chromium)
# postgresql-15: initdb, pg_ctl and psql (/usr/lib/postgresql/15/bin) for the
# tests' private clusters (tests/tools/pg_cluster.sh); the cluster Debian may
# start on 5432 at install is not used.
test_pkgs+=(postgresql-15)
# dpkg-shlibdeps (dpkg-dev) for the package's Depends, help2man for its man
# pages; the package test also runs systemd-analyze (systemd) and strace.
package_pkgs=(dpkg-dev help2man)
test_pkgs+=("${package_pkgs[@]}" systemd strace)
want=("${build_pkgs[@]}")
[ "${1:-}" = "--test" ] && want+=("${test_pkgs[@]}")
[ "${1:-}" = "--package" ] && want+=("${package_pkgs[@]}")
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "capstan: installing Debian packages: ${missing[*]}" >&2
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
