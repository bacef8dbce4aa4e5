/* Phones' certificate requests (core/ca/requests.c): pending, superseded
 * (stale), issued (certs database, device history, handover), failed,
 * polled, refused by the phone, installed, delete, count; each change with
 * its audit event in the caller's transaction. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <openssl/bn.h>
#include <openssl/bytestring.h>
#include <openssl/ec_key.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/nid.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <time.h>

#include "core/base/error.h"
#include "core/ca/requests.h"
#include "core/pki/pki.h"
#include "core/settings.h"
#include "storage/devices.h"
#include "storage/store.h"
#include "store_test_util.h"

#define DEV "SEP0011223344AA"
#define OTHER "SEP0011223344BB"

typedef struct {
  char *dir;
  capstan_store_t *store;
  capstan_txn_t txn;
} fixture_t;

static EVP_PKEY *ca_key;

static EVP_PKEY *new_key(void) {
  EVP_PKEY *k = NULL;
  assert_int_equal(capstan_pki_generate_key(CAPSTAN_KEY_EC, 256, &k), 0);
  return k;
}

static int group_setup(void **state) {
  (void)state;
  ca_key = new_key();
  return 0;
}

static int group_teardown(void **state) {
  (void)state;
  EVP_PKEY_free(ca_key);
  return 0;
}

static void add_device(fixture_t *f, const char *name) {
  Capstan__Device *d = capstan_device_new(name);
  d->has_operation = 1;
  d->operation = CAPSTAN__OPERATION__OPERATION_INSTALL;
  capstan_device_rearm(d, 100);
  assert_int_equal(capstan_store_device_put(&f->txn, d), 0);
  capstan__device__free_unpacked(d, NULL);
}

static int setup(void **state) {
  fixture_t *f = calloc(1, sizeof(*f));
  f->dir = test_tmpdir();
  assert_int_equal(test_store_open(f->dir, &f->store), 0);
  assert_int_equal(capstan_store_begin(f->store, true, &f->txn), 0);
  add_device(f, DEV);
  add_device(f, OTHER);
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

/* A phone's key, its SPKI and a PKCS#10 request for |cn|. */
typedef struct {
  EVP_PKEY *key;
  uint8_t *spki, *csr;
  size_t spki_len, csr_len;
  uint8_t id[32];
} phone_req_t;

static void make_request(const char *cn, phone_req_t *r) {
  memset(r, 0, sizeof(*r));
  r->key = new_key();
  assert_int_equal(capstan_pki_public_key_to_der(r->key, &r->spki, &r->spki_len), 0);
  X509_REQ *req = X509_REQ_new();
  X509_NAME *name = X509_REQ_get_subject_name(req);
  assert_true(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const uint8_t *)cn, -1, -1, 0));
  assert_true(X509_REQ_set_pubkey(req, r->key));
  assert_true(X509_REQ_sign(req, r->key, EVP_sha256()));
  uint8_t *der = NULL;
  int n = i2d_X509_REQ(req, &der);
  assert_true(n > 0);
  r->csr = malloc((size_t)n);
  memcpy(r->csr, der, (size_t)n);
  r->csr_len = (size_t)n;
  OPENSSL_free(der);
  X509_REQ_free(req);
  capstan_csr_key(r->spki, r->spki_len, r->id);
}

static void free_request(phone_req_t *r) {
  EVP_PKEY_free(r->key);
  free(r->spki);
  free(r->csr);
}

/* A certificate for |r|'s key named |cn|, signed by ca_key, with a serial
 * of |serial_len| bytes. */
