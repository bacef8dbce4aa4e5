/* `capstan trust add|list|remove|export`: the CAPF-trust and
 * CallManager-trust stores (product.md R13).
 *
 * Uploads are checked with capstan_pki_check_trust_upload. Which R13 rule
 * applies depends on what the certificate is:
 *  - a CA: self-signed (a root), or able to sign certificates (keyUsage
 *    keyCertSign, an intermediate). It must carry CA:TRUE and
 *    digitalSignature + keyCertSign, and its CN must not contain "CAPF-".
 *    Its pathlen may be anything: a root above a CA-signed CAPF needs one
 *    that allows the CAPF below it (capf-lifecycle.md "Trust stores"), and
 *    `cert capf import` checks the path;
 *  - otherwise an end-entity (IPsec) certificate signed by a CA: it must not
 *    carry CA:TRUE.
 * A file (a PEM bundle or one DER certificate) is added whole or not at
 * all. A certificate may be in both stores (an enterprise root above a
 * CA-signed CAPF must be): one record per fingerprint lists its stores.
 *
 * Every change bumps Settings.trust_generation in the same transaction: a
 * running server polls the settings each second and reloads its CAPF trust
 * store when the generation moves (handlers/serve/serve.c); SIGHUP reloads at once. */
#include <errno.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "handlers/cli/cli.h"
#include "handlers/cli/files.h"
#include "core/base/error.h"
#include "core/capf_lifecycle.h"
#include "core/pki/pki.h"
#include "core/settings.h"
#include "storage/records.h"

#define PURPOSE_CAPF CAPSTAN_TRUST_PURPOSE_CAPF
#define PURPOSE_CM CAPSTAN_TRUST_PURPOSE_CM
#define FP_LEN 32
#define FP_PREFIX_MIN 8        /* hex digits an operator must type to name an entry */
#define KU_BIT_KEY_CERT_SIGN 5 /* bit number in the keyUsage BIT STRING */

#define RULE_CA                                                                      \
  "trust-store rule: CAPF-trust holds issuers only, and a CA (self-signed, or able " \
  "to sign certificates) must carry basicConstraints CA:TRUE and keyUsage "          \
  "digitalSignature + keyCertSign, and its CN must not contain CAPF-"
#define RULE_IPSEC "trust-store rule: an IPsec certificate signed by a CA must not carry CA:TRUE"

#define RELOAD_HINT                                                                   \
  "a running capstan server applies trust changes within a second; to apply them at " \
  "once: capstan reload (with the same --data-dir)"

/* ---- Helpers ------------------------------------------------------------------------ */

/* Options of the trust subcommands. */
enum { OPT_PURPOSE, OPT_ALL_PURPOSE, OPT_OUT, OPT_FORCE };

/* The set function of --purpose and --all-purpose: checks only (the
 * value stays in capstan_cli_t.value). */
static int check_purpose(void *ctx, const char *p, char *why, size_t len) {
  (void)ctx;
  if (strcmp(p, PURPOSE_CAPF) == 0 || strcmp(p, PURPOSE_CM) == 0) return 0;
  snprintf(why, len, "purpose must be %s or %s, got '%s'", PURPOSE_CAPF, PURPOSE_CM, p);
  return -1;
}

/* The stores |t| is in, as "capf-trust", "callmanager-trust" or
 * "capf-trust,callmanager-trust" (records without a purpose count as
 * CAPF-trust, as the CAPF server reads them). */
static const char *purpose_of(const Capstan__TrustCert *t) {
  bool capf = capstan_store_trust_in(t, PURPOSE_CAPF), cm = capstan_store_trust_in(t, PURPOSE_CM);
  if (capf && cm) return PURPOSE_CAPF "," PURPOSE_CM;
  return cm ? PURPOSE_CM : PURPOSE_CAPF;
}

/* Subject or issuer as an RFC 4514 string; malloc'd, never NULL unless
 * allocation fails ("?" when it cannot be printed). */
static char *name_string(const X509_NAME *n) {
  char *s = NULL;
  if (capstan_pki_dn_string(n, &s) != 0 || s == NULL) return strdup("?");
  if (s[0] == '\0') {
    free(s);
    return strdup("(empty)");
  }
  return s;
}

static bool self_signed(const X509 *x) {
  return X509_NAME_cmp(X509_get_issuer_name(x), X509_get_subject_name(x)) == 0;
}

