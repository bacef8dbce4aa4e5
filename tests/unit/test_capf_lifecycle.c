/* The CAPF certificate's life in the store (core/capf_lifecycle.c):
 * regenerate keeps the replaced certificate trusted for
 * capf-previous-trust-days, the identity snapshot follows, retire counts the
 * devices that still depend on it, a pending key waits for its certificate,
 * and every change leaves an audit event and a new trust generation. The
 * CA-signed import is tested end to end with openssl as the CA
 * (tests/integration/test_capf_ca_signed.sh, test_capf_import_refusals.sh). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <openssl/x509.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/base/error.h"
#include "core/capf_lifecycle.h"
#include "core/identities.h"
#include "core/settings.h"
#include "storage/devices.h"
#include "storage/records.h"
#include "store_test_util.h"

#define DAY 86400

typedef struct fixture {
  char *dir;
  capstan_store_t *store;
} fixture_t;

static int setup(void **state) {
  fixture_t *f = calloc(1, sizeof(*f));
  assert_non_null(f);
  f->dir = test_tmpdir();
  assert_non_null(f->dir);
  assert_int_equal(test_store_open(f->dir, &f->store), 0);
  int created = 0;
  assert_int_equal(capstan_init_identities(f->store, "O=Example,C=NZ", &created), 0);
  assert_int_equal(created, 2);
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

static uint64_t generation(capstan_store_t *store) {
  capstan_settings_t s;
  assert_int_equal(capstan_settings_load(store, &s), 0);
  return s.trust_generation;
}

static void set_trust_days(capstan_store_t *store, unsigned days) {
  capstan_txn_t txn;
  capstan_settings_t s;
  assert_int_equal(capstan_store_begin(store, true, &txn), 0);
  assert_int_equal(capstan_settings_read(&txn, &s), 0);
  s.capf_previous_trust_days = days;
  assert_int_equal(capstan_settings_write(&txn, &s), 0);
  assert_int_equal(capstan_store_commit(&txn), 0);
  capstan_store_abort(&txn);
}

typedef struct audit_count {
  const char *event;
  size_t n;
  char last_detail[512];
} audit_count_t;

static int count_event(const Capstan__AuditEvent *e, void *arg) {
  audit_count_t *a = arg;
  if (e->event != NULL && strcmp(e->event, a->event) == 0) {
    a->n++;
    snprintf(a->last_detail, sizeof(a->last_detail), "%s", e->detail ? e->detail : "");
  }
  return 0;
}

static int audit_all(capstan_txn_t *txn, void *arg) {
  return capstan_store_audit_iterate(txn, count_event, arg);
}

static audit_count_t audit(capstan_store_t *store, const char *event) {
  audit_count_t a = {.event = event};
  assert_int_equal(capstan_store_read(store, audit_all, &a), 0);
  return a;
}

static bool stack_has(STACK_OF(X509) * sk, X509 *want) {
  for (size_t i = 0; i < sk_X509_num(sk); i++) {
    if (X509_cmp(sk_X509_value(sk, i), want) == 0) return true;
  }
  return false;
}

static void test_regenerate_keeps_previous_trusted(void **state) {
  fixture_t *f = *state;
  capstan_capf_status_t before;
  assert_int_equal(capstan_capf_status_load(f->store, time(NULL), &before), 0);
  uint64_t gen = generation(f->store);

  capstan_capf_spec_t spec = {.key_alg = CAPSTAN_KEY_EC, .key_bits = 256, .days = 400};
  capstan_capf_change_t ch;
  int64_t now = time(NULL);
  assert_int_equal(capstan_capf_regenerate(f->store, &spec, &ch), 0);
  assert_int_equal(X509_cmp(ch.old_cert, before.capf.cert), 0);
  assert_true(ch.old_trusted_until >= now + 30 * DAY && ch.old_trusted_until <= now + 30 * DAY + 5);
  assert_true(generation(f->store) > gen);

  capstan_capf_status_t after;
  assert_int_equal(capstan_capf_status_load(f->store, time(NULL), &after), 0);
  assert_int_equal(X509_cmp(after.capf.cert, ch.new_cert), 0);
  char key[16];
  capstan_pki_key_name(after.capf.key, key, sizeof(key));
  assert_string_equal(key, "ec256");
  /* The operator's O and C survive; the CN is new. */
  char *dn = NULL;
  assert_int_equal(capstan_pki_dn_string(X509_get_subject_name(after.capf.cert), &dn), 0);
  assert_non_null(strstr(dn, "CN=CAPF-"));
  assert_non_null(strstr(dn, ",O=Example,C=NZ"));
  free(dn);
  int64_t not_after = 0;
  assert_int_equal(capstan_pki_cert_validity(after.capf.cert, NULL, &not_after), 0);
  assert_true(not_after >= now + 400 * DAY - 5 && not_after <= now + 400 * DAY + 5);
  assert_int_equal(after.nprevious, 1);
  assert_int_equal(X509_cmp(after.previous[0].cert, before.capf.cert), 0);
  assert_int_equal(after.previous_trust_days, 30);

  /* The snapshot the server loads: the previous CAPF is an anchor for "by
   * existing certificate" and an ITL record; its trust ends in 30 days. */
  capstan_identities_t *ids = NULL;
  assert_int_equal(capstan_identities_load(f->store, CAPSTAN_IDENTITIES_CAPF_TRUST, &ids), 0);
  assert_int_equal(sk_X509_num(ids->capf_previous), 1);
  assert_true(stack_has(ids->capf_trust, before.capf.cert));
  assert_true(stack_has(ids->capf_trust, ch.new_cert));
  assert_int_equal(ids->capf_previous_until, ch.old_trusted_until);
  capstan_identities_unref(ids);

  audit_count_t a = audit(f->store, "capf_regenerated");
  assert_int_equal(a.n, 1);
  assert_non_null(strstr(a.last_detail, "old_serial="));
  assert_non_null(strstr(a.last_detail, "new_sha256="));
  assert_non_null(strstr(a.last_detail, "key=ec256"));

  /* A second regenerate inside the window: two previous, each its own time. */
  capstan_capf_change_t ch2;
  capstan_capf_spec_t same = {0};
  assert_int_equal(capstan_capf_regenerate(f->store, &same, &ch2), 0);
  assert_non_null(ch2.new_cert);
  EVP_PKEY *ch2_key = X509_get_pubkey(ch2.new_cert);
  capstan_pki_key_name(ch2_key, key, sizeof(key));
  EVP_PKEY_free(ch2_key);
  assert_string_equal(key, "ec256"); /* the current key type by default */
  capstan_capf_status_t twice;
  assert_int_equal(capstan_capf_status_load(f->store, time(NULL), &twice), 0);
  assert_int_equal(twice.nprevious, 2);
  /* Both were replaced within the same second: either order. */
  bool first_is_oldest = X509_cmp(twice.previous[0].cert, before.capf.cert) == 0;
  assert_int_equal(X509_cmp(twice.previous[first_is_oldest ? 0 : 1].cert, before.capf.cert), 0);
  assert_int_equal(X509_cmp(twice.previous[first_is_oldest ? 1 : 0].cert, ch.new_cert), 0);

  /* The trust window is a live setting: 0 ends it now. */
  set_trust_days(f->store, 0);
  capstan_capf_status_t none;
  assert_int_equal(capstan_capf_status_load(f->store, time(NULL), &none), 0);
  assert_int_equal(none.nprevious, 0);
  assert_int_equal(capstan_capf_previous_trust_ends(f->store, time(NULL)), 0);
  assert_int_equal(capstan_identities_load(f->store, CAPSTAN_IDENTITIES_CAPF_TRUST, &ids), 0);
  assert_int_equal(sk_X509_num(ids->capf_previous), 0);
  assert_false(stack_has(ids->capf_trust, before.capf.cert));
  capstan_identities_unref(ids);

  capstan_capf_status_cleanup(&none);
  capstan_capf_status_cleanup(&twice);
  capstan_capf_change_cleanup(&ch2);
  capstan_capf_status_cleanup(&after);
  capstan_capf_change_cleanup(&ch);
  capstan_capf_status_cleanup(&before);
}