static void make_cert(const phone_req_t *r, const char *cn, int serial_len, uint8_t **der,
                      size_t *len) {
  X509 *x = X509_new();
  assert_true(X509_set_version(x, X509_VERSION_3));
  BIGNUM *bn = BN_new();
  uint8_t sbytes[20];
  for (int i = 0; i < serial_len; i++) sbytes[i] = (uint8_t)(0x41 + i);
  BN_bin2bn(sbytes, (size_t)serial_len, bn);
  BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x));
  BN_free(bn);
  X509_NAME *name = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const uint8_t *)cn, -1, -1, 0);
  X509_NAME *iss = X509_get_issuer_name(x);
  X509_NAME_add_entry_by_txt(iss, "CN", MBSTRING_ASC, (const uint8_t *)"Test CA", -1, -1, 0);
  X509_gmtime_adj(X509_getm_notBefore(x), -3600);
  X509_gmtime_adj(X509_getm_notAfter(x), 86400 * 30);
  assert_true(X509_set_pubkey(x, r->key));
  X509_EXTENSION *ku =
      X509V3_EXT_nconf_nid(NULL, NULL, NID_key_usage, "critical,digitalSignature,keyEncipherment");
  assert_non_null(ku);
  X509_add_ext(x, ku, -1);
  X509_EXTENSION_free(ku);
  assert_true(X509_sign(x, ca_key, EVP_sha256()));
  uint8_t *out = NULL;
  int n = i2d_X509(x, &out);
  assert_true(n > 0);
  *der = malloc((size_t)n);
  memcpy(*der, out, (size_t)n);
  *len = (size_t)n;
  OPENSSL_free(out);
  X509_free(x);
}

static void pending(fixture_t *f, const char *dev, phone_req_t *r, int64_t now) {
  assert_int_equal(
      capstan_csr_record_pending(&f->txn, dev, r->csr, r->csr_len, r->spki, r->spki_len,
                                 CAPSTAN_ISSUER_OFFLINE, NULL, 0, NULL, now),
      0);
}

static capstan_csr_status_t status_of(fixture_t *f, const uint8_t id[32]) {
  capstan_cert_request_t r;
  assert_int_equal(capstan_csr_get(&f->txn, id, &r), 0);
  capstan_csr_status_t st = r.status;
  capstan_cert_request_cleanup(&r);
  return st;
}

static Capstan__Device *device(fixture_t *f, const char *name) {
  Capstan__Device *d;
  assert_int_equal(capstan_store_device_get(&f->txn, name, &d), 0);
  return d;
}

typedef struct {
  char lines[32][300];
  size_t n;
} events_t;

static int collect_event(const capstan_audit_event_t *e, void *arg) {
  events_t *ev = arg;
  assert_true(ev->n < 32);
  snprintf(ev->lines[ev->n++], 300, "%s %s", e->event, e->detail ? e->detail : "-");
  return 0;
}

static events_t events(fixture_t *f, const char *dev) {
  events_t ev = {0};
  assert_int_equal(capstan_audit_query(&f->txn, 0, dev, collect_event, &ev), 0);
  return ev;
}

/* The event names, in order, joined by spaces. */
static void event_names(const events_t *ev, char *out, size_t cap) {
  out[0] = '\0';
  for (size_t i = 0; i < ev->n; i++) {
    char name[64];
    sscanf(ev->lines[i], "%63s", name);
    size_t used = strlen(out);
    snprintf(out + used, cap - used, "%s%s", i ? " " : "", name);
  }
}

static void test_status_names(void **state) {
  (void)state;
  const char *names[] = {"pending", "issued", "stale", "installed", "failed"};
  for (int i = 0; i < 5; i++) {
    capstan_csr_status_t st;
    assert_string_equal(capstan_csr_status_name((capstan_csr_status_t)i), names[i]);
    assert_int_equal(capstan_csr_status_parse(names[i], &st), 0);
    assert_int_equal(st, i);
  }
  capstan_csr_status_t st;
  assert_int_equal(capstan_csr_status_parse("Pending", &st), CAPSTAN_EINVAL);
  assert_int_equal(capstan_csr_status_parse(NULL, &st), CAPSTAN_EINVAL);
}

