#!/usr/bin/env bash
# Hostile phones and the certificate-request extension (capf-protocol.md,
# "Certificate requests from the phone (extension)"), with the real server
# under issuer est (the independent EST test CA running) and issuer offline:
# a phone that cannot make a request, one whose request is for another key,
# names another device, carries a bad signature, is garbage, or that never
# answers SIGN_CERT_REQUEST ends with END_SESSION 7; the device is failed
# with the exact reason, capstan_capf_cert_requests_total counts it as
# rejected (a check failed) or none (no request), NOTHING reached the CA
# (its log has no enrollment) and no request was recorded (csr list empty).
. "$(dirname "$0")/lib.sh"
it_watchdog 300
it_require jq curl openssl

testca_start est est --username capf --password pw
CA=${CA_DIR[est]}
srv_start main
cap main trust add "$CA/root.pem" >/dev/null
printf 'pw\n' >"$IT_TMP/password"
cap main ca set --url "${CA_URL[est]}" --username capf --password-file "$IT_TMP/password" \
  --ca-file "$CA/root.pem" --timeout-seconds 3 --phone-wait-seconds 5 >/dev/null
# A phone that never answers SIGN_CERT_REQUEST is given up after this.
cap main config set step-timeout-seconds 3 >/dev/null

csr_count() { cap main csr list --json | jq length; }
enrolls() {
  testca_control est '{}' | jq '[.log[] | select((.path // "") | test("simpleenroll"))] | length'
}
creq() {
  curl -sf --max-time 10 "http://127.0.0.1:${SRV_ADMIN[main]}/metrics" |
    awk -v s="capstan_capf_cert_requests_total{result=\"$1\"}" '$1 == s { v = $2 } END { print v + 0 }'
}

# mode | the device's reason | the counter's result
cases=(
  "refuse|phone cannot make a certificate request|none"
  "wrong-key|certificate request is for another key|rejected"
  "wrong-cn|certificate request names another device|rejected"
  "bad-signature|certificate request signature invalid|rejected"
  "garbage|certificate request malformed|rejected"
  "silent|phone cannot make a certificate request|none"
)

n=1
for issuer in est offline; do
  cap main config set issuer "$issuer" >/dev/null
  it_wait_for 20 grep -q "'event=capf_issuer issuer=$issuer'" "${SRV_LOG[main]}" || fail "the server did not take issuer $issuer"
  for c in "${cases[@]}"; do
    IFS='|' read -r mode reason label <<<"$c"
    d=$(printf 'SEP0F00000000%02d' "$n")
    n=$((n + 1))
    before=$(creq "$label")
    step_before=$(metric main 'capstan_capf_timeouts_total{timer="step"}')
    cap main device add "$d" --operation install --auth null >/dev/null
    # The device follows the cluster's issuer (issuer null in device show).
    jq -e '.issuer == null' <<<"$(device_json main "$d")" >/dev/null || fail "$d: own issuer"
    phone main --name "$d" --csr-mode "$mode" --timeout 20
    # END_SESSION 7 after SIGN_CERT_REQUEST: for the phone a session that ran as
    # the protocol says ("ok", exit 0), with the REASON it was told.
    [[ $PHONE_RC == 0 ]] || fail "$issuer/$mode: phone exit $PHONE_RC: $PHONE_JSON"
    sent=true
    [[ $mode == refuse || $mode == silent ]] && sent=false
    json_expect "$PHONE_JSON" result ok reason 7 error none csr_requested true csr_sent "$sent" \
      lsc_stored false handover false
    if [[ $mode == silent ]]; then
      # Given up by the step timer (3 s), not by anything else.
      assert_eq $((step_before + 1)) "$(metric main 'capstan_capf_timeouts_total{timer="step"}')" \
        "$issuer/silent: the step timer"
      jq -e '.total_ms >= 2500' <<<"$PHONE_JSON" >/dev/null ||
        fail "$issuer/silent: ended before the step timer: $PHONE_JSON"
    else
      assert_eq "$step_before" "$(metric main 'capstan_capf_timeouts_total{timer="step"}')" \
        "$issuer/$mode: no timer"
    fi
    dev=$(device_json main "$d")
    jq -e --arg r "$reason" '.status == "failed" and .status_reason == $r' <<<"$dev" >/dev/null ||
      fail "$issuer/$mode: device should be failed with '$reason': $dev"
    assert_eq $((before + 1)) "$(creq "$label")" "$issuer/$mode counted as $label"
    assert_eq 0 "$(csr_count)" "$issuer/$mode: no request recorded"
    assert_eq 0 "$(enrolls)" "$issuer/$mode: nothing reached the CA"
    it_log "ok: $issuer $mode -> $reason ($label)"
  done
done
assert_eq 0 "$(creq ok)" "no request was ok"
srv_stop main
it_pass
