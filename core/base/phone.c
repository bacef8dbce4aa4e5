#include "core/base/phone.h"

#include <stddef.h>
#include <string.h>

#include "core/base/error.h"

#define COUNT(t) (sizeof(t) / sizeof((t)[0]))

const char *capstan_name_list_text(const char *list, char *buf, size_t cap) {
  size_t n = strlen(list);
  if (n > 0 && n <= cap) {
    memcpy(buf, list, n - 1);
    buf[n - 1] = '\0';
  }
  return buf;
}

/* ---- Key algorithms and sizes -------------------------------------------- */

const char *capstan_key_alg_name(int alg) {
  switch (alg) {
#define X(id, v, name) \
  case v:              \
    return name;
    CAPSTAN_KEY_ALGS(X)
#undef X
  }
  return "?";
}

static const struct {
  const char *name;
  int alg;
  unsigned bits;
} keys[] = {
#define X(name, alg, bits) {name, alg, bits},
    CAPSTAN_KEYS(X)
#undef X
};
#define X(name, alg, bits) name ","
static const char key_list[] = CAPSTAN_KEYS(X);
#undef X

bool capstan_key_valid(int alg, unsigned bits) {
  for (size_t i = 0; i < COUNT(keys); i++) {
    if (keys[i].alg == alg && keys[i].bits == bits) return true;
  }
  return false;
}

const char *capstan_key_name(int alg, unsigned bits) {
  for (size_t i = 0; i < COUNT(keys); i++) {
    if (keys[i].alg == alg && keys[i].bits == bits) return keys[i].name;
  }
  return "?";
}

const char *capstan_key_names(void) {
  static char buf[sizeof(key_list)];
  return capstan_name_list_text(key_list, buf, sizeof(buf));
}

int capstan_key_from_name(const char *s, int *alg, unsigned *bits) {
  if (s == NULL) return CAPSTAN_EINVAL;
  for (size_t i = 0; i < COUNT(keys); i++) {
    if (strcmp(keys[i].name, s) == 0) {
      *alg = keys[i].alg;
      *bits = keys[i].bits;
      return 0;
    }
  }
  return CAPSTAN_EINVAL;
}

/* ---- Hash ids ------------------------------------------------------------ */

const char *capstan_hash_name(int hash) {
  switch (hash) {
#define X(id, v, name) \
  case v:              \
    return name;
    CAPSTAN_HASHES(X)
#undef X
  }
  return "?";
}

/* ---- Authentication modes ------------------------------------------------ */

static const struct {
  const char *name;
  int mode;
  int choosable;
} auth_modes[] = {
#define X(id, v, name, choosable) {name, v, choosable},
    CAPSTAN_AUTH_MODES(X)
#undef X
};
/* The length of every name with its comma: a constant, so that clang sees
 * no array used only in a sizeof. */
#define X(id, v, name, choosable) name ","
enum { AUTH_MODE_ALL_LEN = sizeof(CAPSTAN_AUTH_MODES(X)) };
#undef X

const char *capstan_auth_mode_name(int mode) {
  for (size_t i = 0; i < COUNT(auth_modes); i++) {
    if (auth_modes[i].mode == mode) return auth_modes[i].name;
  }
  return "?";
}

const char *capstan_auth_mode_names(void) {
  /* The choosable names fit where all the names do. */
  static char buf[AUTH_MODE_ALL_LEN];
  size_t n = 0;
  for (size_t i = 0; i < COUNT(auth_modes); i++) {
    if (!auth_modes[i].choosable) continue;
    size_t len = strlen(auth_modes[i].name);
    memcpy(buf + n, auth_modes[i].name, len);
    buf[n + len] = ',';
    n += len + 1;
  }
  buf[n > 0 ? n - 1 : 0] = '\0';
  return buf;
}

