#!/usr/bin/env bash
# Admin CLI end to end: the real `capstan` binary on a temporary data
# directory. Checks exit codes (0 ok, 1 operational error, 2 usage error),
# --json output parsed by python3, CSV import/export round trip, and that a
# bad CSV changes nothing.
set -uo pipefail

BIN="${CAPSTAN_BIN:?set CAPSTAN_BIN to the capstan binary}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/capstan-cli-XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
export CAPSTAN_DATA_DIR="$WORK/data"
. "$(dirname "$0")/tally.sh"


# --- before anything exists ----------------------------------------------
expect 1 "cert export before init" -- "$BIN" cert export capf
contains "$WORK/err" "capstan init" "cert export before init says what to do"
[ ! -e "$CAPSTAN_DATA_DIR" ] && pass || fail "cert export created the data directory"
expect 1 "list before any device" -- "$BIN" device list
expect 2 "no command" -- "$BIN"
expect 2 "unknown command" -- "$BIN" frobnicate
expect 0 "top-level help" -- "$BIN" --help
contains "$WORK/out" "device" "help lists commands"
expect 0 "device add --help" -- "$BIN" device add --help
contains "$WORK/out" "--operation" "device add help"
expect 2 "device add without name" -- "$BIN" device add --operation install --auth null
expect 2 "device add bad operation" -- "$BIN" device add SEP0011223344AA --operation upgrade --auth null
contains "$WORK/err" "upgrade" "bad operation is named"
expect 2 "device add bad name" -- "$BIN" device add "SEP00112233" --operation install --auth null --key ec256x
expect 2 "string auth without a string" -- "$BIN" device add SEP0011223344AA --operation install --auth string
contains "$WORK/err" "--auth-string" "string auth message says what to add"
expect 2 "bad auth string" -- "$BIN" device add SEP0011223344AA --operation install --auth string --auth-string 12
expect 2 "unknown option" -- "$BIN" device list --colour
expect 2 "config set out of range" -- "$BIN" config set keepalive-minutes 61
contains "$WORK/err" "from 5 to 60" "range named"
expect 2 "config unknown key" -- "$BIN" config set keep-alive 10
expect 2 "keepalive bad" -- "$BIN" keepalive set 4

# --- add / show / list / set / remove --------------------------------------
expect 0 "add string device" -- "$BIN" device add SEP0011223344AA --operation install --auth string --auth-string 4711 --key ec256 --completes-by 2030-01-31
[ "$(stat -c %a "$CAPSTAN_DATA_DIR")" = 700 ] && pass || fail "data dir is not 0700"
expect 0 "add null device" -- "$BIN" device add phone-lab.1 --any-name --operation troubleshoot --auth null
expect 0 "add generated" -- "$BIN" device add SEP0011223344AB --operation install --auth string --generate-auth-string --auth-string-length 8
grep -Eq 'authentication string for SEP0011223344AB: [0-9]{8}$' "$WORK/out" && pass || fail "generated string printed"
expect 1 "add duplicate" -- "$BIN" device add SEP0011223344AA --operation install --auth null
contains "$WORK/err" "device set" "duplicate suggests set"

expect 0 "show" -- "$BIN" device show SEP0011223344AA
contains "$WORK/out" "pending" "show status"
lacks "$WORK/out" "4711" "show hides the auth string"
expect 0 "show json" -- "$BIN" device show SEP0011223344AA --json
json_ok "$WORK/out" "d['name']=='SEP0011223344AA' and d['key']=='ec256' and d['status']=='pending' and 'auth_string' not in d and d['auth_string_set'] and d['completes_by']=='2030-01-31T00:00:00Z'" "show --json fields"
expect 0 "show secrets" -- "$BIN" device show SEP0011223344AA --json --show-secrets
json_ok "$WORK/out" "d['auth_string']=='4711'" "show --show-secrets"
expect 1 "show missing" -- "$BIN" device show SEP999999999999

expect 0 "list json" -- "$BIN" device list --json
json_ok "$WORK/out" "len(d)==3 and sorted(x['name'] for x in d)==['SEP0011223344AA','SEP0011223344AB','phone-lab.1']" "list --json"
lacks "$WORK/out" "4711" "list hides auth strings"

