/* The audit family (storage/audit.h): AuditEvent records under increasing
 * big-endian nanosecond keys, the per-device index, the query, the
 * retention prune and the "first served since the change" rule. */
#include "storage/audit.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/base/error.h"
#include "core/base/log.h"
#include "core/base/phone.h"
#include "storage/internal.h"
#include "storage/pg_store.h"
#include "storage/records.h"

#define NS_PER_SECOND INT64_C(1000000000)
#define SECONDS_PER_DAY INT64_C(86400)
/* How far capstan_audit_note_served looks back through a device's events
 * for its last change. */
#define SERVED_LOOK_BACK 256

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

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * NS_PER_SECOND + ts.tv_nsec;
}

int capstan_store_set_actor(capstan_store_t *store, const char *user) {
  char *copy = NULL;
  if (user != NULL && (copy = strdup(user)) == NULL) return CAPSTAN_ENOMEM;
  free(store->actor);
  store->actor = copy;
  return 0;
}

static bool has_device(const char *device) {
  return device != NULL && device[0] != '\0';
}

/* Adds (or removes) |key| under |device| in the index. */
static int index_put(capstan_txn_t *txn, const char *device, const uint8_t key[8]) {
  size_t n;
  int err = capstan_store_name_key(device, &n);
  if (err != 0) return err;
  if (txn->pg != NULL) return 0; /* the audit table's device column is the index */
  MDB_val k = {.mv_size = n, .mv_data = (void *)device};
  MDB_val v = {.mv_size = 8, .mv_data = (void *)key};
  int rc = mdb_put(txn->mdb, txn->store->dbi[CAPSTAN_DB_AUDIT_DEVICE], &k, &v, MDB_NODUPDATA);
  return rc == MDB_KEYEXIST ? 0 : capstan_store_map_err(rc, "audit");
}

static int index_del(capstan_txn_t *txn, const char *device, const uint8_t key[8]) {
  size_t n;
  if (capstan_store_name_key(device, &n) != 0) return 0; /* never indexed */
  MDB_val k = {.mv_size = n, .mv_data = (void *)device};
  MDB_val v = {.mv_size = 8, .mv_data = (void *)key};
  int rc = mdb_del(txn->mdb, txn->store->dbi[CAPSTAN_DB_AUDIT_DEVICE], &k, &v);
  return rc == MDB_NOTFOUND ? 0 : capstan_store_map_err(rc, "audit");
}

/* Writes the event under |key| (which must be free) and indexes it. */
static int put_event(capstan_txn_t *txn, uint64_t key, const char *device, const char *event,
                     const char *detail) {
  Capstan__AuditEvent e = CAPSTAN__AUDIT_EVENT__INIT;
  e.has_at = 1;
  e.at = (int64_t)key;
  e.device = has_device(device) ? (char *)device : NULL;
  e.event = (char *)event;
  e.detail = (char *)detail;
  e.user = txn->store->actor;
  uint8_t kb[8];
  be64(kb, key);
  int err = capstan_store_put(txn, CAPSTAN_DB_AUDIT, kb, sizeof(kb), &e.base);
  if (err == 0 && e.device != NULL) err = index_put(txn, e.device, kb);
  return err;
}

int capstan_store_audit_append(capstan_txn_t *txn, int64_t at_ns, const char *device,
                               const char *event, const char *detail) {
  int err = capstan_store_check_db(txn, CAPSTAN_DB_AUDIT);
  if (err != 0) return err;
  if (!txn->write || event == NULL) return CAPSTAN_EINVAL;
  if (at_ns <= 0) at_ns = now_ns();
  /* Clocks of several processes (and NTP) can step back; keep keys
   * increasing so events are never overwritten and stay in write order. */
  uint64_t key = (uint64_t)at_ns;
  if (txn->pg != NULL) {
    uint64_t last;
    bool any;
    err = capstan_pg_audit_last(txn->pg, &last, &any);
    if (err != 0) return err;
    if (any && key <= last) key = last + 1;
    return put_event(txn, key, device, event, detail);
  }
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
  return put_event(txn, key, device, event, detail);
}

