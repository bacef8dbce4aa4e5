#!/usr/bin/env bash
# The PostgreSQL store from the command line (issue 12): `init --store`
# creates the schema and remembers the URL; a second directory joins the
# store and uses its identities; the schema's constraints hold the
# invariants; a schema of a newer release is refused; a URL that does not
# answer leaves nothing behind; backup and restore work across back ends;
# TLS is the only way in. Starts its own PostgreSQL (tests/tools/pg_cluster.sh).
. "$(dirname "$0")/lib.sh"
it_require "$CAPSTAN_BIN" psql jq
it_watchdog 240

PGC="$CAPSTAN_SOURCE_DIR/tests/tools/pg_cluster.sh"
PG="$(mktemp -d /tmp/capstan-pgstore.XXXXXX)"
pg_stop() { timeout 60 "$PGC" stop "$PG" >/dev/null 2>&1; rm -rf "$PG"; }
trap 'pg_stop' EXIT
timeout 90 "$PGC" start "$PG" >/dev/null || fail "PostgreSQL did not start"
URL=$(timeout 60 "$PGC" createdb "$PG" store1) || fail "createdb failed"
C() { timeout 60 "$CAPSTAN_BIN" "$@"; }
sql() { timeout 30 psql "$URL" -XAtq -v ON_ERROR_STOP=1 -c "$1"; }

# --- init creates the schema and remembers the URL -------------------------
out=$(C init --data-dir "$IT_TMP/a" --store "$URL" 2>&1) || fail "init --store failed: $out"
[[ "$(stat -c %a "$IT_TMP/a/store.conf")" == 600 ]] || fail "store.conf is not mode 0600"
grep -qF "store = $URL" "$IT_TMP/a/store.conf" || fail "store.conf does not hold the URL"
[[ ! -e "$IT_TMP/a/data.mdb" ]] || fail "an LMDB store was made beside the PostgreSQL one"
C store show --data-dir "$IT_TMP/a" | grep -qx "backend: postgresql" || fail "store show: not postgresql"
[[ "$(sql "select value from capstan_meta where key='schema_version'")" == 1 ]] ||
  fail "schema_version is not 1"

# --- a second directory joins: the store's identities, never its own --------
out=$(C init --data-dir "$IT_TMP/b" --store "$URL" 2>&1) || fail "joining init failed: $out"
grep -q "joined the store" <<<"$out" || fail "a joining init did not say it joined: $out"
fa=$(C cert capf show --json --data-dir "$IT_TMP/a" | jq -r .sha256)
fb=$(C cert capf show --json --data-dir "$IT_TMP/b" | jq -r .sha256)
[[ -n "$fa" && "$fa" == "$fb" ]] || fail "the joined node has another CAPF certificate ($fa / $fb)"
[[ "$(sql "select count(*) from pki where k in ('capf'::bytea, 'tftp'::bytea)")" == 2 ]] ||
  fail "the store does not hold exactly one CAPF and one TFTP identity"
n=$(C audit list --json --data-dir "$IT_TMP/b" | jq '[.[] | select(.event=="identities_created")] | length')
[[ "$n" == 1 ]] || fail "identities_created $n times: a joining node made its own"

# --- a change through one directory is seen through the other --------------
C device add SEP00AA00BB00CC --operation install --auth null --data-dir "$IT_TMP/a" >/dev/null ||
  fail "device add failed"
C device show SEP00AA00BB00CC --json --data-dir "$IT_TMP/b" | jq -e '.status == "pending"' >/dev/null ||
  fail "the device added through a is not visible through b"

# --- the schema holds the invariants ----------------------------------------
sql "insert into devices (k, v, status) values ('SEP00AA00BB00CC', '', 'OP_STATUS_PENDING')" 2>/dev/null &&
  fail "a second device of the same name was stored"
sql "insert into devices (k, v, status) values ('SEP0011', '', 'BOGUS')" 2>/dev/null &&
  fail "a device with an unknown status was stored"
sql "insert into certs (k, v, status) values ('\\x0102'::bytea, '', 'CERT_STATUS_ISSUED')" 2>/dev/null &&
  fail "a certificate with a 2-byte serial was stored"