/* Stores a device whose current LSC |issuer| issued. */
static void put_device_with_lsc(capstan_store_t *store, const char *name,
                                const capstan_identity_t *issuer) {
  EVP_PKEY *phone_key = NULL;
  assert_int_equal(capstan_pki_generate_key(CAPSTAN_KEY_EC, 256, &phone_key), 0);
  uint8_t serial[16], *der = NULL;
  size_t len = 0;
  int64_t not_after = 0;
  assert_int_equal(
      capstan_pki_issue_lsc(issuer, name, phone_key, 365, serial, &der, &len, &not_after), 0);
  Capstan__Device *d = capstan_device_new(name);
  assert_non_null(d);
  assert_int_equal(capstan_record_set_bytes(&d->cert_der, &d->has_cert_der, der, len), 0);
  d->has_cert_type = 1;
  d->cert_type = CAPSTAN__CERT_TYPE__CERT_TYPE_LSC;
  capstan_txn_t txn;
  assert_int_equal(capstan_store_begin(store, true, &txn), 0);
  assert_int_equal(capstan_store_device_put(&txn, d), 0);
  assert_int_equal(capstan_store_commit(&txn), 0);
  capstan_store_abort(&txn);
  capstan__device__free_unpacked(d, NULL);
  free(der);
  EVP_PKEY_free(phone_key);
}

