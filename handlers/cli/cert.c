/* `capstan cert export|list-stale|delete-stale` and `capstan report
 * status|expiring`. */
#include <errno.h>
#include <openssl/x509.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "handlers/cli/cli.h"
#include "handlers/cli/files.h"
#include "core/base/error.h"
#include "core/pki/pki.h"
#include "storage/devices.h"
#include "storage/records.h"

/* Options of the cert and report subcommands (one table). */
enum { OPT_OUT, OPT_ALL, OPT_DAYS };

/* --days N: 0..36500. */
static int check_days(void *ctx, const char *v, char *why, size_t len) {
  (void)ctx;
  char *end;
  errno = 0;
  long days = strtol(v, &end, 10);
  if (*end == '\0' && v[0] != '\0' && errno == 0 && days >= 0 && days <= 36500) return 0;
  snprintf(why, len, "--days must be a number of days from 0 to 36500");
  return -1;
}

/* ---- cert export ---------------------------------------------------------- */

static int run_export(capstan_cli_t *c) {
  const char *which = c->args[0];
  if (strcmp(which, CAPSTAN_IDENTITY_CAPF) != 0 && strcmp(which, CAPSTAN_IDENTITY_TFTP) != 0) {
    return capstan_cli_usage_error(c, "expected capf or tftp, got '%s'", which);
  }
  const char *dir = capstan_cli_data_dir(c);
  capstan_store_t *s;
  if (capstan_cli_open_store(c, CAPSTAN_CLI_STORE_EXISTING, &s) != 0) return CAPSTAN_EXIT_ERROR;
  Capstan__Identity *id = NULL;
  int err = capstan_store_identity_load(s, which, &id);
  capstan_store_close(s);
  if (err == CAPSTAN_ENOENT) {
    capstan_cli_error("no %s certificate in '%s': run 'capstan init --data-dir %s' first", which,
                      dir, dir);
    return CAPSTAN_EXIT_ERROR;
  }
  if (err != 0) {
    capstan_cli_error("cannot read the %s certificate: %s", which, capstan_strerror(err));
    return CAPSTAN_EXIT_ERROR;
  }
  X509 *x = NULL;
  char *pem = NULL;
  int ret = CAPSTAN_EXIT_ERROR;
  if (capstan_pki_parse_cert(id->cert_der.data, id->cert_der.len, &x) != 0) {
    capstan_cli_error("the stored %s certificate is not valid DER: run 'capstan init' again",
                      which);
  } else if ((err = capstan_pki_pem_encode("CERTIFICATE", id->cert_der.data, id->cert_der.len,
                                           &pem)) != 0) {
    capstan_cli_error("cannot encode the certificate: %s", capstan_strerror(err));
  } else {
    ret = capstan_cli_write_text(c->value[OPT_OUT], pem, "the certificate");
  }
  free(pem);
  X509_free(x);
  capstan__identity__free_unpacked(id, NULL);
  return ret;
}

/* ---- stale certificates ------------------------------------------------------- */

typedef struct {
  bool json;
  size_t n;
  uint8_t (*serials)[CAPSTAN_SERIAL_LEN];
  size_t cap;
  bool collect;
} stale_ctx_t;

static int stale_one(const Capstan__IssuedCert *c, void *arg) {
  stale_ctx_t *s = arg;
  if (c->status != CAPSTAN__CERT_STATUS__CERT_STATUS_STALE || c->serial.len != CAPSTAN_SERIAL_LEN) {
    return 0;
  }
  if (s->collect) {
    if (s->n == s->cap) {
      size_t cap = s->cap == 0 ? 64 : s->cap * 2;
      void *n = realloc(s->serials, cap * CAPSTAN_SERIAL_LEN);
      if (n == NULL) return CAPSTAN_ENOMEM;
      s->serials = n;
      s->cap = cap;
    }
    memcpy(s->serials[s->n++], c->serial.data, CAPSTAN_SERIAL_LEN);
    return 0;
  }
  char hex[2 * CAPSTAN_SERIAL_LEN + 1], issued[40] = "-";
  capstan_cli_hex(c->serial.data, CAPSTAN_SERIAL_LEN, hex);
  if (c->issued_at != 0) capstan_cli_format_time(c->issued_at, issued, sizeof(issued));
  if (s->json) {
    printf("%s{\"serial\":\"%s\",\"device\":", s->n == 0 ? "\n" : ",\n", hex);
    capstan_cli_json_string(stdout, c->device);
    printf(",\"issued_at\":");
    capstan_cli_json_string(stdout, c->issued_at != 0 ? issued : NULL);
    printf("}");
  } else {
    printf("%s  %-20s %s\n", hex, c->device, issued);
  }
  s->n++;
  return 0;
}