static void test_pending(void **state) {
  fixture_t *f = *state;
  phone_req_t r;
  make_request(DEV, &r);
  pending(f, DEV, &r, 1000);

  capstan_cert_request_t got;
  assert_int_equal(capstan_csr_get_for_device(&f->txn, DEV, &got), 0);
  assert_memory_equal(got.key, r.id, 32);
  assert_string_equal(got.device, DEV);
  assert_int_equal(got.csr_len, r.csr_len);
  assert_memory_equal(got.csr_der, r.csr, r.csr_len);
  assert_int_equal(got.spki_len, r.spki_len);
  assert_memory_equal(got.spki, r.spki, r.spki_len);
  assert_int_equal(got.status, CAPSTAN_CSR_PENDING);
  assert_int_equal(got.created_at, 1000);
  assert_int_equal(got.issuer, CAPSTAN_ISSUER_OFFLINE);
  assert_false(got.has_cert);
  capstan_cert_request_cleanup(&got);

  Capstan__Device *d = device(f, DEV);
  assert_int_equal(d->status, CAPSTAN__OP_STATUS__OP_STATUS_PENDING);
  assert_string_equal(d->status_reason, "waiting for the offline CA: capstan csr export");
  assert_int_equal(d->cert_request.len, 32);
  assert_memory_equal(d->cert_request.data, r.id, 32);
  capstan__device__free_unpacked(d, NULL);

  events_t ev = events(f, DEV);
  assert_int_equal(ev.n, 1);
  assert_true(strncmp(ev.lines[0], "csr_pending key=", 16) == 0);
  assert_non_null(strstr(ev.lines[0], "issuer=offline"));

  /* An online CA's pending request: its id and the CA's words. */
  phone_req_t o;
  make_request(OTHER, &o);
  assert_int_equal(
      capstan_csr_record_pending(&f->txn, OTHER, o.csr, o.csr_len, o.spki, o.spki_len,
                                 CAPSTAN_ISSUER_MSCS, "42", 5000, "taken under submission", 1001),
      0);
  d = device(f, OTHER);
  assert_string_equal(d->status_reason, "waiting for the CA to approve request 42");
  capstan__device__free_unpacked(d, NULL);
  assert_int_equal(capstan_csr_get(&f->txn, o.id, &got), 0);
  assert_string_equal(got.ca_request_id, "42");
  assert_int_equal(got.next_poll_at, 5000);
  assert_string_equal(got.reason, "taken under submission");
  capstan_cert_request_cleanup(&got);

  /* Another device presenting DEV's key (its request is pending): refused,
   * DEV's request untouched. */
  assert_int_equal(capstan_csr_record_pending(&f->txn, OTHER, r.csr, r.csr_len, r.spki, r.spki_len,
                                              CAPSTAN_ISSUER_OFFLINE, NULL, 0, NULL, 1002),
                   CAPSTAN_EEXIST);
  assert_int_equal(capstan_csr_get(&f->txn, r.id, &got), 0);
  assert_string_equal(got.device, DEV);
  assert_int_equal(got.status, CAPSTAN_CSR_PENDING);
  capstan_cert_request_cleanup(&got);

  /* Unknown device, empty input. */
  assert_int_equal(capstan_csr_record_pending(&f->txn, "SEP000000000001", r.csr, r.csr_len, r.spki,
                                              r.spki_len, 3, NULL, 0, NULL, 1),
                   CAPSTAN_ENOENT);
  assert_int_equal(
      capstan_csr_record_pending(&f->txn, DEV, r.csr, 0, r.spki, r.spki_len, 3, NULL, 0, NULL, 1),
      CAPSTAN_EINVAL);
  free_request(&r);
  free_request(&o);
}

static void test_supersede(void **state) {
  fixture_t *f = *state;
  phone_req_t a, b;
  make_request(DEV, &a);
  make_request(DEV, &b);
  pending(f, DEV, &a, 1000);
  pending(f, DEV, &b, 2000);
  assert_int_equal(status_of(f, a.id), CAPSTAN_CSR_STALE);
  assert_int_equal(status_of(f, b.id), CAPSTAN_CSR_PENDING);
  capstan_cert_request_t got;
  assert_int_equal(capstan_csr_get(&f->txn, a.id, &got), 0);
  assert_string_equal(got.reason, "superseded by a newer request");
  assert_int_equal(got.status_changed_at, 2000);
  capstan_cert_request_cleanup(&got);
  assert_int_equal(capstan_csr_get_for_device(&f->txn, DEV, &got), 0);
  assert_memory_equal(got.key, b.id, 32);
  capstan_cert_request_cleanup(&got);

  /* The same request again (the phone retries) does not supersede
   * itself and keeps its age. */
  pending(f, DEV, &b, 2100);
  assert_int_equal(status_of(f, b.id), CAPSTAN_CSR_PENDING);

  uint64_t n;
  int64_t oldest;
  assert_int_equal(capstan_csr_count_pending(&f->txn, &n, &oldest), 0);
  assert_int_equal(n, 1);
  assert_int_equal(oldest, 2000);

  char names[512];
  events_t ev = events(f, DEV);
  event_names(&ev, names, sizeof(names));
  assert_string_equal(names, "csr_pending csr_stale csr_pending csr_pending");
  assert_non_null(strstr(ev.lines[1], "reason=\"superseded by a newer request\""));
  free_request(&a);
  free_request(&b);
}

