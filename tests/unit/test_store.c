/* Store: environment, typed records, iteration and the group-commit writer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <sys/stat.h>
#include <uv.h>

#include "core/base/error.h"
#include "core/base/metrics.h"
#include "storage/devices.h"
#include "storage/store.h"
#include "store_test_util.h"

typedef struct {
  char *dir;
  capstan_store_t *store;
} fixture_t;

static int setup(void **state) {
  fixture_t *f = calloc(1, sizeof(*f));
  f->dir = test_tmpdir();
  assert_non_null(f->dir);
  char sub[600];
  snprintf(sub, sizeof(sub), "%s/data", f->dir);
  free(f->dir);
  f->dir = strdup(sub);
  assert_int_equal(test_store_open(f->dir, &f->store), 0);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture_t *f = *state;
  capstan_store_close(f->store);
  char *parent = strdup(f->dir);
  *strrchr(parent, '/') = '\0';
  test_rmdir(f->dir);
  rmdir(parent);
  free(parent);
  free(f);
  return 0;
}

static void reopen(fixture_t *f) {
  capstan_store_close(f->store);
  f->store = NULL;
  assert_int_equal(capstan_store_open(f->dir, 0, &f->store), 0);
}

static void put_device(capstan_store_t *s, const char *name, Capstan__Operation op) {
  capstan_txn_t txn;
  assert_int_equal(capstan_store_begin(s, true, &txn), 0);
  Capstan__Device *d = capstan_device_new(name);
  d->has_operation = 1;
  d->operation = op;
  assert_int_equal(capstan_store_device_put(&txn, d), 0);
  capstan__device__free_unpacked(d, NULL);
  assert_int_equal(capstan_store_commit(&txn), 0);
}

static void test_open_creates_private_dir(void **state) {
  fixture_t *f = *state;
  struct stat st;
  assert_int_equal(stat(f->dir, &st), 0);
  assert_true(S_ISDIR(st.st_mode));
  assert_int_equal(st.st_mode & 0777, 0700);
  char p[700];
  /* The store's file: LMDB's data, or the URL of a PostgreSQL store. */
  bool pg = strcmp(capstan_store_backend(f->store), "postgresql") == 0;
  snprintf(p, sizeof(p), "%s/%s", f->dir, pg ? CAPSTAN_STORE_CONF : "data.mdb");
  assert_int_equal(stat(p, &st), 0);
  assert_int_equal(st.st_mode & 0077, 0);
}

static void test_open_missing_without_create(void **state) {
  fixture_t *f = *state;
  char p[700];
  snprintf(p, sizeof(p), "%s/nope", f->dir);
  capstan_store_t *s = (capstan_store_t *)1;
  assert_int_equal(capstan_store_open(p, 0, &s), CAPSTAN_ENOENT);
  assert_null(s);
  /* An empty directory is not a store either, and is left alone. */
  assert_int_equal(mkdir(p, 0700), 0);
  assert_int_equal(capstan_store_open(p, 0, &s), CAPSTAN_ENOENT);
  snprintf(p, sizeof(p), "%s/nope/data.mdb", f->dir);
  struct stat st;
  assert_int_not_equal(stat(p, &st), 0);
  snprintf(p, sizeof(p), "%s/nope", f->dir);
  rmdir(p);
}

static void test_device_crud(void **state) {
  fixture_t *f = *state;
  uint64_t id0 = capstan_store_txnid(f->store);
  put_device(f->store, "SEP0011223344AA", CAPSTAN__OPERATION__OPERATION_INSTALL);
  assert_true(capstan_store_txnid(f->store) > id0);

  Capstan__Device *d;
  assert_int_equal(capstan_store_device_load(f->store, "SEP0011223344AA", &d), 0);
  assert_string_equal(d->name, "SEP0011223344AA");
  assert_int_equal(d->operation, CAPSTAN__OPERATION__OPERATION_INSTALL);
  assert_int_equal(d->key_bits, 2048); /* schema default */
  capstan__device__free_unpacked(d, NULL);

  assert_int_equal(capstan_store_device_load(f->store, "SEP0011223344AB", &d), CAPSTAN_ENOENT);
  assert_null(d);

  capstan_txn_t txn;
  assert_int_equal(capstan_store_begin(f->store, true, &txn), 0);
  Capstan__Device *bad = capstan_device_new("sep 1");
  assert_int_equal(capstan_store_device_put(&txn, bad), CAPSTAN_EINVAL);
  capstan__device__free_unpacked(bad, NULL);
  assert_int_equal(capstan_store_device_delete(&txn, "SEP0011223344AA"), 0);
  assert_int_equal(capstan_store_device_delete(&txn, "SEP0011223344AA"), CAPSTAN_ENOENT);
  assert_int_equal(capstan_store_commit(&txn), 0);
  assert_int_equal(capstan_store_device_load(f->store, "SEP0011223344AA", &d), CAPSTAN_ENOENT);

  /* A read transaction refuses writes. */
  assert_int_equal(capstan_store_begin(f->store, false, &txn), 0);
  Capstan__Device *ok = capstan_device_new("phone-1");
  assert_int_equal(capstan_store_device_put(&txn, ok), CAPSTAN_EINVAL);
  capstan__device__free_unpacked(ok, NULL);
  capstan_store_abort(&txn);
}

