/* The audit log (storage/audit.h): append with the actor, order and keys,
 * the query (all, since, one device through the index), the retention
 * prune with a given `now`, "first served since the change", and the index
 * built for a store written before it existed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <time.h>

#include "core/base/error.h"
#include "handlers/capf/records.h"
#include "handlers/cli/cli.h"
#include "storage/audit.h"
#include "storage/devices.h"
#include "storage/internal.h"
#include "storage/records.h"
#include "store_test_util.h"

#define NS INT64_C(1000000000)
#define DAY (INT64_C(86400) * NS)
#define A "SEP0011223344AA"
#define B "SEP0011223344BB"

typedef struct {
  char *dir;
  capstan_store_t *store;
} fixture_t;

static int setup(void **state) {
  fixture_t *f = calloc(1, sizeof(*f));
  f->dir = test_tmpdir();
  assert_int_equal(test_store_open(f->dir, &f->store), 0);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture_t *f = *state;
  capstan_store_close(f->store);
  test_rmdir(f->dir);
  free(f);
  return 0;
}

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * NS + ts.tv_nsec;
}

/* What a query returned, as "device:event:detail:user" lines. */
typedef struct {
  char lines[64][256];
  int64_t at[64];
  size_t n;
  size_t stop_after; /* 0: never */
} seen_t;

static int collect(const capstan_audit_event_t *e, void *arg) {
  seen_t *s = arg;
  assert_true(s->n < 64);
  if (s->n > 0) assert_true(e->at_ns > s->at[s->n - 1]); /* strictly in order */
  s->at[s->n] = e->at_ns;
  snprintf(s->lines[s->n++], 256, "%s:%s:%s:%s", e->device ? e->device : "-", e->event,
           e->detail ? e->detail : "-", e->user ? e->user : "-");
  return s->stop_after != 0 && s->n == s->stop_after ? 1 : 0;
}

typedef struct {
  int64_t since;
  const char *device;
  seen_t *seen;
} query_t;

static int query_fn(capstan_txn_t *txn, void *arg) {
  query_t *q = arg;
  return capstan_audit_query(txn, q->since, q->device, collect, q->seen);
}

static void query(fixture_t *f, int64_t since, const char *device, seen_t *out) {
  memset(out, 0, sizeof(*out));
  query_t q = {since, device, out};
  assert_int_equal(capstan_store_read(f->store, query_fn, &q), 0);
}

static void append(fixture_t *f, int64_t at, const char *device, const char *event,
                   const char *detail) {
  capstan_txn_t txn;
  assert_int_equal(capstan_store_begin(f->store, true, &txn), 0);
  assert_int_equal(capstan_store_audit_append(&txn, at, device, event, detail), 0);
  assert_int_equal(capstan_store_commit(&txn), 0);
}

