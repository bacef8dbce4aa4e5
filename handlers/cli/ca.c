/* `capstan ca set|show|test`: how capstan reaches the online CA
 * (external-ca.md "Connection to the CA"): URL, EST label or Microsoft CA
 * template, credentials, the anchors of the CA's TLS certificate, and the
 * timeouts. The password is read from a file (never from the command line,
 * where `ps` shows it) and is never printed, logged or put in an audit
 * event. */
#include <ctype.h>
#include <errno.h>
#include <openssl/mem.h>
#include <openssl/x509.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/base/error.h"
#include "core/ca/ca.h"
#include "core/capf_lifecycle.h"
#include "core/pki/pki.h"
#include "core/settings.h"
#include "handlers/cli/cli.h"
#include "handlers/cli/files.h"
#include "storage/records.h"

enum {
  OPT_URL,
  OPT_LABEL,
  OPT_TEMPLATE,
  OPT_USERNAME,
  OPT_PASSWORD_FILE,
  OPT_CA_FILE,
  OPT_TIMEOUT,
  OPT_PHONE_WAIT,
  OPT_MAX_REQUESTS,
  OPT_MODE,
  OPT_ROOT_PEM,
};

#define TIMEOUT_MIN 1
#define TIMEOUT_MAX 600
#define PHONE_WAIT_MIN 1
#define PHONE_WAIT_MAX 3600
#define MAX_REQUESTS_MIN 1
#define MAX_REQUESTS_MAX 4096
#define PASSWORD_FILE_MAX 4096
#define CA_FILE_MAX CAPSTAN_PKI_MAX_PEM_TEXT

/* ---- Validation --------------------------------------------------------- */

/* https://host[:port][/path]: no credentials in it, no query or fragment,
 * printable ASCII only; a trailing "/" is dropped (|out|). */
static int check_url(const char *url, char *out, size_t cap, char *why, size_t whylen) {
  static const char scheme[] = "https://";
  size_t n = strlen(url);
  if (n > CAPSTAN_CA_URL_MAX) {
    snprintf(why, whylen, "--url is longer than %d characters", CAPSTAN_CA_URL_MAX);
    return -1;
  }
  if (strncmp(url, scheme, sizeof(scheme) - 1) != 0) {
    snprintf(why, whylen, "--url must start with https:// (got '%.200s')", url);
    return -1;
  }
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)url[i];
    if (ch <= 0x20 || ch >= 0x7f || ch == '?' || ch == '#' || ch == '@' || ch == '\\') {
      snprintf(why, whylen,
               "--url holds '%c' at %zu: give https://host[:port][/path] without spaces, "
               "credentials (--username, --password-file), query or fragment",
               ch > 0x20 && ch < 0x7f ? ch : '?', i + 1);
      return -1;
    }
  }
  const char *host = url + sizeof(scheme) - 1;
  const char *end = host + strcspn(host, "/");
  /* host, then an optional port */
  const char *colon = NULL;
  char hostname[256];
  if (*host == '[') {
    const char *close = memchr(host, ']', (size_t)(end - host));
    if (close == NULL) {
      snprintf(why, whylen, "--url: unterminated IPv6 literal");
      return -1;
    }
    size_t hl = (size_t)(close - host - 1);
    if (hl == 0 || hl >= sizeof(hostname)) goto bad_host;
    memcpy(hostname, host + 1, hl);
    hostname[hl] = '\0';
    if (close + 1 < end && close[1] != ':') goto bad_host;
    colon = close + 1 < end ? close + 1 : NULL;
  } else {
    colon = memchr(host, ':', (size_t)(end - host));
    size_t hl = (size_t)((colon != NULL ? colon : end) - host);
    if (hl == 0 || hl >= sizeof(hostname)) goto bad_host;
    memcpy(hostname, host, hl);
    hostname[hl] = '\0';
  }
  if (!capstan_settings_host_valid(hostname)) goto bad_host;
  if (colon != NULL) {
    const char *p = colon + 1;
    unsigned long port = 0;
    if (p == end) goto bad_port;
    for (; p < end; p++) {
      if (!isdigit((unsigned char)*p)) goto bad_port;
      port = port * 10 + (unsigned long)(*p - '0');
      if (port > 65535) goto bad_port;
    }
    if (port == 0) goto bad_port;
  }
  if (n >= cap) return -1;
  memcpy(out, url, n + 1);
  while (n > (size_t)(end - url) && out[n - 1] == '/') out[--n] = '\0';
  return 0;
bad_host:
  snprintf(why, whylen, "--url has no valid host name (https://host[:port][/path])");
  return -1;
