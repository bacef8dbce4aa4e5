#include "handlers/cli/cli.h"

#include <dirent.h>
#include <errno.h>
#include <openssl/asn1.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/base/error.h"
#include "storage/devices.h"
#include "storage/lock.h"

void capstan_cli_error(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("capstan: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

int capstan_cli_read(const capstan_cli_t *c, int (*fn)(capstan_txn_t *txn, void *arg), void *arg,
                     const char *what) {
  capstan_store_t *s;
  if (capstan_cli_open_store(c, CAPSTAN_CLI_STORE_EXISTING, &s) != 0) return CAPSTAN_EXIT_ERROR;
  capstan_txn_t txn;
  int err = capstan_store_begin(s, false, &txn);
  if (err == 0) err = fn(&txn, arg);
  capstan_store_abort(&txn);
  capstan_store_close(s);
  return err != 0 ? capstan_cli_store_error(what, err) : CAPSTAN_EXIT_OK;
}

typedef struct {
  int (*iterate)(capstan_txn_t *txn, void *arg);
  void *arg;
  const size_t *n;
  bool json;
  const char *header;
} list_frame_t;

static int list_frame(capstan_txn_t *txn, void *arg) {
  list_frame_t *f = arg;
  fputs(f->json ? "[" : f->header, stdout);
  int err = f->iterate(txn, f->arg);
  if (f->json) fputs(*f->n > 0 ? "\n]\n" : "]\n", stdout);
  return err;
}

int capstan_cli_list(const capstan_cli_t *c, int (*iterate)(capstan_txn_t *txn, void *arg),
                     void *arg, const size_t *n, const char *what, const char *header_fmt, ...) {
  char header[256];
  va_list ap;
  va_start(ap, header_fmt);
  vsnprintf(header, sizeof(header), header_fmt, ap);
  va_end(ap);
  list_frame_t f = {iterate, arg, n, c->json, header};
  return capstan_cli_read(c, list_frame, &f, what);
}

void capstan_cli_json_string(FILE *f, const char *s) {
  if (s == NULL) {
    fputs("null", f);
    return;
  }
  /* Characters with a short escape, and their escapes, position by
   * position. */
  static const char kShort[] = "\"\\\n\r\t", kEscape[] = "\"\\nrt";
  fputc('"', f);
  for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
    const char *e = strchr(kShort, *p);
    if (e != NULL) {
      fputc('\\', f);
      fputc(kEscape[e - kShort], f);
    } else if (*p < 0x20 || *p == 0x7f) {
      fprintf(f, "\\u%04x", *p);
    } else {
      fputc(*p, f);
    }
  }
  fputc('"', f);
}

void capstan_cli_json_bytes(FILE *f, const uint8_t *data, size_t len) {
  char *s = malloc(len + 1);
  if (s == NULL) {
    fputs("null", f);
    return;
  }
  for (size_t i = 0; i < len; i++) s[i] = data[i] == 0 ? ' ' : (char)data[i];
  s[len] = '\0';
  capstan_cli_json_string(f, s);
  free(s);
}

/* Reads exactly |n| digits from |*p| into |*out|. */
static bool digits(const char **p, int n, int *out) {
  int v = 0;
  for (int i = 0; i < n; i++) {
    char c = (*p)[i];
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
  }
  *p += n;
  *out = v;
  return true;
}

static int64_t days_from_civil(int y, int m, int d) {
  /* Howard Hinnant's algorithm: days since 1970-01-01 for a Gregorian date. */
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = (unsigned)(y - era * 400);
  const unsigned doy = (153 * (unsigned)(m + (m > 2 ? -3 : 9)) + 2) / 5 + (unsigned)d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + (int64_t)doe - 719468;
}

static int days_in_month(int y, int m) {
  static const int dm[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0)) return 29;
  return dm[m - 1];
}

int capstan_cli_parse_time(const char *s, int64_t *out) {
  if (s == NULL) return CAPSTAN_EINVAL;
  const char *p = s;
  int y, mo, d, h = 0, mi = 0, sec = 0;
  if (!digits(&p, 4, &y) || *p++ != '-' || !digits(&p, 2, &mo) || *p++ != '-' ||
      !digits(&p, 2, &d)) {
    return CAPSTAN_EINVAL;
  }
  if (y < 1970 || mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo)) return CAPSTAN_EINVAL;
  int64_t offset = 0;
  if (*p == 'T' || *p == 't' || *p == ' ') {
    p++;
    if (!digits(&p, 2, &h) || *p++ != ':' || !digits(&p, 2, &mi)) return CAPSTAN_EINVAL;
    if (*p == ':') {
      p++;
      if (!digits(&p, 2, &sec)) return CAPSTAN_EINVAL;
    }
    if (h > 23 || mi > 59 || sec > 60) return CAPSTAN_EINVAL;
    if (*p == 'Z' || *p == 'z') {
      p++;
    } else if (*p == '+' || *p == '-') {
      int sign = *p++ == '-' ? -1 : 1, oh, om;
      if (!digits(&p, 2, &oh) || *p++ != ':' || !digits(&p, 2, &om) || oh > 23 || om > 59) {
        return CAPSTAN_EINVAL;
      }
      offset = sign * (oh * 3600 + om * 60);
    } else {
      return CAPSTAN_EINVAL; /* a time without a zone is ambiguous */
    }
  }
  if (*p != '\0') return CAPSTAN_EINVAL;
  *out = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec - offset;
  return 0;
}