static void test_retire_counts_devices_and_needs_force(void **state) {
  fixture_t *f = *state;
  capstan_capf_status_t before;
  assert_int_equal(capstan_capf_status_load(f->store, time(NULL), &before), 0);
  put_device_with_lsc(f->store, "SEP00000000A001", &before.capf);
  put_device_with_lsc(f->store, "SEP00000000A002", &before.capf);

  capstan_capf_change_t ch;
  capstan_capf_spec_t spec = {0};
  assert_int_equal(capstan_capf_regenerate(f->store, &spec, &ch), 0);
  /* One phone moved to the new CAPF already: it no longer counts. */
  capstan_capf_status_t now_st;
  assert_int_equal(capstan_capf_status_load(f->store, time(NULL), &now_st), 0);
  put_device_with_lsc(f->store, "SEP00000000A002", &now_st.capf);

  uint8_t serial[20];
  size_t serial_len = 0;
  assert_int_equal(capstan_pki_serial_bytes(before.capf.cert, serial, sizeof(serial), &serial_len),
                   0);
  uint64_t gen = generation(f->store);
  size_t holding = 99;
  X509 *retired = NULL;
  assert_int_equal(capstan_capf_retire(f->store, serial, serial_len, false, &holding, &retired),
                   CAPSTAN_EBUSY);
  assert_int_equal(holding, 1);
  assert_null(retired);
  assert_int_equal(generation(f->store), gen); /* nothing changed */

  assert_int_equal(capstan_capf_retire(f->store, serial, serial_len, true, &holding, &retired), 0);
  assert_int_equal(holding, 1);
  assert_int_equal(X509_cmp(retired, before.capf.cert), 0);
  X509_free(retired);
  assert_true(generation(f->store) > gen);
  capstan_capf_status_t after;
  assert_int_equal(capstan_capf_status_load(f->store, time(NULL), &after), 0);
  assert_int_equal(after.nprevious, 0);
  audit_count_t a = audit(f->store, "capf_retired");
  assert_int_equal(a.n, 1);
  assert_non_null(strstr(a.last_detail, "devices_holding=1 forced=yes"));

  /* Retired is retired: not found a second time, nor a serial never seen. */
  assert_int_equal(capstan_capf_retire(f->store, serial, serial_len, true, &holding, NULL),
                   CAPSTAN_ENOENT);
  uint8_t bogus[1] = {0x42};
  assert_int_equal(capstan_capf_retire(f->store, bogus, 1, true, &holding, NULL), CAPSTAN_ENOENT);

  capstan_capf_status_cleanup(&after);
  capstan_capf_status_cleanup(&now_st);
  capstan_capf_change_cleanup(&ch);
  capstan_capf_status_cleanup(&before);
}

