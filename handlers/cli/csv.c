/* CSV reading and writing, and the device CSV format of `device import` /
 * `device export`. */
#include <openssl/bytestring.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "handlers/cli/cli.h"
#include "core/base/error.h"
#include "storage/devices.h"

/* ---- RFC 4180 reader --------------------------------------------------- */

static bool peek(const CBS *c, uint8_t *b) {
  if (CBS_len(c) == 0) return false;
  *b = CBS_data(c)[0];
  return true;
}

static bool peek2(const CBS *c, uint8_t *b) {
  if (CBS_len(c) < 2) return false;
  *b = CBS_data(c)[1];
  return true;
}

typedef struct {
  char *buf;    /* all fields of the record, each NUL-terminated */
  size_t pos;   /* next free byte */
  size_t start; /* start of the current field */
} record_buf_t;

#define RECORD_CAP (CAPSTAN_CSV_MAX_FIELDS * (CAPSTAN_CSV_MAX_FIELD + 1))

static const char *append(record_buf_t *r, uint8_t c) {
  if (c == '\0') return "NUL byte in field";
  if (r->pos - r->start >= CAPSTAN_CSV_MAX_FIELD) return "field longer than 4096 bytes";
  r->buf[r->pos++] = (char)c;
  return NULL;
}

/* Consumes a line end if one is next: CRLF or LF. Returns false for a
 * lone CR, which no reader agrees on. */
static bool eat_eol(CBS *c, size_t *line, bool *at_eol) {
  uint8_t b, b2;
  *at_eol = false;
  if (!peek(c, &b)) {
    *at_eol = true; /* end of data ends the record too */
    return true;
  }
  if (b == '\n') {
    CBS_skip(c, 1);
  } else if (b == '\r') {
    if (!peek2(c, &b2) || b2 != '\n') return false;
    CBS_skip(c, 2);
  } else {
    return true;
  }
  (*line)++;
  *at_eol = true;
  return true;
}

int capstan_csv_parse(const uint8_t *data, size_t len, capstan_csv_record_fn fn, void *arg,
                      size_t *err_line, const char **err_msg) {
  *err_line = 0;
  *err_msg = NULL;
  CBS c;
  CBS_init(&c, data, len);
  if (len >= 3 && data[0] == 0xEF && data[1] == 0xBB && data[2] == 0xBF) CBS_skip(&c, 3);
  /* A record's fields never hold more bytes than the input plus their NULs. */
  size_t cap = len < RECORD_CAP ? len + CAPSTAN_CSV_MAX_FIELDS + 1 : RECORD_CAP;
  record_buf_t r = {.buf = malloc(cap)};
  char **fields = malloc(CAPSTAN_CSV_MAX_FIELDS * sizeof(char *));
  if (r.buf == NULL || fields == NULL) {
    free(r.buf);
    free(fields);
    *err_msg = "out of memory";
    return CAPSTAN_ENOMEM;
  }
  size_t line = 1;
  int ret = 0;
  const char *msg = NULL;
  uint8_t b;
  while (CBS_len(&c) > 0) {
    bool eol;
    size_t rec_line = line;
    /* Blank lines carry no record. */
    if (!eat_eol(&c, &line, &eol)) {
      msg = "carriage return without line feed";
      goto fail;
    }
    if (eol) continue;

    size_t nfields = 0;
    r.pos = 0;
    for (;;) { /* one field per turn */
      if (nfields == CAPSTAN_CSV_MAX_FIELDS) {
        msg = "more than 64 columns";
        goto fail;
      }
      r.start = r.pos;
      fields[nfields] = r.buf + r.pos;
      if (peek(&c, &b) && b == '"') {
        CBS_skip(&c, 1);
        for (;;) {
          if (!CBS_get_u8(&c, &b)) {
            line = rec_line;
            msg = "unterminated quoted field";
            goto fail;
          }
          if (b == '"') {
            uint8_t n2;
            if (peek(&c, &n2) && n2 == '"') {
              CBS_skip(&c, 1);
            } else {
              break;
            }
          } else if (b == '\n') {
            line++;
          }
          if ((msg = append(&r, b)) != NULL) goto fail;
        }
        if (peek(&c, &b) && b != ',' && b != '\r' && b != '\n') {
          msg = "unexpected character after a closing quote";
          goto fail;
        }
      } else {
        while (peek(&c, &b) && b != ',' && b != '\r' && b != '\n') {
          if (b == '"') {
            msg = "quote inside an unquoted field (quote the whole field and double the quote)";
            goto fail;
          }
          if ((msg = append(&r, b)) != NULL) goto fail;
          CBS_skip(&c, 1);
        }
      }
      r.buf[r.pos++] = '\0';
      nfields++;
      if (peek(&c, &b) && b == ',') {
        CBS_skip(&c, 1);
        continue;
      }
      if (!eat_eol(&c, &line, &eol)) {
        msg = "carriage return without line feed";
        goto fail;
      }
      break;
    }
    ret = fn(rec_line, fields, nfields, arg);
    if (ret != 0) break;
  }
  free(r.buf);
  free(fields);
  return ret;
fail:
  free(r.buf);
  free(fields);
  *err_line = line;
  *err_msg = msg;
  return CAPSTAN_EINVAL;
}

