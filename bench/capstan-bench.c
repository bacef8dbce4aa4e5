/* capstan-bench: the load generator. Runs N simulated phones (bench/phone)
 * against a CAPF server with at most C sessions in flight, on one libuv loop,
 * and reports enrollments per second, session latency percentiles and the
 * outcomes. With --hold, every phone stays connected in key generation so
 * that a script can measure the server's memory per idle session.
 * With --storm, every phone runs its boot sequence instead (a reset storm:
 * ITL and signed configuration over HTTP or TFTP, CAPF when the certificate
 * hash says so and the phone then boots again, encrypted configuration),
 * and the report gives download time percentiles per step, files per
 * second and failures by reason.
 * The devices must exist on the server: see bench/README.md. To rehearse a
 * maintenance window, --devices takes the phones (names, authentication
 * modes and strings) from the CSV `capstan device export` writes, --lsc-dir
 * keeps each phone's LSC between runs, --mic-ca gives phones MICs from a
 * test manufacturing CA, and --max-retries makes phones come back after
 * RETRY_LATER or a failed connection, as real phones do. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <uv.h>

#include "bench/phone/phone.h"
#include "bench/phone/phone_pki.h"
#include "core/base/error.h"
#include "core/pki/pki.h"

#define MAX_OUTCOMES 64
/* Device names are "SEP" + 12 hex digits: 15 characters. */
#define NAME_LEN 15

typedef struct {
  char key[48];
  unsigned long count;
} outcome_t;

typedef struct bench bench_t;

/* One device of --devices FILE.csv: its name and how it authenticates. */
typedef struct {
  char name[32];
  capstan_phone_auth_t auth;
  char auth_string[16];
} device_t;

/* Errors after which a phone comes back (--max-retries): RETRY_LATER, and a
 * connection refused, reset or timed out. */
enum { RETRY_LATER, RETRY_CONNECT, RETRY_TLS, RETRY_CLOSED, RETRY_TIMEOUT, RETRY_CAUSES };
static const char *const retry_cause_names[RETRY_CAUSES] = {"retry_later", "connect_failed",
                                                            "tls_failed", "closed", "timeout"};

typedef struct {
  bench_t *bench;
  unsigned long index;
  capstan_phone_t *phone; /* NULL when not running */
  int holding;
  /* Retries: sessions run so far, and the timer of a phone waiting to come
   * back (waiting: between a retryable error and its next session). */
  unsigned attempts;
  int waiting;
  int timer_init;
  uv_timer_t timer;
  /* The phone's certificates: its LSC (--lsc-dir) and MIC (--mic-ca). */
  capstan_identity_t lsc, mic;
  /* The key of a certificate request still waiting for its certificate
   * (external CA: the phone comes back for it after RETRY_LATER). */
  EVP_PKEY *pending_key;
  /* --storm */
  capstan_phone_boot_t *boot; /* NULL when not booting */
  unsigned boots;
  int enrolled; /* a CAPF session installed an LSC in one of its boots */
} slot_t;

/* Durations of one boot step (successful downloads / sessions), ms. */
typedef struct {
  double *v;
  unsigned long n, cap;
} series_t;

struct bench {
  uv_loop_t *loop;
  capstan_phone_config_t cfg;
  const char *prefix;
  unsigned long first; /* counter of the first device name */
  unsigned long phones, concurrency;
  double rate; /* phone starts per second, 0 = as fast as possible */
  unsigned long started, finished, active, holding;
  slot_t *slots;
  double *latencies; /* total_ms of successful sessions */
  unsigned long n_latencies;
  outcome_t outcomes[MAX_OUTCOMES];
  unsigned n_outcomes;
  unsigned long ok, end, errors, enrollments;
  /* Certificate requests (external CA): sessions that sent one, that got a
   * certificate without KEY_GEN_REQUEST (hand-over), refused stores. */
  unsigned long csr_sent, handovers, stores_refused;
  uint64_t t_start, t_end;
  int stopping;
  int hold;
  double hold_seconds;
  int hold_reported, hold_released;
  uv_timer_t rate_timer, hold_timer;
  uv_signal_t sigint, sigterm;
  double tokens;
  uint64_t last_tick;
  int json;
  /* --bind-base / --bind-count: phone i binds to base + (i % count). */
  uint32_t bind_base; /* IPv4, host order; 0 = no bind */
  unsigned long bind_count;

  /* --devices: names and credentials per phone (NULL: generated names). */
  device_t *devices;
  int auth_set; /* --auth given: it overrides the CSV's auth_mode */
  /* --lsc-dir: each phone's LSC, NAME.der + NAME.key.der (PKCS#8). */
  const char *lsc_dir;
  /* --mic-ca: the manufacturing CA that issues each MIC phone's MIC. */
  capstan_identity_t mic_ca;
  int mic_key_alg;
  unsigned mic_key_bits;
  /* Retries (--max-retries, --retry-cap-seconds, --backoff-seconds). */
  unsigned max_retries;
  double retry_cap_s, backoff_s;
  unsigned long *ready; /* ring of slot indices due back, waiting for a slot */
  unsigned long ready_head, ready_n;
  unsigned long waiting; /* phones between a retryable error and their next session */
  unsigned long sessions, retries[RETRY_CAUSES], retried_phones, ok_after_retries, gave_up;

  /* --storm */
  int storm;
  capstan_phone_boot_config_t boot_cfg;
  X509 *trusted;    /* --tftp-cert */
  unsigned reboots; /* boots again after an enrollment, at most this often */
  series_t steps[CAPSTAN_PHONE_STEP_COUNT];
  unsigned long boots, files, decrypted, itl_fallbacks, retransmits, connections;
  unsigned long long bytes;
  unsigned long hashes[4]; /* by capstan_phone_cert_hash_t */
};

static void make_name(const bench_t *b, unsigned long n, char *out, size_t size) {
  /* Prefix, then the counter in upper-case hex, zero-padded to 15 chars. */
  size_t plen = strlen(b->prefix);
  int digits = (int)(NAME_LEN - plen);
  snprintf(out, size, "%s%0*lX", b->prefix, digits, n);
}

/* The name of phone |i|: from --devices, or the prefix and counter. */
static void phone_name(const bench_t *b, unsigned long i, char *out, size_t size) {
  if (b->devices != NULL) {
    snprintf(out, size, "%s", b->devices[i].name);
  } else {
    make_name(b, b->first + i, out, size);
  }
}

static void count_outcome(bench_t *b, const char *key) {
  for (unsigned i = 0; i < b->n_outcomes; i++) {
    if (strcmp(b->outcomes[i].key, key) == 0) {
      b->outcomes[i].count++;
      return;
    }
  }
  if (b->n_outcomes < MAX_OUTCOMES) {
    snprintf(b->outcomes[b->n_outcomes].key, sizeof(b->outcomes[0].key), "%s", key);
    b->outcomes[b->n_outcomes].count = 1;
    b->n_outcomes++;
  }
}

/* ---- --devices FILE.csv ------------------------------------------------------ */

/* Splits one CSV line (RFC 4180 quoting, as `capstan device export` writes
 * it; no line breaks inside fields) in place into at most |max| fields.
 * Returns the number of fields, or -1 on a malformed quote. */
static int csv_split(char *line, char **fields, int max) {
  int n = 0;
  char *r = line, *w = line;
  for (;;) {
    if (n == max) return -1;
    fields[n++] = w;
    if (*r == '"') {
      r++;
      for (;;) {
        if (*r == '\0') return -1;
        if (*r == '"') {
          if (r[1] == '"') {
            *w++ = '"';
            r += 2;
            continue;
          }
          r++;
          break;
        }
        *w++ = *r++;
      }
      if (*r != ',' && *r != '\0') return -1;
    } else {
      while (*r != ',' && *r != '\0') *w++ = *r++;
    }
    if (*r == '\0') {
      *w = '\0';
      return n;
    }
    *w++ = '\0';
    r++;
  }
}

/* Reads the devices of a CSV with a header line naming its columns: `name`
 * (required), `auth_mode` (string, null, lsc, mic; another value or no
 * column: the --auth mode), `auth_string` and `operation` (rows whose
 * operation is "none" are skipped: those devices have nothing to do). This
 * is what `capstan device export` writes, and what `device import` reads.
 * Returns 0 and the devices (malloc'd) or -1 with a message on stderr. */