typedef struct {
  int n;
  char last[80];
  int stop_at;
} iter_state_t;

static int count_devices(const Capstan__Device *d, void *arg) {
  iter_state_t *s = arg;
  /* Key order is byte order of names. */
  assert_true(strcmp(s->last, d->name) < 0);
  snprintf(s->last, sizeof(s->last), "%s", d->name);
  s->n++;
  return s->n == s->stop_at ? 1 : 0;
}

static int fail_iter(const Capstan__Device *d, void *arg) {
  return CAPSTAN_ERANGE;
}

static void test_iterate_and_count(void **state) {
  fixture_t *f = *state;
  capstan_txn_t txn;
  assert_int_equal(capstan_store_begin(f->store, true, &txn), 0);
  for (int i = 0; i < 300; i++) {
    char name[32];
    snprintf(name, sizeof(name), "SEP%012X", 299 - i);
    Capstan__Device *d = capstan_device_new(name);
    assert_int_equal(capstan_store_device_put(&txn, d), 0);
    capstan__device__free_unpacked(d, NULL);
  }
  assert_int_equal(capstan_store_commit(&txn), 0);

  assert_int_equal(capstan_store_begin(f->store, false, &txn), 0);
  uint64_t n;
  assert_int_equal(capstan_store_count(&txn, CAPSTAN_DB_DEVICES, &n), 0);
  assert_int_equal(n, 300);
  iter_state_t s = {0};
  assert_int_equal(capstan_store_device_iterate(&txn, count_devices, &s), 0);
  assert_int_equal(s.n, 300);
  iter_state_t s2 = {.stop_at = 10};
  assert_int_equal(capstan_store_device_iterate(&txn, count_devices, &s2), 0);
  assert_int_equal(s2.n, 10);
  assert_int_equal(capstan_store_device_iterate(&txn, fail_iter, NULL), CAPSTAN_ERANGE);
  capstan_store_abort(&txn);
}

static void test_settings_defaults_and_put(void **state) {
  fixture_t *f = *state;
  Capstan__Settings *s;
  assert_int_equal(capstan_store_settings_load(f->store, &s), 0);
  assert_int_equal(s->keepalive_minutes, 15);
  assert_int_equal(s->validity_days, 1825);
  assert_true(s->enable_ipv6);
  assert_null(s->capf_host);
  s->has_keepalive_minutes = 1;
  s->keepalive_minutes = 7;
  s->capf_host = strdup("capf.example.com");
  capstan_txn_t txn;
  assert_int_equal(capstan_store_begin(f->store, true, &txn), 0);
  assert_int_equal(capstan_store_settings_put(&txn, s), 0);
  assert_int_equal(capstan_store_commit(&txn), 0);
  capstan__settings__free_unpacked(s, NULL);
  reopen(f);
  assert_int_equal(capstan_store_settings_load(f->store, &s), 0);
  assert_int_equal(s->keepalive_minutes, 7);
  assert_string_equal(s->capf_host, "capf.example.com");
  assert_int_equal(s->max_connections, 20000);
  capstan__settings__free_unpacked(s, NULL);
}

