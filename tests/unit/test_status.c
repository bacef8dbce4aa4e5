/* The status page's parts: the JSON writer, the ring buffer of samples and
 * its rates, the census of the store (counts, slowest, failures, reasons,
 * CAPF), the device API (query, paging, no secrets) and the rendered
 * /status.json from sampled metrics. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/error.h"
#include "core/base/metrics.h"
#include "core/ca/requests.h"
#include "core/identities.h"
#include "handlers/admin/census.h"
#include "handlers/admin/devices_api.h"
#include "handlers/admin/json.h"
#include "handlers/admin/series.h"
#include "handlers/admin/status.h"
#include "storage/devices.h"
#include "storage/store.h"
#include "store_test_util.h"

/* ---- JSON ----------------------------------------------------------------- */

static char *take(capstan_json_t *j) {
  char *out = NULL;
  size_t len = 0;
  assert_int_equal(capstan_json_take(j, &out, &len), 0);
  assert_int_equal(strlen(out), len);
  return out;
}

static void test_json_structure(void **state) {
  (void)state;
  capstan_json_t j;
  capstan_json_init(&j);
  capstan_json_open(&j, '{');
  capstan_json_kstr(&j, "a", "x");
  capstan_json_key(&j, "list");
  capstan_json_open(&j, '[');
  capstan_json_int(&j, -3);
  capstan_json_uint(&j, 18446744073709551615ull);
  capstan_json_open(&j, '{');
  capstan_json_close(&j, '}');
  capstan_json_null(&j);
  capstan_json_bool(&j, 1);
  capstan_json_close(&j, ']');
  capstan_json_kstr(&j, "none", NULL);
  capstan_json_ktime(&j, "t", 86400);
  capstan_json_ktime(&j, "never", 0);
  capstan_json_close(&j, '}');
  char *s = take(&j);
  assert_string_equal(s,
                      "{\"a\":\"x\",\"list\":[-3,18446744073709551615,{},null,true],"
                      "\"none\":null,\"t\":\"1970-01-02T00:00:00Z\",\"never\":null}");
  free(s);
}

static void test_json_strings(void **state) {
  (void)state;
  capstan_json_t j;
  capstan_json_init(&j);
  capstan_json_open(&j, '[');
  capstan_json_str(&j, "q\"b\\n\n\t\x01</script>&");
  capstan_json_str(&j, "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x93\x9e"); /* valid UTF-8 kept */
  capstan_json_strn(&j,
                    "a\xff"
                    "b\xc3",
                    4);                          /* invalid, truncated */
  capstan_json_str(&j, "\xed\xa0\x80|\xc0\xaf"); /* surrogate, overlong */
  capstan_json_close(&j, ']');
  char *s = take(&j);
  assert_string_equal(s,
                      "[\"q\\\"b\\\\n\\n\\t\\u0001\\u003c/script\\u003e\\u0026\","
                      "\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x93\x9e\","
                      "\"a\\ufffdb\\ufffd\","
                      "\"\\ufffd\\ufffd\\ufffd|\\ufffd\\ufffd\"]");
  free(s);
}

static void test_json_numbers(void **state) {
  (void)state;
  capstan_json_t j;
  capstan_json_init(&j);
  capstan_json_open(&j, '[');
  capstan_json_num(&j, 2.5, 2);
  capstan_json_num(&j, 3.0, 2);
  capstan_json_num(&j, 0.126, 2);
  capstan_json_num(&j, -0.001, 1);
  capstan_json_num(&j, NAN, 2);
  capstan_json_num(&j, INFINITY, 0);
  capstan_json_num(&j, 1234567.0, 0);
  capstan_json_close(&j, ']');
  char *s = take(&j);
  assert_string_equal(s, "[2.5,3,0.13,0,null,null,1234567]");
  free(s);
  /* Nothing written: an empty string. */
  capstan_json_init(&j);
  s = take(&j);
  assert_string_equal(s, "");
  free(s);
}

/* ---- The ring buffer ------------------------------------------------------- */