static int read_devices(const char *path, capstan_phone_auth_t default_auth, device_t **out,
                        unsigned long *count) {
  FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "r");
  if (f == NULL) {
    fprintf(stderr, "capstan-bench: cannot open %s: %s\n", path, strerror(errno));
    return -1;
  }
  char *line = NULL;
  size_t cap = 0;
  ssize_t len;
  unsigned long lineno = 0, n = 0, alloc = 0, skipped = 0;
  int col_name = -1, col_mode = -1, col_string = -1, col_op = -1, rc = 0;
  device_t *devs = NULL;
  while ((len = getline(&line, &cap, f)) != -1) {
    lineno++;
    while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = '\0';
    if (len == 0) continue;
    char *fields[64];
    int nf = csv_split(line, fields, 64);
    if (nf < 0) {
      fprintf(stderr, "capstan-bench: %s:%lu: malformed CSV line\n", path, lineno);
      rc = -1;
      break;
    }
    if (col_name < 0) {
      for (int i = 0; i < nf; i++) {
        if (strcmp(fields[i], "name") == 0) col_name = i;
        if (strcmp(fields[i], "auth_mode") == 0) col_mode = i;
        if (strcmp(fields[i], "auth_string") == 0) col_string = i;
        if (strcmp(fields[i], "operation") == 0) col_op = i;
      }
      if (col_name < 0) {
        fprintf(stderr, "capstan-bench: %s:%lu: the header has no 'name' column\n", path, lineno);
        rc = -1;
        break;
      }
      continue;
    }
    if (col_op >= 0 && col_op < nf && strcmp(fields[col_op], "none") == 0) {
      skipped++;
      continue;
    }
    if (col_name >= nf || fields[col_name][0] == '\0' ||
        strlen(fields[col_name]) >= sizeof(devs[0].name)) {
      fprintf(stderr, "capstan-bench: %s:%lu: missing or too long device name\n", path, lineno);
      rc = -1;
      break;
    }
    if (n == alloc) {
      alloc = alloc ? alloc * 2 : 1024;
      device_t *nd = realloc(devs, alloc * sizeof(*nd));
      if (nd == NULL) {
        fprintf(stderr, "capstan-bench: out of memory\n");
        rc = -1;
        break;
      }
      devs = nd;
    }
    device_t *d = &devs[n];
    memset(d, 0, sizeof(*d));
    snprintf(d->name, sizeof(d->name), "%s", fields[col_name]);
    d->auth = default_auth;
    if (col_mode >= 0 && col_mode < nf) capstan_phone_parse_auth(fields[col_mode], &d->auth);
    if (col_string >= 0 && col_string < nf) {
      if (strlen(fields[col_string]) >= sizeof(d->auth_string)) {
        fprintf(stderr, "capstan-bench: %s:%lu: authentication string too long\n", path, lineno);
        rc = -1;
        break;
      }
      snprintf(d->auth_string, sizeof(d->auth_string), "%s", fields[col_string]);
    }
    n++;
  }
  free(line);
  if (f != stdin) fclose(f);
  if (rc == 0 && col_name < 0) {
    fprintf(stderr, "capstan-bench: %s: empty file (no header line)\n", path);
    rc = -1;
  }
  if (rc == 0 && n == 0) {
    fprintf(stderr, "capstan-bench: %s: no device with an operation\n", path);
    rc = -1;
  }
  if (rc != 0) {
    free(devs);
    return -1;
  }
  if (skipped > 0) {
    fprintf(stderr, "capstan-bench: %s: %lu devices with operation none left out\n", path, skipped);
  }
  *out = devs;
  *count = n;
  return 0;
}

/* ---- Certificates: --lsc-dir, --mic-ca ----------------------------------------- */

#define MAX_DER_FILE (64 * 1024)

static int read_small_file(const char *path, uint8_t **out, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) return errno == ENOENT ? CAPSTAN_ENOENT : CAPSTAN_EIO;
  uint8_t *buf = malloc(MAX_DER_FILE);
  if (buf == NULL) {
    fclose(f);
    return CAPSTAN_ENOMEM;
  }
  size_t n = fread(buf, 1, MAX_DER_FILE, f);
  fclose(f);
  if (n == MAX_DER_FILE) {
    free(buf);
    return CAPSTAN_ERANGE;
  }
  *out = buf;
  *len = n;
  return 0;
}

/* Writes |data| to |path| through a temporary file and a rename, mode 0600. */
static int write_small_file(const char *path, const uint8_t *data, size_t len) {
  char tmp[4096];
  if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= sizeof(tmp)) return CAPSTAN_EINVAL;
  FILE *f = fopen(tmp, "wb");
  if (f == NULL) return CAPSTAN_EIO;
  fchmod(fileno(f), 0600);
  int ok = fwrite(data, 1, len, f) == len;
  ok = (fclose(f) == 0) && ok;
  if (!ok || rename(tmp, path) != 0) {
    unlink(tmp);
    return CAPSTAN_EIO;
  }
  return 0;
}

static int lsc_paths(const bench_t *b, const char *name, char *cert, char *key, size_t size) {
  if ((size_t)snprintf(cert, size, "%s/%s.der", b->lsc_dir, name) >= size ||
      (size_t)snprintf(key, size, "%s/%s.key.der", b->lsc_dir, name) >= size) {
    return CAPSTAN_EINVAL;
  }
  return 0;
}

/* Loads DIR/NAME.der and DIR/NAME.key.der into |out| (zeroed). */
static int load_lsc(const bench_t *b, const char *name, capstan_identity_t *out) {
  char cp[4096], kp[4096];
  int rc = lsc_paths(b, name, cp, kp, sizeof(cp));
  if (rc != 0) return rc;
  uint8_t *cert = NULL, *key = NULL;
  size_t clen = 0, klen = 0;
  rc = read_small_file(cp, &cert, &clen);
  if (rc == 0) rc = read_small_file(kp, &key, &klen);
  if (rc == 0) rc = capstan_identity_from_der(cert, clen, key, klen, out);
  free(cert);
  if (key != NULL) OPENSSL_cleanse(key, klen);
  free(key);
  return rc;
}

/* Keeps the LSC a phone holds at the end of a session in --lsc-dir: writes
 * it, or removes the files when the phone holds none (after a delete). */
static int save_lsc(const bench_t *b, const char *name, const capstan_identity_t *id) {
  char cp[4096], kp[4096];
  int rc = lsc_paths(b, name, cp, kp, sizeof(cp));
  if (rc != 0) return rc;
  if (id->cert == NULL) {
    unlink(cp);
    unlink(kp);
    return 0;
  }
  uint8_t *cder = NULL, *kder = NULL;
  size_t clen = 0, klen = 0;
  rc = capstan_identity_to_der(id, &cder, &clen, &kder, &klen);
  if (rc == 0) rc = write_small_file(kp, kder, klen);
  if (rc == 0) rc = write_small_file(cp, cder, clen);
  free(cder);
  if (kder != NULL) OPENSSL_cleanse(kder, klen);
  free(kder);
  return rc;
}

/* Keeps a certificate the phone stored in --lsc-dir as NAME.SERIALHEX.der
 * too (the certificate only: the phone's key goes with NAME.der), so that
 * every certificate a phone ever accepted stays for the tests to find on
 * record, not only the one it holds at the end. */
static int save_lsc_history(const bench_t *b, const char *name, const capstan_identity_t *id) {
  if (id->cert == NULL) return 0;
  uint8_t serial[32];
  size_t slen = 0;
  int rc = capstan_pki_serial_bytes(id->cert, serial, sizeof(serial), &slen);
  if (rc != 0) return rc;
  char hex[2 * sizeof(serial) + 1];
  for (size_t i = 0; i < slen; i++) snprintf(hex + 2 * i, 3, "%02x", serial[i]);
  hex[2 * slen] = '\0';
  char path[4096];
  if ((size_t)snprintf(path, sizeof(path), "%s/%s.%s.der", b->lsc_dir, name, hex) >= sizeof(path))
    return CAPSTAN_EINVAL;
  uint8_t *der = NULL;
  size_t len = 0;
  rc = capstan_pki_cert_to_der(id->cert, &der, &len);
  if (rc == 0) rc = write_small_file(path, der, len);
  free(der);
  return rc;
}

/* The manufacturing CA of --mic-ca FILE.pem (its certificate and private
 * key, PEM): read when the file exists, else created (a test CA,
 * capstan_phone_create_test_ca) and written there, mode 0600. Returns 0,
 * or -1 with a message on stderr. */
static int load_or_create_mic_ca(const char *path, capstan_identity_t *ca) {
  FILE *f = fopen(path, "r");
  if (f != NULL) {
    ca->cert = PEM_read_X509(f, NULL, NULL, NULL);
    rewind(f);
    ca->key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    if (ca->cert == NULL || ca->key == NULL || X509_check_private_key(ca->cert, ca->key) != 1) {
      fprintf(stderr, "capstan-bench: %s: expected a CA certificate and its private key (PEM)\n",
              path);
      capstan_identity_cleanup(ca);
      return -1;
    }
    return 0;
  }
  if (errno != ENOENT) {
    fprintf(stderr, "capstan-bench: cannot open %s: %s\n", path, strerror(errno));
    return -1;
  }
  int rc = capstan_phone_create_test_ca("capstan-bench manufacturing CA", ca);
  if (rc != 0) {
    fprintf(stderr, "capstan-bench: cannot create a test CA: %s\n", capstan_strerror(rc));
    return -1;
  }
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
  f = fd >= 0 ? fdopen(fd, "w") : NULL;
  int ok = f != NULL && PEM_write_X509(f, ca->cert) == 1 &&
           PEM_write_PrivateKey(f, ca->key, NULL, NULL, 0, NULL, NULL) == 1;
  if (f != NULL) ok = (fclose(f) == 0) && ok;
  if (!ok) {
    fprintf(stderr, "capstan-bench: cannot write %s\n", path);
    if (fd >= 0) unlink(path);
    capstan_identity_cleanup(ca);
    return -1;
  }
  fprintf(stderr, "capstan-bench: created the manufacturing CA %s\n", path);
  return 0;
}