bad_port:
  snprintf(why, whylen, "--url has a bad port: give 1 to 65535");
  return -1;
}

/* Letters, digits and "._-" only: EST labels and template names go in URL
 * paths and query strings as they are. */
static bool word_valid(const char *s, size_t max) {
  size_t n = strlen(s);
  if (n == 0 || n > max) return false;
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (!isalnum(ch) && ch != '.' && ch != '_' && ch != '-') return false;
  }
  return true;
}

/* Printable, no control characters (DOMAIN\user, user@example.com). */
static bool username_valid(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > CAPSTAN_CA_USER_MAX) return false;
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (ch < 0x20 || ch == 0x7f || ch == ':') return false;
  }
  return true;
}

static int parse_range(const char *opt, const char *v, unsigned min, unsigned max, unsigned *out) {
  char *end;
  errno = 0;
  if (v[0] < '0' || v[0] > '9') goto bad;
  unsigned long n = strtoul(v, &end, 10);
  if (errno != 0 || *end != '\0' || n < min || n > max) goto bad;
  *out = (unsigned)n;
  return 0;
bad:
  capstan_cli_error("--%s must be a whole number from %u to %u, got '%s'", opt, min, max, v);
  return CAPSTAN_EINVAL;
}

/* The password file: one line; a trailing newline (LF or CRLF) is not
 * part of the password. */
static int read_password(const char *path, char out[CAPSTAN_CA_PASSWORD_MAX + 1]) {
  uint8_t *data;
  size_t len;
  if (capstan_cli_read_file(path, PASSWORD_FILE_MAX, &data, &len) != 0) return CAPSTAN_EINVAL;
  if (len > 0 && data[len - 1] == '\n') len--;
  if (len > 0 && data[len - 1] == '\r') len--;
  int err = 0;
  if (len == 0) {
    capstan_cli_error("%s: the password file is empty", path);
    err = CAPSTAN_EINVAL;
  } else if (len > CAPSTAN_CA_PASSWORD_MAX) {
    capstan_cli_error("%s: the password is longer than %d bytes", path, CAPSTAN_CA_PASSWORD_MAX);
    err = CAPSTAN_EINVAL;
  } else {
    for (size_t i = 0; i < len; i++) {
      if (data[i] == '\0' || data[i] == '\n' || data[i] == '\r') {
        capstan_cli_error("%s: the password file must hold one line (the password)", path);
        err = CAPSTAN_EINVAL;
        break;
      }
    }
  }
  if (err == 0) {
    memcpy(out, data, len);
    out[len] = '\0';
  }
  OPENSSL_cleanse(data, len);
  free(data);
  return err;
}

/* The anchors for the CA's TLS certificate: a PEM bundle of at least one
 * readable certificate, stored re-encoded (nothing else of the file). */
static int read_ca_file(const char *path, uint8_t **pem_out, size_t *pem_len, size_t *count) {
  uint8_t *data;
  size_t len;
  if (capstan_cli_read_file(path, CA_FILE_MAX, &data, &len) != 0) return CAPSTAN_EINVAL;
  uint8_t **ders = NULL;
  size_t *lens = NULL, n = 0;
  int err = capstan_pki_pem_decode(data, len, "CERTIFICATE", &ders, &lens, &n);
  free(data);
  if (err != 0 || n == 0) {
    capstan_cli_error("%s: no 'BEGIN CERTIFICATE' PEM block, a malformed one, or more than %u",
                      path, CAPSTAN_PKI_MAX_PEM_BLOCKS);
    return CAPSTAN_EINVAL;
  }
  char *all = NULL;
  size_t used = 0;
  for (size_t i = 0; err == 0 && i < n; i++) {
    X509 *x = NULL;
    if (capstan_pki_parse_cert(ders[i], lens[i], &x) != 0) {
      capstan_cli_error("%s: certificate %zu: not a readable certificate", path, i + 1);
      err = CAPSTAN_EINVAL;
      break;
    }
    X509_free(x);
    char *pem = NULL;
    err = capstan_pki_pem_encode("CERTIFICATE", ders[i], lens[i], &pem);
    if (err != 0) break;
    size_t l = strlen(pem);
    char *grown = realloc(all, used + l + 1);
    if (grown == NULL) {
      free(pem);
      err = CAPSTAN_ENOMEM;
      break;
    }
    all = grown;
    memcpy(all + used, pem, l + 1);
    used += l;
    free(pem);
  }
  capstan_pki_der_array_free(ders, lens, n);
  if (err != 0) {
    free(all);
    return err;
  }
  *pem_out = (uint8_t *)all;
  *pem_len = used;
  *count = n;
  return 0;
}