/* Which R13 rule set applies (see the top of the file). */
static int upload_kind(const X509 *x) {
  if (self_signed(x)) return CAPSTAN_PKI_UPLOAD_CA;
  ASN1_BIT_STRING *ku = X509_get_ext_d2i(x, NID_key_usage, NULL, NULL);
  bool signs = ku != NULL && ASN1_BIT_STRING_get_bit(ku, KU_BIT_KEY_CERT_SIGN);
  ASN1_BIT_STRING_free(ku);
  return signs ? CAPSTAN_PKI_UPLOAD_CA : CAPSTAN_PKI_UPLOAD_IPSEC;
}

/* Parses an operator's fingerprint: hex, colons allowed, any case; at
 * least FP_PREFIX_MIN digits (a prefix names the one entry it starts). */
static bool parse_fp(const char *s, uint8_t out[FP_LEN], size_t *ndigits) {
  size_t n = 0;
  memset(out, 0, FP_LEN);
  for (const char *p = s; *p != '\0'; p++) {
    if (*p == ':') continue;
    unsigned v;
    if (*p >= '0' && *p <= '9') {
      v = (unsigned)(*p - '0');
    } else if (*p >= 'a' && *p <= 'f') {
      v = (unsigned)(*p - 'a' + 10);
    } else if (*p >= 'A' && *p <= 'F') {
      v = (unsigned)(*p - 'A' + 10);
    } else {
      return false;
    }
    if (n == 2 * FP_LEN) return false;
    out[n / 2] |= (uint8_t)(n % 2 == 0 ? v << 4 : v);
    n++;
  }
  *ndigits = n;
  return n >= FP_PREFIX_MIN;
}

static bool fp_matches(const uint8_t fp[FP_LEN], const uint8_t want[FP_LEN], size_t ndigits) {
  size_t full = ndigits / 2;
  if (memcmp(fp, want, full) != 0) return false;
  return ndigits % 2 == 0 || (fp[full] & 0xf0) == want[full];
}

static bool check_fp_arg(const char *s, uint8_t out[FP_LEN], size_t *ndigits) {
  if (parse_fp(s, out, ndigits)) return true;
  capstan_cli_error(
      "'%s' is not a fingerprint: give the SHA-256 fingerprint from 'capstan trust list' "
      "(hex, at least %d digits)",
      s, FP_PREFIX_MIN);
  return false;
}

/* ---- add ---------------------------------------------------------------------------------- */

typedef struct {
  uint8_t *der;
  size_t len;
  X509 *x;
  uint8_t fp[FP_LEN];
  char *subject;
  bool skip; /* a duplicate inside the file */
} upload_t;

static void uploads_free(upload_t *u, size_t n) {
  for (size_t i = 0; i < n; i++) {
    free(u[i].der);
    X509_free(u[i].x);
    free(u[i].subject);
  }
  free(u);
}

static bool contains(const uint8_t *hay, size_t len, const char *needle, size_t nlen) {
  for (size_t i = 0; i + nlen <= len; i++) {
    if (memcmp(hay + i, needle, nlen) == 0) return true;
  }
  return false;
}

/* Reads |path| as PEM (every CERTIFICATE block) or as one DER certificate
 * and parses each. Prints what is wrong on failure. */