void capstan_cli_format_time(int64_t t, char *buf, size_t len) {
  time_t tt = (time_t)t;
  struct tm tm;
  if (gmtime_r(&tt, &tm) == NULL || strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0) {
    snprintf(buf, len, "%lld", (long long)t);
  }
}

int capstan_cli_random_digits(char *out, size_t n) {
  if (n < CAPSTAN_AUTH_STRING_MIN || n > CAPSTAN_AUTH_STRING_MAX) return CAPSTAN_EINVAL;
  size_t i = 0;
  while (i < n) {
    uint8_t b[16];
    if (!RAND_bytes(b, sizeof(b))) return CAPSTAN_ECRYPTO;
    for (size_t j = 0; j < sizeof(b) && i < n; j++) {
      if (b[j] >= 250) continue; /* 250..255 would bias the digits */
      out[i++] = (char)('0' + b[j] % 10);
    }
  }
  out[n] = '\0';
  return 0;
}

int capstan_cli_read_file(const char *path, size_t max, uint8_t **out, size_t *len) {
  *out = NULL;
  *len = 0;
  FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
  if (f == NULL) {
    int err = -errno;
    capstan_cli_error("cannot read '%s': %s", path, strerror(-err));
    return err;
  }
  size_t cap = 0, n = 0;
  uint8_t *buf = NULL;
  int err = 0;
  for (;;) {
    if (n == cap) {
      if (cap >= max + 1) {
        capstan_cli_error("'%s' is larger than %zu bytes", path, max);
        err = CAPSTAN_ERANGE;
        break;
      }
      size_t ncap = cap == 0 ? 65536 : cap * 2;
      if (ncap > max + 1) ncap = max + 1;
      uint8_t *nb = realloc(buf, ncap);
      if (nb == NULL) {
        err = CAPSTAN_ENOMEM;
        capstan_cli_error("out of memory reading '%s'", path);
        break;
      }
      buf = nb;
      cap = ncap;
    }
    size_t r = fread(buf + n, 1, cap - n, f);
    n += r;
    if (r == 0) {
      if (ferror(f)) {
        err = CAPSTAN_EIO;
        capstan_cli_error("cannot read '%s': %s", path, strerror(errno));
      }
      break;
    }
  }
  if (f != stdin) fclose(f);
  if (err == 0 && n > max) {
    capstan_cli_error("'%s' is larger than %zu bytes", path, max);
    err = CAPSTAN_ERANGE;
  }
  if (err != 0) {
    free(buf);
    return err;
  }
  *out = buf;
  *len = n;
  return 0;
}

void capstan_cli_hex(const uint8_t *data, size_t len, char *out) {
  static const char hex[] = "0123456789abcdef";
  for (size_t i = 0; i < len; i++) {
    out[2 * i] = hex[data[i] >> 4];
    out[2 * i + 1] = hex[data[i] & 15];
  }
  out[2 * len] = '\0';
}

int capstan_cli_cert_not_after(const uint8_t *der, size_t len, int64_t *out) {
  const uint8_t *p = der;
  X509 *x = d2i_X509(NULL, &p, (long)len);
  if (x == NULL) return CAPSTAN_EINVAL;
  int days, secs;
  int64_t now = (int64_t)time(NULL);
  /* BoringSSL here has no ASN1_TIME_to_posix: measure from now instead. */
  int ok = ASN1_TIME_diff(&days, &secs, NULL, X509_get0_notAfter(x));
  X509_free(x);
  if (!ok) return CAPSTAN_EINVAL;
  *out = now + (int64_t)days * 86400 + secs;
  return 0;
}

int capstan_cli_write_text(const char *path, const char *text, const char *what) {
  FILE *f = stdout;
  if (path != NULL && strcmp(path, "-") != 0) {
    f = fopen(path, "w");
    if (f == NULL) {
      capstan_cli_error("cannot write '%s': %s", path, strerror(errno));
      return CAPSTAN_EXIT_ERROR;
    }
  }
  int rc = CAPSTAN_EXIT_OK;
  if (fputs(text, f) == EOF || fflush(f) != 0) {
    capstan_cli_error("cannot write %s", what);
    rc = CAPSTAN_EXIT_ERROR;
  }
  if (f != stdout && fclose(f) != 0) rc = CAPSTAN_EXIT_ERROR;
  return rc;
}

int capstan_cli_dir_has_content(const char *dir, bool *out) {
  *out = false;
  DIR *d = opendir(dir);
  if (d == NULL) return -errno;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0 &&
        strcmp(e->d_name, CAPSTAN_SERVE_PID_FILE) != 0) {
      *out = true;
      break;
    }
  }
  closedir(d);
  return 0;
}