static int write_cert_pem(const char *path, X509 *cert) {
  FILE *f = fopen(path, "w");
  int ok = f != NULL && PEM_write_X509(f, cert) == 1;
  if (f != NULL) ok = (fclose(f) == 0) && ok;
  if (!ok) fprintf(stderr, "capstan-bench: cannot write %s\n", path);
  return ok ? 0 : -1;
}

/* A MIC for phone |name| under the --mic-ca CA, for a key from the pool:
 * CN "CP-8845-<name>" (a MIC's CN is "<model>-<device name>"). */
static int issue_mic(bench_t *b, const char *name, capstan_identity_t *out) {
  EVP_PKEY *key = NULL;
  int rc = capstan_phone_keypool_get(b->cfg.keys, b->mic_key_alg, b->mic_key_bits, &key);
  if (rc != 0) return rc;
  char cn[80];
  snprintf(cn, sizeof(cn), "CP-8845-%s", name);
  uint8_t *der = NULL;
  size_t len = 0;
  rc = capstan_phone_issue_test_leaf(&b->mic_ca, cn, key, &der, &len);
  if (rc == 0) {
    const uint8_t *p = der;
    out->cert = d2i_X509(NULL, &p, (long)len);
    if (out->cert == NULL) rc = CAPSTAN_ECRYPTO;
  }
  free(der);
  if (rc == 0) {
    out->key = key;
  } else {
    EVP_PKEY_free(key);
  }
  return rc;
}

/* Outcomes that are the operation succeeding; everything else is listed
 * under "failures". */
static int is_success(const char *key) {
  return strcmp(key, "ok_install_reason_1") == 0 || strcmp(key, "ok_delete_reason_1") == 0 ||
         strcmp(key, "ok_fetch_reason_0") == 0;
}

static void start_more(bench_t *b);
static void maybe_report_hold(bench_t *b);
static int start_boot(bench_t *b, slot_t *s, const capstan_identity_t *lsc, X509 *trusted);

static void close_aux_handles(bench_t *b) {
  uv_timer_stop(&b->rate_timer);
  uv_timer_stop(&b->hold_timer);
  uv_signal_stop(&b->sigint);
  uv_signal_stop(&b->sigterm);
  if (!uv_is_closing((uv_handle_t *)&b->rate_timer)) uv_close((uv_handle_t *)&b->rate_timer, NULL);
  if (!uv_is_closing((uv_handle_t *)&b->hold_timer)) uv_close((uv_handle_t *)&b->hold_timer, NULL);
  if (!uv_is_closing((uv_handle_t *)&b->sigint)) uv_close((uv_handle_t *)&b->sigint, NULL);
  if (!uv_is_closing((uv_handle_t *)&b->sigterm)) uv_close((uv_handle_t *)&b->sigterm, NULL);
  /* Stopping libuv's watchers put the default action back: a second
   * SIGTERM (timeout(1) forwards one to the process group as well as to
   * the child) would then kill the finishing run (exit 143, seen in
   * test_storage_map_full under ASan). The run ends anyway: ignore more. */
  signal(SIGINT, SIG_IGN);
  signal(SIGTERM, SIG_IGN);
  for (unsigned long i = 0; b->slots != NULL && i < b->phones; i++) {
    slot_t *s = &b->slots[i];
    if (s->timer_init && !uv_is_closing((uv_handle_t *)&s->timer)) {
      uv_timer_stop(&s->timer);
      uv_close((uv_handle_t *)&s->timer, NULL);
    }
  }
}

/* The retry cause of a session's error, or -1 when the phone would not come
 * back after it (the server broke the protocol, refused a certificate...). */
static int retry_cause(const capstan_phone_result_t *res) {
  if (res->kind != CAPSTAN_PHONE_RESULT_ERROR) return -1;
  switch (res->error) {
    case CAPSTAN_PHONE_ERR_RETRY_LATER:
      return RETRY_LATER;
    case CAPSTAN_PHONE_ERR_CONNECT:
      return RETRY_CONNECT;
    case CAPSTAN_PHONE_ERR_TLS:
      return RETRY_TLS;
    case CAPSTAN_PHONE_ERR_CLOSED:
      return RETRY_CLOSED;
    case CAPSTAN_PHONE_ERR_TIMEOUT:
      return RETRY_TIMEOUT;
    default:
      return -1;
  }
}

/* How long a phone waits before it comes back, in milliseconds. After
 * RETRY_LATER: RETRY_DELAY, as a real phone does. After a refused, reset or
 * timed-out connection: an exponential backoff from --backoff-seconds,
 * doubled at each retry, with jitter (a random point in its upper half) so
 * that phones turned away together do not all come back together. Both
 * capped at --retry-cap-seconds. */
static uint64_t retry_delay_ms(const bench_t *b, const slot_t *s, int cause, int retry_delay) {
  double d;
  if (cause == RETRY_LATER && retry_delay >= 0) {
    d = retry_delay;
  } else {
    unsigned k = s->attempts > 0 ? s->attempts - 1 : 0;
    d = b->backoff_s * ldexp(1.0, k > 30 ? 30 : (int)k);
    if (d > b->retry_cap_s) d = b->retry_cap_s;
    d = d * (0.5 + 0.5 * ((double)random() / (double)RAND_MAX));
  }
  if (d > b->retry_cap_s) d = b->retry_cap_s;
  return (uint64_t)(d * 1000.0);
}

static void on_retry_timer(uv_timer_t *t) {
  slot_t *s = t->data;
  bench_t *b = s->bench;
  /* Due back: it starts as soon as the concurrency allows. */
  b->ready[(b->ready_head + b->ready_n) % b->phones] = s->index;
  b->ready_n++;
  start_more(b);
}

/* A phone whose session ended with a retryable error and that has retries
 * left waits, then comes back. Returns 1 when it will. */
static int schedule_retry(bench_t *b, slot_t *s, const capstan_phone_result_t *res) {
  int cause = retry_cause(res);
  if (cause < 0 || b->stopping) return 0;
  if (s->attempts > b->max_retries) {
    if (b->max_retries > 0) b->gave_up++;
    return 0;
  }
  if (!s->timer_init) {
    if (uv_timer_init(b->loop, &s->timer) != 0) return 0;
    s->timer.data = s;
    s->timer_init = 1;
  }
  b->retries[cause]++;
  if (s->attempts == 1) b->retried_phones++;
  s->waiting = 1;
  b->waiting++;
  uv_timer_start(&s->timer, on_retry_timer, retry_delay_ms(b, s, cause, res->retry_delay), 0);
  return 1;
}

static void slot_finish(slot_t *s) {
  capstan_identity_cleanup(&s->lsc);
  capstan_identity_cleanup(&s->mic);
  EVP_PKEY_free(s->pending_key);
  s->pending_key = NULL;
}

