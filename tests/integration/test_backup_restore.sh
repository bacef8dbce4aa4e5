#!/usr/bin/env bash
# `capstan backup` while the server enrolls phones (one session is held in
# key generation at that moment), then `capstan restore` into a new
# directory and `capstan serve` from it: the same CAPF and TFTP identities
# (a phone verifies the restored server against the original CAPF
# certificate, and authenticates with an LSC the original issued), every
# device and certificate the backup held, the file made mode 0600. And the
# refusals: an existing backup file, a restore while a server runs on the
# target, a non-empty target without --force, a file that is no backup.
. "$(dirname "$0")/lib.sh"
it_require "$CAPSTAN_BIN" "$PHONE_BIN" curl jq openssl
it_watchdog 400

srv_start main
DATA=${SRV_DATA[main]}
cap main cert export capf >"$IT_TMP/capf.pem"
cap main cert export tftp >"$IT_TMP/tftp.pem"
CAPF_SHA=$(cap main cert capf show --json | jq -r .sha256)
[[ ${#CAPF_SHA} == 64 ]] || fail "no CAPF sha256: $CAPF_SHA"

N=40
{
  echo "name,operation,auth_mode,auth_string,key,completes_by"
  for i in $(seq 1 $N); do printf 'SEP0000BAC%05d,install,null,,ec256,\n' "$i"; done
  echo "SEP0000BAC99999,install,null,,ec256,"
  echo "SEP0000BAC88888,install,null,,ec256,"
} >"$IT_TMP/devices.csv"
TOTAL=$((N + 2))
cap main device import "$IT_TMP/devices.csv" >/dev/null

# One phone enrolled before anything, keeping its LSC for later.
phone main --name SEP0000BAC99999 --auth null --ca-pem "$IT_TMP/capf.pem" \
  --save-cert "$IT_TMP/lsc.der" --save-key "$IT_TMP/lsc.key"
json_expect "$PHONE_JSON" result ok reason 1

# Two lines of phones enroll one after another (each takes a little
# while to "generate" its key), and one phone sits in key generation.
enroll_line() {
  local i
  for i in $(seq "$1" 2 $N); do
    timeout 60 "$PHONE_BIN" --connect "127.0.0.1:${SRV_CAPF[main]}" --key-cache "$IT_KEYS" \
      --json --name "$(printf 'SEP0000BAC%05d' "$i")" --auth null --keygen-delay 0.3 \
      >>"$IT_TMP/line$1.json" 2>>"$IT_TMP/phones.log"
  done
}
enroll_line 1 &
L1=$!
enroll_line 2 &
L2=$!
timeout 120 "$PHONE_BIN" --connect "127.0.0.1:${SRV_CAPF[main]}" --key-cache "$IT_KEYS" --json \
  --name SEP0000BAC88888 --auth null --keygen-delay 90 >"$IT_TMP/held.json" 2>>"$IT_TMP/phones.log" &
HELD=$!
ok_installs() { metric main 'capstan_capf_sessions_total{operation="install",result="ok"}'; }
it_wait_for 120 '(( $(ok_installs) >= 8 ))' || fail "phones did not enroll"
it_wait_for 60 '[[ $(cap main device show SEP0000BAC88888 --json | jq -r .status) == in-progress ]]' ||
  fail "the held phone is not in progress"

# --- Backup while enrolling ---------------------------------------------------------
PRE=$(cap main device list --json)
[[ $(jq -r '.[] | select(.name == "SEP0000BAC88888") | .status' <<<"$PRE") == in-progress ]] ||
  fail "the held phone is not in progress before the backup"
rc=0
timeout 120 "$CAPSTAN_BIN" backup "$IT_TMP/b1.mdb" --data-dir "$DATA" >"$OUT" 2>"$ERR" || rc=$?
[[ $rc -eq 0 ]] || { cat "$ERR" >&2; fail "backup exited $rc"; }
kill -0 "$L1" 2>/dev/null || kill -0 "$L2" 2>/dev/null ||
  fail "the phones finished before the backup: it did not run while enrolling"
has "$OUT" "backed up"
has "$OUT" "CAPF certificate sha256 $CAPF_SHA"
has "$OUT" "private keys"
assert_eq 600 "$(stat -c %a "$IT_TMP/b1.mdb")" "mode of the backup file"
ls "$IT_TMP" | grep -q 'b1.mdb.tmp' && fail "temporary file left beside the backup"
wait "$L1" "$L2"
kill -TERM "$HELD"
wait "$HELD" 2>/dev/null
POST_OK=$(ok_installs)
it_log "backup taken with $(jq '[.[] | select(.status == "succeeded")] | length' <<<"$PRE") enrolled; $POST_OK installs in the end"

# An existing file is not overwritten without --force.
cp "$IT_TMP/b1.mdb" "$IT_TMP/old.mdb"
cli_expect "$DATA" 2 backup "$IT_TMP/old.mdb"
has "$ERR" "--force"
cmp -s "$IT_TMP/b1.mdb" "$IT_TMP/old.mdb" || fail "a refused backup changed the file"
cli_expect "$DATA" 0 backup "$IT_TMP/old.mdb" --force
has "$OUT" "$TOTAL devices"

# --- Refusals -------------------------------------------------------------------------
echo "not a store" >"$IT_TMP/junk"
cli_expect "$IT_TMP/r-junk" 1 restore "$IT_TMP/junk"
has "$ERR" "is not a capstan backup"
[[ ! -e "$IT_TMP/r-junk" ]] || fail "a refused restore created the target"
cli_expect "$DATA" 1 restore "$IT_TMP/b1.mdb"
has "$ERR" "capstan serve (pid ${SRV_PID[main]}) is running"
mkdir "$IT_TMP/full"
echo x >"$IT_TMP/full/keep.txt"
cli_expect "$IT_TMP/full" 2 restore "$IT_TMP/b1.mdb"
has "$ERR" "is not empty"
[[ ! -e "$IT_TMP/full/data.mdb" ]] || fail "a refused restore wrote a store"

# --- Restore the backup taken while enrolling, serve from it -------------------------
R=$IT_TMP/restored
cli_expect "$R" 0 restore "$IT_TMP/b1.mdb"
has "$OUT" "CAPF certificate sha256 $CAPF_SHA"
SRV_DATA[r]=$R
srv_start r
assert_eq "$CAPF_SHA" "$(cap r cert capf show --json | jq -r .sha256)" "CAPF of the restored server"
cap r cert export tftp >"$IT_TMP/tftp-r.pem"
cmp -s "$IT_TMP/tftp.pem" "$IT_TMP/tftp-r.pem" || fail "the restored TFTP certificate differs"

# The phone held in key generation at the backup is no session of this
# server: reconciled at its start.
grep -q "event=reconciled_interrupted" "${SRV_LOG[r]}" || fail "the restored server reconciled nothing"
json_expect "$(device_json r SEP0000BAC88888)" status failed \
  status_reason "interrupted: the server stopped during the operation" operation install

# Every device the backup held, as it was: those enrolled before the backup
# with the same certificate and history.
RESTORED=$(cap r device list --json)
assert_eq $TOTAL "$(jq length <<<"$RESTORED")" "devices in the restored store"
jq -r '.[] | select(.status == "succeeded") | .name' <<<"$PRE" >"$IT_TMP/pre-ok"
(($(wc -l <"$IT_TMP/pre-ok") >= 8)) || fail "fewer than 8 enrolled before the backup"
while read -r dev; do
  a=$(jq -c --arg d "$dev" '.[] | select(.name == $d) | {status, md5hash, certs_issued}' <<<"$PRE")
  b=$(jq -c --arg d "$dev" '.[] | select(.name == $d) | {status, md5hash, certs_issued}' <<<"$RESTORED")
  assert_eq "$a" "$b" "$dev in the restored store"
done <"$IT_TMP/pre-ok"
# The certificates: every LSC issued before the backup is on record.
for dev in $(head -3 "$IT_TMP/pre-ok"); do
  json_expect "$(device_json r "$dev")" cert_type lsc
done

# Phones see the same server: the CAPF certificate they trust, and an LSC
# the original server issued authenticates.
cap r device set SEP0000BAC99999 --auth lsc --operation install >/dev/null
PHONE_ARGS=(--name SEP0000BAC99999 --auth lsc --cert "$IT_TMP/lsc.der" --key "$IT_TMP/lsc.key"
  --ca-pem "$IT_TMP/capf.pem")
phone r "${PHONE_ARGS[@]}"
json_expect "$PHONE_JSON" result ok reason 1
# A device still pending in the backup enrolls on the restored server.
PENDING=$(jq -r '[.[] | select(.status == "pending")][0].name' <<<"$RESTORED")
[[ "$PENDING" != null ]] || PENDING=$(jq -r '[.[] | select(.status != "succeeded")][0].name' <<<"$RESTORED")
[[ "$PENDING" != null ]] || fail "no device left to enroll in the restored store"
cap r device set "$PENDING" --operation install >/dev/null
phone r --name "$PENDING" --auth null --ca-pem "$IT_TMP/capf.pem"
json_expect "$PHONE_JSON" result ok reason 1

# --force replaces a stopped server's store.
srv_stop r
cli_expect "$R" 0 restore "$IT_TMP/old.mdb" --force
SRV_DATA[r2]=$R
srv_start r2
assert_eq $((N + 1)) "$(cap r2 device list --json | jq '[.[] | select(.status == "succeeded")] | length')" \
  "devices enrolled in the backup taken after the enrollments"
srv_stop r2
srv_stop main
it_pass