static int stale_all(capstan_txn_t *txn, void *arg) {
  return capstan_store_cert_iterate(txn, stale_one, arg);
}

static int run_list_stale(capstan_cli_t *c) {
  stale_ctx_t s = {.json = c->json};
  return capstan_cli_list(c, stale_all, &s, &s.n, "cannot list certificates", "%-32s  %-20s %s\n",
                          "SERIAL", "DEVICE", "ISSUED");
}

static int parse_serial(const char *hex, uint8_t out[CAPSTAN_SERIAL_LEN]) {
  if (strlen(hex) != 2 * CAPSTAN_SERIAL_LEN) return CAPSTAN_EINVAL;
  for (size_t i = 0; i < CAPSTAN_SERIAL_LEN; i++) {
    unsigned v = 0;
    for (int j = 0; j < 2; j++) {
      char c = hex[2 * i + (size_t)j];
      v <<= 4;
      if (c >= '0' && c <= '9') {
        v |= (unsigned)(c - '0');
      } else if (c >= 'a' && c <= 'f') {
        v |= (unsigned)(c - 'a' + 10);
      } else if (c >= 'A' && c <= 'F') {
        v |= (unsigned)(c - 'A' + 10);
      } else {
        return CAPSTAN_EINVAL;
      }
    }
    out[i] = (uint8_t)v;
  }
  return 0;
}

/* Deleting a stale LSC marks it DELETED (the record stays, so the device's
 * history keeps the serial and R22's "every certificate on record" holds). */
static int run_delete_stale(capstan_cli_t *c) {
  uint8_t one[CAPSTAN_SERIAL_LEN];
  bool all = capstan_cli_has(c, OPT_ALL);
  const char *arg = c->nargs > 0 ? c->args[0] : NULL;
  if (all == (arg != NULL)) return capstan_cli_usage_error(c, "give a SERIAL or --all");
  if (!all && parse_serial(arg, one) != 0) {
    capstan_cli_error("'%s' is not a serial (32 hex digits, see 'capstan cert list-stale')", arg);
    return CAPSTAN_EXIT_USAGE;
  }
  capstan_store_t *st;
  if (capstan_cli_open_store(c, CAPSTAN_CLI_STORE_EXISTING, &st) != 0) return CAPSTAN_EXIT_ERROR;
  stale_ctx_t s = {.collect = true};
  capstan_txn_t txn;
  int64_t now = (int64_t)time(NULL);
  int err = capstan_store_begin(st, true, &txn);
  if (err == 0 && all) err = capstan_store_cert_iterate(&txn, stale_one, &s);
  size_t n = all ? s.n : 1;
  size_t done = 0;
  for (size_t i = 0; err == 0 && i < n; i++) {
    const uint8_t *serial = all ? s.serials[i] : one;
    Capstan__IssuedCert *ic;
    err = capstan_store_cert_get(&txn, serial, &ic);
    if (err != 0) break;
    if (ic->status != CAPSTAN__CERT_STATUS__CERT_STATUS_STALE) {
      capstan_cli_error("certificate %s is %s, not stale: only stale LSCs can be deleted",
                        all ? "?" : arg, capstan_cert_status_name(ic->status));
      capstan__issued_cert__free_unpacked(ic, NULL);
      err = CAPSTAN_EINVAL;
      break;
    }
    ic->has_status = 1;
    ic->status = CAPSTAN__CERT_STATUS__CERT_STATUS_DELETED;
    ic->has_status_changed_at = 1;
    ic->status_changed_at = now;
    err = capstan_store_cert_put(&txn, ic);
    if (err == 0) {
      char hex[2 * CAPSTAN_SERIAL_LEN + 1];
      capstan_cli_hex(serial, CAPSTAN_SERIAL_LEN, hex);
      err = capstan_audit_appendf(&txn, ic->device, "cert_deleted",
                                  "serial=%s (was stale; deleted by the operator)", hex);
    }
    capstan__issued_cert__free_unpacked(ic, NULL);
    done++;
  }
  if (err == 0) err = capstan_store_commit(&txn);
  capstan_store_abort(&txn);
  capstan_store_close(st);
  free(s.serials);
  if (err == CAPSTAN_ENOENT) {
    capstan_cli_error("no certificate with serial %s (see 'capstan cert list-stale')",
                      arg != NULL ? arg : "?");
    return CAPSTAN_EXIT_ERROR;
  }
  if (err == CAPSTAN_EINVAL) return CAPSTAN_EXIT_ERROR;
  if (err != 0) return capstan_cli_store_error("cannot delete stale certificates", err);
  printf("deleted %zu stale certificates\n", done);
  return CAPSTAN_EXIT_OK;
}

