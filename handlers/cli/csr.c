/* `capstan csr list|export|import|delete`: phones' certificate requests
 * kept for a CA (external-ca.md "Offline CA (R10)"). The operator exports
 * the pending requests, has a CA sign them, and imports what comes back;
 * each certificate is matched to its request by public key and checked
 * (capstan_ca_check_certificate) before it is recorded, and the phone gets
 * it in its next session.
 *
 * Every file read here is hostile: read bounded (CAPSTAN_PKI_MAX_PEM_TEXT),
 * decoded by BoringSSL's bounded parsers, and a certificate that matches
 * nothing or fails a check changes nothing. */
#include <errno.h>
#include <fcntl.h>
#include <openssl/bio.h>
#include <openssl/bytestring.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/pkcs7.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/base/error.h"
#include "core/ca/ca.h"
#include "core/ca/requests.h"
#include "core/capf_lifecycle.h"
#include "core/pki/pki.h"
#include "core/settings.h"
#include "handlers/cli/cli.h"
#include "handlers/cli/files.h"
#include "storage/records.h"

enum { OPT_STATUS, OPT_DIR, OPT_BUNDLE, OPT_STALE };

/* Certificates read from all the files of one import, at most. */
#define MAX_IMPORT_CERTS 256

/* ---- Shared helpers ----------------------------------------------------- */

/* "rsa2048", "ec256", ... of a DER SubjectPublicKeyInfo. */
static void key_name_of(const uint8_t *spki, size_t len, char *buf, size_t cap) {
  CBS cbs;
  CBS_init(&cbs, spki, len);
  EVP_PKEY *key = EVP_parse_public_key(&cbs);
  if (key == NULL || CBS_len(&cbs) != 0) {
    snprintf(buf, cap, "unknown");
  } else {
    capstan_pki_key_name(key, buf, cap);
  }
  EVP_PKEY_free(key);
}

/* An age in words an operator reads at a glance: "45s", "12m", "5h", "3d". */
static void age_text(int64_t seconds, char *buf, size_t cap) {
  if (seconds < 0) seconds = 0;
  if (seconds < 60) {
    snprintf(buf, cap, "%llds", (long long)seconds);
  } else if (seconds < 3600) {
    snprintf(buf, cap, "%lldm", (long long)(seconds / 60));
  } else if (seconds < 86400) {
    snprintf(buf, cap, "%lldh", (long long)(seconds / 3600));
  } else {
    snprintf(buf, cap, "%lldd", (long long)(seconds / 86400));
  }
}

static int check_status(void *ctx, const char *v, char *why, size_t len) {
  capstan_csr_status_t *st = ctx;
  if (capstan_csr_status_parse(v, st) == 0) return 0;
  snprintf(why, len, "--status must be pending, issued, stale, installed or failed; got '%s'", v);
  return -1;
}

/* ---- list --------------------------------------------------------------- */

typedef struct {
  bool filter;
  capstan_csr_status_t want;
  bool json;
  int64_t now;
  size_t n;
} list_ctx_t;

static int list_one(const capstan_cert_request_t *r, void *arg) {
  list_ctx_t *c = arg;
  if (c->filter && r->status != c->want) return 0;
  char created[40], key[32], age[32], id[65];
  capstan_cli_format_time(r->created_at, created, sizeof(created));
  key_name_of(r->spki, r->spki_len, key, sizeof(key));
  age_text(c->now - r->created_at, age, sizeof(age));
  capstan_cli_hex(r->key, 32, id);
  if (c->json) {
    printf("%s{\"device\":", c->n == 0 ? "\n" : ",\n");
    capstan_cli_json_string(stdout, r->device);
    printf(",\"created_at\":\"%s\",\"key\":\"%s\",\"age_seconds\":%lld,\"status\":\"%s\"", created,
           key, (long long)(c->now > r->created_at ? c->now - r->created_at : 0),
           capstan_csr_status_name(r->status));
    printf(",\"reason\":");
    capstan_cli_json_string(stdout, r->reason[0] ? r->reason : NULL);
    printf(",\"issuer\":\"%s\",\"public_key_sha256\":\"%s\"}", capstan_issuer_name(r->issuer), id);
  } else {
    printf("%-24s  %-20s  %-8s  %-5s  %-9s  %s\n", r->device, created, key, age,
           capstan_csr_status_name(r->status), r->reason[0] ? r->reason : "-");
  }
  c->n++;
  return 0;
}

