#include "handlers/admin/json.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/base/error.h"

void capstan_json_init(capstan_json_t *j) {
  memset(j, 0, sizeof(*j));
}

void capstan_json_cleanup(capstan_json_t *j) {
  free(j->data);
  memset(j, 0, sizeof(*j));
}

int capstan_json_take(capstan_json_t *j, char **out, size_t *len) {
  *out = NULL;
  *len = 0;
  if (j->failed || j->data == NULL) {
    int failed = j->failed;
    capstan_json_cleanup(j);
    if (failed) return CAPSTAN_ENOMEM;
    /* Nothing written: an empty string. */
    *out = calloc(1, 1);
    return *out == NULL ? CAPSTAN_ENOMEM : 0;
  }
  *out = j->data;
  *len = j->len;
  memset(j, 0, sizeof(*j));
  return 0;
}

/* Room for |n| more bytes and the NUL. */
static int reserve(capstan_json_t *j, size_t n) {
  if (j->failed) return -1;
  if (j->cap - j->len > n) return 0;
  size_t cap = j->cap ? j->cap : 256;
  while (cap - j->len <= n) {
    if (cap > SIZE_MAX / 2) {
      j->failed = 1;
      return -1;
    }
    cap *= 2;
  }
  char *d = realloc(j->data, cap);
  if (d == NULL) {
    j->failed = 1;
    return -1;
  }
  j->data = d;
  j->cap = cap;
  return 0;
}

void capstan_json_raw(capstan_json_t *j, const char *s, size_t n) {
  if (reserve(j, n) < 0) return;
  memcpy(j->data + j->len, s, n);
  j->len += n;
  j->data[j->len] = '\0';
}

static void put(capstan_json_t *j, char c) {
  capstan_json_raw(j, &c, 1);
}

void capstan_json_printf(capstan_json_t *j, const char *fmt, ...) {
  if (j->failed) return;
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n < 0 || reserve(j, (size_t)n) < 0) {
    j->failed = 1;
    return;
  }
  va_start(ap, fmt);
  vsnprintf(j->data + j->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  j->len += (size_t)n;
}

/* Before a value: a comma when it is not the first element (a value right
 * after a key never gets one: the key cleared the flag). */
static void before_value(capstan_json_t *j) {
  if (j->need_comma) put(j, ',');
  j->need_comma = 1;
}

void capstan_json_open(capstan_json_t *j, char bracket) {
  before_value(j);
  put(j, bracket);
  j->need_comma = 0;
}

void capstan_json_close(capstan_json_t *j, char bracket) {
  put(j, bracket);
  j->need_comma = 1;
}

/* The length of the valid UTF-8 sequence at |s| (at most |n| bytes), or 0
 * when it is not one (overlong forms, surrogates and values past U+10FFFF
 * are not). */
