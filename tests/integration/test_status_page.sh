#!/usr/bin/env bash
# The live status page (product.md R20, docs/status.md): a server with
# phones that enrolled, failed (wrong authentication string), one generating
# its key and one held by the key generation throttle, and phone files
# downloaded. Checks /status.json against the CLI (`capstan report status
# --json`, `device show --json`) and /metrics; the device API (fields,
# paging by name cursor, status filter, 404, 400); that no authentication
# string is shown anywhere; that the page loads nothing from outside. Then
# opens /status in headless Chromium, lets it refresh itself, checks the
# numbers in its DOM against /status.json and the CLI, and saves screenshots
# at 1280x800 and 390x844 in $CAPSTAN_BUILD_DIR/artifacts/.
. "$(dirname "$0")/lib.sh"
it_require "$CAPSTAN_BIN" "$PHONE_BIN" curl jq "$IT_PYTHON"
it_watchdog 300

# One slot for key generation, and a hold longer than the test: the second
# phone that reaches key generation stays held.
srv_prepare main
cap main config set max-concurrent-keygen 1 >/dev/null
cap main config set throttle-hold-seconds 600 >/dev/null
srv_start main --files
ADMIN="http://127.0.0.1:${SRV_ADMIN[main]}"
PORT=${SRV_CAPF[main]}

# Authentication strings that must never appear in an answer.
SECRET1=7319540 SECRET2=8642097
{
  echo "name,operation,auth_mode,auth_string,key,completes_by"
  for i in 1 2 3 4 5 6; do echo "SEP00005A7A000$i,install,null,,ec256,"; done
  for i in 1 2 3; do echo "SEP00005A7AF00$i,install,string,$SECRET1,ec256,"; done
  echo "SEP00005A7AB001,install,string,$SECRET2,ec256,"
  echo "SEP00005A7AB002,install,null,,ec256,"
  echo "SEP00005A7A0000,none,null,,ec256,"
} >"$IT_TMP/devices.csv"
cap main device import "$IT_TMP/devices.csv" >/dev/null

# --- Activity ----------------------------------------------------------------
for i in 1 2 3 4; do
  phone main --name "SEP00005A7A000$i" --auth null
  json_expect "$PHONE_JSON" result ok reason 1
done
for i in 1 2 3; do
  phone main --name "SEP00005A7AF00$i" --auth string --auth-string 1111
  json_expect "$PHONE_JSON" result end reason 7
done
for i in 1 2 3 4 5; do
  curl -sf --max-time 10 -o /dev/null "http://127.0.0.1:${SRV_HTTP[main]}/ITLFile.tlv" ||
    fail "GET /ITLFile.tlv failed"
done
# One phone generating its key (the only slot), one held behind it.
BG_PIDS=()
bg_phone() {
  timeout 250 "$PHONE_BIN" --connect "127.0.0.1:$PORT" --name "$1" "${@:2}" --keygen-delay 240 \
    --timeout 240 --key-cache "$IT_KEYS" --json >"$IT_TMP/$1.json" 2>>"$IT_TMP/phones.log" &
  BG_PIDS+=($!)
}
status_is() { [[ "$(curl -sf --max-time 5 "$ADMIN/status.json" | jq -r "$1")" == "$2" ]]; }
bg_phone SEP00005A7AB001 --auth string --auth-string "$SECRET2"
it_wait_for 60 status_is .capf.keygen_active 1 || fail "the first phone never reached key generation"
bg_phone SEP00005A7AB002 --auth null
it_wait_for 60 status_is .capf.throttled_now 1 || fail "the second phone was not held by the throttle"
# The census is at most a second old once the store changed.
sleep 1.2

# --- /status.json -------------------------------------------------------------
curl -sf --max-time 10 -D "$IT_TMP/json.h" "$ADMIN/status.json" >"$IT_TMP/status.json" ||
  fail "GET /status.json failed"
grep -qi '^content-type: application/json' "$IT_TMP/json.h" || fail "status.json: not application/json"
S=$(cat "$IT_TMP/status.json")
cli=$(cap main report status --json)
assert_eq "$(jq -S -c .by_status <<<"$cli")" "$(jq -S -c .devices.by_status <<<"$S")" \
  "devices by status: CLI vs status.json"