static void test_issued_and_handover(void **state) {
  fixture_t *f = *state;
  phone_req_t r;
  make_request(DEV, &r);
  pending(f, DEV, &r, 1000);
  uint8_t *cert, *issuer_der = (uint8_t *)"\x30\x03\x02\x01\x01";
  size_t cert_len, issuer_len = 5;
  make_cert(&r, DEV, 16, &cert, &cert_len);
  const uint8_t *chain[] = {issuer_der};
  assert_int_equal(
      capstan_csr_record_issued(&f->txn, r.id, cert, cert_len, chain, &issuer_len, 1, 1100), 0);

  /* 16-byte serial: the certs key is the serial itself. */
  uint8_t ck[CAPSTAN_SERIAL_LEN], want[CAPSTAN_SERIAL_LEN];
  capstan_csr_cert_key(cert, cert_len, ck);
  for (int i = 0; i < 16; i++) want[i] = (uint8_t)(0x41 + i);
  assert_memory_equal(ck, want, 16);

  capstan_cert_request_t got;
  assert_int_equal(capstan_csr_get(&f->txn, r.id, &got), 0);
  assert_int_equal(got.status, CAPSTAN_CSR_ISSUED);
  assert_true(got.has_cert);
  assert_memory_equal(got.cert_key, ck, 16);
  capstan_cert_request_cleanup(&got);

  Capstan__IssuedCert *c;
  assert_int_equal(capstan_store_cert_get(&f->txn, ck, &c), 0);
  assert_string_equal(c->device, DEV);
  assert_int_equal(c->der.len, cert_len);
  assert_int_equal(c->status, CAPSTAN__CERT_STATUS__CERT_STATUS_ISSUED);
  char md5[33];
  capstan_pki_md5hash(cert, cert_len, md5);
  assert_string_equal(c->md5hash, md5);
  assert_true(c->not_after > (int64_t)time(NULL));
  capstan__issued_cert__free_unpacked(c, NULL);

  Capstan__Device *d = device(f, DEV);
  assert_int_equal(d->n_cert_history, 1);
  assert_memory_equal(d->cert_history[0].data, ck, 16);
  assert_int_equal(d->status, CAPSTAN__OP_STATUS__OP_STATUS_PENDING);
  assert_string_equal(d->status_reason,
                      "certificate issued: the phone gets it in its next session");
  capstan__device__free_unpacked(d, NULL);

  uint8_t *h = NULL;
  size_t hlen = 0;
  uint8_t hk[16];
  char hmd5[33];
  assert_int_equal(capstan_csr_handover(&f->txn, DEV, &h, &hlen, hk, hmd5), 0);
  assert_int_equal(hlen, cert_len);
  assert_memory_equal(h, cert, cert_len);
  assert_memory_equal(hk, ck, 16);
  assert_string_equal(hmd5, md5);
  free(h);
  assert_int_equal(capstan_csr_handover(&f->txn, OTHER, &h, &hlen, hk, hmd5), CAPSTAN_ENOENT);

  /* Not pending any more: a second certificate changes nothing. */
  assert_int_equal(capstan_csr_record_issued(&f->txn, r.id, cert, cert_len, NULL, NULL, 0, 1200),
                   CAPSTAN_EEXIST);
  /* A certificate for another key never lands on this request. */
  phone_req_t other;
  make_request(DEV, &other);
  uint8_t *other_cert;
  size_t other_len;
  make_cert(&other, DEV, 16, &other_cert, &other_len);
  pending(f, OTHER, &other, 1150);
  assert_int_equal(
      capstan_csr_record_issued(&f->txn, other.id, cert, cert_len, NULL, NULL, 0, 1200),
      CAPSTAN_EINVAL);
  assert_int_equal(status_of(f, other.id), CAPSTAN_CSR_PENDING);
  /* No request for the key at all. */
  phone_req_t never;
  make_request(DEV, &never);
  uint8_t *never_cert;
  size_t never_len;
  make_cert(&never, DEV, 16, &never_cert, &never_len);
  assert_int_equal(
      capstan_csr_record_issued(&f->txn, never.id, never_cert, never_len, NULL, NULL, 0, 1200),
      CAPSTAN_ENOENT);
  free(never_cert);
  free_request(&never);
  free(other_cert);
  free_request(&other);

  char names[512];
  events_t ev = events(f, DEV);
  event_names(&ev, names, sizeof(names));
  assert_string_equal(names, "csr_pending cert_issued csr_issued");

  /* The phone stored it. */
  assert_int_equal(capstan_csr_record_installed(&f->txn, DEV, 1300), 0);
  assert_int_equal(status_of(f, r.id), CAPSTAN_CSR_INSTALLED);
  assert_int_equal(capstan_csr_handover(&f->txn, DEV, &h, &hlen, hk, hmd5), CAPSTAN_ENOENT);
  assert_int_equal(capstan_csr_record_installed(&f->txn, DEV, 1400), CAPSTAN_ENOENT);
  ev = events(f, DEV);
  assert_true(strncmp(ev.lines[ev.n - 1], "csr_installed key=", 18) == 0);
  free(cert);
  free_request(&r);
}