/* ---- set ---------------------------------------------------------------- */

static int run_set(capstan_cli_t *c) {
  static const int settable[] = {OPT_URL,      OPT_LABEL,         OPT_TEMPLATE,
                                 OPT_USERNAME, OPT_PASSWORD_FILE, OPT_CA_FILE,
                                 OPT_TIMEOUT,  OPT_PHONE_WAIT,    OPT_MAX_REQUESTS};
  bool any = false;
  for (size_t i = 0; i < CAPSTAN_CLI_COUNT(settable); i++) any |= capstan_cli_has(c, settable[i]);
  if (!any) return capstan_cli_usage_error(c, "nothing to set");

  /* Everything given is checked before the store is touched. */
  char url[CAPSTAN_CA_URL_MAX + 1] = "", why[512];
  const char *v;
  if ((v = c->value[OPT_URL]) != NULL && check_url(v, url, sizeof(url), why, sizeof(why)) != 0) {
    capstan_cli_error("%s; nothing changed", why);
    return CAPSTAN_EXIT_USAGE;
  }
  if ((v = c->value[OPT_LABEL]) != NULL && v[0] != '\0' && !word_valid(v, CAPSTAN_CA_LABEL_MAX)) {
    capstan_cli_error(
        "--label must be 1 to %d letters, digits, '.', '_' or '-' (or \"\" for none); "
        "nothing changed",
        CAPSTAN_CA_LABEL_MAX);
    return CAPSTAN_EXIT_USAGE;
  }
  if ((v = c->value[OPT_TEMPLATE]) != NULL && v[0] != '\0' &&
      !word_valid(v, CAPSTAN_CA_TEMPLATE_MAX)) {
    capstan_cli_error(
        "--template must be the template's name (not its display name): 1 to %d "
        "letters, digits, '.', '_' or '-'; nothing changed",
        CAPSTAN_CA_TEMPLATE_MAX);
    return CAPSTAN_EXIT_USAGE;
  }
  if ((v = c->value[OPT_USERNAME]) != NULL && v[0] != '\0' && !username_valid(v)) {
    capstan_cli_error(
        "--username must be 1 to %d printable characters without ':'; nothing "
        "changed",
        CAPSTAN_CA_USER_MAX);
    return CAPSTAN_EXIT_USAGE;
  }
  unsigned timeout = 0, wait = 0, max_requests = 0;
  if ((v = c->value[OPT_TIMEOUT]) != NULL &&
      parse_range("timeout-seconds", v, TIMEOUT_MIN, TIMEOUT_MAX, &timeout) != 0) {
    return CAPSTAN_EXIT_USAGE;
  }
  if ((v = c->value[OPT_MAX_REQUESTS]) != NULL &&
      parse_range("max-requests", v, MAX_REQUESTS_MIN, MAX_REQUESTS_MAX, &max_requests) != 0) {
    return CAPSTAN_EXIT_USAGE;
  }
  if ((v = c->value[OPT_PHONE_WAIT]) != NULL &&
      parse_range("phone-wait-seconds", v, PHONE_WAIT_MIN, PHONE_WAIT_MAX, &wait) != 0) {
    return CAPSTAN_EXIT_USAGE;
  }
  char password[CAPSTAN_CA_PASSWORD_MAX + 1] = "";
  uint8_t *bundle = NULL;
  size_t bundle_len = 0, bundle_certs = 0;
  int rc = CAPSTAN_EXIT_ERROR;
  capstan_ca_config_t cfg;
  capstan_ca_config_init(&cfg);
  capstan_store_t *st = NULL;
  capstan_txn_t txn = {0};
  if ((v = c->value[OPT_PASSWORD_FILE]) != NULL && read_password(v, password) != 0) goto out;
  if ((v = c->value[OPT_CA_FILE]) != NULL &&
      read_ca_file(v, &bundle, &bundle_len, &bundle_certs) != 0) {
    goto out;
  }

  if (capstan_cli_open_store(c, CAPSTAN_CLI_STORE_EXISTING, &st) != 0) goto out;
  int err = capstan_store_begin(st, true, &txn);
  if (err == 0) err = capstan_ca_config_read(&txn, &cfg);
  if (err != 0) {
    capstan_cli_store_error("cannot read the CA settings", err);
    goto out;
  }
  if (url[0] != '\0') snprintf(cfg.url, sizeof(cfg.url), "%s", url);
  if (cfg.url[0] == '\0') {
    capstan_cli_error(
        "no CA is configured yet: give --url https://host[:port][/path]; nothing "
        "changed");
    rc = CAPSTAN_EXIT_USAGE;
    goto out;
  }
  /* Describe what changed, never the password itself. */
  /* Room for every field at its longest: nothing is cut. */
  char detail[2048] = "";
  size_t dl = 0;
#define ADD_DETAIL(...)                                                      \
  do {                                                                       \
    if (dl < sizeof(detail)) {                                               \
      dl += (size_t)snprintf(detail + dl, sizeof(detail) - dl, __VA_ARGS__); \
    }                                                                        \
  } while (0)
  if (url[0] != '\0') ADD_DETAIL("url=%s ", cfg.url);
  if ((v = c->value[OPT_LABEL]) != NULL) {
    snprintf(cfg.label, sizeof(cfg.label), "%s", v);
    ADD_DETAIL("label=%s ", v[0] ? v : "-");
  }
  if ((v = c->value[OPT_TEMPLATE]) != NULL) {
    snprintf(cfg.template_name, sizeof(cfg.template_name), "%s", v);
    ADD_DETAIL("template=%s ", v[0] ? v : "-");
  }
  if ((v = c->value[OPT_USERNAME]) != NULL) {
    snprintf(cfg.username, sizeof(cfg.username), "%s", v);
    ADD_DETAIL("username=%s ", v[0] ? v : "-");
  }
  if (c->value[OPT_PASSWORD_FILE] != NULL) {
    memcpy(cfg.password, password, sizeof(password));
    ADD_DETAIL("password=changed ");
  }
  if (bundle != NULL) {
    free(cfg.ca_bundle_pem);
    cfg.ca_bundle_pem = bundle;
    cfg.ca_bundle_len = bundle_len;
    bundle = NULL;
    ADD_DETAIL("ca_file=%zu_certificates ", bundle_certs);
  }
  if (c->value[OPT_TIMEOUT] != NULL) {
    cfg.timeout_seconds = timeout;
    ADD_DETAIL("timeout_seconds=%u ", timeout);
  }
  if (c->value[OPT_PHONE_WAIT] != NULL) {
    cfg.phone_wait_seconds = wait;
    ADD_DETAIL("phone_wait_seconds=%u ", wait);
  }
  if (c->value[OPT_MAX_REQUESTS] != NULL) {
    cfg.max_requests = max_requests;
    ADD_DETAIL("max_requests=%u ", max_requests);
  }
#undef ADD_DETAIL
  if (dl >= sizeof(detail)) dl = sizeof(detail) - 1;
  if (dl > 0 && detail[dl - 1] == ' ') detail[dl - 1] = '\0';
  if ((err = capstan_ca_config_write(&txn, &cfg)) != 0 ||
      (err = capstan_store_audit_append(&txn, 0, NULL, "ca_set", detail)) != 0 ||
      (err = capstan_settings_bump_trust_generation(&txn)) != 0 ||
      (err = capstan_store_commit(&txn)) != 0) {
    capstan_cli_store_error("cannot store the CA settings", err);
    goto out;
  }
  printf("CA settings stored (%s)\n", detail);
  printf(
      "a running capstan server applies them within a second; 'capstan ca test' checks "
      "that the CA answers\n");
  rc = CAPSTAN_EXIT_OK;
out:
  OPENSSL_cleanse(password, sizeof(password));
  free(bundle);
  capstan_ca_config_cleanup(&cfg);
  capstan_store_abort(&txn);
  capstan_store_close(st);
  return rc;
}