expect 0 "set operation none" -- "$BIN" device set phone-lab.1 --operation none
expect 0 "list pending" -- "$BIN" device list --json --status pending
json_ok "$WORK/out" "len(d)==2 and all(x['status']=='pending' for x in d)" "list --status pending"
expect 0 "list none" -- "$BIN" device list --json --status none
json_ok "$WORK/out" "[x['name'] for x in d]==['phone-lab.1']" "list --status none"
expect 0 "set key and config" -- "$BIN" device set SEP0011223344AA --key rsa4096 --encrypted-config on
expect 0 "show after set" -- "$BIN" device show SEP0011223344AA --json
json_ok "$WORK/out" "d['key']=='rsa4096' and d['encrypted_config'] and d['operation']=='install'" "set changed fields only"
expect 1 "set missing device" -- "$BIN" device set SEP999999999999 --key rsa2048
expect 0 "remove" -- "$BIN" device remove phone-lab.1
expect 1 "remove again" -- "$BIN" device remove phone-lab.1

# --- settings -----------------------------------------------------------------
expect 0 "keepalive set" -- "$BIN" keepalive set 10
expect 0 "keepalive show" -- "$BIN" keepalive show
[ "$(cat "$WORK/out")" = 10 ] && pass || fail "keepalive show prints 10"
expect 0 "config set capf-host" -- "$BIN" config set capf-host capf.example.org
expect 0 "config get" -- "$BIN" config get keepalive-minutes
[ "$(cat "$WORK/out")" = 10 ] && pass || fail "config get keepalive-minutes"
expect 0 "config list json" -- "$BIN" config list --json
json_ok "$WORK/out" "d['keepalive-minutes']==10 and d['capf-host']=='capf.example.org' and d['enable-ipv6'] is True and d['validity-days']==1825" "config list --json"

# --- CSV ----------------------------------------------------------------------
{
  echo "name,operation,auth_mode,auth_string,key,completes_by"
  for i in $(seq 1 2000); do
    printf 'SEP%012X,install,string,%06d,rsa2048,2031-06-01\r\n' "$i" "$i"
  done
  echo '"quoted-name",delete,null,,ec384,'
} >"$WORK/in.csv"
expect 0 "import" -- "$BIN" device import "$WORK/in.csv" --any-name
contains "$WORK/out" "2001 added" "import counts"
expect 0 "export" -- "$BIN" device export "$WORK/out1.csv"
[ "$(stat -c %a "$WORK/out1.csv")" = 600 ] && pass || fail "export file (auth strings) is not 0600"
[ "$(wc -l <"$WORK/out1.csv")" -eq 2004 ] && pass || fail "export has header + 2003 rows"
grep -q '^SEP000000000007,install,string,000007,rsa2048,2031-06-01T00:00:00Z$' "$WORK/out1.csv" && pass || fail "exported row"

# Round trip into a fresh directory gives the same file.
new_store
expect 0 "import elsewhere" -- "$BIN" device import "$WORK/out1.csv" --any-name --data-dir "$WORK/data2"
expect 0 "export elsewhere" -- "$BIN" device export - --data-dir "$WORK/data2"
cmp -s "$WORK/out" "$WORK/out1.csv" && pass || fail "export/import round trip differs"

# A bad row: exit 1, line and column named, nothing changed.
cp "$WORK/in.csv" "$WORK/bad.csv"
sed -i '17s/rsa2048/rsa2049/' "$WORK/bad.csv"
sed -i 's/^SEP000000000001,install/SEP000000000001,delete/' "$WORK/bad.csv"
expect 1 "bad csv" -- "$BIN" device import "$WORK/bad.csv"
contains "$WORK/err" "bad.csv:17: column 'key': 'rsa2049' is not one of rsa512," "bad csv message"
expect 0 "export after bad import" -- "$BIN" device export "$WORK/out2.csv"
cmp -s "$WORK/out1.csv" "$WORK/out2.csv" && pass || fail "bad import changed the store"