void capstan_csv_write_field(FILE *f, const char *s) {
  if (s == NULL) return;
  if (strpbrk(s, ",\"\r\n") == NULL) {
    fputs(s, f);
    return;
  }
  fputc('"', f);
  for (const char *p = s; *p != '\0'; p++) {
    if (*p == '"') fputc('"', f);
    fputc(*p, f);
  }
  fputc('"', f);
}

/* ---- Deadlines ------------------------------------------------------------ */

static bool two_digits(const char *p, int *v) {
  if (p[0] < '0' || p[0] > '9' || p[1] < '0' || p[1] > '9') return false;
  *v = (p[0] - '0') * 10 + (p[1] - '0');
  return true;
}

int capstan_cli_parse_deadline(const char *s, int64_t *out) {
  if (s == NULL) return CAPSTAN_EINVAL;
  if (capstan_cli_parse_time(s, out) == 0) return 0;
  /* YYYY-MM-DDTHH:MM[:SS] without a zone: local time. */
  size_t n = strlen(s);
  int y = 0, mo, d, h, mi, sec = 0;
  if (n != 16 && n != 19) return CAPSTAN_EINVAL;
  for (int i = 0; i < 4; i++) {
    if (s[i] < '0' || s[i] > '9') return CAPSTAN_EINVAL;
    y = y * 10 + (s[i] - '0');
  }
  if (s[4] != '-' || !two_digits(s + 5, &mo) || s[7] != '-' || !two_digits(s + 8, &d) ||
      (s[10] != 'T' && s[10] != 't' && s[10] != ' ') || !two_digits(s + 11, &h) || s[13] != ':' ||
      !two_digits(s + 14, &mi)) {
    return CAPSTAN_EINVAL;
  }
  if (n == 19 && (s[16] != ':' || !two_digits(s + 17, &sec))) return CAPSTAN_EINVAL;
  if (y < 1970 || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 59) {
    return CAPSTAN_EINVAL;
  }
  struct tm tm = {.tm_year = y - 1900,
                  .tm_mon = mo - 1,
                  .tm_mday = d,
                  .tm_hour = h,
                  .tm_min = mi,
                  .tm_sec = sec,
                  .tm_isdst = -1};
  time_t t = mktime(&tm);
  /* mktime normalizes: 30 February, or an hour skipped by DST, comes back
   * as another time. */
  if (t == (time_t)-1 || tm.tm_year != y - 1900 || tm.tm_mon != mo - 1 || tm.tm_mday != d ||
      tm.tm_hour != h || tm.tm_min != mi) {
    return CAPSTAN_EINVAL;
  }
  *out = (int64_t)t;
  return 0;
}

void capstan_cli_format_deadline(int64_t t, char *buf, size_t len) {
  time_t tt = (time_t)t;
  struct tm tm;
  char utc[40];
  capstan_cli_format_time(t, utc, sizeof(utc));
  if (localtime_r(&tt, &tm) == NULL) {
    snprintf(buf, len, "%s", utc);
    return;
  }
  char local[64];
  if (strftime(local, sizeof(local), "%Y-%m-%d %H:%M:%S %Z", &tm) == 0) {
    snprintf(buf, len, "%s", utc);
    return;
  }
  if (tm.tm_gmtoff == 0) {
    snprintf(buf, len, "%s", local);
  } else {
    snprintf(buf, len, "%s (%s)", local, utc);
  }
}