static void test_cert_key_other_serials(void **state) {
  (void)state;
  phone_req_t r;
  make_request(DEV, &r);
  uint8_t *cert;
  size_t len;
  make_cert(&r, DEV, 9, &cert, &len);
  uint8_t ck[16], digest[32];
  capstan_csr_cert_key(cert, len, ck);
  SHA256(cert, len, digest);
  assert_memory_equal(ck, digest, 16);
  free(cert);
  free_request(&r);
}

static void test_superseded_issued_becomes_stale(void **state) {
  fixture_t *f = *state;
  phone_req_t a, b;
  make_request(DEV, &a);
  make_request(DEV, &b);
  pending(f, DEV, &a, 1000);
  uint8_t *cert;
  size_t len;
  make_cert(&a, DEV, 16, &cert, &len);
  assert_int_equal(capstan_csr_record_issued(&f->txn, a.id, cert, len, NULL, NULL, 0, 1100), 0);
  pending(f, DEV, &b, 1200);
  assert_int_equal(status_of(f, a.id), CAPSTAN_CSR_STALE);
  uint8_t ck[16];
  capstan_csr_cert_key(cert, len, ck);
  Capstan__IssuedCert *c;
  assert_int_equal(capstan_store_cert_get(&f->txn, ck, &c), 0);
  assert_int_equal(c->status, CAPSTAN__CERT_STATUS__CERT_STATUS_STALE);
  capstan__issued_cert__free_unpacked(c, NULL);
  free(cert);
  free_request(&a);
  free_request(&b);
}

static void test_failed(void **state) {
  fixture_t *f = *state;
  phone_req_t r;
  make_request(DEV, &r);
  pending(f, DEV, &r, 1000);
  assert_int_equal(capstan_csr_record_failed(&f->txn, r.id, "CA refused: 403 not allowed", 1100),
                   0);
  capstan_cert_request_t got;
  assert_int_equal(capstan_csr_get(&f->txn, r.id, &got), 0);
  assert_int_equal(got.status, CAPSTAN_CSR_FAILED);
  assert_string_equal(got.reason, "CA refused: 403 not allowed");
  capstan_cert_request_cleanup(&got);
  Capstan__Device *d = device(f, DEV);
  assert_int_equal(d->status, CAPSTAN__OP_STATUS__OP_STATUS_FAILED);
  assert_string_equal(d->status_reason, "CA refused: 403 not allowed");
  capstan__device__free_unpacked(d, NULL);
  events_t ev = events(f, DEV);
  assert_int_equal(ev.n, 2);
  assert_non_null(strstr(ev.lines[1], "csr_failed key="));
  assert_non_null(strstr(ev.lines[1], "reason=\"CA refused: 403 not allowed\""));
  /* A failed request takes no certificate. */
  uint8_t *cert;
  size_t len;
  make_cert(&r, DEV, 16, &cert, &len);
  assert_int_equal(capstan_csr_record_issued(&f->txn, r.id, cert, len, NULL, NULL, 0, 1200),
                   CAPSTAN_EEXIST);
  free(cert);
  free_request(&r);
}

