/* `capstan device ...`: add, set, show, list, remove, cert, history, import,
 * export, bulk-set, generate-auth-strings (and `device config`,
 * devconfig.c). */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "handlers/cli/cli.h"
#include "handlers/cli/files.h"
#include "core/files/encconf.h"
#include "core/base/error.h"
#include "core/pki/pki.h"
#include "core/settings.h"
#include "storage/devices.h"

/* Options of the device subcommands (one table); each subcommand takes a
 * subset. O(X) is the bit of OPT_X. */
enum {
  OPT_OPERATION,
  OPT_AUTH,
  OPT_AUTH_STRING,
  OPT_KEY,
  OPT_COMPLETES_BY,
  OPT_ENCRYPTED,
  OPT_SHOW_SECRETS,
  OPT_STATUS,
  OPT_GENERATE,     /* add/set: --generate-auth-string */
  OPT_GENERATE_CSV, /* import: --generate-auth-strings MODE */
  OPT_LENGTH,
  OPT_NO_UPDATE,
  OPT_UNIQUE,
  OPT_SHARED,
  OPT_EXPIRES_BEFORE, /* bulk-set filters */
  OPT_NAME_PREFIX,
  OPT_ALL,
  OPT_DRY_RUN,
  OPT_TEMPLATE,     /* add/set: --template NAME|none */
  OPT_SINCE,        /* history */
  OPT_ANY_NAME,     /* add/set/import: names other than SEP + 12 hex digits */
  OPT_REARM,        /* import: schedule succeeded devices again */
  OPT_REPLACE_AUTH, /* import: replace authentication strings already set */
  OPT_PREFIX,       /* list: --prefix (or --name-prefix, as for bulk-set) */
  OPT_OUT,          /* cert: --out FILE */
  OPT_ISSUER,       /* add/set: --issuer capf|est|mscs|offline|default */
  NOPTS
};
#define O(x) CAPSTAN_CLI_OPT(OPT_##x)

/* The option values, checked and parsed by the table's set functions. */
typedef struct {
  Capstan__Operation operation;
  Capstan__AuthMode auth;
  const char *auth_string;
  Capstan__KeyAlg key_alg;
  uint32_t key_bits;
  uint32_t issuer; /* Device.issuer: 0 default, else capstan_issuer_t + 1 */
  int64_t completes_by;
  bool encrypted;
  Capstan__OpStatus status;
  capstan_generate_t generate; /* --generate-auth-strings */
  unsigned length;
  int64_t expires_before;
  const char *template_name; /* NULL: --template none */
  int64_t since_ns;          /* history --since */
} opts_t;

#define TIME_FORMS "YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS]Z"

/* The end of a set function for an enumerated value: |parse_rc| is the
 * parser's result, |names| the values it takes. */
static int one_of(int parse_rc, const char *option, const char *names, const char *a, char *why,
                  size_t len) {
  if (parse_rc == 0) return 0;
  snprintf(why, len, "%s must be one of %s; got '%s'", option, names, a);
  return -1;
}

static int set_operation(void *ctx, const char *a, char *why, size_t len) {
  opts_t *o = ctx;
  return one_of(capstan_operation_parse(a, &o->operation), "--operation", capstan_operation_names(),
                a, why, len);
}

static int set_auth(void *ctx, const char *a, char *why, size_t len) {
  opts_t *o = ctx;
  return one_of(capstan_auth_mode_parse(a, &o->auth), "--auth", capstan_auth_mode_names(), a, why,
                len);
}

static int set_auth_string(void *ctx, const char *a, char *why, size_t len) {
  opts_t *o = ctx;
  o->auth_string = a;
  if (capstan_auth_string_valid(a)) return 0;
  snprintf(why, len, "--auth-string must be 4 to 10 digits");
  return -1;
}

static int set_key(void *ctx, const char *a, char *why, size_t len) {
  opts_t *o = ctx;
  return one_of(capstan_key_parse(a, &o->key_alg, &o->key_bits), "--key", capstan_key_names(), a,
                why, len);
}

static int set_issuer(void *ctx, const char *a, char *why, size_t len) {
  opts_t *o = ctx;
  unsigned issuer = 0;
  if (strcmp(a, "default") == 0) {
    o->issuer = 0;
    return 0;
  }
  if (capstan_issuer_parse(a, &issuer) == 0) {
    o->issuer = issuer + 1;
    return 0;
  }
  snprintf(why, len, "--issuer must be capf, est, mscs, offline or default, got '%s'", a);
  return -1;
}

static int set_completes_by(void *ctx, const char *a, char *why, size_t len) {
  opts_t *o = ctx;
  o->completes_by = 0;
  if (strcmp(a, "none") == 0 || a[0] == '\0') return 0;
  if (capstan_cli_parse_deadline(a, &o->completes_by) == 0) {
    if (o->completes_by < (int64_t)time(NULL)) {
      char t[96];
      capstan_cli_format_deadline(o->completes_by, t, sizeof(t));
      capstan_cli_error(
          "warning: --completes-by %s is in the past: a phone that connects gets "
          "its operation expired, not run",
          t);
    }
    return 0;
  }
  snprintf(why, len, "--completes-by must be " CAPSTAN_DEADLINE_FORMS " (or none); got '%s'", a);
  return -1;
}

static int set_template(void *ctx, const char *a, char *why, size_t len) {
  opts_t *o = ctx;
  o->template_name = strcmp(a, "none") == 0 ? NULL : a;
  if (o->template_name == NULL || capstan_cli_template_name_valid(a)) return 0;
  snprintf(why, len, "--template must be a template name (capstan template list) or none; got '%s'",
           a);
  return -1;
}

static int set_encrypted(void *ctx, const char *a, char *why, size_t len) {
  opts_t *o = ctx;
  o->encrypted = strcmp(a, "on") == 0;
  if (o->encrypted || strcmp(a, "off") == 0) return 0;
  snprintf(why, len, "--encrypted-config must be on or off; got '%s'", a);
  return -1;
}

static int set_status(void *ctx, const char *a, char *why, size_t len) {
  opts_t *o = ctx;
  /* The metric label's spelling of earlier versions, for old scripts. */
  if (strcmp(a, "in_progress") == 0) a = "in-progress";
  return one_of(capstan_op_status_parse(a, &o->status), "--status", capstan_op_status_names(), a,
                why, len);
}

static int set_generate_csv(void *ctx, const char *a, char *why, size_t len) {
  opts_t *o = ctx;
  if (strcmp(a, "unique") == 0) {
    o->generate = CAPSTAN_GENERATE_UNIQUE;
  } else if (strcmp(a, "shared") == 0) {
    o->generate = CAPSTAN_GENERATE_SHARED;
  } else {
    snprintf(why, len, "--generate-auth-strings must be unique or shared; got '%s'", a);
    return -1;
  }
  return 0;
}

