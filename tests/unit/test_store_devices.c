/* Device domain operations: issued -> stale marking, installed, seen
 * certificate, status, delete; names and name tables. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <openssl/crypto.h>
#include <openssl/ec_key.h>
#include <openssl/mem.h>
#include <openssl/evp.h>
#include <openssl/nid.h>
#include <openssl/x509.h>
#include <time.h>

#include "handlers/cli/cli.h"
#include "core/base/error.h"
#include "storage/devices.h"
#include "storage/store.h"
#include "store_test_util.h"

#define DEV "SEP0011223344AA"

typedef struct {
  char *dir;
  capstan_store_t *store;
  capstan_txn_t txn;
} fixture_t;

/* Device NAME with an install armed at 100; with |in_progress|, its
 * session then started at 200 (attempt 1). */
static void put_install(fixture_t *f, const char *name, bool in_progress) {
  Capstan__Device *d = capstan_device_new(name);
  d->has_operation = 1;
  d->operation = CAPSTAN__OPERATION__OPERATION_INSTALL;
  capstan_device_rearm(d, 100);
  assert_int_equal(capstan_store_device_put(&f->txn, d), 0);
  capstan__device__free_unpacked(d, NULL);
  if (in_progress) {
    assert_int_equal(capstan_devices_set_status(
                         &f->txn, name, CAPSTAN__OP_STATUS__OP_STATUS_IN_PROGRESS, NULL, 200, true),
                     0);
  }
}

static int setup(void **state) {
  fixture_t *f = calloc(1, sizeof(*f));
  f->dir = test_tmpdir();
  assert_int_equal(test_store_open(f->dir, &f->store), 0);
  assert_int_equal(capstan_store_begin(f->store, true, &f->txn), 0);
  put_install(f, DEV, false);
  Capstan__Device *d = capstan_device_new("other-phone");
  assert_int_equal(capstan_store_device_put(&f->txn, d), 0);
  capstan__device__free_unpacked(d, NULL);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture_t *f = *state;
  capstan_store_abort(&f->txn);
  capstan_store_close(f->store);
  test_rmdir(f->dir);
  free(f);
  return 0;
}

static void serial_of(uint8_t s[CAPSTAN_SERIAL_LEN], int n) {
  memset(s, 0, CAPSTAN_SERIAL_LEN);
  s[0] = 0x40;
  s[15] = (uint8_t)n;
}

static Capstan__CertStatus cert_status(fixture_t *f, int n) {
  uint8_t s[CAPSTAN_SERIAL_LEN];
  serial_of(s, n);
  Capstan__IssuedCert *c;
  assert_int_equal(capstan_store_cert_get(&f->txn, s, &c), 0);
  Capstan__CertStatus st = c->status;
  capstan__issued_cert__free_unpacked(c, NULL);
  return st;
}

static Capstan__Device *get(fixture_t *f) {
  Capstan__Device *d;
  assert_int_equal(capstan_store_device_get(&f->txn, DEV, &d), 0);
  return d;
}

static const uint8_t der1[] = {0x30, 0x01, 0x01};
static const uint8_t der2[] = {0x30, 0x01, 0x02};
static const uint8_t spki[] = {0x30, 0x02, 0x05, 0x00};
static const char md5a[] = "0123456789abcdef0123456789abcdef";
static const char md5b[] = "fedcba9876543210fedcba9876543210";