int capstan_auth_mode_from_name(const char *s, int *mode) {
  if (s == NULL) return CAPSTAN_EINVAL;
  for (size_t i = 0; i < COUNT(auth_modes); i++) {
    if (auth_modes[i].choosable && strcmp(auth_modes[i].name, s) == 0) {
      *mode = auth_modes[i].mode;
      return 0;
    }
  }
  return CAPSTAN_EINVAL;
}

static bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

bool capstan_auth_string_valid(const char *s) {
  if (s == NULL) return false;
  size_t n = strnlen(s, CAPSTAN_AUTH_STRING_MAX + 1);
  if (n < CAPSTAN_AUTH_STRING_MIN || n > CAPSTAN_AUTH_STRING_MAX) return false;
  for (size_t i = 0; i < n; i++) {
    if (!is_digit(s[i])) return false;
  }
  return true;
}

/* ---- Certificate types --------------------------------------------------- */

const char *capstan_cert_type_name(int type) {
  switch (type) {
#define X(id, v, name) \
  case v:              \
    return name;
    CAPSTAN_CERT_TYPES(X)
#undef X
  }
  return "?";
}

/* ---- Device names -------------------------------------------------------- */

static bool is_upper_hex(char c) {
  return is_digit(c) || (c >= 'A' && c <= 'F');
}
static bool is_any_hex(char c) {
  return is_upper_hex(c) || (c >= 'a' && c <= 'f');
}
static bool is_alpha(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

/* "SEP" + 12 hex digits: a phone's MAC name. */
#define MAC_NAME_LEN 15

bool capstan_device_name_valid(const char *name) {
  if (name == NULL) return false;
  size_t n = strnlen(name, CAPSTAN_DEVICE_NAME_MAX + 1);
  if (n == 0 || n > CAPSTAN_DEVICE_NAME_MAX || !is_alpha(name[0])) return false;
  for (size_t i = 0; i < n; i++) {
    char c = name[i];
    if (!is_alpha(c) && !is_digit(c) && c != '.' && c != '_' && c != '-') return false;
  }
  if (n == MAC_NAME_LEN && strncmp(name, "SEP", 3) == 0) {
    bool hex = true;
    for (size_t i = 3; i < n; i++) hex = hex && is_any_hex(name[i]);
    if (hex) {
      for (size_t i = 3; i < n; i++) {
        if (!is_upper_hex(name[i])) return false;
      }
    }
  }
  return true;
}

static char to_upper(char c) {
  return c >= 'a' && c <= 'z' ? (char)(c - 'a' + 'A') : c;
}

static bool sep_prefix(const char *name) {
  return to_upper(name[0]) == 'S' && to_upper(name[1]) == 'E' && to_upper(name[2]) == 'P';
}

capstan_device_name_form_t capstan_device_name_form(const char *name) {
  if (name == NULL) return CAPSTAN_DEVICE_NAME_INVALID;
  size_t n = strnlen(name, CAPSTAN_DEVICE_NAME_MAX + 1);
  if (n >= 3 && sep_prefix(name)) {
    if (n != MAC_NAME_LEN) return CAPSTAN_DEVICE_NAME_BAD_SEP;
    bool upper = strncmp(name, "SEP", 3) == 0;
    for (size_t i = 3; i < n; i++) {
      if (!is_any_hex(name[i])) return CAPSTAN_DEVICE_NAME_BAD_SEP;
      upper = upper && is_upper_hex(name[i]);
    }
    return upper ? CAPSTAN_DEVICE_NAME_MAC : CAPSTAN_DEVICE_NAME_MAC_LOWER;
  }
  return capstan_device_name_valid(name) ? CAPSTAN_DEVICE_NAME_OTHER : CAPSTAN_DEVICE_NAME_INVALID;
}

bool capstan_device_name_canonical(const char *name, char *out, size_t cap) {
  size_t n = strlen(name);
  if (n + 1 > cap) return false;
  bool mac = capstan_device_name_form(name) == CAPSTAN_DEVICE_NAME_MAC_LOWER;
  for (size_t i = 0; i <= n; i++) out[i] = mac ? to_upper(name[i]) : name[i];
  return true;
}