static void on_phone_done(capstan_phone_t *phone, void *arg, capstan_phone_result_t *res) {
  slot_t *s = arg;
  bench_t *b = s->bench;
  s->phone = NULL;
  if (s->holding) b->holding--;
  s->holding = 0;
  b->active--;
  char name[64];
  phone_name(b, s->index, name, sizeof(name));
  if (res->csr_sent) b->csr_sent++;
  if (res->handover) b->handovers++;
  b->stores_refused += res->stores_refused;
  /* The phone keeps the key of a request it has no certificate for yet, for
   * when it comes back. */
  EVP_PKEY_free(s->pending_key);
  s->pending_key = res->pending_key;
  res->pending_key = NULL;
  /* The phone keeps the LSC it holds at the end of a session that ran, and
   * a certificate it stored whatever came after (a real phone does: the
   * server may fail to record the installation and say RETRY_LATER after
   * the phone took the certificate; that certificate must be on record). */
  if (res->kind != CAPSTAN_PHONE_RESULT_ERROR || res->lsc_stored) {
    if (b->lsc_dir != NULL && (res->operation != CAPSTAN_PHONE_OP_NONE || res->lsc_stored) &&
        save_lsc(b, name, &res->lsc) != 0) {
      fprintf(stderr, "capstan-bench: cannot save the LSC of %s in %s\n", name, b->lsc_dir);
    }
    if (b->lsc_dir != NULL && res->lsc_stored && save_lsc_history(b, name, &res->lsc) != 0) {
      fprintf(stderr, "capstan-bench: cannot save the stored LSC of %s in %s\n", name, b->lsc_dir);
    }
    capstan_identity_cleanup(&s->lsc);
    s->lsc = res->lsc;
    memset(&res->lsc, 0, sizeof(res->lsc));
  }
  if (schedule_retry(b, s, res)) {
    start_more(b);
    return;
  }
  b->finished++;
  char key[48];
  switch (res->kind) {
    case CAPSTAN_PHONE_RESULT_OK:
      b->ok++;
      snprintf(key, sizeof(key), "ok_%s_reason_%d", capstan_phone_operation_name(res->operation),
               res->end_reason);
      if (res->operation == CAPSTAN_PHONE_OP_INSTALL && res->end_reason == 1) b->enrollments++;
      b->latencies[b->n_latencies++] = res->total_ms;
      break;
    case CAPSTAN_PHONE_RESULT_END:
      b->end++;
      snprintf(key, sizeof(key), "end_reason_%d", res->end_reason);
      break;
    default:
      b->errors++;
      snprintf(key, sizeof(key), "error_%s", capstan_phone_error_name(res->error));
      if (b->errors <= 5) {
        fprintf(stderr, "capstan-bench: phone %lu (%s): %s: %s\n", s->index, name,
                capstan_phone_error_name(res->error), res->detail);
      }
      break;
  }
  if (s->attempts > 1 && is_success(key)) b->ok_after_retries++;
  slot_finish(s);
  count_outcome(b, key);
  maybe_report_hold(b);
  if (b->finished == b->phones || (b->stopping && b->active == 0)) {
    b->t_end = uv_hrtime();
    close_aux_handles(b);
    return;
  }
  start_more(b);
}

static void on_phone_hold(capstan_phone_t *phone, void *arg) {
  slot_t *s = arg;
  s->holding = 1;
  s->bench->holding++;
  maybe_report_hold(s->bench);
}

static void series_add(series_t *s, double v) {
  if (s->n == s->cap) {
    unsigned long cap = s->cap ? s->cap * 2 : 1024;
    double *nv = realloc(s->v, cap * sizeof(*nv));
    if (nv == NULL) return; /* a lost sample; the count of files still holds */
    s->v = nv;
    s->cap = cap;
  }
  s->v[s->n++] = v;
}

static void phone_finished(bench_t *b) {
  b->active--;
  b->finished++;
  if (b->finished == b->phones || (b->stopping && b->active == 0)) {
    b->t_end = uv_hrtime();
    close_aux_handles(b);
    return;
  }
  start_more(b);
}

static void on_boot_done(capstan_phone_boot_t *boot, void *arg, capstan_phone_boot_result_t *res) {
  (void)boot;
  slot_t *s = arg;
  bench_t *b = s->bench;
  s->boot = NULL;
  b->boots++;
  b->files += res->files;
  b->connections += res->connections;
  for (int i = 0; i < CAPSTAN_PHONE_STEP_COUNT; i++) {
    const capstan_phone_boot_step_t *st = &res->steps[i];
    b->retransmits += st->retransmits;
    if (!st->ran) continue;
    if (i == CAPSTAN_PHONE_STEP_CAPF ? st->ok : st->fetch_error == CAPSTAN_PHONE_FETCH_NONE) {
      series_add(&b->steps[i], st->ms);
      b->bytes += st->bytes;
    }
  }
  if (res->itl_fallback) b->itl_fallbacks++;
  if (res->decrypted) b->decrypted++;
  if ((unsigned)res->cert_hash < 4) b->hashes[res->cert_hash]++;
  if (res->enrolled) {
    b->enrollments++;
    s->enrolled = 1;
  }
  /* After an enrollment the phone resets and boots again with its new LSC,
   * trusting the ITL it has. */
  if (res->failure == CAPSTAN_PHONE_BOOT_NONE && res->enrolled && s->boots <= b->reboots &&
      !b->stopping) {
    char name[64];
    phone_name(b, s->index, name, sizeof(name));
    b->boot_cfg.phone.device_name = name;
    if (b->devices != NULL && b->devices[s->index].auth_string[0] != '\0') {
      b->boot_cfg.phone.auth_string = b->devices[s->index].auth_string;
    }
    if (b->bind_base != 0) {
      struct sockaddr_in *sin = (struct sockaddr_in *)&b->boot_cfg.phone.bind_addr;
      memset(&b->boot_cfg.phone.bind_addr, 0, sizeof(b->boot_cfg.phone.bind_addr));
      sin->sin_family = AF_INET;
      sin->sin_addr.s_addr = htonl(b->bind_base + (uint32_t)(s->index % b->bind_count));
    }
    if (start_boot(b, s, &res->lsc, b->trusted ? b->trusted : res->itl_signer) == 0) return;
    b->errors++;
    count_outcome(b, "error_start");
    phone_finished(b);
    return;
  }
  char key[48];
  if (res->failure == CAPSTAN_PHONE_BOOT_NONE) {
    b->ok++;
    snprintf(key, sizeof(key), "%s", s->enrolled ? "ok_enrolled" : "ok");
  } else {
    b->errors++;
    const char *sub = "";
    if (res->failure == CAPSTAN_PHONE_BOOT_CAPF) {
      sub = capstan_phone_error_name(res->capf.error);
    } else if (res->failure == CAPSTAN_PHONE_BOOT_ITL_FETCH) {
      sub = capstan_phone_fetch_error_name(res->steps[CAPSTAN_PHONE_STEP_ITL].fetch_error);
    } else if (res->failure == CAPSTAN_PHONE_BOOT_CNF_FETCH) {
      sub = capstan_phone_fetch_error_name(res->steps[CAPSTAN_PHONE_STEP_CNF].fetch_error);
    } else if (res->failure == CAPSTAN_PHONE_BOOT_ENC_FETCH) {
      sub = capstan_phone_fetch_error_name(res->steps[CAPSTAN_PHONE_STEP_ENC].fetch_error);
    }
    snprintf(key, sizeof(key), "%s%s%s", capstan_phone_boot_failure_name(res->failure),
             sub[0] ? "_" : "", sub);
    if (b->errors <= 5) {
      fprintf(stderr, "capstan-bench: phone %lu: %s: %s\n", s->index, key, res->detail);
    }
  }
  count_outcome(b, key);
  phone_finished(b);
}

/* Starts one boot of the phone in |s|; b->boot_cfg.phone carries its name
 * and bind address. */
static int start_boot(bench_t *b, slot_t *s, const capstan_identity_t *lsc, X509 *trusted) {
  capstan_phone_boot_config_t bc = b->boot_cfg;
  if (lsc != NULL) bc.phone.lsc = *lsc;
  bc.trusted_tftp = trusted;
  s->boots++;
  return capstan_phone_boot_start(b->loop, &bc, on_boot_done, s, &s->boot);
}

static void release_all(bench_t *b) {
  b->hold_released = 1;
  for (unsigned long i = 0; i < b->phones; i++) {
    if (b->slots[i].phone != NULL && b->slots[i].holding) {
      capstan_phone_release_hold(b->slots[i].phone);
    }
  }
}

static void on_hold_timer(uv_timer_t *t) {
  release_all(t->data);
}

/* Once every phone is started and is either holding or finished, say so on
 * stdout (the benchmark script waits for this line to read the server's
 * RSS), then release after --hold-seconds (or at SIGINT/SIGTERM). */
static void maybe_report_hold(bench_t *b) {
  if (!b->hold || b->hold_reported || b->started < b->phones) return;
  if (b->holding + b->finished < b->phones) return;
  b->hold_reported = 1;
  if (b->json) {
    printf("{\"event\":\"holding\",\"sessions\":%lu,\"finished\":%lu}\n", b->holding, b->finished);
  } else {
    printf("holding sessions=%lu finished=%lu\n", b->holding, b->finished);
  }
  fflush(stdout);
  if (b->hold_seconds > 0)
    uv_timer_start(&b->hold_timer, on_hold_timer, (uint64_t)(b->hold_seconds * 1000.0), 0);
}

/* A phone that cannot run a session at all: it finishes with |outcome|. */
static void fail_phone(bench_t *b, slot_t *s, const char *outcome) {
  b->finished++;
  b->errors++;
  count_outcome(b, outcome);
  slot_finish(s);
}