static void test_issued_marks_earlier_stale(void **state) {
  fixture_t *f = *state;
  uint8_t s1[16], s2[16], s3[16];
  serial_of(s1, 1);
  serial_of(s2, 2);
  serial_of(s3, 3);
  assert_int_equal(
      capstan_devices_record_issued(&f->txn, DEV, s1, der1, sizeof(der1), 5000, md5a, 200), 0);
  assert_int_equal(cert_status(f, 1), CAPSTAN__CERT_STATUS__CERT_STATUS_ISSUED);
  assert_int_equal(
      capstan_devices_record_issued(&f->txn, DEV, s2, der2, sizeof(der2), 5000, md5b, 300), 0);
  assert_int_equal(cert_status(f, 1), CAPSTAN__CERT_STATUS__CERT_STATUS_STALE);
  assert_int_equal(cert_status(f, 2), CAPSTAN__CERT_STATUS__CERT_STATUS_ISSUED);

  Capstan__Device *d = get(f);
  assert_int_equal(d->n_cert_history, 2);
  assert_memory_equal(d->cert_history[0].data, s1, 16);
  assert_memory_equal(d->cert_history[1].data, s2, 16);
  assert_int_equal(d->status, CAPSTAN__OP_STATUS__OP_STATUS_PENDING); /* unchanged */
  capstan__device__free_unpacked(d, NULL);

  Capstan__IssuedCert *c;
  assert_int_equal(capstan_store_cert_get(&f->txn, s2, &c), 0);
  assert_string_equal(c->device, DEV);
  assert_int_equal(c->not_after, 5000);
  assert_int_equal(c->issued_at, 300);
  assert_string_equal(c->md5hash, md5b);
  assert_memory_equal(c->der.data, der2, sizeof(der2));
  capstan__issued_cert__free_unpacked(c, NULL);

  assert_int_equal(capstan_devices_record_issued(&f->txn, "SEP999999999999", s3, der1, sizeof(der1),
                                                 5000, NULL, 400),
                   CAPSTAN_ENOENT);
}

static void test_installed_completes_operation(void **state) {
  fixture_t *f = *state;
  uint8_t s1[16], s2[16], s3[16];
  serial_of(s1, 1);
  serial_of(s2, 2);
  serial_of(s3, 3);
  assert_int_equal(
      capstan_devices_record_issued(&f->txn, DEV, s1, der1, sizeof(der1), 5000, md5a, 200), 0);
  assert_int_equal(
      capstan_devices_record_installed(&f->txn, DEV, s1, spki, sizeof(spki), NULL, 250), 0);
  assert_int_equal(cert_status(f, 1), CAPSTAN__CERT_STATUS__CERT_STATUS_INSTALLED);
  Capstan__Device *d = get(f);
  assert_int_equal(d->status, CAPSTAN__OP_STATUS__OP_STATUS_SUCCEEDED);
  assert_int_equal(d->operation, CAPSTAN__OPERATION__OPERATION_NONE);
  assert_int_equal(d->last_operation, CAPSTAN__OPERATION__OPERATION_INSTALL);
  assert_int_equal(d->cert_type, CAPSTAN__CERT_TYPE__CERT_TYPE_LSC);
  assert_memory_equal(d->cert_der.data, der1, sizeof(der1));
  assert_int_equal(d->public_key.len, sizeof(spki));
  assert_string_equal(d->md5hash, md5a); /* taken from the IssuedCert */
  assert_int_equal(d->status_changed_at, 250);
  capstan__device__free_unpacked(d, NULL);

  /* An upgrade: the new LSC replaces the installed one, which is gone. */
  assert_int_equal(
      capstan_devices_record_issued(&f->txn, DEV, s2, der2, sizeof(der2), 6000, md5b, 300), 0);
  assert_int_equal(cert_status(f, 1), CAPSTAN__CERT_STATUS__CERT_STATUS_INSTALLED);
  assert_int_equal(
      capstan_devices_record_installed(&f->txn, DEV, s2, spki, sizeof(spki), md5b, 310), 0);
  assert_int_equal(cert_status(f, 1), CAPSTAN__CERT_STATUS__CERT_STATUS_DELETED);
  assert_int_equal(cert_status(f, 2), CAPSTAN__CERT_STATUS__CERT_STATUS_INSTALLED);

  /* Unknown serial, and a serial of another device. */
  assert_int_equal(capstan_devices_record_installed(&f->txn, DEV, s3, NULL, 0, NULL, 320),
                   CAPSTAN_ENOENT);
  assert_int_equal(capstan_devices_record_issued(&f->txn, "other-phone", s3, der1, sizeof(der1),
                                                 6000, NULL, 330),
                   0);
  assert_int_equal(capstan_devices_record_installed(&f->txn, DEV, s3, NULL, 0, NULL, 340),
                   CAPSTAN_EINVAL);
}