static int set_length(void *ctx, const char *a, char *why, size_t len) {
  opts_t *o = ctx;
  char *end;
  long v = strtol(a, &end, 10);
  if (*end != '\0' || a[0] == '\0' || v < CAPSTAN_AUTH_STRING_MIN || v > CAPSTAN_AUTH_STRING_MAX) {
    snprintf(why, len, "--auth-string-length must be from 4 to 10; got '%s'", a);
    return -1;
  }
  o->length = (unsigned)v;
  return 0;
}

static int set_expires_before(void *ctx, const char *a, char *why, size_t len) {
  opts_t *o = ctx;
  if (capstan_cli_parse_time(a, &o->expires_before) == 0) return 0;
  snprintf(why, len, "--expires-before must be " TIME_FORMS "; got '%s'", a);
  return -1;
}

static int set_since(void *ctx, const char *a, char *why, size_t len) {
  opts_t *o = ctx;
  if (capstan_cli_parse_since(a, capstan_cli_now_ns(), &o->since_ns) == 0) return 0;
  snprintf(why, len, "--since must be " CAPSTAN_CLI_SINCE_FORMS "; got '%s'", a);
  return -1;
}

static const capstan_cli_opt_t device_opts[NOPTS] = {
    [OPT_OPERATION] = {"operation", true, set_operation},
    [OPT_AUTH] = {"auth", true, set_auth},
    [OPT_AUTH_STRING] = {"auth-string", true, set_auth_string},
    [OPT_KEY] = {"key", true, set_key},
    [OPT_ISSUER] = {"issuer", true, set_issuer},
    [OPT_COMPLETES_BY] = {"completes-by", true, set_completes_by},
    [OPT_TEMPLATE] = {"template", true, set_template},
    [OPT_ENCRYPTED] = {"encrypted-config", true, set_encrypted},
    [OPT_SHOW_SECRETS] = {"show-secrets", false, NULL},
    [OPT_STATUS] = {"status", true, set_status},
    [OPT_GENERATE] = {"generate-auth-string", false, NULL},
    [OPT_GENERATE_CSV] = {"generate-auth-strings", true, set_generate_csv},
    [OPT_LENGTH] = {"auth-string-length", true, set_length},
    [OPT_NO_UPDATE] = {"no-update", false, NULL},
    [OPT_UNIQUE] = {"unique", false, NULL},
    [OPT_SHARED] = {"shared", false, NULL},
    [OPT_EXPIRES_BEFORE] = {"expires-before", true, set_expires_before},
    [OPT_NAME_PREFIX] = {"name-prefix", true, NULL},
    [OPT_ALL] = {"all", false, NULL},
    [OPT_DRY_RUN] = {"dry-run", false, NULL},
    [OPT_SINCE] = {"since", true, set_since},
    [OPT_ANY_NAME] = {"any-name", false, NULL},
    [OPT_REARM] = {"rearm", false, NULL},
    [OPT_PREFIX] = {"prefix", true, NULL},
    [OPT_OUT] = {"out", true, NULL},
    [OPT_REPLACE_AUTH] = {"replace-auth-strings", false, NULL},
};

/* ---- add / set ----------------------------------------------------------- */

/* Applies the options of add/set to |d|. Returns 0, or a usage error exit
 * code with the message printed. */
static int apply_opts(const capstan_cli_t *c, Capstan__Device *d, bool is_new, int64_t now,
                      char *generated, bool *rearmed) {
  const opts_t *o = c->ctx;
  generated[0] = '\0';
  *rearmed = false;
  if (is_new || (c->seen & O(OPERATION))) {
    bool rearm = is_new || capstan_device_should_rearm(d, o->operation);
    d->has_operation = 1;
    d->operation = o->operation;
    if (rearm) capstan_device_rearm(d, now);
    *rearmed = rearm;
  }
  if (is_new || (c->seen & O(AUTH))) {
    d->has_auth_mode = 1;
    d->auth_mode = o->auth;
  }
  if (c->seen & O(AUTH_STRING)) {
    if (capstan_record_set_string(&d->auth_string, o->auth_string) != 0) return CAPSTAN_EXIT_ERROR;
  }
  if (c->seen & O(GENERATE)) {
    if ((c->seen & O(AUTH_STRING))) {
      return capstan_cli_usage_error(c, "give either --auth-string or --generate-auth-string");
    }
    if (capstan_cli_random_digits(generated, o->length != 0 ? o->length : 6) != 0 ||
        capstan_record_set_string(&d->auth_string, generated) != 0) {
      capstan_cli_error("cannot generate an authentication string");
      return CAPSTAN_EXIT_ERROR;
    }
  }
  if (d->auth_mode == CAPSTAN__AUTH_MODE__AUTH_MODE_STRING &&
      (d->auth_string == NULL || d->auth_string[0] == '\0')) {
    return capstan_cli_usage_error(c,
                                   "--auth string needs --auth-string DIGITS (4 to 10) or "
                                   "--generate-auth-string");
  }
  if (is_new || (c->seen & O(KEY))) {
    d->has_key_alg = 1;
    d->key_alg = o->key_alg;
    d->has_key_bits = 1;
    d->key_bits = o->key_bits;
  }
  if (c->seen & O(COMPLETES_BY)) {
    d->has_completes_by = o->completes_by != 0;
    d->completes_by = o->completes_by;
  }
  if (c->seen & O(ISSUER)) {
    d->has_issuer = o->issuer != 0;
    d->issuer = o->issuer;
  }
  if (c->seen & O(ENCRYPTED)) {
    d->has_encrypted_config = 1;
    d->encrypted_config = o->encrypted;
  }
  if ((c->seen & O(TEMPLATE)) &&
      capstan_record_set_string(&d->template_name, o->template_name ? o->template_name : "") != 0) {
    return CAPSTAN_ENOMEM;
  }
  d->has_updated_at = 1;
  d->updated_at = now;
  return 0;
}

/* The audit detail of add/set/bulk-set: what the command set, as
 * key=value words (an authentication string only as "set" or
 * "generated"), and whether the device was re-armed. */