int capstan_audit_appendf(capstan_txn_t *txn, const char *device, const char *event,
                          const char *fmt, ...) {
  char detail[1000];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(detail, sizeof(detail), fmt, ap);
  va_end(ap);
  return capstan_store_audit_append(txn, 0, device, event, detail);
}

int capstan_store_audit_iterate(capstan_txn_t *txn, capstan_store_audit_fn fn, void *arg) {
  return capstan_store_iterate_typed(txn, CAPSTAN_DB_AUDIT, &capstan__audit_event__descriptor,
                                     (int (*)(const void *, void *))fn, arg);
}

/* ---- Reading ------------------------------------------------------------ */

static Capstan__AuditEvent *unpack_event(const MDB_val *v) {
  Capstan__AuditEvent *e = capstan__audit_event__unpack(NULL, v->mv_size, v->mv_data);
  if (e == NULL) {
    LOG_ERROR("event=storage_record_unreadable db=audit bytes=%zu", v->mv_size);
    capstan_store_count_error("unpack");
  }
  return e;
}

/* Calls fn with the event stored as |v| under |k|. */
static int deliver(const MDB_val *k, const MDB_val *v, capstan_audit_fn fn, void *arg) {
  Capstan__AuditEvent *e = unpack_event(v);
  if (e == NULL) return CAPSTAN_EIO;
  capstan_audit_event_t plain = {
      .at_ns = k->mv_size == 8 ? (int64_t)rd_be64(k->mv_data) : e->at,
      .user = e->user,
      .device = e->device,
      .event = e->event != NULL ? e->event : "?",
      .detail = e->detail,
  };
  int rc = fn(&plain, arg);
  capstan__audit_event__free_unpacked(e, NULL);
  return rc;
}

/* The PostgreSQL back end's rows, delivered as LMDB's are. */
typedef struct {
  capstan_audit_fn fn;
  void *arg;
} pg_deliver_t;

static int pg_deliver(uint64_t key, const Capstan__AuditEvent *e, void *arg) {
  pg_deliver_t *d = arg;
  capstan_audit_event_t plain = {
      .at_ns = (int64_t)key,
      .user = e->user,
      .device = e->device,
      .event = e->event != NULL ? e->event : "?",
      .detail = e->detail,
  };
  return d->fn(&plain, d->arg);
}

static int query_all(capstan_txn_t *txn, int64_t since_ns, capstan_audit_fn fn, void *arg) {
  if (txn->pg != NULL) {
    pg_deliver_t d = {fn, arg};
    return capstan_pg_audit_scan(txn->pg, NULL, since_ns > 0 ? (uint64_t)since_ns : 0, pg_deliver,
                                 &d);
  }
  MDB_cursor *cur;
  int rc = mdb_cursor_open(txn->mdb, txn->store->dbi[CAPSTAN_DB_AUDIT], &cur);
  if (rc != 0) return capstan_store_map_err(rc, "audit");
  uint8_t from[8];
  be64(from, since_ns > 0 ? (uint64_t)since_ns : 0);
  MDB_val k = {.mv_size = 8, .mv_data = from}, v;
  int err = 0;
  for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0;
       rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    if ((err = deliver(&k, &v, fn, arg)) != 0) break;
  }
  mdb_cursor_close(cur);
  if (err > 0) return 0;
  if (err < 0) return err;
  return rc == MDB_NOTFOUND ? 0 : capstan_store_map_err(rc, "audit");
}

