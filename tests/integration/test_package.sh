#!/usr/bin/env bash
# The Debian package (scripts/package.sh), built from this build's binary:
#   - its contents and control data (dpkg-deb -c/-I): the binary, the unit,
#     the conffile, man pages, doc, dashboards; Depends names the package of
#     every shared library the binary needs; maintainer scripts parse;
#     man pages render without warnings; lintian's view when it is installed;
#   - the unit's exposure (systemd-analyze security --offline);
#   - as root (the test machine is a root container; otherwise the rest is
#     skipped, said so in the log): dpkg -i, then the files, the capstan
#     system user and /var/lib/capstan (0700), dpkg --verify,
#     systemd-analyze verify on the installed unit, capstan --version/--help
#     from /usr/bin as the capstan user;
#   - the server started as systemd would start it (PID 1 here is not
#     systemd): the unit's ExecStart (its binary, data directory and config
#     file) with listeners moved to loopback, as the capstan user with only
#     CAP_NET_BIND_SERVICE and no new privileges (setpriv), TFTP on port 69
#     when 127.77.0.1:69 is free; /healthz, an admin command as capstan, a
#     phone that boots over TFTP and enrolls, /metrics, SIGHUP, SIGTERM -> 0;
#     traced with strace, every system call, socket family, mapping and file
#     written is checked against the unit's sandbox (sandbox_check.py);
#   - dpkg --purge: the package's files, the unit's symlinks and the config
#     are gone, /var/lib/capstan and the user are kept (by design, see
#     packaging/debian/postrm); the test removes what it created, and the
#     machine's state (users, /etc/systemd, deb-systemd-helper's state,
#     /etc/capstan, /var/lib/capstan) is as before.
# Nothing is installed when a capstan package is installed already.
. "$(dirname "$0")/lib.sh"
it_watchdog 420
it_require dpkg-deb dpkg curl jq readelf
W="$IT_TMP/pkg"
mkdir -p "$W"
UNIT=/lib/systemd/system/capstan.service
export CAPSTAN_JOBS=2

# --- Build -------------------------------------------------------------------
"$CAPSTAN_SOURCE_DIR/scripts/package.sh" --build "$CAPSTAN_BUILD_DIR" --out "$W/out" \
  >"$W/package.out" 2>"$W/package.err" || {
  cat "$W/package.err" >&2
  fail "scripts/package.sh failed"
}
DEB=$(tail -n1 "$W/package.out")
[[ -f "$DEB" && "$DEB" == *.deb ]] || fail "package.sh printed no .deb: $(cat "$W/package.out")"
UPSTREAM=$("$CAPSTAN_BIN" --version | awk '{ print $2 }')
ARCH=$(dpkg --print-architecture)
assert_eq "capstan_${UPSTREAM}-1_${ARCH}.deb" "$(basename "$DEB")" "package file name"
it_log "built $(basename "$DEB") ($(stat -c %s "$DEB") bytes)"

# --- Contents and control data ------------------------------------------------
dpkg-deb -c "$DEB" >"$W/contents" || fail "dpkg-deb -c"
mode_of() { awk -v p="./${1#/}" '$6 == p { print $1, $2 }' "$W/contents"; }
assert_eq "-rwxr-xr-x root/root" "$(mode_of /usr/bin/capstan)" "/usr/bin/capstan mode/owner"
for f in "$UNIT" /etc/capstan/capstan.conf /usr/share/doc/capstan/copyright \
  /usr/share/doc/capstan/changelog.Debian.gz /usr/share/doc/capstan/README.md.gz \
  /usr/share/man/man1/capstan.1.gz /usr/share/man/man1/capstan-serve.1.gz; do
  assert_eq "-rw-r--r-- root/root" "$(mode_of "$f")" "$f mode/owner"