assert_eq "$(jq .total <<<"$cli")" "$(jq .devices.total <<<"$S")" "total devices"
json_expect "$(jq -c .devices.by_status <<<"$S")" pending 2 in-progress 2 succeeded 4 failed 3 \
  expired 0 none 1
json_expect "$(jq -c .progress <<<"$S")" scheduled 11 remaining 4 succeeded 4 failed 3
assert_eq "$(hostname)" "$(jq -r .node.name <<<"$S")" "node name"
jq -e '.schema_version == 1 and (.node.version | length > 0) and .node.uptime_seconds >= 0
       and (.node.started_at | test("Z$")) and .devices.age_seconds >= 0' <<<"$S" >/dev/null ||
  fail "node or devices fields: $(jq -c '.node, .devices' <<<"$S")"
# Rates since start count what the metrics count.
assert_eq 4 "$(jq .rates.totals.enrollments <<<"$S")" "enrollments since start"
assert_eq 3 "$(jq .rates.totals.failures <<<"$S")" "failed sessions since start"
assert_eq 5 "$(jq .rates.totals.downloads <<<"$S")" "downloads since start"
metric_expect main 'capstan_capf_sessions_total{operation="install",result="ok"}' 4
jq -e '.rates.chart | (.t | length) == (.enrollments | length) and .step_seconds == 5' \
  <<<"$S" >/dev/null || fail "chart arrays: $(jq -c .rates.chart <<<"$S")"
json_expect "$(jq -c .capf <<<"$S")" keygen_active 1 throttled_now 1 sessions_active 2
# The slowest in progress are the two phones in key generation, the
# failures the three wrong strings, newest first, with their reason.
assert_eq "SEP00005A7AB001 SEP00005A7AB002" \
  "$(jq -r '[.slowest_in_progress[].name] | sort | join(" ")' <<<"$S")" "slowest in progress"
assert_eq "SEP00005A7AF001 SEP00005A7AF002 SEP00005A7AF003" \
  "$(jq -r '[.latest_failures[].name] | sort | join(" ")' <<<"$S")" "latest failures"
jq -e '[.latest_failures[].reason] | unique == ["authentication failed"]' <<<"$S" >/dev/null ||
  fail "failure reasons: $(jq -c .latest_failures <<<"$S")"
assert_eq '[{"reason":"authentication failed","count":3}]' "$(jq -c .failure_reasons <<<"$S")" \
  "failure reasons"
# Nothing was refused by a connection limit; the throttle holds, and has
# sent no RETRY_LATER.
assert_eq "[]" "$(jq -c .limits <<<"$S")" "limits"
json_expect "$(jq -c .capf_certificate <<<"$S")" signed_by self expired false key rsa2048 chain_length 0
jq -e '.capf_certificate.days_left > 3000' <<<"$S" >/dev/null || fail "CAPF days left"
json_expect "$(jq -c .issuer <<<"$S")" mode capf label "self-signed CAPF" ca_health null
jq -e '.certificate_requests == {"pending":0,"oldest_pending_at":null,"oldest_pending_age_seconds":null}' \
  <<<"$S" >/dev/null || fail "certificate requests: $(jq -c .certificate_requests <<<"$S")"
expiry=$(metric main capstan_capf_certificate_expiry_timestamp_seconds)
assert_eq "$(date -u -d "@${expiry%.*}" +%Y-%m-%dT%H:%M:%SZ)" \
  "$(jq -r .capf_certificate.not_after <<<"$S")" "CAPF expiry: metric vs status.json"

# --- The device API ---------------------------------------------------------------
api() { # PATH WANT_CODE -> body in $IT_TMP/api.json
  local code
  code=$(curl -s --max-time 10 -o "$IT_TMP/api.json" -w '%{http_code}' "$ADMIN$1")
  [[ "$code" == "$2" ]] || { cat "$IT_TMP/api.json" >&2; fail "GET $1: HTTP $code, expected $2"; }
  cat "$IT_TMP/api.json"
}
# Every device, 5 a page, following "next".
names=() after="" pages=0
while :; do
  page=$(api "/api/devices?limit=5${after:+&after=$after}" 200)
  pages=$((pages + 1))
  mapfile -t -O "${#names[@]}" names < <(jq -r '.devices[].name' <<<"$page")
  jq -e '.count == (.devices | length) and .limit == 5' <<<"$page" >/dev/null || fail "page: $page"
  after=$(jq -r '.next // empty' <<<"$page")
  [[ -n "$after" ]] || break
  ((pages < 10)) || fail "paging does not end"
