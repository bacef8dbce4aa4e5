#include "core/settings.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/error.h"
#include "storage/records.h"

typedef enum {
#define ID(cli, field, kind, min, max, help) SETTING_##field,
  CAPSTAN_SETTINGS_TABLE(ID)
#undef ID
      SETTING_COUNT
} setting_id_t;

static const capstan_setting_info_t infos[SETTING_COUNT] = {
#define INFO(cli, field, kind, min, max, help) {cli, CAPSTAN_SETTING_##kind, min, max, help},
    CAPSTAN_SETTINGS_TABLE(INFO)
#undef INFO
};

size_t capstan_settings_count(void) {
  return SETTING_COUNT;
}

const capstan_setting_info_t *capstan_settings_info(size_t i) {
  return i < SETTING_COUNT ? &infos[i] : NULL;
}

static int find_id(const char *name) {
  if (name == NULL) return -1;
  for (int i = 0; i < SETTING_COUNT; i++) {
    if (strcmp(infos[i].name, name) == 0) return i;
  }
  return -1;
}

const capstan_setting_info_t *capstan_settings_find(const char *name) {
  int id = find_id(name);
  return id < 0 ? NULL : &infos[id];
}

/* Typed access to the fields by id: the generated switch keeps the table
 * the single place that names them. */
#define ACCESS_UINT(field) \
  case SETTING_##field:    \
    if (set) {             \
      s->field = *u;       \
    } else {               \
      *u = s->field;       \
    }                      \
    return 0;
#define ACCESS_BOOL(field)   \
  case SETTING_##field:      \
    if (set) {               \
      s->field = *u != 0;    \
    } else {                 \
      *u = s->field ? 1 : 0; \
    }                        \
    return 0;
#define ACCESS_DIGEST(field) ACCESS_BOOL(field)
#define ACCESS_ISSUER(field) ACCESS_UINT(field)
#define ACCESS_HOST(field)                              \
  case SETTING_##field:                                 \
    if (set) {                                          \
      snprintf(s->field, sizeof(s->field), "%s", *str); \
    } else {                                            \
      *str = s->field;                                  \
    }                                                   \
    return 0;
#define ACCESS(cli, field, kind, min, max, help) ACCESS_##kind(field)

/* set: copies *u or *str into the field; get: reads the field into *u or
 * *str (borrowed). */
static int access_field(capstan_settings_t *s, int id, bool set, unsigned *u, const char **str) {
  switch (id) {
    CAPSTAN_SETTINGS_TABLE(ACCESS)
    default:
      return CAPSTAN_ENOENT;
  }
}

static bool is_label_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
}

static const char *const kIssuerNames[] = {"capf", "est", "mscs", "offline"};

const char *capstan_issuer_name(unsigned issuer) {
  return issuer < sizeof(kIssuerNames) / sizeof(kIssuerNames[0]) ? kIssuerNames[issuer] : "?";
}

int capstan_issuer_parse(const char *name, unsigned *out) {
  for (unsigned i = 0; i < sizeof(kIssuerNames) / sizeof(kIssuerNames[0]); i++) {
    if (strcmp(name, kIssuerNames[i]) == 0) {
      *out = i;
      return 0;
    }
  }
  return CAPSTAN_EINVAL;
}

int capstan_settings_host_valid(const char *host) {
  if (host == NULL || host[0] == '\0') return 0;
  unsigned char buf[16];
  if (inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1) return 1;
  size_t n = strlen(host);
  if (n > 253) return 0;
  size_t label = 0;
  bool all_numeric = true;
  for (size_t i = 0; i <= n; i++) {
    char c = host[i];
    if (c == '.' || c == '\0') {
      if (label == 0 || label > 63) return 0; /* empty or overlong label */
      if (host[i - 1] == '-' || host[i - label] == '-') return 0;
      label = 0;
      continue;
    }
    if (!is_label_char(c)) return 0;
    if (!(c >= '0' && c <= '9')) all_numeric = false;
    label++;
  }
  /* "10.0.0.300" looks like an address, not a name: refuse it. */
  return !all_numeric;
}

static int parse_uint(const char *v, unsigned long *out) {
  if (v == NULL || v[0] < '0' || v[0] > '9') return CAPSTAN_EINVAL;
  errno = 0;
  char *end;
  unsigned long x = strtoul(v, &end, 10);
  if (*end != '\0') return CAPSTAN_EINVAL;
  if (errno == ERANGE) return CAPSTAN_ERANGE;
  *out = x;
  return 0;
}