static void test_seen_cert_and_status(void **state) {
  fixture_t *f = *state;
  assert_int_equal(capstan_devices_record_seen_cert(&f->txn, DEV, der1, sizeof(der1),
                                                    CAPSTAN__CERT_TYPE__CERT_TYPE_MIC, md5a, spki,
                                                    sizeof(spki), 500),
                   0);
  Capstan__Device *d = get(f);
  assert_int_equal(d->cert_type, CAPSTAN__CERT_TYPE__CERT_TYPE_MIC);
  assert_int_equal(d->cert_seen_at, 500);
  assert_string_equal(d->md5hash, md5a);
  assert_int_equal(d->status, CAPSTAN__OP_STATUS__OP_STATUS_PENDING);
  capstan__device__free_unpacked(d, NULL);

  assert_int_equal(capstan_devices_set_status(
                       &f->txn, DEV, CAPSTAN__OP_STATUS__OP_STATUS_IN_PROGRESS, NULL, 600, true),
                   0);
  assert_int_equal(capstan_devices_set_status(&f->txn, DEV, CAPSTAN__OP_STATUS__OP_STATUS_FAILED,
                                              "authentication failed", 610, false),
                   0);
  d = get(f);
  assert_int_equal(d->status, CAPSTAN__OP_STATUS__OP_STATUS_FAILED);
  assert_string_equal(d->status_reason, "authentication failed");
  assert_int_equal(d->attempts, 1);
  assert_int_equal(d->last_attempt_at, 600);
  assert_int_equal(d->status_changed_at, 610);
  assert_int_equal(d->operation, CAPSTAN__OPERATION__OPERATION_INSTALL);
  capstan__device__free_unpacked(d, NULL);

  assert_int_equal(capstan_devices_set_status(&f->txn, DEV, CAPSTAN__OP_STATUS__OP_STATUS_SUCCEEDED,
                                              NULL, 700, true),
                   0);
  d = get(f);
  assert_int_equal(d->attempts, 2);
  assert_null(d->status_reason);
  assert_int_equal(d->operation, CAPSTAN__OPERATION__OPERATION_NONE);
  assert_int_equal(d->last_operation, CAPSTAN__OPERATION__OPERATION_INSTALL);
  capstan__device__free_unpacked(d, NULL);

  assert_int_equal(capstan_devices_set_status(&f->txn, "SEP000000000001",
                                              CAPSTAN__OP_STATUS__OP_STATUS_FAILED, "x", 1, false),
                   CAPSTAN_ENOENT);
}

static void test_deleted(void **state) {
  fixture_t *f = *state;
  uint8_t s1[16], s2[16];
  serial_of(s1, 1);
  serial_of(s2, 2);
  assert_int_equal(
      capstan_devices_record_issued(&f->txn, DEV, s1, der1, sizeof(der1), 5000, md5a, 200), 0);
  assert_int_equal(
      capstan_devices_record_installed(&f->txn, DEV, s1, spki, sizeof(spki), NULL, 250), 0);
  assert_int_equal(
      capstan_devices_record_issued(&f->txn, DEV, s2, der2, sizeof(der2), 5000, md5b, 260), 0);
  Capstan__Device *d = get(f);
  d->has_operation = 1;
  d->operation = CAPSTAN__OPERATION__OPERATION_DELETE;
  assert_int_equal(capstan_store_device_put(&f->txn, d), 0);
  capstan__device__free_unpacked(d, NULL);

  assert_int_equal(capstan_devices_record_deleted(&f->txn, DEV, 900), 0);
  assert_int_equal(cert_status(f, 1), CAPSTAN__CERT_STATUS__CERT_STATUS_DELETED);
  assert_int_equal(cert_status(f, 2), CAPSTAN__CERT_STATUS__CERT_STATUS_DELETED);
  d = get(f);
  assert_int_equal(d->status, CAPSTAN__OP_STATUS__OP_STATUS_SUCCEEDED);
  assert_int_equal(d->last_operation, CAPSTAN__OPERATION__OPERATION_DELETE);
  assert_int_equal(d->operation, CAPSTAN__OPERATION__OPERATION_NONE);
  assert_false(d->has_cert_der);
  assert_null(d->md5hash);
  assert_false(d->has_public_key);
  assert_int_equal(d->n_cert_history, 2);
  capstan__device__free_unpacked(d, NULL);
  assert_int_equal(capstan_devices_record_deleted(&f->txn, "nobody", 900), CAPSTAN_ENOENT);
}

