#include "core/settings.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/error.h"

/* X(cli name, Settings field, kind, min, max, help). The field names one
 * member of Capstan__Settings and its has_ flag (none for strings). */
#define CAPSTAN_SETTINGS(X)                                                                        \
  X("keepalive-minutes", keepalive_minutes, UINT, 5, 60,                                           \
    "minutes between CAPF keep-alives on idle connections")                                        \
  X("validity-days", validity_days, UINT, 1, 1825, "validity of issued LSCs, in days")             \
  X("max-concurrent-keygen", max_concurrent_keygen, UINT, 1, 100000,                               \
    "phones allowed in key generation at once")                                                    \
  X("max-new-keygen-per-second", max_new_keygen_per_second, UINT, 1, 100000,                       \
    "new key generations started per second")                                                      \
  X("throttle-hold-seconds", throttle_hold_seconds, UINT, 0, 600,                                  \
    "how long a throttled phone waits for a slot before being told to retry")                      \
  X("retry-delay-seconds", retry_delay_seconds, UINT, 1, 3600,                                     \
    "retry delay sent to throttled phones")                                                        \
  X("legacy-tls", legacy_tls, BOOL, 0, 1, "allow TLS 1.0/1.1 and AES-CBC-SHA for old phones")      \
  X("enable-ipv6", enable_ipv6, BOOL, 0, 1,                                                        \
    "accept CAPF connections that arrive over IPv6 (off: refuse them)")                            \
  X("keygen-ceiling-seconds", keygen_ceiling_seconds, UINT, 60, 86400,                             \
    "longest wait for a phone's key generation")                                                   \
  X("handshake-timeout-seconds", handshake_timeout_seconds, UINT, 1, 600, "TLS handshake timeout") \
  X("step-timeout-seconds", step_timeout_seconds, UINT, 1, 3600,                                   \
    "timeout of each CAPF protocol step but key generation")                                       \
  X("max-connections", max_connections, UINT, 1, 1000000, "CAPF connections at once")              \
  X("max-connections-per-address", max_connections_per_address, UINT, 1, 100000,                   \
    "CAPF connections at once from one address")                                                   \
  X("capf-host", capf_host, HOST, 0, 0,                                                            \
    "CAPF host name or address given to phones (empty: the listener address)")                     \
  X("enc-config-digest", enc_config_sha512, DIGEST, 0, 1,                                          \
    "digest of signed phone files (ITL, .sgn, .enc.sgn) and of the encrypted configuration")

typedef enum {
#define ID(cli, field, kind, min, max, help) SETTING_##field,
  CAPSTAN_SETTINGS(ID)
#undef ID
      SETTING_COUNT
} setting_id_t;

static const capstan_setting_info_t infos[SETTING_COUNT] = {
#define INFO(cli, field, kind, min, max, help) {cli, CAPSTAN_SETTING_##kind, min, max, help},
    CAPSTAN_SETTINGS(INFO)
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
      s->has_##field = 1;  \
      s->field = *u;       \
    } else {               \
      *u = s->field;       \
    }                      \
    return 0;
#define ACCESS_BOOL(field)   \
  case SETTING_##field:      \
    if (set) {               \
      s->has_##field = 1;    \
      s->field = *u != 0;    \
    } else {                 \
      *u = s->field ? 1 : 0; \
    }                        \
    return 0;
#define ACCESS_DIGEST(field) ACCESS_BOOL(field)
#define ACCESS_HOST(field) \
  case SETTING_##field:    \
    if (set) {             \
      free(s->field);      \
      s->field = *str;     \
      *str = NULL;         \
    } else {               \
      *str = s->field;     \
    }                      \
    return 0;
#define ACCESS(cli, field, kind, min, max, help) ACCESS_##kind(field)

/* set: moves *u or *str into the field (taking ownership of *str);
 * get: reads the field into *u or *str (borrowed). */
static int access_field(Capstan__Settings *s, int id, bool set, unsigned *u, char **str) {
  switch (id) {
    CAPSTAN_SETTINGS(ACCESS)
    default:
      return CAPSTAN_ENOENT;
  }
}

static bool is_label_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
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

int capstan_settings_set(Capstan__Settings *s, const char *name, const char *value, char *err,
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
  char *str = NULL;
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
    case CAPSTAN_SETTING_HOST:
      if (value[0] != '\0') {
        if (!capstan_settings_host_valid(value)) {
          snprintf(err, errlen,
                   "%s must be a host name or an IP address (or \"\" to use the listener "
                   "address), got '%s'",
                   info->name, value);
          return CAPSTAN_EINVAL;
        }
        str = strdup(value);
        if (str == NULL) {
          snprintf(err, errlen, "out of memory");
          return CAPSTAN_ENOMEM;
        }
      }
      break;
  }
  return access_field(s, id, true, &u, &str);
}

int capstan_settings_get(const Capstan__Settings *s, const char *name, char *buf, size_t len) {
  int id = find_id(name);
  if (id < 0) return CAPSTAN_ENOENT;
  unsigned u = 0;
  char *str = NULL;
  access_field((Capstan__Settings *)s, id, false, &u, &str);
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
    default:
      n = snprintf(buf, len, "%s", str != NULL ? str : "");
      break;
  }
  return (n < 0 || (size_t)n >= len) ? CAPSTAN_ERANGE : 0;
}