static int list_all(capstan_txn_t *txn, void *arg) {
  return capstan_csr_each(txn, list_one, arg);
}

static int run_list(capstan_cli_t *cli) {
  capstan_csr_status_t *want = cli->ctx;
  list_ctx_t c = {.filter = capstan_cli_has(cli, OPT_STATUS),
                  .want = *want,
                  .json = cli->json,
                  .now = (int64_t)time(NULL)};
  return capstan_cli_list(cli, list_all, &c, &c.n, "cannot list the certificate requests",
                          "%-24s  %-20s  %-8s  %-5s  %-9s  %s\n", "DEVICE", "CREATED", "KEY", "AGE",
                          "STATUS", "REASON");
}

/* ---- export ------------------------------------------------------------- */

typedef struct {
  char *device;
  char *pem;
} export_item_t;

typedef struct {
  export_item_t *items;
  size_t n, cap;
  int err;
} export_ctx_t;

static int collect_pending(const capstan_cert_request_t *r, void *arg) {
  export_ctx_t *e = arg;
  if (r->status != CAPSTAN_CSR_PENDING) return 0;
  if (e->n == e->cap) {
    size_t cap = e->cap ? e->cap * 2 : 32;
    export_item_t *p = realloc(e->items, cap * sizeof(*p));
    if (p == NULL) return CAPSTAN_ENOMEM;
    e->items = p;
    e->cap = cap;
  }
  export_item_t *it = &e->items[e->n];
  it->pem = NULL;
  it->device = strdup(r->device);
  if (it->device == NULL) return CAPSTAN_ENOMEM;
  int err = capstan_pki_pem_encode("CERTIFICATE REQUEST", r->csr_der, r->csr_len, &it->pem);
  if (err != 0) {
    free(it->device);
    return err;
  }
  e->n++;
  return 0;
}

static int collect_all_pending(capstan_txn_t *txn, void *arg) {
  return capstan_csr_each(txn, collect_pending, arg);
}

/* Writes |text| to |path| through a temporary file beside it, then renames
 * it over |path|: a reader never sees half a file, and an existing file is
 * replaced whole. *replaced says whether one was there. 0 or -errno. */
static int write_atomic(const char *path, const char *text, mode_t mode, bool *replaced) {
  char tmp[4096];
  if (snprintf(tmp, sizeof(tmp), "%s.tmp-XXXXXX", path) >= (int)sizeof(tmp)) return -ENAMETOOLONG;
  struct stat st;
  *replaced = stat(path, &st) == 0;
  int fd = mkstemp(tmp);
  if (fd < 0) return -errno;
  int err = 0;
  size_t len = strlen(text), off = 0;
  while (err == 0 && off < len) {
    ssize_t w = write(fd, text + off, len - off);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) err = -errno;
    if (w > 0) off += (size_t)w;
  }
  if (err == 0 && fchmod(fd, mode) != 0) err = -errno;
  if (err == 0 && fsync(fd) != 0) err = -errno;
  if (close(fd) != 0 && err == 0) err = -errno;
  if (err == 0 && rename(tmp, path) != 0) err = -errno;
  if (err != 0) unlink(tmp);
  return err;
}

