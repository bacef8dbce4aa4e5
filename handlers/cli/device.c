/* `capstan device ...`: add, set, show, list, remove, import, export,
 * generate-auth-strings. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <unistd.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "handlers/cli/cli.h"
#include "handlers/cli/files.h"
#include "core/files/encconf.h"
#include "core/base/error.h"
#include "storage/devices.h"

/* Options of every device subcommand; each subcommand accepts a subset. */
enum {
  O_OPERATION = 1 << 0,
  O_AUTH = 1 << 1,
  O_AUTH_STRING = 1 << 2,
  O_KEY = 1 << 3,
  O_COMPLETES_BY = 1 << 4,
  O_ENCRYPTED = 1 << 5,
  O_JSON = 1 << 6,
  O_SHOW_SECRETS = 1 << 7,
  O_STATUS = 1 << 8,
  O_GENERATE = 1 << 9,      /* add/set: --generate-auth-string */
  O_GENERATE_CSV = 1 << 10, /* import: --generate-auth-strings MODE */
  O_LENGTH = 1 << 11,
  O_NO_UPDATE = 1 << 12,
  O_UNIQUE = 1 << 13,
  O_SHARED = 1 << 14,
  O_DATA_DIR = 1 << 15,
  O_HELP = 1 << 16,
  O_EXPIRES_BEFORE = 1 << 17, /* bulk-set filters */
  O_NAME_PREFIX = 1 << 18,
  O_ALL = 1 << 19,
  O_DRY_RUN = 1 << 20,
  O_TEMPLATE = 1 << 21, /* add/set: --template NAME|none */
};

typedef struct {
  unsigned seen;
  const char *data_dir;
  Capstan__Operation operation;
  Capstan__AuthMode auth;
  const char *auth_string;
  Capstan__KeyAlg key_alg;
  uint32_t key_bits;
  int64_t completes_by;
  bool encrypted;
  Capstan__OpStatus status;
  capstan_generate_t generate;
  unsigned length;
  int64_t expires_before;
  const char *name_prefix;
  const char *template_name; /* NULL: --template none */
  char **args;               /* positional arguments */
  int nargs;
} opts_t;

typedef struct {
  const char *name;
  unsigned allowed;
  int nargs; /* positional arguments required */
  const char *usage;
  int (*run)(opts_t *o);
} subcmd_t;

static const struct option longopts[] = {
    {"operation", required_argument, NULL, 'o'},
    {"auth", required_argument, NULL, 'a'},
    {"auth-string", required_argument, NULL, 's'},
    {"key", required_argument, NULL, 'k'},
    {"completes-by", required_argument, NULL, 'c'},
    {"template", required_argument, NULL, 'T'},
    {"encrypted-config", required_argument, NULL, 'e'},
    {"json", no_argument, NULL, 'j'},
    {"show-secrets", no_argument, NULL, 'S'},
    {"status", required_argument, NULL, 't'},
    {"generate-auth-string", no_argument, NULL, 'g'},
    {"generate-auth-strings", required_argument, NULL, 'G'},
    {"auth-string-length", required_argument, NULL, 'l'},
    {"no-update", no_argument, NULL, 'n'},
    {"unique", no_argument, NULL, 'u'},
    {"shared", no_argument, NULL, 'H'},
    {"data-dir", required_argument, NULL, 'd'},
    {"help", no_argument, NULL, 'h'},
    {"expires-before", required_argument, NULL, 'E'},
    {"name-prefix", required_argument, NULL, 'P'},
    {"all", no_argument, NULL, 'A'},
    {"dry-run", no_argument, NULL, 'D'},
    {NULL, 0, NULL, 0},
};

static int usage_error(const subcmd_t *sc, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int usage_error(const subcmd_t *sc, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "capstan: device %s: ", sc->name);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, "\nusage: %s\n(see 'capstan device %s --help')\n", sc->usage, sc->name);
  return CAPSTAN_EXIT_USAGE;
}