printf 'name,operation,auth,auth_string,key,completes_by\n' >"$WORK/hdr.csv"
expect 1 "bad header" -- "$BIN" device import "$WORK/hdr.csv"
contains "$WORK/err" "hdr.csv:1: column 3 is 'auth', expected 'auth_mode'" "header message"
: >"$WORK/empty.csv"
expect 1 "empty csv" -- "$BIN" device import "$WORK/empty.csv"
contains "$WORK/err" "empty file" "empty message"
expect 1 "missing csv" -- "$BIN" device import "$WORK/nope.csv"
printf 'name,operation,auth_mode,auth_string,key,completes_by\nSEP0011223344AA,delete,null,,,\n' >"$WORK/upd.csv"
expect 1 "no-update" -- "$BIN" device import "$WORK/upd.csv" --no-update
contains "$WORK/err" "upd.csv:2: device 'SEP0011223344AA' already exists" "no-update message"
printf 'name,operation,auth_mode,auth_string,key,completes_by\nSEPAAAAAAAAAAAA,install,string,,,\n' >"$WORK/gen.csv"
expect 1 "string row without string" -- "$BIN" device import "$WORK/gen.csv"
expect 0 "generate unique" -- "$BIN" device import - --generate-auth-strings unique <"$WORK/gen.csv"
expect 0 "show generated" -- "$BIN" device show SEPAAAAAAAAAAAA --json --show-secrets
json_ok "$WORK/out" "len(d['auth_string'])==6 and d['auth_string'].isdigit()" "generated string"

# --- reports and stale certificates ------------------------------------------------
expect 0 "report status" -- "$BIN" report status --json
json_ok "$WORK/out" "d['total']==2004 and d['by_status']['pending']==2004" "report status"
expect 0 "report expiring" -- "$BIN" report expiring --days 30 --json
json_ok "$WORK/out" "d==[]" "nothing expiring without certificates"
expect 2 "report expiring without days" -- "$BIN" report expiring
expect 0 "list stale" -- "$BIN" cert list-stale --json
json_ok "$WORK/out" "d==[]" "no stale certificates"
expect 2 "delete-stale needs a target" -- "$BIN" cert delete-stale
expect 0 "generate shared" -- "$BIN" device generate-auth-strings --shared
contains "$WORK/out" "for 2003 devices" "generate count (string-mode devices with an operation)"
expect 2 "bulk-set without a filter" -- "$BIN" device bulk-set --operation none
expect 0 "bulk-set dry run" -- "$BIN" device bulk-set --name-prefix SEP00000000 --operation delete --dry-run
contains "$WORK/out" "would change 2000 devices" "bulk-set dry run count"
expect 0 "bulk-set" -- "$BIN" device bulk-set --name-prefix SEP00000000 --operation delete --auth null
contains "$WORK/out" "changed 2000 devices" "bulk-set count"
expect 0 "list after bulk-set" -- "$BIN" device list --json
json_ok "$WORK/out" "sum(1 for x in d if x['operation']=='delete')==2001" "bulk-set applied"
expect 1 "cert export tftp before init" -- "$BIN" cert export tftp
contains "$WORK/err" "capstan init" "tftp export says what to do"

# --- after init: the identity certificates export as PEM ------------------------
expect 0 "init" -- "$BIN" init
expect 0 "cert export capf" -- "$BIN" cert export capf --out "$WORK/capf.pem"
expect 0 "cert export tftp" -- "$BIN" cert export tftp
cp "$WORK/out" "$WORK/tftp.pem"
for which in capf tftp; do
  if python3 - "$WORK/$which.pem" "$which" <<'PY'
import sys
from cryptography import x509
cert = x509.load_pem_x509_certificate(open(sys.argv[1], "rb").read())
cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
assert cn.upper().startswith(sys.argv[2].upper() + "-"), cn
PY
  then pass; else fail "$which certificate PEM"; fi
done
expect 0 "devices survive init" -- "$BIN" report status --json
json_ok "$WORK/out" "d['total']==2004" "init kept the devices"

tally_exit
