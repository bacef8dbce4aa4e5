/* `capstan cert export|list-stale|delete-stale` and `capstan report
 * status|expiring`. */
#include <errno.h>
#include <openssl/asn1.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "handlers/cli/cli.h"
#include "handlers/cli/files.h"
#include "core/base/error.h"
#include "storage/devices.h"

/* ---- cert export ---------------------------------------------------------- */

static int cert_export(capstan_cli_fopts_t *o, const char *which) {
  const char *dir = capstan_store_data_dir(o->data_dir);
  capstan_store_t *s;
  int err = capstan_store_open(dir, 0, &s);
  if (err == CAPSTAN_ENOENT) {
    capstan_cli_error("no capstan data in '%s': run 'capstan init --data-dir %s' first", dir, dir);
    return CAPSTAN_EXIT_ERROR;
  }
  if (err != 0) return capstan_cli_open_store(dir, false, &s);
  Capstan__Identity *id = NULL;
  err = capstan_store_identity_load(s, which, &id);
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
  const uint8_t *p = id->cert_der.data;
  X509 *x = d2i_X509(NULL, &p, (long)id->cert_der.len);
  int ret = CAPSTAN_EXIT_OK;
  if (x == NULL || p != id->cert_der.data + id->cert_der.len) {
    capstan_cli_error("the stored %s certificate is not valid DER: run 'capstan init' again",
                      which);
    ret = CAPSTAN_EXIT_ERROR;
    goto out;
  }
  FILE *f = stdout;
  if (o->out != NULL && strcmp(o->out, "-") != 0) {
    f = fopen(o->out, "w");
    if (f == NULL) {
      capstan_cli_error("cannot write '%s': %s", o->out, strerror(errno));
      ret = CAPSTAN_EXIT_ERROR;
      goto out;
    }
  }
  if (!PEM_write_X509(f, x) || fflush(f) != 0) {
    capstan_cli_error("cannot write the certificate");
    ret = CAPSTAN_EXIT_ERROR;
  }
  if (f != stdout && fclose(f) != 0) ret = CAPSTAN_EXIT_ERROR;
out:
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

static int list_stale(capstan_cli_fopts_t *o) {
  capstan_store_t *st;
  if (capstan_cli_open_store(capstan_store_data_dir(o->data_dir), false, &st) != 0) {
    return CAPSTAN_EXIT_ERROR;
  }
  stale_ctx_t s = {.json = o->json};
  if (o->json) {
    printf("[");
  } else {
    printf("%-32s  %-20s %s\n", "SERIAL", "DEVICE", "ISSUED");
  }
  capstan_txn_t txn;
  int err = capstan_store_begin(st, false, &txn);
  if (err == 0) err = capstan_store_cert_iterate(&txn, stale_one, &s);
  capstan_store_abort(&txn);
  capstan_store_close(st);
  if (o->json) printf(s.n > 0 ? "\n]\n" : "]\n");
  if (err != 0) {
    capstan_cli_error("cannot list certificates: %s", capstan_strerror(err));
    return CAPSTAN_EXIT_ERROR;
  }
  return CAPSTAN_EXIT_OK;
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
static int delete_stale(capstan_cli_fopts_t *o, const char *usage) {
  uint8_t one[CAPSTAN_SERIAL_LEN];
  if (o->all == (o->nargs == 2)) {
    fprintf(stderr, "capstan: cert delete-stale: give a SERIAL or --all\nusage: %s\n", usage);
    return CAPSTAN_EXIT_USAGE;
  }
  if (!o->all && parse_serial(o->args[1], one) != 0) {
    fprintf(stderr,
            "capstan: '%s' is not a serial (32 hex digits, see 'capstan cert list-stale')\n",
            o->args[1]);
    return CAPSTAN_EXIT_USAGE;
  }
  capstan_store_t *st;
  if (capstan_cli_open_store(capstan_store_data_dir(o->data_dir), false, &st) != 0) {
    return CAPSTAN_EXIT_ERROR;
  }
  stale_ctx_t s = {.collect = true};
  capstan_txn_t txn;
  int64_t now = (int64_t)time(NULL);
  int err = capstan_store_begin(st, true, &txn);
  if (err == 0 && o->all) err = capstan_store_cert_iterate(&txn, stale_one, &s);
  size_t n = o->all ? s.n : 1;
  size_t done = 0;
  for (size_t i = 0; err == 0 && i < n; i++) {
    const uint8_t *serial = o->all ? s.serials[i] : one;
    Capstan__IssuedCert *c;
    err = capstan_store_cert_get(&txn, serial, &c);
    if (err != 0) break;
    if (c->status != CAPSTAN__CERT_STATUS__CERT_STATUS_STALE) {
      capstan_cli_error("certificate %s is %s, not stale: only stale LSCs can be deleted",
                        o->all ? "?" : o->args[1], capstan_cert_status_name(c->status));
      capstan__issued_cert__free_unpacked(c, NULL);
      err = CAPSTAN_EINVAL;
      break;
    }
    c->has_status = 1;
    c->status = CAPSTAN__CERT_STATUS__CERT_STATUS_DELETED;
    c->has_status_changed_at = 1;
    c->status_changed_at = now;
    err = capstan_store_cert_put(&txn, c);
    if (err == 0) err = capstan_store_audit_append(&txn, 0, c->device, "stale_lsc_deleted", NULL);
    capstan__issued_cert__free_unpacked(c, NULL);
    done++;
  }
  if (err == 0) err = capstan_store_commit(&txn);
  capstan_store_abort(&txn);
  capstan_store_close(st);
  free(s.serials);
  if (err == CAPSTAN_ENOENT) {
    capstan_cli_error("no certificate with serial %s (see 'capstan cert list-stale')", o->args[1]);
    return CAPSTAN_EXIT_ERROR;
  }
  if (err == CAPSTAN_EINVAL) return CAPSTAN_EXIT_ERROR;
  if (err != 0) {
    capstan_cli_error("cannot delete stale certificates: %s", capstan_strerror(err));
    return CAPSTAN_EXIT_ERROR;
  }
  printf("deleted %zu stale certificates\n", done);
  return CAPSTAN_EXIT_OK;
}

#define CERT_USAGE                                  \
  "capstan cert export capf|tftp [--out FILE]\n"    \
  "       capstan cert list-stale [--json]\n"       \
  "       capstan cert delete-stale SERIAL|--all\n" \
  "       (all take --data-dir DIR)"

int capstan_cli_cert_main(int argc, char **argv) {
  capstan_cli_fopts_t o;
  int rc = capstan_cli_fopts_parse(
      argc, argv, CAPSTAN_FOPT_OUT | CAPSTAN_FOPT_JSON | CAPSTAN_FOPT_ALL, "cert", CERT_USAGE, &o);
  if (rc != 0) {
    capstan_cli_fopts_free(&o);
    return rc;
  }
  const char *cmd = o.nargs > 0 ? o.args[0] : "";
  if (o.help) {
    printf("usage: %s\n", CERT_USAGE);
  } else if (strcmp(cmd, "export") == 0 && o.nargs == 2 && !o.json && !o.all) {
    if (strcmp(o.args[1], "capf") == 0) {
      rc = cert_export(&o, CAPSTAN_IDENTITY_CAPF);
    } else if (strcmp(o.args[1], "tftp") == 0) {
      rc = cert_export(&o, CAPSTAN_IDENTITY_TFTP);
    } else {
      fprintf(stderr, "capstan: cert export: expected capf or tftp, got '%s'\nusage: %s\n",
              o.args[1], CERT_USAGE);
      rc = CAPSTAN_EXIT_USAGE;
    }
  } else if (strcmp(cmd, "list-stale") == 0 && o.nargs == 1 && o.out == NULL && !o.all) {
    rc = list_stale(&o);
  } else if (strcmp(cmd, "delete-stale") == 0 && o.nargs <= 2 && o.out == NULL && !o.json) {
    rc = delete_stale(&o, CERT_USAGE);
  } else {
    fprintf(stderr, "capstan: cert: unexpected arguments\nusage: %s\n", CERT_USAGE);
    rc = CAPSTAN_EXIT_USAGE;
  }
  capstan_cli_fopts_free(&o);
  return rc;
}

/* ---- reports --------------------------------------------------------------------- */

#define NSTATUS 6

typedef struct {
  uint64_t by_status[NSTATUS];
  uint64_t total;
  /* expiring */
  bool expiring;
  bool json;
  int64_t now, horizon;
  size_t n;
} report_ctx_t;

static int report_one(const Capstan__Device *d, void *arg) {
  report_ctx_t *r = arg;
  if (!r->expiring) {
    if ((unsigned)d->status < NSTATUS) r->by_status[d->status]++;
    r->total++;
    return 0;
  }
  if (!d->has_cert_der || d->cert_der.len == 0) return 0;
  int64_t na;
  if (capstan_cli_cert_not_after(d->cert_der.data, d->cert_der.len, &na) != 0 || na > r->horizon) {
    return 0;
  }
  char when[40];
  capstan_cli_format_time(na, when, sizeof(when));
  if (r->json) {
    printf("%s{\"name\":", r->n == 0 ? "\n" : ",\n");
    capstan_cli_json_string(stdout, d->name);
    printf(",\"cert_type\":\"%s\",\"not_after\":\"%s\",\"expired\":%s}",
           capstan_cert_type_name(d->cert_type), when, na <= r->now ? "true" : "false");
  } else {
    printf("%-20s %-8s %s%s\n", d->name, capstan_cert_type_name(d->cert_type), when,
           na <= r->now ? " (expired)" : "");
  }
  r->n++;
  return 0;
}

#define REPORT_USAGE                                   \
  "capstan report status [--json]\n"                   \
  "       capstan report expiring --days N [--json]\n" \
  "       (all take --data-dir DIR)"

int capstan_cli_report_main(int argc, char **argv) {
  capstan_cli_fopts_t o;
  int rc = capstan_cli_fopts_parse(argc, argv, CAPSTAN_FOPT_JSON | CAPSTAN_FOPT_DAYS, "report",
                                   REPORT_USAGE, &o);
  if (rc != 0) {
    capstan_cli_fopts_free(&o);
    return rc;
  }
  const char *cmd = o.nargs > 0 ? o.args[0] : "";
  report_ctx_t r = {.json = o.json, .now = (int64_t)time(NULL)};
  if (o.help) {
    printf("usage: %s\n", REPORT_USAGE);
    goto done;
  }
  if (o.nargs != 1 || (strcmp(cmd, "status") != 0 && strcmp(cmd, "expiring") != 0) ||
      (strcmp(cmd, "expiring") == 0) != ((o.seen & CAPSTAN_FOPT_DAYS) != 0)) {
    fprintf(stderr, "capstan: report: expected 'status' or 'expiring --days N'\nusage: %s\n",
            REPORT_USAGE);
    rc = CAPSTAN_EXIT_USAGE;
    goto done;
  }
  r.expiring = strcmp(cmd, "expiring") == 0;
  r.horizon = r.now + o.days * 86400;
  capstan_store_t *st;
  if (capstan_cli_open_store(capstan_store_data_dir(o.data_dir), false, &st) != 0) {
    rc = CAPSTAN_EXIT_ERROR;
    goto done;
  }
  if (r.expiring) {
    if (o.json) {
      printf("[");
    } else {
      printf("%-20s %-8s %s\n", "NAME", "CERT", "NOT AFTER");
    }
  }
  capstan_txn_t txn;
  int err = capstan_store_begin(st, false, &txn);
  if (err == 0) err = capstan_store_device_iterate(&txn, report_one, &r);
  capstan_store_abort(&txn);
  capstan_store_close(st);
  if (r.expiring && o.json) printf(r.n > 0 ? "\n]\n" : "]\n");
  if (err != 0) {
    capstan_cli_error("cannot read devices: %s", capstan_strerror(err));
    rc = CAPSTAN_EXIT_ERROR;
    goto done;
  }
  if (!r.expiring) {
    static const Capstan__OpStatus order[NSTATUS] = {
        CAPSTAN__OP_STATUS__OP_STATUS_PENDING,   CAPSTAN__OP_STATUS__OP_STATUS_IN_PROGRESS,
        CAPSTAN__OP_STATUS__OP_STATUS_SUCCEEDED, CAPSTAN__OP_STATUS__OP_STATUS_FAILED,
        CAPSTAN__OP_STATUS__OP_STATUS_EXPIRED,   CAPSTAN__OP_STATUS__OP_STATUS_NONE};
    if (o.json) {
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
  }
done:
  capstan_cli_fopts_free(&o);
  return rc;
}
