/* The stored CaConfig (core/ca/config_store.c): a store without one reads
 * as an empty config with the defaults; every field survives a write and a
 * read; CaHealth's typed access. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/error.h"
#include "core/ca/ca.h"
#include "storage/records.h"
#include "storage/store.h"
#include "store_test_util.h"

typedef struct {
  char *dir;
  capstan_store_t *store;
  capstan_txn_t txn;
} fixture_t;

static int setup(void **state) {
  fixture_t *f = calloc(1, sizeof(*f));
  f->dir = test_tmpdir();
  assert_int_equal(test_store_open(f->dir, &f->store), 0);
  assert_int_equal(capstan_store_begin(f->store, true, &f->txn), 0);
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

static void test_empty(void **state) {
  fixture_t *f = *state;
  capstan_ca_config_t c;
  assert_int_equal(capstan_ca_config_read(&f->txn, &c), 0);
  assert_string_equal(c.url, "");
  assert_string_equal(c.password, "");
  assert_null(c.ca_bundle_pem);
  assert_int_equal(c.chain_count, 0);
  assert_int_equal(c.timeout_seconds, CAPSTAN_CA_DEFAULT_TIMEOUT_SECONDS);
  assert_int_equal(c.phone_wait_seconds, CAPSTAN_CA_DEFAULT_PHONE_WAIT_SECONDS);
  capstan_ca_config_cleanup(&c);
  Capstan__CaHealth *h;
  assert_int_equal(capstan_store_ca_health_get(&f->txn, &h), CAPSTAN_ENOENT);
}

static void test_round_trip(void **state) {
  fixture_t *f = *state;
  capstan_ca_config_t c;
  capstan_ca_config_init(&c);
  strcpy(c.url, "https://ca.example.com:8443/.well-known/est");
  strcpy(c.label, "phones");
  strcpy(c.template_name, "CapstanPhone");
  strcpy(c.username, "EXAMPLE\\capstan");
  strcpy(c.password, "p@ss word");
  c.ca_bundle_pem = (uint8_t *)strdup("-----BEGIN CERTIFICATE-----\n...");
  c.ca_bundle_len = strlen((char *)c.ca_bundle_pem);
  c.timeout_seconds = 7;
  c.phone_wait_seconds = 900;
  c.chain_count = 2;
  c.chain_der = calloc(2, sizeof(*c.chain_der));
  c.chain_lens = calloc(2, sizeof(*c.chain_lens));
  for (size_t i = 0; i < 2; i++) {
    c.chain_der[i] = malloc(3);
    memcpy(c.chain_der[i], i == 0 ? "\x30\x01\x01" : "\x30\x01\x02", 3);
    c.chain_lens[i] = 3;
  }
  c.chain_fetched_at = 1234;
  assert_int_equal(capstan_ca_config_write(&f->txn, &c), 0);

  capstan_ca_config_t r;
  assert_int_equal(capstan_ca_config_read(&f->txn, &r), 0);
  assert_string_equal(r.url, c.url);
  assert_string_equal(r.label, c.label);
  assert_string_equal(r.template_name, c.template_name);
  assert_string_equal(r.username, c.username);
  assert_string_equal(r.password, c.password);
  assert_int_equal(r.ca_bundle_len, c.ca_bundle_len);
  assert_memory_equal(r.ca_bundle_pem, c.ca_bundle_pem, c.ca_bundle_len);
  assert_int_equal(r.timeout_seconds, 7);
  assert_int_equal(r.phone_wait_seconds, 900);
  assert_int_equal(r.chain_count, 2);
  assert_memory_equal(r.chain_der[1], "\x30\x01\x02", 3);
  assert_int_equal(r.chain_fetched_at, 1234);
  capstan_ca_config_cleanup(&r);

  /* Cleared fields stay cleared. */
  c.label[0] = '\0';
  c.password[0] = '\0';
  assert_int_equal(capstan_ca_config_write(&f->txn, &c), 0);
  assert_int_equal(capstan_ca_config_read(&f->txn, &r), 0);
  assert_string_equal(r.label, "");
  assert_string_equal(r.password, "");
  assert_string_equal(r.template_name, "CapstanPhone");
  capstan_ca_config_cleanup(&r);
  capstan_ca_config_cleanup(&c);
}

/* A record holding more than the struct takes is refused, not cut. */
static void test_oversized_refused(void **state) {
  fixture_t *f = *state;
  Capstan__CaConfig rec = CAPSTAN__CA_CONFIG__INIT;
  char big[CAPSTAN_CA_PASSWORD_MAX + 2];
  memset(big, 'x', sizeof(big) - 1);
  big[sizeof(big) - 1] = '\0';
  rec.url = "https://ca.example.com";
  rec.password = big;
  assert_int_equal(capstan_store_ca_config_put(&f->txn, &rec), 0);
  capstan_ca_config_t r;
  assert_int_equal(capstan_ca_config_read(&f->txn, &r), CAPSTAN_EINVAL);
  assert_string_equal(r.url, "");
  capstan_ca_config_cleanup(&r);
}

static void test_health(void **state) {
  fixture_t *f = *state;
  Capstan__CaHealth h = CAPSTAN__CA_HEALTH__INIT;
  h.has_last_success_at = 1;
  h.last_success_at = 99;
  h.last_error = "CA unavailable";
  h.has_requests = 1;
  h.requests = 5;
  assert_int_equal(capstan_store_ca_health_put(&f->txn, &h), 0);
  Capstan__CaHealth *got;
  assert_int_equal(capstan_store_ca_health_get(&f->txn, &got), 0);
  assert_int_equal(got->last_success_at, 99);
  assert_string_equal(got->last_error, "CA unavailable");
  assert_int_equal(got->requests, 5);
  capstan__ca_health__free_unpacked(got, NULL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_empty, setup, teardown),
      cmocka_unit_test_setup_teardown(test_round_trip, setup, teardown),
      cmocka_unit_test_setup_teardown(test_oversized_refused, setup, teardown),
      cmocka_unit_test_setup_teardown(test_health, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
