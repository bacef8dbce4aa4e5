/* Live settings: the fields of records.proto's Settings under the names an
 * operator types (`capstan config set keepalive-minutes 10`), with their
 * kinds, ranges and help, from one table (CAPSTAN_SETTINGS in settings.c).
 *
 * The functions work on a Capstan__Settings held by the caller (usually
 * from capstan_store_settings_get); storing it back is the caller's job. */
#ifndef CAPSTAN_CORE_SETTINGS_H
#define CAPSTAN_CORE_SETTINGS_H

#include <stddef.h>

#include "storage/records.pb-c.h"

typedef enum {
  CAPSTAN_SETTING_UINT,   /* integer in [min, max] */
  CAPSTAN_SETTING_BOOL,   /* on | off */
  CAPSTAN_SETTING_HOST,   /* host name or IP literal; "" = unset */
  CAPSTAN_SETTING_DIGEST, /* sha1 | sha512 */
} capstan_setting_kind_t;

typedef struct {
  const char *name; /* CLI name, e.g. "keepalive-minutes" */
  capstan_setting_kind_t kind;
  unsigned min, max; /* UINT only */
  const char *help;
} capstan_setting_info_t;

/* Number of settings and the i-th one's description (NULL past the end). */
size_t capstan_settings_count(void);
const capstan_setting_info_t *capstan_settings_info(size_t i);
/* Looks a setting up by CLI name; NULL if unknown. */
const capstan_setting_info_t *capstan_settings_find(const char *name);

/* Sets |name| from |value| after validating it. On failure returns
 * CAPSTAN_ENOENT (unknown name), CAPSTAN_ERANGE (number out of range),
 * CAPSTAN_EINVAL (malformed), or CAPSTAN_ENOMEM, and writes a message for
 * the operator into |err| (e.g. "keepalive-minutes must be an integer from
 * 5 to 60, got '61'"); |s| is then unchanged. */
int capstan_settings_set(Capstan__Settings *s, const char *name, const char *value, char *err,
                         size_t errlen);

/* Writes the value of |name| as the CLI shows it ("15", "on", "sha1",
 * a host or ""). CAPSTAN_ENOENT for an unknown name, CAPSTAN_ERANGE if
 * |buf| is too small. */
int capstan_settings_get(const Capstan__Settings *s, const char *name, char *buf, size_t len);

/* True for a valid host name (RFC 1123 labels, at most 253 characters) or
 * an IPv4/IPv6 literal. */
int capstan_settings_host_valid(const char *host);

#endif