static void test_identity_cert_trust_template(void **state) {
  fixture_t *f = *state;
  uint8_t der[] = {0x30, 0x03, 0x02, 0x01, 0x01};
  capstan_txn_t txn;
  assert_int_equal(capstan_store_begin(f->store, true, &txn), 0);
  Capstan__Identity id = CAPSTAN__IDENTITY__INIT;
  id.cert_der.data = der;
  id.cert_der.len = sizeof(der);
  id.key_der.data = der;
  id.key_der.len = 2;
  assert_int_equal(capstan_store_identity_put(&txn, "capf", &id), 0);
  assert_int_equal(capstan_store_identity_put(&txn, "other", &id), CAPSTAN_EINVAL);
  /* A record missing a required field is refused, not stored half-made. */
  uint8_t serial[CAPSTAN_SERIAL_LEN] = {1};
  Capstan__IssuedCert incomplete = CAPSTAN__ISSUED_CERT__INIT;
  incomplete.serial.data = serial;
  incomplete.serial.len = sizeof(serial);
  incomplete.der.data = der;
  incomplete.der.len = sizeof(der);
  assert_int_equal(capstan_store_cert_put(&txn, &incomplete), CAPSTAN_EINVAL); /* no device */

  Capstan__TrustCert t = CAPSTAN__TRUST_CERT__INIT;
  t.der.data = der;
  t.der.len = sizeof(der);
  t.purpose = "capf-trust";
  assert_int_equal(capstan_store_trust_put(&txn, &t), 0);

  Capstan__Template tpl = CAPSTAN__TEMPLATE__INIT;
  tpl.name = "default";
  tpl.config_xml.data = (uint8_t *)"<device/>";
  tpl.config_xml.len = 9;
  assert_int_equal(capstan_store_template_put(&txn, &tpl), 0);
  assert_int_equal(capstan_store_commit(&txn), 0);

  Capstan__Identity *got;
  assert_int_equal(capstan_store_identity_load(f->store, "capf", &got), 0);
  assert_memory_equal(got->cert_der.data, der, sizeof(der));
  capstan__identity__free_unpacked(got, NULL);
  assert_int_equal(capstan_store_identity_load(f->store, "tftp", &got), CAPSTAN_ENOENT);

  assert_int_equal(capstan_store_begin(f->store, false, &txn), 0);
  Capstan__Template *tg;
  assert_int_equal(capstan_store_template_get(&txn, "default", &tg), 0);
  assert_int_equal(tg->config_xml.len, 9);
  capstan__template__free_unpacked(tg, NULL);
  uint64_t n;
  assert_int_equal(capstan_store_count(&txn, CAPSTAN_DB_TRUST, &n), 0);
  assert_int_equal(n, 1);
  capstan_store_abort(&txn);
}

typedef struct {
  int64_t prev;
  int n;
} audit_state_t;

static int audit_check(const Capstan__AuditEvent *e, void *arg) {
  audit_state_t *s = arg;
  assert_true(e->at > s->prev);
  s->prev = e->at;
  s->n++;
  return 0;
}

static void test_audit_keys_unique(void **state) {
  fixture_t *f = *state;
  capstan_txn_t txn;
  assert_int_equal(capstan_store_begin(f->store, true, &txn), 0);
  for (int i = 0; i < 5; i++) {
    /* Same timestamp, even going back: each event is kept. */
    assert_int_equal(capstan_store_audit_append(&txn, 1000 - i, "SEP001122334455", "test", NULL),
                     0);
  }
  assert_int_equal(capstan_store_commit(&txn), 0);
  assert_int_equal(capstan_store_begin(f->store, false, &txn), 0);
  audit_state_t s = {0};
  assert_int_equal(capstan_store_audit_iterate(&txn, audit_check, &s), 0);
  assert_int_equal(s.n, 5);
  capstan_store_abort(&txn);
}

/* ---- Group commit ----------------------------------------------------- */

#define NREQ 500
/* Several requests fail after writing: each leaves nothing behind. */
#define FAILS(i) ((i) % 97 == 40)

typedef struct {
  fixture_t *f;
  int index;
  int done_status;
  int done_calls;
  int *total_done;
  uv_thread_t loop_thread;
} req_t;

static int write_req(capstan_txn_t *txn, void *arg) {
  req_t *r = arg;
  char name[32];
  snprintf(name, sizeof(name), "SEP%012X", r->index);
  Capstan__Device *d = capstan_device_new(name);
  if (d == NULL) return CAPSTAN_ENOMEM;
  int err = capstan_store_device_put(txn, d);
  capstan__device__free_unpacked(d, NULL);
  if (err == 0 && FAILS(r->index)) err = CAPSTAN_ERANGE; /* written, then fails */
  return err;
}