done
for dash in "$CAPSTAN_SOURCE_DIR"/dashboards/*.json; do
  [[ -f "$dash" ]] || continue
  assert_eq "-rw-r--r-- root/root" "$(mode_of "/usr/share/capstan/grafana/$(basename "$dash")")" \
    "dashboard $(basename "$dash")"
done
# One man page per command `capstan --help` lists.
for cmd in $("$CAPSTAN_BIN" --help | awk '/^commands:/ { on = 1; next } on && /^  [a-z]/ { print $1 }'); do
  [[ -n "$(mode_of "/usr/share/man/man1/capstan-$cmd.1.gz")" ]] || fail "no man page for capstan $cmd"
done
# Nothing but these trees; no /var/lib/capstan in the package (postinst makes it).
bad=$(awk '{ print $6 }' "$W/contents" | grep -vE '^\./($|etc/(capstan/.*)?$|lib/($|systemd/)|usr/($|bin/|share/($|doc/|man/|capstan/)))' || true)
[[ -z "$bad" ]] || fail "unexpected paths in the package: $bad"

dpkg-deb -f "$DEB" >"$W/control" || fail "dpkg-deb -f"
field() { awk -v f="$1:" '$1 == f { $1 = ""; sub(/^ /, ""); print }' "$W/control"; }
assert_eq capstan "$(field Package)" "Package"
assert_eq "$UPSTREAM-1" "$(field Version)" "Version"
assert_eq "$ARCH" "$(field Architecture)" "Architecture"
depends=$(field Depends)
[[ ", $depends," == *", adduser,"* ]] || fail "Depends lacks adduser: $depends"
# Every library the binary needs (readelf NEEDED, found by ldd) comes from a
# package that Depends names (libc6 for the C library).
stage="$W/x"
dpkg-deb -x "$DEB" "$stage" || fail "dpkg-deb -x"
while read -r lib; do
  path=$(ldd "$stage/usr/bin/capstan" | awk -v l="$lib" '$1 == l { print $3 }')
  [[ -n "$path" ]] || fail "ldd does not resolve $lib"
  pkg=$(dpkg -S "$(readlink -f "$path")" 2>/dev/null || dpkg -S "$path" 2>/dev/null) ||
    fail "no Debian package owns $path ($lib)"
  pkg=${pkg%%:*}
  [[ ", $depends," =~ ", $pkg"[[:space:],] ]] || fail "Depends lacks $pkg (for $lib): $depends"
done < <(readelf -d "$stage/usr/bin/capstan" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
it_log "Depends: $depends"
dpkg-deb --ctrl-tarfile "$DEB" | tar -t | sort >"$W/ctrl"
for f in control conffiles md5sums postinst prerm postrm; do
  grep -qx "./$f" "$W/ctrl" || fail "control archive lacks $f"
done
assert_eq /etc/capstan/capstan.conf "$(dpkg-deb -I "$DEB" conffiles)" "conffiles"
mkdir -p "$W/ctl"
dpkg-deb -e "$DEB" "$W/ctl" || fail "dpkg-deb -e"
for s in postinst prerm postrm; do
  sh -n "$W/ctl/$s" || fail "$s does not parse"
done
# Stripped: no debug sections, no symbol table.
if readelf -S "$stage/usr/bin/capstan" | grep -qE '\.debug_|\.symtab'; then
  fail "/usr/bin/capstan is not stripped"
fi
# The packaged config names only keys `capstan serve` takes.
while read -r key; do
  "$CAPSTAN_BIN" serve --help | grep -q -- "--$key " || fail "capstan.conf key '$key' is no option of capstan serve"
done < <(sed -n 's/^#\{0,1\}\([a-z-]*\) *=.*/\1/p' "$stage/etc/capstan/capstan.conf")
if command -v man >/dev/null 2>&1; then
  for page in "$stage"/usr/share/man/man1/*.1.gz; do
    MANWIDTH=80 LC_ALL=C.UTF-8 man --warnings -l "$page" >/dev/null 2>"$W/man.err" ||
      fail "man $page failed: $(cat "$W/man.err")"
    [[ ! -s "$W/man.err" ]] || fail "man $(basename "$page"): $(cat "$W/man.err")"
  done
  it_log "man pages render without warnings"
fi
if command -v lintian >/dev/null 2>&1; then
  timeout 300 lintian --no-tag-display-limit "$DEB" >"$W/lintian.out" 2>&1 || true
  it_log "lintian (informational): $(wc -l <"$W/lintian.out") tags"
  cat "$W/lintian.out" >&2
else
  it_log "lintian not installed: skipped (informational only)"
fi
if command -v systemd-analyze >/dev/null 2>&1; then
  # 2.0 or less: "OK" in systemd's words (1.7 when written).
  systemd-analyze security --offline=true --threshold=20 "$stage$UNIT" >"$W/security" 2>&1 ||
    fail "systemd-analyze security: $(tail -n 3 "$W/security")"
  it_log "$(grep -o 'Overall exposure level.*' "$W/security")"
fi

# --- Install --------------------------------------------------------------------
if [[ "$(id -u)" != 0 ]]; then
  it_log "not root: install, run and purge skipped (dpkg -i needs root)"
  it_pass
fi
# One package test on this machine at a time (several worktrees' suites).
lockfile=/run/lock/capstan-test-package.lock
[[ -d /run/lock ]] || lockfile=/tmp/capstan-test-package.lock
exec 9>"$lockfile"
flock -w 300 9 || fail "another package test holds $lockfile"
# dpkg's state of the capstan package: empty or not-installed when absent.
pkg_state() { dpkg-query -W -f='${db:Status-Status}' capstan 2>/dev/null || true; }
if [[ -n "$(pkg_state)" && "$(pkg_state)" != not-installed ]]; then
  it_log "a capstan package is on this machine already ($(pkg_state)): install, run and purge skipped"
  it_pass
fi
if [[ -e /var/lib/capstan ]]; then
  it_log "/var/lib/capstan exists without the package (someone's store?): install, run and purge skipped"
  it_pass
fi
it_require systemd-analyze setpriv runuser

state() {
  {
    find /etc/systemd /var/lib/systemd/deb-systemd-helper-enabled \
      /var/lib/systemd/deb-systemd-helper-masked /etc/capstan /var/lib/capstan 2>/dev/null
    getent passwd capstan
    getent group capstan
  } | LC_ALL=C sort
}
state >"$W/state.before"
HAD_USER=0 HAD_GROUP=0
getent passwd capstan >/dev/null && HAD_USER=1
getent group capstan >/dev/null && HAD_GROUP=1

# dpkg_run ARGS...: dpkg, waiting (at most 120 s) while another dpkg holds its lock.
dpkg_run() {
  local deadline=$((SECONDS + 120)) rc
  while :; do
    rc=0
    DEBIAN_FRONTEND=noninteractive timeout 300 dpkg "$@" >"$W/dpkg.out" 2>&1 || rc=$?
    if [[ $rc -ne 0 ]] && grep -qi 'lock' "$W/dpkg.out" && ((SECONDS < deadline)); then
      sleep 1
      continue
    fi
    cat "$W/dpkg.out" >&2
    return $rc
  done
}
INSTALLED=0
# Runs before lib.sh's cleanup, whatever happened: the machine as before.
pkg_cleanup() {
  if [[ -n "${PKG_LAUNCHER:-}" ]] && kill -0 "$PKG_LAUNCHER" 2>/dev/null; then
    [[ -n "${PKG_PID:-}" ]] && kill -TERM "$PKG_PID" 2>/dev/null
    kill -TERM "$PKG_LAUNCHER" 2>/dev/null
    sleep 2
    [[ -n "${PKG_PID:-}" ]] && kill -KILL "$PKG_PID" 2>/dev/null
    kill -KILL "$PKG_LAUNCHER" 2>/dev/null
  fi
  if [[ $INSTALLED == 1 ]]; then
    dpkg_run --purge capstan >/dev/null 2>&1 || echo "pkg_cleanup: dpkg --purge capstan failed" >&2
  fi
  rm -rf /var/lib/capstan # it did not exist before the test
  [[ $HAD_USER == 0 ]] && getent passwd capstan >/dev/null && userdel capstan
  [[ $HAD_GROUP == 0 ]] && getent group capstan >/dev/null && groupdel capstan
  return 0
}
trap 'rc=$?; pkg_cleanup; (exit $rc); it_cleanup' EXIT

INSTALLED=1
dpkg_run -i "$DEB" || fail "dpkg -i $(basename "$DEB")"
dpkg-query -W -f='${Status} ${Version}' capstan | grep -qx "install ok installed $UPSTREAM-1" ||
  fail "dpkg does not list capstan $UPSTREAM-1 as installed"
grep -q "systemctl enable --now capstan" "$W/dpkg.out" || fail "postinst did not say how to start the service"
for f in /usr/bin/capstan "$UNIT" /etc/capstan/capstan.conf /usr/share/man/man1/capstan.1.gz \
  /usr/share/doc/capstan/copyright; do
  [[ -f "$f" ]] || fail "$f not installed"
done
out=$(dpkg --verify capstan 2>&1) && [[ -z "$out" ]] || fail "dpkg --verify capstan: $out"
IFS=: read -r _ _ uid gid _ home shell < <(getent passwd capstan) || fail "no capstan user"
((uid < 1000)) || fail "capstan is not a system user (uid $uid)"
assert_eq /var/lib/capstan "$home" "capstan's home"
assert_eq /usr/sbin/nologin "$shell" "capstan's shell"
assert_eq capstan "$(getent group "$gid" | cut -d: -f1)" "capstan's group"
assert_eq "capstan capstan 700" "$(stat -c '%U %G %a' /var/lib/capstan)" "/var/lib/capstan"
it_log "installed: capstan user uid $uid, /var/lib/capstan 0700"

systemd-analyze verify "$UNIT" >"$W/verify" 2>&1 || fail "systemd-analyze verify: $(cat "$W/verify")"
[[ ! -s "$W/verify" ]] || fail "systemd-analyze verify warns: $(cat "$W/verify")"
it_log "systemd-analyze verify $UNIT: clean"

assert_eq "capstan $UPSTREAM" "$(runuser -u capstan -- /usr/bin/capstan --version)" "capstan --version as capstan"
runuser -u capstan -- /usr/bin/capstan --help >"$W/help" 2>&1 || fail "capstan --help as capstan"
has "$W/help" "serve"
runuser -u capstan -- /usr/bin/capstan serve --help >"$W/help" 2>&1 || fail "capstan serve --help"
has "$W/help" "--config FILE"

# --- Run as the unit would ------------------------------------------------------
unit_value() { sed -n "s/^$1=//p" "$UNIT" | tail -n1; }
exec_start=$(unit_value ExecStart)
[[ "$exec_start" == "/usr/bin/capstan serve "* ]] || fail "ExecStart: $exec_start"
assert_eq capstan "$(unit_value User)" "User="
assert_eq CAP_NET_BIND_SERVICE "$(unit_value AmbientCapabilities)" "AmbientCapabilities="
assert_eq CAP_NET_BIND_SERVICE "$(unit_value CapabilityBoundingSet)" "CapabilityBoundingSet="
assert_eq yes "$(unit_value NoNewPrivileges)" "NoNewPrivileges="
workdir=$(unit_value WorkingDirectory)
umask_value=$(unit_value UMask)
tftp_listen=127.0.0.1:0
if "$IT_PYTHON" -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).bind(("127.77.0.1", 69))' 2>/dev/null; then
  tftp_listen=127.77.0.1:69
else
  it_log "127.77.0.1:69/udp is taken: TFTP on a high port (the port-69 capability is not shown)"
fi
tracer=()
if it_sanitized; then
  it_log "sanitizer build: the sandbox trace is skipped (the runtime's own calls are not the Release build's)"
elif ! command -v strace >/dev/null 2>&1 || ! strace -qq -o /dev/null true 2>/dev/null; then
  it_log "strace not installed or not permitted: the sandbox trace is skipped"
else
  mkdir -p "$W/trace"
  tracer=(strace -f -ff -qq -o "$W/trace/st")
fi
PKG_LOG="$W/server.log"
: >"$PKG_LOG"
# shellcheck disable=SC2086 # ExecStart is split into words as systemd does (no quotes in it)
(
  cd "$workdir" && umask "$umask_value" &&
    exec "${tracer[@]}" setpriv --reuid=capstan --regid=capstan --init-groups \
      --inh-caps=-all,+net_bind_service --ambient-caps=-all,+net_bind_service \
      --bounding-set=-all,+net_bind_service --no-new-privs \
      $exec_start --capf-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
      --http-listen 127.0.0.1:0 --tftp-listen "$tftp_listen" --drain-seconds 5
) </dev/null >>"$PKG_LOG" 2>&1 &
PKG_LAUNCHER=$!
bound=30
it_sanitized && bound=90
it_wait_for "$bound" "grep -q 'event=ready' '$PKG_LOG' || ! kill -0 $PKG_LAUNCHER 2>/dev/null" ||
  fail "the packaged server was not ready within ${bound}s: $(tail -n 20 "$PKG_LOG")"
grep -q 'event=ready' "$PKG_LOG" || fail "the packaged server exited: $(tail -n 20 "$PKG_LOG")"
PKG_PID=$(sed -n 's/.*event=ready.* pid=\([0-9]*\).*/\1/p' "$PKG_LOG" | head -n1)
ADMIN=$(sed -n 's/.*event=listeners admin_port=\([0-9]*\).*/\1/p' "$PKG_LOG" | head -n1)
TFTP=$(sed -n 's/.*event=listeners.* tftp_port=\([0-9]*\).*/\1/p' "$PKG_LOG" | head -n1)
CAPF=$(sed -n 's/.*event=ready.* capf_port=\([0-9]*\).*/\1/p' "$PKG_LOG" | head -n1)
[[ -n "$PKG_PID" && -n "$ADMIN" && -n "$TFTP" && -n "$CAPF" ]] || fail "ports or pid not in the log"
grep -q 'event=ready.*data_dir=/var/lib/capstan' "$PKG_LOG" || fail "not serving /var/lib/capstan"
grep -q 'event=initialised dir=/var/lib/capstan' "$PKG_LOG" || fail "the first start did not initialise /var/lib/capstan"
assert_eq capstan "$(ps -o user= -p "$PKG_PID" | tr -d ' ')" "the server's user"
# CAP_NET_BIND_SERVICE is bit 10: 0x400 in every set, nothing else.
caps=$(awk '/^Cap(Prm|Eff|Bnd|Amb):/ { printf "%s%s", sep, $2; sep = " " }' "/proc/$PKG_PID/status")
assert_eq "0000000000000400 0000000000000400 0000000000000400 0000000000000400" "$caps" \
  "the server's capabilities (permitted, effective, bounding, ambient)"