/* Every change of a certificate's status is an audit event of the device,
 * written in the same transaction as the change. */
typedef struct {
  char lines[16][200];
  size_t n;
} events_t;

static int collect_event(const capstan_audit_event_t *e, void *arg) {
  events_t *ev = arg;
  assert_true(ev->n < 16);
  snprintf(ev->lines[ev->n++], 200, "%s %s", e->event, e->detail ? e->detail : "-");
  return 0;
}

static void test_cert_events_audited(void **state) {
  fixture_t *f = *state;
  uint8_t s1[16], s2[16], s3[16];
  serial_of(s1, 1);
  serial_of(s2, 2);
  serial_of(s3, 3);
  assert_int_equal(
      capstan_devices_record_issued(&f->txn, DEV, s1, der1, sizeof(der1), 0, md5a, 200), 0);
  assert_int_equal(
      capstan_devices_record_issued(&f->txn, DEV, s2, der2, sizeof(der2), 86400, md5b, 300), 0);
  assert_int_equal(
      capstan_devices_record_installed(&f->txn, DEV, s2, spki, sizeof(spki), NULL, 310), 0);
  assert_int_equal(
      capstan_devices_record_issued(&f->txn, DEV, s3, der1, sizeof(der1), 86400, NULL, 400), 0);
  assert_int_equal(
      capstan_devices_record_installed(&f->txn, DEV, s3, spki, sizeof(spki), NULL, 410), 0);
  assert_int_equal(capstan_devices_record_deleted(&f->txn, DEV, 500), 0);
  events_t ev = {0};
  assert_int_equal(capstan_audit_query(&f->txn, 0, DEV, collect_event, &ev), 0);
#define S1 "40000000000000000000000000000001"
#define S2 "40000000000000000000000000000002"
#define S3 "40000000000000000000000000000003"
  const char *want[] = {
      "cert_issued serial=" S1 " not_after=- md5=0123456789abcdef0123456789abcdef",
      "cert_stale serial=" S1 " superseded_by=" S2 " (never confirmed by the phone)",
      "cert_issued serial=" S2
      " not_after=1970-01-02T00:00:00Z md5=fedcba9876543210fedcba9876543210",
      "cert_installed serial=" S2,
      "cert_issued serial=" S3 " not_after=1970-01-02T00:00:00Z md5=-",
      "cert_deleted serial=" S2 " replaced_by=" S3 " (on the phone)",
      "cert_installed serial=" S3,
      "cert_deleted serial=" S3 " (deleted by the phone)",
  };
  assert_int_equal(ev.n, sizeof(want) / sizeof(want[0]));
  for (size_t i = 0; i < ev.n; i++) assert_string_equal(ev.lines[i], want[i]);
  /* Another device's certificate events are its own. */
  ev.n = 0;
  assert_int_equal(capstan_audit_query(&f->txn, 0, "other-phone", collect_event, &ev), 0);
  assert_int_equal(ev.n, 0);
}