static int parse_opts(const subcmd_t *sc, int argc, char **argv, opts_t *o) {
  memset(o, 0, sizeof(*o));
  o->key_alg = CAPSTAN__KEY_ALG__KEY_ALG_RSA;
  o->key_bits = 2048;
  o->auth = CAPSTAN__AUTH_MODE__AUTH_MODE_NULL;
  optind = 0; /* GNU: re-initialise, argv differs from any earlier parse */
  opterr = 0;
  int c;
  while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
    const char *a = optarg;
    unsigned bit = 0;
    switch (c) {
      case 'o':
        bit = O_OPERATION;
        if (capstan_operation_parse(a, &o->operation) != 0) {
          return usage_error(sc, "--operation must be one of %s; got '%s'",
                             capstan_operation_names(), a);
        }
        break;
      case 'a':
        bit = O_AUTH;
        if (capstan_auth_mode_parse(a, &o->auth) != 0) {
          return usage_error(sc, "--auth must be one of %s; got '%s'", capstan_auth_mode_names(),
                             a);
        }
        break;
      case 's':
        bit = O_AUTH_STRING;
        if (!capstan_auth_string_valid(a)) {
          return usage_error(sc, "--auth-string must be 4 to 10 digits");
        }
        o->auth_string = a;
        break;
      case 'k':
        bit = O_KEY;
        if (capstan_key_parse(a, &o->key_alg, &o->key_bits) != 0) {
          return usage_error(sc, "--key must be one of %s; got '%s'", capstan_key_names(), a);
        }
        break;
      case 'c':
        bit = O_COMPLETES_BY;
        if (strcmp(a, "none") == 0 || a[0] == '\0') {
          o->completes_by = 0;
        } else if (capstan_cli_parse_time(a, &o->completes_by) != 0) {
          return usage_error(sc,
                             "--completes-by must be YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS]Z (or "
                             "none); got '%s'",
                             a);
        }
        break;
      case 'T':
        bit = O_TEMPLATE;
        if (strcmp(a, "none") == 0) {
          o->template_name = NULL;
        } else if (capstan_cli_template_name_valid(a)) {
          o->template_name = a;
        } else {
          return usage_error(sc,
                             "--template must be a template name (capstan template list) or "
                             "none; got '%s'",
                             a);
        }
        break;
      case 'e':
        bit = O_ENCRYPTED;
        if (strcmp(a, "on") == 0) {
          o->encrypted = true;
        } else if (strcmp(a, "off") == 0) {
          o->encrypted = false;
        } else {
          return usage_error(sc, "--encrypted-config must be on or off; got '%s'", a);
        }
        break;
      case 'j':
        bit = O_JSON;
        break;
      case 'S':
        bit = O_SHOW_SECRETS;
        break;
      case 't':
        bit = O_STATUS;
        if (capstan_op_status_parse(a, &o->status) != 0) {
          return usage_error(sc, "--status must be one of %s; got '%s'", capstan_op_status_names(),
                             a);
        }
        break;
      case 'g':
        bit = O_GENERATE;
        break;
      case 'G':
        bit = O_GENERATE_CSV;
        if (strcmp(a, "unique") == 0) {
          o->generate = CAPSTAN_GENERATE_UNIQUE;
        } else if (strcmp(a, "shared") == 0) {
          o->generate = CAPSTAN_GENERATE_SHARED;
        } else {
          return usage_error(sc, "--generate-auth-strings must be unique or shared; got '%s'", a);
        }
        break;
      case 'l': {
        bit = O_LENGTH;
        char *end;
        long v = strtol(a, &end, 10);
        if (*end != '\0' || v < CAPSTAN_AUTH_STRING_MIN || v > CAPSTAN_AUTH_STRING_MAX) {
          return usage_error(sc, "--auth-string-length must be from 4 to 10; got '%s'", a);
        }
        o->length = (unsigned)v;
        break;
      }
      case 'n':
        bit = O_NO_UPDATE;
        break;
      case 'u':
        bit = O_UNIQUE;
        o->generate = CAPSTAN_GENERATE_UNIQUE;
        break;
      case 'H':
        bit = O_SHARED;
        o->generate = CAPSTAN_GENERATE_SHARED;
        break;
      case 'd':
        bit = O_DATA_DIR;
        o->data_dir = a;
        break;
      case 'h':
        bit = O_HELP;
        break;
      case 'E':
        bit = O_EXPIRES_BEFORE;
        if (capstan_cli_parse_time(a, &o->expires_before) != 0) {
          return usage_error(
              sc, "--expires-before must be YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS]Z; got '%s'", a);
        }
        break;
      case 'P':
        bit = O_NAME_PREFIX;
        o->name_prefix = a;
        break;
      case 'A':
        bit = O_ALL;
        break;
      case 'D':
        bit = O_DRY_RUN;
        break;
      case ':':
        return usage_error(sc, "option '%s' needs a value", argv[optind - 1]);
      default:
        return usage_error(sc, "unknown option '%s'", argv[optind - 1]);
    }
    if (!(sc->allowed & bit) && bit != O_HELP && bit != O_DATA_DIR) {
      return usage_error(sc, "option '%s' does not apply here", argv[optind - 1]);
    }
    o->seen |= bit;
  }
  if (o->seen & O_HELP) return 0;
  o->args = argv + optind;
  o->nargs = argc - optind;
  if (o->nargs < sc->nargs) return usage_error(sc, "missing argument");
  if (o->nargs > sc->nargs) return usage_error(sc, "unexpected argument '%s'", o->args[sc->nargs]);
  return 0;
}

static int open_store(opts_t *o, bool create, capstan_store_t **s) {
  return capstan_cli_open_store(capstan_store_data_dir(o->data_dir), create, s);
}

static int store_error(const char *what, int err) {
  if (err == CAPSTAN_ENOSPC) {
    capstan_cli_error("%s: the store is full (4 GiB map): remove old records", what);
  } else {
    capstan_cli_error("%s: %s", what, capstan_strerror(err));
  }
  return CAPSTAN_EXIT_ERROR;
}

/* ---- add / set ----------------------------------------------------------- */

/* Applies the options of add/set to |d|. Returns 0, or a usage error exit
 * code with the message printed. */