static void test_series_ring(void **state) {
  (void)state;
  capstan_series_t s;
  assert_int_equal(capstan_series_init(&s, 1, 1), CAPSTAN_EINVAL);
  assert_int_equal(capstan_series_init(&s, 4, 0), CAPSTAN_EINVAL);
  assert_int_equal(capstan_series_init(&s, 4, CAPSTAN_SERIES_MAX_COLS + 1), CAPSTAN_EINVAL);
  assert_int_equal(capstan_series_init(&s, 5, 2), 0);
  double t, v[2];
  assert_int_equal(capstan_series_at(&s, 0, &t, v), CAPSTAN_ENOENT);
  assert_true(capstan_series_rate(&s, 0, 10) == 0);
  for (int i = 0; i < 8; i++) capstan_series_push(&s, 100 + i, (double[]){i * 2.0, i * 10.0});
  assert_int_equal(capstan_series_count(&s), 5);
  assert_int_equal(capstan_series_at(&s, 0, &t, v), 0);
  assert_true(t == 107 && v[0] == 14 && v[1] == 70);
  assert_int_equal(capstan_series_at(&s, 4, &t, v), 0);
  assert_true(t == 103 && v[0] == 6);
  assert_int_equal(capstan_series_at(&s, 5, &t, v), CAPSTAN_ENOENT);
  /* Over 2 s: from 105 to 107. Over more than held: from the oldest. */
  assert_true(capstan_series_rate(&s, 0, 2) == 2.0);
  assert_true(capstan_series_delta(&s, 1, 2) == 20);
  assert_true(capstan_series_rate(&s, 1, 100) == 10.0);
  assert_true(capstan_series_delta(&s, 1, 100) == 40);
  /* A time that did not move replaces the newest sample. */
  capstan_series_push(&s, 107, (double[]){20, 70});
  assert_int_equal(capstan_series_count(&s), 5);
  assert_int_equal(capstan_series_at(&s, 0, &t, v), 0);
  assert_true(t == 107 && v[0] == 20);
  /* A counter that went down is no change, not a negative rate. */
  capstan_series_push(&s, 108, (double[]){0, 70});
  assert_true(capstan_series_rate(&s, 0, 1) == 0);
  assert_true(capstan_series_rate(&s, 5, 1) == 0); /* no such column */
  capstan_series_cleanup(&s);
  capstan_series_cleanup(&s); /* again: safe */
}

static void test_series_irregular(void **state) {
  (void)state;
  capstan_series_t s;
  assert_int_equal(capstan_series_init(&s, 100, 1), 0);
  /* A late tick widens one interval: the rate stays right. */
  capstan_series_push(&s, 0, (double[]){0});
  capstan_series_push(&s, 1, (double[]){5});
  capstan_series_push(&s, 4.5, (double[]){22.5});
  capstan_series_push(&s, 5, (double[]){25});
  assert_true(fabs(capstan_series_rate(&s, 0, 10) - 5.0) < 1e-9);
  assert_true(fabs(capstan_series_rate(&s, 0, 0.5) - 5.0) < 1e-9);
  capstan_series_cleanup(&s);
}

static void test_series_steps(void **state) {
  (void)state;
  capstan_series_t s;
  assert_int_equal(capstan_series_init(&s, 31, 1), 0);
  double t[10], v[10];
  assert_int_equal(capstan_series_steps(&s, 0, 5, t, v, 10), 0);
  /* One a second, value = 3 t for t < 10, then 1 t: rate 3 then 1. */
  double val = 0;
  for (int i = 0; i <= 20; i++) {
    if (i > 0) val += i <= 10 ? 3 : 1;
    capstan_series_push(&s, i, &val);
  }
  /* 21 samples (seq 0..20): intervals end at 20, 15, 10, 5. */
  size_t n = capstan_series_steps(&s, 0, 5, t, v, 10);
  assert_int_equal(n, 4);
  assert_true(t[0] == 5 && t[1] == 10 && t[2] == 15 && t[3] == 20);
  assert_true(v[0] == 3 && v[1] == 3 && v[2] == 1 && v[3] == 1);
  /* Two more samples: the same intervals (the unfinished one is left out). */
  val += 1;
  capstan_series_push(&s, 21, &val);
  val += 1;
  capstan_series_push(&s, 22, &val);
  n = capstan_series_steps(&s, 0, 5, t, v, 10);
  assert_int_equal(n, 4);
  assert_true(t[0] == 5 && t[3] == 20);
  /* |max| keeps the newest. */
  n = capstan_series_steps(&s, 0, 5, t, v, 2);
  assert_int_equal(n, 2);
  assert_true(t[0] == 15 && t[1] == 20);
  /* The ring wraps: only whole intervals inside it. */
  for (int i = 23; i <= 60; i++) {
    val += 2;
    capstan_series_push(&s, i, &val);
  }
  n = capstan_series_steps(&s, 0, 5, t, v, 10);
  assert_int_equal(n, 6); /* 31 samples, ages 0..30: ends at 60..35, back to 30 */
  assert_true(t[0] == 35 && t[5] == 60 && v[0] == 2 && v[5] == 2);
  capstan_series_cleanup(&s);
}