sql "insert into certs (k, v, status) values (decode(repeat('ab', 16), 'hex'), '', 'CERT_STATUS_ISSUED')" ||
  fail "a well-formed certificate row was refused"
sql "insert into certs (k, v, status) values (decode(repeat('ab', 16), 'hex'), '', 'CERT_STATUS_ISSUED')" 2>/dev/null &&
  fail "two certificates with one serial were stored"
sql "delete from certs"

# --- a schema of a newer release is refused, with the reason ---------------
sql "update capstan_meta set value = '99' where key = 'schema_version'"
out=$(C device list --data-dir "$IT_TMP/a" 2>&1) && fail "a store of schema 99 was opened"
grep -q "postgres_schema_newer" <<<"$out" || fail "the refusal does not say why: $out"
sql "update capstan_meta set value = '1' where key = 'schema_version'"
C store migrate --data-dir "$IT_TMP/a" | grep -q "current schema" || fail "store migrate failed"

# --- a URL that does not answer: a clear error and nothing left behind -----
port=$(it_free_port)
out=$(C init --data-dir "$IT_TMP/c" --store "postgresql://capstan@127.0.0.1:$port/x?sslmode=require&connect_timeout=3" 2>&1) &&
  fail "init on a database that does not answer succeeded"
grep -q "postgres_unreachable\|storage_error" <<<"$out" || fail "no reason given: $out"
[[ ! -e "$IT_TMP/c/store.conf" ]] || fail "store.conf written although the database did not answer"
out=$(C init --data-dir "$IT_TMP/d" --store "not a url ===" 2>&1) && fail "a malformed URL was taken"
grep -q "postgres_url_invalid" <<<"$out" || fail "a malformed URL is not named as such: $out"

# --- a directory keeps its store -------------------------------------------
C init --data-dir "$IT_TMP/l" --store "" >/dev/null 2>&1 || true
CAPSTAN_STORE="" C init --data-dir "$IT_TMP/l" >/dev/null || fail "LMDB init failed"
out=$(C init --data-dir "$IT_TMP/l" --store "$URL" 2>&1) && fail "an LMDB directory took --store"
grep -q "holds an LMDB store" <<<"$out" || fail "the refusal does not say why: $out"

# --- only TLS gets in --------------------------------------------------------
plain="${URL/sslmode=require/sslmode=disable}"
timeout 30 psql "$plain" -XAtqc "select 1" >/dev/null 2>&1 && fail "the database took a connection without TLS"

# --- backup of the PostgreSQL store, restore into LMDB and back ------------
C backup "$IT_TMP/bk" --data-dir "$IT_TMP/a" >/dev/null || fail "backup of the PostgreSQL store failed"
CAPSTAN_STORE="" C restore "$IT_TMP/bk" --data-dir "$IT_TMP/r" >/dev/null || fail "restore into LMDB failed"
C device show SEP00AA00BB00CC --json --data-dir "$IT_TMP/r" | jq -e '.status == "pending"' >/dev/null ||
  fail "the restored LMDB store lacks the device"
C store show --data-dir "$IT_TMP/r" | grep -qx "backend: lmdb" || fail "restore made a non-LMDB store"
C device add SEP00AA00BB00DD --operation install --auth null --data-dir "$IT_TMP/a" >/dev/null
C restore "$IT_TMP/bk" --data-dir "$IT_TMP/a" --force >/dev/null || fail "restore into PostgreSQL failed"
C device show SEP00AA00BB00DD --data-dir "$IT_TMP/b" >/dev/null 2>&1 &&
  fail "restore into PostgreSQL kept a device the backup does not have"
C device show SEP00AA00BB00CC --json --data-dir "$IT_TMP/b" | jq -e '.status == "pending"' >/dev/null ||
  fail "restore into PostgreSQL lost the backup's device"
n=$(C audit list --device SEP00AA00BB00CC --json --data-dir "$IT_TMP/b" | jq length)
[[ "$n" -ge 1 ]] || fail "the restored audit log has no event of the device"

it_pass