static int load_uploads(const char *path, const char *fname, upload_t **out, size_t *count) {
  *out = NULL;
  *count = 0;
  uint8_t *data;
  size_t len;
  int err = capstan_cli_read_file(path, CAPSTAN_PKI_MAX_PEM_TEXT, &data, &len);
  if (err != 0) return err;
  uint8_t **ders = NULL;
  size_t *lens = NULL, n = 0;
  static const char kBegin[] = "-----BEGIN ";
  if (len == 0) {
    capstan_cli_error("%s: the file is empty: expected PEM or DER certificates", fname);
    err = CAPSTAN_EINVAL;
  } else if (contains(data, len, kBegin, sizeof(kBegin) - 1)) {
    err = capstan_pki_pem_decode(data, len, "CERTIFICATE", &ders, &lens, &n);
    if (err == CAPSTAN_EINVAL) {
      capstan_cli_error(
          "%s: no 'BEGIN CERTIFICATE' PEM block, a malformed one, or more than %u of them", fname,
          CAPSTAN_PKI_MAX_PEM_BLOCKS);
    } else if (err != 0) {
      capstan_cli_error("%s: cannot decode the PEM: %s", fname, capstan_strerror(err));
    }
  } else {
    ders = calloc(1, sizeof(*ders));
    lens = calloc(1, sizeof(*lens));
    if (ders == NULL || lens == NULL) {
      free(ders);
      free(lens);
      ders = NULL;
      lens = NULL;
      capstan_cli_error("out of memory");
      err = CAPSTAN_ENOMEM;
    } else {
      ders[0] = data; /* handed over */
      lens[0] = len;
      data = NULL;
      n = 1;
    }
  }
  free(data);
  if (err != 0) return err;
  upload_t *u = calloc(n, sizeof(*u));
  if (u == NULL) {
    capstan_pki_der_array_free(ders, lens, n);
    capstan_cli_error("out of memory");
    return CAPSTAN_ENOMEM;
  }
  for (size_t i = 0; i < n; i++) {
    u[i].der = ders[i];
    u[i].len = lens[i];
    ders[i] = NULL;
  }
  capstan_pki_der_array_free(ders, lens, n);
  for (size_t i = 0; i < n; i++) {
    if (capstan_pki_parse_cert(u[i].der, u[i].len, &u[i].x) != 0) {
      capstan_cli_error("%s: certificate %zu is not a valid X.509 certificate (DER or PEM)", fname,
                        i + 1);
      uploads_free(u, n);
      return CAPSTAN_EINVAL;
    }
    SHA256(u[i].der, u[i].len, u[i].fp);
    u[i].subject = name_string(X509_get_subject_name(u[i].x));
    if (u[i].subject == NULL) {
      uploads_free(u, n);
      capstan_cli_error("out of memory");
      return CAPSTAN_ENOMEM;
    }
    for (size_t j = 0; j < i; j++) {
      if (memcmp(u[j].fp, u[i].fp, FP_LEN) == 0) u[i].skip = true;
    }
  }
  *out = u;
  *count = n;
  return 0;
}

static int run_add(capstan_cli_t *c) {
  const char *purpose = capstan_cli_has(c, OPT_PURPOSE) ? c->value[OPT_PURPOSE] : PURPOSE_CAPF;
  const char *path = c->args[0];
  const char *fname = strcmp(path, "-") == 0 ? "<stdin>" : path;
  upload_t *u;
  size_t n;
  if (load_uploads(path, fname, &u, &n) != 0) {
    fprintf(stderr, "capstan: nothing was added\n");
    return CAPSTAN_EXIT_ERROR;
  }
  /* Every certificate is checked (and every refusal reported) before
   * anything is written. */
  size_t refused = 0;
  int64_t now = (int64_t)time(NULL);
  for (size_t i = 0; i < n; i++) {
    if (u[i].skip) continue;
    /* CAPF-trust holds issuers ("by existing certificate" anchors): an
     * end-entity certificate there is a mistake, whatever its shape. */
    int kind = strcmp(purpose, PURPOSE_CAPF) == 0 ? CAPSTAN_PKI_UPLOAD_CA : upload_kind(u[i].x);
    const char *why = NULL;
    if (capstan_pki_check_trust_upload(u[i].x, kind, &why) != 0) {
      capstan_cli_error("%s: certificate %zu (%s) refused: %s (%s)", fname, i + 1, u[i].subject,
                        why != NULL ? why : "unknown reason",
                        kind == CAPSTAN_PKI_UPLOAD_CA ? RULE_CA : RULE_IPSEC);
      refused++;
      continue;
    }
    int64_t nb = 0, na = 0;
    if (capstan_pki_cert_validity(u[i].x, &nb, &na) == 0) {
      char when[40];
      if (na < now) {
        capstan_cli_format_time(na, when, sizeof(when));
        fprintf(stderr, "capstan: note: certificate %zu (%s) expired at %s\n", i + 1, u[i].subject,
                when);
      } else if (nb > now) {
        capstan_cli_format_time(nb, when, sizeof(when));
        fprintf(stderr, "capstan: note: certificate %zu (%s) is not valid before %s\n", i + 1,
                u[i].subject, when);
      }
    }
  }
  if (refused > 0) {
    fprintf(stderr, "capstan: nothing was added (%zu of %zu certificates refused)\n", refused, n);
    uploads_free(u, n);
    return CAPSTAN_EXIT_ERROR;
  }
  capstan_store_t *st;
  if (capstan_cli_open_store(c, CAPSTAN_CLI_STORE_EXISTING, &st) != 0) {
    uploads_free(u, n);
    return CAPSTAN_EXIT_ERROR;
  }
  int rc = CAPSTAN_EXIT_ERROR;
  bool *fresh = calloc(n, sizeof(*fresh));
  size_t added = 0, already = 0;
  capstan_txn_t txn = {0};
  int err = fresh == NULL ? CAPSTAN_ENOMEM : capstan_store_begin(st, true, &txn);
  for (size_t i = 0; err == 0 && i < n; i++) {
    if (u[i].skip) continue;
    /* Already in another store: it is now in both (one record). */
    err = capstan_trust_store_add(&txn, u[i].x, purpose, now, &fresh[i]);
    if (err != 0) break;
    if (fresh[i]) {
      added++;
    } else {
      already++;
    }
  }
  if (err == 0 && added > 0) err = capstan_settings_bump_trust_generation(&txn);
  if (err == 0 && added > 0) err = capstan_store_commit(&txn);
  if (err != 0) {
    capstan_cli_store_error("cannot add to the trust store", err);
    fprintf(stderr, "capstan: nothing was added\n");
    goto out;
  }
  for (size_t i = 0; i < n; i++) {
    char hex[2 * FP_LEN + 1];
    capstan_cli_hex(u[i].fp, FP_LEN, hex);
    if (fresh[i]) printf("added %s %s %s\n", hex, purpose, u[i].subject);
  }
  printf("%zu certificate%s added to %s", added, added == 1 ? "" : "s", purpose);
  if (already > 0) printf(" (%zu already there)", already);
  printf("\n");
  if (added > 0) printf("%s\n", RELOAD_HINT);
  rc = CAPSTAN_EXIT_OK;
out:
  capstan_store_abort(&txn);
  capstan_store_close(st);
  free(fresh);
  uploads_free(u, n);
  return rc;
}