static int query_device(capstan_txn_t *txn, int64_t since_ns, const char *device,
                        capstan_audit_fn fn, void *arg) {
  size_t n;
  int err = capstan_store_name_key(device, &n);
  if (err != 0) return err;
  if (txn->pg != NULL) {
    pg_deliver_t d = {fn, arg};
    return capstan_pg_audit_scan(txn->pg, device, since_ns > 0 ? (uint64_t)since_ns : 0, pg_deliver,
                                 &d);
  }
  MDB_cursor *cur;
  int rc = mdb_cursor_open(txn->mdb, txn->store->dbi[CAPSTAN_DB_AUDIT_DEVICE], &cur);
  if (rc != 0) return capstan_store_map_err(rc, "audit");
  uint8_t from[8];
  be64(from, since_ns > 0 ? (uint64_t)since_ns : 0);
  MDB_val k = {.mv_size = n, .mv_data = (void *)device};
  MDB_val d = {.mv_size = 8, .mv_data = from};
  for (rc = mdb_cursor_get(cur, &k, &d, MDB_GET_BOTH_RANGE); rc == 0;
       rc = mdb_cursor_get(cur, &k, &d, MDB_NEXT_DUP)) {
    if (d.mv_size != 8) continue;
    MDB_val ek = {.mv_size = 8, .mv_data = d.mv_data}, ev;
    int got = mdb_get(txn->mdb, txn->store->dbi[CAPSTAN_DB_AUDIT], &ek, &ev);
    if (got == MDB_NOTFOUND) continue; /* pruned by a store without the index */
    if (got != 0) {
      err = capstan_store_map_err(got, "audit");
      break;
    }
    if ((err = deliver(&ek, &ev, fn, arg)) != 0) break;
  }
  mdb_cursor_close(cur);
  if (err > 0) return 0;
  if (err < 0) return err;
  return rc == MDB_NOTFOUND ? 0 : capstan_store_map_err(rc, "audit");
}

int capstan_audit_query(capstan_txn_t *txn, int64_t since_ns, const char *device,
                        capstan_audit_fn fn, void *arg) {
  int err = capstan_store_check_db(txn, CAPSTAN_DB_AUDIT);
  if (err != 0) return err;
  return device != NULL ? query_device(txn, since_ns, device, fn, arg)
                        : query_all(txn, since_ns, fn, arg);
}

/* ---- Retention ------------------------------------------------------------ */

static void format_utc(int64_t ns, char *buf, size_t len) {
  time_t t = (time_t)(ns / NS_PER_SECOND);
  struct tm tm;
  if (gmtime_r(&t, &tm) == NULL || strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0) {
    snprintf(buf, len, "%lld", (long long)ns);
  }
}

int capstan_audit_prune(capstan_txn_t *txn, int64_t now_ns, unsigned retention_days, size_t limit,
                        size_t *removed, bool *more) {
  *removed = 0;
  *more = false;
  int err = capstan_store_check_db(txn, CAPSTAN_DB_AUDIT);
  if (err != 0) return err;
  if (!txn->write) return CAPSTAN_EINVAL;
  int64_t keep = (int64_t)retention_days * SECONDS_PER_DAY * NS_PER_SECOND;
  if (retention_days == 0 || now_ns <= keep) return 0;
  uint64_t before = (uint64_t)(now_ns - keep);
  int rc = 0;
  if (txn->pg != NULL) {
    err = capstan_pg_audit_prune(txn->pg, before, limit, removed, more);
    if (err != 0) return err;
    goto pruned;
  }
  MDB_cursor *cur;
  rc = mdb_cursor_open(txn->mdb, txn->store->dbi[CAPSTAN_DB_AUDIT], &cur);
  if (rc != 0) return capstan_store_map_err(rc, "audit");
  MDB_val k, v;
  for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
       rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    if (k.mv_size == 8 && rd_be64(k.mv_data) >= before) break;
    if (*removed == limit) {
      *more = true;
      break;
    }
    if (k.mv_size == 8) {
      uint8_t key[8];
      memcpy(key, k.mv_data, 8);
      Capstan__AuditEvent *e = unpack_event(&v);
      /* An unreadable event is removed all the same; its index entry, if
       * any, is skipped by queries. */
      if (e != NULL && has_device(e->device)) err = index_del(txn, e->device, key);
      capstan__audit_event__free_unpacked(e, NULL);
      if (err != 0) break;
    }
    rc = mdb_cursor_del(cur, 0);
    if (rc != 0) break;
    (*removed)++;
  }
  mdb_cursor_close(cur);
  if (err != 0) return err;
  if (rc != 0 && rc != MDB_NOTFOUND) return capstan_store_map_err(rc, "audit");