static void describe_change(const capstan_cli_t *c, const Capstan__Device *d, bool is_new,
                            bool rearmed, const char *how, char *buf, size_t len) {
  size_t used = 0;
#define ADD(...)                                                      \
  do {                                                                \
    int n_ = snprintf(buf + used, len - used, "%s", used ? " " : ""); \
    if (n_ > 0 && (size_t)n_ < len - used) used += (size_t)n_;        \
    n_ = snprintf(buf + used, len - used, __VA_ARGS__);               \
    if (n_ > 0 && (size_t)n_ < len - used) used += (size_t)n_;        \
  } while (0)
  buf[0] = '\0';
  if (how != NULL) ADD("%s", how);
  if (is_new || (c->seen & O(OPERATION))) ADD("operation=%s", capstan_operation_name(d->operation));
  if (is_new || (c->seen & O(AUTH))) ADD("auth=%s", capstan_auth_mode_name(d->auth_mode));
  if (c->seen & O(AUTH_STRING)) ADD("auth-string=set");
  if (c->seen & O(GENERATE)) ADD("auth-string=generated");
  if (is_new || (c->seen & O(KEY))) ADD("key=%s", capstan_key_name(d->key_alg, d->key_bits));
  if (c->seen & O(ISSUER))
    ADD("issuer=%s", d->issuer ? capstan_issuer_name(d->issuer - 1) : "default");
  if (c->seen & O(COMPLETES_BY)) {
    char t[40] = "none";
    if (d->has_completes_by && d->completes_by != 0) {
      capstan_cli_format_time(d->completes_by, t, sizeof(t));
    }
    ADD("completes-by=%s", t);
  }
  if (c->seen & O(ENCRYPTED)) ADD("encrypted-config=%s", d->encrypted_config ? "on" : "off");
  if (c->seen & O(TEMPLATE)) {
    ADD("template=%s", d->template_name && d->template_name[0] ? d->template_name : "none");
  }
  if (rearmed) ADD("status=%s", capstan_op_status_name(d->status));
#undef ADD
}

/* The device-name rule of add, set and import: "SEP" + 12 hex digits,
 * lower-case hex upper-cased with a notice; a malformed SEP name refused;
 * another name form only with --any-name. */
static bool name_allowed(const capstan_cli_t *c, const char *canonical) {
  capstan_device_name_form_t form = capstan_device_name_form(canonical);
  return form == CAPSTAN_DEVICE_NAME_MAC ||
         (form == CAPSTAN_DEVICE_NAME_OTHER && (c->seen & O(ANY_NAME)));
}

/* Writes the canonical form of |name| to |out|, with a notice when it
 * differs. Returns 0, or a usage error exit code with the message printed
 * when |name| is no device name at all. */
static int canonical_name(capstan_cli_t *c, const char *name, char *out, size_t cap) {
  if (capstan_device_name_form(name) == CAPSTAN_DEVICE_NAME_INVALID ||
      !capstan_device_name_canonical(name, out, cap)) {
    return capstan_cli_usage_error(c,
                                   "'%s' is not a device name: a phone's name is "
                                   "" CAPSTAN_DEVICE_NAME_MAC_RULE
                                   "; other forms (with --any-name) "
                                   "are " CAPSTAN_DEVICE_NAME_OTHER_RULE,
                                   name);
  }
  if (strcmp(name, out) != 0) {
    capstan_cli_error("notice: device name '%s' upper-cased to '%s' (a MAC name is upper case)",
                      name, out);
  }
  return 0;
}

/* The refusal of a name that name_allowed refuses. */
static int name_refused(capstan_cli_t *c, const char *name) {
  if (capstan_device_name_form(name) == CAPSTAN_DEVICE_NAME_BAD_SEP) {
    return capstan_cli_usage_error(c,
                                   "'%s' starts with SEP but is not a phone's name: a SEP name "
                                   "must be " CAPSTAN_DEVICE_NAME_MAC_RULE,
                                   name);
  }
  return capstan_cli_usage_error(c,
                                 "'%s' is not a phone's MAC name (" CAPSTAN_DEVICE_NAME_MAC_RULE
                                 "); for another name form (CSF..., BOT..., TCT..., ATA..., a lab "
                                 "name) give --any-name",
                                 name);
}