static void test_pending_key_waits_for_its_certificate(void **state) {
  fixture_t *f = *state;
  capstan_capf_status_t before;
  assert_int_equal(capstan_capf_status_load(f->store, time(NULL), &before), 0);
  assert_false(before.has_pending);

  uint8_t *der = NULL;
  size_t len = 0;
  assert_int_equal(capstan_capf_csr(f->store, true, false, CAPSTAN_KEY_EC, 384, NULL, &der, &len),
                   0);
  const uint8_t *p = der;
  X509_REQ *req = d2i_X509_REQ(NULL, &p, (long)len);
  assert_non_null(req);
  assert_ptr_equal(p, der + len);
  EVP_PKEY *req_key = X509_REQ_get_pubkey(req);
  char key[16];
  capstan_pki_key_name(req_key, key, sizeof(key));
  assert_string_equal(key, "ec384");

  capstan_capf_status_t st;
  assert_int_equal(capstan_capf_status_load(f->store, time(NULL), &st), 0);
  assert_true(st.has_pending);
  assert_string_equal(st.pending_key, "ec384");
  assert_non_null(strstr(st.pending_subject, "CN=CAPF-"));
  assert_non_null(strstr(st.pending_subject, ",O=Example,C=NZ"));
  /* The live identity is untouched until the certificate is imported. */
  assert_int_equal(X509_cmp(st.capf.cert, before.capf.cert), 0);
  assert_int_equal(audit(f->store, "capf_csr_created").n, 1);

  /* A second new key does not silently replace the one at the CA. */
  uint8_t *der3 = NULL;
  size_t len3 = 0;
  assert_int_equal(capstan_capf_csr(f->store, true, false, 0, 0, NULL, &der3, &len3),
                   CAPSTAN_EBUSY);
  assert_null(der3);
  capstan_capf_status_t still;
  assert_int_equal(capstan_capf_status_load(f->store, time(NULL), &still), 0);
  assert_string_equal(still.pending_subject, st.pending_subject);
  capstan_capf_status_cleanup(&still);
  assert_int_equal(audit(f->store, "capf_csr_created").n, 1);

  /* A CSR for the live key names the live subject and key. */
  uint8_t *der2 = NULL;
  size_t len2 = 0;
  assert_int_equal(capstan_capf_csr(f->store, false, false, 0, 0, NULL, &der2, &len2), 0);
  p = der2;
  X509_REQ *req2 = d2i_X509_REQ(NULL, &p, (long)len2);
  assert_non_null(req2);
  assert_int_equal(
      X509_NAME_cmp(X509_REQ_get_subject_name(req2), X509_get_subject_name(before.capf.cert)), 0);
  EVP_PKEY *live_key = X509_REQ_get_pubkey(req2);
  assert_int_equal(EVP_PKEY_cmp(live_key, before.capf.key), 1);

  /* Importing the live certificate again is refused by name. */
  uint8_t *live_der = NULL;
  size_t live_len = 0;
  assert_int_equal(capstan_pki_cert_to_der(before.capf.cert, &live_der, &live_len), 0);
  capstan_capf_change_t ch;
  assert_int_equal(capstan_capf_import(f->store, live_der, live_len, NULL, 0, &ch), CAPSTAN_EINVAL);
  assert_string_equal(ch.import.why, "already the CAPF certificate");
  capstan_capf_change_cleanup(&ch);

  free(live_der);
  EVP_PKEY_free(live_key);
  X509_REQ_free(req2);
  free(der2);
  capstan_capf_status_cleanup(&st);
  EVP_PKEY_free(req_key);
  X509_REQ_free(req);
  free(der);
  capstan_capf_status_cleanup(&before);
}