/* ---- show --------------------------------------------------------------- */

typedef struct {
  capstan_ca_config_t cfg;
  Capstan__CaHealth *health;
  unsigned issuer;
  STACK_OF(X509) * trust; /* CAPF-trust */
  size_t bundle_certs;
} show_ctx_t;

static int collect_capf_trust(const uint8_t sha256[32], const Capstan__TrustCert *t, void *arg) {
  (void)sha256;
  STACK_OF(X509) *trust = arg;
  if (!capstan_store_trust_in(t, CAPSTAN_TRUST_PURPOSE_CAPF)) return 0;
  X509 *x = NULL;
  if (capstan_pki_parse_cert(t->der.data, t->der.len, &x) != 0) return 0;
  if (!sk_X509_push(trust, x)) {
    X509_free(x);
    return CAPSTAN_ENOMEM;
  }
  return 0;
}

static int show_read(capstan_txn_t *txn, void *arg) {
  show_ctx_t *s = arg;
  int err = capstan_ca_config_read(txn, &s->cfg);
  if (err != 0) return err;
  err = capstan_store_ca_health_get(txn, &s->health);
  if (err != 0 && err != CAPSTAN_ENOENT) return err;
  capstan_settings_t settings;
  if ((err = capstan_settings_read(txn, &settings)) != 0) return err;
  s->issuer = settings.issuer;
  return capstan_store_trust_iterate(txn, collect_capf_trust, s->trust);
}

