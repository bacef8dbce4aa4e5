/* `capstan cert capf show|regenerate|csr|import|retire`: the CAPF
 * certificate's life (docs/spec/capf-lifecycle.md). The work and its rules
 * are core/capf_lifecycle.c's; this file parses, reads files and says what
 * happened. A running server picks every change up within a second. */
#include <errno.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/base/error.h"
#include "core/capf_lifecycle.h"
#include "core/pki/pki.h"
#include "handlers/cli/cli.h"

#define MAX_CERT_FILE (1024u * 1024u) /* one PEM bundle */
#define SERIAL_MAX 20

enum {
  OPT_KEY,
  OPT_DAYS,
  OPT_SUBJECT,
  OPT_OUT,
  OPT_NEW_KEY,
  OPT_CHAIN,
  OPT_TRUST_ROOT,
  OPT_STRICT,
  OPT_FORCE
};

/* The keys a CAPF may have (capf-lifecycle.md): RSA 2048-4096, P-256, P-384. */
static const char *const kCapfKeys[] = {"rsa2048", "rsa3072", "rsa4096", "ec256", "ec384"};

static int check_key(void *ctx, const char *v, char *why, size_t len) {
  (void)ctx;
  for (size_t i = 0; i < sizeof(kCapfKeys) / sizeof(kCapfKeys[0]); i++) {
    if (strcmp(v, kCapfKeys[i]) == 0) return 0;
  }
  snprintf(why, len, "--key must be one of rsa2048, rsa3072, rsa4096, ec256, ec384; got '%s'", v);
  return -1;
}

static int check_days(void *ctx, const char *v, char *why, size_t len) {
  (void)ctx;
  char *end;
  errno = 0;
  long days = strtol(v, &end, 10);
  if (*end == '\0' && v[0] != '\0' && errno == 0 && days >= 1 &&
      days <= (long)CAPSTAN_PKI_CAPF_MAX_DAYS) {
    return 0;
  }
  snprintf(why, len, "--days must be a number of days from 1 to %u", CAPSTAN_PKI_CAPF_MAX_DAYS);
  return -1;
}

/* ---- Printing a certificate ------------------------------------------------- */

typedef struct cert_facts {
  char *subject, *issuer;
  char serial[2 * SERIAL_MAX + 1];
  char sha256[65];
  char not_before[40], not_after[40];
  char key[16];
} cert_facts_t;

static void facts_of(X509 *x, cert_facts_t *f) {
  memset(f, 0, sizeof(*f));
  uint8_t serial[SERIAL_MAX], fp[32];
  size_t n = 0;
  capstan_pki_dn_string(X509_get_subject_name(x), &f->subject);
  capstan_pki_dn_string(X509_get_issuer_name(x), &f->issuer);
  if (capstan_pki_serial_bytes(x, serial, sizeof(serial), &n) == 0) {
    capstan_cli_hex(serial, n, f->serial);
  }
  if (capstan_pki_cert_sha256(x, fp) == 0) capstan_cli_hex(fp, sizeof(fp), f->sha256);
  int64_t nb = 0, na = 0;
  capstan_pki_cert_validity(x, &nb, &na);
  capstan_cli_format_time(nb, f->not_before, sizeof(f->not_before));
  capstan_cli_format_time(na, f->not_after, sizeof(f->not_after));
  EVP_PKEY *pub = X509_get_pubkey(x);
  capstan_pki_key_name(pub, f->key, sizeof(f->key));
  EVP_PKEY_free(pub);
}

static void facts_free(cert_facts_t *f) {
  free(f->subject);
  free(f->issuer);
}

/* "subject":..,"issuer":..,"serial":..,"not_before":..,"not_after":..,"sha256":.. */
static void json_cert_fields(const cert_facts_t *f) {
  printf("\"subject\":");
  capstan_cli_json_string(stdout, f->subject);
  printf(",\"issuer\":");
  capstan_cli_json_string(stdout, f->issuer);
  printf(",\"serial\":\"%s\",\"not_before\":\"%s\",\"not_after\":\"%s\",\"sha256\":\"%s\"",
         f->serial, f->not_before, f->not_after, f->sha256);
}