static void test_names(void **state) {
  assert_true(capstan_device_name_valid("SEP0011223344AA"));
  assert_true(capstan_device_name_valid("CSFjdoe"));
  assert_true(capstan_device_name_valid("a"));
  assert_true(capstan_device_name_valid("phone-1.lab_2"));
  assert_false(capstan_device_name_valid("SEP0011223344aa"));
  assert_false(capstan_device_name_valid(""));
  assert_false(capstan_device_name_valid(NULL));
  assert_false(capstan_device_name_valid("1phone"));
  assert_false(capstan_device_name_valid("-phone"));
  assert_false(capstan_device_name_valid("pho ne"));
  assert_false(capstan_device_name_valid("phone/../x"));
  char long_name[70];
  memset(long_name, 'a', 64);
  long_name[64] = '\0';
  assert_true(capstan_device_name_valid(long_name));
  long_name[64] = 'a';
  long_name[65] = '\0';
  assert_false(capstan_device_name_valid(long_name));

  assert_true(capstan_auth_string_valid("1234"));
  assert_true(capstan_auth_string_valid("1234567890"));
  assert_false(capstan_auth_string_valid("123"));
  assert_false(capstan_auth_string_valid("12345678901"));
  assert_false(capstan_auth_string_valid("12a4"));
  assert_false(capstan_auth_string_valid(NULL));

  Capstan__KeyAlg alg;
  uint32_t bits;
  assert_int_equal(capstan_key_parse("ec384", &alg, &bits), 0);
  assert_int_equal(alg, CAPSTAN__KEY_ALG__KEY_ALG_EC);
  assert_int_equal(bits, 384);
  assert_int_equal(capstan_key_parse("rsa2049", &alg, &bits), CAPSTAN_EINVAL);
  assert_string_equal(capstan_key_name(CAPSTAN__KEY_ALG__KEY_ALG_RSA, 4096), "rsa4096");
  assert_string_equal(capstan_key_names(),
                      "rsa512,rsa1024,rsa2048,rsa3072,rsa4096,ec256,ec384,ec521");
  assert_string_equal(capstan_operation_names(), "install,delete,troubleshoot,none");
  assert_string_equal(capstan_auth_mode_names(), "string,null,lsc,mic");
  Capstan__OpStatus st;
  assert_int_equal(capstan_op_status_parse("in-progress", &st), 0);
  assert_int_equal(st, CAPSTAN__OP_STATUS__OP_STATUS_IN_PROGRESS);
  assert_string_equal(capstan_op_status_name(CAPSTAN__OP_STATUS__OP_STATUS_EXPIRED), "expired");
  Capstan__AuthMode am;
  assert_int_equal(capstan_auth_mode_parse("none", &am), CAPSTAN_EINVAL);
}

/* RETRY_LATER from the throttle: status throttled, the time the phone is
 * due back, said in the reason; the phone's next session clears both. */
static void test_throttled(void **state) {
  fixture_t *f = *state;
  assert_int_equal(capstan_devices_set_status(
                       &f->txn, DEV, CAPSTAN__OP_STATUS__OP_STATUS_IN_PROGRESS, NULL, 600, true),
                   0);
  /* 1970-01-02T03:04:05Z + 60 s */
  int64_t back = 86400 + 3 * 3600 + 4 * 60 + 5 + 60;
  assert_int_equal(capstan_devices_set_throttled(&f->txn, DEV, back, 620), 0);
  Capstan__Device *d = get(f);
  assert_int_equal(d->status, CAPSTAN__OP_STATUS__OP_STATUS_THROTTLED);
  assert_string_equal(capstan_op_status_name(d->status), "throttled");
  assert_string_equal(d->status_reason, "retry after 03:05:05 UTC");
  assert_true(d->has_retry_after);
  assert_int_equal(d->retry_after, back);
  assert_int_equal(d->attempts, 1);
  assert_int_equal(d->status_changed_at, 620);
  capstan__device__free_unpacked(d, NULL);

  assert_int_equal(capstan_devices_set_status(
                       &f->txn, DEV, CAPSTAN__OP_STATUS__OP_STATUS_IN_PROGRESS, NULL, 700, true),
                   0);
  d = get(f);
  assert_int_equal(d->status, CAPSTAN__OP_STATUS__OP_STATUS_IN_PROGRESS);
  assert_null(d->status_reason);
  assert_false(d->has_retry_after);
  assert_int_equal(d->attempts, 2);
  capstan__device__free_unpacked(d, NULL);

  Capstan__OpStatus st;
  assert_int_equal(capstan_op_status_parse("throttled", &st), 0);
  assert_int_equal(st, CAPSTAN__OP_STATUS__OP_STATUS_THROTTLED);
}

/* Start-up: what a stopped server left in progress is failed with why, its
 * operation kept; every other status stays as it is. */
