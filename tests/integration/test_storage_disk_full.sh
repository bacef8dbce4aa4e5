#!/usr/bin/env bash
# A full disk during a load of enrollments, then space returns (issue 13,
# R26). The data directory is on a small tmpfs; a filler file takes the rest
# of it while two loads run: phones that come back after RETRY_LATER
# (--max-retries) and phones that do not. Then the filler goes.
#
# Asserts: the server stays up, the same process throughout; it logs
# event=storage_unavailable once and event=storage_recovered once (not a line
# per phone or batch) and capstan_storage_writable goes 0, then 1, by itself;
# files download over HTTP and TFTP during the outage; the phones that come
# back all enroll, having been told RETRY_LATER; no device stays in
# progress: those whose outcome could not be written are failed with the
# storage error reason, their operation still scheduled (a phone's next
# session enrolls it); every LSC a phone holds is on record.
#
# Without the right to mount a tmpfs the fault comes from the I/O fault
# shim (tests/tools/iofault) in ENOSPC mode instead; the assertions are the
# same.
. "$(dirname "$0")/storage_faults_lib.sh"
SHIM="$CAPSTAN_BUILD_DIR/libcapstan-iofault.so"
it_require "$CAPSTAN_BIN" "$BENCH_BIN" curl jq mdb_dump
it_watchdog 420

N_RETRY=400 N_ONCE=200 # phones that come back, phones that do not
SF_RATE=30
if it_sanitized; then N_RETRY=150 N_ONCE=60 SF_RATE=10; fi
REASON="storage error: the outcome could not be recorded"

MNT="$IT_TMP/mnt"
mkdir -p "$MNT"
SRV_DATA[main]="$MNT/data"
CONTROL="$IT_TMP/iofault.control"
: >"$CONTROL"
if mount -t tmpfs -o size=6m tmpfs "$MNT" 2>/dev/null; then
  MODE=tmpfs
  # The servers go before the mount, the mount before the directory.
  trap 'rc=$?; it_kill_servers; umount -l "$MNT" 2>/dev/null; (exit $rc); it_cleanup' EXIT
else
  MODE=shim
  [[ -f "$SHIM" ]] || fail "cannot mount a tmpfs and $SHIM is missing"
fi
it_log "the full disk comes from: $MODE"

fault_on() {
  if [[ $MODE == tmpfs ]]; then
    # dd stops at ENOSPC: that is the point.
    dd if=/dev/zero of="$MNT/filler" bs=64k 2>/dev/null
    local avail
    avail=$(df --output=avail -k "$MNT" | tail -n1)
    ((avail < 64)) || fail "the tmpfs still has $avail KiB free after the filler"
  else
    echo "ENOSPC" >"$CONTROL"
  fi
}
fault_off() {
  if [[ $MODE == tmpfs ]]; then rm -f "$MNT/filler"; else : >"$CONTROL"; fi
}

timeout 120 "$CAPSTAN_BIN" init --data-dir "${SRV_DATA[main]}" >"$IT_TMP/init.log" 2>&1 ||
  fail "capstan init failed: $(cat "$IT_TMP/init.log")"
sf_devices $((N_RETRY + N_ONCE))
if [[ $MODE == shim ]]; then
  LD_PRELOAD="$SHIM" CAPSTAN_IOFAULT_DIR="${SRV_DATA[main]}" CAPSTAN_IOFAULT_CONTROL="$CONTROL" \
    ASAN_OPTIONS="$ASAN_OPTIONS:verify_asan_link_order=0" srv_start main --files
else
  srv_start main --files
fi
PID=${SRV_PID[main]}

START=$SECONDS
sf_load retry "$N_RETRY" 1000
SF_FIRST=$N_RETRY sf_load once "$N_ONCE" 0
sf_wait_issued $(((N_RETRY + N_ONCE) / 6))
ISSUED_BEFORE=$(metric main capstan_capf_certificates_issued_total)
fault_on
it_log "disk full after $ISSUED_BEFORE certificates issued ($((SECONDS - START)) s into the load)"
sf_during_outage
fault_off
it_log "space back ($((SECONDS - START)) s into the load)"
sf_after_recovery
sf_wait_load retry
sf_wait_load once
it_log "loads done $((SECONDS - START)) s after they started"

[[ "${SRV_PID[main]}" == "$PID" ]] && srv_alive main || fail "the server did not stay up"
# The phones that come back were told to, and all enrolled.
json_expect "$(jq -c '{ok, gave_up}' "$SF/retry.json")" ok "$N_RETRY" gave_up 0
(($(jq '.retries.retry_later' "$SF/retry.json") > 0)) || fail "no phone was told RETRY_LATER"
# The others: enrolled, or told to retry; never a protocol error.
jq -e '.outcomes | keys | all(. == "ok_install_reason_1" or . == "error_retry_later")' \
  "$SF/once.json" >/dev/null || fail "unexpected outcomes: $(jq -c .outcomes "$SF/once.json")"

# No device in progress (sf_after_recovery); each is succeeded, pending (its
# first record could not be written), or failed with the storage reason.
cap main device list --json >"$SF/devices.json"
jq -e --arg r "$REASON" 'all(.[]; .status == "succeeded" or .status == "pending"
    or (.status == "failed" and .status_reason == $r))' "$SF/devices.json" >/dev/null ||
  fail "unexpected statuses: $(jq -c '[.[] | select(.status != "succeeded")] | .[:5]' "$SF/devices.json")"
REPAIRED=$(jq --arg r "$REASON" '[.[] | select(.status_reason == $r)] | length' "$SF/devices.json")
it_log "statuses: $(jq -c 'group_by(.status) | map({(.[0].status): length}) | add' "$SF/devices.json")"
sf_certs_on_record retry
[[ $SF_HELD == "$N_RETRY" ]] || fail "$SF_HELD LSCs held by the $N_RETRY phones that came back"
sf_certs_on_record once

# A device the repair failed keeps its operation: the phone's next session
# enrolls it.
if ((REPAIRED > 0)); then
  grep -q 'event=storage_repaired' "${SRV_LOG[main]}" || fail "devices repaired without a log line"
  DEV=$(jq -r --arg r "$REASON" '[.[] | select(.status_reason == $r)][0].name' "$SF/devices.json")
  json_expect "$(device_json main "$DEV")" operation install
  phone main --name "$DEV" --auth null
  json_expect "$PHONE_JSON" result ok reason 1
  json_expect "$(device_json main "$DEV")" status succeeded
fi
it_log "repaired (failed with the storage reason): $REPAIRED; $(metric main \
  'capstan_storage_errors_total{op="commit"}') failed commits"
srv_stop main
it_pass