static int apply_opts(const subcmd_t *sc, opts_t *o, Capstan__Device *d, bool is_new, int64_t now,
                      char *generated) {
  generated[0] = '\0';
  if (is_new || (o->seen & O_OPERATION)) {
    bool rearm = is_new || capstan_device_should_rearm(d, o->operation);
    d->has_operation = 1;
    d->operation = o->operation;
    if (rearm) capstan_device_rearm(d, now);
  }
  if (is_new || (o->seen & O_AUTH)) {
    d->has_auth_mode = 1;
    d->auth_mode = o->auth;
  }
  if (o->seen & O_AUTH_STRING) {
    if (capstan_record_set_string(&d->auth_string, o->auth_string) != 0) return CAPSTAN_EXIT_ERROR;
  }
  if (o->seen & O_GENERATE) {
    if ((o->seen & O_AUTH_STRING)) {
      return usage_error(sc, "give either --auth-string or --generate-auth-string");
    }
    if (capstan_cli_random_digits(generated, o->length != 0 ? o->length : 6) != 0 ||
        capstan_record_set_string(&d->auth_string, generated) != 0) {
      capstan_cli_error("cannot generate an authentication string");
      return CAPSTAN_EXIT_ERROR;
    }
  }
  if (d->auth_mode == CAPSTAN__AUTH_MODE__AUTH_MODE_STRING &&
      (d->auth_string == NULL || d->auth_string[0] == '\0')) {
    return usage_error(sc,
                       "--auth string needs --auth-string DIGITS (4 to 10) or "
                       "--generate-auth-string");
  }
  if (is_new || (o->seen & O_KEY)) {
    d->has_key_alg = 1;
    d->key_alg = o->key_alg;
    d->has_key_bits = 1;
    d->key_bits = o->key_bits;
  }
  if (o->seen & O_COMPLETES_BY) {
    d->has_completes_by = o->completes_by != 0;
    d->completes_by = o->completes_by;
  }
  if (o->seen & O_ENCRYPTED) {
    d->has_encrypted_config = 1;
    d->encrypted_config = o->encrypted;
  }
  if ((o->seen & O_TEMPLATE) &&
      capstan_record_set_string(&d->template_name, o->template_name ? o->template_name : "") != 0) {
    return CAPSTAN_ENOMEM;
  }
  d->has_updated_at = 1;
  d->updated_at = now;
  return 0;
}

static int add_or_set(const subcmd_t *sc, opts_t *o, bool is_add) {
  const char *name = o->args[0];
  if (!capstan_device_name_valid(name)) {
    return usage_error(sc,
                       "'%s' is not a device name (SEP + 12 upper-case hex digits, or 1 to 64 of "
                       "A-Z a-z 0-9 . _ - starting with a letter)",
                       name);
  }
  if (is_add && !(o->seen & O_OPERATION)) return usage_error(sc, "--operation is required");
  if (is_add && !(o->seen & O_AUTH)) return usage_error(sc, "--auth is required");
  capstan_store_t *s;
  if (open_store(o, is_add, &s) != 0) return CAPSTAN_EXIT_ERROR;
  int64_t now = (int64_t)time(NULL);
  int ret = CAPSTAN_EXIT_OK;
  capstan_txn_t txn;
  Capstan__Device *d = NULL;
  char generated[16];
  int err = capstan_store_begin(s, true, &txn);
  if (err != 0) {
    ret = store_error("cannot start a transaction", err);
    goto out;
  }
  err = capstan_store_device_get(&txn, name, &d);
  if (is_add && err == 0) {
    capstan_cli_error("device '%s' already exists: use 'capstan device set %s ...' to change it",
                      name, name);
    ret = CAPSTAN_EXIT_ERROR;
    goto out;
  }
  if (!is_add && err == CAPSTAN_ENOENT) {
    capstan_cli_error("no device '%s': add it with 'capstan device add %s ...'", name, name);
    ret = CAPSTAN_EXIT_ERROR;
    goto out;
  }
  if (err != 0 && err != CAPSTAN_ENOENT) {
    ret = store_error("cannot read the device", err);
    goto out;
  }
  if (is_add) {
    d = capstan_device_new(name);
    if (d == NULL) {
      ret = store_error("cannot add the device", CAPSTAN_ENOMEM);
      goto out;
    }
    d->has_created_at = 1;
    d->created_at = now;
  }
  ret = apply_opts(sc, o, d, is_add, now, generated);
  if (ret != 0) goto out;
  err = capstan_store_device_put(&txn, d);
  if (err == 0) {
    err = capstan_store_audit_append(&txn, 0, name, is_add ? "device_added" : "device_changed",
                                     capstan_operation_name(d->operation));
  }
  if (err == 0) err = capstan_store_commit(&txn);
  if (err != 0) {
    ret = store_error(is_add ? "cannot add the device" : "cannot change the device", err);
    goto out;
  }
  if (generated[0] != '\0') printf("authentication string for %s: %s\n", name, generated);
  printf("%s %s: operation %s, status %s\n", is_add ? "added" : "updated", name,
         capstan_operation_name(d->operation), capstan_op_status_name(d->status));
out:
  capstan_store_abort(&txn);
  capstan__device__free_unpacked(d, NULL);
  capstan_store_close(s);
  return ret;
}

static const subcmd_t *g_sc;
static int run_add(opts_t *o) {
  return add_or_set(g_sc, o, true);
}
static int run_set(opts_t *o) {
  return add_or_set(g_sc, o, false);
}

/* ---- show / list ----------------------------------------------------------- */

static void json_time(FILE *f, const char *key, int64_t t, bool has) {
  fprintf(f, ",\"%s\":", key);
  if (!has || t == 0) {
    fputs("null", f);
    return;
  }
  char buf[40];
  capstan_cli_format_time(t, buf, sizeof(buf));
  capstan_cli_json_string(f, buf);
}

/* Writes the device's JSON object without its closing brace, so callers
 * can add members. */
