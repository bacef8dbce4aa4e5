#!/usr/bin/env bash
# `capstan template ...` and `capstan device config ...` end to end: XML is
# checked before anything is stored (a malformed file names its line), a
# template in use cannot be removed, assignment is all-or-nothing, and a
# running `capstan serve` serves SEP<MAC>.cnf.xml over HTTP from the
# device's own base, else its template, else the default, completed with
# the CAPF elements, picking every change up without a signal.
. "$(dirname "$0")/lib.sh"
it_require "$CAPSTAN_BIN" curl jq "$IT_PYTHON"
it_watchdog 180

srv_start main --files
D1=SEP0011223344A1 # install, null auth
D2=SEP0011223344A2 # no operation
cap main device add $D1 --operation install --auth null --key ec256 >/dev/null
cap main device add $D2 --operation none --auth null >/dev/null

X="$IT_TMP/xml"
mkdir -p "$X"
cat >"$X/lobby.xml" <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<device>
  <deviceProtocol>SIP</deviceProtocol>
  <sshUserId>lobbyadmin</sshUserId>
  <capfAuthMode>4</capfAuthMode>
  <userLocale><name>English_United_States</name></userLocale>
</device>
EOF
cat >"$X/lobby2.xml" <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<device>
  <deviceProtocol>SIP</deviceProtocol>
  <sshUserId>lobbyadmin2</sshUserId>
</device>
EOF
cat >"$X/own.xml" <<'EOF'
<device>
  <sshUserId>ownadmin</sshUserId>
  <vendorConfig><webAccess>1</webAccess></vendorConfig>
</device>
EOF
# Line 4 closes the wrong element.
printf '<?xml version="1.0"?>\n<device>\n  <sshUserId>x\n  </sshUser>\n</device>\n' >"$X/bad.xml"
printf '<?xml version="1.0"?>\n<config>\n</config>\n' >"$X/wrongroot.xml"

run() { cli_expect "${SRV_DATA[main]}" "$@"; } # WANT_RC ARGS...: the CLI on the server's data directory
# served DEVICE: GET /DEVICE.cnf.xml into $IT_TMP/served.xml; it must be
# well-formed XML with root <device>.
served() {
  curl -sf --max-time 10 -o "$IT_TMP/served.xml" "http://127.0.0.1:${SRV_HTTP[main]}/$1.cnf.xml" ||
    fail "GET /$1.cnf.xml failed"
  "$IT_PYTHON" -c 'import sys, xml.dom.minidom as m; assert m.parse(sys.argv[1]).documentElement.tagName == "device"' \
    "$IT_TMP/served.xml" || fail "/$1.cnf.xml is not a <device> document: $(cat "$IT_TMP/served.xml")"
}
template_of() { cap main device config show "$1" --json | jq -r '.template'; }

# --- usage and refusals ----------------------------------------------------------
run 2 template
run 2 template frobnicate
run 2 template add lobby
run 2 template add "bad name" "$X/lobby.xml"
run 2 template add none "$X/lobby.xml"
run 2 template list extra
run 0 template --help
has "$OUT" "template assign NAME DEVICE..."
run 1 template add lobby "$X/bad.xml"
has "$ERR" "$X/bad.xml: line 4: mismatched tag"
run 1 template add lobby "$X/wrongroot.xml"
has "$ERR" "line 2: root element is <config>, expected <device>"
run 1 template add lobby "$IT_TMP/missing.xml"
has "$ERR" "cannot read"
run 1 template set lobby "$X/lobby.xml"
has "$ERR" "capstan template add lobby"
run 0 template list --json
[[ "$(jq length "$OUT")" == 0 ]] || fail "refused templates were stored: $(cat "$OUT")"

run 2 device config
run 2 device config set $D1
run 2 device config show $D1 extra
run 0 device config --help
run 1 device config set $D1 "$X/bad.xml"
has "$ERR" "$X/bad.xml: line 4: mismatched tag"
has "$ERR" "nothing was stored"
run 1 device config set SEP0000000000FF "$X/own.xml"
has "$ERR" "capstan device add"
run 0 device config show $D1 --json
jq -e '.source == "default" and .template == null and .config_xml == null' "$OUT" >/dev/null ||
  fail "device config show before any config: $(cat "$OUT")"

# Without configuration, the default base.
served $D1
has "$IT_TMP/served.xml" "default base configuration from capstan"
has "$IT_TMP/served.xml" "<capfAuthMode>2</capfAuthMode>"