static void test_reconcile_interrupted(void **state) {
  fixture_t *f = *state;
  static const char *const kNames[] = {"SEP0000000000A1", "SEP0000000000A2", "SEP0000000000A3"};
  for (int i = 0; i < 3; i++) put_install(f, kNames[i], i < 2);
  assert_int_equal(capstan_devices_set_throttled(&f->txn, kNames[2], 300, 200), 0);
  size_t n = 99;
  assert_int_equal(capstan_devices_reconcile_interrupted(&f->txn, 400, &n), 0);
  assert_int_equal(n, 2);
  for (int i = 0; i < 2; i++) {
    Capstan__Device *d = NULL;
    assert_int_equal(capstan_store_device_get(&f->txn, kNames[i], &d), 0);
    assert_int_equal(d->status, CAPSTAN__OP_STATUS__OP_STATUS_FAILED);
    assert_string_equal(d->status_reason, CAPSTAN_REASON_INTERRUPTED);
    assert_int_equal(d->operation, CAPSTAN__OPERATION__OPERATION_INSTALL);
    assert_int_equal(d->attempts, 1);
    assert_int_equal(d->status_changed_at, 400);
    capstan__device__free_unpacked(d, NULL);
  }
  Capstan__Device *d = NULL;
  assert_int_equal(capstan_store_device_get(&f->txn, kNames[2], &d), 0);
  assert_int_equal(d->status, CAPSTAN__OP_STATUS__OP_STATUS_THROTTLED);
  capstan__device__free_unpacked(d, NULL);
  d = get(f);
  assert_int_equal(d->status, CAPSTAN__OP_STATUS__OP_STATUS_PENDING);
  capstan__device__free_unpacked(d, NULL);
  /* Nothing left to reconcile. */
  assert_int_equal(capstan_devices_reconcile_interrupted(&f->txn, 500, &n), 0);
  assert_int_equal(n, 0);
}

/* The running server's repair after a storage outage: devices in progress
 * without a running session are failed with the storage reason, those
 * with one (the sorted |live| names) are left to it. */
static void test_fail_in_progress_skips_live(void **state) {
  fixture_t *f = *state;
  static const char *const kNames[] = {"SEP0000000000B1", "SEP0000000000B2", "SEP0000000000B3"};
  for (int i = 0; i < 3; i++) put_install(f, kNames[i], true);
  char *live[] = {strdup("SEP0000000000B3"), strdup("SEP0000000000B2")};
  capstan_devices_sort_names(live, 2);
  assert_string_equal(live[0], "SEP0000000000B2");
  size_t failed = 99, skipped = 99;
  assert_int_equal(capstan_devices_fail_in_progress(&f->txn, 400, CAPSTAN_REASON_STORAGE_ERROR,
                                                    "storage_repair", live, 2, &failed, &skipped),
                   0);
  assert_int_equal(failed, 1);
  assert_int_equal(skipped, 2);
  Capstan__Device *d = NULL;
  assert_int_equal(capstan_store_device_get(&f->txn, kNames[0], &d), 0);
  assert_int_equal(d->status, CAPSTAN__OP_STATUS__OP_STATUS_FAILED);
  assert_string_equal(d->status_reason, CAPSTAN_REASON_STORAGE_ERROR);
  assert_int_equal(d->operation, CAPSTAN__OPERATION__OPERATION_INSTALL);
  capstan__device__free_unpacked(d, NULL);
  for (int i = 1; i < 3; i++) {
    assert_int_equal(capstan_store_device_get(&f->txn, kNames[i], &d), 0);
    assert_int_equal(d->status, CAPSTAN__OP_STATUS__OP_STATUS_IN_PROGRESS);
    capstan__device__free_unpacked(d, NULL);
  }
  /* Their sessions gone, the next repair fails them too. */
  assert_int_equal(capstan_devices_fail_in_progress(&f->txn, 500, CAPSTAN_REASON_STORAGE_ERROR,
                                                    "storage_repair", NULL, 0, &failed, NULL),
                   0);
  assert_int_equal(failed, 2);
  free(live[0]);
  free(live[1]);
}

/* The CLI's stale-certificate commands on a store the domain operations
 * filled: delete one by serial, refuse a live one, then delete all. */