static bool in_trust(STACK_OF(X509) * trust, const X509 *x) {
  for (size_t i = 0; i < sk_X509_num(trust); i++) {
    if (X509_cmp(sk_X509_value(trust, i), x) == 0) return true;
  }
  return false;
}

static void time_or_never(int64_t t, char *buf, size_t len) {
  if (t == 0) {
    snprintf(buf, len, "never");
  } else {
    capstan_cli_format_time(t, buf, len);
  }
}

static void print_json_field(const char *name, const char *v, bool comma) {
  printf("%s\"%s\":", comma ? "," : "", name);
  capstan_cli_json_string(stdout, v[0] ? v : NULL);
}

static int run_show(capstan_cli_t *c) {
  show_ctx_t s = {.trust = sk_X509_new_null()};
  capstan_ca_config_init(&s.cfg);
  int rc = CAPSTAN_EXIT_ERROR;
  if (s.trust == NULL) {
    capstan_cli_error("out of memory");
    goto out;
  }
  rc = capstan_cli_read(c, show_read, &s, "cannot read the CA settings");
  if (rc != 0) goto out;
  rc = CAPSTAN_EXIT_ERROR;
  if (s.cfg.ca_bundle_pem != NULL) {
    uint8_t **ders = NULL;
    size_t *lens = NULL, n = 0;
    if (capstan_pki_pem_decode(s.cfg.ca_bundle_pem, s.cfg.ca_bundle_len, "CERTIFICATE", &ders,
                               &lens, &n) == 0) {
      s.bundle_certs = n;
      capstan_pki_der_array_free(ders, lens, n);
    }
  }
  /* The chain as the CA last sent it; its root is its last certificate. */
  X509 *root = NULL;
  if (s.cfg.chain_count > 0) {
    capstan_pki_parse_cert(s.cfg.chain_der[s.cfg.chain_count - 1],
                           s.cfg.chain_lens[s.cfg.chain_count - 1], &root);
  }
  bool root_trusted = root != NULL && in_trust(s.trust, root);
  if (capstan_cli_has(c, OPT_ROOT_PEM)) {
    if (root == NULL) {
      capstan_cli_error("no chain fetched from the CA yet: run 'capstan ca test' first");
      goto out;
    }
    char *pem = NULL;
    if (capstan_pki_pem_encode("CERTIFICATE", s.cfg.chain_der[s.cfg.chain_count - 1],
                               s.cfg.chain_lens[s.cfg.chain_count - 1], &pem) != 0) {
      capstan_cli_error("out of memory");
      X509_free(root);
      goto out;
    }
    fputs(pem, stdout);
    free(pem);
    X509_free(root);
    rc = CAPSTAN_EXIT_OK;
    goto out;
  }
  char fetched[40], ok_at[40], err_at[40];
  time_or_never(s.cfg.chain_fetched_at, fetched, sizeof(fetched));
  const Capstan__CaHealth *h = s.health;
  time_or_never(h != NULL ? h->last_success_at : 0, ok_at, sizeof(ok_at));
  time_or_never(h != NULL ? h->last_error_at : 0, err_at, sizeof(err_at));
  const char *last_error = h != NULL && h->last_error != NULL ? h->last_error : "";
  if (c->json) {
    printf("{\"issuer\":\"%s\",\"configured\":%s", capstan_issuer_name(s.issuer),
           s.cfg.url[0] ? "true" : "false");
    print_json_field("url", s.cfg.url, true);
    print_json_field("label", s.cfg.label, true);
    print_json_field("template", s.cfg.template_name, true);
    print_json_field("username", s.cfg.username, true);
    printf(",\"password_set\":%s,\"ca_file_certificates\":%zu",
           s.cfg.password[0] ? "true" : "false", s.bundle_certs);
    printf(",\"timeout_seconds\":%u,\"phone_wait_seconds\":%u,\"max_requests\":%u",
           s.cfg.timeout_seconds, s.cfg.phone_wait_seconds, s.cfg.max_requests);
    printf(",\"chain_fetched_at\":");
    capstan_cli_json_string(stdout, s.cfg.chain_fetched_at ? fetched : NULL);
    printf(",\"chain\":[");
  } else {
    printf("issuer:              %s\n", capstan_issuer_name(s.issuer));
    if (s.cfg.url[0] == '\0') {
      printf("CA:                  not configured (capstan ca set --url https://...)\n");
    } else {
      printf("url:                 %s\n", s.cfg.url);
    }
    printf("label:               %s\n", s.cfg.label[0] ? s.cfg.label : "-");
    printf("template:            %s\n", s.cfg.template_name[0] ? s.cfg.template_name : "-");
    printf("username:            %s\n", s.cfg.username[0] ? s.cfg.username : "-");
    printf("password:            %s\n", s.cfg.password[0] ? "set" : "not set");
    if (s.bundle_certs > 0) {
      printf("TLS anchors:         %zu certificate%s (--ca-file)\n", s.bundle_certs,
             s.bundle_certs == 1 ? "" : "s");
    } else {
      printf("TLS anchors:         the system's\n");
    }
    printf("timeout:             %u s per request\n", s.cfg.timeout_seconds);
    printf("phone wait:          %u s\n", s.cfg.phone_wait_seconds);
    printf("requests at once:    %u (more wait in the server's queue)\n", s.cfg.max_requests);
    printf("chain fetched:       %s\n", fetched);
  }
  for (size_t i = 0; i < s.cfg.chain_count; i++) {
    X509 *x = NULL;
    char *subject = NULL, until[40] = "?";
    if (capstan_pki_parse_cert(s.cfg.chain_der[i], s.cfg.chain_lens[i], &x) == 0) {
      capstan_pki_dn_string(X509_get_subject_name(x), &subject);
      int64_t na = 0;
      if (capstan_pki_cert_validity(x, NULL, &na) == 0) {
        capstan_cli_format_time(na, until, sizeof(until));
      }
    }
    if (c->json) {
      printf("%s{\"subject\":", i ? "," : "");
      capstan_cli_json_string(stdout, subject);
      printf(",\"not_after\":\"%s\"}", until);
    } else {
      printf("  chain %zu:           %s (until %s)\n", i + 1, subject ? subject : "(unreadable)",
             until);
    }
    free(subject);
    X509_free(x);
  }
  if (c->json) {
    printf("],\"root_in_capf_trust\":%s", root_trusted ? "true" : "false");
    printf(",\"health\":{\"last_success_at\":");
    capstan_cli_json_string(stdout, h && h->last_success_at ? ok_at : NULL);
    printf(",\"last_error_at\":");
    capstan_cli_json_string(stdout, h && h->last_error_at ? err_at : NULL);
    printf(",\"last_error\":");
    capstan_cli_json_string(stdout, last_error[0] ? last_error : NULL);
    printf(",\"last_latency_ms\":%u,\"requests\":%llu,\"failures\":%llu}}\n",
           h ? h->last_latency_ms : 0, (unsigned long long)(h ? h->requests : 0),
           (unsigned long long)(h ? h->failures : 0));
  } else {
    if (root != NULL && root_trusted) {
      printf("root in CAPF-trust:  yes\n");
    } else if (root != NULL) {
      printf(
          "root in CAPF-trust:  NO: certificates from this CA will be refused until it is:\n"
          "                     capstan ca show --root-pem --data-dir %s > ca-root.pem\n"
          "                     capstan trust add ca-root.pem --data-dir %s\n",
          capstan_cli_data_dir(c), capstan_cli_data_dir(c));
    }
    printf("last success:        %s\n", ok_at);
    printf("last error:          %s%s%s\n", err_at, last_error[0] ? ": " : "", last_error);
    if (h != NULL && h->last_latency_ms > 0) {
      printf("last latency:        %u ms\n", h->last_latency_ms);
    }
    if (h != NULL) {
      printf("requests:            %llu (%llu failed)\n", (unsigned long long)h->requests,
             (unsigned long long)h->failures);
    }
  }
  X509_free(root);
  rc = CAPSTAN_EXIT_OK;
out:
  capstan_ca_config_cleanup(&s.cfg);
  if (s.health != NULL) capstan__ca_health__free_unpacked(s.health, NULL);
  sk_X509_pop_free(s.trust, X509_free);
  return rc;
}