static void json_device(FILE *f, const Capstan__Device *d, bool secrets) {
  fputs("{\"name\":", f);
  capstan_cli_json_string(f, d->name);
  fputs(",\"operation\":", f);
  capstan_cli_json_string(f, capstan_operation_name(d->operation));
  fputs(",\"auth_mode\":", f);
  capstan_cli_json_string(f, capstan_auth_mode_name(d->auth_mode));
  fprintf(f, ",\"auth_string_set\":%s",
          d->auth_string != NULL && d->auth_string[0] != '\0' ? "true" : "false");
  if (secrets) {
    fputs(",\"auth_string\":", f);
    capstan_cli_json_string(f, d->auth_string);
  }
  fputs(",\"key\":", f);
  capstan_cli_json_string(f, capstan_key_name(d->key_alg, d->key_bits));
  json_time(f, "completes_by", d->completes_by, d->has_completes_by);
  fprintf(f, ",\"encrypted_config\":%s", d->encrypted_config ? "true" : "false");
  fprintf(f, ",\"template\":");
  if (d->template_name && d->template_name[0]) {
    capstan_cli_json_string(f, d->template_name);
  } else {
    fprintf(f, "null");
  }
  fprintf(f, ",\"has_own_config\":%s", d->config_xml.len > 0 ? "true" : "false");
  /* Why the phone cannot get its encrypted configuration yet (or null). */
  const char *enc_why = capstan_encconf_unavailable_reason(d->encrypted_config, d->public_key.data, d->public_key.len);
  fprintf(f, ",\"encrypted_config_unavailable\":");
  if (enc_why) {
    capstan_cli_json_string(f, enc_why);
  } else {
    fprintf(f, "null");
  }
  fputs(",\"status\":", f);
  capstan_cli_json_string(f, capstan_op_status_name(d->status));
  fputs(",\"status_reason\":", f);
  capstan_cli_json_string(f, d->status_reason);
  fputs(",\"last_operation\":", f);
  capstan_cli_json_string(f, capstan_operation_name(d->last_operation));
  fprintf(f, ",\"attempts\":%u", d->attempts);
  json_time(f, "created_at", d->created_at, d->has_created_at);
  json_time(f, "status_changed_at", d->status_changed_at, d->has_status_changed_at);
  json_time(f, "last_attempt_at", d->last_attempt_at, d->has_last_attempt_at);
  fputs(",\"cert_type\":", f);
  capstan_cli_json_string(f, d->has_cert_der ? capstan_cert_type_name(d->cert_type) : NULL);
  fputs(",\"md5hash\":", f);
  capstan_cli_json_string(f, d->md5hash);
  json_time(f, "cert_seen_at", d->cert_seen_at, d->has_cert_seen_at);
  fprintf(f, ",\"certs_issued\":%zu", d->n_cert_history);
}

static void show_time(const char *label, int64_t t, bool has) {
  char buf[40] = "-";
  if (has && t != 0) capstan_cli_format_time(t, buf, sizeof(buf));
  printf("%-18s %s\n", label, buf);
}

static int print_history(capstan_txn_t *txn, const Capstan__Device *d, bool json) {
  size_t printed = 0;
  for (size_t i = 0; i < d->n_cert_history; i++) {
    if (d->cert_history[i].len != CAPSTAN_SERIAL_LEN) continue;
    char hex[2 * CAPSTAN_SERIAL_LEN + 1];
    capstan_cli_hex(d->cert_history[i].data, CAPSTAN_SERIAL_LEN, hex);
    Capstan__IssuedCert *c = NULL;
    int err = capstan_store_cert_get(txn, d->cert_history[i].data, &c);
    if (err != 0 && err != CAPSTAN_ENOENT) return err;
    const char *st = c != NULL ? capstan_cert_status_name(c->status) : "removed";
    char issued[40] = "-", until[40] = "-";
    if (c != NULL && c->issued_at != 0) capstan_cli_format_time(c->issued_at, issued, 40);
    if (c != NULL && c->not_after != 0) capstan_cli_format_time(c->not_after, until, 40);
    if (json) {
      fprintf(stdout,
              "%s{\"serial\":\"%s\",\"status\":\"%s\",\"issued_at\":", printed > 0 ? "," : "", hex,
              st);
      capstan_cli_json_string(stdout, c != NULL && c->issued_at != 0 ? issued : NULL);
      fputs(",\"not_after\":", stdout);
      capstan_cli_json_string(stdout, c != NULL && c->not_after != 0 ? until : NULL);
      fputc('}', stdout);
    } else {
      printf("  %s  %-9s issued %s  expires %s\n", hex, st, issued, until);
    }
    capstan__issued_cert__free_unpacked(c, NULL);
    printed++;
  }
  return 0;
}