int capstan_settings_set(capstan_settings_t *s, const char *name, const char *value, char *err,
                         size_t errlen) {
  if (err != NULL && errlen > 0) err[0] = '\0';
  int id = find_id(name);
  if (id < 0) {
    snprintf(err, errlen, "unknown setting '%s' (see 'capstan config list')",
             name != NULL ? name : "");
    return CAPSTAN_ENOENT;
  }
  const capstan_setting_info_t *info = &infos[id];
  if (value == NULL) value = "";
  unsigned u = 0;
  const char *str = "";
  switch (info->kind) {
    case CAPSTAN_SETTING_UINT: {
      unsigned long x = 0;
      int rc = parse_uint(value, &x);
      if (rc == CAPSTAN_EINVAL) {
        snprintf(err, errlen, "%s must be an integer from %u to %u, got '%s'", info->name,
                 info->min, info->max, value);
        return CAPSTAN_EINVAL;
      }
      if (rc != 0 || x < info->min || x > info->max) {
        snprintf(err, errlen, "%s must be from %u to %u, got '%s'", info->name, info->min,
                 info->max, value);
        return CAPSTAN_ERANGE;
      }
      u = (unsigned)x;
      break;
    }
    case CAPSTAN_SETTING_BOOL:
      if (strcmp(value, "on") == 0) {
        u = 1;
      } else if (strcmp(value, "off") == 0) {
        u = 0;
      } else {
        snprintf(err, errlen, "%s must be on or off, got '%s'", info->name, value);
        return CAPSTAN_EINVAL;
      }
      break;
    case CAPSTAN_SETTING_DIGEST:
      if (strcmp(value, "sha1") == 0) {
        u = 0;
      } else if (strcmp(value, "sha512") == 0) {
        u = 1;
      } else {
        snprintf(err, errlen, "%s must be sha1 or sha512, got '%s'", info->name, value);
        return CAPSTAN_EINVAL;
      }
      break;
    case CAPSTAN_SETTING_ISSUER:
      if (capstan_issuer_parse(value, &u) < 0) {
        snprintf(err, errlen, "%s must be capf, est, mscs or offline, got '%s'", info->name, value);
        return CAPSTAN_EINVAL;
      }
      break;
    case CAPSTAN_SETTING_HOST:
      if (value[0] != '\0') {
        if (!capstan_settings_host_valid(value)) {
          snprintf(err, errlen,
                   "%s must be a host name or an IP address (or \"\" to use the listener "
                   "address), got '%s'",
                   info->name, value);
          return CAPSTAN_EINVAL;
        }
        str = value;
      }
      break;
  }
  return access_field(s, id, true, &u, &str);
}

int capstan_settings_get(const capstan_settings_t *s, const char *name, char *buf, size_t len) {
  int id = find_id(name);
  if (id < 0) return CAPSTAN_ENOENT;
  unsigned u = 0;
  const char *str = NULL;
  access_field((capstan_settings_t *)s, id, false, &u, &str);
  int n;
  switch (infos[id].kind) {
    case CAPSTAN_SETTING_UINT:
      n = snprintf(buf, len, "%u", u);
      break;
    case CAPSTAN_SETTING_BOOL:
      n = snprintf(buf, len, "%s", u ? "on" : "off");
      break;
    case CAPSTAN_SETTING_DIGEST:
      n = snprintf(buf, len, "%s", u ? "sha512" : "sha1");
      break;
    case CAPSTAN_SETTING_ISSUER:
      n = snprintf(buf, len, "%s", capstan_issuer_name(u));
      break;
    default:
      n = snprintf(buf, len, "%s", str != NULL ? str : "");
      break;
  }
  return (n < 0 || (size_t)n >= len) ? CAPSTAN_ERANGE : 0;
}

/* ---- The record ---------------------------------------------------------
 * The one place that maps the stored Settings record to the plain struct
 * and back. A field the record lacks takes records.proto's default. */

#define FROM_UINT(field) out->field = rec->field;
#define FROM_BOOL(field) out->field = rec->field != 0;
#define FROM_DIGEST(field) FROM_BOOL(field)
#define FROM_ISSUER(field) FROM_UINT(field)
#define FROM_HOST(field) \
  snprintf(out->field, sizeof(out->field), "%s", rec->field != NULL ? rec->field : "");
