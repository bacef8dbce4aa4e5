/* The audit family: AuditEvent records under increasing big-endian
 * nanosecond keys. */
#include <time.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/error.h"
#include "core/base/log.h"
#include "core/base/phone.h"
#include "storage/internal.h"
#include "storage/records.h"

static void be64(uint8_t out[8], uint64_t v) {
  for (int i = 7; i >= 0; i--) {
    out[i] = (uint8_t)v;
    v >>= 8;
  }
}

static uint64_t rd_be64(const uint8_t in[8]) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v = (v << 8) | in[i];
  return v;
}

int capstan_store_audit_append(capstan_txn_t *txn, int64_t at_ns, const char *device,
                               const char *event, const char *detail) {
  int err = capstan_store_check_db(txn, CAPSTAN_DB_AUDIT);
  if (err != 0) return err;
  if (!txn->write || event == NULL) return CAPSTAN_EINVAL;
  if (at_ns <= 0) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    at_ns = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
  }
  /* Clocks of several processes (and NTP) can step back; keep keys
   * increasing so events are never overwritten and stay in write order. */
  uint64_t key = (uint64_t)at_ns;
  MDB_cursor *cur;
  int rc = mdb_cursor_open(txn->mdb, txn->store->dbi[CAPSTAN_DB_AUDIT], &cur);
  if (rc != 0) return capstan_store_map_err(rc, "audit");
  MDB_val k, v;
  rc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
  mdb_cursor_close(cur);
  if (rc == 0 && k.mv_size == 8) {
    uint64_t last = rd_be64(k.mv_data);
    if (key <= last) key = last + 1;
  } else if (rc != 0 && rc != MDB_NOTFOUND) {
    return capstan_store_map_err(rc, "audit");
  }
  Capstan__AuditEvent e = CAPSTAN__AUDIT_EVENT__INIT;
  e.has_at = 1;
  e.at = (int64_t)key;
  e.device = (char *)device;
  e.event = (char *)event;
  e.detail = (char *)detail;
  uint8_t kb[8];
  be64(kb, key);
  return capstan_store_put(txn, CAPSTAN_DB_AUDIT, kb, sizeof(kb), &e.base);
}

int capstan_store_audit_iterate(capstan_txn_t *txn, capstan_store_audit_fn fn, void *arg) {
  return capstan_store_iterate_typed(txn, CAPSTAN_DB_AUDIT, &capstan__audit_event__descriptor,
                                     (int (*)(const void *, void *))fn, arg);
}