/* ---- Device CSV --------------------------------------------------------- */

enum { COL_NAME, COL_OPERATION, COL_AUTH_MODE, COL_AUTH_STRING, COL_KEY, COL_COMPLETES_BY, NCOLS };
static const char *const col_names[NCOLS] = {"name",        "operation", "auth_mode",
                                             "auth_string", "key",       "completes_by"};

typedef struct {
  const char *fname;
  char *err;
  size_t errlen;
  bool header_seen;
  capstan_device_row_t *rows;
  size_t n, cap;
} parse_ctx_t;

static int fail(parse_ctx_t *p, size_t line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(parse_ctx_t *p, size_t line, const char *fmt, ...) {
  int n = snprintf(p->err, p->errlen, "%s:%zu: ", p->fname, line);
  if (n >= 0 && (size_t)n < p->errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err + n, p->errlen - (size_t)n, fmt, ap);
    va_end(ap);
  }
  return CAPSTAN_EINVAL;
}

static int check_header(parse_ctx_t *p, size_t line, char **f, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (i >= NCOLS) {
      return fail(p, line, "unknown column '%s': the header must be exactly %s", f[i],
                  CAPSTAN_DEVICE_CSV_HEADER);
    }
    if (strcmp(f[i], col_names[i]) != 0) {
      return fail(p, line, "column %zu is '%s', expected '%s': the header must be exactly %s",
                  i + 1, f[i], col_names[i], CAPSTAN_DEVICE_CSV_HEADER);
    }
  }
  if (n < NCOLS) {
    return fail(p, line, "missing column '%s': the header must be exactly %s", col_names[n],
                CAPSTAN_DEVICE_CSV_HEADER);
  }
  return 0;
}

static int bad_choice(parse_ctx_t *p, size_t line, int col, const char *v, const char *names) {
  if (v[0] == '\0') return fail(p, line, "column '%s': required, one of %s", col_names[col], names);
  return fail(p, line, "column '%s': '%s' is not one of %s", col_names[col], v, names);
}

static int parse_row(size_t line, char **f, size_t n, void *arg) {
  parse_ctx_t *p = arg;
  if (!p->header_seen) {
    p->header_seen = true;
    return check_header(p, line, f, n);
  }
  if (n != NCOLS) {
    return fail(p, line, "expected %d columns (%s), found %zu", NCOLS, CAPSTAN_DEVICE_CSV_HEADER,
                n);
  }
  if (p->n == p->cap) {
    size_t cap = p->cap == 0 ? 1024 : p->cap * 2;
    capstan_device_row_t *rows = realloc(p->rows, cap * sizeof(*rows));
    if (rows == NULL) {
      snprintf(p->err, p->errlen, "out of memory");
      return CAPSTAN_ENOMEM;
    }
    p->rows = rows;
    p->cap = cap;
  }
  capstan_device_row_t *r = &p->rows[p->n];
  memset(r, 0, sizeof(*r));
  r->line = line;
  capstan_device_name_form_t form = capstan_device_name_form(f[COL_NAME]);
  if (form == CAPSTAN_DEVICE_NAME_INVALID) {
    return fail(
        p, line,
        "column 'name': '%s' is not a device name (a phone's is " CAPSTAN_DEVICE_NAME_MAC_RULE
        "; other forms are " CAPSTAN_DEVICE_NAME_OTHER_RULE ")",
        f[COL_NAME]);
  }
  if (form == CAPSTAN_DEVICE_NAME_BAD_SEP) {
    return fail(p, line,
                "column 'name': '%s' starts with SEP but is not a phone's name: a SEP name must be "
                "" CAPSTAN_DEVICE_NAME_MAC_RULE,
                f[COL_NAME]);
  }
  capstan_device_name_canonical(f[COL_NAME], r->name, sizeof(r->name));
  r->name_upcased = form == CAPSTAN_DEVICE_NAME_MAC_LOWER;
  r->name_other_form = form == CAPSTAN_DEVICE_NAME_OTHER;
  if (capstan_operation_parse(f[COL_OPERATION], &r->operation) != 0) {
    return bad_choice(p, line, COL_OPERATION, f[COL_OPERATION], capstan_operation_names());
  }
  if (capstan_auth_mode_parse(f[COL_AUTH_MODE], &r->auth_mode) != 0) {
    return bad_choice(p, line, COL_AUTH_MODE, f[COL_AUTH_MODE], capstan_auth_mode_names());
  }
  if (f[COL_AUTH_STRING][0] != '\0') {
    if (!capstan_auth_string_valid(f[COL_AUTH_STRING])) {
      /* Say what is wrong without echoing a secret into logs or terminals. */
      return fail(p, line, "column 'auth_string': must be 4 to 10 digits (got %zu characters)",
                  strlen(f[COL_AUTH_STRING]));
    }
    snprintf(r->auth_string, sizeof(r->auth_string), "%s", f[COL_AUTH_STRING]);
  }
  if (f[COL_KEY][0] == '\0') {
    r->key_alg = CAPSTAN__KEY_ALG__KEY_ALG_RSA;
    r->key_bits = 2048;
  } else if (capstan_key_parse(f[COL_KEY], &r->key_alg, &r->key_bits) != 0) {
    return bad_choice(p, line, COL_KEY, f[COL_KEY], capstan_key_names());
  }
  if (f[COL_COMPLETES_BY][0] != '\0' &&
      capstan_cli_parse_deadline(f[COL_COMPLETES_BY], &r->completes_by) != 0) {
    return fail(p, line, "column 'completes_by': '%s' is not a date (" CAPSTAN_DEADLINE_FORMS ")",
                f[COL_COMPLETES_BY]);
  }
  p->n++;
  return 0;
}