static void test_append_and_query(void **state) {
  fixture_t *f = *state;
  int64_t t0 = now_ns() - 10 * DAY;
  append(f, t0, A, "device_added", "operation=install");
  assert_int_equal(capstan_store_set_actor(f->store, "root (sudo by alice)"), 0);
  append(f, t0 + NS, NULL, "setting_changed", "validity-days=30");
  append(f, t0 + 2 * NS, B, "device_added", NULL);
  assert_int_equal(capstan_store_set_actor(f->store, NULL), 0);
  append(f, t0 + 3 * NS, A, "attempt", "peer=127.0.0.1 operation=install");
  /* A clock that stepped back: written after, listed after. */
  append(f, t0 + NS / 2, A, "cert_issued", "serial=40");

  seen_t s;
  query(f, 0, NULL, &s);
  assert_int_equal(s.n, 5);
  assert_string_equal(s.lines[0], A ":device_added:operation=install:-");
  assert_string_equal(s.lines[1], "-:setting_changed:validity-days=30:root (sudo by alice)");
  assert_string_equal(s.lines[2], B ":device_added:-:root (sudo by alice)");
  assert_string_equal(s.lines[3], A ":attempt:peer=127.0.0.1 operation=install:-");
  assert_string_equal(s.lines[4], A ":cert_issued:serial=40:-");
  assert_int_equal(s.at[0], t0);
  assert_int_equal(s.at[4], t0 + 3 * NS + 1);

  /* Since: inclusive, from the first event at or after it. */
  query(f, t0 + NS, NULL, &s);
  assert_int_equal(s.n, 4);
  assert_string_equal(s.lines[0], "-:setting_changed:validity-days=30:root (sudo by alice)");
  query(f, t0 + 3 * NS + 2, NULL, &s);
  assert_int_equal(s.n, 0);

  /* One device, through the index; since applies too. */
  query(f, 0, A, &s);
  assert_int_equal(s.n, 3);
  assert_string_equal(s.lines[0], A ":device_added:operation=install:-");
  assert_string_equal(s.lines[2], A ":cert_issued:serial=40:-");
  query(f, t0 + 1, A, &s);
  assert_int_equal(s.n, 2);
  query(f, 0, "SEP000000000000", &s);
  assert_int_equal(s.n, 0);

  /* fn stops the query with 1. */
  memset(&s, 0, sizeof(s));
  s.stop_after = 2;
  query_t q = {0, NULL, &s};
  assert_int_equal(capstan_store_read(f->store, query_fn, &q), 0);
  assert_int_equal(s.n, 2);
}

typedef struct {
  int64_t now;
  unsigned days;
  size_t limit, removed;
  bool more;
} prune_t;

static int prune_fn(capstan_txn_t *txn, void *arg) {
  prune_t *p = arg;
  return capstan_audit_prune(txn, p->now, p->days, p->limit, &p->removed, &p->more);
}

static prune_t prune(fixture_t *f, int64_t now, unsigned days, size_t limit) {
  prune_t p = {.now = now, .days = days, .limit = limit};
  assert_int_equal(capstan_store_write(f->store, prune_fn, &p), 0);
  return p;
}

static uint64_t index_entries(fixture_t *f) {
  capstan_txn_t txn;
  assert_int_equal(capstan_store_begin(f->store, false, &txn), 0);
  uint64_t n;
  assert_int_equal(capstan_store_count(&txn, CAPSTAN_DB_AUDIT_DEVICE, &n), 0);
  capstan_store_abort(&txn);
  return n;
}

static void test_prune_by_retention(void **state) {
  fixture_t *f = *state;
  /* One event a day from 400 days ago for 5 days, then events 2 days and
   * 1 hour ago. */
  int64_t now = now_ns();
  int64_t start = now - 400 * DAY;
  for (int i = 0; i < 5; i++) append(f, start + i * DAY, i % 2 ? A : B, "device_changed", NULL);
  append(f, now - 2 * DAY, A, "cert_installed", "serial=41");
  append(f, now - 3600 * NS, A, "attempt", NULL);
  assert_int_equal(index_entries(f), 7);

  /* Retention 0 keeps everything, and nothing is older than 500 days. */
  prune_t p = prune(f, now, 0, 100);
  assert_int_equal(p.removed, 0);
  p = prune(f, now, 500, 100);
  assert_int_equal(p.removed, 0);
  assert_false(p.more);

  /* 365 days, two at a time: the five old events go, in three calls. */
  p = prune(f, now, 365, 2);
  assert_int_equal(p.removed, 2);
  assert_true(p.more);
  p = prune(f, now, 365, 2);
  assert_int_equal(p.removed, 2);
  assert_true(p.more);
  p = prune(f, now, 365, 2);
  assert_int_equal(p.removed, 1);
  assert_false(p.more);
  p = prune(f, now, 365, 2);
  assert_int_equal(p.removed, 0);

  /* What it kept, then one audit_pruned per call that removed any. */
  seen_t s;
  query(f, 0, NULL, &s);
  assert_int_equal(s.n, 5);
  assert_string_equal(s.lines[0], A ":cert_installed:serial=41:-");
  assert_string_equal(s.lines[1], A ":attempt:-:-");
  assert_non_null(strstr(s.lines[2], "-:audit_pruned:removed=2 older_than="));
  assert_non_null(strstr(s.lines[2], " retention_days=365 more=yes"));
  assert_non_null(strstr(s.lines[4], "-:audit_pruned:removed=1 older_than="));
  assert_null(strstr(s.lines[4], "more=yes"));
  /* The index lost the pruned events too. */
  assert_int_equal(index_entries(f), 2);
  query(f, 0, B, &s);
  assert_int_equal(s.n, 0);
  query(f, 0, A, &s);
  assert_int_equal(s.n, 2);

  /* A day: the event of 2 days ago goes; the cut-off is exact. */
  p = prune(f, now, 1, 100);
  assert_int_equal(p.removed, 1);
  query(f, 0, A, &s);
  assert_int_equal(s.n, 1);
  assert_string_equal(s.lines[0], A ":attempt:-:-");
  p = prune(f, now + 23 * 3600 * NS, 1, 100);
  assert_int_equal(p.removed, 0);
  p = prune(f, now + 23 * 3600 * NS + 1, 1, 100);
  assert_int_equal(p.removed, 1);
  assert_int_equal(index_entries(f), 0);
}