/* Runs a session of phone |i|: its first (i == b->started) or a retry. */
static int start_session(bench_t *b, unsigned long i) {
  char name[64];
  phone_name(b, i, name, sizeof(name));
  capstan_phone_config_t c = b->cfg;
  c.device_name = name;
  if (b->devices != NULL) {
    if (!b->auth_set) c.auth = b->devices[i].auth;
    if (b->devices[i].auth_string[0] != '\0') c.auth_string = b->devices[i].auth_string;
  }
  if (b->bind_base != 0) {
    struct sockaddr_in *sin = (struct sockaddr_in *)&c.bind_addr;
    memset(&c.bind_addr, 0, sizeof(c.bind_addr));
    sin->sin_family = AF_INET;
    sin->sin_addr.s_addr = htonl(b->bind_base + (uint32_t)(i % b->bind_count));
    c.has_bind = 1;
  }
  slot_t *s = &b->slots[i];
  int first = i == b->started;
  if (first) {
    s->bench = b;
    s->index = i;
    b->started++;
  }
  if (first && !b->storm) {
    /* The phone's certificates: the LSC an earlier run left in --lsc-dir,
     * and a MIC from the manufacturing CA. */
    if (b->lsc_dir != NULL) {
      int rc = load_lsc(b, name, &s->lsc);
      if (rc != 0 && rc != CAPSTAN_ENOENT) {
        fprintf(stderr, "capstan-bench: cannot load the LSC of %s from %s: %s\n", name, b->lsc_dir,
                capstan_strerror(rc));
      }
    }
    if (c.auth == CAPSTAN_PHONE_AUTH_LSC && s->lsc.cert == NULL) {
      if (b->errors < 5) {
        fprintf(stderr, "capstan-bench: %s authenticates by LSC but has none%s%s\n", name,
                b->lsc_dir ? " in " : " (no --lsc-dir)", b->lsc_dir ? b->lsc_dir : "");
      }
      fail_phone(b, s, "error_no_lsc");
      return CAPSTAN_ENOENT;
    }
    if (c.auth == CAPSTAN_PHONE_AUTH_MIC) {
      int rc = b->mic_ca.cert != NULL ? issue_mic(b, name, &s->mic) : CAPSTAN_EINVAL;
      if (rc != 0) {
        if (b->errors < 5) {
          fprintf(stderr, "capstan-bench: %s authenticates by MIC: %s\n", name,
                  b->mic_ca.cert ? capstan_strerror(rc) : "no --mic-ca");
        }
        fail_phone(b, s, "error_no_mic");
        return rc;
      }
    }
  }
  c.lsc = s->lsc;
  c.mic = s->mic;
  /* A request made in an earlier session: in memory, and with --lsc-dir
   * also on disk (DIR/NAME.pending.der, read and written by the phone) so
   * that a later run gets its certificate. */
  c.pending_key = s->pending_key;
  char key_file[4096];
  if (b->lsc_dir != NULL && !b->storm &&
      (size_t)snprintf(key_file, sizeof(key_file), "%s/%s.pending.der", b->lsc_dir, name) <
          sizeof(key_file)) {
    c.key_file = key_file;
  }
  b->active++;
  b->sessions++;
  s->attempts++;
  int rc;
  if (b->storm) {
    b->boot_cfg.phone.device_name = name;
    b->boot_cfg.phone.auth_string = c.auth_string;
    b->boot_cfg.phone.bind_addr = c.bind_addr;
    b->boot_cfg.phone.has_bind = c.has_bind;
    rc = start_boot(b, s, NULL, b->trusted);
  } else {
    rc = capstan_phone_start(b->loop, &c, on_phone_done, s, &s->phone);
  }
  if (rc != 0) {
    /* Could not even start (memory): count it as a failure and go on. */
    b->active--;
    fail_phone(b, s, "error_start");
    return rc;
  }
  return 0;
}

static void start_more(bench_t *b) {
  while (!b->stopping && b->active < b->concurrency) {
    if (b->ready_n > 0) {
      /* Phones coming back go first, and are not held to --rate: that is
       * the rate of phones turned on. */
      unsigned long i = b->ready[b->ready_head];
      b->ready_head = (b->ready_head + 1) % b->phones;
      b->ready_n--;
      b->slots[i].waiting = 0;
      b->waiting--;
      start_session(b, i);
      continue;
    }
    if (b->started >= b->phones) break;
    if (b->rate > 0) {
      if (b->tokens < 1.0) return;
      b->tokens -= 1.0;
    }
    start_session(b, b->started);
  }
  if (b->finished == b->phones && b->t_end == 0) {
    b->t_end = uv_hrtime();
    close_aux_handles(b);
  }
}

static void on_rate_timer(uv_timer_t *t) {
  bench_t *b = t->data;
  uint64_t now = uv_hrtime();
  b->tokens += b->rate * (double)(now - b->last_tick) / 1e9;
  if (b->tokens > b->rate + 1) b->tokens = b->rate + 1; /* burst of at most one second */
  b->last_tick = now;
  start_more(b);
  if (b->started >= b->phones || b->stopping) uv_timer_stop(t);
}