static int cmp_row_name(const void *a, const void *b) {
  const capstan_device_row_t *const *x = a, *const *y = b;
  int c = strcmp((*x)->name, (*y)->name);
  if (c != 0) return c;
  return (*x)->line < (*y)->line ? -1 : (*x)->line > (*y)->line;
}

int capstan_device_csv_parse(const char *fname, const uint8_t *data, size_t len,
                             capstan_device_row_t **rows, size_t *nrows, char *err, size_t errlen) {
  *rows = NULL;
  *nrows = 0;
  parse_ctx_t p = {.fname = fname, .err = err, .errlen = errlen};
  size_t eline;
  const char *emsg;
  int rc = capstan_csv_parse(data, len, parse_row, &p, &eline, &emsg);
  if (rc != 0 && emsg != NULL) {
    if (eline > 0) {
      fail(&p, eline, "%s", emsg);
    } else {
      snprintf(err, errlen, "%s: %s", fname, emsg);
    }
  }
  if (rc == 0 && !p.header_seen) {
    snprintf(err, errlen, "%s: empty file: the first line must be the header %s", fname,
             CAPSTAN_DEVICE_CSV_HEADER);
    rc = CAPSTAN_EINVAL;
  }
  if (rc == 0 && p.n > 1) {
    /* One device per name: a second row would silently win otherwise. */
    capstan_device_row_t **idx = malloc(p.n * sizeof(*idx));
    if (idx == NULL) {
      snprintf(err, errlen, "out of memory");
      rc = CAPSTAN_ENOMEM;
    } else {
      for (size_t i = 0; i < p.n; i++) idx[i] = &p.rows[i];
      qsort(idx, p.n, sizeof(*idx), cmp_row_name);
      size_t worst = 0; /* report the earliest offending line */
      for (size_t i = 1; i < p.n; i++) {
        if (strcmp(idx[i]->name, idx[i - 1]->name) == 0 &&
            (worst == 0 || idx[i]->line < idx[worst]->line)) {
          worst = i;
        }
      }
      if (worst != 0) {
        fail(&p, idx[worst]->line, "column 'name': '%s' is already on line %zu", idx[worst]->name,
             idx[worst - 1]->line);
        rc = CAPSTAN_EINVAL;
      }
      free(idx);
    }
  }
  if (rc != 0) {
    free(p.rows);
    return rc;
  }
  *rows = p.rows;
  *nrows = p.n;
  return 0;
}

