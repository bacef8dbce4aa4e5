#!/usr/bin/env bash
# Every CAPF operation (install, troubleshoot/fetch, delete, none) in the
# authentication modes a phone can complete (string, null, LSC) with RSA and
# EC keys, against the real server and the simulated phone (capf-protocol.md,
# product.md R5, R6, R8). For each session: the phone's result and END_SESSION
# reason, the server's view of the device (`device show --json`), the md5hash
# of the phone's certificate, and the LSC content (R8) and chain to the CAPF
# certificate. At the end, /metrics counts exactly the sessions caused here.
# (MIC authentication needs a trusted manufacturing CA, which no CLI command
# can upload yet: test_capf_auth_failures covers "MIC invalid".)
. "$(dirname "$0")/lib.sh"
it_require "$CAPSTAN_BIN" "$PHONE_BIN" curl jq md5sum openssl "$IT_PYTHON"
it_watchdog 300

VALIDITY=90
# The validity is set before the server starts: a live change lands within
# about a second, and the first install must not race it.
srv_prepare main --subject "O=Capstan Test,OU=Voice,L=Springfield,ST=Oregon,C=US"
cap main config set validity-days $VALIDITY >/dev/null
srv_start main
cap main cert export capf >"$IT_TMP/capf.pem"
grep -q 'BEGIN CERTIFICATE' "$IT_TMP/capf.pem" || fail "cert export capf printed no PEM"
# The CAPF subject carries the attributes LSCs copy (R8).
subj=$(openssl x509 -in "$IT_TMP/capf.pem" -noout -subject -nameopt RFC2253) || fail "CAPF PEM unreadable"
[[ "$subj" == *"OU=Voice"* && "$subj" == *"O=Capstan Test"* && "$subj" == *"C=US"* ]] ||
  fail "CAPF subject lacks the --subject attributes: $subj"

# Sessions caused, by operation label and result, to compare with /metrics.
declare -A EXPECT=()
count() { EXPECT["$1/$2"]=$((${EXPECT["$1/$2"]:-0} + 1)); }

# The phone's files: $IT_TMP/<device>.cert.der / .key.der (its LSC and key).
cert_of() { echo "$IT_TMP/$1.cert.der"; }
key_of() { echo "$IT_TMP/$1.key.der"; }

# phone_args DEVICE MODE: the credentials a phone in MODE sends, plus its LSC
# when it has one (fetch returns it).
phone_args() {
  local dev=$1 mode=$2
  PARGS=(--name "$dev" --auth "$mode")
  [[ $mode == string ]] && PARGS+=(--auth-string "${AUTHSTR[$dev]}")
  if [[ -f "$(cert_of "$dev")" ]]; then
    PARGS+=(--cert "$(cert_of "$dev")" --key "$(key_of "$dev")")
  fi
  PARGS+=(--save-cert "$(cert_of "$dev").new" --save-key "$(key_of "$dev").new" --ca-pem "$IT_TMP/capf.pem")
}

# The phone keeps what it holds at the end of the session.
phone_keep_state() {
  local dev=$1
  if [[ -f "$(cert_of "$dev").new" ]]; then
    mv "$(cert_of "$dev").new" "$(cert_of "$dev")"
    mv "$(key_of "$dev").new" "$(key_of "$dev")"
  else
    rm -f "$(cert_of "$dev")" "$(key_of "$dev")"
  fi
}

# Checks the device record after a successful operation.
expect_device() {
  local dev=$1 op=$2 md5=$3
  local dj
  dj=$(device_json main "$dev")
  json_expect "$dj" status succeeded attempts 1 last_operation "$op" operation none
  json_expect "$dj" md5hash "$md5"
  if [[ $md5 != null ]]; then json_expect "$dj" cert_type lsc; fi
  DEV_JSON=$dj
}