/* ---- list ------------------------------------------------------------------------------------ */

typedef struct {
  const char *purpose; /* filter, or NULL */
  bool json;
  size_t n;
  int64_t now;
} list_ctx_t;

static int list_one(const uint8_t fp[FP_LEN], const Capstan__TrustCert *t, void *arg) {
  list_ctx_t *c = arg;
  const char *purpose = purpose_of(t);
  if (c->purpose != NULL && !capstan_store_trust_in(t, c->purpose)) return 0;
  char hex[2 * FP_LEN + 1], nb_s[40] = "?", na_s[40] = "?", added[40];
  capstan_cli_hex(fp, FP_LEN, hex);
  X509 *x = NULL;
  char *subject = NULL, *issuer = NULL;
  int64_t nb = 0, na = 0;
  bool parsed = capstan_pki_parse_cert(t->der.data, t->der.len, &x) == 0;
  if (parsed) {
    subject = name_string(X509_get_subject_name(x));
    issuer = name_string(X509_get_issuer_name(x));
    if (subject == NULL || issuer == NULL) {
      free(subject);
      free(issuer);
      X509_free(x);
      return CAPSTAN_ENOMEM;
    }
    if (capstan_pki_cert_validity(x, &nb, &na) == 0) {
      capstan_cli_format_time(nb, nb_s, sizeof(nb_s));
      capstan_cli_format_time(na, na_s, sizeof(na_s));
    }
  }
  capstan_cli_format_time(t->added_at, added, sizeof(added));
  if (c->json) {
    printf("%s{\"fingerprint\":\"%s\",\"purpose\":", c->n == 0 ? "\n" : ",\n", hex);
    capstan_cli_json_string(stdout, purpose);
    printf(",\"purposes\":[");
    const char *stores[] = {PURPOSE_CAPF, PURPOSE_CM};
    for (size_t i = 0, shown = 0; i < 2; i++) {
      if (capstan_store_trust_in(t, stores[i])) printf("%s\"%s\"", shown++ ? "," : "", stores[i]);
    }
    printf("]");
    printf(",\"subject\":");
    capstan_cli_json_string(stdout, subject);
    printf(",\"issuer\":");
    capstan_cli_json_string(stdout, issuer);
    printf(",\"not_before\":");
    capstan_cli_json_string(stdout, parsed ? nb_s : NULL);
    printf(",\"not_after\":");
    capstan_cli_json_string(stdout, parsed ? na_s : NULL);
    printf(",\"expired\":%s,\"added_at\":", parsed && na < c->now ? "true" : "false");
    capstan_cli_json_string(stdout, t->has_added_at ? added : NULL);
    printf("}");
  } else {
    printf("%s  %-17s  %-20s  %s  (issuer %s)%s\n", hex, purpose, na_s,
           parsed ? subject : "(unreadable certificate)",
           parsed ? (self_signed(x) ? "self" : issuer) : "?",
           parsed && na < c->now ? " EXPIRED" : "");
  }
  c->n++;
  free(subject);
  free(issuer);
  X509_free(x);
  return 0;
}