typedef struct {
  int64_t at;
  const char *device, *file;
  bool appended;
} served_t;

static int served_fn(capstan_txn_t *txn, void *arg) {
  served_t *s = arg;
  return capstan_audit_note_served(txn, s->at, s->device, s->file, &s->appended);
}

static bool served(fixture_t *f, const char *device, const char *file) {
  served_t s = {0, device, file, false};
  assert_int_equal(capstan_store_write(f->store, served_fn, &s), 0);
  return s.appended;
}

static void test_first_served_since_change(void **state) {
  fixture_t *f = *state;
  /* A device with no history yet: its first download is recorded, the
   * next ones of the same file are not; another file is. */
  assert_true(served(f, A, "SEP0011223344AA.cnf.xml.sgn"));
  assert_false(served(f, A, "SEP0011223344AA.cnf.xml.sgn"));
  assert_true(served(f, A, "ITLSEP0011223344AA.tlv"));
  assert_false(served(f, A, "SEP0011223344AA.cnf.xml.sgn"));
  /* A session's attempt or failure changes no file. */
  append(f, 0, A, "attempt", "peer=127.0.0.1 operation=install");
  append(f, 0, A, "attempt_failed", "reason=\"x\"");
  assert_false(served(f, A, "SEP0011223344AA.cnf.xml.sgn"));
  /* A new certificate does: each file once more. */
  append(f, 0, A, "cert_installed", "serial=41");
  assert_true(served(f, A, "SEP0011223344AA.cnf.xml.sgn"));
  assert_true(served(f, A, "SEP0011223344AA.cnf.xml.enc.sgn"));
  assert_false(served(f, A, "SEP0011223344AA.cnf.xml.enc.sgn"));
  assert_true(served(f, A, "ITLSEP0011223344AA.tlv"));
  assert_false(served(f, A, "SEP0011223344AA.cnf.xml.sgn"));
  /* Other devices' events do not count. */
  append(f, 0, B, "device_changed", NULL);
  assert_false(served(f, A, "ITLSEP0011223344AA.tlv"));

  seen_t s;
  query(f, 0, A, &s);
  assert_int_equal(s.n, 8);
  assert_string_equal(s.lines[0], A ":file_served:file=SEP0011223344AA.cnf.xml.sgn:-");
  assert_string_equal(s.lines[4], A ":cert_installed:serial=41:-");
  assert_string_equal(s.lines[6], A ":file_served:file=SEP0011223344AA.cnf.xml.enc.sgn:-");

  served_t bad = {0, NULL, "x", false};
  capstan_txn_t txn;
  assert_int_equal(capstan_store_begin(f->store, true, &txn), 0);
  assert_int_equal(served_fn(&txn, &bad), CAPSTAN_EINVAL);
  capstan_store_abort(&txn);
}

