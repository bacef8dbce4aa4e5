#!/usr/bin/env bash
# `capstan device` against devices a real server has worked on: a CSV
# imported twice does not silently schedule a phone that succeeded again or
# replace an authentication string already handed out (--dry-run shows the
# changes; --rearm and --replace-auth-strings allow them); `device cert`
# exports the certificate on record, which openssl reads.
. "$(dirname "$0")/lib.sh"
it_require "$CAPSTAN_BIN" "$PHONE_BIN" jq openssl
it_watchdog 240

srv_start main
DATA="${SRV_DATA[main]}"
A=SEP0000DE000001 # string auth: enrolls, then the CSV comes again
B=SEP0000DE000002 # string auth: never connects
C=SEP0000DE000003 # null auth: enrolls, then the CSV comes again
HDR="name,operation,auth_mode,auth_string,key,completes_by"
printf '%s\n%s,install,string,111111,ec256,\n%s,install,string,222222,ec256,\n%s,install,null,,ec256,\n' \
  "$HDR" $A $B $C >"$IT_TMP/devices.csv"

# --- first import, then two phones enroll.
cli_expect "$DATA" 0 device import "$IT_TMP/devices.csv"
has "$OUT" "imported 3 rows: 3 added, 0 updated, 0 unchanged"
phone main --name $A --auth string --auth-string 111111 --save-cert "$IT_TMP/a.der" \
  --save-key "$IT_TMP/a.key"
json_expect "$PHONE_JSON" result ok
phone main --name $C --auth null
json_expect "$PHONE_JSON" result ok
json_expect "$(device_json main $A)" status succeeded
json_expect "$(device_json main $C)" status succeeded

# --- the certificate on record, exported: the LSC the phone holds.
cli_expect "$DATA" 0 device cert $A --out "$IT_TMP/a.pem"
has "$OUT" "wrote the lsc certificate of $A (md5 "
openssl x509 -in "$IT_TMP/a.pem" -noout -subject >"$IT_TMP/subject" || fail "openssl x509 cannot read the export"
has "$IT_TMP/subject" "CN = $A"
want=$(openssl x509 -in "$IT_TMP/a.der" -inform DER -noout -fingerprint -sha256) || fail "openssl: a.der"
got=$(openssl x509 -in "$IT_TMP/a.pem" -noout -fingerprint -sha256)
[[ "$got" == "$want" ]] || fail "exported certificate differs from the phone's: $got vs $want"
json_expect "$(device_json main $A)" md5hash "$(md5_of "$IT_TMP/a.der")"
cli_expect "$DATA" 0 device cert $A
openssl x509 -noout -subject <"$OUT" | grep -qF "CN = $A" || fail "device cert to stdout"
cli_expect "$DATA" 1 device cert $B
has "$ERR" "no certificate on record for $B"
cli_expect "$DATA" 1 device cert SEP0000DE0000FF
has "$ERR" "no device 'SEP0000DE0000FF'"
cli_expect "$DATA" 2 device cert $A --out
cli_expect "$DATA" 0 device cert sep0000de000001 --out "$IT_TMP/a2.pem"
cmp -s "$IT_TMP/a.pem" "$IT_TMP/a2.pem" || fail "device cert by the lower-case name"

# --- the same file again: after an enrollment the device's operation is
# none, so the row would schedule the phone again. The dry run says so; the
# import is refused without --rearm and changes nothing.
cli_expect "$DATA" 0 device import "$IT_TMP/devices.csv" --dry-run
has "$OUT" "update $A: operation none -> install, re-armed: status succeeded -> pending (needs --rearm)"
has "$OUT" "update $C: operation none -> install, re-armed: status succeeded -> pending (needs --rearm)"
has "$OUT" "would import 3 rows: 0 added, 2 updated, 1 unchanged; 2 succeeded devices re-armed (needs --rearm), 0 authentication strings replaced"
lacks "$OUT" "update $B"
cli_expect "$DATA" 1 device import "$IT_TMP/devices.csv"
has "$ERR" "devices.csv:2: device '$A' succeeded and the file would schedule it again: 2 succeeded devices would be re-armed (give --rearm to do so)"
has "$ERR" "nothing was imported"
json_expect "$(device_json main $A)" status succeeded operation none
json_expect "$(device_json main $C)" status succeeded operation none
# A file that leaves them alone (operation none) imports.
printf '%s\n%s,none,string,,ec256,\n%s,install,string,222222,ec256,\n%s,none,null,,ec256,\n' \
  "$HDR" $A $B $C >"$IT_TMP/done.csv"