# --- templates -------------------------------------------------------------------
run 0 template add lobby "$X/lobby.xml"
run 1 template add lobby "$X/lobby2.xml"
has "$ERR" "capstan template set lobby"
run 0 template show lobby
cmp -s "$OUT" "$X/lobby.xml" || fail "template show differs from the file"
run 0 template show lobby --json
jq -e --rawfile x "$X/lobby.xml" '.name == "lobby" and .config_xml == $x and .devices == 0' "$OUT" \
  >/dev/null || fail "template show --json: $(cat "$OUT")"
run 1 template show nosuch
has "$ERR" "no template 'nosuch'"

# Assignment is all-or-nothing.
run 1 template assign lobby $D1 SEP0000000000FF
has "$ERR" "no device 'SEP0000000000FF'"
[[ "$(template_of $D1)" == null ]] || fail "a failed assign changed $D1"
run 1 template assign nosuch $D1
has "$ERR" "capstan template add nosuch"
run 0 template assign lobby $D1 $D2
has "$OUT" "2 devices now use template lobby"
[[ "$(template_of $D1)" == lobby && "$(template_of $D2)" == lobby ]] || fail "assign did not stick"
run 0 template list --json
jq -e '.[0].name == "lobby" and .[0].devices == 2' "$OUT" >/dev/null || fail "template list: $(cat "$OUT")"
run 0 device config show $D1
has "$OUT" "it uses template lobby"

# Served from the template: the operator's elements plus the CAPF ones (the
# template's own capfAuthMode is replaced by the device's).
served $D1
has "$IT_TMP/served.xml" "<sshUserId>lobbyadmin</sshUserId>"
has "$IT_TMP/served.xml" "<userLocale><name>English_United_States</name></userLocale>"
has "$IT_TMP/served.xml" "<capfAuthMode>2</capfAuthMode>"
lacks "$IT_TMP/served.xml" "<capfAuthMode>4</capfAuthMode>"
has "$IT_TMP/served.xml" "<capfList><capf><phonePort>${SRV_CAPF[main]}</phonePort><processNodeName>"
has "$IT_TMP/served.xml" "<certHash></certHash>"
has "$IT_TMP/served.xml" "<encrConfig>false</encrConfig>"
served $D2
has "$IT_TMP/served.xml" "<sshUserId>lobbyadmin</sshUserId>"
has "$IT_TMP/served.xml" "<capfAuthMode>0</capfAuthMode>"

# A template in use cannot be removed; the message names the devices.
run 1 template remove lobby
has "$ERR" "used by 2 devices ($D1, $D2)"
run 0 template show lobby

# --- a device's own base configuration wins over its template ------------------------
run 0 device config set $D1 "$X/own.xml"
has "$OUT" "takes precedence over template lobby"
run 0 device config show $D1
cmp -s "$OUT" "$X/own.xml" || fail "device config show differs from the file"
run 0 device config show $D1 --json
jq -e '.source == "device" and .template == "lobby"' "$OUT" >/dev/null ||
  fail "device config show --json: $(cat "$OUT")"
served $D1
has "$IT_TMP/served.xml" "<sshUserId>ownadmin</sshUserId>"
has "$IT_TMP/served.xml" "<vendorConfig><webAccess>1</webAccess></vendorConfig>"
lacks "$IT_TMP/served.xml" "lobbyadmin"
has "$IT_TMP/served.xml" "<capfAuthMode>2</capfAuthMode>"

# Template changes are live for the devices that use it.
run 0 template set lobby "$X/lobby2.xml"
has "$OUT" "2 devices use it"
served $D2
has "$IT_TMP/served.xml" "<sshUserId>lobbyadmin2</sshUserId>"
# Clearing the device's own base goes back to the template.
run 0 device config clear $D1
has "$OUT" "uses template lobby again"
served $D1
has "$IT_TMP/served.xml" "<sshUserId>lobbyadmin2</sshUserId>"
lacks "$IT_TMP/served.xml" "ownadmin"

# --- unassign, remove ---------------------------------------------------------------
run 0 template unassign $D1 $D2
has "$OUT" "2 devices no longer use a template"
served $D1
has "$IT_TMP/served.xml" "default base configuration from capstan"
run 0 template remove lobby
run 0 template list --json
[[ "$(jq length "$OUT")" == 0 ]] || fail "template remove left it: $(cat "$OUT")"
run 1 template remove lobby

srv_stop main
it_pass