/* ---- test --------------------------------------------------------------- */

typedef struct {
  capstan_ca_config_t cfg;
  unsigned issuer;
} test_ctx_t;

static int test_read(capstan_txn_t *txn, void *arg) {
  test_ctx_t *t = arg;
  int err = capstan_ca_config_read(txn, &t->cfg);
  if (err != 0) return err;
  capstan_settings_t settings;
  if ((err = capstan_settings_read(txn, &settings)) != 0) return err;
  t->issuer = settings.issuer;
  return 0;
}

static int check_mode(void *ctx, const char *v, char *why, size_t len) {
  (void)ctx;
  if (strcmp(v, "est") == 0 || strcmp(v, "mscs") == 0) return 0;
  snprintf(why, len, "--mode must be est or mscs, got '%s'", v);
  return -1;
}

static int run_test(capstan_cli_t *c) {
  test_ctx_t t;
  capstan_ca_config_init(&t.cfg);
  capstan_ca_result_t res;
  memset(&res, 0, sizeof(res));
  int rc = capstan_cli_read(c, test_read, &t, "cannot read the CA settings");
  if (rc != 0) goto out;
  rc = CAPSTAN_EXIT_ERROR;
  if (t.cfg.url[0] == '\0') {
    capstan_cli_error("no CA is configured: capstan ca set --url https://...");
    goto out;
  }
  /* The mode to test: --mode, else the issuer setting when it is an
   * online CA, else EST. */
  capstan_issuer_t mode = CAPSTAN_ISSUER_EST;
  const char *m = c->value[OPT_MODE];
  if (m != NULL) {
    mode = strcmp(m, "mscs") == 0 ? CAPSTAN_ISSUER_MSCS : CAPSTAN_ISSUER_EST;
  } else if (CAPSTAN_ISSUER_IS_ONLINE(t.issuer)) {
    mode = (capstan_issuer_t)t.issuer;
  }
  printf("testing %s at %s\n", capstan_issuer_name(mode), t.cfg.url);
  int err = capstan_ca_run_sync(mode, &t.cfg, CAPSTAN_CA_OP_CHAIN, &res);
  if (err != 0 || res.chain_count == 0) {
    capstan_cli_error("ca test: %s", res.reason[0] ? res.reason : "the CA sent no chain");
    goto out;
  }
  /* The chain needs no credentials with EST: check them separately. */
  if (mode == CAPSTAN_ISSUER_EST) {
    capstan_ca_result_t auth;
    memset(&auth, 0, sizeof(auth));
    err = capstan_ca_run_sync(mode, &t.cfg, CAPSTAN_CA_OP_AUTH, &auth);
    if (err != 0) {
      capstan_cli_error("ca test: %s", auth.reason[0] ? auth.reason : "authentication failed");
      capstan_ca_result_cleanup(&auth);
      goto out;
    }
    capstan_ca_result_cleanup(&auth);
  }
  /* Keep the chain: `ca show` says whether its root is in CAPF-trust. */
  capstan_store_t *st = NULL;
  if (capstan_cli_open_store(c, CAPSTAN_CLI_STORE_EXISTING, &st) != 0) goto out;
  capstan_txn_t txn = {0};
  capstan_ca_config_t cur;
  capstan_ca_config_init(&cur);
  err = capstan_store_begin(st, true, &txn);
  if (err == 0) err = capstan_ca_config_read(&txn, &cur);
  if (err == 0) {
    for (size_t i = 0; i < cur.chain_count; i++) free(cur.chain_der[i]);
    free(cur.chain_der);
    free(cur.chain_lens);
    cur.chain_der = res.chain_der;
    cur.chain_lens = res.chain_lens;
    cur.chain_count = res.chain_count;
    cur.chain_fetched_at = (int64_t)time(NULL);
    res.chain_der = NULL;
    res.chain_lens = NULL;
    res.chain_count = 0;
    err = capstan_ca_config_write(&txn, &cur);
  }
  size_t n = cur.chain_count;
  if (err == 0) {
    err = capstan_audit_appendf(&txn, NULL, "ca_chain_fetched", "mode=%s certificates=%zu",
                                capstan_issuer_name(mode), n);
  }
  /* A running server takes the chain: its client completes answers with
   * it, and "by existing certificate" builds paths through it. */
  if (err == 0) err = capstan_settings_bump_trust_generation(&txn);
  if (err == 0) err = capstan_store_commit(&txn);
  capstan_store_abort(&txn);
  capstan_ca_config_cleanup(&cur);
  capstan_store_close(st);
  if (err != 0) {
    capstan_cli_store_error("cannot store the CA's chain", err);
    goto out;
  }
  printf("reached CA, authenticated, chain: %zu certificate%s\n", n, n == 1 ? "" : "s");
  rc = CAPSTAN_EXIT_OK;
out:
  capstan_ca_result_cleanup(&res);
  capstan_ca_config_cleanup(&t.cfg);
  return rc;
}

