#!/usr/bin/env bash
# Builds the Debian package of capstan with dpkg-deb (no debhelper):
#   /usr/bin/capstan                         the binary (a Release build, stripped)
#   /lib/systemd/system/capstan.service      the hardened unit (packaging/capstan.service)
#   /etc/capstan/capstan.conf                the options of `capstan serve` (a conffile)
#   /usr/share/man/man1/capstan*.1.gz        man pages made by help2man from --help
#   /usr/share/doc/capstan/                  README.md, copyright, changelog.Debian.gz
#   /usr/share/capstan/grafana/*.json        the Grafana dashboards of dashboards/
# and the maintainer scripts of packaging/debian (the capstan system user,
# /var/lib/capstan). Depends: the shared libraries the binary links, as
# dpkg-shlibdeps finds them, and adduser.
#
# usage: scripts/package.sh [--build DIR] [--out DIR] [--revision N]
#   --build DIR     take the capstan binary of this existing CMake build
#                   directory (brought up to date) instead of a Release build
#                   in ./build-package
#   --out DIR       where the .deb goes (default ./build-package)
#   --revision N    the Debian revision (default 1): the version is
#                   <capstan --version>-N
# CAPSTAN_JOBS sets the build's parallelism (default: every core).
# Prints the path of the .deb as its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
src=$PWD

usage() { sed -n '/^# usage:/,/^# Prints/s/^# \{0,1\}//p' "$0"; }
die() {
  echo "package.sh: $*" >&2
  exit 1
}

build="" out="$src/build-package" revision=1
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build=${2:?--build needs a directory}; shift 2 ;;
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    --revision) revision=${2:?--revision needs a number}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done
[[ "$revision" =~ ^[0-9][0-9a-z.+~]*$ ]] || die "--revision: not a Debian revision: $revision"

scripts/deps.sh --package
jobs=${CAPSTAN_JOBS:-$(nproc)}
if [ -z "$build" ]; then
  build=build-package
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DCAPSTAN_TESTS=OFF >/dev/null
fi
[ -f "$build/CMakeCache.txt" ] || die "$build is not a CMake build directory"
cmake --build "$build" -j"$jobs" --target capstan >&2
bin=$(cd "$build" && pwd)/capstan
[ -x "$bin" ] || die "no capstan binary in $build"