grep -q '^NoNewPrivs:[[:space:]]*1' "/proc/$PKG_PID/status" || fail "the server may gain privileges"
assert_eq ok "$(curl -sf --max-time 5 "http://127.0.0.1:$ADMIN/healthz")" "/healthz"
it_log "server up as capstan (pid $PKG_PID, TFTP on ${tftp_listen%:*}:$TFTP), CAP_NET_BIND_SERVICE only"

runuser -u capstan -- /usr/bin/capstan device add SEP00AA11BB22CC --operation install --auth null \
  --data-dir /var/lib/capstan >"$W/add.out" 2>&1 || fail "capstan device add as capstan: $(cat "$W/add.out")"
SRV_CAPF[pkg]=$CAPF
SRV_ADMIN[pkg]=$ADMIN
tftp_host=${tftp_listen%:*}
phone pkg --name SEP00AA11BB22CC --auth null --boot tftp --files "$tftp_host:$TFTP"
json_expect "$PHONE_JSON" result ok enrolled true
metric_expect pkg 'capstan_capf_sessions_total{operation="install",result="ok"}' 1
# Every admin route in the trace too (the status page scans the store on the thread pool).
for path in /status /status.json /api/devices /api/devices/SEP00AA11BB22CC; do
  curl -sf --max-time 10 -o /dev/null "http://127.0.0.1:$ADMIN$path" || fail "GET $path"