pruned:
  if (*removed == 0) return 0;
  char until[32];
  format_utc((int64_t)before, until, sizeof(until));
  return capstan_audit_appendf(txn, NULL, CAPSTAN_AUDIT_PRUNED,
                               "removed=%zu older_than=%s retention_days=%u%s", *removed, until,
                               retention_days, *more ? " more=yes" : "");
}

/* ---- First served since the change ------------------------------------ */

/* Events of a device that leave its files as they were. */
static bool changes_files(const char *event) {
  static const char *const kNoChange[] = {CAPSTAN_AUDIT_FILE_SERVED, "attempt", "attempt_failed",
                                          "operation_expired"};
  if (event == NULL) return false;
  for (size_t i = 0; i < sizeof(kNoChange) / sizeof(kNoChange[0]); i++) {
    if (strcmp(event, kNoChange[i]) == 0) return false;
  }
  return true;
}

/* Whether |device|'s history before |before| has a file_served for
 * |detail| after its last change (within the look back). */
typedef struct {
  const char *detail;
  bool *served;
} served_scan_t;

/* One event, newest first: 1 stops (a change, or the file served). */
static int served_step(uint64_t key, const Capstan__AuditEvent *e, void *arg) {
  served_scan_t *s = arg;
  if (e->event != NULL && strcmp(e->event, CAPSTAN_AUDIT_FILE_SERVED) == 0) {
    *s->served = e->detail != NULL && strcmp(e->detail, s->detail) == 0;
    return *s->served ? 1 : 0;
  }
  return changes_files(e->event) ? 1 : 0;
}

static int served_since_change(capstan_txn_t *txn, const char *device, const char *detail,
                               uint64_t before, bool *served) {
  *served = false;
  size_t n;
  int err = capstan_store_name_key(device, &n);
  if (err != 0) return err;
  if (txn->pg != NULL) {
    served_scan_t s = {detail, served};
    return capstan_pg_audit_scan_back(txn->pg, device, before, SERVED_LOOK_BACK, served_step, &s);
  }
  MDB_cursor *cur;
  int rc = mdb_cursor_open(txn->mdb, txn->store->dbi[CAPSTAN_DB_AUDIT_DEVICE], &cur);
  if (rc != 0) return capstan_store_map_err(rc, "audit");
  /* The device's last event before |before|. */
  uint8_t from[8];
  be64(from, before);
  MDB_val k = {.mv_size = n, .mv_data = (void *)device};
  MDB_val d = {.mv_size = 8, .mv_data = from};
  rc = mdb_cursor_get(cur, &k, &d, MDB_GET_BOTH_RANGE);
  if (rc == 0) {
    rc = mdb_cursor_get(cur, &k, &d, MDB_PREV_DUP);
  } else if (rc == MDB_NOTFOUND) {
    k = (MDB_val){.mv_size = n, .mv_data = (void *)device};
    rc = mdb_cursor_get(cur, &k, &d, MDB_SET);
    if (rc == 0) rc = mdb_cursor_get(cur, &k, &d, MDB_LAST_DUP);
  }
  for (int seen = 0; rc == 0 && seen < SERVED_LOOK_BACK; seen++) {
    MDB_val ek = {.mv_size = 8, .mv_data = d.mv_data}, ev;
    int got = d.mv_size == 8 ? mdb_get(txn->mdb, txn->store->dbi[CAPSTAN_DB_AUDIT], &ek, &ev)
                             : MDB_NOTFOUND;
    if (got == 0) {
      Capstan__AuditEvent *e = unpack_event(&ev);
      if (e == NULL) {
        err = CAPSTAN_EIO;
        break;
      }
      bool stop = false;
      if (e->event != NULL && strcmp(e->event, CAPSTAN_AUDIT_FILE_SERVED) == 0) {
        stop = *served = e->detail != NULL && strcmp(e->detail, detail) == 0;
      } else if (changes_files(e->event)) {
        stop = true;
      }
      capstan__audit_event__free_unpacked(e, NULL);
      if (stop) break;
    } else if (got != MDB_NOTFOUND) {
      err = capstan_store_map_err(got, "audit");
      break;
    }
    rc = mdb_cursor_get(cur, &k, &d, MDB_PREV_DUP);
  }
  mdb_cursor_close(cur);
  if (err != 0) return err;
  return rc == 0 || rc == MDB_NOTFOUND ? 0 : capstan_store_map_err(rc, "audit");
}