static int run_show(opts_t *o) {
  const char *name = o->args[0];
  capstan_store_t *s;
  if (open_store(o, false, &s) != 0) return CAPSTAN_EXIT_ERROR;
  capstan_txn_t txn;
  Capstan__Device *d = NULL;
  int ret = CAPSTAN_EXIT_OK;
  int err = capstan_store_begin(s, false, &txn);
  if (err == 0) err = capstan_store_device_get(&txn, name, &d);
  if (err == CAPSTAN_ENOENT) {
    capstan_cli_error("no device '%s' (see 'capstan device list')", name);
    ret = CAPSTAN_EXIT_ERROR;
    goto out;
  }
  if (err != 0) {
    ret = store_error("cannot read the device", err);
    goto out;
  }
  bool secrets = o->seen & O_SHOW_SECRETS;
  if (o->seen & O_JSON) {
    json_device(stdout, d, secrets);
    fputs(",\"cert_history\":[", stdout);
    err = print_history(&txn, d, true);
    fputs("]}\n", stdout);
    if (err != 0) ret = store_error("cannot read the certificate history", err);
  } else {
    printf("%-18s %s\n", "name:", d->name);
    printf("%-18s %s\n", "operation:", capstan_operation_name(d->operation));
    printf("%-18s %s\n", "auth mode:", capstan_auth_mode_name(d->auth_mode));
    if (d->auth_string != NULL && d->auth_string[0] != '\0') {
      printf("%-18s %s\n",
             "auth string:", secrets ? d->auth_string : "(set; --show-secrets shows it)");
    } else {
      printf("%-18s %s\n", "auth string:", "-");
    }
    printf("%-18s %s\n", "key:", capstan_key_name(d->key_alg, d->key_bits));
    show_time("completes by:", d->completes_by, d->has_completes_by);
    printf("%-18s %s\n", "base config:",
           d->config_xml.len > 0                     ? "the device's own (device config show)"
           : d->template_name && d->template_name[0] ? d->template_name
                                                     : "default");
    printf("%-18s %s\n", "encrypted config:", d->encrypted_config ? "on" : "off");
    const char *enc_why = capstan_encconf_unavailable_reason(d->encrypted_config, d->public_key.data, d->public_key.len);
    if (enc_why) printf("%-18s not available yet: %s\n", "encrypted file:", enc_why);
    printf("%-18s %s\n", "status:", capstan_op_status_name(d->status));
    printf("%-18s %s\n", "status reason:", d->status_reason != NULL ? d->status_reason : "-");
    printf("%-18s %s\n", "last operation:", capstan_operation_name(d->last_operation));
    printf("%-18s %u\n", "attempts:", d->attempts);
    show_time("last attempt:", d->last_attempt_at, d->has_last_attempt_at);
    show_time("status changed:", d->status_changed_at, d->has_status_changed_at);
    show_time("created:", d->created_at, d->has_created_at);
    if (d->has_cert_der) {
      printf("%-18s %s, md5 %s\n", "certificate:", capstan_cert_type_name(d->cert_type),
             d->md5hash != NULL ? d->md5hash : "-");
      show_time("certificate seen:", d->cert_seen_at, d->has_cert_seen_at);
    } else {
      printf("%-18s %s\n", "certificate:", "none on record");
    }
    printf("%-18s %zu\n", "LSCs issued:", d->n_cert_history);
    err = print_history(&txn, d, false);
    if (err != 0) ret = store_error("cannot read the certificate history", err);
  }
out:
  capstan_store_abort(&txn);
  capstan__device__free_unpacked(d, NULL);
  capstan_store_close(s);
  return ret;
}

typedef struct {
  opts_t *o;
  size_t n;
} list_ctx_t;

static int list_one(const Capstan__Device *d, void *arg) {
  list_ctx_t *l = arg;
  if ((l->o->seen & O_STATUS) && d->status != l->o->status) return 0;
  if (l->o->seen & O_JSON) {
    fputs(l->n == 0 ? "\n" : ",\n", stdout);
    json_device(stdout, d, false);
    fputc('}', stdout);
  } else {
    printf("%-20s %-13s %-7s %-8s %-12s %8u  %s\n", d->name, capstan_operation_name(d->operation),
           capstan_auth_mode_name(d->auth_mode), capstan_key_name(d->key_alg, d->key_bits),
           capstan_op_status_name(d->status), d->attempts,
           d->status_reason != NULL ? d->status_reason : "");
  }
  l->n++;
  return 0;
}

static int run_list(opts_t *o) {
  capstan_store_t *s;
  if (open_store(o, false, &s) != 0) return CAPSTAN_EXIT_ERROR;
  list_ctx_t l = {o, 0};
  bool json = o->seen & O_JSON;
  if (json) {
    fputs("[", stdout);
  } else {
    printf("%-20s %-13s %-7s %-8s %-12s %8s  %s\n", "NAME", "OPERATION", "AUTH", "KEY", "STATUS",
           "ATTEMPTS", "REASON");
  }
  capstan_txn_t txn;
  int err = capstan_store_begin(s, false, &txn);
  if (err == 0) err = capstan_store_device_iterate(&txn, list_one, &l);
  capstan_store_abort(&txn);
  capstan_store_close(s);
  if (json) fputs(l.n > 0 ? "\n]\n" : "]\n", stdout);
  if (err != 0) return store_error("cannot list devices", err);
  return CAPSTAN_EXIT_OK;
}

static int run_remove(opts_t *o) {
  const char *name = o->args[0];
  capstan_store_t *s;
  if (open_store(o, false, &s) != 0) return CAPSTAN_EXIT_ERROR;
  capstan_txn_t txn;
  int err = capstan_store_begin(s, true, &txn);
  if (err == 0) err = capstan_store_device_delete(&txn, name);
  if (err == 0) err = capstan_store_audit_append(&txn, 0, name, "device_removed", NULL);
  if (err == 0) err = capstan_store_commit(&txn);
  capstan_store_abort(&txn);
  capstan_store_close(s);
  if (err == CAPSTAN_ENOENT) {
    capstan_cli_error("no device '%s' (see 'capstan device list')", name);
    return CAPSTAN_EXIT_ERROR;
  }
  if (err != 0) return store_error("cannot remove the device", err);
  printf("removed %s\n", name);
  return CAPSTAN_EXIT_OK;
}