static int run_export(capstan_cli_t *c) {
  const char *dir = c->value[OPT_DIR], *bundle = c->value[OPT_BUNDLE];
  if ((dir == NULL) == (bundle == NULL)) {
    return capstan_cli_usage_error(c, "give either --dir DIR or --bundle FILE");
  }
  export_ctx_t e = {0};
  int rc = capstan_cli_read(c, collect_all_pending, &e, "cannot read the certificate requests");
  if (rc != 0) goto out;
  if (e.n == 0) {
    printf("no pending certificate requests: nothing exported\n");
    goto out;
  }
  rc = CAPSTAN_EXIT_ERROR;
  if (dir != NULL) {
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
      capstan_cli_error("cannot create the directory '%s': %s", dir, strerror(errno));
      goto out;
    }
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
      capstan_cli_error("'%s' is not a directory", dir);
      goto out;
    }
    for (size_t i = 0; i < e.n; i++) {
      char path[4096];
      if (snprintf(path, sizeof(path), "%s/%s.csr.pem", dir, e.items[i].device) >=
          (int)sizeof(path)) {
        capstan_cli_error("'%s': path too long", dir);
        goto out;
      }
      bool replaced = false;
      int err = write_atomic(path, e.items[i].pem, 0644, &replaced);
      if (err != 0) {
        capstan_cli_error("cannot write '%s': %s", path, strerror(-err));
        goto out;
      }
      printf("%s %s\n", replaced ? "replaced" : "wrote", path);
    }
    printf("exported %zu pending request%s to %s\n", e.n, e.n == 1 ? "" : "s", dir);
  } else {
    size_t total = 1;
    for (size_t i = 0; i < e.n; i++) total += strlen(e.items[i].pem);
    char *all = malloc(total);
    if (all == NULL) {
      capstan_cli_error("out of memory");
      goto out;
    }
    size_t off = 0;
    for (size_t i = 0; i < e.n; i++) {
      size_t l = strlen(e.items[i].pem);
      memcpy(all + off, e.items[i].pem, l);
      off += l;
    }
    all[off] = '\0';
    bool replaced = false;
    int err = write_atomic(bundle, all, 0644, &replaced);
    free(all);
    if (err != 0) {
      capstan_cli_error("cannot write '%s': %s", bundle, strerror(-err));
      goto out;
    }
    printf("exported %zu pending request%s to %s%s\n", e.n, e.n == 1 ? "" : "s", bundle,
           replaced ? " (replaced the file that was there)" : "");
  }
  rc = CAPSTAN_EXIT_OK;
out:
  for (size_t i = 0; i < e.n; i++) {
    free(e.items[i].device);
    free(e.items[i].pem);
  }
  free(e.items);
  return rc;
}

/* ---- import ------------------------------------------------------------- */

typedef struct {
  const char *file;
  size_t position; /* 1-based, in its file */
  X509 *x;
  uint8_t *der;
  size_t len;
} import_cert_t;

typedef struct {
  import_cert_t *certs;
  size_t n;
} import_set_t;

static bool has_text(const uint8_t *hay, size_t len, const char *needle) {
  size_t nlen = strlen(needle);
  for (size_t i = 0; i + nlen <= len; i++) {
    if (memcmp(hay + i, needle, nlen) == 0) return true;
  }
  return false;
}

/* Parses one file into |out|: a PKCS#7 (PEM or DER), PEM certificates, or
 * one DER certificate. Prints "FILE: why" and returns non-zero when the
 * file holds nothing usable. */