static void time_text(int64_t t, char *buf, size_t len) {
  capstan_cli_format_time(t, buf, len);
}

static void print_status_json(const capstan_capf_status_t *st, const char *result,
                              const char *const *warnings, size_t nwarnings) {
  cert_facts_t f;
  facts_of(st->capf.cert, &f);
  printf("{");
  if (result != NULL) printf("\"result\":\"%s\",", result);
  json_cert_fields(&f);
  printf(",\"key\":\"%s\",\"self_signed\":%s,\"chain\":[", f.key,
         capstan_pki_is_self_signed(st->capf.cert) ? "true" : "false");
  facts_free(&f);
  size_t depth = st->capf.chain != NULL ? sk_X509_num(st->capf.chain) : 0;
  for (size_t i = 0; i < depth; i++) {
    facts_of(sk_X509_value(st->capf.chain, i), &f);
    printf("%s{", i > 0 ? "," : "");
    json_cert_fields(&f);
    printf("}");
    facts_free(&f);
  }
  printf("],\"pending\":");
  if (st->has_pending) {
    char created[40];
    time_text(st->pending_created_at, created, sizeof(created));
    printf("{\"key\":\"%s\",\"subject\":", st->pending_key);
    capstan_cli_json_string(stdout, st->pending_subject);
    printf(",\"created_at\":\"%s\"}", created);
  } else {
    printf("null");
  }
  printf(",\"previous\":[");
  for (size_t i = 0; i < st->nprevious; i++) {
    char replaced[40], until[40];
    facts_of(st->previous[i].cert, &f);
    time_text(st->previous[i].replaced_at, replaced, sizeof(replaced));
    time_text(st->previous[i].trusted_until, until, sizeof(until));
    printf("%s{", i > 0 ? "," : "");
    json_cert_fields(&f);
    printf(",\"replaced_at\":\"%s\",\"trusted_until\":\"%s\"}", replaced, until);
    facts_free(&f);
  }
  printf("],\"previous_trust_days\":%u", st->previous_trust_days);
  if (capstan_pki_is_self_signed(st->capf.cert)) {
    printf(",\"root_in_capf_trust\":null,\"root_in_callmanager_trust\":null");
  } else {
    printf(",\"root_in_capf_trust\":%s,\"root_in_callmanager_trust\":%s",
           st->root_in_capf_trust ? "true" : "false", st->root_in_cm_trust ? "true" : "false");
  }
  if (warnings != NULL) {
    printf(",\"warnings\":[");
    for (size_t i = 0; i < nwarnings; i++) {
      printf("%s", i > 0 ? "," : "");
      capstan_cli_json_string(stdout, warnings[i]);
    }
    printf("]");
  }
  printf("}\n");
}

