/* Device domain operations: issued -> stale marking, installed, seen
 * certificate, status, delete; names and name tables. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "core/error.h"
#include "storage/devices.h"
#include "storage/store.h"
#include "store_test_util.h"

#define DEV "SEP0011223344AA"

typedef struct {
  char *dir;
  capstan_store_t *store;
  capstan_txn_t txn;
} fixture_t;

static int setup(void **state) {
  fixture_t *f = calloc(1, sizeof(*f));
  f->dir = test_tmpdir();
  assert_int_equal(capstan_store_open(f->dir, CAPSTAN_STORE_CREATE, &f->store), 0);
  assert_int_equal(capstan_store_begin(f->store, true, &f->txn), 0);
  Capstan__Device *d = capstan_device_new(DEV);
  d->has_operation = 1;
  d->operation = CAPSTAN__OPERATION__OPERATION_INSTALL;
  capstan_device_rearm(d, 100);
  assert_int_equal(capstan_store_device_put(&f->txn, d), 0);
  capstan__device__free_unpacked(d, NULL);
  d = capstan_device_new("other-phone");
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

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_issued_marks_earlier_stale, setup, teardown),
      cmocka_unit_test_setup_teardown(test_installed_completes_operation, setup, teardown),
      cmocka_unit_test_setup_teardown(test_seen_cert_and_status, setup, teardown),
      cmocka_unit_test_setup_teardown(test_deleted, setup, teardown),
      cmocka_unit_test(test_names),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