static int load_file(const char *path, STACK_OF(X509) * out) {
  uint8_t *data;
  size_t len;
  int err = capstan_cli_read_file(path, CAPSTAN_PKI_MAX_PEM_TEXT, &data, &len);
  if (err != 0) return err;
  int ok = 0;
  if (len == 0) {
    capstan_cli_error("%s: the file is empty", path);
    free(data);
    return CAPSTAN_EINVAL;
  }
  if (has_text(data, len, "-----BEGIN PKCS7-----")) {
    BIO *bio = BIO_new_mem_buf(data, (int)len);
    ok = bio != NULL && PKCS7_get_PEM_certificates(out, bio);
    BIO_free(bio);
    if (!ok) capstan_cli_error("%s: not a readable PKCS#7 (PEM)", path);
  } else if (has_text(data, len, "-----BEGIN ")) {
    uint8_t **ders = NULL;
    size_t *lens = NULL, n = 0;
    err = capstan_pki_pem_decode(data, len, "CERTIFICATE", &ders, &lens, &n);
    if (err != 0) {
      capstan_cli_error(
          "%s: no 'BEGIN CERTIFICATE' PEM block, a malformed one, or more than %u of them", path,
          CAPSTAN_PKI_MAX_PEM_BLOCKS);
    }
    ok = err == 0;
    for (size_t i = 0; ok && i < n; i++) {
      X509 *x = NULL;
      if (capstan_pki_parse_cert(ders[i], lens[i], &x) != 0) {
        capstan_cli_error("%s: certificate %zu: not a readable certificate", path, i + 1);
        ok = 0;
      } else if (!sk_X509_push(out, x)) {
        X509_free(x);
        ok = 0;
      }
    }
    capstan_pki_der_array_free(ders, lens, n);
  } else {
    CBS cbs;
    CBS_init(&cbs, data, len);
    size_t before = sk_X509_num(out);
    ok = PKCS7_get_certificates(out, &cbs) && CBS_len(&cbs) == 0;
    if (!ok) {
      while (sk_X509_num(out) > before) X509_free(sk_X509_pop(out));
      X509 *x = NULL;
      ok = capstan_pki_parse_cert(data, len, &x) == 0 && sk_X509_push(out, x);
      if (!ok) {
        X509_free(x);
        capstan_cli_error("%s: not a certificate, a PEM bundle or a PKCS#7 (.p7b, DER or PEM) file",
                          path);
      }
    }
  }
  free(data);
  return ok ? 0 : CAPSTAN_EINVAL;
}

/* A CA certificate (basicConstraints CA:TRUE) is an issuer sent along,
 * not something to import. */
static bool is_ca(X509 *x) {
  return (X509_get_extension_flags(x) & EXFLAG_CA) != 0;
}

typedef struct {
  STACK_OF(X509) * trust;
  int err;
} trust_ctx_t;

static int collect_trust(const uint8_t sha256[32], const Capstan__TrustCert *t, void *arg) {
  (void)sha256;
  trust_ctx_t *c = arg;
  if (!capstan_store_trust_in(t, CAPSTAN_TRUST_PURPOSE_CAPF)) return 0;
  X509 *x = NULL;
  if (capstan_pki_parse_cert(t->der.data, t->der.len, &x) != 0) return 0;
  if (!sk_X509_push(c->trust, x)) {
    X509_free(x);
    return CAPSTAN_ENOMEM;
  }
  return 0;
}

/* Imports one certificate: the request it belongs to, the check, the
 * record. Prints "FILE: certificate N: why" on refusal. 0 imported. */