upstream=$("$bin" --version | awk '{ print $2 }')
[[ "$upstream" =~ ^[0-9][0-9A-Za-z.+~]*$ ]] || die "capstan --version gave no version"
version="$upstream-$revision"
arch=$(dpkg --print-architecture)
# Reproducible dates (man pages, changelog, file times): the commit's.
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH=$(git -C "$src" log -1 --format=%ct 2>/dev/null || date +%s)
fi
export SOURCE_DATE_EPOCH
commit=$(git -C "$src" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
maintainer="${DEBFULLNAME:-capstan maintainers} <${DEBEMAIL:-capstan@localhost}>"

work=$(mktemp -d "${TMPDIR:-/tmp}/capstan-package.XXXXXX")
trap 'rm -rf "$work"' EXIT
root="$work/debian/capstan" # where dpkg-shlibdeps expects the package's files
install -d -m 0755 "$root" "$root/DEBIAN"

# --- Files -------------------------------------------------------------------
install -D -m 0755 "$bin" "$root/usr/bin/capstan"
# As dh_strip does: no debug information, no .comment/.note sections.
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$root/usr/bin/capstan"
install -D -m 0644 packaging/capstan.service "$root/lib/systemd/system/capstan.service"
install -D -m 0644 packaging/capstan.conf "$root/etc/capstan/capstan.conf"
install -D -m 0644 packaging/debian/copyright "$root/usr/share/doc/capstan/copyright"
install -D -m 0644 README.md "$root/usr/share/doc/capstan/README.md"
gzip -9n "$root/usr/share/doc/capstan/README.md"
for dash in dashboards/*.json; do
  [ -f "$dash" ] && install -D -m 0644 "$dash" "$root/usr/share/capstan/grafana/$(basename "$dash")"
done
{
  echo "capstan ($version) unstable; urgency=medium"
  echo
  echo "  * Built by scripts/package.sh from commit $commit."
  echo
  echo " -- $maintainer  $(date -u -R -d "@$SOURCE_DATE_EPOCH")"
} >"$work/changelog.Debian"
install -m 0644 "$work/changelog.Debian" "$root/usr/share/doc/capstan/changelog.Debian"
gzip -9n "$root/usr/share/doc/capstan/changelog.Debian"

# --- Man pages (help2man, from each command's --help) -------------------------
# capstan(1) from `capstan --help`; capstan-CMD(1) for each command it lists,
# with the help of that command's own commands (a 'commands:' list, or a
# "see 'capstan ... --help'") appended as preformatted text.
man="$root/usr/share/man/man1"
install -d -m 0755 "$man" "$work/bin"
roff_pre() { sed -e 's/\\/\\e/g' -e "s/^\\([.']\\)/\\\\\\&\\1/"; }
commands=$("$bin" --help | awk '/^commands:/ { on = 1; next } on && /^  [a-z]/ { print $1 } on && !/^  / { on = 0 }')
[ -n "$commands" ] || die "capstan --help lists no commands"
# The help texts a command's help points to: its 'commands:' list and any
# "'capstan X Y --help'" it names, one level down.
sub_helps() {
  local cmd=$1 text sub
  text=$("$bin" $cmd --help)
  {
    awk '/^commands:/ { on = 1; next } on && /^  [a-z]/ { print $1 } on && !/^  / { on = 0 }' <<<"$text" |
      sed "s/^/$cmd /"
    { grep -o "'capstan [a-z -]* --help'" <<<"$text" || true; } | sed "s/^'capstan //; s/ --help'\$//"
  } | awk -v c="$cmd" '$0 != c && !seen[$0]++'
}
see_also=""
for cmd in $commands; do see_also+=".BR capstan-$cmd (1),"$'\n'; done
for cmd in $commands; do
  printf '#!/bin/sh\nexec "%s" %s "$@"\n' "$bin" "$cmd" >"$work/bin/capstan-$cmd"
  chmod 0755 "$work/bin/capstan-$cmd"
  summary=$("$bin" --help | awk -v c="$cmd" '$1 == c { $1 = ""; sub(/^ +/, ""); print; exit }')
  inc="$work/capstan-$cmd.h2m"
  {
    subs=$(sub_helps "$cmd")
    if [ -n "$subs" ]; then
      echo "[COMMANDS]"
      while IFS= read -r sub; do
        echo ".SS \"capstan $sub\""
        echo ".nf"
        "$bin" $sub --help | roff_pre
        echo ".fi"
      done <<<"$subs"
    fi
    echo "[SEE ALSO]"
    echo ".BR capstan (1)"
  } >"$inc"
  help2man -N --version-string="$upstream" --name="${summary:-capstan $cmd}" \
    --source="capstan $upstream" --include="$inc" --output="$man/capstan-$cmd.1" "$work/bin/capstan-$cmd"
done
{
  echo "[SYNOPSIS]"
  echo ".B capstan"
  echo ".I command"
  echo "[arguments] [\\-\\-data\\-dir DIR]"
  echo "[FILES]"
  echo ".TP"
  echo ".I /etc/capstan/capstan.conf"
  echo "the options of \\fBcapstan serve\\fR for the capstan service (see \\fBcapstan-serve\\fR(1))"
  echo ".TP"
  echo ".I /var/lib/capstan"
  echo "the service's data directory: the LMDB store, with the CAPF and TFTP private keys;"
  echo "admin commands take \\fB\\-\\-data\\-dir /var/lib/capstan\\fR and run as the capstan user"
  echo "(\\fBsudo \\-u capstan capstan ...\\fR)"
  echo ".TP"
  echo ".I /lib/systemd/system/capstan.service"
  echo "the systemd unit (\\fBsystemctl edit capstan\\fR to change it)"
  echo "[SEE ALSO]"
  printf '%s' "$see_also"
  echo ".BR systemctl (1)"
} >"$work/capstan.h2m"
help2man -N --version-string="$upstream" --name="CAPF and phone file server for Cisco IP phones" \
  --source="capstan $upstream" --include="$work/capstan.h2m" --output="$man/capstan.1" "$bin"
gzip -9n "$man"/*.1

# --- Control -------------------------------------------------------------------
install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm "$root/DEBIAN/"
echo /etc/capstan/capstan.conf >"$root/DEBIAN/conffiles"
# dpkg-shlibdeps reads debian/control for the package's name.
printf 'Source: capstan\n\nPackage: capstan\nArchitecture: any\n' >"$work/debian/control"
shlibs=$(cd "$work" && dpkg-shlibdeps -O "$root/usr/bin/capstan" 2>"$work/shlibdeps.err") || {
  cat "$work/shlibdeps.err" >&2
  die "dpkg-shlibdeps failed"
}
shlibs=${shlibs#shlibs:Depends=}
[ -n "$shlibs" ] || die "dpkg-shlibdeps found no dependency"
find "$root" -path "$root/DEBIAN" -prune -o -type d -exec chmod 0755 {} +
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\n' | LC_ALL=C sort |
  grep -vxFf <(sed 's|^/||' DEBIAN/conffiles) | xargs -d '\n' md5sum) >"$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/md5sums" "$root/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s|@VERSION@|$version|" -e "s|@ARCH@|$arch|" -e "s|@MAINTAINER@|$maintainer|" \
  -e "s|@SIZE@|$size|" -e "s|@DEPENDS@|adduser, $shlibs|" packaging/debian/control.in >"$root/DEBIAN/control"
chmod 0644 "$root/DEBIAN/control"

mkdir -p "$out"
deb="$(cd "$out" && pwd)/capstan_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >&2
echo "$deb"