static int run_cert_cli(const char *dir, const char *a1, const char *a2) {
  char *argv[8];
  int argc = 0;
  argv[argc++] = (char *)"cert";
  argv[argc++] = (char *)a1;
  if (a2 != NULL) argv[argc++] = (char *)a2;
  argv[argc++] = (char *)"--data-dir";
  argv[argc++] = (char *)dir;
  argv[argc] = NULL;
  return capstan_cli_cert_main(argc, argv);
}

static void test_cli_delete_stale(void **state) {
  fixture_t *f = *state;
  uint8_t s[4][16];
  for (int i = 0; i < 4; i++) {
    serial_of(s[i], i + 1);
    assert_int_equal(
        capstan_devices_record_issued(&f->txn, DEV, s[i], der1, sizeof(der1), 5000, md5a, 200 + i),
        0);
  }
  assert_int_equal(capstan_store_commit(&f->txn), 0); /* 1..3 stale, 4 issued */
  /* One process must not hold the same environment open twice (closing
   * one would drop the other's lock-file locks): the CLI opens its own. */
  capstan_store_close(f->store);
  f->store = NULL;
  char hex[33];
  capstan_cli_hex(s[0], 16, hex);
  assert_int_equal(run_cert_cli(f->dir, "delete-stale", hex), CAPSTAN_EXIT_OK);
  capstan_cli_hex(s[3], 16, hex);
  assert_int_equal(run_cert_cli(f->dir, "delete-stale", hex), CAPSTAN_EXIT_ERROR); /* not stale */
  assert_int_equal(run_cert_cli(f->dir, "delete-stale", "zz"), CAPSTAN_EXIT_USAGE);
  assert_int_equal(run_cert_cli(f->dir, "list-stale", NULL), CAPSTAN_EXIT_OK);

  assert_int_equal(capstan_store_open(f->dir, 0, &f->store), 0);
  assert_int_equal(capstan_store_begin(f->store, false, &f->txn), 0);
  assert_int_equal(cert_status(f, 1), CAPSTAN__CERT_STATUS__CERT_STATUS_DELETED);
  assert_int_equal(cert_status(f, 2), CAPSTAN__CERT_STATUS__CERT_STATUS_STALE);
  assert_int_equal(cert_status(f, 4), CAPSTAN__CERT_STATUS__CERT_STATUS_ISSUED);
  capstan_store_abort(&f->txn);

  capstan_store_close(f->store);
  f->store = NULL;
  assert_int_equal(run_cert_cli(f->dir, "delete-stale", "--all"), CAPSTAN_EXIT_OK);
  assert_int_equal(capstan_store_open(f->dir, 0, &f->store), 0);
  assert_int_equal(capstan_store_begin(f->store, false, &f->txn), 0);
  for (int i = 1; i <= 3; i++) {
    assert_int_equal(cert_status(f, i), CAPSTAN__CERT_STATUS__CERT_STATUS_DELETED);
  }
  assert_int_equal(cert_status(f, 4), CAPSTAN__CERT_STATUS__CERT_STATUS_ISSUED);
  /* teardown aborts this read transaction */
}

/* A self-signed EC certificate valid for |days| more days, as DER. */
static uint8_t *make_cert(long days, size_t *len) {
  EC_KEY *ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
  assert_non_null(ec);
  assert_true(EC_KEY_generate_key(ec));
  EVP_PKEY *pkey = EVP_PKEY_new();
  assert_true(EVP_PKEY_assign_EC_KEY(pkey, ec));
  X509 *x = X509_new();
  assert_true(X509_set_version(x, X509_VERSION_3));
  assert_true(ASN1_INTEGER_set(X509_get_serialNumber(x), 1));
  assert_non_null(X509_gmtime_adj(X509_getm_notBefore(x), 0));
  assert_non_null(X509_gmtime_adj(X509_getm_notAfter(x), days * 86400));
  X509_NAME *n = X509_get_subject_name(x);
  assert_true(X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const uint8_t *)"t", -1, -1, 0));
  assert_true(X509_set_issuer_name(x, n));
  assert_true(X509_set_pubkey(x, pkey));
  assert_true(X509_sign(x, pkey, EVP_sha256()));
  uint8_t *der = NULL;
  int n_der = i2d_X509(x, &der);
  assert_true(n_der > 0);
  *len = (size_t)n_der;
  X509_free(x);
  EVP_PKEY_free(pkey);
  return der;
}