/* ---- A store with devices ------------------------------------------------- */

typedef struct {
  char *dir;
  capstan_store_t *store;
} store_fixture_t;

static int store_setup(void **state) {
  store_fixture_t *f = calloc(1, sizeof(*f));
  f->dir = test_tmpdir();
  assert_int_equal(test_store_open(f->dir, &f->store), 0);
  *state = f;
  return 0;
}

static int store_teardown(void **state) {
  store_fixture_t *f = *state;
  capstan_store_close(f->store);
  test_rmdir(f->dir);
  free(f);
  return 0;
}

/* Puts a device with |status|, times and reason. */
static void put_device(capstan_store_t *store, const char *name, Capstan__OpStatus status,
                       int64_t changed, int64_t attempt, const char *reason) {
  capstan_txn_t txn;
  assert_int_equal(capstan_store_begin(store, true, &txn), 0);
  Capstan__Device *d = capstan_device_new(name);
  d->has_operation = 1;
  d->operation = CAPSTAN__OPERATION__OPERATION_INSTALL;
  d->has_status = 1;
  d->status = status;
  d->has_status_changed_at = changed != 0;
  d->status_changed_at = changed;
  d->has_last_attempt_at = attempt != 0;
  d->last_attempt_at = attempt;
  d->has_attempts = 1;
  d->attempts = 2;
  d->auth_mode = CAPSTAN__AUTH_MODE__AUTH_MODE_STRING;
  d->has_auth_mode = 1;
  assert_int_equal(capstan_record_set_string(&d->auth_string, "9876543210"), 0);
  if (reason) assert_int_equal(capstan_record_set_string(&d->status_reason, reason), 0);
  assert_int_equal(capstan_store_device_put(&txn, d), 0);
  capstan__device__free_unpacked(d, NULL);
  assert_int_equal(capstan_store_commit(&txn), 0);
}