static int list_all(capstan_txn_t *txn, void *arg) {
  return capstan_store_trust_iterate(txn, list_one, arg);
}

static int run_list(capstan_cli_t *cli) {
  list_ctx_t c = {
      .purpose = cli->value[OPT_PURPOSE], .json = cli->json, .now = (int64_t)time(NULL)};
  return capstan_cli_list(cli, list_all, &c, &c.n, "cannot list the trust stores",
                          "%-64s  %-17s  %-20s  %s\n", "FINGERPRINT (SHA-256)", "PURPOSE",
                          "NOT AFTER", "SUBJECT");
}

/* ---- remove / export: find entries --------------------------------------------------------- */

typedef struct {
  const uint8_t *want; /* fingerprint prefix, or NULL with |purpose| */
  size_t ndigits;
  const char *purpose;
  uint8_t (*fps)[FP_LEN];
  size_t n, cap;
} find_ctx_t;

static int find_one(const uint8_t fp[FP_LEN], const Capstan__TrustCert *t, void *arg) {
  find_ctx_t *f = arg;
  bool match =
      f->want != NULL ? fp_matches(fp, f->want, f->ndigits) : capstan_store_trust_in(t, f->purpose);
  if (!match) return 0;
  if (f->n == f->cap) {
    size_t cap = f->cap == 0 ? 16 : f->cap * 2;
    void *p = realloc(f->fps, cap * FP_LEN);
    if (p == NULL) return CAPSTAN_ENOMEM;
    f->fps = p;
    f->cap = cap;
  }
  memcpy(f->fps[f->n++], fp, FP_LEN);
  return 0;
}

/* Resolves a fingerprint argument to exactly one entry, printing why not
 * otherwise (CAPSTAN_ENOENT none, CAPSTAN_EEXIST several). */
static int find_unique(capstan_txn_t *txn, const char *arg, const uint8_t *want, size_t ndigits,
                       uint8_t out[FP_LEN]) {
  find_ctx_t f = {.want = want, .ndigits = ndigits};
  int err = capstan_store_trust_iterate(txn, find_one, &f);
  if (err == 0 && f.n == 0) {
    capstan_cli_error("no trust certificate with fingerprint %s (see 'capstan trust list')", arg);
    err = CAPSTAN_ENOENT;
  } else if (err == 0 && f.n > 1) {
    capstan_cli_error("fingerprint %s matches %zu certificates: give more digits", arg, f.n);
    err = CAPSTAN_EEXIST;
  } else if (err == 0) {
    memcpy(out, f.fps[0], FP_LEN);
  } else {
    capstan_cli_store_error("cannot read the trust stores", err);
  }
  free(f.fps);
  return err;
}

/* Prints why removing |t| breaks phones or call control and returns
 * non-zero, or returns 0 when nothing depends on it. */
static int refuse_removal(capstan_txn_t *txn, const Capstan__TrustCert *t, const char *hex) {
  X509 *cert = NULL;
  if (capstan_pki_parse_cert(t->der.data, t->der.len, &cert) != 0) return 0;
  size_t holding = 0;
  bool in_chain = false;
  int err = capstan_trust_removal_impact(txn, cert, &holding, &in_chain);
  X509_free(cert);
  if (err != 0) {
    capstan_cli_store_error("cannot check what depends on the certificate", err);
    return err;
  }
  if (holding > 0) {
    capstan_cli_error(
        "%zu device%s still hold%s an LSC issued by %s: removing it makes their "
        "next operation by existing certificate fail (LSC invalid); --force "
        "removes it anyway; nothing changed",
        holding, holding == 1 ? "" : "s", holding == 1 ? "s" : "", hex);
    return CAPSTAN_EBUSY;
  }
  if (in_chain) {
    capstan_cli_error(
        "%s is above the live CAPF certificate (its chain): without it in "
        "CallManager-trust and CAPF-trust, TLS between phones and call control "
        "fails; --force removes it anyway; nothing changed",
        hex);
    return CAPSTAN_EBUSY;
  }
  return 0;
}