static int export_row(const Capstan__Device *d, void *arg) {
  FILE *f = arg;
  char when[40] = "";
  if (d->completes_by != 0) capstan_cli_format_time(d->completes_by, when, sizeof(when));
  capstan_csv_write_field(f, d->name);
  fputc(',', f);
  capstan_csv_write_field(f, capstan_operation_name(d->operation));
  fputc(',', f);
  capstan_csv_write_field(f, capstan_auth_mode_name(d->auth_mode));
  fputc(',', f);
  capstan_csv_write_field(f, d->auth_string != NULL ? d->auth_string : "");
  fputc(',', f);
  capstan_csv_write_field(f, capstan_key_name(d->key_alg, d->key_bits));
  fputc(',', f);
  capstan_csv_write_field(f, when);
  fputc('\n', f);
  return ferror(f) ? CAPSTAN_EIO : 0;
}

int capstan_device_csv_export(capstan_txn_t *txn, FILE *f) {
  fputs(CAPSTAN_DEVICE_CSV_HEADER "\n", f);
  return capstan_store_device_iterate(txn, export_row, f);
}

/* ---- Import -------------------------------------------------------------- */

bool capstan_device_should_rearm(const Capstan__Device *d, Capstan__Operation new_op) {
  if (new_op != d->operation) return true;
  if (new_op == CAPSTAN__OPERATION__OPERATION_NONE) return false;
  return d->status != CAPSTAN__OP_STATUS__OP_STATUS_PENDING &&
         d->status != CAPSTAN__OP_STATUS__OP_STATUS_IN_PROGRESS &&
         d->status != CAPSTAN__OP_STATUS__OP_STATUS_THROTTLED;
}