static size_t utf8_len(const unsigned char *s, size_t n) {
  unsigned c = s[0];
  size_t len;
  unsigned min;
  if (c < 0x80) return 1;
  if (c >= 0xc2 && c <= 0xdf) {
    len = 2, min = 0x80;
  } else if (c >= 0xe0 && c <= 0xef) {
    len = 3, min = 0x800;
  } else if (c >= 0xf0 && c <= 0xf4) {
    len = 4, min = 0x10000;
  } else {
    return 0;
  }
  if (n < len) return 0;
  unsigned cp = c & (0x7f >> len);
  for (size_t i = 1; i < len; i++) {
    if ((s[i] & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (s[i] & 0x3f);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  return len;
}

void capstan_json_strn(capstan_json_t *j, const char *s, size_t n) {
  before_value(j);
  put(j, '"');
  const unsigned char *p = (const unsigned char *)s;
  size_t i = 0;
  while (i < n && !j->failed) {
    unsigned char c = p[i];
    switch (c) {
      case '"':
        capstan_json_raw(j, "\\\"", 2);
        i++;
        continue;
      case '\\':
        capstan_json_raw(j, "\\\\", 2);
        i++;
        continue;
      case '\n':
        capstan_json_raw(j, "\\n", 2);
        i++;
        continue;
      case '\r':
        capstan_json_raw(j, "\\r", 2);
        i++;
        continue;
      case '\t':
        capstan_json_raw(j, "\\t", 2);
        i++;
        continue;
      case '<':
      case '>':
      case '&':
        capstan_json_printf(j, "\\u%04x", c);
        i++;
        continue;
      default:
        break;
    }
    if (c < 0x20 || c == 0x7f) {
      capstan_json_printf(j, "\\u%04x", c);
      i++;
      continue;
    }
    size_t len = utf8_len(p + i, n - i);
    if (len == 0) {
      capstan_json_raw(j, "\\ufffd", 6);
      i++;
      continue;
    }
    capstan_json_raw(j, s + i, len);
    i += len;
  }
  put(j, '"');
}

void capstan_json_str(capstan_json_t *j, const char *s) {
  if (s == NULL) {
    capstan_json_null(j);
    return;
  }
  capstan_json_strn(j, s, strlen(s));
}

void capstan_json_null(capstan_json_t *j) {
  before_value(j);
  capstan_json_raw(j, "null", 4);
}

void capstan_json_bool(capstan_json_t *j, int v) {
  before_value(j);
  if (v) {
    capstan_json_raw(j, "true", 4);
  } else {
    capstan_json_raw(j, "false", 5);
  }
}

void capstan_json_int(capstan_json_t *j, int64_t v) {
  before_value(j);
  capstan_json_printf(j, "%lld", (long long)v);
}

void capstan_json_uint(capstan_json_t *j, uint64_t v) {
  before_value(j);
  capstan_json_printf(j, "%llu", (unsigned long long)v);
}

void capstan_json_num(capstan_json_t *j, double v, int decimals) {
  if (!isfinite(v)) {
    capstan_json_null(j);
    return;
  }
  if (decimals < 0) decimals = 0;
  if (decimals > 9) decimals = 9;
  char buf[64];
  int n = snprintf(buf, sizeof(buf), "%.*f", decimals, v);
  if (n < 0 || (size_t)n >= sizeof(buf)) {
    /* Too large for fixed notation here: JSON takes the exponent form. */
    n = snprintf(buf, sizeof(buf), "%.6g", v);
  } else if (decimals > 0) {
    while (n > 0 && buf[n - 1] == '0') buf[--n] = '\0';
    if (n > 0 && buf[n - 1] == '.') buf[--n] = '\0';
  }
  /* "-0" is valid JSON but reads oddly on a page. */
  if (strcmp(buf, "-0") == 0) {
    buf[0] = '0';
    buf[1] = '\0';
    n = 1;
  }
  before_value(j);
  capstan_json_raw(j, buf, (size_t)n);
}

void capstan_json_format_time(int64_t t, char *buf, size_t len) {
  time_t tt = (time_t)t;
  struct tm tm;
  if (gmtime_r(&tt, &tm) == NULL || strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0) {
    snprintf(buf, len, "%lld", (long long)t);
  }
}

void capstan_json_time(capstan_json_t *j, int64_t t) {
  if (t == 0) {
    capstan_json_null(j);
    return;
  }
  char buf[40];
  capstan_json_format_time(t, buf, sizeof(buf));
  capstan_json_str(j, buf);
}

void capstan_json_key(capstan_json_t *j, const char *key) {
  capstan_json_str(j, key);
  put(j, ':');
  j->need_comma = 0;
}

void capstan_json_kstr(capstan_json_t *j, const char *key, const char *s) {
  capstan_json_key(j, key);
  capstan_json_str(j, s);
}

void capstan_json_kint(capstan_json_t *j, const char *key, int64_t v) {
  capstan_json_key(j, key);
  capstan_json_int(j, v);
}

void capstan_json_kuint(capstan_json_t *j, const char *key, uint64_t v) {
  capstan_json_key(j, key);
  capstan_json_uint(j, v);
}

void capstan_json_knum(capstan_json_t *j, const char *key, double v, int decimals) {
  capstan_json_key(j, key);
  capstan_json_num(j, v, decimals);
}

void capstan_json_kbool(capstan_json_t *j, const char *key, int v) {
  capstan_json_key(j, key);
  capstan_json_bool(j, v);
}

void capstan_json_ktime(capstan_json_t *j, const char *key, int64_t t) {
  capstan_json_key(j, key);
  capstan_json_time(j, t);
}

void capstan_json_knull(capstan_json_t *j, const char *key) {
  capstan_json_key(j, key);
  capstan_json_null(j);
}