cli_expect "$DATA" 0 device import "$IT_TMP/done.csv"
has "$OUT" "imported 3 rows: 0 added, 0 updated, 3 unchanged"
json_expect "$(device_json main $A)" status succeeded

# --- an edited file: A's string changed, C's key changed, both scheduled
# again, a new D.
D=SEP0000DE000004
printf '%s\n%s,install,string,333333,ec256,\n%s,install,string,222222,ec256,\n%s,install,null,,ec384,\n%s,install,null,,,\n' \
  "$HDR" $A $B $C $D >"$IT_TMP/edited.csv"
cli_expect "$DATA" 0 device import "$IT_TMP/edited.csv" --dry-run
has "$OUT" "update $A: operation none -> install, auth string replaced (needs --replace-auth-strings), re-armed: status succeeded -> pending (needs --rearm)"
has "$OUT" "update $C: operation none -> install, key ec256 -> ec384, re-armed: status succeeded -> pending (needs --rearm)"
has "$OUT" "add $D: operation install, auth null, key rsa2048, completes-by none"
has "$OUT" "would import 4 rows: 1 added, 2 updated, 1 unchanged; 2 succeeded devices re-armed (needs --rearm), 1 authentication string replaced (needs --replace-auth-strings)"
has "$OUT" "dry run: nothing was changed"
lacks "$OUT" "333333"
lacks "$OUT" "$B"
cli_expect "$DATA" 1 device show $D
json_expect "$(device_json main $C)" status succeeded key ec256

# A real import without the flags is refused, naming both reasons.
cli_expect "$DATA" 1 device import "$IT_TMP/edited.csv"
has "$ERR" "edited.csv:2: device '$A' succeeded and the file would schedule it again: 2 succeeded devices would be re-armed (give --rearm to do so)"
has "$ERR" "edited.csv:2: device '$A' has an authentication string the file would replace: 1 string would be replaced (give --replace-auth-strings to do so)"
has "$ERR" "nothing was imported"
cli_expect "$DATA" 1 device show $D
json_expect "$(device_json main $C)" status succeeded key ec256
cli_expect "$DATA" 1 device import "$IT_TMP/edited.csv" --rearm
has "$ERR" "give --replace-auth-strings"
cli_expect "$DATA" 1 device import "$IT_TMP/edited.csv" --replace-auth-strings
has "$ERR" "give --rearm"

# With both flags: done, and said how many.
cli_expect "$DATA" 0 device import "$IT_TMP/edited.csv" --rearm --replace-auth-strings
has "$OUT" "imported 4 rows: 1 added, 2 updated, 1 unchanged"
has "$OUT" "re-armed 2 succeeded devices (--rearm)"
has "$OUT" "replaced 1 authentication string (--replace-auth-strings)"
json_expect "$(device_json main $C)" status pending key ec384
json_expect "$(device_json main $A)" status pending
cli_expect "$DATA" 0 device show $A --json --show-secrets
json_expect "$(cat "$OUT")" auth_string 333333
# The audit says what the import did.
cli_expect "$DATA" 0 device history $A
has "$OUT" "auth-string=replaced"
has "$OUT" "rearmed=succeeded"

# Generated strings replace a set one only with the flag too.
printf '%s\n%s,install,string,,ec256,\n' "$HDR" $B >"$IT_TMP/gen.csv"
cli_expect "$DATA" 1 device import "$IT_TMP/gen.csv" --generate-auth-strings unique
has "$ERR" "give --replace-auth-strings"
cli_expect "$DATA" 0 device import "$IT_TMP/gen.csv" --generate-auth-strings unique --replace-auth-strings
has "$OUT" "replaced 1 authentication string"

# Troubleshoot: the certificate the phone presents is fetched and exported.
cap main device set $A --operation troubleshoot --auth lsc >/dev/null
phone main --name $A --auth lsc --cert "$IT_TMP/a.der" --key "$IT_TMP/a.key"
json_expect "$PHONE_JSON" result ok
json_expect "$(device_json main $A)" status succeeded last_operation troubleshoot cert_type lsc
cli_expect "$DATA" 0 device cert $A --out "$IT_TMP/fetched.pem"
got=$(openssl x509 -in "$IT_TMP/fetched.pem" -noout -fingerprint -sha256) || fail "openssl: fetched.pem"
[[ "$got" == "$want" ]] || fail "fetched certificate differs from the phone's: $got vs $want"

srv_stop main
it_pass