/* A trust record in both stores, and the schema 1 records (one purpose). */
static void test_trust_purposes(void **state) {
  fixture_t *f = *state;
  capstan_capf_status_t st;
  assert_int_equal(capstan_capf_status_load(f->store, time(NULL), &st), 0);
  X509 *cert = st.capf.cert; /* any certificate will do for the store */
  capstan_txn_t txn;
  bool added = false;
  assert_int_equal(capstan_store_begin(f->store, true, &txn), 0);
  assert_int_equal(
      capstan_trust_store_add(&txn, cert, CAPSTAN_TRUST_PURPOSE_CM, time(NULL), &added), 0);
  assert_true(added);
  assert_int_equal(
      capstan_trust_store_add(&txn, cert, CAPSTAN_TRUST_PURPOSE_CM, time(NULL), &added), 0);
  assert_false(added);
  assert_int_equal(
      capstan_trust_store_add(&txn, cert, CAPSTAN_TRUST_PURPOSE_CAPF, time(NULL), &added), 0);
  assert_true(added);
  uint8_t fp[32];
  assert_int_equal(capstan_pki_cert_sha256(cert, fp), 0);
  Capstan__TrustCert *t = NULL;
  assert_int_equal(capstan_store_trust_get(&txn, fp, &t), 0);
  assert_true(capstan_store_trust_in(t, CAPSTAN_TRUST_PURPOSE_CM));
  assert_true(capstan_store_trust_in(t, CAPSTAN_TRUST_PURPOSE_CAPF));
  size_t left = 0;
  assert_int_equal(capstan_store_trust_remove_purpose(t, CAPSTAN_TRUST_PURPOSE_CM, &left), 0);
  assert_int_equal(left, 1);
  assert_false(capstan_store_trust_in(t, CAPSTAN_TRUST_PURPOSE_CM));
  capstan__trust_cert__free_unpacked(t, NULL);
  capstan_store_abort(&txn);

  /* Schema 1: |purpose| alone, or nothing (CAPF-trust). */
  Capstan__TrustCert old = CAPSTAN__TRUST_CERT__INIT;
  assert_true(capstan_store_trust_in(&old, CAPSTAN_TRUST_PURPOSE_CAPF));
  assert_false(capstan_store_trust_in(&old, CAPSTAN_TRUST_PURPOSE_CM));
  old.purpose = strdup(CAPSTAN_TRUST_PURPOSE_CM);
  assert_false(capstan_store_trust_in(&old, CAPSTAN_TRUST_PURPOSE_CAPF));
  assert_int_equal(capstan_store_trust_add_purpose(&old, CAPSTAN_TRUST_PURPOSE_CAPF), 0);
  assert_true(capstan_store_trust_in(&old, CAPSTAN_TRUST_PURPOSE_CM));
  assert_true(capstan_store_trust_in(&old, CAPSTAN_TRUST_PURPOSE_CAPF));
  assert_int_equal(old.n_purposes, 2);
  for (size_t i = 0; i < old.n_purposes; i++) free(old.purposes[i]);
  free(old.purposes);
  free(old.purpose);
  capstan_capf_status_cleanup(&st);
}

/* Every trusted previous CAPF fits the ITL: a ninth is refused until one
 * is retired or the window shrinks. */
static void test_previous_bounded_by_itl(void **state) {
  fixture_t *f = *state;
  capstan_capf_spec_t ec = {.key_alg = CAPSTAN_KEY_EC, .key_bits = 256};
  for (unsigned i = 0; i < CAPSTAN_CAPF_MAX_PREVIOUS; i++) {
    capstan_capf_change_t ch;
    assert_int_equal(capstan_capf_regenerate(f->store, &ec, &ch), 0);
    capstan_capf_change_cleanup(&ch);
  }
  capstan_capf_change_t refused;
  assert_int_equal(capstan_capf_regenerate(f->store, &ec, &refused), CAPSTAN_ERANGE);
  assert_null(refused.new_cert);
  capstan_capf_status_t st;
  assert_int_equal(capstan_capf_status_load(f->store, time(NULL), &st), 0);
  assert_int_equal(st.nprevious, CAPSTAN_CAPF_MAX_PREVIOUS);
  capstan_capf_status_cleanup(&st);
  /* A window of 0 ends them all; then there is room again. */
  set_trust_days(f->store, 0);
  capstan_capf_change_t again;
  assert_int_equal(capstan_capf_regenerate(f->store, &ec, &again), 0);
  capstan_capf_change_cleanup(&again);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_regenerate_keeps_previous_trusted, setup, teardown),
      cmocka_unit_test_setup_teardown(test_retire_counts_devices_and_needs_force, setup, teardown),
      cmocka_unit_test_setup_teardown(test_pending_key_waits_for_its_certificate, setup, teardown),
      cmocka_unit_test_setup_teardown(test_trust_purposes, setup, teardown),
      cmocka_unit_test_setup_teardown(test_previous_bounded_by_itl, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