static void on_done(void *arg, int status) {
  req_t *r = arg;
  uv_thread_t self = uv_thread_self();
  assert_true(uv_thread_equal(&self, &r->loop_thread));
  r->done_status = status;
  r->done_calls++;
  if (++*r->total_done == NREQ) capstan_store_writer_stop(r->f->store);
}

typedef struct {
  fixture_t *f;
  req_t *reqs;
} submit_ctx_t;

static void submit_all(uv_timer_t *t) {
  submit_ctx_t *c = t->data;
  for (int i = 0; i < NREQ; i++) {
    assert_int_equal(capstan_store_submit(c->f->store, write_req, &c->reqs[i], on_done), 0);
  }
  uv_close((uv_handle_t *)t, NULL);
}

static void test_group_commit(void **state) {
  fixture_t *f = *state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  assert_int_equal(capstan_store_writer_start(f->store, &loop), 0);
  assert_int_equal(capstan_store_writer_start(f->store, &loop), CAPSTAN_EINVAL);
  req_t *reqs = calloc(NREQ, sizeof(req_t));
  int total = 0;
  for (int i = 0; i < NREQ; i++) {
    reqs[i] = (req_t){.f = f, .index = i, .done_status = 1, .total_done = &total};
    reqs[i].loop_thread = uv_thread_self();
  }
  capstan_metric_t *commits = capstan_metrics_counter("capstan_storage_commits_total", "", "");
  double commits0 = capstan_metric_value(commits);
  submit_ctx_t ctx = {f, reqs};
  uv_timer_t timer;
  uv_timer_init(&loop, &timer);
  timer.data = &ctx;
  uv_timer_start(&timer, submit_all, 0, 0);
  assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
  assert_int_equal(uv_loop_close(&loop), 0);

  assert_int_equal(total, NREQ);
  for (int i = 0; i < NREQ; i++) {
    assert_int_equal(reqs[i].done_calls, 1);
    assert_int_equal(reqs[i].done_status, FAILS(i) ? CAPSTAN_ERANGE : 0);
  }
  double commits1 = capstan_metric_value(commits);
  assert_true(commits1 > commits0);
  assert_true(commits1 - commits0 <= NREQ);
  /* After stop, submissions are refused. */
  assert_int_equal(capstan_store_submit(f->store, write_req, &reqs[0], on_done), CAPSTAN_EINVAL);

  reopen(f);
  capstan_txn_t txn;
  assert_int_equal(capstan_store_begin(f->store, false, &txn), 0);
  uint64_t n;
  assert_int_equal(capstan_store_count(&txn, CAPSTAN_DB_DEVICES, &n), 0);
  assert_int_equal(n, NREQ - 5);
  for (int i = 0; i < NREQ; i++) {
    char name[32];
    snprintf(name, sizeof(name), "SEP%012X", i);
    Capstan__Device *d;
    int err = capstan_store_device_get(&txn, name, &d);
    assert_int_equal(err, FAILS(i) ? CAPSTAN_ENOENT : 0);
    if (err == 0) capstan__device__free_unpacked(d, NULL);
  }
  capstan_store_abort(&txn);
  free(reqs);
}

static void count_done(void *arg, int status) {
  int *n = arg;
  assert_int_equal(status, 0);
  (*n)++;
}

static int write_one(capstan_txn_t *txn, void *arg) {
  return capstan_store_audit_append(txn, 0, NULL, "drain", NULL);
}

/* Under load the writer spaces commits (COMMIT_SPACING_MS, 20 ms): requests
 * that arrive right after a commit wait for the next slot. Without the
 * spacing the second commit would follow within a few milliseconds. */
typedef struct spacing_ctx {
  fixture_t *f;
  uint64_t first_submitted_ns;
  uint64_t last_done_ns;
  int done;
} spacing_ctx_t;

static void spacing_later_done(void *arg, int status) {
  spacing_ctx_t *c = arg;
  assert_int_equal(status, 0);
  c->last_done_ns = uv_hrtime();
  if (++c->done == 4) capstan_store_writer_stop(c->f->store);
}

static void spacing_first_done(void *arg, int status) {
  spacing_ctx_t *c = arg;
  assert_int_equal(status, 0);
  c->done++;
  /* Three requests right after the first commit. */
  for (int i = 0; i < 3; i++) {
    assert_int_equal(capstan_store_submit(c->f->store, write_one, c, spacing_later_done), 0);
  }
}