static void on_signal(uv_signal_t *sig, int signum) {
  bench_t *b = sig->data;
  if (b->hold && b->hold_reported && !b->hold_released) {
    /* First signal in hold: release and let the sessions finish. */
    release_all(b);
    return;
  }
  if (b->stopping) return;
  b->stopping = 1;
  fprintf(stderr, "capstan-bench: stopping (signal %d): aborting %lu sessions\n", signum,
          b->active);
  for (unsigned long i = 0; i < b->phones; i++) {
    if (b->slots[i].phone != NULL) capstan_phone_abort(b->slots[i].phone);
    if (b->slots[i].boot != NULL) capstan_phone_boot_abort(b->slots[i].boot);
    if (b->slots[i].waiting) {
      /* Waiting to come back: it gives up now. */
      uv_timer_stop(&b->slots[i].timer);
      b->slots[i].waiting = 0;
      b->waiting--;
      b->gave_up++;
      fail_phone(b, &b->slots[i], "error_stopped");
    }
  }
  b->ready_n = 0;
  if (b->active == 0) close_aux_handles(b);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double percentile(const double *v, unsigned long n, double p) {
  if (n == 0) return 0;
  /* Nearest rank. */
  unsigned long rank = (unsigned long)ceil(p / 100.0 * (double)n);
  if (rank < 1) rank = 1;
  if (rank > n) rank = n;
  return v[rank - 1];
}

static void report(bench_t *b) {
  double wall = (double)((b->t_end ? b->t_end : uv_hrtime()) - b->t_start) / 1e9;
  qsort(b->latencies, b->n_latencies, sizeof(double), cmp_double);
  double p50 = percentile(b->latencies, b->n_latencies, 50);
  double p90 = percentile(b->latencies, b->n_latencies, 90);
  double p99 = percentile(b->latencies, b->n_latencies, 99);
  double max = b->n_latencies ? b->latencies[b->n_latencies - 1] : 0;
  double eps = wall > 0 ? (double)b->enrollments / wall : 0;
  double sps = wall > 0 ? (double)b->finished / wall : 0;
  if (b->json) {
    printf(
        "{\"phones\":%lu,\"started\":%lu,\"finished\":%lu,\"concurrency\":%lu,\"ok\":%lu,"
        "\"end\":%lu,\"errors\":%lu,\"enrollments\":%lu,\"wall_s\":%.3f,"
        "\"enrollments_per_s\":%.2f,\"sessions_per_s\":%.2f,"
        "\"latency_ms\":{\"p50\":%.2f,\"p90\":%.2f,\"p99\":%.2f,\"max\":%.2f},\"outcomes\":{",
        b->phones, b->started, b->finished, b->concurrency, b->ok, b->end, b->errors,
        b->enrollments, wall, eps, sps, p50, p90, p99, max);
    for (unsigned i = 0; i < b->n_outcomes; i++) {
      printf("%s\"%s\":%lu", i ? "," : "", b->outcomes[i].key, b->outcomes[i].count);
    }
    printf("},\"failures\":{");
    int first = 1;
    for (unsigned i = 0; i < b->n_outcomes; i++) {
      if (is_success(b->outcomes[i].key)) continue;
      printf("%s\"%s\":%lu", first ? "" : ",", b->outcomes[i].key, b->outcomes[i].count);
      first = 0;
    }
    printf("},\"sessions\":%lu,\"retries\":{", b->sessions);
    for (int i = 0; i < RETRY_CAUSES; i++) {
      printf("%s\"%s\":%lu", i ? "," : "", retry_cause_names[i], b->retries[i]);
    }
    printf(
        "},\"retried_phones\":%lu,\"ok_after_retries\":%lu,\"gave_up\":%lu,\"csr_sent\":%lu,"
        "\"handovers\":%lu,\"stores_refused\":%lu}\n",
        b->retried_phones, b->ok_after_retries, b->gave_up, b->csr_sent, b->handovers,
        b->stores_refused);
  } else {
    printf("phones=%lu finished=%lu concurrency=%lu ok=%lu end=%lu errors=%lu wall_s=%.3f\n",
           b->phones, b->finished, b->concurrency, b->ok, b->end, b->errors, wall);
    printf("enrollments=%lu enrollments_per_s=%.2f sessions_per_s=%.2f\n", b->enrollments, eps,
           sps);
    printf("latency_ms p50=%.2f p90=%.2f p99=%.2f max=%.2f (successful sessions: %lu)\n", p50, p90,
           p99, max, b->n_latencies);
    printf("sessions=%lu retries:", b->sessions);
    for (int i = 0; i < RETRY_CAUSES; i++) printf(" %s=%lu", retry_cause_names[i], b->retries[i]);
    printf(" retried_phones=%lu ok_after_retries=%lu gave_up=%lu\n", b->retried_phones,
           b->ok_after_retries, b->gave_up);
    printf("certificate requests: csr_sent=%lu handovers=%lu stores_refused=%lu\n", b->csr_sent,
           b->handovers, b->stores_refused);
    printf("outcomes:");
    for (unsigned i = 0; i < b->n_outcomes; i++) {
      printf(" %s=%lu", b->outcomes[i].key, b->outcomes[i].count);
    }
    printf("\n");
  }
  fflush(stdout);
}

static void print_series(bench_t *b, const char *label, series_t *sr) {
  if (sr->n > 1) qsort(sr->v, sr->n, sizeof(double), cmp_double);
  double max = sr->n ? sr->v[sr->n - 1] : 0;
  if (b->json) {
    printf("\"%s\":{\"n\":%lu,\"p50\":%.2f,\"p90\":%.2f,\"p99\":%.2f,\"max\":%.2f}", label, sr->n,
           percentile(sr->v, sr->n, 50), percentile(sr->v, sr->n, 90), percentile(sr->v, sr->n, 99),
           max);
  } else {
    printf("%s n=%lu p50=%.2f p90=%.2f p99=%.2f max=%.2f\n", label, sr->n,
           percentile(sr->v, sr->n, 50), percentile(sr->v, sr->n, 90), percentile(sr->v, sr->n, 99),
           max);
  }
}

static void report_storm(bench_t *b) {
  double wall = (double)((b->t_end ? b->t_end : uv_hrtime()) - b->t_start) / 1e9;
  double fps = wall > 0 ? (double)b->files / wall : 0;
  double bps = wall > 0 ? (double)b->boots / wall : 0;
  const char *transport = capstan_phone_transport_name(b->boot_cfg.transport);
  static const char *const labels[CAPSTAN_PHONE_STEP_COUNT] = {"itl_ms", "cnf_ms", "enc_ms",
                                                               "capf_ms"};
  if (b->json) {
    printf(
        "{\"mode\":\"storm\",\"transport\":\"%s\",\"boot_only\":%s,\"phones\":%lu,"
        "\"started\":%lu,\"finished\":%lu,\"concurrency\":%lu,\"rate\":%.1f,\"ok\":%lu,"
        "\"errors\":%lu,\"boots\":%lu,\"enrollments\":%lu,\"decrypted\":%lu,"
        "\"itl_fallbacks\":%lu,\"files\":%lu,\"bytes\":%llu,\"retransmits\":%lu,"
        "\"keep_alive\":%s,\"connections\":%lu,\"wall_s\":%.3f,\"files_per_s\":%.1f,\"boots_per_"
        "s\":%.1f,",
        transport, b->boot_cfg.boot_only ? "true" : "false", b->phones, b->started, b->finished,
        b->concurrency, b->rate, b->ok, b->errors, b->boots, b->enrollments, b->decrypted,
        b->itl_fallbacks, b->files, b->bytes, b->retransmits,
        b->boot_cfg.http_keep_alive ? "true" : "false", b->connections, wall, fps, bps);
    for (int i = 0; i < CAPSTAN_PHONE_STEP_COUNT; i++) {
      print_series(b, labels[i], &b->steps[i]);
      printf(",");
    }
    printf("\"cert_hash\":{\"unknown\":%lu,\"empty\":%lu,\"match\":%lu,\"mismatch\":%lu},",
           b->hashes[0], b->hashes[1], b->hashes[2], b->hashes[3]);
    printf("\"outcomes\":{");
    for (unsigned i = 0; i < b->n_outcomes; i++) {
      printf("%s\"%s\":%lu", i ? "," : "", b->outcomes[i].key, b->outcomes[i].count);
    }
    printf("},\"failures\":{");
    int first = 1;
    for (unsigned i = 0; i < b->n_outcomes; i++) {
      if (strncmp(b->outcomes[i].key, "ok", 2) == 0) continue;
      printf("%s\"%s\":%lu", first ? "" : ",", b->outcomes[i].key, b->outcomes[i].count);
      first = 0;
    }
    printf("}}\n");
  } else {
    printf(
        "storm transport=%s phones=%lu finished=%lu concurrency=%lu ok=%lu errors=%lu "
        "wall_s=%.3f\n",
        transport, b->phones, b->finished, b->concurrency, b->ok, b->errors, wall);
    printf(
        "boots=%lu enrollments=%lu decrypted=%lu itl_fallbacks=%lu files=%lu bytes=%llu "
        "retransmits=%lu connections=%lu files_per_s=%.1f boots_per_s=%.1f\n",
        b->boots, b->enrollments, b->decrypted, b->itl_fallbacks, b->files, b->bytes,
        b->retransmits, b->connections, fps, bps);
    for (int i = 0; i < CAPSTAN_PHONE_STEP_COUNT; i++) print_series(b, labels[i], &b->steps[i]);
    printf("cert_hash empty=%lu match=%lu mismatch=%lu\n", b->hashes[1], b->hashes[2],
           b->hashes[3]);
    printf("outcomes:");
    for (unsigned i = 0; i < b->n_outcomes; i++) {
      printf(" %s=%lu", b->outcomes[i].key, b->outcomes[i].count);
    }
    printf("\n");
  }
  fflush(stdout);
}

static void raise_nofile(unsigned long want) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) getrlimit(RLIMIT_NOFILE, &rl);
  }
  if (rl.rlim_cur != RLIM_INFINITY && want + 64 > rl.rlim_cur) {
    fprintf(stderr,
            "capstan-bench: warning: open file limit %lu is below the concurrency %lu "
            "(raise the hard limit: ulimit -Hn)\n",
            (unsigned long)rl.rlim_cur, want);
  }
}

static void usage(FILE *f) {
  fprintf(f,
          "usage: capstan-bench --connect HOST:PORT (--phones N | --devices FILE.csv) [options]\n"
          "       capstan-bench --mic-ca FILE.pem [--mic-ca-out CERT.pem]   (make the CA only)\n"
          "  --concurrency C      sessions in flight at most (default 100)\n"
          "  --rate R             start at most R sessions per second (default: no limit)\n"
          "  --name-prefix P      device names: P + hex counter, 15 chars (default SEP)\n"
          "  --first N            counter of the first device (default 0)\n"
          "  --print-names        print the N device names, one per line, and exit\n"
          "  --auth MODE          null | string | absent | lsc | mic (default null; given,\n"
          "                       it overrides the auth_mode of --devices)\n"
          "  --auth-string S      the authentication string (--auth string)\n"
          "  --devices FILE.csv   the phones: one per row of a CSV with a header, as\n"
          "                       'capstan device export' writes it: name, auth_mode,\n"
          "                       auth_string per device (rows with operation none are\n"
          "                       left out); --phones N takes the first N\n"
          "  --lsc-dir DIR        each phone's LSC, DIR/NAME.der + NAME.key.der: loaded at\n"
          "                       start (auth lsc needs it), written after each session;\n"
          "                       NAME.SERIALHEX.der, every certificate a phone stored;\n"
          "                       and NAME.pending.der, the key of a certificate request\n"
          "                       still waiting for its certificate (external CA)\n"
          "  --mic-ca FILE.pem    manufacturing CA (certificate + key) that issues each mic\n"
          "                       phone's MIC (CN CP-8845-NAME); created when missing;\n"
          "                       without --connect: only create it and exit\n"
          "  --mic-ca-out F.pem   write the CA's certificate, for 'capstan trust add'\n"
          "  --max-retries N      a phone comes back at most N times (default 0) after\n"
          "                       RETRY_LATER (it waits RETRY_DELAY), or a refused, reset\n"
          "                       or timed-out connection (backoff with jitter)\n"
          "  --retry-cap-seconds S  never wait longer than S before coming back (default 600)\n"
          "  --backoff-seconds S  first backoff after a connection error (default 1; doubles)\n"
          "  --key SPEC           key pool to pre-generate: rsa2048 (default), ec256, ...\n"
          "  --key-pool K         keys per kind in the pool (default 16)\n"
          "  --key-cache DIR      keep the pool in DIR (PKCS#8 DER) across runs\n"
          "  --keygen-delay SEC   simulated phone key generation time (default 0)\n"
          "  --ca-pem FILE        verify the server certificate\n"
          "  --timeout SEC        per-step timeout (default 30)\n"
          "  --ca-wait SEC        after a certificate request (SIGN_CERT_RESPONSE), wait at\n"
          "                       most SEC for the server while it asks its CA (default 180)\n"
          "  --bind-base IP       bind phones to local IPv4 addresses from IP on (e.g.\n"
          "                       127.1.0.1: loopback is a /8), spreading them over\n"
          "  --bind-count N       N addresses (default 1): servers limit connections per address\n"
          "  --hold               stay in key generation; report when all are held\n"
          "  --hold-seconds S     release the held sessions after S (default: at SIGINT)\n"
          "  --json               one JSON object\n"
          "reset storm (--storm): every phone runs its boot sequence\n"
          "  --storm              boot phones instead of CAPF sessions\n"
          "  --boot http|tftp     file transport (default http)\n"
          "  --files HOST:PORT    the HTTP or TFTP file server (required with --storm)\n"
          "                       (--connect: CAPF; default: the configuration's capfList)\n"
          "  --boot-only          files only: never a CAPF session\n"
          "  --tftp-cert FILE.pem trust ITLs signed by this certificate only (default: each\n"
          "                       phone trusts its first ITL)\n"
          "  --reboots N          boots again after an enrollment, at most N (default 1)\n"
          "  --tftp-blksize N     TFTP blksize option (default 1428)\n"
          "  --tftp-rto MS        TFTP first retransmission timeout (default 1000)\n"
          "  --tftp-retries N     TFTP resends without progress (default 5)\n"
          "  --keep-alive         HTTP: one connection per boot (default: one per file)\n"
          "  with --rate and no --concurrency, all phones may be in flight\n");
}