done
assert_eq "capstan capstan 600" "$(stat -c '%U %G %a' /var/lib/capstan/data.mdb)" "data.mdb"
# The README's backup: a consistent copy while the server runs (mdb_copy).
BACKUP=""
if command -v mdb_copy >/dev/null 2>&1; then
  BACKUP="$W/backup"
  (umask 077 && mkdir "$BACKUP" && mdb_copy -c /var/lib/capstan "$BACKUP") || fail "mdb_copy -c /var/lib/capstan"
  assert_eq 600 "$(stat -c %a "$BACKUP/data.mdb")" "the backup's mode"
  cli_expect "$BACKUP" 0 device show SEP00AA11BB22CC --json
  json_expect "$(cat "$OUT")" status succeeded
  cli_expect "$BACKUP" 0 cert export capf
  mv "$OUT" "$W/capf.backup.pem"
  cli_expect /var/lib/capstan 0 cert export capf
  cmp -s "$OUT" "$W/capf.backup.pem" || fail "the backup's CAPF certificate is not the live one"
  rm -f "$BACKUP/lock.mdb"
else
  it_log "mdb_copy not installed (package lmdb-utils): the backup is not shown"
fi
kill -HUP "$PKG_PID"
it_wait_for 10 "grep -q 'event=reload' '$PKG_LOG'" || fail "no reload on SIGHUP"
kill -TERM "$PKG_PID"
rc=0
timeout 30 tail --pid="$PKG_PID" -f /dev/null || fail "the server did not exit within 30 s of SIGTERM"
wait "$PKG_LAUNCHER" || rc=$?
PKG_LAUNCHER=""
assert_eq 0 "$rc" "exit status after SIGTERM"
grep -q 'event=exit code=0' "$PKG_LOG" || fail "no 'event=exit code=0'"
it_log "enrolled a phone over TFTP and CAPF, reloaded, drained, exited 0"
if [[ -n "$BACKUP" ]]; then
  # The README's restore: the copy's data.mdb in place, owned by capstan.
  runuser -u capstan -- /usr/bin/capstan device remove SEP00AA11BB22CC --data-dir /var/lib/capstan \
    >/dev/null 2>&1 || fail "capstan device remove as capstan"
  install -o capstan -g capstan -m 0600 "$BACKUP/data.mdb" /var/lib/capstan/data.mdb
  runuser -u capstan -- /usr/bin/capstan device show SEP00AA11BB22CC --json \
    --data-dir /var/lib/capstan >"$W/restored.json" 2>&1 || fail "the device is not back after the restore"
  json_expect "$(cat "$W/restored.json")" status succeeded
  it_log "hot backup with mdb_copy while serving, restored after a removal"
