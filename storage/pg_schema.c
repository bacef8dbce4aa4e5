/* The PostgreSQL schema: created by `capstan init`, migrated by `capstan
 * store migrate`, checked by every open (storage/pg_store.h).
 *
 * capstan_meta holds schema_version. Each migration step takes the schema
 * from version N-1 to N inside the caller's write transaction (DDL is
 * transactional in PostgreSQL: a failed step leaves the old schema). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/error.h"
#include "core/base/log.h"
#include "storage/pg_store.h"

/* "'A', 'B', ..." of an enum's names: the status columns hold exactly the
 * values records.proto defines (pg_store.c writes the same names). */
static void enum_list(const ProtobufCEnumDescriptor *d, char *out, size_t len) {
  size_t n = 0;
  out[0] = '\0';
  for (unsigned i = 0; i < d->n_values && n < len; i++) {
    n += (size_t)snprintf(out + n, len - n, "%s'%s'", i > 0 ? ", " : "", d->values[i].name);
  }
}

/* Version 1: one table per named database of storage/store.h. */
static int migrate_to_1(pg_conn_t *c) {
  char ops[512], certs[256], csrs[256], sql[4096];
  enum_list(&capstan__op_status__descriptor, ops, sizeof(ops));
  enum_list(&capstan__cert_status__descriptor, certs, sizeof(certs));
  enum_list(&capstan__csr_status__descriptor, csrs, sizeof(csrs));
  snprintf(
      sql, sizeof(sql),
      /* One device per name (1..255 bytes), its status one of OpStatus. */
      "CREATE TABLE devices (k bytea PRIMARY KEY CHECK (octet_length(k) BETWEEN 1 AND 255), "
      "v bytea NOT NULL, status text NOT NULL CHECK (status IN (%s)));"
      /* The repairs look for devices in progress every few seconds. */
      "CREATE INDEX devices_in_progress ON devices (k) WHERE status = 'OP_STATUS_IN_PROGRESS';"
      /* One certificate per 16-byte serial. */
      "CREATE TABLE certs (k bytea PRIMARY KEY CHECK (octet_length(k) = 16), v bytea NOT NULL, "
      "status text NOT NULL CHECK (status IN (%s)));"
      "CREATE TABLE pki (k bytea PRIMARY KEY, v bytea NOT NULL);"
      "CREATE TABLE trust (k bytea PRIMARY KEY CHECK (octet_length(k) = 32), v bytea NOT NULL);"
      "CREATE TABLE templates (k bytea PRIMARY KEY CHECK (octet_length(k) BETWEEN 1 AND 255), "
      "v bytea NOT NULL);"
      "CREATE TABLE settings (k bytea PRIMARY KEY, v bytea NOT NULL);"
      /* Events under increasing 8-byte keys; the device column is the
       * per-device index LMDB keeps as audit_device. */
      "CREATE TABLE audit (k bytea PRIMARY KEY CHECK (octet_length(k) = 8), v bytea NOT NULL, "
      "device text);"
      "CREATE INDEX audit_by_device ON audit (device, k) WHERE device IS NOT NULL;"
      "CREATE TABLE capf_previous (k bytea PRIMARY KEY CHECK (octet_length(k) = 32), "
      "v bytea NOT NULL);"
      "CREATE TABLE csr (k bytea PRIMARY KEY CHECK (octet_length(k) = 32), v bytea NOT NULL, "
      "status text NOT NULL CHECK (status IN (%s)));"
      /* The nodes sharing the store: each writes its row every few
       * seconds (storage/pg_cluster.c). */
      "CREATE TABLE nodes (name text PRIMARY KEY, started_at timestamptz NOT NULL, "
      "heartbeat_at timestamptz NOT NULL, pid integer NOT NULL, version text NOT NULL, "
      "detail text NOT NULL DEFAULT '', leader boolean NOT NULL DEFAULT false);",
      ops, certs, csrs);
  return capstan_pg_exec(c, sql, "migrate");
}