static void print_status_text(const capstan_capf_status_t *st) {
  cert_facts_t f;
  facts_of(st->capf.cert, &f);
  size_t depth = st->capf.chain != NULL ? sk_X509_num(st->capf.chain) : 0;
  printf("subject:      %s\n", f.subject ? f.subject : "?");
  printf("issuer:       %s\n", f.issuer ? f.issuer : "?");
  printf("serial:       %s\n", f.serial);
  printf("valid:        %s .. %s\n", f.not_before, f.not_after);
  printf("sha256:       %s\n", f.sha256);
  printf("key:          %s\n", f.key);
  if (capstan_pki_is_self_signed(st->capf.cert)) {
    printf("shape:        self-signed\n");
  } else {
    printf("shape:        CA-signed, %zu certificate%s above it\n", depth, depth == 1 ? "" : "s");
  }
  facts_free(&f);
  for (size_t i = 0; i < depth; i++) {
    facts_of(sk_X509_value(st->capf.chain, i), &f);
    printf("chain[%zu]:     %s (serial %s, until %s, sha256 %s)\n", i + 1,
           f.subject ? f.subject : "?", f.serial, f.not_after, f.sha256);
    facts_free(&f);
  }
  if (!st->root_in_capf_trust || !st->root_in_cm_trust) {
    printf(
        "root trust:   MISSING from %s: phones and call control may fail TLS; "
        "'capstan trust add ROOT.pem --purpose %s'\n",
        !st->root_in_cm_trust && !st->root_in_capf_trust ? "CAPF-trust and CallManager-trust"
        : !st->root_in_cm_trust                          ? "CallManager-trust"
                                                         : "CAPF-trust",
        !st->root_in_cm_trust ? "callmanager-trust" : "capf-trust");
  } else if (depth > 0) {
    printf("root trust:   in CAPF-trust and CallManager-trust\n");
  }
  if (st->has_pending) {
    char created[40];
    time_text(st->pending_created_at, created, sizeof(created));
    printf("pending key:  %s for %s (CSR made %s; import its certificate to use it)\n",
           st->pending_key, st->pending_subject ? st->pending_subject : "?", created);
  } else {
    printf("pending key:  none\n");
  }
  if (st->nprevious == 0) printf("previous:     none still trusted\n");
  for (size_t i = 0; i < st->nprevious; i++) {
    char until[40];
    facts_of(st->previous[i].cert, &f);
    time_text(st->previous[i].trusted_until, until, sizeof(until));
    printf("previous:     %s serial %s sha256 %s trusted until %s\n", f.subject ? f.subject : "?",
           f.serial, f.sha256, until);
    facts_free(&f);
  }
  printf("previous-trust-days: %u\n", st->previous_trust_days);
}

/* Loads and prints the status; |result| and the warnings go into --json. */
static int print_status(capstan_cli_t *c, capstan_store_t *s, const char *result,
                        const char *const *warnings, size_t nwarnings) {
  capstan_capf_status_t st;
  int err = capstan_capf_status_load(s, (int64_t)time(NULL), &st);
  if (err == CAPSTAN_ENOENT) {
    const char *dir = capstan_cli_data_dir(c);
    capstan_cli_error("no CAPF certificate in '%s': run 'capstan init --data-dir %s' first", dir,
                      dir);
    return CAPSTAN_EXIT_ERROR;
  }
  if (err != 0) return capstan_cli_store_error("cannot read the CAPF certificate", err);
  if (c->json) {
    print_status_json(&st, result, warnings, nwarnings);
  } else {
    print_status_text(&st);
  }
  capstan_capf_status_cleanup(&st);
  return CAPSTAN_EXIT_OK;
}

static int run_show(capstan_cli_t *c) {
  capstan_store_t *s;
  if (capstan_cli_open_store(c, CAPSTAN_CLI_STORE_EXISTING, &s) != 0) return CAPSTAN_EXIT_ERROR;
  int rc = print_status(c, s, NULL, NULL, 0);
  capstan_store_close(s);
  return rc;
}

/* "the previous certificate (serial X) stays trusted until T" */
static void say_previous(const capstan_capf_change_t *ch) {
  if (ch->old_cert == NULL) return;
  cert_facts_t f;
  char until[40];
  facts_of(ch->old_cert, &f);
  time_text(ch->old_trusted_until, until, sizeof(until));
  fprintf(stderr,
          "capstan: the previous CAPF certificate (serial %s) stays trusted until %s "
          "(capf-previous-trust-days); 'capstan cert capf retire %s' ends that sooner\n",
          f.serial, until, f.serial);
  facts_free(&f);
}

/* ---- regenerate ----------------------------------------------------------- */