static void test_census_scan(void **state) {
  store_fixture_t *f = *state;
  capstan_census_t c;
  /* An empty store: nothing, no CAPF. */
  assert_int_equal(capstan_census_scan(f->store, &c), 0);
  assert_int_equal(c.total, 0);
  assert_int_equal(c.capf.present, 0);
  put_device(f->store, "SEP000000000001", CAPSTAN__OP_STATUS__OP_STATUS_PENDING, 10, 0, NULL);
  put_device(f->store, "SEP000000000002", CAPSTAN__OP_STATUS__OP_STATUS_SUCCEEDED, 10, 9, NULL);
  put_device(f->store, "SEP000000000003", CAPSTAN__OP_STATUS__OP_STATUS_EXPIRED, 10, 0, "late");
  put_device(f->store, "other-phone", CAPSTAN__OP_STATUS__OP_STATUS_NONE, 10, 0, NULL);
  /* In progress: the oldest attempt first, names break ties, the attempt
   * time before the status change. */
  put_device(f->store, "SEP0000000000A3", CAPSTAN__OP_STATUS__OP_STATUS_IN_PROGRESS, 1, 300, NULL);
  put_device(f->store, "SEP0000000000A2", CAPSTAN__OP_STATUS__OP_STATUS_IN_PROGRESS, 1, 100, NULL);
  put_device(f->store, "SEP0000000000A1", CAPSTAN__OP_STATUS__OP_STATUS_IN_PROGRESS, 1, 300,
             "throttled");
  /* 12 failures: the 10 newest kept, newest first; reasons counted. */
  for (int i = 0; i < 12; i++) {
    char name[32];
    snprintf(name, sizeof(name), "SEP0000000001%02d", i);
    put_device(f->store, name, CAPSTAN__OP_STATUS__OP_STATUS_FAILED, 1000 + i, 900,
               i < 7    ? "authentication failed"
               : i < 11 ? "phone timed out"
                        : NULL);
  }
  assert_int_equal(capstan_census_scan(f->store, &c), 0);
  assert_int_equal(c.total, 19);
  assert_int_equal(c.by_status[CAPSTAN_CENSUS_PENDING], 1);
  assert_int_equal(c.by_status[CAPSTAN_CENSUS_IN_PROGRESS], 3);
  assert_int_equal(c.by_status[CAPSTAN_CENSUS_SUCCEEDED], 1);
  assert_int_equal(c.by_status[CAPSTAN_CENSUS_FAILED], 12);
  assert_int_equal(c.by_status[CAPSTAN_CENSUS_EXPIRED], 1);
  assert_int_equal(c.by_status[CAPSTAN_CENSUS_NONE], 1);
  assert_int_equal(c.n_slowest, 3);
  assert_string_equal(c.slowest[0].name, "SEP0000000000A2");
  assert_int_equal(c.slowest[0].since, 100);
  assert_string_equal(c.slowest[1].name, "SEP0000000000A1");
  assert_string_equal(c.slowest[1].reason, "throttled");
  assert_string_equal(c.slowest[2].name, "SEP0000000000A3");
  assert_string_equal(c.slowest[2].operation, "install");
  assert_int_equal(c.n_failures, CAPSTAN_CENSUS_TOP);
  assert_string_equal(c.failures[0].name, "SEP000000000111");
  assert_int_equal(c.failures[0].since, 1011);
  assert_string_equal(c.failures[0].reason, "");
  assert_string_equal(c.failures[9].name, "SEP000000000102");
  assert_int_equal(c.failures[9].attempts, 2);
  assert_int_equal(c.n_reasons, 2);
  assert_string_equal(c.reasons[0].reason, "authentication failed");
  assert_int_equal(c.reasons[0].count, 7);
  assert_string_equal(c.reasons[1].reason, "phone timed out");
  assert_int_equal(c.reasons[1].count, 4);
  assert_int_equal(c.other_reasons, 1);
  assert_true(c.txnid == capstan_store_txnid(f->store));
  assert_string_equal(capstan_census_status_name(CAPSTAN_CENSUS_IN_PROGRESS), "in-progress");
  /* The CAPF certificate once there is one. */
  int created = 0;
  assert_int_equal(capstan_init_identities(f->store, NULL, &created), 0);
  assert_int_equal(capstan_census_scan(f->store, &c), 0);
  assert_int_equal(c.capf.present, 1);
  assert_int_equal(c.capf.self_signed, 1);
  assert_string_equal(c.capf.key, "rsa2048");
  assert_int_equal(strncmp(c.capf.subject, "CN=CAPF-", 8), 0);
  assert_string_equal(c.capf.subject, c.capf.issuer);
  assert_true(c.capf.not_after > c.capf.not_before);
  assert_int_equal(c.capf.chain, 0);
  /* Certificate requests waiting for a CA: none, then two (the oldest's
   * time counts), and one that is no longer pending does not. */
  assert_int_equal(c.csr_pending, 0);
  assert_int_equal(c.csr_oldest_at, 0);
  const uint8_t csr[] = {0x30, 0x00}, spki_a[] = {0x30, 0x01, 0x0a}, spki_b[] = {0x30, 0x01, 0x0b};
  capstan_txn_t txn;
  assert_int_equal(capstan_store_begin(f->store, true, &txn), 0);
  assert_int_equal(capstan_csr_record_pending(&txn, "SEP000000000001", csr, sizeof(csr), spki_a,
                                              sizeof(spki_a), 3, NULL, 0, NULL, 5000),
                   0);
  assert_int_equal(capstan_csr_record_pending(&txn, "SEP000000000002", csr, sizeof(csr), spki_b,
                                              sizeof(spki_b), 3, NULL, 0, NULL, 4000),
                   0);
  uint8_t key_b[32];
  capstan_csr_key(spki_b, sizeof(spki_b), key_b);
  assert_int_equal(capstan_store_commit(&txn), 0);
  assert_int_equal(capstan_census_scan(f->store, &c), 0);
  assert_int_equal(c.csr_pending, 2);
  assert_int_equal(c.csr_oldest_at, 4000);
  assert_int_equal(capstan_store_begin(f->store, true, &txn), 0);
  assert_int_equal(capstan_csr_record_failed(&txn, key_b, "CA refused", 6000), 0);
  assert_int_equal(capstan_store_commit(&txn), 0);
  assert_int_equal(capstan_census_scan(f->store, &c), 0);
  assert_int_equal(c.csr_pending, 1);
  assert_int_equal(c.csr_oldest_at, 5000);
}