/* ---- dispatch ----------------------------------------------------------- */

#define CA_USAGE                                                                        \
  "capstan ca set [--url URL] [--label L] [--template NAME] [--username U]\n"           \
  "                 [--password-file F] [--ca-file BUNDLE.pem] [--timeout-seconds N]\n" \
  "                 [--phone-wait-seconds N] [--max-requests N]\n"                      \
  "       capstan ca show [--json] [--root-pem]\n"                                      \
  "       capstan ca test [--mode est|mscs]\n"                                          \
  "       (all take --data-dir DIR)"

#define CA_HELP                                                                              \
  "The online CA that signs phones' certificates when 'capstan config set issuer est'\n"     \
  "(EST, RFC 7030) or 'issuer mscs' (a Microsoft CA's certsrv pages).\n"                     \
  "\n"                                                                                       \
  "  set     stores what is given and keeps the rest:\n"                                     \
  "          --url https://host[:port][/path]   the CA (https only; no credentials in it)\n" \
  "          --label L            EST label (\"\" for none)\n"                               \
  "          --template NAME      Microsoft CA certificate template (its name)\n"            \
  "          --username U         the account capstan uses at the CA\n"                      \
  "          --password-file F    its password: the file's one line (a trailing newline\n"   \
  "                               is dropped; at most 255 bytes). Never printed.\n"          \
  "          --ca-file BUNDLE.pem anchors for the CA's TLS certificate (default: the\n"      \
  "                               system's)\n"                                               \
  "          --timeout-seconds N  longest wait for one answer from the CA, 1 to 600\n"       \
  "                               (default 30)\n"                                            \
  "          --phone-wait-seconds N  longest a phone's session waits for its certificate,\n" \
  "                               1 to 3600 (default 120); after that the request stays\n"   \
  "                               pending and the phone gets it in a later session\n"        \
  "          --max-requests N     requests to the CA at once, 1 to 4096 (default 64);\n"     \
  "                               the rest wait in the server's queue, so that a\n"          \
  "                               thousand phones at once do not knock the CA over\n"        \
  "          A running server applies the change within a second.\n"                         \
  "  show    the settings (the password only as set / not set), the CA's chain as last\n"    \
  "          fetched and whether its root is in CAPF-trust, and how the CA has been\n"       \
  "          answering. --root-pem prints that root as PEM, for 'capstan trust add'.\n"      \
  "  test    asks the CA for its chain (and, for EST, checks the credentials) with the\n"    \
  "          issuer setting's protocol (EST when the issuer is capf or offline, unless\n"    \
  "          --mode says), stores the chain, and says plainly what failed. Exit 1 on\n"      \
  "          failure."