static int run_regenerate(capstan_cli_t *c) {
  capstan_capf_spec_t spec = {.subject_extra = c->value[OPT_SUBJECT]};
  if (capstan_cli_has(c, OPT_KEY))
    capstan_key_from_name(c->value[OPT_KEY], &spec.key_alg, &spec.key_bits);
  if (capstan_cli_has(c, OPT_DAYS)) spec.days = (unsigned)strtoul(c->value[OPT_DAYS], NULL, 10);
  capstan_store_t *s;
  if (capstan_cli_open_store(c, CAPSTAN_CLI_STORE_EXISTING, &s) != 0) return CAPSTAN_EXIT_ERROR;
  capstan_capf_change_t ch;
  int err = capstan_capf_regenerate(s, &spec, &ch);
  int rc = CAPSTAN_EXIT_ERROR;
  if (err == CAPSTAN_EINVAL) {
    capstan_cli_error(
        "cannot make the CAPF certificate: check --subject (O=..,OU=..,L=..,ST=..,C=..; "
        "C is 2 letters)");
  } else if (err == CAPSTAN_EEXIST) {
    capstan_cli_error(
        "the CAPF certificate changed while this one was made: nothing changed, "
        "run the command again");
  } else if (err == CAPSTAN_ERANGE) {
    capstan_cli_error(
        "%u previous CAPF certificates are still trusted, the most an ITL file "
        "lists: retire one first ('capstan cert capf show', 'capstan cert capf "
        "retire SERIAL') or lower capf-previous-trust-days; nothing changed",
        CAPSTAN_CAPF_MAX_PREVIOUS);
  } else if (err != 0) {
    rc = capstan_cli_store_error("cannot regenerate the CAPF certificate", err);
  } else {
    if (!c->json) printf("regenerated the CAPF certificate:\n");
    rc = print_status(c, s, c->json ? "regenerated" : NULL, NULL, 0);
    say_previous(&ch);
  }
  capstan_capf_change_cleanup(&ch);
  capstan_store_close(s);
  return rc;
}

/* ---- csr --------------------------------------------------------------------- */

static int run_csr(capstan_cli_t *c) {
  bool new_key = capstan_cli_has(c, OPT_NEW_KEY);
  if (capstan_cli_has(c, OPT_KEY) && !new_key) {
    return capstan_cli_usage_error(c, "--key chooses the type of a new key: give --new-key too");
  }
  if (capstan_cli_has(c, OPT_FORCE) && !new_key) {
    return capstan_cli_usage_error(c, "--force replaces a pending key: give --new-key too");
  }
  int alg = 0;
  unsigned bits = 0;
  if (capstan_cli_has(c, OPT_KEY)) capstan_key_from_name(c->value[OPT_KEY], &alg, &bits);
  /* The output opens first: a path that cannot be written must not leave a
   * new pending key behind that nobody has a CSR for. */
  const char *path = c->value[OPT_OUT];
  bool to_file = path != NULL && strcmp(path, "-") != 0;
  FILE *f = to_file ? fopen(path, "w") : stdout;
  if (f == NULL) {
    capstan_cli_error("cannot write '%s': %s; nothing changed", path, strerror(errno));
    return CAPSTAN_EXIT_ERROR;
  }
  capstan_store_t *s;
  uint8_t *der = NULL;
  size_t len = 0;
  char *pem = NULL;
  int rc = CAPSTAN_EXIT_ERROR, err = CAPSTAN_EIO;
  if (capstan_cli_open_store(c, CAPSTAN_CLI_STORE_EXISTING, &s) == 0) {
    err = capstan_capf_csr(s, new_key, capstan_cli_has(c, OPT_FORCE), alg, bits,
                           c->value[OPT_SUBJECT], &der, &len);
    capstan_store_close(s);
    if (err == CAPSTAN_EINVAL) {
      capstan_cli_error(c->value[OPT_SUBJECT] != NULL
                            ? "cannot make the CSR: check --subject (O=..,OU=..,L=..,ST=..,C=..; "
                              "C is 2 letters)"
                            : "cannot make the CSR");
    } else if (err == CAPSTAN_EBUSY) {
      capstan_cli_error(
          "a pending CAPF key already waits for its certificate ('capstan cert capf "
          "show'); --force replaces it, after which a certificate the CA signs for "
          "it can no longer be imported; nothing changed");
    } else if (err != 0) {
      capstan_cli_store_error("cannot make the CAPF CSR", err);
    } else if ((err = capstan_pki_pem_encode("CERTIFICATE REQUEST", der, len, &pem)) != 0) {
      capstan_cli_error("cannot encode the CSR: %s", capstan_strerror(err));
    } else if (fputs(pem, f) == EOF || fflush(f) != 0 || (to_file && fsync(fileno(f)) != 0)) {
      capstan_cli_error("cannot write the CSR: %s%s", strerror(errno),
                        new_key ? "; the new pending key is stored: make its CSR again with "
                                  "'capstan cert capf csr --new-key --force'"
                                : "");
      err = CAPSTAN_EIO;
    } else {
      rc = CAPSTAN_EXIT_OK;
      fprintf(stderr,
              new_key ? "capstan: a new pending CAPF key waits for its certificate: have the CA "
                        "sign the CSR with a subordinate-CA profile, then 'capstan cert capf "
                        "import CERT.pem --chain CHAIN.pem --trust-root'\n"
                      : "capstan: CSR for the live CAPF key: have the CA sign it with a "
                        "subordinate-CA profile, then 'capstan cert capf import CERT.pem --chain "
                        "CHAIN.pem --trust-root'\n");
    }
  }
  if (to_file) {
    if (fclose(f) != 0 && rc == CAPSTAN_EXIT_OK) {
      capstan_cli_error("cannot write '%s': %s", path, strerror(errno));
      rc = CAPSTAN_EXIT_ERROR;
    }
    if (err != 0) unlink(path); /* no CSR: no file that looks like one */
  }
  free(pem);
  free(der);
  return rc;
}