/* The cache: a census is reused while the store is unchanged, taken again
 * after a write once older than max_age, and shared by waiting requests. */
typedef struct {
  int calls;
  uint64_t total;
  double at_mono;
} got_t;

static void on_census(void *arg, const capstan_census_t *c, int status) {
  got_t *g = arg;
  assert_int_equal(status, 0);
  assert_non_null(c);
  g->calls++;
  g->total = c->total;
  g->at_mono = c->at_mono;
}

static void freed(void *arg) {
  *(int *)arg = 1;
}

static void test_census_cache(void **state) {
  store_fixture_t *f = *state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  capstan_census_cache_t *c;
  assert_int_equal(capstan_census_cache_new(&loop, f->store, &c), 0);
  got_t a = {0}, b = {0};
  assert_int_equal(capstan_census_get(c, 1.0, on_census, &a), 0);
  assert_int_equal(capstan_census_get(c, 1.0, on_census, &b), 0);
  assert_int_equal(a.calls + b.calls, 0); /* both wait for the first scan */
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(a.calls, 1);
  assert_int_equal(b.calls, 1);
  assert_true(a.at_mono == b.at_mono);
  /* Unchanged store: at once, the same census, whatever its age. */
  got_t d = {0};
  assert_int_equal(capstan_census_get(c, 0, on_census, &d), 0);
  assert_int_equal(d.calls, 1);
  assert_true(d.at_mono == a.at_mono);
  /* A write: still the same census while younger than max_age ... */
  put_device(f->store, "SEP000000000001", CAPSTAN__OP_STATUS__OP_STATUS_PENDING, 10, 0, NULL);
  got_t e = {0};
  assert_int_equal(capstan_census_get(c, 60, on_census, &e), 0);
  assert_int_equal(e.calls, 1);
  assert_int_equal(e.total, 0);
  /* ... and a new one when older. */
  got_t g = {0};
  assert_int_equal(capstan_census_get(c, 0, on_census, &g), 0);
  assert_int_equal(g.calls, 0);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(g.calls, 1);
  assert_int_equal(g.total, 1);
  int done = 0;
  capstan_census_cache_free(c, freed, &done);
  assert_int_equal(done, 1);
  assert_int_equal(uv_loop_close(&loop), 0);
}

/* ---- The device API --------------------------------------------------------- */

static void test_devices_query(void **state) {
  (void)state;
  capstan_devices_query_t q;
  const char *why;
  assert_int_equal(capstan_devices_query_parse("", &q, &why), 0);
  assert_int_equal(q.status, -1);
  assert_int_equal(q.limit, CAPSTAN_DEVICES_API_DEFAULT_LIMIT);
  assert_string_equal(q.after, "");
  assert_int_equal(capstan_devices_query_parse(NULL, &q, &why), 0);
  assert_int_equal(capstan_devices_query_parse("status=failed&limit=5&after=SEP%30A", &q, &why), 0);
  assert_int_equal(q.status, CAPSTAN_CENSUS_FAILED);
  assert_int_equal(q.limit, 5);
  assert_string_equal(q.after, "SEP0A");
  assert_int_equal(capstan_devices_query_parse("status=in_progress&&", &q, &why), 0);
  assert_int_equal(q.status, CAPSTAN_CENSUS_IN_PROGRESS);
  assert_int_equal(capstan_devices_query_parse("status=in-progress", &q, &why), 0);
  assert_int_equal(q.status, CAPSTAN_CENSUS_IN_PROGRESS);
  assert_int_equal(capstan_devices_query_parse("limit=1000", &q, &why), 0);
  static const char *const kBad[] = {
      "status=bogus",      "limit=0",   "limit=1001", "limit=-1",    "limit=", "limit=1e3",
      "limit=99999999999", "after=%zz", "after=%4",   "after=a%00b", "page=2", "status",
      "secret=1"};
  for (size_t i = 0; i < sizeof(kBad) / sizeof(kBad[0]); i++) {
    why = NULL;
    assert_int_equal(capstan_devices_query_parse(kBad[i], &q, &why), CAPSTAN_EINVAL);
    assert_non_null(why);
  }
  char longer[128];
  snprintf(longer, sizeof(longer), "after=%065d", 0);
  assert_int_equal(capstan_devices_query_parse(longer, &q, &why), CAPSTAN_EINVAL);
}