/* Downloads are noted when they happen and written up to a second later:
 * one noted before a change but written after it stays before it, and
 * counts as served before the change. */
static bool served_at(fixture_t *f, int64_t at, const char *file) {
  served_t s = {at, A, file, false};
  assert_int_equal(capstan_store_write(f->store, served_fn, &s), 0);
  return s.appended;
}

static void test_served_noted_late(void **state) {
  fixture_t *f = *state;
  int64_t t = now_ns();
  append(f, t - 10 * NS, A, "device_added", NULL);
  append(f, t, A, "cert_installed", "serial=41"); /* the change */
  /* The boot before the enrollment, written after it. */
  assert_true(served_at(f, t - 5 * NS, "SEP0011223344AA.cnf.xml.sgn"));
  assert_false(served_at(f, t - 4 * NS, "SEP0011223344AA.cnf.xml.sgn"));
  /* The boot after it. */
  assert_true(served_at(f, t + 5 * NS, "SEP0011223344AA.cnf.xml.sgn"));
  assert_false(served_at(f, t + 6 * NS, "SEP0011223344AA.cnf.xml.sgn"));
  /* Two notes at the same nanosecond keep both (the next free key). */
  assert_true(served_at(f, t + 5 * NS, "ITLSEP0011223344AA.tlv"));
  seen_t s;
  query(f, 0, A, &s);
  assert_int_equal(s.n, 5);
  assert_string_equal(s.lines[0], A ":device_added:-:-");
  assert_string_equal(s.lines[1], A ":file_served:file=SEP0011223344AA.cnf.xml.sgn:-");
  assert_int_equal(s.at[1], t - 5 * NS);
  assert_string_equal(s.lines[2], A ":cert_installed:serial=41:-");
  assert_string_equal(s.lines[3], A ":file_served:file=SEP0011223344AA.cnf.xml.sgn:-");
  assert_int_equal(s.at[3], t + 5 * NS);
  assert_string_equal(s.lines[4], A ":file_served:file=ITLSEP0011223344AA.tlv:-");
  assert_int_equal(s.at[4], t + 5 * NS + 1);
  /* Appends still go after the last key. */
  append(f, t - 20 * NS, A, "device_changed", NULL);
  query(f, 0, A, &s);
  assert_int_equal(s.at[5], t + 5 * NS + 2);
}

/* A store written before the index existed: its events are indexed when it
 * is opened. */
static void test_index_built_on_open(void **state) {
  fixture_t *f = *state;
  /* PostgreSQL's audit table indexes its device column itself. */
  if (strcmp(capstan_store_backend(f->store), "postgresql") == 0) skip();
  append(f, 0, A, "device_added", NULL);
  append(f, 0, NULL, "setting_changed", NULL);
  append(f, 0, B, "device_added", NULL);
  append(f, 0, A, "device_removed", NULL);
  capstan_txn_t txn;
  assert_int_equal(capstan_store_begin(f->store, true, &txn), 0);
  assert_int_equal(mdb_drop(txn.mdb, f->store->dbi[CAPSTAN_DB_AUDIT_DEVICE], 0), 0);
  assert_int_equal(capstan_store_commit(&txn), 0);
  assert_int_equal(index_entries(f), 0);
  seen_t s;
  query(f, 0, A, &s);
  assert_int_equal(s.n, 0);

  capstan_store_close(f->store);
  assert_int_equal(capstan_store_open(f->dir, 0, &f->store), 0);
  assert_int_equal(index_entries(f), 3);
  query(f, 0, A, &s);
  assert_int_equal(s.n, 2);
  assert_string_equal(s.lines[1], A ":device_removed:-:-");
}

/* What a CAPF session writes (handlers/capf/records.c) carries its audit
 * events, with the peer, in the same write. */
static int apply_fn(capstan_txn_t *txn, void *arg) {
  return capf_record_apply(txn, arg);
}