static int run_remove(capstan_cli_t *c) {
  uint8_t want[FP_LEN];
  size_t ndigits = 0;
  const char *all_purpose = c->value[OPT_ALL_PURPOSE];
  bool all = all_purpose != NULL;
  const char *from = all ? all_purpose : c->value[OPT_PURPOSE];
  if (all && c->nargs > 0)
    return capstan_cli_usage_error(c, "unexpected argument '%s'", c->args[0]);
  if (!all && c->nargs == 0) return capstan_cli_usage_error(c, "missing argument");
  if (!all && !check_fp_arg(c->args[0], want, &ndigits)) return CAPSTAN_EXIT_USAGE;
  capstan_store_t *st;
  if (capstan_cli_open_store(c, CAPSTAN_CLI_STORE_EXISTING, &st) != 0) return CAPSTAN_EXIT_ERROR;
  int rc = CAPSTAN_EXIT_ERROR;
  find_ctx_t f = {.purpose = all_purpose};
  capstan_txn_t txn = {0};
  int err = capstan_store_begin(st, true, &txn);
  if (err != 0) {
    capstan_cli_store_error("cannot change the trust store", err);
    goto out;
  }
  if (all) {
    err = capstan_store_trust_iterate(&txn, find_one, &f);
    if (err != 0) {
      capstan_cli_store_error("cannot read the trust stores", err);
      goto out;
    }
  } else {
    f.fps = malloc(FP_LEN);
    if (f.fps == NULL) {
      capstan_cli_error("out of memory");
      goto out;
    }
    if (find_unique(&txn, c->args[0], want, ndigits, f.fps[0]) != 0) goto out;
    f.n = 1;
  }
  for (size_t i = 0; err == 0 && i < f.n; i++) {
    Capstan__TrustCert *t = NULL;
    err = capstan_store_trust_get(&txn, f.fps[i], &t);
    char hex[2 * FP_LEN + 1], detail[2 * FP_LEN + 64];
    capstan_cli_hex(f.fps[i], FP_LEN, hex);
    if (err == 0 && from != NULL && !capstan_store_trust_in(t, from)) {
      /* Nothing to remove: say so and change nothing. */
      capstan__trust_cert__free_unpacked(t, NULL);
      capstan_cli_error("%s is not in %s; nothing changed", hex, from);
      goto out;
    }
    if (err == 0 && !capstan_cli_has(c, OPT_FORCE) && refuse_removal(&txn, t, hex) != 0) {
      capstan__trust_cert__free_unpacked(t, NULL);
      goto out;
    }
    if (err == 0) {
      /* With a store named, the certificate leaves that store only. */
      size_t left = 0;
      snprintf(detail, sizeof(detail), "sha256=%s purpose=%s", hex,
               from != NULL ? from : purpose_of(t));
      if (from != NULL) err = capstan_store_trust_remove_purpose(t, from, &left);
      if (err == 0 && left > 0) err = capstan_store_trust_put(&txn, t);
      if (err == 0 && left == 0) err = capstan_store_trust_delete(&txn, f.fps[i]);
      capstan__trust_cert__free_unpacked(t, NULL);
    }
    if (err == 0) err = capstan_store_audit_append(&txn, 0, NULL, "trust_removed", detail);
  }
  if (err == 0 && f.n > 0) err = capstan_settings_bump_trust_generation(&txn);
  if (err == 0 && f.n > 0) err = capstan_store_commit(&txn);
  if (err != 0) {
    capstan_cli_store_error("cannot change the trust store", err);
    goto out;
  }
  for (size_t i = 0; i < f.n; i++) {
    char hex[2 * FP_LEN + 1];
    capstan_cli_hex(f.fps[i], FP_LEN, hex);
    printf("removed %s\n", hex);
  }
  if (all) {
    printf("%zu certificate%s removed from %s\n", f.n, f.n == 1 ? "" : "s", all_purpose);
  }
  if (f.n > 0) printf("%s\n", RELOAD_HINT);
  rc = CAPSTAN_EXIT_OK;
out:
  capstan_store_abort(&txn);
  capstan_store_close(st);
  free(f.fps);
  return rc;
}