/* ---- import -------------------------------------------------------------------- */

/* The certificates of a PEM bundle, or one DER certificate. Prints why not. */
static int read_certs(const char *path, STACK_OF(X509) * *out) {
  uint8_t *data = NULL, **ders = NULL;
  size_t len = 0, *lens = NULL, n = 0;
  *out = NULL;
  if (capstan_cli_read_file(path, MAX_CERT_FILE, &data, &len) != 0) return CAPSTAN_EINVAL;
  STACK_OF(X509) *sk = sk_X509_new_null();
  int err = sk != NULL ? 0 : CAPSTAN_ENOMEM;
  if (err == 0 && capstan_pki_pem_decode(data, len, "CERTIFICATE", &ders, &lens, &n) == 0) {
    for (size_t i = 0; err == 0 && i < n; i++) {
      X509 *x = NULL;
      err = capstan_pki_parse_cert(ders[i], lens[i], &x);
      if (err == 0 && !sk_X509_push(sk, x)) {
        X509_free(x);
        err = CAPSTAN_ENOMEM;
      }
      if (err == CAPSTAN_EINVAL)
        capstan_cli_error("%s: certificate %zu is not valid DER", path, i + 1);
    }
    capstan_pki_der_array_free(ders, lens, n);
  } else if (err == 0) {
    X509 *x = NULL;
    err = capstan_pki_parse_cert(data, len, &x);
    if (err == 0 && !sk_X509_push(sk, x)) {
      X509_free(x);
      err = CAPSTAN_ENOMEM;
    }
    if (err == CAPSTAN_EINVAL) {
      capstan_cli_error("%s: neither PEM certificates nor one DER certificate", path);
    }
  }
  free(data);
  if (err != 0) {
    sk_X509_pop_free(sk, X509_free);
    return err;
  }
  *out = sk;
  return 0;
}