static void apply(fixture_t *f, capf_record_t *r) {
  snprintf(r->peer, sizeof(r->peer), "192.0.2.7");
  r->operation = CAPF_OPERATION_INSTALL;
  assert_int_equal(capstan_store_write(f->store, apply_fn, r), 0);
  capf_record_free(r);
}

static int add_device_fn(capstan_txn_t *txn, void *arg) {
  Capstan__Device *d = capstan_device_new(A);
  d->has_operation = 1;
  d->operation = CAPSTAN__OPERATION__OPERATION_INSTALL;
  capstan_device_rearm(d, 1);
  int rc = capstan_store_device_put(txn, d);
  capstan__device__free_unpacked(d, NULL);
  return rc;
}

static void test_capf_records_audited(void **state) {
  fixture_t *f = *state;
  assert_int_equal(capstan_store_write(f->store, add_device_fn, NULL), 0);
  capf_record_t *r = capf_record_new(CAPF_RECORD_STATUS, A);
  r->status = CAPF_STATUS_IN_PROGRESS;
  r->count_attempt = 1;
  apply(f, r);
  r = capf_record_new(CAPF_RECORD_STATUS, A);
  r->status = CAPF_STATUS_FAILED;
  r->reason = "authentication failed";
  apply(f, r);
  r = capf_record_new(CAPF_RECORD_STATUS, A);
  r->status = CAPF_STATUS_EXPIRED;
  r->reason = "operation deadline passed";
  apply(f, r);
  r = capf_record_new(CAPF_RECORD_FETCHED, A);
  r->reason = "phone reported no certificate";
  apply(f, r);
  seen_t s;
  query(f, 0, A, &s);
  assert_int_equal(s.n, 5);
  assert_string_equal(s.lines[0], A ":attempt:peer=192.0.2.7 operation=install:-");
  assert_string_equal(s.lines[1], A
                      ":attempt_failed:peer=192.0.2.7 operation=install reason=\"authentication "
                      "failed\":-");
  assert_string_equal(s.lines[2], A
                      ":operation_expired:peer=192.0.2.7 operation=install reason=\"operation "
                      "deadline passed\":-");
  assert_string_equal(s.lines[3], A
                      ":cert_fetched:peer=192.0.2.7 none reason=\"phone reported no "
                      "certificate\":-");
  assert_string_equal(s.lines[4], A ":operation_succeeded:peer=192.0.2.7 operation=install:-");

  /* A record for an unknown device fails, and leaves no event. */
  r = capf_record_new(CAPF_RECORD_STATUS, B);
  r->status = CAPF_STATUS_IN_PROGRESS;
  r->count_attempt = 1;
  assert_int_equal(capstan_store_write(f->store, apply_fn, r), CAPSTAN_ENOENT);
  capf_record_free(r);
  query(f, 0, B, &s);
  assert_int_equal(s.n, 0);
}

/* Wrong authentication strings (records.c -> capstan_devices_wrong_string):
 * counted in the device, locked at the maximum with the reason that says
 * how to re-arm, audited without the string, reset by a right string and
 * by a re-arm. */
static capf_record_t *string_record(capf_auth_string_t kind) {
  capf_record_t *r = capf_record_new(CAPF_RECORD_STATUS, A);
  r->status = CAPF_STATUS_FAILED;
  r->reason = "authentication failed";
  r->count_attempt = 1;
  r->auth_string = kind;
  r->auth_max_failures = 3;
  return r;
}

static Capstan__Device *device_a(fixture_t *f) {
  capstan_txn_t txn;
  Capstan__Device *d = NULL;
  assert_int_equal(capstan_store_begin(f->store, false, &txn), 0);
  assert_int_equal(capstan_store_device_get(&txn, A, &d), 0);
  capstan_store_abort(&txn);
  return d;
}