fi
if [[ ${#tracer[@]} -gt 0 ]]; then
  "$IT_PYTHON" "$IT_DIR/sandbox_check.py" "$UNIT" /usr/bin/capstan "$workdir" "$W"/trace/st.* \
    >"$W/sandbox" 2>&1 || fail "the unit's sandbox would refuse what the server did:
$(cat "$W/sandbox")"
  it_log "$(cat "$W/sandbox")"
fi

# --- Remove ---------------------------------------------------------------------
dpkg_run --purge capstan || fail "dpkg --purge capstan"
INSTALLED=0
[[ -z "$(pkg_state)" || "$(pkg_state)" == not-installed ]] || fail "capstan still known to dpkg: $(pkg_state)"
for f in /usr/bin/capstan "$UNIT" /etc/capstan /usr/share/man/man1/capstan.1.gz /usr/share/doc/capstan; do
  [[ ! -e "$f" ]] || fail "$f left after purge"
done
grep -q 'kept /var/lib/capstan' "$W/dpkg.out" || fail "purge did not say it keeps /var/lib/capstan"
[[ -f /var/lib/capstan/data.mdb ]] || fail "purge removed the store (it must keep it)"
getent passwd capstan >/dev/null || fail "purge removed the capstan user (it must keep it with the store)"
pkg_cleanup
state >"$W/state.after"
diff "$W/state.before" "$W/state.after" >"$W/state.diff" || fail "the machine differs after purge and clean-up:
$(cat "$W/state.diff")"
it_log "purged; the machine is as before"
it_pass