int main(int argc, char **argv) {
  static const struct option opts[] = {
      {"connect", required_argument, NULL, 'c'},
      {"phones", required_argument, NULL, 'n'},
      {"concurrency", required_argument, NULL, 'C'},
      {"rate", required_argument, NULL, 'r'},
      {"name-prefix", required_argument, NULL, 'p'},
      {"first", required_argument, NULL, 'f'},
      {"print-names", no_argument, NULL, 'P'},
      {"auth", required_argument, NULL, 'a'},
      {"auth-string", required_argument, NULL, 's'},
      {"key", required_argument, NULL, 'k'},
      {"key-pool", required_argument, NULL, 'K'},
      {"key-cache", required_argument, NULL, 'D'},
      {"keygen-delay", required_argument, NULL, 'd'},
      {"ca-pem", required_argument, NULL, 'A'},
      {"timeout", required_argument, NULL, 't'},
      {"ca-wait", required_argument, NULL, 'w'},
      {"hold", no_argument, NULL, 'H'},
      {"hold-seconds", required_argument, NULL, 'S'},
      {"json", no_argument, NULL, 'j'},
      {"bind-base", required_argument, NULL, 'B'},
      {"bind-count", required_argument, NULL, 'N'},
      {"storm", no_argument, NULL, 'T'},
      {"boot", required_argument, NULL, 'b'},
      {"files", required_argument, NULL, 'F'},
      {"boot-only", no_argument, NULL, 'O'},
      {"tftp-cert", required_argument, NULL, 'X'},
      {"reboots", required_argument, NULL, 'R'},
      {"tftp-blksize", required_argument, NULL, 'z'},
      {"tftp-rto", required_argument, NULL, 'o'},
      {"tftp-retries", required_argument, NULL, 'y'},
      {"keep-alive", no_argument, NULL, 'L'},
      {"devices", required_argument, NULL, 'V'},
      {"lsc-dir", required_argument, NULL, 'l'},
      {"mic-ca", required_argument, NULL, 'm'},
      {"mic-ca-out", required_argument, NULL, 'M'},
      {"max-retries", required_argument, NULL, 'x'},
      {"retry-cap-seconds", required_argument, NULL, 'Y'},
      {"backoff-seconds", required_argument, NULL, 'W'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  bench_t b;
  memset(&b, 0, sizeof(b));
  b.prefix = "SEP";
  b.concurrency = 100;
  b.cfg.auth = CAPSTAN_PHONE_AUTH_NULL_STRING;
  const char *connect = NULL, *key_spec = "rsa2048", *key_cache = NULL, *ca_pem = NULL;
  unsigned long key_pool = 16;
  int print_names = 0;
  int concurrency_set = 0;
  const char *files = NULL, *tftp_cert = NULL;
  const char *devices_csv = NULL, *mic_ca = NULL, *mic_ca_out = NULL;
  b.reboots = 1;
  b.retry_cap_s = 600;
  b.backoff_s = 1;
  int c;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    char *end = NULL;
    double d;
    switch (c) {
      case 'c':
        connect = optarg;
        break;
      case 'n':
        b.phones = strtoul(optarg, &end, 10);
        if (end == optarg || *end || b.phones == 0 || b.phones > 10000000) goto bad;
        break;
      case 'C':
        b.concurrency = strtoul(optarg, &end, 10);
        if (end == optarg || *end || b.concurrency == 0) goto bad;
        concurrency_set = 1;
        break;
      case 'r':
        b.rate = strtod(optarg, &end);
        if (end == optarg || *end || b.rate < 0) goto bad;
        break;
      case 'p':
        b.prefix = optarg;
        break;
      case 'f':
        b.first = strtoul(optarg, &end, 0);
        if (end == optarg || *end) goto bad;
        break;
      case 'P':
        print_names = 1;
        break;
      case 'a':
        if (capstan_phone_parse_auth(optarg, &b.cfg.auth) != 0) {
          fprintf(stderr, "capstan-bench: --auth must be null, string, absent, lsc or mic\n");
          return 2;
        }
        b.auth_set = 1;
        break;
      case 'V':
        devices_csv = optarg;
        break;
      case 'l':
        b.lsc_dir = optarg;
        break;
      case 'm':
        mic_ca = optarg;
        break;
      case 'M':
        mic_ca_out = optarg;
        break;
      case 'x':
        b.max_retries = (unsigned)strtoul(optarg, &end, 10);
        if (end == optarg || *end || b.max_retries > 1000000) goto bad;
        break;
      case 'Y':
        b.retry_cap_s = strtod(optarg, &end);
        if (end == optarg || *end || b.retry_cap_s < 0 || b.retry_cap_s > 86400) goto bad;
        break;
      case 'W':
        b.backoff_s = strtod(optarg, &end);
        if (end == optarg || *end || b.backoff_s < 0 || b.backoff_s > 86400) goto bad;
        break;
      case 's':
        b.cfg.auth_string = optarg;
        break;
      case 'k':
        key_spec = optarg;
        break;
      case 'K':
        key_pool = strtoul(optarg, &end, 10);
        if (end == optarg || *end || key_pool == 0 || key_pool > 100000) goto bad;
        break;
      case 'D':
        key_cache = optarg;
        break;
      case 'd':
        d = strtod(optarg, &end);
        if (end == optarg || *end || d < 0 || d > 86400) goto bad;
        b.cfg.keygen_delay_ms = (uint64_t)(d * 1000.0);
        break;
      case 'A':
        ca_pem = optarg;
        break;
      case 't':
        d = strtod(optarg, &end);
        if (end == optarg || *end || d <= 0 || d > 86400) goto bad;
        b.cfg.step_timeout_ms = (uint64_t)(d * 1000.0) + 1;
        break;
      case 'w':
        d = strtod(optarg, &end);
        if (end == optarg || *end || d <= 0 || d > 86400) goto bad;
        b.cfg.ca_wait_ms = (uint64_t)(d * 1000.0) + 1;
        break;
      case 'H':
        b.hold = 1;
        break;
      case 'S':
        b.hold_seconds = strtod(optarg, &end);
        if (end == optarg || *end || b.hold_seconds < 0) goto bad;
        break;
      case 'j':
        b.json = 1;
        break;
      case 'B': {
        struct in_addr ia;
        if (inet_pton(AF_INET, optarg, &ia) != 1) goto bad;
        b.bind_base = ntohl(ia.s_addr);
        break;
      }
      case 'N':
        b.bind_count = strtoul(optarg, &end, 10);
        if (end == optarg || *end || b.bind_count == 0 || b.bind_count > 16000000) goto bad;
        break;
      case 'T':
        b.storm = 1;
        break;
      case 'b':
        if (capstan_phone_parse_transport(optarg, &b.boot_cfg.transport) != 0) goto bad;
        break;
      case 'F':
        files = optarg;
        break;
      case 'O':
        b.boot_cfg.boot_only = 1;
        break;
      case 'X':
        tftp_cert = optarg;
        break;
      case 'R':
        b.reboots = (unsigned)strtoul(optarg, &end, 10);
        if (end == optarg || *end || b.reboots > 100) goto bad;
        break;
      case 'z': {
        unsigned long v = strtoul(optarg, &end, 10);
        if (end == optarg || *end || v < 8 || v > 65464) goto bad;
        b.boot_cfg.tftp_blksize = (uint16_t)v;
        break;
      }
      case 'o':
        b.boot_cfg.tftp_rto_ms = strtoull(optarg, &end, 10);
        if (end == optarg || *end || b.boot_cfg.tftp_rto_ms == 0) goto bad;
        break;
      case 'y':
        b.boot_cfg.tftp_retries = (unsigned)strtoul(optarg, &end, 10);
        if (end == optarg || *end || b.boot_cfg.tftp_retries == 0) goto bad;
        break;
      case 'L':
        b.boot_cfg.http_keep_alive = 1;
        break;
      case 'h':
        usage(stdout);
        return 0;
      default:
        usage(stderr);
        return 2;
    }
    continue;
  bad:
    fprintf(stderr, "capstan-bench: bad option value: %s\n", optarg);
    usage(stderr);
    return 2;
  }
  if (mic_ca_out != NULL && mic_ca == NULL) {
    fprintf(stderr, "capstan-bench: --mic-ca-out needs --mic-ca FILE.pem (the CA's key)\n");
    return 2;
  }
  /* --mic-ca without --connect: make (or read) the CA, write its
   * certificate, and stop: `capstan trust add` it before the run. */
  int ca_only = mic_ca != NULL && connect == NULL && !print_names && !b.storm;
  if (ca_only) {
    int rc = load_or_create_mic_ca(mic_ca, &b.mic_ca);
    if (rc == 0 && mic_ca_out != NULL) rc = write_cert_pem(mic_ca_out, b.mic_ca.cert);
    capstan_identity_cleanup(&b.mic_ca);
    return rc == 0 ? 0 : 1;
  }
  if (devices_csv != NULL) {
    unsigned long n = 0;
    if (read_devices(devices_csv, b.cfg.auth, &b.devices, &n) != 0) return 1;
    if (b.phones == 0 || b.phones > n) b.phones = n;
  }
  if (optind != argc || b.phones == 0 ||
      (connect == NULL && !print_names && !(b.storm && files != NULL)) ||
      (b.storm && files == NULL && !print_names) || (b.storm && b.hold) ||
      (b.storm && (b.max_retries > 0 || b.lsc_dir != NULL || mic_ca != NULL))) {
    usage(stderr);
    free(b.devices);
    return 2;
  }
  size_t plen = strlen(b.prefix);
  if (b.devices == NULL && plen >= NAME_LEN) {
    fprintf(stderr, "capstan-bench: --name-prefix must be shorter than %d characters\n", NAME_LEN);
    return 2;
  }
  /* The counter must fit in the digits the prefix leaves. */
  int digits = (int)(NAME_LEN - plen);
  if (b.devices == NULL && digits < 16) {
    unsigned long long cap = 1ull << (4 * digits);
    if ((unsigned long long)b.first + b.phones > cap) {
      fprintf(stderr, "capstan-bench: %lu phones do not fit in %d hex digits after %s\n", b.phones,
              digits, b.prefix);
      return 2;
    }
  }
  if (print_names) {
    char name[64];
    for (unsigned long i = 0; i < b.phones; i++) {
      phone_name(&b, i, name, sizeof(name));
      printf("%s\n", name);
    }
    free(b.devices);
    return 0;
  }
  if (connect != NULL && capstan_phone_parse_addr(connect, &b.cfg.addr) != 0) {
    fprintf(stderr, "capstan-bench: bad --connect %s\n", connect);
    return 2;
  }
  if (b.storm) {
    if (capstan_phone_parse_addr(files, &b.boot_cfg.file_addr) != 0) {
      fprintf(stderr, "capstan-bench: bad --files %s\n", files);
      return 2;
    }
    if (connect != NULL) {
      b.boot_cfg.capf_addr = b.cfg.addr;
      b.boot_cfg.has_capf_addr = 1;
    } else {
      /* Only for the family check below. */
      b.cfg.addr = b.boot_cfg.file_addr;
    }
    if (b.rate > 0 && !concurrency_set) b.concurrency = b.phones;
  }
  int key_alg;
  unsigned key_bits;
  if (capstan_phone_parse_key_spec(key_spec, &key_alg, &key_bits) != 0) {
    fprintf(stderr, "capstan-bench: bad --key %s\n", key_spec);
    return 2;
  }
  b.mic_key_alg = key_alg;
  b.mic_key_bits = key_bits;
  if (b.lsc_dir != NULL && mkdir(b.lsc_dir, 0700) != 0 && errno != EEXIST) {
    fprintf(stderr, "capstan-bench: cannot create %s: %s\n", b.lsc_dir, strerror(errno));
    return 1;
  }
  if (mic_ca != NULL) {
    if (load_or_create_mic_ca(mic_ca, &b.mic_ca) != 0) return 1;
    if (mic_ca_out != NULL && write_cert_pem(mic_ca_out, b.mic_ca.cert) != 0) return 1;
  }
  srandom((unsigned)(uv_hrtime() ^ (uint64_t)getpid()));
  if (b.bind_count == 0) b.bind_count = 1;
  if (b.bind_base != 0 && b.cfg.addr.ss_family != AF_INET) {
    fprintf(stderr, "capstan-bench: --bind-base needs an IPv4 --connect address\n");
    return 2;
  }
  if (b.hold && b.concurrency < b.phones) b.concurrency = b.phones;
  if (b.concurrency > b.phones) b.concurrency = b.phones;
  raise_nofile(b.concurrency);
  signal(SIGPIPE, SIG_IGN);

  int status = 1;
  char err[256];
  SSL_CTX *ctx = capstan_phone_ssl_ctx_new(ca_pem, err, sizeof(err));
  capstan_phone_keypool_t *keys = capstan_phone_keypool_new(key_cache, (unsigned)key_pool);
  b.slots = calloc(b.phones, sizeof(*b.slots));
  b.latencies = calloc(b.phones, sizeof(*b.latencies));
  b.ready = calloc(b.phones, sizeof(*b.ready));
  if (ctx == NULL || keys == NULL || b.slots == NULL || b.latencies == NULL || b.ready == NULL) {
    fprintf(stderr, "capstan-bench: setup failed%s%s\n", ctx == NULL ? ": " : "",
            ctx == NULL ? err : "");
    goto out;
  }
  int rc = 0;
  if (!(b.storm && b.boot_cfg.boot_only)) {
    fprintf(stderr, "capstan-bench: preparing %lu %s keys%s%s\n", key_pool, key_spec,
            key_cache ? " in " : "", key_cache ? key_cache : "");
    rc = capstan_phone_keypool_prewarm(keys, key_alg, key_bits, (unsigned)key_pool);
  }
  if (rc != 0) {
    fprintf(stderr, "capstan-bench: key generation failed: %s\n", capstan_strerror(rc));
    goto out;
  }
  b.cfg.ssl_ctx = ctx;
  b.cfg.keys = keys;
  b.cfg.hold = b.hold;
  b.cfg.on_hold = on_phone_hold;
  if (b.storm) {
    b.boot_cfg.phone = b.cfg;
    b.boot_cfg.phone.hold = 0;
    b.boot_cfg.phone.on_hold = NULL;
    if (tftp_cert != NULL) {
      FILE *f = fopen(tftp_cert, "r");
      if (f != NULL) {
        b.trusted = PEM_read_X509(f, NULL, NULL, NULL);
        fclose(f);
      }
      if (b.trusted == NULL) {
        fprintf(stderr, "capstan-bench: cannot read a PEM certificate from %s\n", tftp_cert);
        goto out;
      }
    }
  }

  b.loop = uv_default_loop();
  uv_timer_init(b.loop, &b.rate_timer);
  uv_timer_init(b.loop, &b.hold_timer);
  b.rate_timer.data = b.hold_timer.data = &b;
  uv_signal_init(b.loop, &b.sigint);
  uv_signal_init(b.loop, &b.sigterm);
  b.sigint.data = b.sigterm.data = &b;
  uv_signal_start(&b.sigint, on_signal, SIGINT);
  uv_signal_start(&b.sigterm, on_signal, SIGTERM);
  b.t_start = b.last_tick = uv_hrtime();
  if (b.rate > 0) {
    b.tokens = 1.0;
    uv_timer_start(&b.rate_timer, on_rate_timer, 10, 10);
  }
  start_more(&b);
  uv_run(b.loop, UV_RUN_DEFAULT);
  if (b.storm) {
    report_storm(&b);
  } else {
    report(&b);
  }
  status = (b.errors == 0 && !b.stopping) ? 0 : 1;
  uv_loop_close(b.loop);

out:
  for (unsigned long i = 0; b.slots != NULL && i < b.phones; i++) slot_finish(&b.slots[i]);
  capstan_identity_cleanup(&b.mic_ca);
  free(b.devices);
  free(b.ready);
  free(b.slots);
  free(b.latencies);
  for (int i = 0; i < CAPSTAN_PHONE_STEP_COUNT; i++) free(b.steps[i].v);
  X509_free(b.trusted);
  capstan_phone_keypool_free(keys);
  SSL_CTX_free(ctx);
  return status;
}