static int rearm_fn(capstan_txn_t *txn, void *arg) {
  (void)arg;
  Capstan__Device *d = NULL;
  int rc = capstan_store_device_get(txn, A, &d);
  if (rc < 0) return rc;
  capstan_device_rearm(d, 5);
  rc = capstan_store_device_put(txn, d);
  capstan__device__free_unpacked(d, NULL);
  return rc;
}

static void test_capf_wrong_strings(void **state) {
  fixture_t *f = *state;
  static const char *kLocked = "locked: 3 wrong authentication strings; capstan device set " A
                               " --operation install re-arms it";
  assert_int_equal(capstan_store_write(f->store, add_device_fn, NULL), 0);
  apply(f, string_record(CAPF_AUTH_STRING_WRONG));
  apply(f, string_record(CAPF_AUTH_STRING_WRONG));
  Capstan__Device *d = device_a(f);
  assert_int_equal(d->auth_failures, 2);
  assert_int_equal(d->status, CAPSTAN__OP_STATUS__OP_STATUS_FAILED);
  assert_string_equal(d->status_reason, "authentication failed");
  assert_int_equal(d->attempts, 2);
  capstan__device__free_unpacked(d, NULL);
  capf_device_t cd;
  assert_int_equal(capf_device_load(f->store, A, &cd), 0);
  assert_int_equal(cd.auth_failures, 2);
  capf_device_cleanup(&cd);

  /* The third locks it. */
  apply(f, string_record(CAPF_AUTH_STRING_WRONG));
  d = device_a(f);
  assert_int_equal(d->auth_failures, 3);
  assert_string_equal(d->status_reason, kLocked);
  capstan__device__free_unpacked(d, NULL);
  /* A string refused because it is locked is not counted again. */
  apply(f, string_record(CAPF_AUTH_STRING_LOCKED));
  d = device_a(f);
  assert_int_equal(d->auth_failures, 3);
  assert_int_equal(d->attempts, 4);
  assert_string_equal(d->status_reason, kLocked);
  capstan__device__free_unpacked(d, NULL);

  seen_t s;
  query(f, 0, A, &s);
  assert_int_equal(s.n, 5);
  assert_string_equal(s.lines[0], A
                      ":attempt_failed:peer=192.0.2.7 operation=install reason=\"authentication "
                      "failed\":-");
  assert_string_equal(s.lines[3],
                      A ":auth_locked:peer=192.0.2.7 operation=install wrong_strings=3:-");
  char want[256];
  snprintf(want, sizeof(want), A ":attempt_failed:peer=192.0.2.7 operation=install reason=\"%s\":-",
           kLocked);
  assert_string_equal(s.lines[2], want);
  assert_string_equal(s.lines[4], want);

  /* A re-arm unlocks it. */
  assert_int_equal(capstan_store_write(f->store, rearm_fn, NULL), 0);
  d = device_a(f);
  assert_int_equal(d->auth_failures, 0);
  assert_int_equal(d->status, CAPSTAN__OP_STATUS__OP_STATUS_PENDING);
  capstan__device__free_unpacked(d, NULL);

  /* A right string resets the count. */
  apply(f, string_record(CAPF_AUTH_STRING_WRONG));
  d = device_a(f);
  assert_int_equal(d->auth_failures, 1);
  capstan__device__free_unpacked(d, NULL);
  apply(f, capf_record_new(CAPF_RECORD_STRING_OK, A));
  d = device_a(f);
  assert_int_equal(d->auth_failures, 0);
  assert_int_equal(d->status, CAPSTAN__OP_STATUS__OP_STATUS_FAILED); /* unchanged */
  capstan__device__free_unpacked(d, NULL);
}