#define CERT_USAGE                                                                           \
  "capstan cert export capf|tftp [--out FILE]\n"                                             \
  "       capstan cert list-stale [--json]\n"                                                \
  "       capstan cert delete-stale SERIAL|--all\n"                                          \
  "       capstan cert capf show|regenerate|csr|import|retire ...  (see 'capstan cert capf " \
  "--help')\n"                                                                               \
  "       (all take --data-dir DIR)"

static const capstan_cli_opt_t cert_opts[] = {
    [OPT_OUT] = {"out", true, NULL},
    [OPT_ALL] = {"all", false, NULL},
    [OPT_DAYS] = {"days", true, check_days},
};

static const capstan_cli_sub_t cert_subs[] = {
    {"export", CAPSTAN_CLI_OPT(OPT_OUT), false, 1, 1, NULL, run_export},
    {"list-stale", 0, true, 0, 0, NULL, run_list_stale},
    {"delete-stale", CAPSTAN_CLI_OPT(OPT_ALL), false, 0, 1, NULL, run_delete_stale},
};

int capstan_cli_cert_main(int argc, char **argv) {
  /* `cert capf ...` is a command of its own with its own options. */
  if (argc >= 2 && strcmp(argv[1], "capf") == 0) return capstan_cli_capf_main(argc - 1, argv + 1);
  static const capstan_cli_cmd_t cmd = {"cert", CERT_USAGE, NULL, CAPSTAN_CLI_TABLE(cert_opts),
                                        CAPSTAN_CLI_TABLE(cert_subs)};
  return capstan_cli_run(&cmd, argc, argv, NULL);
}

/* ---- reports --------------------------------------------------------------------- */

#define NSTATUS (CAPSTAN__OP_STATUS__OP_STATUS_THROTTLED + 1)

typedef struct {
  uint64_t by_status[NSTATUS];
  uint64_t total;
  /* expiring */
  bool expiring;
  bool json;
  int64_t now, horizon;
  size_t n;
} report_ctx_t;

/* One row of `report expiring` when the certificate |der| of |name| ends
 * before the horizon. */
static void expiring_row(report_ctx_t *r, const char *name, const char *type, const uint8_t *der,
                         size_t len) {
  int64_t na;
  if (capstan_cli_cert_not_after(der, len, &na) != 0 || na > r->horizon) return;
  char when[40];
  capstan_cli_format_time(na, when, sizeof(when));
  if (r->json) {
    printf("%s{\"name\":", r->n == 0 ? "\n" : ",\n");
    capstan_cli_json_string(stdout, name);
    printf(",\"cert_type\":\"%s\",\"not_after\":\"%s\",\"expired\":%s}", type, when,
           na <= r->now ? "true" : "false");
  } else {
    printf("%-20s %-8s %s%s\n", name, type, when, na <= r->now ? " (expired)" : "");
  }
  r->n++;
}

static int report_one(const Capstan__Device *d, void *arg) {
  report_ctx_t *r = arg;
  if (!r->expiring) {
    if ((unsigned)d->status < NSTATUS) r->by_status[d->status]++;
    r->total++;
    return 0;
  }
  if (!d->has_cert_der || d->cert_der.len == 0) return 0;
  expiring_row(r, d->name, capstan_cert_type_name(d->cert_type), d->cert_der.data, d->cert_der.len);
  return 0;
}

/* The server's own certificates come first: a CAPF certificate that
 * expires stops every enrollment (capf-lifecycle.md). */