static char *list_json(capstan_store_t *store, const char *query) {
  capstan_devices_query_t q;
  const char *why;
  assert_int_equal(capstan_devices_query_parse(query, &q, &why), 0);
  capstan_json_t j;
  capstan_json_init(&j);
  assert_int_equal(capstan_devices_list_json(store, &q, &j), 0);
  return take(&j);
}

static void test_devices_paging(void **state) {
  store_fixture_t *f = *state;
  for (int i = 0; i < 25; i++) {
    char name[32];
    snprintf(name, sizeof(name), "SEP0000000000%02d", i);
    put_device(
        f->store, name,
        i % 5 == 0 ? CAPSTAN__OP_STATUS__OP_STATUS_FAILED : CAPSTAN__OP_STATUS__OP_STATUS_PENDING,
        100, 0, i % 5 == 0 ? "authentication failed" : NULL);
  }
  /* Three pages of 10, 10 and 5, chained by "next". */
  char *s = list_json(f->store, "limit=10");
  assert_non_null(strstr(s,
                         "\"count\":10,\"limit\":10,\"status\":null,\"after\":null,"
                         "\"next\":\"SEP000000000009\"}"));
  assert_non_null(strstr(s, "{\"name\":\"SEP000000000000\""));
  free(s);
  s = list_json(f->store, "limit=10&after=SEP000000000009");
  assert_non_null(strstr(s, "\"devices\":[{\"name\":\"SEP000000000010\""));
  assert_non_null(strstr(s, "\"next\":\"SEP000000000019\"}"));
  free(s);
  s = list_json(f->store, "limit=10&after=SEP000000000019");
  assert_non_null(strstr(s, "\"count\":5,"));
  assert_non_null(strstr(s, "\"next\":null}"));
  free(s);
  /* A page that ends exactly at the last device has no next. */
  s = list_json(f->store, "limit=5&after=SEP000000000019");
  assert_non_null(strstr(s, "\"count\":5,"));
  assert_non_null(strstr(s, "\"next\":null}"));
  free(s);
  /* A cursor between names, and after the last. */
  s = list_json(f->store, "limit=1&after=SEP0000000000115");
  assert_non_null(strstr(s, "\"devices\":[{\"name\":\"SEP000000000012\""));
  free(s);
  s = list_json(f->store, "after=zzz");
  assert_non_null(strstr(s, "\"devices\":[],\"count\":0,"));
  free(s);
  /* By status: 5 failed, two pages of 3 and 2. */
  s = list_json(f->store, "status=failed&limit=3");
  assert_non_null(strstr(s,
                         "\"count\":3,\"limit\":3,\"status\":\"failed\",\"after\":null,"
                         "\"next\":\"SEP000000000010\"}"));
  assert_null(strstr(s, "\"pending\""));
  free(s);
  s = list_json(f->store, "status=failed&limit=3&after=SEP000000000010");
  assert_non_null(strstr(s, "{\"name\":\"SEP000000000015\""));
  assert_non_null(strstr(s, "{\"name\":\"SEP000000000020\""));
  assert_non_null(strstr(s, "\"count\":2,"));
  assert_non_null(strstr(s, "\"next\":null}"));
  /* Never the authentication string, only that one is set. */
  assert_null(strstr(s, "9876543210"));
  assert_non_null(strstr(s, "\"auth_string_set\":true"));
  free(s);
  /* One device, with its history; none for an unknown name. */
  capstan_json_t j;
  capstan_json_init(&j);
  assert_int_equal(capstan_devices_show_json(f->store, "SEP000000000005", &j), 0);
  s = take(&j);
  assert_non_null(strstr(s, "\"status\":\"failed\",\"status_reason\":\"authentication failed\""));
  assert_non_null(strstr(s, "\"cert_history\":[]}"));
  assert_null(strstr(s, "9876543210"));
  free(s);
  capstan_json_init(&j);
  assert_int_equal(capstan_devices_show_json(f->store, "SEP0000DEADBEEF", &j), CAPSTAN_ENOENT);
  assert_int_equal(capstan_devices_show_json(f->store, "", &j), CAPSTAN_ENOENT);
  capstan_json_cleanup(&j);
}

