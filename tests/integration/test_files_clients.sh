#!/usr/bin/env bash
# Real clients against the real server: curl (HTTP and TFTP), tftp-hpa and
# atftp download the same bytes for signed files, configurations and static
# files from --files-dir; HEAD, Content-Length, Cache-Control: no-store and
# keep-alive reuse over HTTP; names outside the files directory (../, a
# symlink pointing out, absolute paths) are refused and never served; the
# plain .cnf.xml of an encrypted device is never served by any client.
#
# Env: CAPSTAN_BIN (capstan), CAPSTAN_SANITIZE (ON: longer waits).
set -u -o pipefail

CAPSTAN=${CAPSTAN_BIN:-${CAPSTAN_BUILD_DIR:-build}/capstan}
SLOW=1
case "${CAPSTAN_SANITIZE:-}" in ON|on|1|TRUE|true|YES|yes) SLOW=4 ;; esac
T_CLIENT=$((20 * SLOW))

fail() {
  echo "FAIL: $*" >&2
  if [ -n "${LOGF:-}" ] && [ -f "$LOGF" ]; then
    echo "--- server log (tail) ---" >&2
    tail -n 40 "$LOGF" >&2
  fi
  exit 1
}
ok() { echo "ok $*" >&2; }

for tool in curl tftp atftp cmp; do
  command -v "$tool" >/dev/null || fail "$tool is not installed"
done
[ -x "$CAPSTAN" ] || fail "capstan binary not found: $CAPSTAN"