static int report_identities(capstan_txn_t *txn, report_ctx_t *r) {
  static const struct {
    const char *which, *type;
  } kIds[] = {{CAPSTAN_IDENTITY_CAPF, "CAPF"}, {CAPSTAN_IDENTITY_TFTP, "TFTP"}};
  for (size_t i = 0; i < sizeof(kIds) / sizeof(kIds[0]); i++) {
    Capstan__Identity *id = NULL;
    int rc = capstan_store_identity_get(txn, kIds[i].which, &id);
    if (rc == CAPSTAN_ENOENT) continue;
    if (rc < 0) return rc;
    X509 *x = NULL;
    char *dn = NULL;
    if (capstan_pki_parse_cert(id->cert_der.data, id->cert_der.len, &x) == 0) {
      capstan_pki_dn_string(X509_get_subject_name(x), &dn);
    }
    expiring_row(r, dn != NULL ? dn : kIds[i].type, kIds[i].type, id->cert_der.data,
                 id->cert_der.len);
    free(dn);
    X509_free(x);
    capstan__identity__free_unpacked(id, NULL);
  }
  return 0;
}

#define REPORT_USAGE                                   \
  "capstan report status [--json]\n"                   \
  "       capstan report expiring --days N [--json]\n" \
  "       (all take --data-dir DIR)"

static int report_all(capstan_txn_t *txn, void *arg) {
  report_ctx_t *r = arg;
  if (r->expiring) {
    int rc = report_identities(txn, r);
    if (rc < 0) return rc;
  }
  return capstan_store_device_iterate(txn, report_one, arg);
}

static int run_expiring(capstan_cli_t *c) {
  if (!capstan_cli_has(c, OPT_DAYS)) return capstan_cli_usage_error(c, "missing --days N");
  report_ctx_t r = {.json = c->json, .now = (int64_t)time(NULL), .expiring = true};
  r.horizon = r.now + strtol(c->value[OPT_DAYS], NULL, 10) * 86400;
  return capstan_cli_list(c, report_all, &r, &r.n, "cannot read devices", "%-20s %-8s %s\n", "NAME",
                          "CERT", "NOT AFTER");
}

static int run_status(capstan_cli_t *c) {
  static const Capstan__OpStatus order[NSTATUS] = {
      CAPSTAN__OP_STATUS__OP_STATUS_PENDING,   CAPSTAN__OP_STATUS__OP_STATUS_IN_PROGRESS,
      CAPSTAN__OP_STATUS__OP_STATUS_THROTTLED, CAPSTAN__OP_STATUS__OP_STATUS_SUCCEEDED,
      CAPSTAN__OP_STATUS__OP_STATUS_FAILED,    CAPSTAN__OP_STATUS__OP_STATUS_EXPIRED,
      CAPSTAN__OP_STATUS__OP_STATUS_NONE};
  report_ctx_t r = {0};
  int rc = capstan_cli_read(c, report_all, &r, "cannot read devices");
  if (rc != 0) return rc;
  if (c->json) {
    printf("{\"total\":%llu,\"by_status\":{", (unsigned long long)r.total);
    for (int i = 0; i < NSTATUS; i++) {
      printf("%s\"%s\":%llu", i > 0 ? "," : "", capstan_op_status_name(order[i]),
             (unsigned long long)r.by_status[order[i]]);
    }
    printf("}}\n");
  } else {
    for (int i = 0; i < NSTATUS; i++) {
      printf("%-12s %llu\n", capstan_op_status_name(order[i]),
             (unsigned long long)r.by_status[order[i]]);
    }
    printf("%-12s %llu\n", "total", (unsigned long long)r.total);
  }
  return CAPSTAN_EXIT_OK;
}

static const capstan_cli_sub_t report_subs[] = {
    {"status", 0, true, 0, 0, NULL, run_status},
    {"expiring", CAPSTAN_CLI_OPT(OPT_DAYS), true, 0, 0, NULL, run_expiring},
};

int capstan_cli_report_main(int argc, char **argv) {
  static const capstan_cli_cmd_t cmd = {"report", REPORT_USAGE, NULL, CAPSTAN_CLI_TABLE(cert_opts),
                                        CAPSTAN_CLI_TABLE(report_subs)};
  return capstan_cli_run(&cmd, argc, argv, NULL);
}