static int run_device_cli(char **argv) {
  int argc = 0;
  while (argv[argc] != NULL) argc++;
  return capstan_cli_device_main(argc, argv);
}

/* bulk-set --expires-before picks devices by their current certificate's
 * notAfter; report expiring reads the same field. */
static void test_cli_bulk_set_expiring(void **state) {
  fixture_t *f = *state;
  size_t l1, l2;
  uint8_t *soon = make_cert(10, &l1), *late = make_cert(100, &l2);
  assert_int_equal(capstan_devices_record_seen_cert(
                       &f->txn, DEV, soon, l1, CAPSTAN__CERT_TYPE__CERT_TYPE_LSC, NULL, NULL, 0, 1),
                   0);
  assert_int_equal(
      capstan_devices_record_seen_cert(&f->txn, "other-phone", late, l2,
                                       CAPSTAN__CERT_TYPE__CERT_TYPE_MIC, NULL, NULL, 0, 1),
      0);
  assert_int_equal(capstan_store_commit(&f->txn), 0);
  OPENSSL_free(soon);
  OPENSSL_free(late);
  capstan_store_close(f->store);
  f->store = NULL;

  char when[40];
  capstan_cli_format_time((int64_t)time(NULL) + 30 * 86400, when, sizeof(when));
  char *bulk[] = {"device",     "bulk-set",    "--expires-before",
                  when,         "--operation", "troubleshoot",
                  "--data-dir", f->dir,        NULL};
  assert_int_equal(run_device_cli(bulk), CAPSTAN_EXIT_OK);
  char *nofilter[] = {"device", "bulk-set", "--operation", "none", "--data-dir", f->dir, NULL};
  assert_int_equal(run_device_cli(nofilter), CAPSTAN_EXIT_USAGE);
  char *report[] = {"report", "expiring", "--days", "30", "--data-dir", f->dir, NULL};
  assert_int_equal(capstan_cli_report_main(6, report), CAPSTAN_EXIT_OK);

  assert_int_equal(capstan_store_open(f->dir, 0, &f->store), 0);
  Capstan__Device *d;
  assert_int_equal(capstan_store_device_load(f->store, DEV, &d), 0);
  assert_int_equal(d->operation, CAPSTAN__OPERATION__OPERATION_TROUBLESHOOT);
  assert_int_equal(d->status, CAPSTAN__OP_STATUS__OP_STATUS_PENDING);
  capstan__device__free_unpacked(d, NULL);
  assert_int_equal(capstan_store_device_load(f->store, "other-phone", &d), 0);
  assert_int_equal(d->operation, CAPSTAN__OPERATION__OPERATION_NONE);
  capstan__device__free_unpacked(d, NULL);

  int64_t na;
  size_t l3;
  uint8_t *c3 = make_cert(10, &l3);
  assert_int_equal(capstan_cli_cert_not_after(c3, l3, &na), 0);
  int64_t want = (int64_t)time(NULL) + 10 * 86400;
  assert_true(na >= want - 5 && na <= want + 5);
  assert_int_equal(capstan_cli_cert_not_after(c3, l3 - 1, &na), CAPSTAN_EINVAL);
  OPENSSL_free(c3);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_issued_marks_earlier_stale, setup, teardown),
      cmocka_unit_test_setup_teardown(test_installed_completes_operation, setup, teardown),
      cmocka_unit_test_setup_teardown(test_seen_cert_and_status, setup, teardown),
      cmocka_unit_test_setup_teardown(test_deleted, setup, teardown),
      cmocka_unit_test_setup_teardown(test_cert_events_audited, setup, teardown),
      cmocka_unit_test_setup_teardown(test_throttled, setup, teardown),
      cmocka_unit_test_setup_teardown(test_reconcile_interrupted, setup, teardown),
      cmocka_unit_test_setup_teardown(test_fail_in_progress_skips_live, setup, teardown),
      cmocka_unit_test(test_names),
      cmocka_unit_test_setup_teardown(test_cli_delete_stale, setup, teardown),
      cmocka_unit_test_setup_teardown(test_cli_bulk_set_expiring, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