/* ---- /status.json ---------------------------------------------------------- */

static void stopped(void *arg) {
  *(int *)arg = 1;
}

static void test_status_render(void **state) {
  store_fixture_t *f = *state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  capstan_status_t *st;
  assert_int_equal(capstan_status_start(&loop, f->store, &st), 0);
  capstan_metric_t *ok = capstan_metrics_counter("capstan_capf_sessions_total", "",
                                                 "operation=\"install\",result=\"ok\"");
  capstan_metric_t *auth = capstan_metrics_counter("capstan_capf_sessions_total", "",
                                                   "operation=\"install\",result=\"auth_failed\"");
  capstan_metric_t *nothing = capstan_metrics_counter("capstan_capf_sessions_total", "",
                                                      "operation=\"none\",result=\"no_action\"");
  capstan_metric_t *http = capstan_metrics_counter("capstan_http_files_requests_total", "",
                                                   "kind=\"itl\",result=\"ok\"");
  capstan_metric_t *tftp =
      capstan_metrics_counter("capstan_tftp_transfers_total", "", "kind=\"itl\",result=\"ok\"");
  capstan_metric_t *missing = capstan_metrics_counter("capstan_http_files_requests_total", "",
                                                      "kind=\"itl\",result=\"not_found\"");
  capstan_metric_t *retry =
      capstan_metrics_counter("capstan_capf_throttled_total", "", "result=\"retry_later\"");
  capstan_metric_t *per_addr = capstan_metrics_counter("capstan_capf_connections_rejected_total",
                                                       "", "reason=\"limit_per_address\"");
  capstan_metric_t *http_total = capstan_metrics_counter(
      "capstan_http_connections_rejected_total", "", "server=\"phone\",reason=\"limit_total\"");
  capstan_metric_t *held = capstan_metrics_gauge("capstan_capf_keygen_waiting", "", NULL);
  /* Two samples 100 s apart (the first right after the one taken at
   * start): 50 enrollments, 10 failures, 300 downloads. */
  double t0 = capstan_now_seconds();
  capstan_status_sample(st, t0);
  capstan_metric_add(ok, 50);
  capstan_metric_add(auth, 10);
  capstan_metric_add(nothing, 7); /* neither */
  capstan_metric_add(http, 200);
  capstan_metric_add(tftp, 100);
  capstan_metric_add(missing, 9); /* not a download */
  capstan_metric_add(retry, 4);
  capstan_metric_add(per_addr, 3);
  capstan_metric_set(held, 6);
  capstan_status_sample(st, t0 + 100);

  capstan_census_t c = {0};
  c.total = 1000;
  c.by_status[CAPSTAN_CENSUS_PENDING] = 90;
  c.by_status[CAPSTAN_CENSUS_IN_PROGRESS] = 10;
  c.by_status[CAPSTAN_CENSUS_SUCCEEDED] = 880;
  c.by_status[CAPSTAN_CENSUS_FAILED] = 20;
  c.at_mono = capstan_now_seconds();
  c.txnid = capstan_store_txnid(f->store);
  c.n_failures = 1;
  snprintf(c.failures[0].name, sizeof(c.failures[0].name), "SEP000000000001");
  snprintf(c.failures[0].reason, sizeof(c.failures[0].reason), "authentication <failed>");
  c.failures[0].since = 1000000;
  c.capf.present = 1;
  c.capf.self_signed = 0;
  c.capf.not_after = 1000000 + 10 * 86400;
  capstan_json_t j;
  capstan_json_init(&j);
  capstan_status_render(st, &c, 1000000 + 60, &j);
  char *s = take(&j);
  assert_non_null(
      strstr(s,
             "\"by_status\":{\"pending\":90,\"in-progress\":10,\"throttled\":0,\"succeeded\":880,"
             "\"failed\":20,\"expired\":0,\"none\":0}"));
  /* 100 left at 0.5 a second: 200 s. */
  assert_non_null(strstr(s,
                         "\"scheduled\":1000,\"remaining\":100,\"succeeded\":880,"
                         "\"failed\":20,\"expired\":0,\"percent_done\":88,"
                         "\"rate_per_second\":0.5,\"rate_window_seconds\":300,"
                         "\"eta_seconds\":200,\"eta_at\":\"1970-01-12T13:51:00Z\"}"));
  assert_non_null(strstr(s,
                         "\"window\":{\"enrollments\":0.5,\"failures\":0.1,\"downloads\":3,"
                         "\"retry_later\":0.04,\"rejected\":0.03}"));
  assert_non_null(strstr(s, "\"throttled_now\":6,\"retry_later_last_minute\":4,"));
  /* The failure list, escaped for a <script> element. */
  assert_non_null(strstr(s,
                         "\"latest_failures\":[{\"name\":\"SEP000000000001\","
                         "\"operation\":\"\",\"at\":\"1970-01-12T13:46:40Z\",\"seconds\":60,"
                         "\"attempts\":0,\"reason\":\"authentication \\u003cfailed\\u003e\"}]"));
  /* Limits: those that refused, by listener and reason; a counter still
   * at 0 is not listed. */
  assert_non_null(strstr(s,
                         "{\"listener\":\"capf\",\"reason\":\"limit_per_address\","
                         "\"metric\":\"capstan_capf_connections_rejected_total\","));
  assert_non_null(strstr(s, "{\"listener\":\"capf\",\"reason\":\"retry_later\","));
  assert_null(strstr(s, "\"limit_total\""));
  assert_non_null(strstr(s, "\"days_left\":9,\"expired\":false,\"signed_by\":\"ca\","));
  assert_non_null(strstr(s, "\"label\":\"CA-signed CAPF\""));
  assert_non_null(strstr(s, "\"store_changed_since\":false}"));
  assert_non_null(strstr(s,
                         "\"certificate_requests\":{\"pending\":0,\"oldest_pending_at\":null,"
                         "\"oldest_pending_age_seconds\":null}"));
  free(s);
  /* Requests waiting: how many, and the oldest's age. */
  c.csr_pending = 3;
  c.csr_oldest_at = 1000000 - 3600;
  capstan_json_init(&j);
  capstan_status_render(st, &c, 1000000 + 60, &j);
  s = take(&j);
  assert_non_null(strstr(s,
                         "\"certificate_requests\":{\"pending\":3,"
                         "\"oldest_pending_at\":\"1970-01-12T12:46:40Z\","
                         "\"oldest_pending_age_seconds\":3660}"));
  free(s);
  c.csr_pending = 0;
  c.csr_oldest_at = 0;
  /* A write since the census. */
  put_device(f->store, "SEP000000000001", CAPSTAN__OP_STATUS__OP_STATUS_PENDING, 10, 0, NULL);
  /* Later refusals of the HTTP limit show up, by server. */
  capstan_metric_add(http_total, 2);
  capstan_status_sample(st, t0 + 101);
  capstan_json_init(&j);
  capstan_status_render(st, &c, 1000000 + 61, &j);
  s = take(&j);
  assert_non_null(strstr(s, "{\"listener\":\"http\",\"reason\":\"limit_total\","));
  assert_non_null(strstr(s, "\"total\":2,\"last_minute\":2,\"biting\":true}"));
  assert_non_null(strstr(s, "\"store_changed_since\":true}"));
  free(s);
  /* Nothing left: done now. */
  c.by_status[CAPSTAN_CENSUS_PENDING] = c.by_status[CAPSTAN_CENSUS_IN_PROGRESS] = 0;
  capstan_json_init(&j);
  capstan_status_render(st, &c, 1000000, &j);
  s = take(&j);
  assert_non_null(strstr(s, "\"eta_seconds\":0,\"eta_at\":\"1970-01-12T13:46:40Z\""));
  free(s);
  int done = 0;
  capstan_status_stop(st, stopped, &done);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(done, 1);
  assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_json_structure),
      cmocka_unit_test(test_json_strings),
      cmocka_unit_test(test_json_numbers),
      cmocka_unit_test(test_series_ring),
      cmocka_unit_test(test_series_irregular),
      cmocka_unit_test(test_series_steps),
      cmocka_unit_test_setup_teardown(test_census_scan, store_setup, store_teardown),
      cmocka_unit_test_setup_teardown(test_census_cache, store_setup, store_teardown),
      cmocka_unit_test(test_devices_query),
      cmocka_unit_test_setup_teardown(test_devices_paging, store_setup, store_teardown),
      cmocka_unit_test_setup_teardown(test_status_render, store_setup, store_teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