/* The user an admin command records. */
static void test_actor_format(void **state) {
  char buf[CAPSTAN_CLI_ACTOR_MAX];
  capstan_cli_format_actor("alice", 1000, NULL, buf, sizeof(buf));
  assert_string_equal(buf, "alice");
  capstan_cli_format_actor("root", 0, "alice", buf, sizeof(buf));
  assert_string_equal(buf, "root (sudo by alice)");
  capstan_cli_format_actor("capstan", 120, "bob", buf, sizeof(buf));
  assert_string_equal(buf, "capstan (sudo by bob)");
  capstan_cli_format_actor("root", 0, "root", buf, sizeof(buf));
  assert_string_equal(buf, "root");
  capstan_cli_format_actor("root", 0, "", buf, sizeof(buf));
  assert_string_equal(buf, "root");
  capstan_cli_format_actor(NULL, 4242, NULL, buf, sizeof(buf));
  assert_string_equal(buf, "uid 4242");
  capstan_cli_format_actor("root", 0, "x\n(sudo by nobody)", buf, sizeof(buf));
  assert_string_equal(buf, "root (sudo by ?)");
  capstan_cli_actor(buf, sizeof(buf)); /* whoever runs the test */
  assert_true(strlen(buf) > 0);
}

/* --since: RFC 3339 or an age. */
static void test_parse_since(void **state) {
  const int64_t now = INT64_C(1767225600) * NS; /* 2026-01-01T00:00:00Z */
  int64_t t;
  assert_int_equal(capstan_cli_parse_since("2h", now, &t), 0);
  assert_int_equal(t, now - 2 * 3600 * NS);
  assert_int_equal(capstan_cli_parse_since("3d", now, &t), 0);
  assert_int_equal(t, now - 3 * DAY);
  assert_int_equal(capstan_cli_parse_since("90s", now, &t), 0);
  assert_int_equal(t, now - 90 * NS);
  assert_int_equal(capstan_cli_parse_since("30m", now, &t), 0);
  assert_int_equal(t, now - 1800 * NS);
  assert_int_equal(capstan_cli_parse_since("1w", now, &t), 0);
  assert_int_equal(t, now - 7 * DAY);
  assert_int_equal(capstan_cli_parse_since("0s", now, &t), 0);
  assert_int_equal(t, now);
  assert_int_equal(capstan_cli_parse_since("2026-01-01T00:00:00Z", now, &t), 0);
  assert_int_equal(t, now);
  assert_int_equal(capstan_cli_parse_since("2025-12-31", now, &t), 0);
  assert_int_equal(t, now - DAY);
  assert_int_equal(capstan_cli_parse_since("2026-01-01T02:00:00+02:00", now, &t), 0);
  assert_int_equal(t, now);
  assert_int_equal(capstan_cli_parse_since("2026-01-01T00:00:01.25Z", now, &t), 0);
  assert_int_equal(t, now + NS + NS / 4);
  assert_int_equal(capstan_cli_parse_since("2026-01-01T00:00:00.000001Z", now, &t), 0);
  assert_int_equal(t, now + 1000);
  const char *bad[] = {"",
                       "2",
                       "h",
                       "2x",
                       "2hh",
                       "-2h",
                       "2026-01-01T00:00:00",
                       "2026-01-01T00:00:00.Z",
                       "yesterday",
                       "2026-13-01"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    assert_int_equal(capstan_cli_parse_since(bad[i], now, &t), CAPSTAN_EINVAL);
  }
  assert_int_equal(capstan_cli_parse_since("99999999999999d", now, &t), CAPSTAN_ERANGE);
  assert_int_equal(capstan_cli_parse_since("60000d", now, &t), 0);
  assert_int_equal(t, 0); /* before 1970: from the first event */
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_append_and_query, setup, teardown),
      cmocka_unit_test_setup_teardown(test_prune_by_retention, setup, teardown),
      cmocka_unit_test_setup_teardown(test_first_served_since_change, setup, teardown),
      cmocka_unit_test_setup_teardown(test_served_noted_late, setup, teardown),
      cmocka_unit_test_setup_teardown(test_index_built_on_open, setup, teardown),
      cmocka_unit_test_setup_teardown(test_capf_records_audited, setup, teardown),
      cmocka_unit_test_setup_teardown(test_capf_wrong_strings, setup, teardown),
      cmocka_unit_test(test_actor_format),
      cmocka_unit_test(test_parse_since),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