static int import_one(capstan_store_t *st, const import_cert_t *ic, STACK_OF(X509) * chain,
                      STACK_OF(X509) * trust, const uint8_t *const *chain_der,
                      const size_t *chain_lens, size_t chain_count) {
  uint8_t *spki = NULL;
  size_t spki_len = 0;
  EVP_PKEY *pub = X509_get_pubkey(ic->x);
  int err = pub != NULL ? capstan_pki_public_key_to_der(pub, &spki, &spki_len) : CAPSTAN_EINVAL;
  EVP_PKEY_free(pub);
  if (err != 0) {
    capstan_cli_error("%s: certificate %zu: its public key cannot be read", ic->file, ic->position);
    return CAPSTAN_EINVAL;
  }
  uint8_t key[32];
  capstan_csr_key(spki, spki_len, key);
  capstan_txn_t txn = {0};
  capstan_cert_request_t req = {0};
  int rc = CAPSTAN_EINVAL;
  err = capstan_store_begin(st, true, &txn);
  if (err != 0) {
    capstan_cli_store_error("cannot record the certificate", err);
    goto out;
  }
  err = capstan_csr_get(&txn, key, &req);
  if (err == CAPSTAN_ENOENT) {
    capstan_cli_error(
        "%s: certificate %zu: matches no certificate request (no request has its "
        "public key)",
        ic->file, ic->position);
    goto out;
  }
  if (err != 0) {
    capstan_cli_store_error("cannot read the certificate requests", err);
    goto out;
  }
  if (req.status != CAPSTAN_CSR_PENDING) {
    capstan_cli_error("%s: certificate %zu: the request of %s is %s, not pending", ic->file,
                      ic->position, req.device, capstan_csr_status_name(req.status));
    goto out;
  }
  const char *why = NULL;
  if (capstan_ca_check_certificate(ic->der, ic->len, chain, req.spki, req.spki_len, req.device,
                                   trust, (int64_t)time(NULL), &why) != 0) {
    capstan_cli_error("%s: certificate %zu: %s", ic->file, ic->position,
                      why != NULL ? why : "certificate refused");
    goto out;
  }
  err = capstan_csr_record_issued(&txn, key, ic->der, ic->len, chain_der, chain_lens, chain_count,
                                  (int64_t)time(NULL));
  if (err == CAPSTAN_ENOENT) {
    capstan_cli_error("%s: certificate %zu: the device %s no longer exists", ic->file, ic->position,
                      req.device);
    goto out;
  }
  if (err == 0) err = capstan_store_commit(&txn);
  if (err != 0) {
    capstan_cli_store_error("cannot record the certificate", err);
    goto out;
  }
  printf("%s: certificate %zu: issued to %s; the phone gets it in its next session\n", ic->file,
         ic->position, req.device);
  rc = 0;
out:
  capstan_store_abort(&txn);
  capstan_cert_request_cleanup(&req);
  free(spki);
  return rc;
}