#define FROM(cli, field, kind, min, max, help) FROM_##kind(field)

static void from_record(const Capstan__Settings *rec, capstan_settings_t *out) {
  memset(out, 0, sizeof(*out));
  CAPSTAN_SETTINGS_TABLE(FROM)
  out->trust_generation = rec->trust_generation;
}

/* Only what differs from the stored record is written: a field an
 * operator never set stays absent, so it keeps following records.proto's
 * default in later releases. */
#define TO_UINT(field)         \
  if (s->field != cur.field) { \
    rec->has_##field = 1;      \
    rec->field = s->field;     \
  }
#define TO_BOOL(field) TO_UINT(field)
#define TO_DIGEST(field) TO_UINT(field)
#define TO_ISSUER(field) TO_UINT(field)
#define TO_HOST(field)                                                                   \
  if (strcmp(s->field, cur.field) != 0 &&                                                \
      capstan_record_set_string(&rec->field, s->field[0] != '\0' ? s->field : NULL) < 0) \
    return CAPSTAN_ENOMEM;
#define TO(cli, field, kind, min, max, help) TO_##kind(field)

static int to_record(const capstan_settings_t *s, Capstan__Settings *rec) {
  capstan_settings_t cur;
  from_record(rec, &cur);
  CAPSTAN_SETTINGS_TABLE(TO)
  if (s->trust_generation != cur.trust_generation) {
    rec->has_trust_generation = 1;
    rec->trust_generation = s->trust_generation;
  }
  return 0;
}

void capstan_settings_defaults(capstan_settings_t *out) {
  Capstan__Settings rec = CAPSTAN__SETTINGS__INIT;
  from_record(&rec, out);
}

int capstan_settings_read(capstan_txn_t *txn, capstan_settings_t *out) {
  Capstan__Settings *rec = NULL;
  int err = capstan_store_settings_get(txn, &rec);
  if (err != 0) return err;
  from_record(rec, out);
  capstan__settings__free_unpacked(rec, NULL);
  return 0;
}

static int read_fn(capstan_txn_t *txn, void *arg) {
  return capstan_settings_read(txn, arg);
}

int capstan_settings_load(capstan_store_t *store, capstan_settings_t *out) {
  return capstan_store_read(store, read_fn, out);
}

int capstan_settings_write(capstan_txn_t *txn, const capstan_settings_t *s) {
  /* Onto the stored record, so that fields this build does not know (a
   * newer version's) are kept, and only what changed is written. */
  Capstan__Settings *rec = NULL;
  int err = capstan_store_settings_get(txn, &rec);
  if (err != 0) return err;
  err = to_record(s, rec);
  if (err == 0) err = capstan_store_settings_put(txn, rec);
  capstan__settings__free_unpacked(rec, NULL);
  return err;
}

int capstan_settings_bump_trust_generation(capstan_txn_t *txn) {
  capstan_settings_t s;
  int err = capstan_settings_read(txn, &s);
  if (err != 0) return err;
  s.trust_generation++;
  return capstan_settings_write(txn, &s);
}

#define SAME_UINT(field) \
  if (a->field != b->field) return false;
#define SAME_BOOL(field) SAME_UINT(field)
#define SAME_DIGEST(field) SAME_UINT(field)
#define SAME_ISSUER(field) SAME_UINT(field)
#define SAME_HOST(field) \
  if (strcmp(a->field, b->field) != 0) return false;
#define SAME(cli, field, kind, min, max, help) SAME_##kind(field)

bool capstan_settings_equal(const capstan_settings_t *a, const capstan_settings_t *b) {
  CAPSTAN_SETTINGS_TABLE(SAME)
  return a->trust_generation == b->trust_generation;
}

void capstan_settings_format(const capstan_settings_t *s, char *buf, size_t len) {
  size_t used = 0;
  if (len == 0) return;
  buf[0] = '\0';
  for (size_t i = 0; i < SETTING_COUNT; i++) {
    char value[CAPSTAN_SETTING_HOST_MAX + 1];
    capstan_settings_get(s, infos[i].name, value, sizeof(value));
    const char *quote = infos[i].kind == CAPSTAN_SETTING_HOST ? "\"" : "";
    int n = snprintf(buf + used, len - used, "%s%s=%s%s%s", i ? " " : "", infos[i].name, quote,
                     value, quote);
    if (n < 0 || (size_t)n >= len - used) return; /* truncated, still terminated */
    used += (size_t)n;
  }
}