static void test_polled(void **state) {
  fixture_t *f = *state;
  phone_req_t r;
  make_request(DEV, &r);
  assert_int_equal(capstan_csr_record_pending(&f->txn, DEV, r.csr, r.csr_len, r.spki, r.spki_len,
                                              CAPSTAN_ISSUER_MSCS, "7", 1060, NULL, 1000),
                   0);
  assert_int_equal(capstan_csr_record_polled(&f->txn, r.id, 1120, NULL, "still pending", 1060), 0);
  /* The CA gave its id at last (a submit answered "pending"): kept. */
  assert_int_equal(capstan_csr_record_polled(&f->txn, r.id, 1180, "77", "still pending 2", 1120),
                   0);
  capstan_cert_request_t polled = {0};
  assert_int_equal(capstan_csr_get(&f->txn, r.id, &polled), 0);
  assert_string_equal(polled.ca_request_id, "77");
  capstan_cert_request_cleanup(&polled);
  capstan_cert_request_t got;
  assert_int_equal(capstan_csr_get(&f->txn, r.id, &got), 0);
  assert_int_equal(got.status, CAPSTAN_CSR_PENDING);
  assert_int_equal(got.polls, 2);
  assert_int_equal(got.next_poll_at, 1180);
  assert_string_equal(got.reason, "still pending 2");
  capstan_cert_request_cleanup(&got);
  char names[512];
  events_t ev = events(f, DEV);
  event_names(&ev, names, sizeof(names));
  assert_string_equal(names, "csr_pending csr_polled csr_polled");
  assert_non_null(strstr(ev.lines[2], "polls=2"));
  free_request(&r);
}

static void test_refused_by_phone(void **state) {
  fixture_t *f = *state;
  phone_req_t r;
  make_request(DEV, &r);
  pending(f, DEV, &r, 1000);
  assert_int_equal(capstan_csr_record_refused_by_phone(&f->txn, DEV, 1050), CAPSTAN_ENOENT);
  uint8_t *cert;
  size_t len;
  make_cert(&r, DEV, 16, &cert, &len);
  assert_int_equal(capstan_csr_record_issued(&f->txn, r.id, cert, len, NULL, NULL, 0, 1100), 0);
  assert_int_equal(capstan_csr_record_refused_by_phone(&f->txn, DEV, 1200), 0);
  capstan_cert_request_t got;
  assert_int_equal(capstan_csr_get(&f->txn, r.id, &got), 0);
  assert_int_equal(got.status, CAPSTAN_CSR_STALE);
  assert_string_equal(got.reason, "the phone refused the certificate");
  capstan_cert_request_cleanup(&got);
  uint8_t ck[16];
  capstan_csr_cert_key(cert, len, ck);
  Capstan__IssuedCert *c;
  assert_int_equal(capstan_store_cert_get(&f->txn, ck, &c), 0);
  assert_int_equal(c->status, CAPSTAN__CERT_STATUS__CERT_STATUS_STALE);
  capstan__issued_cert__free_unpacked(c, NULL);
  char names[512];
  events_t ev = events(f, DEV);
  event_names(&ev, names, sizeof(names));
  assert_string_equal(names, "csr_pending cert_issued csr_issued cert_stale csr_stale");
  free(cert);
  free_request(&r);
}

typedef struct {
  int n;
  char devices[4][CAPSTAN_DEVICE_NAME_MAX + 1];
} visit_t;

static int visit(const capstan_cert_request_t *r, void *arg) {
  visit_t *v = arg;
  snprintf(v->devices[v->n++], sizeof(v->devices[0]), "%s", r->device);
  return v->n == 2 ? 7 : 0;
}