static int (*const kSteps[CAPSTAN_PG_SCHEMA_VERSION])(pg_conn_t *) = {migrate_to_1};

/* The stored version: 0 when capstan_meta is missing. */
static int stored_version(pg_conn_t *c, int *version) {
  const capstan_libpq_t *pq = capstan_pg_lib_of(c);
  PGresult *r =
      pq->exec(capstan_pg_raw(c), "SELECT value FROM capstan_meta WHERE key = 'schema_version'");
  ExecStatusType st = r != NULL ? pq->result_status(r) : PGRES_FATAL_ERROR;
  if (st != PGRES_TUPLES_OK) {
    const char *state = r != NULL ? pq->result_error_field(r, PG_DIAG_SQLSTATE) : NULL;
    bool missing = state != NULL && strcmp(state, "42P01") == 0; /* undefined_table */
    if (r != NULL) pq->clear(r);
    if (!missing) return capstan_pg_exec(c, "SELECT 1 FROM capstan_meta", "schema");
    /* The failed statement ended the transaction's usefulness: the caller
     * starts again (a write transaction creates the schema). */
    *version = 0;
    return 0;
  }
  /* Read from the database: only a whole, small, non-negative number is a
   * version (another is not a capstan schema this build can use). */
  int err = 0;
  *version = 0;
  if (pq->ntuples(r) == 1) {
    const char *v = pq->getvalue(r, 0, 0);
    char *end = NULL;
    long n = strtol(v, &end, 10);
    if (v[0] < '0' || v[0] > '9' || *end != '\0' || n < 0 || n > 1000000) {
      LOG_ERROR("event=postgres_schema_invalid value=\"%.32s\"", v);
      err = CAPSTAN_EINVAL;
    } else {
      *version = (int)n;
    }
  }
  pq->clear(r);
  return err;
}

int capstan_pg_schema_check(pg_conn_t *c, bool write, bool create, bool migrate) {
  int version = 0;
  /* In a subtransaction: a missing table fails only this statement. */
  int err = capstan_pg_exec(c, "SAVEPOINT schema_check", "schema");
  if (err == 0) err = stored_version(c, &version);
  if (err == 0) err = capstan_pg_exec(c, "ROLLBACK TO SAVEPOINT schema_check", "schema");
  if (err != 0) return err;
  if (version == CAPSTAN_PG_SCHEMA_VERSION) return 0;
  if (version > CAPSTAN_PG_SCHEMA_VERSION) {
    LOG_ERROR(
        "event=postgres_schema_newer stored=%d supported=%d hint=\"this store was written "
        "by a newer capstan: run that version\"",
        version, CAPSTAN_PG_SCHEMA_VERSION);
    return CAPSTAN_EINVAL;
  }
  if (version == 0 && !create) return CAPSTAN_ENOENT;
  if (version > 0 && !migrate) {
    LOG_ERROR(
        "event=postgres_schema_old stored=%d supported=%d hint=\"run 'capstan store "
        "migrate' (with every node stopped or upgraded)\"",
        version, CAPSTAN_PG_SCHEMA_VERSION);
    return CAPSTAN_EINVAL;
  }
  if (!write) return CAPSTAN_EBUSY;
  if (version == 0) {
    err = capstan_pg_exec(c,
                          "CREATE TABLE capstan_meta (key text PRIMARY KEY, value text NOT NULL);"
                          "INSERT INTO capstan_meta VALUES ('schema_version', '0')",
                          "migrate");
    if (err != 0) return err;
  }
  for (int v = version; v < CAPSTAN_PG_SCHEMA_VERSION; v++) {
    err = kSteps[v](c);
    if (err != 0) return err;
    char sql[128];
    snprintf(sql, sizeof(sql), "UPDATE capstan_meta SET value = '%d' WHERE key = 'schema_version'",
             v + 1);
    err = capstan_pg_exec(c, sql, "migrate");
    if (err != 0) return err;
    LOG_INFO("event=postgres_schema_migrated to=%d", v + 1);
  }
  return 1;
}
