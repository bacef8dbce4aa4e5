/* Settings table: every bound of every numeric setting, the on/off, digest
 * and host kinds, messages, and the value shown by get. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/error.h"
#include "core/settings.h"
#include "store_test_util.h"
#include "storage/records.h"

static capstan_settings_t *fresh(void) {
  capstan_settings_t *s = calloc(1, sizeof(*s));
  assert_non_null(s);
  capstan_settings_defaults(s);
  return s;
}

static void expect_get(const capstan_settings_t *s, const char *name, const char *want) {
  char buf[300];
  assert_int_equal(capstan_settings_get(s, name, buf, sizeof(buf)), 0);
  assert_string_equal(buf, want);
}

typedef struct {
  const char *name;
  unsigned min, max;
} bound_t;

static const bound_t bounds[] = {
    {"keepalive-minutes", 5, 60},
    {"validity-days", 1, 1825},
    {"max-concurrent-keygen", 1, 100000},
    {"max-new-keygen-per-second", 1, 100000},
    {"throttle-hold-seconds", 0, 600},
    {"retry-delay-seconds", 1, 3600},
    {"keygen-ceiling-seconds", 60, 86400},
    {"handshake-timeout-seconds", 1, 600},
    {"step-timeout-seconds", 1, 3600},
    {"max-connections", 1, 1000000},
    {"max-connections-per-address", 1, 100000},
    {"capf-previous-trust-days", 0, 3650},
    {"audit-retention-days", 1, 3650},
    {"max-handshakes", 1, 100000},
    {"http-max-connections", 1, 1000000},
    {"http-max-connections-per-address", 1, 100000},
    {"tftp-max-transfers", 1, 1000000},
    {"tftp-max-transfers-per-address", 1, 100000},
    {"admin-max-connections", 1, 100000},
    {"admin-max-connections-per-address", 1, 100000},
    {"files-retry-after-seconds", 1, 3600},
};

static void test_every_numeric_bound(void **state) {
  capstan_settings_t *s = fresh();
  char err[256], v[32], want[300];
  for (size_t i = 0; i < sizeof(bounds) / sizeof(bounds[0]); i++) {
    const bound_t *b = &bounds[i];
    const capstan_setting_info_t *info = capstan_settings_find(b->name);
    assert_non_null(info);
    assert_int_equal(info->kind, CAPSTAN_SETTING_UINT);
    assert_int_equal(info->min, b->min);
    assert_int_equal(info->max, b->max);

    snprintf(v, sizeof(v), "%u", b->min);
    assert_int_equal(capstan_settings_set(s, b->name, v, err, sizeof(err)), 0);
    expect_get(s, b->name, v);
    snprintf(v, sizeof(v), "%u", b->max);
    assert_int_equal(capstan_settings_set(s, b->name, v, err, sizeof(err)), 0);
    expect_get(s, b->name, v);

    snprintf(v, sizeof(v), "%u", b->max + 1);
    assert_int_equal(capstan_settings_set(s, b->name, v, err, sizeof(err)), CAPSTAN_ERANGE);
    snprintf(want, sizeof(want), "%s must be from %u to %u, got '%s'", b->name, b->min, b->max, v);
    assert_string_equal(err, want);
    expect_get(s, b->name, (snprintf(v, sizeof(v), "%u", b->max), v)); /* unchanged */
    if (b->min > 0) {
      snprintf(v, sizeof(v), "%u", b->min - 1);
      assert_int_equal(capstan_settings_set(s, b->name, v, err, sizeof(err)), CAPSTAN_ERANGE);
    }
    assert_int_equal(capstan_settings_set(s, b->name, "-1", err, sizeof(err)), CAPSTAN_EINVAL);
    assert_int_equal(capstan_settings_set(s, b->name, "", err, sizeof(err)), CAPSTAN_EINVAL);
    assert_int_equal(capstan_settings_set(s, b->name, "12x", err, sizeof(err)), CAPSTAN_EINVAL);
    assert_int_equal(capstan_settings_set(s, b->name, " 5", err, sizeof(err)), CAPSTAN_EINVAL);
    assert_int_equal(capstan_settings_set(s, b->name, "99999999999999999999999", err, sizeof(err)),
                     CAPSTAN_ERANGE);
  }
  free(s);
}