int capstan_cli_ca_main(int argc, char **argv) {
  static const capstan_cli_opt_t opts[] = {
      [OPT_URL] = {"url", true, NULL},
      [OPT_LABEL] = {"label", true, NULL},
      [OPT_TEMPLATE] = {"template", true, NULL},
      [OPT_USERNAME] = {"username", true, NULL},
      [OPT_PASSWORD_FILE] = {"password-file", true, NULL},
      [OPT_CA_FILE] = {"ca-file", true, NULL},
      [OPT_TIMEOUT] = {"timeout-seconds", true, NULL},
      [OPT_PHONE_WAIT] = {"phone-wait-seconds", true, NULL},
      [OPT_MAX_REQUESTS] = {"max-requests", true, NULL},
      [OPT_MODE] = {"mode", true, check_mode},
      [OPT_ROOT_PEM] = {"root-pem", false, NULL},
  };
  static const capstan_cli_sub_t subs[] = {
      {"set",
       CAPSTAN_CLI_OPT(OPT_URL) | CAPSTAN_CLI_OPT(OPT_LABEL) | CAPSTAN_CLI_OPT(OPT_TEMPLATE) |
           CAPSTAN_CLI_OPT(OPT_USERNAME) | CAPSTAN_CLI_OPT(OPT_PASSWORD_FILE) |
           CAPSTAN_CLI_OPT(OPT_CA_FILE) | CAPSTAN_CLI_OPT(OPT_TIMEOUT) |
           CAPSTAN_CLI_OPT(OPT_PHONE_WAIT) | CAPSTAN_CLI_OPT(OPT_MAX_REQUESTS),
       false, 0, 0, NULL, run_set},
      {"show", CAPSTAN_CLI_OPT(OPT_ROOT_PEM), true, 0, 0, NULL, run_show},
      {"test", CAPSTAN_CLI_OPT(OPT_MODE), false, 0, 0, NULL, run_test},
  };
  static const capstan_cli_cmd_t cmd = {"ca", CA_USAGE, CA_HELP, CAPSTAN_CLI_TABLE(opts),
                                        CAPSTAN_CLI_TABLE(subs)};
  return capstan_cli_run(&cmd, argc, argv, NULL);
}