static int run_import(capstan_cli_t *c) {
  STACK_OF(X509) *all = sk_X509_new_null(), *chain = sk_X509_new_null();
  trust_ctx_t tc = {.trust = sk_X509_new_null()};
  import_cert_t *certs = NULL;
  size_t ncerts = 0, wanted = 0, imported = 0;
  uint8_t **chain_der = NULL;
  size_t *chain_lens = NULL, chain_count = 0;
  bool file_failed = false;
  int rc = CAPSTAN_EXIT_ERROR;
  capstan_store_t *st = NULL;
  if (all == NULL || chain == NULL || tc.trust == NULL) {
    capstan_cli_error("out of memory");
    goto out;
  }
  certs = calloc(MAX_IMPORT_CERTS, sizeof(*certs));
  if (certs == NULL) {
    capstan_cli_error("out of memory");
    goto out;
  }
  for (int f = 0; f < c->nargs; f++) {
    size_t before = sk_X509_num(all);
    if (load_file(c->args[f], all) != 0) {
      file_failed = true;
      continue;
    }
    for (size_t i = before; i < sk_X509_num(all); i++) {
      if (ncerts == MAX_IMPORT_CERTS) {
        capstan_cli_error("more than %d certificates in one import: import them in parts",
                          MAX_IMPORT_CERTS);
        goto out;
      }
      import_cert_t *ic = &certs[ncerts++];
      ic->file = c->args[f];
      ic->position = i - before + 1;
      ic->x = sk_X509_value(all, i);
      if (capstan_pki_cert_to_der(ic->x, &ic->der, &ic->len) != 0) {
        capstan_cli_error("out of memory");
        goto out;
      }
    }
  }
  /* Every certificate read is a possible issuer of every other (a CA's
   * answer may put its chain in one file and the leaves in another). */
  for (size_t i = 0; i < ncerts; i++) {
    if (!sk_X509_push(chain, certs[i].x)) goto oom;
    X509_up_ref(certs[i].x);
    if (is_ca(certs[i].x)) chain_count++;
  }
  if (chain_count > 0) {
    chain_der = calloc(chain_count, sizeof(*chain_der));
    chain_lens = calloc(chain_count, sizeof(*chain_lens));
    if (chain_der == NULL || chain_lens == NULL) goto oom;
    for (size_t i = 0, k = 0; i < ncerts; i++) {
      if (!is_ca(certs[i].x)) continue;
      chain_der[k] = certs[i].der;
      chain_lens[k++] = certs[i].len;
    }
  }

  if (capstan_cli_open_store(c, CAPSTAN_CLI_STORE_EXISTING, &st) != 0) goto out;
  capstan_txn_t txn = {0};
  int err = capstan_store_begin(st, false, &txn);
  if (err == 0) err = capstan_store_trust_iterate(&txn, collect_trust, &tc);
  capstan_store_abort(&txn);
  if (err != 0) {
    capstan_cli_store_error("cannot read CAPF-trust", err);
    goto out;
  }
  for (size_t i = 0; i < ncerts; i++) {
    if (is_ca(certs[i].x)) continue;
    wanted++;
    if (import_one(st, &certs[i], chain, tc.trust, (const uint8_t *const *)chain_der, chain_lens,
                   chain_count) == 0) {
      imported++;
    }
  }
  if (wanted == 0 && !file_failed) {
    capstan_cli_error("no end-entity certificate in %s (only CA certificates)",
                      c->nargs == 1 ? c->args[0] : "the files");
  }
  printf("imported %zu of %zu certificate%s\n", imported, wanted, wanted == 1 ? "" : "s");
  rc = imported == wanted && wanted > 0 && !file_failed ? CAPSTAN_EXIT_OK : CAPSTAN_EXIT_ERROR;
  goto out;
oom:
  capstan_cli_error("out of memory");
out:
  capstan_store_close(st);
  for (size_t i = 0; i < ncerts; i++) free(certs[i].der);
  free(certs);
  free(chain_der);
  free(chain_lens);
  sk_X509_pop_free(all, X509_free);
  sk_X509_pop_free(chain, X509_free);
  sk_X509_pop_free(tc.trust, X509_free);
  return rc;
}

/* ---- delete ------------------------------------------------------------- */

typedef struct {
  const char *device; /* NULL: every stale request */
  uint8_t (*keys)[32];
  size_t n, cap;
} delete_ctx_t;

static int collect_delete(const capstan_cert_request_t *r, void *arg) {
  delete_ctx_t *d = arg;
  bool match =
      d->device != NULL ? strcmp(r->device, d->device) == 0 : r->status == CAPSTAN_CSR_STALE;
  if (!match) return 0;
  if (d->n == d->cap) {
    size_t cap = d->cap ? d->cap * 2 : 16;
    void *p = realloc(d->keys, cap * 32);
    if (p == NULL) return CAPSTAN_ENOMEM;
    d->keys = p;
    d->cap = cap;
  }
  memcpy(d->keys[d->n++], r->key, 32);
  return 0;
}

static int run_delete(capstan_cli_t *c) {
  bool stale = capstan_cli_has(c, OPT_STALE);
  if (stale == (c->nargs == 1)) {
    return capstan_cli_usage_error(c, "give either a DEVICE or --stale");
  }
  capstan_store_t *st;
  if (capstan_cli_open_store(c, CAPSTAN_CLI_STORE_EXISTING, &st) != 0) return CAPSTAN_EXIT_ERROR;
  delete_ctx_t d = {.device = stale ? NULL : c->args[0]};
  capstan_txn_t txn = {0};
  int rc = CAPSTAN_EXIT_ERROR;
  /* Keys first, deletes after: nothing changes under the cursor. */
  int err = capstan_store_begin(st, true, &txn);
  if (err == 0) err = capstan_csr_each(&txn, collect_delete, &d);
  for (size_t i = 0; err == 0 && i < d.n; i++) {
    err = capstan_csr_delete(&txn, d.keys[i], (int64_t)time(NULL));
  }
  if (err == 0 && d.n > 0) err = capstan_store_commit(&txn);
  if (err != 0) {
    capstan_cli_store_error("cannot delete the certificate requests", err);
    goto out;
  }
  if (!stale && d.n == 0) {
    capstan_cli_error("%s has no certificate request (see 'capstan csr list')", c->args[0]);
    goto out;
  }
  if (stale) {
    printf("deleted %zu stale request%s\n", d.n, d.n == 1 ? "" : "s");
  } else {
    printf("deleted %zu request%s of %s\n", d.n, d.n == 1 ? "" : "s", c->args[0]);
  }
  rc = CAPSTAN_EXIT_OK;
out:
  capstan_store_abort(&txn);
  capstan_store_close(st);
  free(d.keys);
  return rc;
}