WORK=$(mktemp -d /tmp/capstan-files-clients-XXXXXX)
SRV_PID=
cleanup() {
  if [ -n "$SRV_PID" ] && kill -0 "$SRV_PID" 2>/dev/null; then
    kill -KILL "$SRV_PID" 2>/dev/null
    wait "$SRV_PID" 2>/dev/null
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

DATA=$WORK/data
FILES=$WORK/files
OUT=$WORK/out
LOGF=$WORK/serve.log
mkdir -p "$FILES/sub" "$OUT"
DEV=SEP001122334455
ENC=SEP0011223344EE

# The files directory: a 1 MiB firmware image, a 4 KiB text configuration, a
# secret next to (outside) the directory and symlinks pointing out of it.
head -c 1048576 /dev/urandom >"$FILES/fw-1mib.bin"
{
  echo '<?xml version="1.0" encoding="UTF-8"?>'
  echo '<Default>'
  for i in $(seq 1 400); do printf '  <item%03d/>\n' "$((i % 1000))"; done
} | head -c 4096 >"$FILES/XMLDefault.cnf.xml"
[ "$(stat -c %s "$FILES/XMLDefault.cnf.xml")" = 4096 ] || fail "could not make the 4 KiB config"
echo "top secret: must never be served" >"$WORK/secret.txt"
ln -s "$WORK/secret.txt" "$FILES/link-out.txt"
ln -s ../secret.txt "$FILES/link-rel.txt"
ln -s "$WORK" "$FILES/sub/dirlink"

"$CAPSTAN" init --data-dir "$DATA" >/dev/null 2>&1 || fail "capstan init"
"$CAPSTAN" device add $DEV --operation install --auth null --key rsa2048 --data-dir "$DATA" \
  >/dev/null || fail "device add $DEV"
"$CAPSTAN" device add $ENC --operation install --auth null --key rsa2048 \
  --encrypted-config on --data-dir "$DATA" >/dev/null || fail "device add $ENC"

"$CAPSTAN" serve --init --data-dir "$DATA" --capf-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
  --http-listen 127.0.0.1:0 --tftp-listen 127.0.0.1:0 --files-dir "$FILES" \
  --drain-seconds 5 2>"$LOGF" &
SRV_PID=$!
for _ in $(seq 1 $((100 * SLOW))); do
  grep -q 'event=ready' "$LOGF" && break
  kill -0 $SRV_PID 2>/dev/null || fail "server exited during start"
  sleep 0.1
done
grep -q 'event=ready' "$LOGF" || fail "server not ready"
LISTEN=$(grep -m1 'event=listeners' "$LOGF")
HTTP=$(sed -n 's/.* http_port=\([0-9]*\).*/\1/p' <<<"$LISTEN")
TFTP=$(sed -n 's/.* tftp_port=\([0-9]*\).*/\1/p' <<<"$LISTEN")
ADMIN=$(sed -n 's/.* admin_port=\([0-9]*\).*/\1/p' <<<"$LISTEN")
[ -n "$HTTP" ] && [ -n "$TFTP" ] && [ -n "$ADMIN" ] || fail "ports not logged: $LISTEN"
[ "$HTTP" != 0 ] && [ "$TFTP" != 0 ] || fail "a file listener is off: $LISTEN"

# --- clients ----------------------------------------------------------------

http_get() { # name out -> prints the HTTP status
  curl -sS --max-time $T_CLIENT -o "$2" -w '%{http_code}' "http://127.0.0.1:$HTTP/$1"
}
curl_tftp() { # name out [curl options...]
  local name=$1 out=$2
  shift 2
  timeout $((T_CLIENT + 5)) curl -sS --max-time $T_CLIENT "$@" -o "$out" "tftp://127.0.0.1:$TFTP/$name"
}
hpa() { # name out [mode] -> non-zero on a server error (tftp-hpa exits 0 then)
  local msg
  msg=$(timeout $((T_CLIENT + 5)) tftp -m "${3:-octet}" 127.0.0.1 "$TFTP" -c get "$1" "$2" 2>&1)
  local rc=$?
  [ $rc = 0 ] || return $rc
  ! grep -qi 'error\|timed out' <<<"$msg"
}
atftp_get() { # name out [atftp options...]
  local name=$1 out=$2
  shift 2
  timeout $((T_CLIENT + 5)) atftp --get -r "$name" -l "$out" "$@" 127.0.0.1 "$TFTP" >/dev/null 2>&1
}

# --- the same bytes from every client ----------------------------------------

NAMES="ITLFile.tlv ITL$DEV.tlv $DEV.cnf.xml $DEV.cnf.xml.sgn $ENC.cnf.xml.sgn fw-1mib.bin XMLDefault.cnf.xml"
for name in $NAMES; do
  ref=$OUT/$name.http
  st=$(http_get "$name" "$ref") || fail "curl HTTP $name"
  [ "$st" = 200 ] || fail "HTTP $name: status $st"
  [ -s "$ref" ] || fail "HTTP $name: empty"
  curl_tftp "$name" "$OUT/$name.curl1428" --tftp-blksize 1428 || fail "curl tftp $name blksize 1428"
  curl_tftp "$name" "$OUT/$name.curl512" --tftp-blksize 512 || fail "curl tftp $name blksize 512"
  curl_tftp "$name" "$OUT/$name.curlno" --tftp-no-options || fail "curl tftp $name without options"
  hpa "$name" "$OUT/$name.hpa" || fail "tftp-hpa $name"
  atftp_get "$name" "$OUT/$name.atftp" --option "blksize 1428" --option "tsize 0" \
    --option "timeout 2" --option "windowsize 4" || fail "atftp $name with options"
  atftp_get "$name" "$OUT/$name.atftp-plain" || fail "atftp $name without options"
  for v in curl1428 curl512 curlno hpa atftp atftp-plain; do
    cmp -s "$ref" "$OUT/$name.$v" || fail "$name: $v bytes differ from HTTP"
  done
  ok "$name: $(stat -c %s "$ref") bytes, same over HTTP, curl (1428/512/no options), tftp-hpa, atftp (options/none)"
done
cmp -s "$FILES/fw-1mib.bin" "$OUT/fw-1mib.bin.http" || fail "firmware differs from the file on disk"
cmp -s "$FILES/XMLDefault.cnf.xml" "$OUT/XMLDefault.cnf.xml.http" || fail "4 KiB config differs from disk"

# atftp shows the OACK with --trace: every option acknowledged, tsize the size.
trace=$(timeout $((T_CLIENT + 5)) atftp --get -r fw-1mib.bin -l "$OUT/trace.bin" --option "blksize 1428" \
  --option "tsize 0" --option "timeout 2" --option "windowsize 4" --trace 127.0.0.1 "$TFTP" 2>&1) ||
  fail "atftp --trace"
oack=$(grep 'received OACK' <<<"$trace") || fail "atftp saw no OACK"
for want in "tsize: 1048576" "blksize: 1428" "timeout: 2" "windowsize: 4"; do
  grep -q "$want" <<<"$oack" || fail "OACK lacks '$want': $oack"
done
ok "OACK: $oack"

# netascii (tftp-hpa converts CRLF back): the text config arrives unchanged.
hpa XMLDefault.cnf.xml "$OUT/netascii.xml" netascii || fail "tftp-hpa netascii"
cmp -s "$FILES/XMLDefault.cnf.xml" "$OUT/netascii.xml" || fail "netascii transfer altered the config"
ok "netascii round trip"

# --- HTTP: HEAD, headers, keep-alive -------------------------------------------

for name in $DEV.cnf.xml.sgn fw-1mib.bin XMLDefault.cnf.xml; do
  size=$(stat -c %s "$OUT/$name.http")
  head=$(curl -sS --max-time $T_CLIENT -I "http://127.0.0.1:$HTTP/$name" | tr -d '\r') || fail "HEAD $name"
  grep -q '^HTTP/1.1 200' <<<"$head" || fail "HEAD $name: $head"
  grep -qi "^content-length: $size\$" <<<"$head" || fail "HEAD $name: Content-Length is not $size: $head"
  grep -qi '^cache-control: no-store$' <<<"$head" || fail "HEAD $name: no Cache-Control: no-store"
  get=$(curl -sS --max-time $T_CLIENT -D - -o /dev/null "http://127.0.0.1:$HTTP/$name" | tr -d '\r')
  grep -qi "^content-length: $size\$" <<<"$get" || fail "GET $name: Content-Length is not $size"
  grep -qi '^cache-control: no-store$' <<<"$get" || fail "GET $name: no Cache-Control: no-store"
done
ok "HEAD and GET: Content-Length equals the body, Cache-Control: no-store"

# Three requests on one curl run: one connection, reused.
conns=$(curl -sS --max-time $T_CLIENT -o /dev/null -o /dev/null -o /dev/null -w '%{num_connects} ' \
  "http://127.0.0.1:$HTTP/ITLFile.tlv" "http://127.0.0.1:$HTTP/$DEV.cnf.xml.sgn" \
  "http://127.0.0.1:$HTTP/fw-1mib.bin") || fail "keep-alive run"
[ "$conns" = "1 0 0 " ] || fail "keep-alive: connections per request '$conns', expected '1 0 0 '"
ok "keep-alive: one connection for three requests"

# --- refusals -------------------------------------------------------------------

SECRET=$(cat "$WORK/secret.txt")
refused() { # name: HTTP 404 and an error from every TFTP client, never the secret
  local name=$1 st
  st=$(curl -sS --max-time $T_CLIENT --path-as-is -o "$OUT/r.http" -w '%{http_code}' \
    "http://127.0.0.1:$HTTP/$name") || fail "curl HTTP $name"
  [ "$st" = 404 ] || fail "HTTP $name: status $st, expected 404"
  ! grep -q "top secret\|<device" "$OUT/r.http" || fail "HTTP $name served the file"
  rm -f "$OUT/r.curl" "$OUT/r.hpa" "$OUT/r.atftp"
  if curl_tftp "$name" "$OUT/r.curl" --tftp-blksize 1428 2>/dev/null; then
    fail "curl tftp $name succeeded"
  fi
  if hpa "$name" "$OUT/r.hpa"; then fail "tftp-hpa $name succeeded"; fi
  if atftp_get "$name" "$OUT/r.atftp" --option "blksize 1428"; then fail "atftp $name succeeded"; fi
  for f in "$OUT/r.curl" "$OUT/r.hpa" "$OUT/r.atftp"; do
    [ ! -s "$f" ] || fail "TFTP $name: a client received $(stat -c %s "$f") bytes"
  done
}

# ../ out of the files directory, plain and hidden in a path.
refused "../secret.txt"
refused "sub/../../secret.txt"
refused "sub/dirlink/secret.txt"
# Symlinks in the directory pointing out of it.
refused "link-out.txt"
refused "link-rel.txt"
# Absolute names and encoded traversal over HTTP.
refused "/$WORK/secret.txt"
st=$(curl -sS --max-time $T_CLIENT --path-as-is -o "$OUT/r.http" -w '%{http_code}' \
  "http://127.0.0.1:$HTTP/..%2fsecret.txt")
[ "$st" = 404 ] && ! grep -q "top secret" "$OUT/r.http" || fail "HTTP ..%2fsecret.txt: $st"
ok "traversal, symlinks out, absolute names: refused by HTTP, curl, tftp-hpa and atftp"

# The plain configuration of an encrypted device: never, by any client.
refused "$ENC.cnf.xml"
grep -q "encrConfig>true" "$OUT/$ENC.cnf.xml.sgn.http" || fail "$ENC .sgn is not the partial config"
ok "encrypted device: plain .cnf.xml refused by every client"

# Missing files.
st=$(http_get nothing-here.bin "$OUT/nf") || fail "curl 404"
[ "$st" = 404 ] || fail "missing file: HTTP $st"
msg=$(timeout $((T_CLIENT + 5)) tftp -m octet 127.0.0.1 "$TFTP" -c get nothing-here.bin "$OUT/nf.hpa" 2>&1)
grep -q 'Error code 1' <<<"$msg" || fail "missing file over tftp-hpa: '$msg', expected error 1"
ok "missing files: 404 and TFTP error 1"

# --- still healthy, clean exit -----------------------------------------------------
st=$(curl -sS --max-time $T_CLIENT -o /dev/null -w '%{http_code}' "http://127.0.0.1:$ADMIN/healthz")
[ "$st" = 200 ] || fail "/healthz: $st"
kill -TERM $SRV_PID
wait $SRV_PID
rc=$?
SRV_PID=
[ $rc = 0 ] || fail "server exited $rc after SIGTERM"
grep -q 'ERROR: AddressSanitizer\|runtime error:' "$LOGF" && fail "sanitizer report in the server log"
echo PASS >&2