static int run_import(capstan_cli_t *c) {
  const char *cert_path = c->args[0];
  STACK_OF(X509) *certs = NULL, *chain = NULL;
  if (read_certs(cert_path, &certs) != 0) return CAPSTAN_EXIT_ERROR;
  int rc = CAPSTAN_EXIT_ERROR;
  uint8_t *der = NULL;
  size_t len = 0;
  capstan_store_t *s = NULL;
  capstan_capf_change_t ch = {0};
  if (sk_X509_num(certs) != 1) {
    capstan_cli_error(
        "%s holds %zu certificates: give the CAPF certificate alone, its issuers "
        "with --chain",
        cert_path, sk_X509_num(certs));
    goto out;
  }
  if (capstan_cli_has(c, OPT_CHAIN) && read_certs(c->value[OPT_CHAIN], &chain) != 0) goto out;
  if (capstan_pki_cert_to_der(sk_X509_value(certs, 0), &der, &len) != 0) goto out;
  if (capstan_cli_open_store(c, CAPSTAN_CLI_STORE_EXISTING, &s) != 0) goto out;
  unsigned flags = (capstan_cli_has(c, OPT_STRICT) ? CAPSTAN_PKI_IMPORT_STRICT : 0u) |
                   (capstan_cli_has(c, OPT_TRUST_ROOT) ? CAPSTAN_CAPF_IMPORT_TRUST_ROOT : 0u);
  int err = capstan_capf_import(s, der, len, chain, flags, &ch);
  if (err == CAPSTAN_EINVAL && ch.import.why != NULL) {
    if (ch.import.rule > 0) {
      capstan_cli_error("import refused (rule %d): %s; nothing changed", ch.import.rule,
                        ch.import.why);
    } else {
      capstan_cli_error("import refused: %s; nothing changed", ch.import.why);
    }
    if (c->json) {
      printf("{\"result\":\"refused\",\"rule\":%d,\"why\":", ch.import.rule);
      capstan_cli_json_string(stdout, ch.import.why);
      printf("}\n");
    }
    goto out;
  }
  if (err == CAPSTAN_ERANGE) {
    capstan_cli_error(
        "%u previous CAPF certificates are still trusted, the most an ITL file "
        "lists: retire one first ('capstan cert capf show', 'capstan cert capf "
        "retire SERIAL') or lower capf-previous-trust-days; nothing changed",
        CAPSTAN_CAPF_MAX_PREVIOUS);
    goto out;
  }
  if (err != 0) {
    rc = capstan_cli_store_error("cannot import the CAPF certificate", err);
    goto out;
  }
  const char *warnings[4];
  size_t nw = 0;
  if (ch.import.warning != NULL) warnings[nw++] = ch.import.warning;
  if (ch.root_missing_capf_trust || ch.root_missing_cm_trust) {
    warnings[nw++] =
        "the chain's root is missing from CAPF-trust or CallManager-trust: phones and call "
        "control may fail TLS; add it with --trust-root or 'capstan trust add'";
  }
  if (ch.new_cert != NULL && X509_get0_subject_key_id(ch.new_cert) == NULL) {
    warnings[nw++] =
        "the certificate has no Subject Key Identifier: LSCs will carry no Authority Key "
        "Identifier, and 802.1X servers may not build their path (ask the CA for "
        "subjectKeyIdentifier=hash)";
  }
  for (size_t i = 0; i < nw; i++) fprintf(stderr, "capstan: warning: %s\n", warnings[i]);
  if (ch.root_added) {
    fprintf(stderr, "capstan: the chain's root is now in CAPF-trust and CallManager-trust\n");
  }
  if (!c->json) {
    printf("imported the CA-signed CAPF certificate (%s key):\n",
           ch.import.key_index == 0 ? "the pending" : "the live");
  }
  rc = print_status(c, s, c->json ? "imported" : NULL, warnings, nw);
  say_previous(&ch);
out:
  capstan_capf_change_cleanup(&ch);
  if (s != NULL) capstan_store_close(s);
  free(der);
  sk_X509_pop_free(certs, X509_free);
  sk_X509_pop_free(chain, X509_free);
  return rc;
}

/* ---- retire ---------------------------------------------------------------------- */

