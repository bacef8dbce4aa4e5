/* A growable buffer for writing JSON (the status page's data and the device
 * API). Writers append; the first allocation failure marks the buffer
 * failed, later appends do nothing, and capstan_json_take reports it, so a
 * caller checks once at the end.
 *
 * Strings are escaped for JSON and for embedding in HTML: besides '"', '\\'
 * and control characters, '<', '>' and '&' become \u003c, \u003e and
 * \u0026, so a JSON document can sit inside a <script> element whatever its
 * strings hold. Bytes that are not valid UTF-8 become U+FFFD. */
#ifndef CAPSTAN_HANDLERS_ADMIN_JSON_H
#define CAPSTAN_HANDLERS_ADMIN_JSON_H

#include <stddef.h>
#include <stdint.h>

typedef struct capstan_json {
  char *data;
  size_t len, cap;
  int failed;
  int need_comma; /* the next member or element needs a ',' before it */
} capstan_json_t;

/* Starts empty (nothing allocated until the first append). */
void capstan_json_init(capstan_json_t *j);
/* Frees the buffer; safe on a zeroed or taken buffer. */
void capstan_json_cleanup(capstan_json_t *j);
/* Hands the text (NUL-terminated, malloc'd; caller frees) and its length
 * over and resets |j|. Returns 0, or CAPSTAN_ENOMEM when any append failed
 * (then nothing is handed over). */
int capstan_json_take(capstan_json_t *j, char **out, size_t *len);

/* Raw text, as is. */
void capstan_json_raw(capstan_json_t *j, const char *s, size_t n);
__attribute__((format(printf, 2, 3))) void capstan_json_printf(capstan_json_t *j, const char *fmt,
                                                               ...);

/* Structure: objects and arrays; commas are placed automatically between
 * members (capstan_json_key) and between array elements (the value
 * writers below). */
void capstan_json_open(capstan_json_t *j, char bracket);  /* '{' or '[' */
void capstan_json_close(capstan_json_t *j, char bracket); /* '}' or ']' */
/* A member's key inside an object; the value follows. */
void capstan_json_key(capstan_json_t *j, const char *key);

/* Values. A NULL string is written as null. Numbers that are not finite
 * are written as null (JSON has no NaN). */
void capstan_json_str(capstan_json_t *j, const char *s);
void capstan_json_strn(capstan_json_t *j, const char *s, size_t n);
void capstan_json_null(capstan_json_t *j);
void capstan_json_bool(capstan_json_t *j, int v);
void capstan_json_int(capstan_json_t *j, int64_t v);
void capstan_json_uint(capstan_json_t *j, uint64_t v);
/* |v| with at most |decimals| decimals, trailing zeros dropped. */
void capstan_json_num(capstan_json_t *j, double v, int decimals);
/* Unix seconds as "YYYY-MM-DDTHH:MM:SSZ" (UTC), or null when |t| is 0. */
void capstan_json_time(capstan_json_t *j, int64_t t);

/* Shorthands: key then value. */
void capstan_json_kstr(capstan_json_t *j, const char *key, const char *s);
void capstan_json_kint(capstan_json_t *j, const char *key, int64_t v);
void capstan_json_kuint(capstan_json_t *j, const char *key, uint64_t v);
void capstan_json_knum(capstan_json_t *j, const char *key, double v, int decimals);
void capstan_json_kbool(capstan_json_t *j, const char *key, int v);
void capstan_json_ktime(capstan_json_t *j, const char *key, int64_t t);
void capstan_json_knull(capstan_json_t *j, const char *key);

/* "YYYY-MM-DDTHH:MM:SSZ" for unix seconds |t| into |buf| (at least 21
 * bytes). */
void capstan_json_format_time(int64_t t, char *buf, size_t len);

#endif