int capstan_audit_note_served(capstan_txn_t *txn, int64_t at_ns, const char *device,
                              const char *file, bool *appended) {
  *appended = false;
  int err = capstan_store_check_db(txn, CAPSTAN_DB_AUDIT);
  if (err != 0) return err;
  if (!txn->write || !has_device(device) || file == NULL) return CAPSTAN_EINVAL;
  if (at_ns <= 0) at_ns = now_ns();
  /* The event goes where it happened in the log, not where it is written:
   * the first free key from |at_ns| on. */
  uint64_t key = (uint64_t)at_ns;
  for (;;) {
    if (txn->pg != NULL) {
      bool taken;
      err = capstan_pg_audit_key_taken(txn->pg, key, &taken);
      if (err != 0) return err;
      if (!taken) break;
      key++;
      continue;
    }
    uint8_t kb[8];
    be64(kb, key);
    MDB_val k = {.mv_size = 8, .mv_data = kb}, v;
    int rc = mdb_get(txn->mdb, txn->store->dbi[CAPSTAN_DB_AUDIT], &k, &v);
    if (rc == MDB_NOTFOUND) break;
    if (rc != 0) return capstan_store_map_err(rc, "audit");
    key++;
  }
  char detail[300];
  snprintf(detail, sizeof(detail), "file=%s", file);
  bool served;
  err = served_since_change(txn, device, detail, key, &served);
  if (err != 0 || served) return err;
  err = put_event(txn, key, device, CAPSTAN_AUDIT_FILE_SERVED, detail);
  *appended = err == 0;
  return err;
}

/* ---- The index of a store written before it existed -------------------- */

int capstan_store_audit_reindex(capstan_txn_t *txn) {
  MDB_stat idx, log;
  int rc = mdb_stat(txn->mdb, txn->store->dbi[CAPSTAN_DB_AUDIT_DEVICE], &idx);
  if (rc == 0) rc = mdb_stat(txn->mdb, txn->store->dbi[CAPSTAN_DB_AUDIT], &log);
  if (rc != 0) return capstan_store_map_err(rc, "stat");
  if (idx.ms_entries > 0 || log.ms_entries == 0) return 0;
  MDB_cursor *cur;
  rc = mdb_cursor_open(txn->mdb, txn->store->dbi[CAPSTAN_DB_AUDIT], &cur);
  if (rc != 0) return capstan_store_map_err(rc, "audit");
  MDB_val k, v;
  int err = 0;
  size_t indexed = 0;
  for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0 && err == 0;
       rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    if (k.mv_size != 8) continue;
    Capstan__AuditEvent *e = unpack_event(&v);
    if (e == NULL) continue; /* reported; the log stays readable around it */
    if (has_device(e->device)) {
      err = index_put(txn, e->device, k.mv_data);
      indexed++;
    }
    capstan__audit_event__free_unpacked(e, NULL);
  }
  mdb_cursor_close(cur);
  if (err != 0) return err;
  if (rc != MDB_NOTFOUND) return capstan_store_map_err(rc, "audit");
  if (indexed > 0) LOG_INFO("event=audit_index_built events=%zu", indexed);
  return 0;
}