/* ---- import / export --------------------------------------------------------- */

static int run_import(opts_t *o) {
  const char *path = o->args[0];
  if ((o->seen & O_LENGTH) && !(o->seen & O_GENERATE_CSV)) {
    return usage_error(g_sc, "--auth-string-length goes with --generate-auth-strings");
  }
  uint8_t *data;
  size_t len;
  if (capstan_cli_read_file(path, CAPSTAN_CSV_MAX_FILE, &data, &len) != 0) {
    return CAPSTAN_EXIT_ERROR;
  }
  const char *fname = strcmp(path, "-") == 0 ? "<stdin>" : path;
  char err[512];
  capstan_device_row_t *rows = NULL;
  size_t nrows = 0;
  int rc = capstan_device_csv_parse(fname, data, len, &rows, &nrows, err, sizeof(err));
  free(data);
  if (rc != 0) {
    capstan_cli_error("%s", err);
    capstan_cli_error("nothing was imported");
    return CAPSTAN_EXIT_ERROR;
  }
  capstan_store_t *s;
  if (open_store(o, true, &s) != 0) {
    free(rows);
    return CAPSTAN_EXIT_ERROR;
  }
  capstan_device_import_opts_t io = {
      .fname = fname,
      .no_update = o->seen & O_NO_UPDATE,
      .generate = o->generate,
      .auth_string_length = o->length,
      .now = (int64_t)time(NULL),
  };
  size_t created = 0, updated = 0;
  capstan_txn_t txn;
  rc = capstan_store_begin(s, true, &txn);
  if (rc != 0) {
    snprintf(err, sizeof(err), "cannot start a transaction: %s", capstan_strerror(rc));
  } else {
    rc = capstan_device_import_rows(&txn, rows, nrows, &io, &created, &updated, err, sizeof(err));
  }
  if (rc == 0) {
    char detail[160];
    snprintf(detail, sizeof(detail), "created=%zu updated=%zu", created, updated);
    rc = capstan_store_audit_append(&txn, 0, NULL, "device_import", detail);
    if (rc == 0) rc = capstan_store_commit(&txn);
    if (rc != 0) snprintf(err, sizeof(err), "cannot commit: %s", capstan_strerror(rc));
  }
  capstan_store_abort(&txn);
  capstan_store_close(s);
  free(rows);
  if (rc != 0) {
    capstan_cli_error("%s", err);
    capstan_cli_error("nothing was imported");
    return CAPSTAN_EXIT_ERROR;
  }
  printf("imported %zu devices: %zu added, %zu updated\n", created + updated, created, updated);
  return CAPSTAN_EXIT_OK;
}

static int run_export(opts_t *o) {
  const char *path = o->args[0];
  capstan_store_t *s;
  if (open_store(o, false, &s) != 0) return CAPSTAN_EXIT_ERROR;
  bool to_stdout = strcmp(path, "-") == 0;
  FILE *f = stdout;
  char tmp[4096];
  if (!to_stdout) {
    /* Write beside the target and rename, so a failed export never leaves a
     * truncated file that a later import would take for the whole list. */
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    /* The file holds authentication strings: readable by the owner only. */
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    f = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (f == NULL) {
      if (fd >= 0) close(fd);
      capstan_cli_error("cannot write '%s': %s", tmp, strerror(errno));
      capstan_store_close(s);
      return CAPSTAN_EXIT_ERROR;
    }
  }
  capstan_txn_t txn;
  int err = capstan_store_begin(s, false, &txn);
  if (err == 0) err = capstan_device_csv_export(&txn, f);
  capstan_store_abort(&txn);
  capstan_store_close(s);
  if (fflush(f) != 0 || ferror(f)) err = CAPSTAN_EIO;
  if (!to_stdout) {
    if (fclose(f) != 0) err = CAPSTAN_EIO;
    if (err == 0 && rename(tmp, path) != 0) err = -errno;
    if (err != 0) unlink(tmp);
  }
  if (err != 0) return store_error("cannot export devices", err);
  return CAPSTAN_EXIT_OK;
}

/* ---- generate-auth-strings ----------------------------------------------------- */

typedef struct {
  opts_t *o;
  char **names;
  size_t n, cap;
} collect_t;

static int collect_string_mode(const Capstan__Device *d, void *arg) {
  collect_t *c = arg;
  if (d->auth_mode != CAPSTAN__AUTH_MODE__AUTH_MODE_STRING) return 0;
  if ((c->o->seen & O_STATUS) ? d->status != c->o->status
                              : d->operation == CAPSTAN__OPERATION__OPERATION_NONE) {
    return 0;
  }
  if (c->n == c->cap) {
    size_t cap = c->cap == 0 ? 256 : c->cap * 2;
    char **n = realloc(c->names, cap * sizeof(char *));
    if (n == NULL) return CAPSTAN_ENOMEM;
    c->names = n;
    c->cap = cap;
  }
  c->names[c->n] = strdup(d->name);
  if (c->names[c->n] == NULL) return CAPSTAN_ENOMEM;
  c->n++;
  return 0;
}