static void test_defaults_and_messages(void **state) {
  capstan_settings_t *s = fresh();
  expect_get(s, "keepalive-minutes", "15");
  expect_get(s, "validity-days", "1825");
  expect_get(s, "legacy-tls", "off");
  expect_get(s, "enable-ipv6", "on");
  expect_get(s, "enc-config-digest", "sha1");
  expect_get(s, "capf-host", "");
  char err[256];
  assert_int_equal(capstan_settings_set(s, "keepalive-minutes", "61", err, sizeof(err)),
                   CAPSTAN_ERANGE);
  assert_string_equal(err, "keepalive-minutes must be from 5 to 60, got '61'");
  assert_int_equal(capstan_settings_set(s, "keepalive-minutes", "ten", err, sizeof(err)),
                   CAPSTAN_EINVAL);
  assert_string_equal(err, "keepalive-minutes must be an integer from 5 to 60, got 'ten'");
  assert_int_equal(capstan_settings_set(s, "keep-alive", "10", err, sizeof(err)), CAPSTAN_ENOENT);
  assert_string_equal(err, "unknown setting 'keep-alive' (see 'capstan config list')");
  char buf[4];
  assert_int_equal(capstan_settings_get(s, "nope", buf, sizeof(buf)), CAPSTAN_ENOENT);
  assert_int_equal(capstan_settings_get(s, "validity-days", buf, 3), CAPSTAN_ERANGE);

  /* The stored message records the change, so it survives a pack. */
  assert_int_equal(capstan_settings_set(s, "keepalive-minutes", "30", err, sizeof(err)), 0);
  assert_int_equal(s->keepalive_minutes, 30);
  free(s);
}

/* The listener limits: defaults that let 1,000 phones behind one address
 * (NAT, load balancer) reset at once (README "Limits"), and help that says
 * what each one protects and what a phone beyond it hears. */
static void test_limits(void **state) {
  capstan_settings_t *s = fresh();
  expect_get(s, "max-connections", "20000");
  expect_get(s, "max-connections-per-address", "2000");
  expect_get(s, "max-handshakes", "256");
  expect_get(s, "http-max-connections", "20000");
  expect_get(s, "http-max-connections-per-address", "2000");
  expect_get(s, "tftp-max-transfers", "20000");
  expect_get(s, "tftp-max-transfers-per-address", "2000");
  expect_get(s, "admin-max-connections", "256");
  expect_get(s, "admin-max-connections-per-address", "64");
  expect_get(s, "retry-delay-seconds", "60");
  expect_get(s, "files-retry-after-seconds", "10");
  static const struct {
    const char *name, *answer;
  } limits[] = {
      {"max-connections", "RETRY_LATER"}, {"max-connections-per-address", "RETRY_LATER"},
      {"http-max-connections", "503"},    {"http-max-connections-per-address", "503"},
      {"tftp-max-transfers", "busy"},     {"tftp-max-transfers-per-address", "busy"},
      {"admin-max-connections", "503"},   {"admin-max-connections-per-address", "503"},
  };
  for (size_t i = 0; i < sizeof(limits) / sizeof(limits[0]); i++) {
    const capstan_setting_info_t *info = capstan_settings_find(limits[i].name);
    assert_non_null(info);
    assert_non_null(strstr(info->help, limits[i].answer));
    /* Every per-address share fits inside its total. */
    if (strstr(info->name, "per-address") != NULL) {
      char total[64];
      snprintf(total, sizeof(total), "%.*s", (int)(strstr(info->name, "-per-address") - info->name),
               info->name);
      const capstan_setting_info_t *t = capstan_settings_find(total);
      assert_non_null(t);
      assert_true(info->max <= t->max);
    }
  }
  free(s);
}

static void test_bool_and_digest(void **state) {
  capstan_settings_t *s = fresh();
  char err[256];
  assert_int_equal(capstan_settings_set(s, "legacy-tls", "on", err, sizeof(err)), 0);
  assert_true(s->legacy_tls);
  expect_get(s, "legacy-tls", "on");
  assert_int_equal(capstan_settings_set(s, "enable-ipv6", "off", err, sizeof(err)), 0);
  assert_false(s->enable_ipv6);
  assert_int_equal(capstan_settings_set(s, "legacy-tls", "yes", err, sizeof(err)), CAPSTAN_EINVAL);
  assert_string_equal(err, "legacy-tls must be on or off, got 'yes'");
  assert_int_equal(capstan_settings_set(s, "enc-config-digest", "sha512", err, sizeof(err)), 0);
  assert_true(s->enc_config_sha512);
  expect_get(s, "enc-config-digest", "sha512");
  assert_int_equal(capstan_settings_set(s, "enc-config-digest", "md5", err, sizeof(err)),
                   CAPSTAN_EINVAL);
  assert_string_equal(err, "enc-config-digest must be sha1 or sha512, got 'md5'");
  free(s);
}