static int run_export(capstan_cli_t *c) {
  uint8_t want[FP_LEN], fp[FP_LEN];
  size_t ndigits = 0;
  if (!check_fp_arg(c->args[0], want, &ndigits)) return CAPSTAN_EXIT_USAGE;
  capstan_store_t *st;
  if (capstan_cli_open_store(c, CAPSTAN_CLI_STORE_EXISTING, &st) != 0) return CAPSTAN_EXIT_ERROR;
  Capstan__TrustCert *t = NULL;
  capstan_txn_t txn = {0};
  int err = capstan_store_begin(st, false, &txn);
  if (err != 0) {
    capstan_cli_store_error("cannot read the trust stores", err);
  } else if ((err = find_unique(&txn, c->args[0], want, ndigits, fp)) == 0) {
    err = capstan_store_trust_get(&txn, fp, &t);
    if (err != 0) capstan_cli_store_error("cannot read the trust certificate", err);
  }
  capstan_store_abort(&txn);
  capstan_store_close(st);
  if (err != 0) return CAPSTAN_EXIT_ERROR;
  char *pem = NULL;
  err = capstan_pki_pem_encode("CERTIFICATE", t->der.data, t->der.len, &pem);
  capstan__trust_cert__free_unpacked(t, NULL);
  if (err != 0) {
    capstan_cli_error("cannot encode the certificate: %s", capstan_strerror(err));
    return CAPSTAN_EXIT_ERROR;
  }
  int rc = capstan_cli_write_text(c->value[OPT_OUT], pem, "the certificate");
  free(pem);
  return rc;
}

/* ---- dispatch ---------------------------------------------------------------------------- */

#define TRUST_USAGE                                                                   \
  "capstan trust add FILE.pem|FILE.der|- [--purpose capf-trust|callmanager-trust]\n"  \
  "         (default capf-trust; every certificate of a PEM bundle is checked\n"      \
  "         against the trust-store rules; the file is added whole or not at all)\n"  \
  "       capstan trust list [--purpose capf-trust|callmanager-trust] [--json]\n"     \
  "       capstan trust remove FINGERPRINT [--purpose P] [--force] | --all-purpose "  \
  "capf-trust|callmanager-trust [--force]\n"                                          \
  "         (refused without --force while devices hold LSCs it issued, or when it\n" \
  "         is the root or an intermediate of the live CAPF certificate)\n"           \
  "       capstan trust export FINGERPRINT [--out FILE]   (PEM)\n"                    \
  "       (all take --data-dir DIR; FINGERPRINT is the SHA-256 from 'trust list',\n"  \
  "       or an unambiguous prefix of at least 8 hex digits)"

static const capstan_cli_opt_t trust_opts[] = {
    [OPT_PURPOSE] = {"purpose", true, check_purpose},
    [OPT_ALL_PURPOSE] = {"all-purpose", true, check_purpose},
    [OPT_OUT] = {"out", true, NULL},
    [OPT_FORCE] = {"force", false, NULL},
};

static const capstan_cli_sub_t trust_subs[] = {
    {"add", CAPSTAN_CLI_OPT(OPT_PURPOSE), false, 1, 1, NULL, run_add},
    {"list", CAPSTAN_CLI_OPT(OPT_PURPOSE), true, 0, 0, NULL, run_list},
    {"remove",
     CAPSTAN_CLI_OPT(OPT_ALL_PURPOSE) | CAPSTAN_CLI_OPT(OPT_PURPOSE) | CAPSTAN_CLI_OPT(OPT_FORCE),
     false, 0, 1, NULL, run_remove},
    {"export", CAPSTAN_CLI_OPT(OPT_OUT), false, 1, 1, NULL, run_export},
};

int capstan_cli_trust_main(int argc, char **argv) {
  static const capstan_cli_cmd_t cmd = {"trust", TRUST_USAGE, NULL, CAPSTAN_CLI_TABLE(trust_opts),
                                        CAPSTAN_CLI_TABLE(trust_subs)};
  return capstan_cli_run(&cmd, argc, argv, NULL);
}