static int run_generate(opts_t *o) {
  if ((o->seen & O_UNIQUE) && (o->seen & O_SHARED)) {
    return usage_error(g_sc, "give one of --unique or --shared");
  }
  if (!(o->seen & (O_UNIQUE | O_SHARED))) o->generate = CAPSTAN_GENERATE_UNIQUE;
  unsigned len = o->length != 0 ? o->length : 6;
  capstan_store_t *s;
  if (open_store(o, false, &s) != 0) return CAPSTAN_EXIT_ERROR;
  collect_t c = {.o = o};
  capstan_txn_t txn;
  int64_t now = (int64_t)time(NULL);
  char shared[16] = "";
  int err = capstan_store_begin(s, true, &txn);
  if (err == 0) err = capstan_store_device_iterate(&txn, collect_string_mode, &c);
  if (err == 0 && o->generate == CAPSTAN_GENERATE_SHARED) {
    err = capstan_cli_random_digits(shared, len);
  }
  for (size_t i = 0; err == 0 && i < c.n; i++) {
    Capstan__Device *d;
    err = capstan_store_device_get(&txn, c.names[i], &d);
    if (err != 0) break;
    char fresh[16];
    if (o->generate == CAPSTAN_GENERATE_UNIQUE) err = capstan_cli_random_digits(fresh, len);
    if (err == 0) {
      err = capstan_record_set_string(&d->auth_string,
                                      o->generate == CAPSTAN_GENERATE_SHARED ? shared : fresh);
    }
    d->has_updated_at = 1;
    d->updated_at = now;
    if (err == 0) err = capstan_store_device_put(&txn, d);
    capstan__device__free_unpacked(d, NULL);
  }
  if (err == 0) {
    err = capstan_store_audit_append(&txn, 0, NULL, "auth_strings_generated",
                                     o->generate == CAPSTAN_GENERATE_SHARED ? "shared" : "unique");
  }
  if (err == 0) err = capstan_store_commit(&txn);
  capstan_store_abort(&txn);
  capstan_store_close(s);
  for (size_t i = 0; i < c.n; i++) free(c.names[i]);
  free(c.names);
  if (err != 0) return store_error("cannot generate authentication strings", err);
  printf(
      "generated %s for %zu devices; see them with 'capstan device "
      "export FILE' or 'capstan device show NAME --show-secrets'\n",
      o->generate == CAPSTAN_GENERATE_SHARED ? "one shared authentication string"
                                             : "unique authentication strings",
      c.n);
  return CAPSTAN_EXIT_OK;
}

/* ---- bulk-set ---------------------------------------------------------------- */

static bool bulk_match(const opts_t *o, const Capstan__Device *d) {
  if ((o->seen & O_STATUS) && d->status != o->status) return false;
  if ((o->seen & O_NAME_PREFIX) && strncmp(d->name, o->name_prefix, strlen(o->name_prefix)) != 0) {
    return false;
  }
  if (o->seen & O_EXPIRES_BEFORE) {
    int64_t na;
    if (!d->has_cert_der ||
        capstan_cli_cert_not_after(d->cert_der.data, d->cert_der.len, &na) != 0 ||
        na >= o->expires_before) {
      return false;
    }
  }
  return true;
}

static int collect_matching(const Capstan__Device *d, void *arg);

static int run_bulk_set(opts_t *o) {
  const unsigned filters = O_STATUS | O_NAME_PREFIX | O_EXPIRES_BEFORE;
  const unsigned changes =
      O_OPERATION | O_AUTH | O_AUTH_STRING | O_KEY | O_COMPLETES_BY | O_ENCRYPTED;
  if (!(o->seen & (filters | O_ALL))) {
    return usage_error(g_sc,
                       "choose devices with --status, --name-prefix, --expires-before, or --all");
  }
  if ((o->seen & O_ALL) && (o->seen & filters)) {
    return usage_error(g_sc, "--all does not combine with filters");
  }
  if (!(o->seen & changes)) return usage_error(g_sc, "nothing to change");
  capstan_store_t *s;
  if (open_store(o, false, &s) != 0) return CAPSTAN_EXIT_ERROR;
  int64_t now = (int64_t)time(NULL);
  int ret = CAPSTAN_EXIT_OK;
  collect_t c = {.o = o};
  capstan_txn_t txn;
  int err = capstan_store_begin(s, true, &txn);
  if (err == 0) err = capstan_store_device_iterate(&txn, collect_matching, &c);
  if (err != 0) {
    ret = store_error("cannot read devices", err);
    goto out;
  }
  for (size_t i = 0; i < c.n && !(o->seen & O_DRY_RUN); i++) {
    Capstan__Device *d;
    char generated[16];
    err = capstan_store_device_get(&txn, c.names[i], &d);
    if (err != 0) {
      ret = store_error("cannot read a device", err);
      goto out;
    }
    ret = apply_opts(g_sc, o, d, false, now, generated);
    if (ret == 0) {
      err = capstan_store_device_put(&txn, d);
      if (err != 0) ret = store_error("cannot change a device", err);
    } else {
      capstan_cli_error("device '%s' could not take the change; nothing was changed", d->name);
    }
    capstan__device__free_unpacked(d, NULL);
    if (ret != 0) goto out;
  }
  if (!(o->seen & O_DRY_RUN)) {
    char detail[64];
    snprintf(detail, sizeof(detail), "devices=%zu", c.n);
    err = capstan_store_audit_append(&txn, 0, NULL, "device_bulk_set", detail);
    if (err == 0) err = capstan_store_commit(&txn);
    if (err != 0) {
      ret = store_error("cannot change devices", err);
      goto out;
    }
  }
  printf("%s %zu devices\n", (o->seen & O_DRY_RUN) ? "would change" : "changed", c.n);
out:
  capstan_store_abort(&txn);
  capstan_store_close(s);
  for (size_t i = 0; i < c.n; i++) free(c.names[i]);
  free(c.names);
  return ret;
}