static void test_host(void **state) {
  capstan_settings_t *s = fresh();
  char err[256];
  const char *good[] = {"capf.example.com", "10.1.2.3", "::1", "fe80::1", "a", "x-1.y2"};
  for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
    assert_int_equal(capstan_settings_set(s, "capf-host", good[i], err, sizeof(err)), 0);
    expect_get(s, "capf-host", good[i]);
  }
  const char *bad[] = {"-a.com", "a-.com",  "a..b",  "a.",     "10.0.0.300",
                       "a b",    "a_b.com", "[::1]", "host:80"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    assert_int_equal(capstan_settings_set(s, "capf-host", bad[i], err, sizeof(err)),
                     CAPSTAN_EINVAL);
    assert_non_null(strstr(err, bad[i]));
    expect_get(s, "capf-host", "x-1.y2"); /* unchanged */
  }
  char label[80];
  memset(label, 'a', 64);
  label[64] = '\0';
  assert_false(capstan_settings_host_valid(label));
  label[63] = '\0';
  assert_true(capstan_settings_host_valid(label));
  /* "" clears it: the server then uses the listener address. */
  assert_int_equal(capstan_settings_set(s, "capf-host", "", err, sizeof(err)), 0);
  assert_string_equal(s->capf_host, "");
  free(s);
}

static void test_table(void **state) {
  assert_int_equal(capstan_settings_count(), 28);
  for (size_t i = 0; i < capstan_settings_count(); i++) {
    const capstan_setting_info_t *info = capstan_settings_info(i);
    assert_non_null(info);
    assert_ptr_equal(capstan_settings_find(info->name), info);
    assert_true(strlen(info->help) > 0);
  }
  assert_null(capstan_settings_info(capstan_settings_count()));
}

/* The plain struct goes through the stored record and back unchanged, and
 * an empty store reads as the defaults. */
static int write_fn(capstan_txn_t *txn, void *arg) {
  return capstan_settings_write(txn, arg);
}

static int read_record(capstan_txn_t *txn, void *arg) {
  return capstan_store_settings_get(txn, arg);
}

static void test_store_round_trip(void **state) {
  char dir[] = "/tmp/capstan-test-settings.XXXXXX";
  assert_non_null(mkdtemp(dir));
  capstan_store_t *store = NULL;
  assert_int_equal(test_store_open(dir, &store), 0);
  capstan_settings_t defaults, got, want;
  capstan_settings_defaults(&defaults);
  assert_int_equal(defaults.keepalive_minutes, 15);
  assert_int_equal(defaults.validity_days, 1825);
  assert_true(defaults.enable_ipv6);
  assert_int_equal(defaults.audit_retention_days, 365);
  assert_int_equal(capstan_settings_load(store, &got), 0);
  assert_true(capstan_settings_equal(&got, &defaults));
  want = defaults;
  char err[256];
  assert_int_equal(capstan_settings_set(&want, "keepalive-minutes", "7", err, sizeof(err)), 0);
  assert_int_equal(capstan_settings_set(&want, "capf-host", "capf.example.net", err, sizeof(err)),
                   0);
  assert_int_equal(capstan_settings_set(&want, "enable-ipv6", "off", err, sizeof(err)), 0);
  want.trust_generation = 42;
  assert_false(capstan_settings_equal(&want, &defaults));
  assert_int_equal(capstan_store_write(store, write_fn, &want), 0);
  assert_int_equal(capstan_settings_load(store, &got), 0);
  assert_true(capstan_settings_equal(&got, &want));
  assert_string_equal(got.capf_host, "capf.example.net");
  /* Only what changed is stored: the rest keeps following the schema's
   * defaults in later releases. */
  Capstan__Settings *rec = NULL;
  assert_int_equal(capstan_store_read(store, read_record, &rec), 0);
  assert_true(rec->has_keepalive_minutes);
  assert_true(rec->has_enable_ipv6);
  assert_true(rec->has_trust_generation);
  assert_false(rec->has_validity_days);
  assert_false(rec->has_max_connections);
  capstan__settings__free_unpacked(rec, NULL);
  /* Clearing the host stores no host. */
  assert_int_equal(capstan_settings_set(&want, "capf-host", "", err, sizeof(err)), 0);
  assert_int_equal(capstan_store_write(store, write_fn, &want), 0);
  assert_int_equal(capstan_settings_load(store, &got), 0);
  assert_string_equal(got.capf_host, "");
  capstan_store_close(store);
  char cmd[128];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
  assert_int_equal(system(cmd), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_every_numeric_bound),
      cmocka_unit_test(test_defaults_and_messages),
      cmocka_unit_test(test_limits),
      cmocka_unit_test(test_bool_and_digest),
      cmocka_unit_test(test_host),
      cmocka_unit_test(test_table),
      cmocka_unit_test(test_store_round_trip),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