static void test_commit_spacing(void **state) {
  fixture_t *f = *state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  assert_int_equal(capstan_store_writer_start(f->store, &loop), 0);
  spacing_ctx_t c = {.f = f, .first_submitted_ns = uv_hrtime()};
  assert_int_equal(capstan_store_submit(f->store, write_one, &c, spacing_first_done), 0);
  assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
  assert_int_equal(uv_loop_close(&loop), 0);
  assert_int_equal(c.done, 4);
  /* The second commit began at least 20 ms after the first, which began
   * after the first request was submitted (1 ms of slack). */
  assert_true(c.last_done_ns - c.first_submitted_ns >= 19 * 1000000ull);
}

/* PostgreSQL answers a write transaction's writes late (pipelined): a
 * write the database refuses must still fail the transaction (nothing of
 * it stored), even when the code after it ignores the error a later read
 * reports, and must not hang the connection. LMDB has no such constraint
 * to break: the test is PostgreSQL's. */
static bool on_postgres(fixture_t *f) {
  return strcmp(capstan_store_backend(f->store), "postgresql") == 0;
}

static Capstan__IssuedCert *bad_cert(void) {
  static uint8_t der[4] = {1, 2, 3, 4};
  Capstan__IssuedCert *c = calloc(1, sizeof(*c));
  capstan__issued_cert__init(c);
  c->serial = (ProtobufCBinaryData){3, der}; /* the certs table takes 16 bytes only */
  c->device = "SEP0000000000BD";
  c->der = (ProtobufCBinaryData){sizeof(der), der};
  return c;
}

static void test_refused_write_rolls_back(void **state) {
  fixture_t *f = *state;
  if (!on_postgres(f)) skip();
  capstan_txn_t txn;
  assert_int_equal(capstan_store_begin(f->store, true, &txn), 0);
  Capstan__Device *a = capstan_device_new("SEP0000000000AA");
  assert_int_equal(capstan_store_device_put(&txn, a), 0);
  Capstan__IssuedCert *c = bad_cert();
  /* Accepted here: the database's answer comes later. */
  assert_int_equal(capstan_store_put(&txn, CAPSTAN_DB_CERTS, "abc", 3, &c->base), 0);
  Capstan__Device *got = NULL;
  assert_int_not_equal(capstan_store_device_get(&txn, "SEP0000000000AA", &got), 0);
  /* The caller ignores it and goes on writing: the commit still fails. */
  Capstan__Device *b = capstan_device_new("SEP0000000000BB");
  capstan_store_device_put(&txn, b);
  assert_int_not_equal(capstan_store_commit(&txn), 0);
  assert_int_equal(capstan_store_device_load(f->store, "SEP0000000000AA", &got), CAPSTAN_ENOENT);
  assert_int_equal(capstan_store_device_load(f->store, "SEP0000000000BB", &got), CAPSTAN_ENOENT);
  /* The store goes on: a later transaction commits. */
  assert_int_equal(capstan_store_begin(f->store, true, &txn), 0);
  assert_int_equal(capstan_store_device_put(&txn, a), 0);
  assert_int_equal(capstan_store_commit(&txn), 0);
  assert_int_equal(capstan_store_device_load(f->store, "SEP0000000000AA", &got), 0);
  capstan__device__free_unpacked(got, NULL);
  capstan__device__free_unpacked(a, NULL);
  capstan__device__free_unpacked(b, NULL);
  free(c);
}

/* The writer: of three requests in one batch, the one whose write the
 * database refuses fails; the other two are committed. */
typedef struct {
  int index;
  int status;
  int *done;
  capstan_store_t *store;
} refused_req_t;

static int refused_write(capstan_txn_t *txn, void *arg) {
  refused_req_t *r = arg;
  char name[32];
  snprintf(name, sizeof(name), "SEP0000000001%02d", r->index);
  Capstan__Device *d = capstan_device_new(name);
  int err = capstan_store_device_put(txn, d);
  capstan__device__free_unpacked(d, NULL);
  if (err == 0 && r->index == 1) {
    Capstan__IssuedCert *c = bad_cert();
    err = capstan_store_put(txn, CAPSTAN_DB_CERTS, "abc", 3, &c->base);
    free(c);
  }
  return err;
}

static void refused_done(void *arg, int status) {
  refused_req_t *r = arg;
  r->status = status;
  if (++*r->done == 3) capstan_store_writer_stop(r->store);
}