install() {
  local dev=$1 mode=$2 key=$3
  phone_args "$dev" "$mode"
  phone main "${PARGS[@]}"
  json_expect "$PHONE_JSON" result ok reason 1 operation install error none key "$key"
  count install ok
  phone_keep_state "$dev"
  local cert
  cert=$(cert_of "$dev")
  [[ -f "$cert" ]] || fail "$dev: the phone saved no LSC after install"
  local md5
  md5=$(md5_of "$cert")
  json_expect "$PHONE_JSON" cert_md5 "$md5"
  expect_device "$dev" install "$md5"
  # The newest history entry is this certificate, installed.
  # The history holds this certificate (by serial), installed.
  local serial hstatus issued
  serial=$(openssl x509 -inform der -in "$cert" -noout -serial) || fail "$dev: LSC unreadable"
  serial=${serial#serial=}
  serial=${serial,,}
  while ((${#serial} < 32)); do serial=0$serial; done
  read -r hstatus issued < <(jq -r --arg s "$serial" '.cert_history[] | select(.serial == $s)
    | "\(.status) \(.issued_at)"' <<<"$DEV_JSON")
  assert_eq installed "${hstatus:-}" "$dev: history status of LSC $serial"
  # The LSC content (R8) is checked for all of them at the end, in one run.
  cp "$cert" "$IT_TMP/lsc-$serial.der"
  cp "$(key_of "$dev")" "$IT_TMP/lsc-$serial.key.der"
  printf 'check-lsc --cert %q --capf %q --name %q --validity-days %d --key %q --private-key %q --serial %q --issued-at %q\n' \
    "$IT_TMP/lsc-$serial.der" "$IT_TMP/capf.pem" "$dev" $VALIDITY "$key" \
    "$IT_TMP/lsc-$serial.key.der" "$serial" "$issued" >>"$IT_TMP/lsc-checks"
}

fetch() {
  local dev=$1 mode=$2
  local md5
  md5=$(md5_of "$(cert_of "$dev")")
  phone_args "$dev" "$mode"
  phone main "${PARGS[@]}"
  json_expect "$PHONE_JSON" result ok reason 0 operation fetch error none cert_md5 "$md5"
  count troubleshoot ok
  phone_keep_state "$dev"
  expect_device "$dev" troubleshoot "$md5"
}

none_op() {
  local dev=$1 mode=$2
  phone_args "$dev" "$mode"
  phone main "${PARGS[@]}"
  json_expect "$PHONE_JSON" result end reason 0 operation none error none
  count none no_action
  phone_keep_state "$dev"
  [[ -f "$(cert_of "$dev")" ]] || fail "$dev: the phone lost its LSC on a 'none' session"
}

delete() {
  local dev=$1 mode=$2
  phone_args "$dev" "$mode"
  phone main "${PARGS[@]}"
  json_expect "$PHONE_JSON" result ok reason 1 operation delete error none cert_md5 ""
  count delete ok
  phone_keep_state "$dev"
  [[ ! -f "$(cert_of "$dev")" ]] || fail "$dev: the phone still holds an LSC after delete"
  expect_device "$dev" delete null
  local left
  left=$(jq -r '[.cert_history[] | select(.status == "installed")] | length' <<<"$DEV_JSON")
  assert_eq 0 "$left" "$dev: installed certificates left in the history after delete"
}

# One phone through install, fetch, none and delete in MODE with KEY. A phone
# in LSC mode first gets its LSC with a null-string install.
declare -A AUTHSTR=()
n=0
run_phone() {
  local mode=$1 key=$2
  n=$((n + 1))
  local dev
  dev=$(printf 'SEP0000CA%06X' $n)
  it_log "$dev: auth $mode, key $key"
  local add=(--auth "$mode" --key "$key")
  if [[ $mode == string ]]; then
    AUTHSTR[$dev]=$(printf '%d' $((1000 + n * 7919 % 9000)))
    add+=(--auth-string "${AUTHSTR[$dev]}")
  elif [[ $mode == lsc ]]; then
    add=(--auth null --key "$key")
  fi
  cap main device add "$dev" --operation install "${add[@]}" >/dev/null
  local dj
  dj=$(device_json main "$dev")
  json_expect "$dj" status pending attempts 0 operation install md5hash null
  if [[ $mode == lsc ]]; then
    install "$dev" null "$key"
    cap main device set "$dev" --auth lsc --operation install >/dev/null
  fi
  install "$dev" "$mode" "$key"
  cap main device set "$dev" --operation troubleshoot >/dev/null
  fetch "$dev" "$mode"
  cap main device set "$dev" --operation none >/dev/null
  none_op "$dev" "$mode"
  cap main device set "$dev" --operation delete >/dev/null
  delete "$dev" "$mode"
  # Nothing scheduled now: a new session is told "no action".
  phone_args "$dev" "$mode"
  [[ $mode == lsc ]] && return 0 # no LSC left to authenticate with
  phone main "${PARGS[@]}"
  json_expect "$PHONE_JSON" result end reason 0
  count none no_action
}

for mode in string null lsc; do
  for key in rsa1024 ec256; do
    run_phone "$mode" "$key"
  done
done

# The default key size (RSA 2048) once, and a null string sent as no
# AUTH_PASSWORD element at all, which the null mode accepts too.
n=$((n + 1))
dev=$(printf 'SEP0000CA%06X' $n)
cap main device add "$dev" --operation install --auth null >/dev/null
json_expect "$(device_json main "$dev")" key rsa2048
install "$dev" absent rsa2048

[[ $(wc -l <"$IT_TMP/lsc-checks") -eq ${EXPECT[install/ok]} ]] || fail "not every install was checked"
py batch "$IT_TMP/lsc-checks" || fail "LSC content (R8): see above"

# /metrics counts what happened, operation by operation, result by result.
body=$(curl -sf --max-time 10 "http://127.0.0.1:${SRV_ADMIN[main]}/metrics") || fail "GET /metrics"
for op in unknown none install delete troubleshoot; do
  for result in ok no_action expired unknown_device auth_failed failed retry_later protocol_error \
    timeout disconnected tls_failed server_error shutdown; do
    series="capstan_capf_sessions_total{operation=\"$op\",result=\"$result\"}"
    got=$(awk -v s="$series" '$1 == s { print $2 }' <<<"$body")
    assert_eq "${EXPECT["$op/$result"]:-0}" "$got" "$series"
  done
done
total=0
for v in "${EXPECT[@]}"; do total=$((total + v)); done
metric_expect main 'capstan_capf_handshakes_total{result="ok"}' $total
metric_expect main 'capstan_capf_sessions_active' 0
metric_expect main 'capstan_capf_keygen_active' 0
metric_expect main 'capstan_capf_keygen_waiting' 0
metric_expect main 'capstan_capf_certificates_issued_total' "${EXPECT[install/ok]}"
for mode in string null lsc mic; do
  metric_expect main "capstan_capf_auth_failures_total{mode=\"$mode\"}" 0
done
# Each operation waited for its own commit before END_SESSION, and the
# sessions ran one after the other: at least one commit each (group commit
# only batches what is queued at once).
commits=$(metric main capstan_storage_commit_duration_seconds_count)
ops=$((EXPECT[install/ok] + EXPECT[troubleshoot/ok] + EXPECT[delete/ok]))
((commits >= ops)) || fail "capstan_storage_commit_duration_seconds_count $commits < $ops operations"

# Every thread (loop, crypto workers, storage writer) runs SCHED_BATCH, so a
# woken loop does not preempt a signature: field 41 of /proc/TID/stat is the
# policy (3), counted from the last ')' since the name may hold spaces.
threads=0
for stat in /proc/"${SRV_PID[main]}"/task/*/stat; do
  policy=$(sed 's/.*) //' "$stat" | awk '{ print $39 }')
  [[ "$policy" == 3 ]] || fail "thread $stat runs scheduling policy $policy, not SCHED_BATCH (3)"
  threads=$((threads + 1))
done
# The loop, the writer and at least one crypto worker, which ran above.
((threads >= 3)) || fail "only $threads threads in the server"

srv_stop main
it_pass