static void test_delete_count_each(void **state) {
  fixture_t *f = *state;
  phone_req_t a, b, c;
  make_request(DEV, &a);
  make_request(DEV, &b);
  make_request(OTHER, &c);
  pending(f, DEV, &a, 1000);
  pending(f, OTHER, &c, 900);
  pending(f, DEV, &b, 1100);
  uint64_t n;
  int64_t oldest;
  assert_int_equal(capstan_csr_count_pending(&f->txn, &n, &oldest), 0);
  assert_int_equal(n, 2);
  assert_int_equal(oldest, 900);

  /* each: every record, and the visitor's non-zero stops and is returned. */
  visit_t v = {0};
  assert_int_equal(capstan_csr_each(&f->txn, visit, &v), 7);
  assert_int_equal(v.n, 2);

  /* Deleting a stale request leaves the device's pointer alone. */
  assert_int_equal(capstan_csr_delete(&f->txn, a.id, 1200), 0);
  capstan_cert_request_t got;
  assert_int_equal(capstan_csr_get(&f->txn, a.id, &got), CAPSTAN_ENOENT);
  assert_int_equal(capstan_csr_get_for_device(&f->txn, DEV, &got), 0);
  capstan_cert_request_cleanup(&got);
  /* Deleting the latest clears it. */
  assert_int_equal(capstan_csr_delete(&f->txn, b.id, 1200), 0);
  assert_int_equal(capstan_csr_get_for_device(&f->txn, DEV, &got), CAPSTAN_ENOENT);
  Capstan__Device *d = device(f, DEV);
  assert_false(d->has_cert_request && d->cert_request.len > 0);
  capstan__device__free_unpacked(d, NULL);
  assert_int_equal(capstan_csr_delete(&f->txn, b.id, 1200), CAPSTAN_ENOENT);
  assert_int_equal(capstan_csr_count_pending(&f->txn, &n, &oldest), 0);
  assert_int_equal(n, 1);
  assert_int_equal(oldest, 900);

  char names[512];
  events_t ev = events(f, DEV);
  event_names(&ev, names, sizeof(names));
  assert_string_equal(names, "csr_pending csr_stale csr_pending csr_deleted csr_deleted");
  assert_non_null(strstr(ev.lines[3], "status=stale"));
  assert_non_null(strstr(ev.lines[4], "status=pending"));
  free_request(&a);
  free_request(&b);
  free_request(&c);
}

/* The changes are written in the caller's transaction: an abort leaves
 * nothing. */
static void test_abort_leaves_nothing(void **state) {
  fixture_t *f = *state;
  assert_int_equal(capstan_store_commit(&f->txn), 0);
  assert_int_equal(capstan_store_begin(f->store, true, &f->txn), 0);
  phone_req_t r;
  make_request(DEV, &r);
  pending(f, DEV, &r, 1000);
  capstan_store_abort(&f->txn);
  assert_int_equal(capstan_store_begin(f->store, false, &f->txn), 0);
  capstan_cert_request_t got;
  assert_int_equal(capstan_csr_get(&f->txn, r.id, &got), CAPSTAN_ENOENT);
  assert_int_equal(events(f, DEV).n, 0);
  free_request(&r);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_status_names),
      cmocka_unit_test_setup_teardown(test_pending, setup, teardown),
      cmocka_unit_test_setup_teardown(test_supersede, setup, teardown),
      cmocka_unit_test_setup_teardown(test_issued_and_handover, setup, teardown),
      cmocka_unit_test(test_cert_key_other_serials),
      cmocka_unit_test_setup_teardown(test_superseded_issued_becomes_stale, setup, teardown),
      cmocka_unit_test_setup_teardown(test_failed, setup, teardown),
      cmocka_unit_test_setup_teardown(test_polled, setup, teardown),
      cmocka_unit_test_setup_teardown(test_refused_by_phone, setup, teardown),
      cmocka_unit_test_setup_teardown(test_delete_count_each, setup, teardown),
      cmocka_unit_test_setup_teardown(test_abort_leaves_nothing, setup, teardown),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