static void test_writer_refused_write(void **state) {
  fixture_t *f = *state;
  if (!on_postgres(f)) skip();
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  assert_int_equal(capstan_store_writer_start(f->store, &loop), 0);
  int done = 0;
  refused_req_t reqs[3];
  for (int i = 0; i < 3; i++) {
    reqs[i] = (refused_req_t){.index = i, .status = 1, .done = &done, .store = f->store};
    assert_int_equal(capstan_store_submit(f->store, refused_write, &reqs[i], refused_done), 0);
  }
  assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
  assert_int_equal(uv_loop_close(&loop), 0);
  assert_int_equal(done, 3);
  assert_int_equal(reqs[0].status, 0);
  assert_int_not_equal(reqs[1].status, 0);
  assert_int_equal(reqs[2].status, 0);
  Capstan__Device *got = NULL;
  assert_int_equal(capstan_store_device_load(f->store, "SEP000000000100", &got), 0);
  capstan__device__free_unpacked(got, NULL);
  assert_int_equal(capstan_store_device_load(f->store, "SEP000000000101", &got), CAPSTAN_ENOENT);
  assert_int_equal(capstan_store_device_load(f->store, "SEP000000000102", &got), 0);
  capstan__device__free_unpacked(got, NULL);
}

/* Requests that name the devices they read (capstan_store_submit_reading):
 * on PostgreSQL the writer reads them ahead, once per batch, and each
 * request must still see what the requests before it in the batch wrote,
 * and nothing of a request that failed. */
typedef struct {
  capstan_store_t *store;
  int index;
  int status;
  int *done;
} ahead_req_t;

#define AHEAD_REQS 8
#define AHEAD_FAILS 5 /* this request counts, then fails: its count must not stay */

static int count_on(capstan_txn_t *txn, const char *name) {
  Capstan__Device *d = NULL;
  int err = capstan_store_device_get(txn, name, &d);
  if (err == CAPSTAN_ENOENT) {
    d = capstan_device_new(name); /* the first request makes it */
    err = d != NULL ? 0 : CAPSTAN_ENOMEM;
  }
  if (err != 0) return err;
  d->auth_failures++;
  d->has_auth_failures = 1;
  err = capstan_store_device_put(txn, d);
  capstan__device__free_unpacked(d, NULL);
  return err;
}

static int ahead_write(capstan_txn_t *txn, void *arg) {
  ahead_req_t *r = arg;
  int err = count_on(txn, "SEPAHEAD00001");
  if (err == 0) err = count_on(txn, "SEPAHEAD00002");
  if (err == 0 && r->index == 2) err = capstan_store_device_delete(txn, "SEPAHEAD00003");
  if (err == 0 && r->index == 3) {
    Capstan__Device *d = NULL;
    err = capstan_store_device_get(txn, "SEPAHEAD00003", &d);
    capstan__device__free_unpacked(d, NULL);
    err = err == CAPSTAN_ENOENT ? 0 : CAPSTAN_EINVAL; /* deleted by request 2 */
  }
  if (err == 0 && r->index == AHEAD_FAILS) err = CAPSTAN_ERANGE;
  return err;
}

static void ahead_done(void *arg, int status) {
  ahead_req_t *r = arg;
  r->status = status;
  if (++*r->done == AHEAD_REQS) capstan_store_writer_stop(r->store);
}

static unsigned counted(capstan_store_t *store, const char *name) {
  Capstan__Device *d = NULL;
  assert_int_equal(capstan_store_device_load(store, name, &d), 0);
  unsigned n = d->auth_failures;
  capstan__device__free_unpacked(d, NULL);
  return n;
}