/* ---- dispatch ----------------------------------------------------------- */

#define CSR_USAGE                                                                \
  "capstan csr list [--status pending|issued|stale|installed|failed] [--json]\n" \
  "       capstan csr export --dir DIR | --bundle FILE\n"                        \
  "       capstan csr import FILE...\n"                                          \
  "       capstan csr delete DEVICE | --stale\n"                                 \
  "       (all take --data-dir DIR)"

#define CSR_HELP                                                                             \
  "Phones' certificate requests kept for a CA: with 'capstan config set issuer offline'\n"   \
  "a phone's request waits here until the operator brings back its certificate.\n"           \
  "\n"                                                                                       \
  "  list    every request: device, when it was made, its key (rsa2048, ec256, ...), age,\n" \
  "          status and why (a newer request makes the older one stale).\n"                  \
  "  export  the pending requests as PEM: --dir DIR writes DIR/<device>.csr.pem for each\n"  \
  "          (DIR is created mode 0700 when missing; an existing file is replaced whole),\n" \
  "          --bundle FILE writes them all into one file.\n"                                 \
  "  import  certificates the CA signed: PEM certificates, PEM bundles, or PKCS#7 (.p7b,\n"  \
  "          DER or PEM). Each is matched to its pending request by public key and must\n"   \
  "          name the device (CN), carry keyUsage digitalSignature and keyEncipherment,\n"   \
  "          be valid now and chain to CAPF-trust (add the CA's root first with 'capstan\n"  \
  "          trust add'); CA certificates in the files are used as the chain. A\n"           \
  "          certificate that fails is reported as FILE: certificate N: why, and changes\n"  \
  "          nothing. Exit 0 when every certificate was imported, 1 otherwise.\n"            \
  "  delete  the requests of DEVICE, or every stale request (--stale)."

int capstan_cli_csr_main(int argc, char **argv) {
  static const capstan_cli_opt_t opts[] = {
      [OPT_STATUS] = {"status", true, check_status},
      [OPT_DIR] = {"dir", true, NULL},
      [OPT_BUNDLE] = {"bundle", true, NULL},
      [OPT_STALE] = {"stale", false, NULL},
  };
  static const capstan_cli_sub_t subs[] = {
      {"list", CAPSTAN_CLI_OPT(OPT_STATUS), true, 0, 0, NULL, run_list},
      {"export", CAPSTAN_CLI_OPT(OPT_DIR) | CAPSTAN_CLI_OPT(OPT_BUNDLE), false, 0, 0, NULL,
       run_export},
      {"import", 0, false, 1, CAPSTAN_CLI_ARGS_ANY, NULL, run_import},
      {"delete", CAPSTAN_CLI_OPT(OPT_STALE), false, 0, 1, NULL, run_delete},
  };
  static const capstan_cli_cmd_t cmd = {"csr", CSR_USAGE, CSR_HELP, CAPSTAN_CLI_TABLE(opts),
                                        CAPSTAN_CLI_TABLE(subs)};
  capstan_csr_status_t want = CAPSTAN_CSR_PENDING;
  return capstan_cli_run(&cmd, argc, argv, &want);
}