static int import_fail(char *err, size_t errlen, const capstan_device_import_opts_t *o, size_t line,
                       const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static int import_fail(char *err, size_t errlen, const capstan_device_import_opts_t *o, size_t line,
                       const char *fmt, ...) {
  int n = snprintf(err, errlen, "%s:%zu: ", o->fname != NULL ? o->fname : "-", line);
  if (n >= 0 && (size_t)n < errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
    va_end(ap);
  }
  return CAPSTAN_EINVAL;
}

/* One line of the report: what a row changes on an existing device,
 * field by field ("key rsa2048 -> ec256"), never a secret. */
typedef struct {
  char buf[640];
  size_t used;
} diff_t;

static void diff_add(diff_t *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void diff_add(diff_t *d, const char *fmt, ...) {
  if (d->used >= sizeof(d->buf)) return;
  int n = snprintf(d->buf + d->used, sizeof(d->buf) - d->used, "%s", d->used ? ", " : "");
  if (n > 0) d->used += (size_t)n;
  if (d->used >= sizeof(d->buf)) return;
  va_list ap;
  va_start(ap, fmt);
  n = vsnprintf(d->buf + d->used, sizeof(d->buf) - d->used, fmt, ap);
  va_end(ap);
  if (n > 0) d->used += (size_t)n;
}

static void time_text(int64_t t, char *buf, size_t len) {
  if (t == 0) {
    snprintf(buf, len, "none");
  } else {
    capstan_cli_format_deadline(t, buf, len);
  }
}

int capstan_device_import_rows(capstan_txn_t *txn, capstan_device_row_t *rows, size_t nrows,
                               const capstan_device_import_opts_t *opts, size_t *created,
                               size_t *updated, char *err, size_t errlen) {
  *created = *updated = 0;
  capstan_device_import_stats_t st = {0};
  unsigned glen = opts->auth_string_length != 0 ? opts->auth_string_length : 6;
  char shared[16] = "";
  size_t first_rearm = 0, first_replace = 0, n_rearm_refused = 0, n_replace_refused = 0;
  FILE *rep = opts->report;
  for (size_t i = 0; i < nrows; i++) {
    capstan_device_row_t *r = &rows[i];
    Capstan__Device *d = NULL;
    int rc = capstan_store_device_get(txn, r->name, &d);
    bool is_new = rc == CAPSTAN_ENOENT;
    if (rc != 0 && !is_new) {
      snprintf(err, errlen, "%s:%zu: cannot read device '%s': %s", opts->fname, r->line, r->name,
               capstan_strerror(rc));
      return rc;
    }
    if (!is_new && opts->no_update) {
      capstan__device__free_unpacked(d, NULL);
      return import_fail(err, errlen, opts, r->line,
                         "device '%s' already exists (run without --no-update to update it)",
                         r->name);
    }
    rc = 0;
    if (is_new) {
      d = capstan_device_new(r->name);
      if (d == NULL) return CAPSTAN_ENOMEM;
      d->has_created_at = 1;
      d->created_at = opts->now;
    }
    bool rearm = is_new || capstan_device_should_rearm(d, r->operation);
    const char *auth = r->auth_string[0] != '\0' ? r->auth_string : NULL;
    char fresh[16];
    bool had_string = !is_new && d->auth_string != NULL && d->auth_string[0] != '\0';
    if (auth == NULL && r->auth_mode == CAPSTAN__AUTH_MODE__AUTH_MODE_STRING) {
      if (opts->generate == CAPSTAN_GENERATE_UNIQUE) {
        rc = capstan_cli_random_digits(fresh, glen);
        auth = fresh;
      } else if (opts->generate == CAPSTAN_GENERATE_SHARED) {
        if (shared[0] == '\0') rc = capstan_cli_random_digits(shared, glen);
        auth = shared;
      } else if (!had_string) {
        capstan__device__free_unpacked(d, NULL);
        return import_fail(err, errlen, opts, r->line,
                           "column 'auth_string': required when auth_mode is string (or use "
                           "--generate-auth-strings unique|shared)");
      }
      if (rc != 0) {
        capstan__device__free_unpacked(d, NULL);
        snprintf(err, errlen, "cannot generate random digits");
        return rc;
      }
    }
    /* What the row changes, field by field. */
    diff_t diff = {.used = 0};
    bool replaces = had_string && auth != NULL && strcmp(d->auth_string, auth) != 0;
    bool rearms_succeeded = !is_new && rearm &&
                            d->status == CAPSTAN__OP_STATUS__OP_STATUS_SUCCEEDED &&
                            r->operation != CAPSTAN__OPERATION__OPERATION_NONE;
    char was_t[96], now_t[96];
    time_text(d->has_completes_by ? d->completes_by : 0, was_t, sizeof(was_t));
    time_text(r->completes_by, now_t, sizeof(now_t));
    if (is_new) {
      diff_add(&diff, "operation %s, auth %s%s, key %s, completes-by %s",
               capstan_operation_name(r->operation), capstan_auth_mode_name(r->auth_mode),
               auth == NULL                ? ""
               : r->auth_string[0] != '\0' ? ", auth string set"
                                           : ", auth string generated",
               capstan_key_name(r->key_alg, r->key_bits), now_t);
    } else {
      if (d->operation != r->operation) {
        diff_add(&diff, "operation %s -> %s", capstan_operation_name(d->operation),
                 capstan_operation_name(r->operation));
      }
      if (d->auth_mode != r->auth_mode) {
        diff_add(&diff, "auth %s -> %s", capstan_auth_mode_name(d->auth_mode),
                 capstan_auth_mode_name(r->auth_mode));
      }
      if (replaces) {
        diff_add(&diff, "auth string replaced%s",
                 opts->replace_auth_strings ? "" : " (needs --replace-auth-strings)");
      } else if (!had_string && auth != NULL) {
        diff_add(&diff, "auth string %s", r->auth_string[0] != '\0' ? "set" : "generated");
      }
      if (d->key_alg != r->key_alg || d->key_bits != r->key_bits) {
        diff_add(&diff, "key %s -> %s", capstan_key_name(d->key_alg, d->key_bits),
                 capstan_key_name(r->key_alg, r->key_bits));
      }
      if (strcmp(was_t, now_t) != 0) diff_add(&diff, "completes-by %s -> %s", was_t, now_t);
      if (rearm) {
        Capstan__OpStatus next = r->operation == CAPSTAN__OPERATION__OPERATION_NONE
                                     ? CAPSTAN__OP_STATUS__OP_STATUS_NONE
                                     : CAPSTAN__OP_STATUS__OP_STATUS_PENDING;
        if (rearms_succeeded) {
          diff_add(&diff, "re-armed: status succeeded -> %s%s", capstan_op_status_name(next),
                   opts->rearm ? "" : " (needs --rearm)");
        } else if (d->status != next || d->attempts != 0 || d->auth_failures != 0) {
          diff_add(&diff, "re-armed: status %s -> %s", capstan_op_status_name(d->status),
                   capstan_op_status_name(next));
        }
      }
    }
    if (!is_new && diff.used == 0) {
      st.unchanged++;
      capstan__device__free_unpacked(d, NULL);
      continue;
    }
    if (rearms_succeeded) {
      st.rearmed++;
      if (!opts->rearm && n_rearm_refused++ == 0) first_rearm = i;
    }
    if (replaces) {
      st.auth_replaced++;
      if (!opts->replace_auth_strings && n_replace_refused++ == 0) first_replace = i;
    }
    if ((rearms_succeeded && !opts->rearm) || (replaces && !opts->replace_auth_strings)) {
      st.refused++;
    }
    if (rep != NULL) {
      fprintf(rep, "%s %s: %s\n", is_new ? "add" : "update", r->name, diff.buf);
    }
    if (opts->dry_run || st.refused > 0) {
      /* Nothing is written: a dry run, or an import that will be refused
       * (keep counting, to name every refusal at once). */
      capstan__device__free_unpacked(d, NULL);
      if (is_new) {
        (*created)++;
      } else {
        (*updated)++;
      }
      continue;
    }
    if (auth != NULL) rc = capstan_record_set_string(&d->auth_string, auth);
    d->has_operation = 1;
    d->operation = r->operation;
    d->has_auth_mode = 1;
    d->auth_mode = r->auth_mode;
    d->has_key_alg = 1;
    d->key_alg = r->key_alg;
    d->has_key_bits = 1;
    d->key_bits = r->key_bits;
    d->has_completes_by = r->completes_by != 0;
    d->completes_by = r->completes_by;
    d->has_updated_at = 1;
    d->updated_at = opts->now;
    if (rearm) capstan_device_rearm(d, opts->now);
    if (rc == 0) rc = capstan_store_device_put(txn, d);
    if (rc == 0) {
      char until[40] = "none";
      if (r->completes_by != 0) capstan_cli_format_time(r->completes_by, until, sizeof(until));
      rc = capstan_audit_appendf(
          txn, r->name, is_new ? "device_added" : "device_changed",
          "import=%s:%zu operation=%s auth=%s%s key=%s completes-by=%s%s%s%s", opts->fname, r->line,
          capstan_operation_name(r->operation), capstan_auth_mode_name(r->auth_mode),
          replaces                    ? " auth-string=replaced"
          : r->auth_string[0] != '\0' ? " auth-string=set"
          : auth != NULL              ? " auth-string=generated"
                                      : "",
          capstan_key_name(r->key_alg, r->key_bits), until, rearm ? " status=" : "",
          rearm ? capstan_op_status_name(d->status) : "",
          rearms_succeeded ? " rearmed=succeeded" : "");
    }
    capstan__device__free_unpacked(d, NULL);
    if (rc != 0) {
      snprintf(err, errlen, "%s:%zu: cannot store device '%s': %s", opts->fname, r->line, r->name,
               capstan_strerror(rc));
      return rc;
    }
    if (is_new) {
      (*created)++;
    } else {
      (*updated)++;
    }
  }
  if (opts->stats != NULL) *opts->stats = st;
  if (!opts->dry_run && (n_rearm_refused > 0 || n_replace_refused > 0)) {
    size_t used = 0;
    int n;
    if (n_rearm_refused > 0) {
      n = snprintf(err, errlen,
                   "%s:%zu: device '%s' succeeded and the file would schedule it again: %zu "
                   "succeeded device%s would be re-armed (give --rearm to do so)",
                   opts->fname, rows[first_rearm].line, rows[first_rearm].name, n_rearm_refused,
                   n_rearm_refused == 1 ? "" : "s");
      if (n > 0) used = (size_t)n < errlen ? (size_t)n : errlen - 1;
    }
    if (n_replace_refused > 0 && used + 2 < errlen) {
      snprintf(err + used, errlen - used,
               "%s%s:%zu: device '%s' has an authentication string the file would replace: %zu "
               "string%s would be replaced (give --replace-auth-strings to do so)",
               used ? "\n" : "", opts->fname, rows[first_replace].line, rows[first_replace].name,
               n_replace_refused, n_replace_refused == 1 ? "" : "s");
    }
    return CAPSTAN_EINVAL;
  }
  return 0;
}