static int add_or_set(capstan_cli_t *c, bool is_add) {
  char name[CAPSTAN_DEVICE_NAME_MAX + 1];
  int nrc = canonical_name(c, c->args[0], name, sizeof(name));
  if (nrc != 0) return nrc;
  /* set also reaches a device stored under a name this rule now refuses
   * (added before it): only a missing one is refused for its name. */
  bool allowed = name_allowed(c, name);
  if (is_add && !allowed) return name_refused(c, name);
  capstan_store_t *s;
  if (capstan_cli_open_store(c, is_add ? CAPSTAN_CLI_STORE_CREATE : CAPSTAN_CLI_STORE_EXISTING,
                             &s) != 0)
    return CAPSTAN_EXIT_ERROR;
  int64_t now = (int64_t)time(NULL);
  int ret = CAPSTAN_EXIT_OK;
  capstan_txn_t txn;
  Capstan__Device *d = NULL;
  char generated[16];
  int err = capstan_store_begin(s, true, &txn);
  if (err != 0) {
    ret = capstan_cli_store_error("cannot start a transaction", err);
    goto out;
  }
  err = capstan_store_device_get(&txn, name, &d);
  if (is_add && err == 0) {
    capstan_cli_error("device '%s' already exists: use 'capstan device set %s ...' to change it",
                      name, name);
    ret = CAPSTAN_EXIT_ERROR;
    goto out;
  }
  if (!is_add && err == CAPSTAN_ENOENT && !allowed) {
    ret = name_refused(c, name);
    goto out;
  }
  if (!is_add && err == CAPSTAN_ENOENT) {
    capstan_cli_error("no device '%s': add it with 'capstan device add %s ...'", name, name);
    ret = CAPSTAN_EXIT_ERROR;
    goto out;
  }
  if (err != 0 && err != CAPSTAN_ENOENT) {
    ret = capstan_cli_store_error("cannot read the device", err);
    goto out;
  }
  if (is_add) {
    d = capstan_device_new(name);
    if (d == NULL) {
      ret = capstan_cli_store_error("cannot add the device", CAPSTAN_ENOMEM);
      goto out;
    }
    d->has_created_at = 1;
    d->created_at = now;
  }
  bool rearmed;
  ret = apply_opts(c, d, is_add, now, generated, &rearmed);
  if (ret != 0) goto out;
  err = capstan_store_device_put(&txn, d);
  if (err == 0) {
    char detail[512];
    describe_change(c, d, is_add, rearmed, NULL, detail, sizeof(detail));
    err = capstan_store_audit_append(&txn, 0, name, is_add ? "device_added" : "device_changed",
                                     detail);
  }
  /* An online CA signs RSA keys only (external-ca.md): say so now rather
   * than when the phone's operation fails. A warning, not a refusal: the
   * issuer may change before the phone comes. */
  bool ec_online = false;
  if (err == 0 && d->key_alg == CAPSTAN__KEY_ALG__KEY_ALG_EC &&
      (is_add || (c->seen & (O(KEY) | O(ISSUER))))) {
    capstan_settings_t settings;
    err = capstan_settings_read(&txn, &settings);
    unsigned issuer = d->issuer != 0 ? d->issuer - 1 : settings.issuer;
    ec_online = err == 0 && CAPSTAN_ISSUER_IS_ONLINE(issuer);
  }
  if (err == 0) err = capstan_store_commit(&txn);
  if (err != 0) {
    ret =
        capstan_cli_store_error(is_add ? "cannot add the device" : "cannot change the device", err);
    goto out;
  }
  if (ec_online) {
    capstan_cli_error(
        "warning: EC keys are not supported with an online CA: the phone's "
        "operation will fail (use --key rsa2048, or 'capstan config set issuer "
        "capf|offline')");
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

static int run_add(capstan_cli_t *c) {
  return add_or_set(c, true);
}
static int run_set(capstan_cli_t *c) {
  return add_or_set(c, false);
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
  fputs(",\"issuer\":", f); /* null: the cluster's setting */
  capstan_cli_json_string(f, d->issuer != 0 ? capstan_issuer_name(d->issuer - 1) : NULL);
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
  const char *enc_why = capstan_encconf_unavailable_reason(d->encrypted_config, d->public_key.data,
                                                           d->public_key.len);
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
  json_time(f, "retry_after", d->retry_after, d->has_retry_after);
  fputs(",\"last_operation\":", f);
  capstan_cli_json_string(f, capstan_operation_name(d->last_operation));
  fprintf(f, ",\"attempts\":%u", d->attempts);
  fprintf(f, ",\"auth_failures\":%u", d->auth_failures);
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

static int run_show(capstan_cli_t *c) {
  const char *name = c->args[0];
  capstan_store_t *s;
  if (capstan_cli_open_store(c, CAPSTAN_CLI_STORE_EXISTING, &s) != 0) return CAPSTAN_EXIT_ERROR;
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
    ret = capstan_cli_store_error("cannot read the device", err);
    goto out;
  }
  bool secrets = c->seen & O(SHOW_SECRETS);
  if (c->json) {
    json_device(stdout, d, secrets);
    fputs(",\"cert_history\":[", stdout);
    err = print_history(&txn, d, true);
    fputs("]}\n", stdout);
    if (err != 0) ret = capstan_cli_store_error("cannot read the certificate history", err);
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
    printf("%-18s %s\n", "issuer:",
           d->issuer != 0 ? capstan_issuer_name(d->issuer - 1) : "the cluster's (config issuer)");
    char deadline[96] = "-";
    if (d->has_completes_by && d->completes_by != 0) {
      capstan_cli_format_deadline(d->completes_by, deadline, sizeof(deadline));
    }
    printf("%-18s %s%s\n", "completes by:", deadline,
           d->has_completes_by && d->completes_by != 0 && d->completes_by < (int64_t)time(NULL)
               ? " (past)"
               : "");
    printf("%-18s %s\n", "base config:",
           d->config_xml.len > 0                     ? "the device's own (device config show)"
           : d->template_name && d->template_name[0] ? d->template_name
                                                     : "default");
    printf("%-18s %s\n", "encrypted config:", d->encrypted_config ? "on" : "off");
    const char *enc_why = capstan_encconf_unavailable_reason(d->encrypted_config,
                                                             d->public_key.data, d->public_key.len);
    if (enc_why) printf("%-18s not available yet: %s\n", "encrypted file:", enc_why);
    printf("%-18s %s\n", "status:", capstan_op_status_name(d->status));
    printf("%-18s %s\n", "status reason:", d->status_reason != NULL ? d->status_reason : "-");
    printf("%-18s %s\n", "last operation:", capstan_operation_name(d->last_operation));
    printf("%-18s %u\n", "attempts:", d->attempts);
    if (d->auth_failures > 0) printf("%-18s %u in a row\n", "wrong strings:", d->auth_failures);
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
    if (err != 0) ret = capstan_cli_store_error("cannot read the certificate history", err);
  }
out:
  capstan_store_abort(&txn);
  capstan__device__free_unpacked(d, NULL);
  capstan_store_close(s);
  return ret;
}

typedef struct {
  const capstan_cli_t *c;
  size_t n;
} list_ctx_t;

/* A deadline in a list column: local time with the zone, short. */
static void list_deadline(const Capstan__Device *d, char *buf, size_t len) {
  time_t t = (time_t)d->completes_by;
  struct tm tm;
  if (!d->has_completes_by || d->completes_by == 0) {
    snprintf(buf, len, "-");
  } else if (localtime_r(&t, &tm) == NULL || strftime(buf, len, "%Y-%m-%d %H:%M %Z", &tm) == 0) {
    capstan_cli_format_time(d->completes_by, buf, len);
  }
}

static int list_one(const Capstan__Device *d, void *arg) {
  list_ctx_t *l = arg;
  const opts_t *o = l->c->ctx;
  const capstan_cli_t *c = l->c;
  if ((c->seen & O(STATUS)) && d->status != o->status) return 0;
  if ((c->seen & O(OPERATION)) && d->operation != o->operation) return 0;
  if ((c->seen & O(AUTH)) && d->auth_mode != o->auth) return 0;
  for (int i = 0; i < 2; i++) {
    const char *prefix = c->value[i == 0 ? OPT_PREFIX : OPT_NAME_PREFIX];
    if (prefix != NULL && strncmp(d->name, prefix, strlen(prefix)) != 0) return 0;
  }
  if (l->c->json) {
    fputs(l->n == 0 ? "\n" : ",\n", stdout);
    json_device(stdout, d, false);
    fputc('}', stdout);
  } else {
    char deadline[64];
    list_deadline(d, deadline, sizeof(deadline));
    printf("%-20s %-13s %-7s %-8s %-12s %8u  %-22s %s\n", d->name,
           capstan_operation_name(d->operation), capstan_auth_mode_name(d->auth_mode),
           capstan_key_name(d->key_alg, d->key_bits), capstan_op_status_name(d->status),
           d->attempts, deadline, d->status_reason != NULL ? d->status_reason : "");
  }
  l->n++;
  return 0;
}

static int list_all(capstan_txn_t *txn, void *arg) {
  return capstan_store_device_iterate(txn, list_one, arg);
}

static int run_list(capstan_cli_t *c) {
  list_ctx_t l = {c, 0};
  return capstan_cli_list(c, list_all, &l, &l.n, "cannot list devices",
                          "%-20s %-13s %-7s %-8s %-12s %8s  %-22s %s\n", "NAME", "OPERATION",
                          "AUTH", "KEY", "STATUS", "ATTEMPTS", "DEADLINE", "REASON");
}

/* ---- cert ------------------------------------------------------------------------ */

/* `device cert NAME [--out FILE]`: the device's certificate on record (the
 * one the phone last presented, fetched by troubleshoot, or the LSC issued
 * to it), PEM. */
static int run_cert(capstan_cli_t *c) {
  char name[CAPSTAN_DEVICE_NAME_MAX + 1];
  int rc = canonical_name(c, c->args[0], name, sizeof(name));
  if (rc != 0) return rc;
  capstan_store_t *s;
  if (capstan_cli_open_store(c, CAPSTAN_CLI_STORE_EXISTING, &s) != 0) return CAPSTAN_EXIT_ERROR;
  Capstan__Device *d = NULL;
  capstan_txn_t txn;
  int err = capstan_store_begin(s, false, &txn);
  if (err == 0) err = capstan_store_device_get(&txn, name, &d);
  capstan_store_abort(&txn);
  capstan_store_close(s);
  if (err == CAPSTAN_ENOENT) {
    capstan_cli_error("no device '%s' (see 'capstan device list')", name);
    return CAPSTAN_EXIT_ERROR;
  }
  if (err != 0) return capstan_cli_store_error("cannot read the device", err);
  int ret = CAPSTAN_EXIT_ERROR;
  char *pem = NULL;
  if (!d->has_cert_der || d->cert_der.len == 0) {
    capstan_cli_error(
        "no certificate on record for %s: one is kept when the phone presents its "
        "LSC or MIC (a troubleshoot operation fetches it) or when an LSC is issued "
        "to it",
        name);
  } else if ((err = capstan_pki_pem_encode("CERTIFICATE", d->cert_der.data, d->cert_der.len,
                                           &pem)) != 0) {
    capstan_cli_error("cannot encode the certificate: %s", capstan_strerror(err));
  } else {
    const char *out = c->value[OPT_OUT];
    ret = capstan_cli_write_text(out, pem, "the certificate");
    if (ret == 0 && out != NULL && strcmp(out, "-") != 0) {
      printf("wrote the %s certificate of %s (md5 %s) to %s\n",
             capstan_cert_type_name(d->cert_type), name, d->md5hash != NULL ? d->md5hash : "-",
             out);
    }
  }
  free(pem);
  capstan__device__free_unpacked(d, NULL);
  return ret;
}

static int run_remove(capstan_cli_t *c) {
  const char *name = c->args[0];
  capstan_store_t *s;
  if (capstan_cli_open_store(c, CAPSTAN_CLI_STORE_EXISTING, &s) != 0) return CAPSTAN_EXIT_ERROR;
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
  if (err != 0) return capstan_cli_store_error("cannot remove the device", err);
  printf("removed %s\n", name);
  return CAPSTAN_EXIT_OK;
}

/* ---- history ------------------------------------------------------------------ */

static int first_event(const capstan_audit_event_t *e, void *arg) {
  *(bool *)arg = true;
  return 1;
}

typedef struct {
  const capstan_cli_t *c;
  const char *name;
  bool unknown; /* neither a device nor any event of one */
} history_t;

static int history_fn(capstan_txn_t *txn, void *arg) {
  history_t *h = arg;
  const opts_t *o = h->c->ctx;
  bool json = h->c->json;
  Capstan__Device *d = NULL;
  int err = capstan_store_device_get(txn, h->name, &d);
  if (err != 0 && err != CAPSTAN_ENOENT) return err;
  if (d == NULL) {
    bool any = false;
    err = capstan_audit_query(txn, 0, h->name, first_event, &any);
    if (err != 0) return err;
    if (!any) {
      h->unknown = true;
      return 0;
    }
  }
  capstan_cli_audit_print_t p = {.since_ns = o->since_ns, .device = h->name, .json = json};
  if (json) {
    fputs("{\"device\":", stdout);
    capstan_cli_json_string(stdout, h->name);
    fprintf(stdout, ",\"exists\":%s", d != NULL ? "true" : "false");
    fputs(",\"status\":", stdout);
    capstan_cli_json_string(stdout, d != NULL ? capstan_op_status_name(d->status) : NULL);
    fputs(",\"operation\":", stdout);
    capstan_cli_json_string(stdout, d != NULL ? capstan_operation_name(d->operation) : NULL);
    fputs(",\"events\":", stdout);
  } else if (d != NULL) {
    printf("%s: operation %s, status %s%s%s\n", h->name, capstan_operation_name(d->operation),
           capstan_op_status_name(d->status), d->status_reason != NULL ? ": " : "",
           d->status_reason != NULL ? d->status_reason : "");
  } else {
    printf("%s: no such device now (removed); its history:\n", h->name);
  }
  err = capstan_cli_audit_print(txn, &p);
  if (json) {
    fputs("}\n", stdout);
  } else {
    printf("%zu event%s\n", p.n, p.n == 1 ? "" : "s");
  }
  capstan__device__free_unpacked(d, NULL);
  return err;
}

static int run_history(capstan_cli_t *c) {
  history_t h = {.c = c, .name = c->args[0]};
  int rc = capstan_cli_read(c, history_fn, &h, "cannot read the device's history");
  if (rc == CAPSTAN_EXIT_OK && h.unknown) {
    capstan_cli_error("no device '%s' and no history of one (see 'capstan device list')", h.name);
    return CAPSTAN_EXIT_ERROR;
  }
  return rc;
}

/* ---- import / export --------------------------------------------------------- */

static int run_import(capstan_cli_t *c) {
  const opts_t *o = c->ctx;
  const char *path = c->args[0];
  if ((c->seen & O(LENGTH)) && !(c->seen & O(GENERATE_CSV))) {
    return capstan_cli_usage_error(c, "--auth-string-length goes with --generate-auth-strings");
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
  size_t others = 0, first_other = 0, past = 0, first_past = 0;
  int64_t now = (int64_t)time(NULL);
  for (size_t i = 0; i < nrows; i++) {
    if (rows[i].completes_by != 0 && rows[i].completes_by < now && past++ == 0) first_past = i;
    if (rows[i].name_upcased) {
      capstan_cli_error(
          "notice: %s:%zu: device name upper-cased to '%s' (a MAC name is upper case)", fname,
          rows[i].line, rows[i].name);
    }
    if (rows[i].name_other_form && others++ == 0) first_other = i;
  }
  if (others > 0 && !(c->seen & O(ANY_NAME))) {
    capstan_cli_error("%s:%zu: '%s' is not a phone's MAC name (" CAPSTAN_DEVICE_NAME_MAC_RULE
                      "); %zu row%s ha%s another name form: give --any-name to import them",
                      fname, rows[first_other].line, rows[first_other].name, others,
                      others == 1 ? "" : "s", others == 1 ? "s" : "ve");
    capstan_cli_error("nothing was imported");
    free(rows);
    return CAPSTAN_EXIT_USAGE;
  }
  if (past > 0) {
    char t[96];
    capstan_cli_format_deadline(rows[first_past].completes_by, t, sizeof(t));
    capstan_cli_error(
        "warning: %s:%zu: completes_by %s is in the past (%zu row%s with a past "
        "deadline): a phone that connects gets its operation expired, not run",
        fname, rows[first_past].line, t, past, past == 1 ? "" : "s");
  }
  bool dry_run = c->seen & O(DRY_RUN);
  capstan_store_t *s;
  /* A dry run creates nothing, not even the store. */
  if (capstan_cli_open_store(c, dry_run ? CAPSTAN_CLI_STORE_OPTIONAL : CAPSTAN_CLI_STORE_CREATE,
                             &s) != 0) {
    free(rows);
    return CAPSTAN_EXIT_ERROR;
  }
  if (s == NULL) {
    /* No store yet: every row is new, and only a string-mode row without a
     * string (and no generation) could still fail the import. */
    size_t missing_line = 0;
    for (size_t i = 0; i < nrows && missing_line == 0; i++) {
      if (rows[i].auth_mode == CAPSTAN__AUTH_MODE__AUTH_MODE_STRING &&
          rows[i].auth_string[0] == '\0' && o->generate == CAPSTAN_GENERATE_NONE) {
        missing_line = rows[i].line;
      }
    }
    free(rows);
    if (missing_line != 0) {
      capstan_cli_error(
          "%s:%zu: column 'auth_string': required when auth_mode is string (or use "
          "--generate-auth-strings unique|shared)",
          fname, missing_line);
      capstan_cli_error("nothing was imported");
      return CAPSTAN_EXIT_ERROR;
    }
    printf("no capstan data in '%s' yet: all %zu rows would be added\n", capstan_cli_data_dir(c),
           nrows);
    printf("dry run: nothing was changed\n");
    return CAPSTAN_EXIT_OK;
  }
  capstan_device_import_stats_t st;
  capstan_device_import_opts_t io = {
      .fname = fname,
      .no_update = c->seen & O(NO_UPDATE),
      .generate = o->generate,
      .auth_string_length = o->length,
      .now = (int64_t)time(NULL),
      .dry_run = dry_run,
      .rearm = c->seen & O(REARM),
      .replace_auth_strings = c->seen & O(REPLACE_AUTH),
      .report = dry_run ? stdout : NULL,
      .stats = &st,
  };
  size_t created = 0, updated = 0;
  capstan_txn_t txn;
  /* A dry run only reads: it must not hold the writer (the server's
   * enrollments) while it prints, perhaps into a pager. */
  rc = capstan_store_begin(s, !dry_run, &txn);
  if (rc != 0) {
    snprintf(err, sizeof(err), "cannot start a transaction: %s", capstan_strerror(rc));
  } else {
    rc = capstan_device_import_rows(&txn, rows, nrows, &io, &created, &updated, err, sizeof(err));
  }
  if (rc == 0 && !dry_run) {
    char detail[160];
    snprintf(detail, sizeof(detail),
             "created=%zu updated=%zu unchanged=%zu rearmed=%zu auth-strings-replaced=%zu", created,
             updated, st.unchanged, st.rearmed, st.auth_replaced);
    rc = capstan_store_audit_append(&txn, 0, NULL, "device_import", detail);
    if (rc == 0) rc = capstan_store_commit(&txn);
    if (rc != 0) snprintf(err, sizeof(err), "cannot commit: %s", capstan_strerror(rc));
  }
  capstan_store_abort(&txn);
  capstan_store_close(s);
  free(rows);
  if (rc != 0) {
    for (char *line = err, *next; line != NULL; line = next) {
      next = strchr(line, '\n');
      if (next != NULL) *next++ = '\0';
      capstan_cli_error("%s", line);
    }
    capstan_cli_error("nothing was imported");
    return CAPSTAN_EXIT_ERROR;
  }
  if (dry_run) {
    printf(
        "would import %zu rows: %zu added, %zu updated, %zu unchanged; %zu succeeded "
        "device%s re-armed%s, %zu authentication string%s replaced%s\n",
        created + updated + st.unchanged, created, updated, st.unchanged, st.rearmed,
        st.rearmed == 1 ? "" : "s", st.rearmed > 0 && !io.rearm ? " (needs --rearm)" : "",
        st.auth_replaced, st.auth_replaced == 1 ? "" : "s",
        st.auth_replaced > 0 && !io.replace_auth_strings ? " (needs --replace-auth-strings)" : "");
    printf("dry run: nothing was changed\n");
    return CAPSTAN_EXIT_OK;
  }
  printf("imported %zu rows: %zu added, %zu updated, %zu unchanged\n",
         created + updated + st.unchanged, created, updated, st.unchanged);
  if (st.rearmed > 0) {
    printf("re-armed %zu succeeded device%s (--rearm)\n", st.rearmed, st.rearmed == 1 ? "" : "s");
  }
  if (st.auth_replaced > 0) {
    printf("replaced %zu authentication string%s (--replace-auth-strings)\n", st.auth_replaced,
           st.auth_replaced == 1 ? "" : "s");
  }
  return CAPSTAN_EXIT_OK;
}

static int run_export(capstan_cli_t *c) {
  const char *path = c->args[0];
  capstan_store_t *s;
  if (capstan_cli_open_store(c, CAPSTAN_CLI_STORE_EXISTING, &s) != 0) return CAPSTAN_EXIT_ERROR;
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
  if (err != 0) return capstan_cli_store_error("cannot export devices", err);
  return CAPSTAN_EXIT_OK;
}

/* ---- generate-auth-strings ----------------------------------------------------- */

/* The names of the devices a predicate picks, in store order. */
typedef struct {
  const capstan_cli_t *c;
  bool (*match)(const capstan_cli_t *c, const Capstan__Device *d);
  char **names;
  size_t n, cap;
} collect_t;

static int collect_one(const Capstan__Device *d, void *arg) {
  collect_t *c = arg;
  if (!c->match(c->c, d)) return 0;
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

static void collect_free(collect_t *c) {
  for (size_t i = 0; i < c->n; i++) free(c->names[i]);
  free(c->names);
}

/* generate-auth-strings: string-mode devices with an operation, or with
 * --status. */
static bool string_mode_match(const capstan_cli_t *c, const Capstan__Device *d) {
  const opts_t *o = c->ctx;
  if (d->auth_mode != CAPSTAN__AUTH_MODE__AUTH_MODE_STRING) return false;
  return (c->seen & O(STATUS)) ? d->status == o->status
                               : d->operation != CAPSTAN__OPERATION__OPERATION_NONE;
}

static int run_generate(capstan_cli_t *c) {
  const opts_t *o = c->ctx;
  if ((c->seen & O(UNIQUE)) && (c->seen & O(SHARED))) {
    return capstan_cli_usage_error(c, "give one of --unique or --shared");
  }
  capstan_generate_t generate =
      (c->seen & O(SHARED)) ? CAPSTAN_GENERATE_SHARED : CAPSTAN_GENERATE_UNIQUE;
  unsigned len = o->length != 0 ? o->length : 6;
  capstan_store_t *s;
  if (capstan_cli_open_store(c, CAPSTAN_CLI_STORE_EXISTING, &s) != 0) return CAPSTAN_EXIT_ERROR;
  collect_t found = {.c = c, .match = string_mode_match};
  capstan_txn_t txn;
  int64_t now = (int64_t)time(NULL);
  char shared[16] = "";
  bool is_shared = generate == CAPSTAN_GENERATE_SHARED;
  int err = capstan_store_begin(s, true, &txn);
  if (err == 0) err = capstan_store_device_iterate(&txn, collect_one, &found);
  if (err == 0 && is_shared) err = capstan_cli_random_digits(shared, len);
  for (size_t i = 0; err == 0 && i < found.n; i++) {
    Capstan__Device *d;
    err = capstan_store_device_get(&txn, found.names[i], &d);
    if (err != 0) break;
    char fresh[16];
    if (!is_shared) err = capstan_cli_random_digits(fresh, len);
    if (err == 0) err = capstan_record_set_string(&d->auth_string, is_shared ? shared : fresh);
    d->has_updated_at = 1;
    d->updated_at = now;
    if (err == 0) err = capstan_store_device_put(&txn, d);
    if (err == 0) {
      err = capstan_store_audit_append(&txn, 0, d->name, "device_changed",
                                       is_shared ? "generate-auth-strings auth-string=generated "
                                                   "(shared)"
                                                 : "generate-auth-strings auth-string=generated");
    }
    capstan__device__free_unpacked(d, NULL);
  }
  if (err == 0) {
    err = capstan_store_audit_append(&txn, 0, NULL, "auth_strings_generated",
                                     is_shared ? "shared" : "unique");
  }
  if (err == 0) err = capstan_store_commit(&txn);
  capstan_store_abort(&txn);
  capstan_store_close(s);
  collect_free(&found);
  if (err != 0) return capstan_cli_store_error("cannot generate authentication strings", err);
  printf(
      "generated %s for %zu devices; see them with 'capstan device "
      "export FILE' or 'capstan device show NAME --show-secrets'\n",
      is_shared ? "one shared authentication string" : "unique authentication strings", found.n);
  return CAPSTAN_EXIT_OK;
}

/* ---- bulk-set ---------------------------------------------------------------- */

static bool bulk_match(const capstan_cli_t *c, const Capstan__Device *d) {
  const opts_t *o = c->ctx;
  const char *prefix = c->value[OPT_NAME_PREFIX];
  if ((c->seen & O(STATUS)) && d->status != o->status) return false;
  if (prefix != NULL && strncmp(d->name, prefix, strlen(prefix)) != 0) return false;
  if (c->seen & O(EXPIRES_BEFORE)) {
    int64_t na;
    if (!d->has_cert_der ||
        capstan_cli_cert_not_after(d->cert_der.data, d->cert_der.len, &na) != 0 ||
        na >= o->expires_before) {
      return false;
    }
  }
  return true;
}

static int run_bulk_set(capstan_cli_t *c) {
  const uint64_t filters = O(STATUS) | O(NAME_PREFIX) | O(EXPIRES_BEFORE);
  const uint64_t changes =
      O(OPERATION) | O(AUTH) | O(AUTH_STRING) | O(KEY) | O(COMPLETES_BY) | O(ENCRYPTED) | O(ISSUER);
  bool dry_run = c->seen & O(DRY_RUN);
  if (!(c->seen & (filters | O(ALL)))) {
    return capstan_cli_usage_error(
        c, "choose devices with --status, --name-prefix, --expires-before, or --all");
  }
  if ((c->seen & O(ALL)) && (c->seen & filters)) {
    return capstan_cli_usage_error(c, "--all does not combine with filters");
  }
  if (!(c->seen & changes)) return capstan_cli_usage_error(c, "nothing to change");
  capstan_store_t *s;
  if (capstan_cli_open_store(c, CAPSTAN_CLI_STORE_EXISTING, &s) != 0) return CAPSTAN_EXIT_ERROR;
  int64_t now = (int64_t)time(NULL);
  int ret = CAPSTAN_EXIT_OK;
  collect_t found = {.c = c, .match = bulk_match};
  capstan_txn_t txn;
  int err = capstan_store_begin(s, true, &txn);
  if (err == 0) err = capstan_store_device_iterate(&txn, collect_one, &found);
  if (err != 0) {
    ret = capstan_cli_store_error("cannot read devices", err);
    goto out;
  }
  for (size_t i = 0; i < found.n && !dry_run; i++) {
    Capstan__Device *d;
    char generated[16];
    err = capstan_store_device_get(&txn, found.names[i], &d);
    if (err != 0) {
      ret = capstan_cli_store_error("cannot read a device", err);
      goto out;
    }
    bool rearmed;
    ret = apply_opts(c, d, false, now, generated, &rearmed);
    if (ret == 0) {
      char detail[512];
      describe_change(c, d, false, rearmed, "bulk-set", detail, sizeof(detail));
      err = capstan_store_device_put(&txn, d);
      if (err == 0) err = capstan_store_audit_append(&txn, 0, d->name, "device_changed", detail);
      if (err != 0) ret = capstan_cli_store_error("cannot change a device", err);
    } else {
      capstan_cli_error("device '%s' could not take the change; nothing was changed", d->name);
    }
    capstan__device__free_unpacked(d, NULL);
    if (ret != 0) goto out;
  }
  if (!dry_run) {
    char detail[64];
    snprintf(detail, sizeof(detail), "devices=%zu", found.n);
    err = capstan_store_audit_append(&txn, 0, NULL, "device_bulk_set", detail);
    if (err == 0) err = capstan_store_commit(&txn);
    if (err != 0) {
      ret = capstan_cli_store_error("cannot change devices", err);
      goto out;
    }
  }
  printf("%s %zu devices\n", dry_run ? "would change" : "changed", found.n);
out:
  capstan_store_abort(&txn);
  capstan_store_close(s);
  collect_free(&found);
  return ret;
}

/* ---- dispatch ------------------------------------------------------------------ */

#define DEADLINE_HELP                                                                    \
  "         DEADLINE (--completes-by, the CSV's completes_by): the operation must run\n" \
  "         before it, or a phone that connects later gets it expired. Forms:\n"         \
  "           2026-12-01                 00:00 UTC that day\n"                           \
  "           2026-12-01T19:00[:SS]      local time (the TZ environment variable)\n"     \
  "           2026-12-01T06:00[:SS]Z     UTC\n"                                          \
  "           2026-12-01T19:00+13:00     with an offset from UTC (+HH:MM or -HH:MM)\n"   \
  "         a deadline in the past is taken, with a warning; 'device show' and\n"        \
  "         'device list' print deadlines in local time with the zone"
#define NAME_HELP                                                                          \
  "         NAME: a phone's name is SEP + 12 hex digits (its MAC address, e.g.\n"          \
  "         SEP58971ECC97C1); lower-case hex is upper-cased, with a notice; a SEP name\n"  \
  "         of another length or with a non-hex digit is refused. --any-name allows\n"     \
  "         another name form (CSF..., BOT..., TCT..., TAB..., ATA..., a lab name: 1 to\n" \
  "         64 of A-Z a-z 0-9 . _ - starting with a letter)"
#define ADDSET_OPTS                                                                               \
  (O(OPERATION) | O(AUTH) | O(AUTH_STRING) | O(GENERATE) | O(LENGTH) | O(KEY) | O(COMPLETES_BY) | \
   O(ENCRYPTED) | O(TEMPLATE) | O(ANY_NAME) | O(ISSUER))
#define ADDSET_USAGE                                                                        \
  " NAME --operation install|delete|troubleshoot|none --auth string|null|lsc|mic\n"         \
  "         [--auth-string DIGITS | --generate-auth-string [--auth-string-length 4..10]]\n" \
  "         [--key rsa512|rsa1024|rsa2048|rsa3072|rsa4096|ec256|ec384|ec521]\n"             \
  "         [--completes-by DEADLINE|none] [--encrypted-config on|off]\n"                   \
  "         [--template NAME|none] [--issuer capf|est|mscs|offline|default]\n"              \
  "         [--any-name] [--data-dir DIR]\n" NAME_HELP "\n" DEADLINE_HELP                   \
  "\n"                                                                                      \
  "         --issuer: who signs this device's LSC instead of the cluster's 'issuer'\n"      \
  "         setting (a pilot of a CA on a few phones); default: follow the setting"

#define DEVICE_USAGE                                \
  "capstan device <command> ... [--data-dir DIR]\n" \
  "       capstan device config set|show|clear ...   (see 'capstan device config --help')"

static const capstan_cli_sub_t device_subs[] = {
    {"add", ADDSET_OPTS, false, 1, 1, "capstan device add" ADDSET_USAGE, run_add},
    {"set", ADDSET_OPTS, false, 1, 1,
     "capstan device set NAME [options of 'device add']\n"
     "         (--operation re-arms the device: status pending, attempts 0, wrong\n"
     "         authentication strings 0, which unlocks a device they locked;\n"
     "         a device stored under a name the name rule now refuses can still be set)",
     run_set},
    {"show", O(SHOW_SECRETS), true, 1, 1, "capstan device show NAME [--json] [--show-secrets]",
     run_show},
    {"list", O(STATUS) | O(OPERATION) | O(AUTH) | O(PREFIX) | O(NAME_PREFIX), true, 0, 0,
     "capstan device list [--json] [--prefix P] [--status STATUS]\n"
     "         [--operation install|delete|troubleshoot|none] [--auth string|null|lsc|mic]\n"
     "         filters combine (all must match); --prefix: the name starts with P (case\n"
     "         matters: MAC names are stored upper-case, SEP0011...)\n"
     "         STATUS: pending, in-progress, throttled, succeeded, failed, expired, none\n"
     "         (nothing scheduled): the one spelling of the CLI, its --json and the\n"
     "         capstan_devices{status=...} metric label; in_progress (the label's\n"
     "         spelling in earlier versions) is taken too\n"
     "         columns: NAME OPERATION AUTH KEY STATUS ATTEMPTS DEADLINE REASON; DEADLINE\n"
     "         is the completes-by time in local time with the zone (TZ), '-' for none;\n"
     "         --json: completes_by in UTC",
     run_list},
    {"remove", 0, false, 1, 1, "capstan device remove NAME", run_remove},
    {"cert", O(OUT), false, 1, 1,
     "capstan device cert NAME [--out FILE|-]\n"
     "         the device's certificate on record, PEM (standard output without --out):\n"
     "         the LSC or MIC the phone last presented (a troubleshoot operation fetches\n"
     "         it), or the LSC issued to it; 'device show' gives its type and MD5",
     run_cert},
    {"history", O(SINCE), true, 1, 1,
     "capstan device history NAME [--since T] [--json]\n"
     "         what happened to the device, oldest first: added and scheduled (with the\n"
     "         user), CAPF attempts with the phone's address and their outcome or reason,\n"
     "         certificates issued, installed, stale and deleted (serials), and the first\n"
     "         download of each of its files after it changed (file_served: e.g. the first\n"
     "         encrypted configuration after its LSC was installed). Also works for a\n"
     "         removed device. --since: an RFC 3339 time or an age (2h, 3d)\n"
     "         --json: {device, exists, status, operation, events: [{at, event, user,\n"
     "         detail}]} ('capstan audit list --help' says more)",
     run_history},
    {"import",
     O(GENERATE_CSV) | O(LENGTH) | O(NO_UPDATE) | O(ANY_NAME) | O(DRY_RUN) | O(REARM) |
         O(REPLACE_AUTH),
     false, 1, 1,
     "capstan device import FILE.csv|- [--generate-auth-strings unique|shared]\n"
     "         [--auth-string-length 4..10] [--no-update] [--any-name]\n"
     "         [--dry-run] [--rearm] [--replace-auth-strings]\n"
     "         --dry-run: print what the import would change and change nothing: each\n"
     "         device added, each updated field by field (old -> new), re-armed\n"
     "         (scheduled again) and authentication strings replaced (never shown)\n"
     "         --rearm: allow scheduling a device that succeeded again (without it such\n"
     "         a row refuses the import; a failed or expired device is re-armed as\n"
     "         always)\n"
     "         --replace-auth-strings: allow replacing an authentication string already\n"
     "         set, by the file's or a generated one (without it, refused)\n"
     "         a row that changes nothing is left alone (counted as unchanged)\n"
     "         header: " CAPSTAN_DEVICE_CSV_HEADER "\n"
     "         names as for 'device add' (--any-name for rows of another name form)\n"
     "         completes_by: a DEADLINE as for 'device add' (empty: none)\n"
     "         all rows are imported in one transaction, or none",
     run_import},
    {"export", 0, false, 1, 1, "capstan device export FILE.csv|-", run_export},
    {"bulk-set",
     O(OPERATION) | O(AUTH) | O(AUTH_STRING) | O(KEY) | O(COMPLETES_BY) | O(ENCRYPTED) | O(STATUS) |
         O(NAME_PREFIX) | O(EXPIRES_BEFORE) | O(ALL) | O(DRY_RUN) | O(ISSUER),
     false, 0, 0,
     "capstan device bulk-set (--all | [--status STATUS] [--name-prefix P]\n"
     "         [--expires-before DATE]) [--dry-run] CHANGES\n"
     "         CHANGES: --operation, --auth, --auth-string, --key, --completes-by,\n"
     "         --encrypted-config, --issuer as for 'device set'; one transaction for all\n"
     "         devices\n"
     "         (--expires-before: the current certificate's notAfter is before DATE)",
     run_bulk_set},
    {"generate-auth-strings", O(UNIQUE) | O(SHARED) | O(STATUS) | O(LENGTH), false, 0, 0,
     "capstan device generate-auth-strings [--unique|--shared] [--status STATUS]\n"
     "         [--auth-string-length 4..10]\n"
     "         (string-mode devices with an operation, or with STATUS)",
     run_generate},
};

int capstan_cli_device_main(int argc, char **argv) {
  static const capstan_cli_cmd_t cmd = {
      "device", DEVICE_USAGE, NULL, CAPSTAN_CLI_TABLE(device_opts), CAPSTAN_CLI_TABLE(device_subs)};
  if (argc > 1 && strcmp(argv[1], "config") == 0) {
    return capstan_cli_devconfig_main(argc - 1, argv + 1);
  }
  opts_t o = {
      .auth = CAPSTAN__AUTH_MODE__AUTH_MODE_NULL,
      .key_alg = CAPSTAN__KEY_ALG__KEY_ALG_RSA,
      .key_bits = 2048,
  };
  return capstan_cli_run(&cmd, argc, argv, &o);
}