done
assert_eq 3 "$pages" "pages of 5 for 12 devices"
assert_eq "$(cut -d, -f1 "$IT_TMP/devices.csv" | tail -n +2 | sort | tr '\n' ' ')" \
  "$(printf '%s\n' "${names[@]}" | tr '\n' ' ')" "devices listed, in name order"
page=$(api "/api/devices?status=failed" 200)
json_expect "$page" count 3 status failed next null
page=$(api "/api/devices?status=in_progress&limit=1" 200)
json_expect "$page" count 1 status in-progress next SEP00005A7AB001
page=$(api "/api/devices?status=in-progress&limit=1&after=SEP00005A7AB001" 200)
json_expect "$page" count 1 next null
assert_eq SEP00005A7AB002 "$(jq -r '.devices[0].name' <<<"$page")" "second page of in-progress"
# One device: the fields of `capstan device show --json`, the same values.
one=$(api /api/devices/SEP00005A7AF001 200)
cli_one=$(device_json main SEP00005A7AF001)
assert_eq "$(jq -S -c . <<<"$cli_one")" "$(jq -S -c . <<<"$one")" "device: API vs CLI"
json_expect "$one" status failed status_reason "authentication failed" auth_string_set true
one=$(api /api/devices/SEP00005A7A0001 200)
assert_eq "$(jq -S -c . <<<"$(device_json main SEP00005A7A0001)")" "$(jq -S -c . <<<"$one")" \
  "enrolled device: API vs CLI"
jq -e '.cert_history | length == 1 and .[0].status == "installed"' <<<"$one" >/dev/null ||
  fail "certificate history: $one"
api /api/devices/SEP0000DEADBEEF 404 | jq -e '.error | length > 0' >/dev/null || fail "404 body"
api /api/devices/ 404 >/dev/null
api "/api/devices?status=bogus" 400 | jq -e '.error | test("status")' >/dev/null || fail "400 body"
api "/api/devices?limit=0" 400 >/dev/null
api "/api/devices?page=2" 400 >/dev/null

# --- No secret anywhere; nothing from outside --------------------------------------
curl -sf --max-time 10 -D "$IT_TMP/page.h" "$ADMIN/status" >"$IT_TMP/page.html" || fail "GET /status"
grep -qi '^content-type: text/html' "$IT_TMP/page.h" || fail "/status is not text/html"
grep -qi "^content-security-policy: default-src 'none'" "$IT_TMP/page.h" ||
  fail "/status has no Content-Security-Policy that blocks other origins"
{
  cat "$IT_TMP/status.json" "$IT_TMP/page.html"
  curl -sf "$ADMIN/api/devices?limit=1000"
  for n in SEP00005A7AF001 SEP00005A7AB001; do curl -sf "$ADMIN/api/devices/$n"; done
} >"$IT_TMP/all-answers"
lacks "$IT_TMP/all-answers" "$SECRET1"
lacks "$IT_TMP/all-answers" "$SECRET2"
# No external URL: no scheme, no protocol-relative src/href, no import.
if grep -niE 'https?://|(src|href|action)[[:space:]]*=[[:space:]]*["'\'']?[[:space:]]*//|@import|url\(' \
  "$IT_TMP/page.html"; then
  fail "the status page refers to something outside the server"
fi
grep -q '"schema_version":1' "$IT_TMP/page.html" || fail "the page carries no first data"

# --- In a real browser ---------------------------------------------------------------
ART="$CAPSTAN_BUILD_DIR/artifacts"
mkdir -p "$ART"
CHROMIUM=$(command -v chromium || command -v chromium-browser || true)
if [[ -z "$CHROMIUM" ]]; then
  it_log "SKIP browser checks: chromium is not installed (scripts/deps.sh --test installs it)"
  kill "${BG_PIDS[@]}" 2>/dev/null
  srv_stop main
  it_pass
fi
chrome() { # chromium, as the test machine's root, with nothing going outside
  timeout 90 "$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --disable-default-apps --disable-extensions --hide-scrollbars --mute-audio \
    --user-data-dir="$(mktemp -d "$IT_TMP/chrome.XXXXXX")" "$@" 2>>"$IT_TMP/chrome.log"
}
# 5 s of the page's own time: it refreshes from status.json twice.
chrome --virtual-time-budget=5000 --window-size=1280,800 --dump-dom "$ADMIN/status" \
  >"$IT_TMP/dom.html" || { cat "$IT_TMP/chrome.log" >&2; fail "chromium --dump-dom failed"; }