static void test_writer_reads_ahead(void **state) {
  fixture_t *f = *state;
  capstan_txn_t txn;
  assert_int_equal(capstan_store_begin(f->store, true, &txn), 0);
  const char *existing[] = {"SEPAHEAD00001", "SEPAHEAD00003"};
  for (int i = 0; i < 2; i++) {
    Capstan__Device *d = capstan_device_new(existing[i]);
    assert_int_equal(capstan_store_device_put(&txn, d), 0);
    capstan__device__free_unpacked(d, NULL);
  }
  assert_int_equal(capstan_store_commit(&txn), 0);

  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  assert_int_equal(capstan_store_writer_start(f->store, &loop), 0);
  int done = 0;
  ahead_req_t reqs[AHEAD_REQS];
  const capstan_store_key_t keys[2] = {{CAPSTAN_DB_DEVICES, "SEPAHEAD00001", 13},
                                       {CAPSTAN_DB_DEVICES, "SEPAHEAD00002", 13}};
  const capstan_store_key_t too_many[3] = {keys[0], keys[1], keys[0]};
  assert_int_equal(
      capstan_store_submit_reading(f->store, ahead_write, &reqs[0], ahead_done, too_many, 3),
      CAPSTAN_EINVAL);
  for (int i = 0; i < AHEAD_REQS; i++) {
    reqs[i] = (ahead_req_t){.store = f->store, .index = i, .status = 1, .done = &done};
    assert_int_equal(
        capstan_store_submit_reading(f->store, ahead_write, &reqs[i], ahead_done, keys, 2), 0);
  }
  assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
  assert_int_equal(uv_loop_close(&loop), 0);
  assert_int_equal(done, AHEAD_REQS);
  for (int i = 0; i < AHEAD_REQS; i++) {
    assert_int_equal(reqs[i].status, i == AHEAD_FAILS ? CAPSTAN_ERANGE : 0);
  }
  /* Every request but the failed one counted once on each device. */
  assert_int_equal(counted(f->store, "SEPAHEAD00001"), AHEAD_REQS - 1);
  assert_int_equal(counted(f->store, "SEPAHEAD00002"), AHEAD_REQS - 1);
  Capstan__Device *gone = NULL;
  assert_int_equal(capstan_store_device_load(f->store, "SEPAHEAD00003", &gone), CAPSTAN_ENOENT);
}

static void test_stop_drains_queue(void **state) {
  fixture_t *f = *state;
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  assert_int_equal(capstan_store_writer_start(f->store, &loop), 0);
  int n = 0;
  for (int i = 0; i < 100; i++) {
    assert_int_equal(capstan_store_submit(f->store, write_one, &n, count_done), 0);
  }
  /* The storage metrics are registered and the size gauge reads the map. */
  char *text = NULL;
  size_t len = 0;
  assert_int_equal(capstan_metrics_render(&text, &len), 0);
  assert_non_null(strstr(text, "capstan_storage_commit_duration_seconds_bucket"));
  assert_non_null(strstr(text, "capstan_storage_batch_size_bucket"));
  assert_non_null(strstr(text, "capstan_storage_commits_total"));
  assert_non_null(strstr(text, "capstan_storage_errors_total{op=\"commit\"} 0"));
  const char *size = strstr(text, "\ncapstan_storage_size_bytes ");
  assert_non_null(size);
  assert_true(strtod(size + strlen("\ncapstan_storage_size_bytes "), NULL) > 0);
  free(text);
  capstan_store_writer_stop(f->store);
  assert_int_equal(n, 100); /* every done ran before stop returned */
  assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
  assert_int_equal(uv_loop_close(&loop), 0);
  capstan_txn_t txn;
  assert_int_equal(capstan_store_begin(f->store, false, &txn), 0);
  uint64_t c;
  assert_int_equal(capstan_store_count(&txn, CAPSTAN_DB_AUDIT, &c), 0);
  assert_int_equal(c, 100);
  capstan_store_abort(&txn);
  assert_true(capstan_store_size_bytes(f->store) > 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_open_creates_private_dir, setup, teardown),
      cmocka_unit_test_setup_teardown(test_open_missing_without_create, setup, teardown),
      cmocka_unit_test_setup_teardown(test_device_crud, setup, teardown),
      cmocka_unit_test_setup_teardown(test_iterate_and_count, setup, teardown),
      cmocka_unit_test_setup_teardown(test_settings_defaults_and_put, setup, teardown),
      cmocka_unit_test_setup_teardown(test_identity_cert_trust_template, setup, teardown),
      cmocka_unit_test_setup_teardown(test_audit_keys_unique, setup, teardown),
      cmocka_unit_test_setup_teardown(test_group_commit, setup, teardown),
      cmocka_unit_test_setup_teardown(test_stop_drains_queue, setup, teardown),
      cmocka_unit_test_setup_teardown(test_refused_write_rolls_back, setup, teardown),
      cmocka_unit_test_setup_teardown(test_writer_refused_write, setup, teardown),
      cmocka_unit_test_setup_teardown(test_writer_reads_ahead, setup, teardown),
      cmocka_unit_test_setup_teardown(test_commit_spacing, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