/* Hex digits, any case, colons allowed ("0A:1B" as openssl prints). */
static int parse_serial(const char *s, uint8_t *out, size_t cap, size_t *len) {
  char digits[2 * SERIAL_MAX + 2];
  size_t n = 0;
  for (const char *p = s; *p != '\0'; p++) {
    if (*p == ':') continue;
    if (n >= sizeof(digits) - 1) return CAPSTAN_EINVAL;
    digits[n++] = *p;
  }
  if (n == 0) return CAPSTAN_EINVAL;
  size_t start = n % 2; /* an odd count gets a leading zero */
  size_t bytes = (n + start) / 2;
  if (bytes > cap) return CAPSTAN_EINVAL;
  memset(out, 0, bytes); /* the nibbles are OR-ed in */
  for (size_t i = 0; i < n; i++) {
    char ch = digits[i];
    unsigned v = ch >= '0' && ch <= '9'   ? (unsigned)(ch - '0')
                 : ch >= 'a' && ch <= 'f' ? (unsigned)(ch - 'a' + 10)
                 : ch >= 'A' && ch <= 'F' ? (unsigned)(ch - 'A' + 10)
                                          : 16u;
    if (v == 16u) return CAPSTAN_EINVAL;
    size_t at = (i + start) / 2;
    out[at] = (uint8_t)(((i + start) % 2 == 0) ? v << 4 : (out[at] | v));
  }
  /* Serials are compared as magnitudes without leading zero bytes. */
  size_t skip = 0;
  while (skip + 1 < bytes && out[skip] == 0) skip++;
  memmove(out, out + skip, bytes - skip);
  *len = bytes - skip;
  return 0;
}

static int run_retire(capstan_cli_t *c) {
  uint8_t serial[SERIAL_MAX];
  size_t len = 0;
  if (parse_serial(c->args[0], serial, sizeof(serial), &len) != 0) {
    capstan_cli_error(
        "'%s' is not a serial: give the hex serial 'capstan cert capf show' lists "
        "under previous",
        c->args[0]);
    return CAPSTAN_EXIT_USAGE;
  }
  capstan_store_t *s;
  if (capstan_cli_open_store(c, CAPSTAN_CLI_STORE_EXISTING, &s) != 0) return CAPSTAN_EXIT_ERROR;
  size_t holding = 0;
  X509 *retired = NULL;
  int err = capstan_capf_retire(s, serial, len, capstan_cli_has(c, OPT_FORCE), &holding, &retired);
  capstan_store_close(s);
  if (err == CAPSTAN_ENOENT) {
    capstan_cli_error(
        "no previous CAPF certificate still trusted has serial %s (see 'capstan "
        "cert capf show')",
        c->args[0]);
    return CAPSTAN_EXIT_ERROR;
  }
  if (err == CAPSTAN_EBUSY) {
    capstan_cli_error(
        "%zu device%s still hold%s an LSC from CAPF serial %s: retiring it now "
        "makes their next operation by existing certificate fail with \"LSC "
        "invalid\" (--force to retire anyway; those phones then need a new enrollment by "
        "another authentication mode, e.g. --auth null or string)",
        holding, holding == 1 ? "" : "s", holding == 1 ? "s" : "", c->args[0]);
    return CAPSTAN_EXIT_ERROR;
  }
  if (err != 0) return capstan_cli_store_error("cannot retire the CAPF certificate", err);
  cert_facts_t f;
  facts_of(retired, &f);
  printf("retired the previous CAPF certificate %s (serial %s); %zu device%s held an LSC from it\n",
         f.subject ? f.subject : "?", f.serial, holding, holding == 1 ? "" : "s");
  facts_free(&f);
  X509_free(retired);
  return CAPSTAN_EXIT_OK;
}

/* ---- The command ---------------------------------------------------------------- */

#define CAPF_USAGE                                                                               \
  "capstan cert capf show [--json]\n"                                                            \
  "       capstan cert capf regenerate [--key rsa2048|rsa3072|rsa4096|ec256|ec384] [--days N]\n" \
  "                                    [--subject \"O=..,OU=..,L=..,ST=..,C=..\"] [--json]\n"    \
  "       capstan cert capf csr [--out FILE] [--new-key [--key K] [--force]] [--subject ..]\n"   \
  "       capstan cert capf import CERT.pem [--chain CHAIN.pem] [--trust-root] [--strict] "      \
  "[--json]\n"                                                                                   \
  "       capstan cert capf retire SERIAL [--force]\n"                                           \
  "       (all take --data-dir DIR)"

