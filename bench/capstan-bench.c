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
 * The devices must exist on the server: see bench/README.md. */
#include <arpa/inet.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <uv.h>

#include "bench/phone/phone.h"
#include "core/base/error.h"

#define MAX_OUTCOMES 64
/* Device names are "SEP" + 12 hex digits: 15 characters. */
#define NAME_LEN 15

typedef struct {
  char key[48];
  unsigned long count;
} outcome_t;

typedef struct bench bench_t;

typedef struct {
  bench_t *bench;
  unsigned long index;
  capstan_phone_t *phone; /* NULL when not running */
  int holding;
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
}

static void on_phone_done(capstan_phone_t *phone, void *arg, capstan_phone_result_t *res) {
  slot_t *s = arg;
  bench_t *b = s->bench;
  s->phone = NULL;
  if (s->holding) b->holding--;
  s->holding = 0;
  b->active--;
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
        fprintf(stderr, "capstan-bench: phone %lu: %s: %s\n", s->index,
                capstan_phone_error_name(res->error), res->detail);
      }
      break;
  }
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
    make_name(b, b->first + s->index, name, sizeof(name));
    b->boot_cfg.phone.device_name = name;
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

static int start_one(bench_t *b) {
  unsigned long i = b->started;
  char name[64];
  make_name(b, b->first + i, name, sizeof(name));
  capstan_phone_config_t c = b->cfg;
  c.device_name = name;
  if (b->bind_base != 0) {
    struct sockaddr_in *sin = (struct sockaddr_in *)&c.bind_addr;
    memset(&c.bind_addr, 0, sizeof(c.bind_addr));
    sin->sin_family = AF_INET;
    sin->sin_addr.s_addr = htonl(b->bind_base + (uint32_t)(i % b->bind_count));
    c.has_bind = 1;
  }
  slot_t *s = &b->slots[i];
  s->bench = b;
  s->index = i;
  b->started++;
  b->active++;
  int rc;
  if (b->storm) {
    b->boot_cfg.phone.device_name = name;
    b->boot_cfg.phone.bind_addr = c.bind_addr;
    b->boot_cfg.phone.has_bind = c.has_bind;
    rc = start_boot(b, s, NULL, b->trusted);
  } else {
    rc = capstan_phone_start(b->loop, &c, on_phone_done, s, &s->phone);
  }
  if (rc != 0) {
    /* Could not even start (memory): count it as a failure and go on. */
    b->active--;
    b->finished++;
    b->errors++;
    count_outcome(b, "error_start");
    return rc;
  }
  return 0;
}

static void start_more(bench_t *b) {
  while (!b->stopping && b->started < b->phones && b->active < b->concurrency) {
    if (b->rate > 0) {
      if (b->tokens < 1.0) return;
      b->tokens -= 1.0;
    }
    start_one(b);
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
  }
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

/* Outcomes that are the operation succeeding; everything else is listed
 * under "failures". */
static int is_success(const char *key) {
  return strcmp(key, "ok_install_reason_1") == 0 || strcmp(key, "ok_delete_reason_1") == 0 ||
         strcmp(key, "ok_fetch_reason_0") == 0;
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
    printf("}}\n");
  } else {
    printf("phones=%lu finished=%lu concurrency=%lu ok=%lu end=%lu errors=%lu wall_s=%.3f\n",
           b->phones, b->finished, b->concurrency, b->ok, b->end, b->errors, wall);
    printf("enrollments=%lu enrollments_per_s=%.2f sessions_per_s=%.2f\n", b->enrollments, eps,
           sps);
    printf("latency_ms p50=%.2f p90=%.2f p99=%.2f max=%.2f (successful sessions: %lu)\n", p50, p90,
           p99, max, b->n_latencies);
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
          "usage: capstan-bench --connect HOST:PORT --phones N [options]\n"
          "  --concurrency C      sessions in flight at most (default 100)\n"
          "  --rate R             start at most R sessions per second (default: no limit)\n"
          "  --name-prefix P      device names: P + hex counter, 15 chars (default SEP)\n"
          "  --first N            counter of the first device (default 0)\n"
          "  --print-names        print the N device names, one per line, and exit\n"
          "  --auth MODE          null | string | absent (default null)\n"
          "  --auth-string S      the authentication string (--auth string)\n"
          "  --key SPEC           key pool to pre-generate: rsa2048 (default), ec256, ...\n"
          "  --key-pool K         keys per kind in the pool (default 16)\n"
          "  --key-cache DIR      keep the pool in DIR (PKCS#8 DER) across runs\n"
          "  --keygen-delay SEC   simulated phone key generation time (default 0)\n"
          "  --ca-pem FILE        verify the server certificate\n"
          "  --timeout SEC        per-step timeout (default 30)\n"
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
  b.reboots = 1;
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
        if (capstan_phone_parse_auth(optarg, &b.cfg.auth) != 0 ||
            b.cfg.auth == CAPSTAN_PHONE_AUTH_LSC || b.cfg.auth == CAPSTAN_PHONE_AUTH_MIC) {
          fprintf(stderr, "capstan-bench: --auth must be null, string or absent\n");
          return 2;
        }
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
  if (optind != argc || b.phones == 0 ||
      (connect == NULL && !print_names && !(b.storm && files != NULL)) ||
      (b.storm && files == NULL && !print_names) || (b.storm && b.hold)) {
    usage(stderr);
    return 2;
  }
  size_t plen = strlen(b.prefix);
  if (plen >= NAME_LEN) {
    fprintf(stderr, "capstan-bench: --name-prefix must be shorter than %d characters\n", NAME_LEN);
    return 2;
  }
  /* The counter must fit in the digits the prefix leaves. */
  int digits = (int)(NAME_LEN - plen);
  if (digits < 16) {
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
      make_name(&b, b.first + i, name, sizeof(name));
      printf("%s\n", name);
    }
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
  if (ctx == NULL || keys == NULL || b.slots == NULL || b.latencies == NULL) {
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
  free(b.slots);
  free(b.latencies);
  for (int i = 0; i < CAPSTAN_PHONE_STEP_COUNT; i++) free(b.steps[i].v);
  X509_free(b.trusted);
  capstan_phone_keypool_free(keys);
  SSL_CTX_free(ctx);
  return status;
}