static int collect_matching(const Capstan__Device *d, void *arg) {
  collect_t *c = arg;
  if (!bulk_match(c->o, d)) return 0;
  if (c->n == c->cap) {
    size_t cap = c->cap == 0 ? 256 : c->cap * 2;
    char **n = realloc(c->names, cap * sizeof(char *));
    if (n == NULL) return CAPSTAN_ENOMEM;
    c->names = n;
    c->cap = cap;
  }
  c->names[c->n] = strdup(d->name);
  if (c->names[c->n] == NULL) return CAPSTAN_ENOMEM;
  c->n++;
  return 0;
}

/* ---- dispatch ------------------------------------------------------------------ */

#define ADDSET_OPTS                                                                        \
  (O_OPERATION | O_AUTH | O_AUTH_STRING | O_GENERATE | O_LENGTH | O_KEY | O_COMPLETES_BY | \
   O_ENCRYPTED | O_TEMPLATE)
#define ADDSET_USAGE                                                                        \
  " NAME --operation install|delete|troubleshoot|none --auth string|null|lsc|mic\n"         \
  "         [--auth-string DIGITS | --generate-auth-string [--auth-string-length 4..10]]\n" \
  "         [--key rsa512|rsa1024|rsa2048|rsa3072|rsa4096|ec256|ec384|ec521]\n"             \
  "         [--completes-by YYYY-MM-DD[THH:MM[:SS]Z]|none] [--encrypted-config on|off]\n"   \
  "         [--template NAME|none] [--data-dir DIR]"

static const subcmd_t subcmds[] = {
    {"add", ADDSET_OPTS, 1, "capstan device add" ADDSET_USAGE, run_add},
    {"set", ADDSET_OPTS, 1,
     "capstan device set NAME [options of 'device add']\n"
     "         (--operation re-arms the device: status pending, attempts 0)",
     run_set},
    {"show", O_JSON | O_SHOW_SECRETS, 1, "capstan device show NAME [--json] [--show-secrets]",
     run_show},
    {"list", O_JSON | O_STATUS, 0,
     "capstan device list [--json] [--status pending|in-progress|succeeded|failed|expired|none]",
     run_list},
    {"remove", 0, 1, "capstan device remove NAME", run_remove},
    {"import", O_GENERATE_CSV | O_LENGTH | O_NO_UPDATE, 1,
     "capstan device import FILE.csv|- [--generate-auth-strings unique|shared]\n"
     "         [--auth-string-length 4..10] [--no-update]\n"
     "         header: " CAPSTAN_DEVICE_CSV_HEADER "\n"
     "         all rows are imported in one transaction, or none",
     run_import},
    {"export", 0, 1, "capstan device export FILE.csv|-", run_export},
    {"bulk-set",
     O_OPERATION | O_AUTH | O_AUTH_STRING | O_KEY | O_COMPLETES_BY | O_ENCRYPTED | O_STATUS |
         O_NAME_PREFIX | O_EXPIRES_BEFORE | O_ALL | O_DRY_RUN,
     0,
     "capstan device bulk-set (--all | [--status STATUS] [--name-prefix P]\n"
     "         [--expires-before DATE]) [--dry-run] CHANGES\n"
     "         CHANGES: --operation, --auth, --auth-string, --key, --completes-by,\n"
     "         --encrypted-config as for 'device set'; one transaction for all devices\n"
     "         (--expires-before: the current certificate's notAfter is before DATE)",
     run_bulk_set},
    {"generate-auth-strings", O_UNIQUE | O_SHARED | O_STATUS | O_LENGTH, 0,
     "capstan device generate-auth-strings [--unique|--shared] [--status STATUS]\n"
     "         [--auth-string-length 4..10]\n"
     "         (string-mode devices with an operation, or with STATUS)",
     run_generate},
};

static void device_usage(FILE *f) {
  fprintf(f, "usage: capstan device <command> ... [--data-dir DIR]\ncommands:\n");
  for (size_t i = 0; i < sizeof(subcmds) / sizeof(subcmds[0]); i++) {
    fprintf(f, "  %s\n", subcmds[i].name);
  }
  fprintf(f, "see 'capstan device <command> --help'\n");
}

int capstan_cli_device_main(int argc, char **argv) {
  if (argc < 2) {
    device_usage(stderr);
    return CAPSTAN_EXIT_USAGE;
  }
  if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
      strcmp(argv[1], "help") == 0) {
    device_usage(stdout);
    return CAPSTAN_EXIT_OK;
  }
  if (strcmp(argv[1], "config") == 0) return capstan_cli_devconfig_main(argc - 1, argv + 1);
  for (size_t i = 0; i < sizeof(subcmds) / sizeof(subcmds[0]); i++) {
    const subcmd_t *sc = &subcmds[i];
    if (strcmp(argv[1], sc->name) != 0) continue;
    g_sc = sc;
    opts_t o;
    int rc = parse_opts(sc, argc - 1, argv + 1, &o);
    if (rc != 0) return rc;
    if (o.seen & O_HELP) {
      printf("usage: %s\n", sc->usage);
      return CAPSTAN_EXIT_OK;
    }
    return sc->run(&o);
  }
  capstan_cli_error("unknown device command '%s'", argv[1]);
  device_usage(stderr);
  return CAPSTAN_EXIT_USAGE;
}