#define CAPF_HELP                                                                              \
  "show        the live CAPF certificate, its chain, a pending key, and every previous\n"      \
  "            certificate still trusted with the time its trust ends.\n"                      \
  "regenerate  a new key and self-signed CAPF certificate (defaults: the current key type,\n"  \
  "            ten years, the current O/OU/L/ST/C; EC keys need phone firmware that\n"         \
  "            supports ECDSA). The running server uses it within a second;\n"                 \
  "            sessions in flight finish with the old one.\n"                                  \
  "csr         a PKCS#10 request for the enterprise CA (subordinate-CA profile). --new-key\n"  \
  "            makes a pending key that goes live only when its certificate is imported;\n"    \
  "            --force replaces a pending key that still waits for its certificate.\n"         \
  "import      installs the CA-signed certificate for the pending (else the live) key after\n" \
  "            the checks of capf-lifecycle.md; a refusal names the rule and changes\n"        \
  "            nothing. --chain: the issuers (PEM); the trust stores also count.\n"            \
  "            --trust-root: add the chain's root to CAPF-trust and CallManager-trust (CUCM\n" \
  "            needs it in CallManager-trust). --strict: refuse under 30 days left.\n"         \
  "retire      stop trusting a previous CAPF certificate before capf-previous-trust-days\n"    \
  "            ends; refused while devices still hold LSCs from it unless --force.\n"          \
  "\n"                                                                                         \
  "A replaced certificate stays trusted (by-existing-certificate and ITL files) for\n"         \
  "'capstan config set capf-previous-trust-days N' days (default 30)."

static const capstan_cli_opt_t capf_opts[] = {
    [OPT_KEY] = {"key", true, check_key},           [OPT_DAYS] = {"days", true, check_days},
    [OPT_SUBJECT] = {"subject", true, NULL},        [OPT_OUT] = {"out", true, NULL},
    [OPT_NEW_KEY] = {"new-key", false, NULL},       [OPT_CHAIN] = {"chain", true, NULL},
    [OPT_TRUST_ROOT] = {"trust-root", false, NULL}, [OPT_STRICT] = {"strict", false, NULL},
    [OPT_FORCE] = {"force", false, NULL},
};

static const capstan_cli_sub_t capf_subs[] = {
    {"show", 0, true, 0, 0, NULL, run_show},
    {"regenerate",
     CAPSTAN_CLI_OPT(OPT_KEY) | CAPSTAN_CLI_OPT(OPT_DAYS) | CAPSTAN_CLI_OPT(OPT_SUBJECT), true, 0,
     0, NULL, run_regenerate},
    {"csr",
     CAPSTAN_CLI_OPT(OPT_OUT) | CAPSTAN_CLI_OPT(OPT_NEW_KEY) | CAPSTAN_CLI_OPT(OPT_KEY) |
         CAPSTAN_CLI_OPT(OPT_SUBJECT) | CAPSTAN_CLI_OPT(OPT_FORCE),
     false, 0, 0, NULL, run_csr},
    {"import",
     CAPSTAN_CLI_OPT(OPT_CHAIN) | CAPSTAN_CLI_OPT(OPT_TRUST_ROOT) | CAPSTAN_CLI_OPT(OPT_STRICT),
     true, 1, 1, NULL, run_import},
    {"retire", CAPSTAN_CLI_OPT(OPT_FORCE), false, 1, 1, NULL, run_retire},
};

int capstan_cli_capf_main(int argc, char **argv) {
  static const capstan_cli_cmd_t cmd = {"cert capf", CAPF_USAGE, CAPF_HELP,
                                        CAPSTAN_CLI_TABLE(capf_opts), CAPSTAN_CLI_TABLE(capf_subs)};
  return capstan_cli_run(&cmd, argc, argv, NULL);
}