curl -sf --max-time 10 "$ADMIN/status.json" >"$IT_TMP/after.json" || fail "GET /status.json"
cli=$(cap main report status --json)
# The numbers the page shows (id -> data-value, and text), by the DOM.
"$IT_PYTHON" - "$IT_TMP/dom.html" >"$IT_TMP/dom.json" <<'PY' || fail "cannot read the DOM"
import html.parser, json, sys
class P(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(); self.ids = {}; self.body = {}; self.rows = {}; self.table = None
        self.stack = []
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body": self.body = a
        if "id" in a: self.ids[a["id"]] = a.get("data-value")
        if a.get("id") in ("slowest", "failures", "limits"): self.table = a["id"]
        if tag == "tr" and "data-name" in a and self.table:
            self.rows.setdefault(self.table, []).append(a["data-name"])
p = P(); p.feed(open(sys.argv[1]).read())
print(json.dumps({"ids": p.ids, "body": p.body, "rows": p.rows}))
PY
D=$(cat "$IT_TMP/dom.json")
jq -e '.body["data-refreshes"] | tonumber >= 1' <<<"$D" >/dev/null ||
  fail "the page did not refresh itself from status.json: $(jq -c .body <<<"$D")"
jq -e '.body["data-fits"] == "true"' <<<"$D" >/dev/null || fail "the page is wider than 1280 px"
for st in pending in-progress succeeded failed expired none; do
  want=$(jq -r --arg s "$st" '.by_status[$s]' <<<"$cli")
  assert_eq "$want" "$(jq -r --arg s "$st" '.ids["count-" + $s]' <<<"$D")" "page: $st (CLI)"
  assert_eq "$want" "$(jq -r --arg s "$st" '.devices.by_status[$s]' "$IT_TMP/after.json")" \
    "status.json: $st (CLI)"
done
assert_eq "$(jq .total <<<"$cli")" "$(jq -r '.ids.total' <<<"$D")" "page: total"
assert_eq 4 "$(jq -r '.ids.succeeded' <<<"$D")" "page: succeeded"
assert_eq 11 "$(jq -r '.ids.scheduled' <<<"$D")" "page: scheduled"
assert_eq 3 "$(jq -r '.ids.failed' <<<"$D")" "page: failed devices"
assert_eq 1 "$(jq -r '.ids.throttled' <<<"$D")" "page: held by the throttle"
assert_eq "SEP00005A7AB001 SEP00005A7AB002" "$(jq -r '.rows.slowest | sort | join(" ")' <<<"$D")" \
  "page: slowest in progress"
assert_eq "SEP00005A7AF001 SEP00005A7AF002 SEP00005A7AF003" \
  "$(jq -r '.rows.failures | sort | join(" ")' <<<"$D")" "page: latest failures"
grep -q 'self-signed CAPF' "$IT_TMP/dom.html" || fail "page: no issuer mode"
grep -q "$(hostname)" "$IT_TMP/dom.html" || fail "page: no node name"
# The phone-sized page fits its screen too.
chrome --virtual-time-budget=3000 --window-size=390,844 --dump-dom "$ADMIN/status" \
  >"$IT_TMP/dom-phone.html" || fail "chromium --dump-dom (390x844) failed"
grep -q 'data-fits="true"' "$IT_TMP/dom-phone.html" || fail "the page is wider than a 390 px screen"
# Screenshots, for people.
for size in 1280,800 390,844; do
  png="$ART/status-${size/,/x}.png"
  rm -f "$png"
  chrome --virtual-time-budget=3000 --window-size="$size" --screenshot="$png" "$ADMIN/status" \
    >/dev/null || fail "chromium --screenshot $size failed"
  [[ "$(head -c 8 "$png" | od -An -tx1 | tr -d ' \n')" == 89504e470d0a1a0a ]] ||
    fail "$png is not a PNG"
  (($(stat -c %s "$png") > 10000)) || fail "$png is too small to show a page"
  it_log "screenshot: $png"
done

kill "${BG_PIDS[@]}" 2>/dev/null
srv_stop main
it_pass
