/* Fuzz target for the CAPF session state machine (handlers/capf/session.h),
 * in process and without sockets. A fake host implements the session's
 * hooks (as tests/unit/test_capf_session.c does) and the input is a script:
 * the first three bytes choose the device (operation, auth mode, key,
 * issuer, a hand-over certificate, a pending request, what loading it
 * returns, whether an online CA is configured) and the server (cluster issuer, a full
 * key-generation throttle); every later byte is an event: phone bytes (raw, or a message built from
 * the input with the right session id, in one or two reads, or raw bytes repeated), a handshake
 * done, a timer firing, the oldest record committed or failed, the oldest job done or failed (with
 * plausible outputs), an answer of the CA (each outcome), send and record failures, a throttle slot
 * freed, the connection closed, a drain abort, and (event byte 0xE6, followed by two bytes) the
 * wrong-string settings: the auth-max-failures, the device's wrong strings in a row so far, the
 * per-address delay cap, earlier wrong strings from the peer's address, the server starting to
 * drain.
 *
 * Checked after every input: nothing is sent once the connection is
 * closing or closed; every message the server sends parses and carries the
 * session id; no LSC leaves (STORE_CERT_REQUEST) before an ISSUED record
 * committed, unless it is a hand-over; the session finishes exactly once
 * (one outcome counted); a SERVER_ERROR outcome needs an injected fault (else
 * a bad transition); every key-generation slot is given back; nothing
 * leaks (ASan). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/mem.h>
#include <uv.h>

#include "core/base/error.h"
#include "core/base/log.h"
#include "core/base/metrics.h"
#include "core/ca/ca.h"
#include "core/pki/pki.h"
#include "handlers/capf/guessing.h"
#include "handlers/capf/session.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_QUEUED 64
#define NO_TIMER UINT64_MAX
#define FUZZ_SESSION_ID 0x11223344u
#define THROTTLE_SLOTS 2

#define CHECK(cond)                                                                        \
  do {                                                                                     \
    if (!(cond)) {                                                                         \
      fprintf(stderr, "fuzz_capf_session: %s:%d: check failed: %s (state %s)\n", __FILE__, \
              __LINE__, #cond, capf_state_name(g_f ? g_f->s.state : 0));                   \
      abort();                                                                             \
    }                                                                                      \
  } while (0)

typedef struct fake {
  capf_session_t s; /* first: the hooks get back here by a cast */
  int closes;       /* the close hook ran */
  int closed;       /* capf_session_closed ran */
  uint64_t timer_ms;
  int send_fails, record_fails;
  int faults; /* a server-side failure was injected: SERVER_ERROR is allowed */
  int load_rc;
  capf_device_t device;
  capf_record_t *records[MAX_QUEUED];
  int rhead, rtail;
  capf_job_t *jobs[MAX_QUEUED];
  int jhead, jtail;
  int ca_outstanding;
  int no_ca;      /* the online CA is not configured: ca_submit refuses */
  int issued_ok;  /* ISSUED records committed */
  int store_sent; /* STORE_CERT_REQUESTs that were not a hand-over */
  int nsent;
} fake_t;

static fake_t *g_f;
static uv_loop_t g_loop;
static capf_shared_t g_shared;
static uint8_t *g_cert; /* a real certificate (the CA's answer, a hand-over) */
static size_t g_cert_len;
static int g_dummy_slots; /* throttle slots this harness holds */

static fake_t *F(capf_session_t *s) {
  return (fake_t *)s;
}

static int hook_send(capf_session_t *s, const uint8_t *msg, size_t len) {
  fake_t *f = F(s);
  CHECK(!f->closed);
  CHECK(f->closes == 0);
  CHECK(s->state != CAPF_ST_CLOSING);
  capstan_capf_msg_t m;
  CHECK(capstan_capf_parse(msg, len, &m) == 0);
  CHECK(m.session_id == s->session_id);
  if (m.command == CAPSTAN_CAPF_CMD_STORE_CERT_REQUEST && !s->handover) {
    f->store_sent++;
    CHECK(f->issued_ok >= f->store_sent);
  }
  f->nsent++;
  if (f->send_fails) return CAPSTAN_EIO;
  return 0;
}
static void hook_hold_output(capf_session_t *s) {
  CHECK(!F(s)->closed);
}
static void hook_close(capf_session_t *s) {
  F(s)->closes++;
}
static void hook_start_timer(capf_session_t *s, uint64_t ms) {
  CHECK(!F(s)->closed);
  F(s)->timer_ms = ms;
}
static void hook_stop_timer(capf_session_t *s) {
  F(s)->timer_ms = NO_TIMER;
}
static int hook_load_device(capf_session_t *s, const char *name, capf_device_t *out) {
  fake_t *f = F(s);
  CHECK(name != NULL && name[0] != '\0');
  if (f->load_rc < 0) return f->load_rc;
  *out = f->device;
  if (f->device.handover_der != NULL) {
    out->handover_der = malloc(f->device.handover_len);
    CHECK(out->handover_der != NULL);
    memcpy(out->handover_der, f->device.handover_der, f->device.handover_len);
  }
  return 0;
}
static int hook_record(capf_session_t *s, capf_record_t *r) {
  fake_t *f = F(s);
  CHECK(r != NULL);
  if (f->record_fails) {
    capf_record_free(r);
    return CAPSTAN_EIO;
  }
  CHECK(f->rtail < MAX_QUEUED);
  f->records[f->rtail++] = r;
  return 0;
}
static int hook_work(capf_session_t *s, capf_job_t *j) {
  fake_t *f = F(s);
  CHECK(!f->closed);
  CHECK(j != NULL);
  CHECK(f->jtail < MAX_QUEUED);
  f->jobs[f->jtail++] = j;
  return 0;
}
static int hook_ca_submit(capf_session_t *s, const uint8_t *csr, size_t csr_len,
                          const uint8_t *spki, size_t spki_len, const char *request_id) {
  fake_t *f = F(s);
  CHECK(!f->closed);
  CHECK(csr != NULL && csr_len > 0 && spki != NULL && request_id != NULL);
  (void)spki_len;
  if (!CAPSTAN_ISSUER_IS_ONLINE(s->issuer) || f->no_ca)
    return CAPSTAN_ENOENT; /* no CA configured */
  CHECK(!f->ca_outstanding);
  f->ca_outstanding = 1;
  return 0;
}
static void hook_ca_cancel(capf_session_t *s) {
  F(s)->ca_outstanding = 0;
}

static const capf_session_hooks_t kHooks = {
    .send = hook_send,
    .hold_output = hook_hold_output,
    .close = hook_close,
    .start_timer = hook_start_timer,
    .stop_timer = hook_stop_timer,
    .load_device = hook_load_device,
    .record = hook_record,
    .work = hook_work,
    .ca_submit = hook_ca_submit,
    .ca_cancel = hook_ca_cancel,
};

static void init(void) {
  capstan_log_init();
  capstan_log_set_level(CAPSTAN_LOG_ERROR); /* refusals are the point here */
  if (uv_loop_init(&g_loop) != 0) abort();
  capf_metrics_register(&g_shared.m);
  g_shared.settings = (capf_settings_t){
      .validity_days = 365,
      .throttle_hold_seconds = 30,
      .retry_delay_seconds = 120,
      .keygen_ceiling_seconds = 90,
      .handshake_timeout_seconds = 10,
      .step_timeout_seconds = 20,
      .ca_phone_wait_seconds = 120,
  };
  capstan_throttle_init(&g_shared.throttle, &g_loop, THROTTLE_SLOTS, 1000000);
  capstan_identity_t id = {0};
  if (capstan_pki_create_capf(NULL, &id) != 0 ||
      capstan_pki_cert_to_der(id.cert, &g_cert, &g_cert_len) != 0) {
    abort();
  }
  capstan_identity_cleanup(&id);
}

/* ---- reading the script -------------------------------------------------- */

typedef struct {
  const uint8_t *p;
  size_t n;
} in_t;

static uint8_t u8(in_t *in) {
  if (in->n == 0) return 0;
  in->n--;
  return *in->p++;
}
/* Up to |max| bytes of the input (the count from the input). */
static size_t take(in_t *in, size_t max, const uint8_t **out) {
  size_t want = u8(in);
  if (want > max) want = max;
  if (want > in->n) want = in->n;
  *out = in->p;
  in->p += want;
  in->n -= want;
  return want;
}

static double outcomes(void) {
  double n = 0;
  for (int op = 0; op < CAPF_OP_COUNT; op++) {
    for (int r = 0; r < CAPF_RESULT_COUNT; r++)
      n += capstan_metric_value(g_shared.m.sessions[op][r]);
  }
  return n;
}

static const uint8_t kPhoneKey[] = {0x30, 0x82, 0x01, 0x22, 0xaa, 0xbb};
static const uint8_t kCsr[] = {0x30, 0x03, 0x02, 0x01, 0x00};
static const char *const kNames[] = {"SEP001122334455", "CIPCdev", "", "SEP00112233445\x01"};
static const char *const kPasswords[] = {"123456", "", "1234567", "12345"};

/* A message the phone could send, assembled from the input. */
static void phone_message(fake_t *f, in_t *in) {
  uint8_t cmd = (uint8_t)(u8(in) % (CAPSTAN_CAPF_CMD_MAX + 2));
  uint8_t sel = u8(in);
  uint16_t els = (uint16_t)(u8(in) | u8(in) << 8);
  uint32_t sid = (sel & 0x80) ? (uint32_t)u8(in) : f->s.session_id;
  capstan_capf_builder_t b;
  if (capstan_capf_builder_begin(&b, cmd, sid, 0) != 0) {
    uint8_t *out = NULL;
    size_t len = 0;
    capstan_capf_builder_finish(&b, &out, &len);
    OPENSSL_free(out);
    return;
  }
  const uint8_t *bytes;
  size_t n;
  if (els & 0x0001) {
    const char *name = kNames[sel & 3];
    capstan_capf_builder_add_string(&b, CAPSTAN_CAPF_EL_DEVICE_NAME, name, strlen(name));
  }
  if (els & 0x0002) {
    if (sel & 0x04) {
      n = take(in, 80, &bytes);
      capstan_capf_builder_add_bytes(&b, CAPSTAN_CAPF_EL_AUTH_PASSWORD, bytes, n);
    } else {
      const char *pw = kPasswords[(sel >> 3) & 3];
      capstan_capf_builder_add_string(&b, CAPSTAN_CAPF_EL_AUTH_PASSWORD, pw, strlen(pw));
    }
  }
  if (els & 0x0004) capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_REASON, u8(in));
  if (els & 0x0008) capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_VERSION, u8(in) & 7);
  if (els & 0x0010) {
    if (sel & 0x20) {
      n = take(in, 255, &bytes);
      capstan_capf_builder_add_certificate(&b, 1 + (sel & 1), bytes, n);
    } else {
      capstan_capf_builder_add_certificate(&b, 1 + (sel & 1), g_cert, g_cert_len);
    }
  }
  if (els & 0x0020) {
    n = take(in, 255, &bytes);
    capstan_capf_builder_add_bytes(&b, CAPSTAN_CAPF_EL_SIGNED_DATA, bytes, n);
  }
  if (els & 0x0040) {
    n = take(in, 255, &bytes);
    capstan_capf_builder_add_sha2_signed_data(&b, u8(in) & 3, bytes, n);
  }
  if (els & 0x0080) {
    if (sel & 0x40) {
      n = take(in, 255, &bytes);
      capstan_capf_builder_add_bytes(&b, CAPSTAN_CAPF_EL_PUBLIC_KEY, bytes, n);
    } else {
      capstan_capf_builder_add_bytes(&b, CAPSTAN_CAPF_EL_PUBLIC_KEY, kPhoneKey, sizeof(kPhoneKey));
    }
  }
  if (els & 0x0100) {
    if (sel & 0x08) {
      n = take(in, 255, &bytes);
      capstan_capf_builder_add_bytes(&b, CAPSTAN_CAPF_EL_CERT_REQUEST, bytes, n);
    } else {
      capstan_capf_builder_add_bytes(&b, CAPSTAN_CAPF_EL_CERT_REQUEST, kCsr, sizeof(kCsr));
    }
  }
  if (els & 0x0200) {
    const uint8_t *s1, *s2;
    size_t n1, n2;
    n = take(in, 128, &bytes);
    n1 = take(in, 64, &s1);
    n2 = take(in, 64, &s2);
    capstan_capf_builder_add_sudi(&b, bytes, n, s1, n1, s2, n2);
  }
  if (els & 0x0400) {
    /* any element, any value */
    uint8_t tag = u8(in);
    n = take(in, 64, &bytes);
    capstan_capf_builder_add_bytes(&b, tag, bytes, n);
  }
  if (els & 0x0800) capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_AUTH_TYPE, u8(in) & 7);
  if (els & 0x1000) capstan_capf_builder_add_u16(&b, CAPSTAN_CAPF_EL_KEY_SIZE, 2048);
  uint8_t *msg = NULL;
  size_t len = 0;
  if (capstan_capf_builder_finish(&b, &msg, &len) != 0) return;
  /* In one read, or two split where the input says. */
  size_t split = (size_t)u8(in) % (len + 1);
  if (split == 0) {
    capf_session_received(&f->s, msg, len);
  } else {
    uint8_t *a = malloc(split), *c = malloc(len - split + 1);
    CHECK(a != NULL && c != NULL);
    memcpy(a, msg, split);
    memcpy(c, msg + split, len - split);
    capf_session_received(&f->s, a, split);
    capf_session_received(&f->s, c, len - split);
    free(a);
    free(c);
  }
  OPENSSL_free(msg);
}

static void commit_next(fake_t *f, int status) {
  if (f->rhead == f->rtail) return;
  capf_record_t *r = f->records[f->rhead];
  f->records[f->rhead++] = NULL;
  if (status == 0 && r->kind == CAPF_RECORD_ISSUED) f->issued_ok++;
  if (status < 0) f->faults = 1;
  capf_session_recorded(&f->s, r, status);
  capf_record_free(r);
}

static uint8_t *dup_str(const char *s, size_t *len) {
  *len = strlen(s);
  uint8_t *p = malloc(*len);
  CHECK(p != NULL);
  memcpy(p, s, *len);
  return p;
}

/* The oldest job ends: |ok|, or with the failure the input chooses. */
static void work_next(fake_t *f, int ok, uint8_t how) {
  if (f->jhead == f->jtail) return;
  capf_job_t *j = f->jobs[f->jhead];
  f->jobs[f->jhead++] = NULL;
  if (ok) {
    j->status = 0;
    if (j->kind == CAPF_JOB_VERIFY) {
      j->u.verify.spki = dup_str("pk", &j->u.verify.spki_len);
      strcpy(j->u.verify.md5, "fedcba9876543210fedcba9876543210");
    } else if (j->kind == CAPF_JOB_ISSUE) {
      j->u.issue.lsc_der = malloc(g_cert_len);
      CHECK(j->u.issue.lsc_der != NULL);
      memcpy(j->u.issue.lsc_der, g_cert, g_cert_len);
      j->u.issue.lsc_len = g_cert_len;
      j->u.issue.lsc_spki = dup_str("key", &j->u.issue.lsc_spki_len);
      memset(j->u.issue.serial, 0x42, sizeof(j->u.issue.serial));
      strcpy(j->u.issue.md5, "0123456789abcdef0123456789abcdef");
      j->u.issue.not_after = 2000000000;
    }
  } else {
    static const int kErrors[] = {CAPSTAN_EACCES, CAPSTAN_EINVAL, CAPSTAN_ENOMEM, CAPSTAN_EIO};
    j->status = kErrors[how & 3];
    j->why = (how & 4) ? NULL : "refused by the fuzzer";
    if (j->status == CAPSTAN_ENOMEM || j->status == CAPSTAN_EIO) f->faults = 1;
  }
  capf_session_worked(&f->s, j);
  capf_job_free(j);
}

static void ca_answer(fake_t *f, in_t *in) {
  if (!f->ca_outstanding) return;
  f->ca_outstanding = 0;
  uint8_t how = u8(in);
  capstan_ca_result_t r = {.outcome = (capstan_ca_outcome_t)(how % 6)};
  snprintf(r.reason, sizeof(r.reason), "%s", (how & 0x40) ? "" : "CA said so");
  if (r.outcome == CAPSTAN_CA_ISSUED) {
    if (how & 0x80) {
      const uint8_t *bytes;
      r.cert_len = take(in, 255, &bytes);
      r.cert_der = (uint8_t *)bytes;
      f->faults = 1; /* a CA answer the client would have refused */
    } else {
      r.cert_der = g_cert;
      r.cert_len = g_cert_len;
    }
  } else if (r.outcome == CAPSTAN_CA_PENDING) {
    r.retry_at = (int64_t)time(NULL) + (int64_t)(int8_t)u8(in) * 4;
    snprintf(r.request_id, sizeof(r.request_id), "%u", (unsigned)u8(in));
  }
  capf_session_ca_answered(&f->s, &r);
}

/* Event 0xE6: the wrong-string lockout and delay (session.c string_locked,
 * wrong_string; guessing.c). Byte a: bits 0-2 auth_max_failures (0: no
 * limit), bits 3-5 the device's wrong strings in a row so far (what the
 * store returns: a count at the limit is a locked device), bits 6-7 the
 * per-address delay cap (none, 1, 4, 60 s). Byte b: bits 0-3 earlier wrong
 * strings from the peer's address, bit 4 the server drains (as server.c:
 * shared->draining, then capf_session_draining). */
static void wrong_string_settings(fake_t *f, in_t *in) {
  static const unsigned kDelayMax[] = {0, 1, 4, 60};
  uint8_t a = u8(in), b = u8(in);
  g_shared.settings.auth_max_failures = a & 7;
  f->device.auth_failures = (a >> 3) & 7;
  g_shared.settings.auth_delay_max_seconds = kDelayMax[a >> 6];
  for (unsigned i = 0; i < (b & 15u); i++) {
    capf_guess_wrong(&g_shared.guesses, f->s.peer_host, capstan_now_seconds(),
                     g_shared.settings.auth_delay_max_seconds, NULL);
  }
  if ((b & 0x10) && !g_shared.draining) {
    g_shared.draining = 1;
    capf_session_draining(&f->s);
  }
}

static void take_dummy_slots(void) {
  capstan_throttle_waiter_t w = {0};
  while (capstan_throttle_acquire(&g_shared.throttle, &w) == 1) g_dummy_slots++;
  capstan_throttle_cancel(&g_shared.throttle, &w);
}

static void release_dummy_slot(void) {
  if (g_dummy_slots == 0) return;
  g_dummy_slots--;
  capstan_throttle_release(&g_shared.throttle);
  uv_run(&g_loop, UV_RUN_NOWAIT);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static int ready;
  if (!ready) {
    init();
    ready = 1;
  }
  in_t in = {data, size};
  uint8_t dev = u8(&in), dev2 = u8(&in), srv = u8(&in);

  fake_t *f = calloc(1, sizeof(*f));
  CHECK(f != NULL);
  g_f = f;
  f->timer_ms = NO_TIMER;
  static const int kLoad[] = {0, CAPSTAN_ENOENT, CAPSTAN_EIO, 0};
  f->load_rc = kLoad[(dev2 >> 4) & 3];
  f->no_ca = (dev2 >> 7) & 1;
  if (f->load_rc == CAPSTAN_EIO) f->faults = 1;
  static const unsigned kRsaBits[] = {1024, 2048, 4096, 3072};
  static const unsigned kEcBits[] = {256, 384, 521, 0};
  int ec = (dev >> 5) & 1;
  f->device = (capf_device_t){
      .operation = (capf_operation_t)(dev & 3),
      .auth_mode = (capstan_capf_auth_type_t)(((dev >> 2) & 7) % 6),
      .key_alg = ec ? CAPSTAN_KEY_EC : CAPSTAN_KEY_RSA,
      .key_bits = ec ? kEcBits[(srv >> 4) & 3] : kRsaBits[(srv >> 4) & 3],
      .issuer = (int)(dev2 & 7) % 5 - 1,
      .request_pending = (dev2 >> 3) & 1,
      .completes_by = (dev2 & 0x40) ? 1 : 0,
  };
  strcpy(f->device.auth_string, (srv & 0x40) ? "" : "123456");
  if (dev & 0x80) {
    f->device.handover_der = malloc(g_cert_len);
    CHECK(f->device.handover_der != NULL);
    memcpy(f->device.handover_der, g_cert, g_cert_len);
    f->device.handover_len = g_cert_len;
    memset(f->device.handover_key, 0x17, sizeof(f->device.handover_key));
    strcpy(f->device.handover_md5, "00112233445566778899aabbccddeeff");
    if (srv & 0x80) f->device.handover_len /= 2; /* a damaged record */
    if (srv & 0x80) f->faults = 1;
  }
  g_shared.settings.issuer = srv & 3;
  /* The wrong-string settings start off (event 0xE6 sets them), and no
   * address has guessed yet: each input stands alone. */
  g_shared.settings.auth_max_failures = 0;
  g_shared.settings.auth_delay_max_seconds = 0;
  g_shared.draining = 0;
  memset(&g_shared.guesses, 0, sizeof(g_shared.guesses));
  if (srv & 0x04) take_dummy_slots();

  double before = outcomes();
  capf_session_init(&f->s, &kHooks, &g_shared, "192.0.2.7");
  f->s.session_id = FUZZ_SESSION_ID; /* so that inputs can carry it */
  if (srv & 0x08) capf_session_refuse(&f->s);
  capf_session_start(&f->s);

  while (in.n > 0 && !f->closed) {
    uint8_t ev = u8(&in);
    const uint8_t *bytes;
    size_t n;
    switch (ev % 16) {
      case 0:
      case 1:
        phone_message(f, &in);
        break;
      case 2:
        n = take(&in, 255, &bytes);
        /* 0xF2: the same bytes in 66 reads (up to 16.8 KiB: more than
         * CAPF_MAX_PHONE_MESSAGE buffered, which inputs of 4 KiB cannot
         * carry otherwise). */
        for (int i = 0; i < (ev == 0xF2 ? 66 : 1); i++) capf_session_received(&f->s, bytes, n);
        break;
      case 3:
        capf_session_handshake_done(&f->s);
        break;
      case 4:
        if (f->timer_ms != NO_TIMER) {
          f->timer_ms = NO_TIMER;
          capf_session_timed_out(&f->s);
        }
        break;
      case 5:
        commit_next(f, 0);
        break;
      case 6:
        if (ev == 0xE6) {
          wrong_string_settings(f, &in);
        } else {
          commit_next(f, 0);
        }
        break;
      case 7:
        commit_next(f, (ev & 0x10) ? CAPSTAN_ENOSPC : CAPSTAN_EIO);
        break;
      case 8:
      case 9:
        work_next(f, 1, 0);
        break;
      case 10:
        work_next(f, 0, ev >> 4);
        break;
      case 11:
        ca_answer(f, &in);
        break;
      case 12:
        f->send_fails = !f->send_fails;
        f->faults = 1;
        break;
      case 13:
        f->record_fails = !f->record_fails;
        f->faults = 1;
        break;
      case 14:
        release_dummy_slot();
        break;
      case 15:
        if (ev & 0x10) {
          capf_session_abort(&f->s, (ev & 0x20) ? CAPF_RESULT_SHUTDOWN : CAPF_RESULT_SERVER_ERROR);
          f->faults = 1;
        } else {
          static const capstan_tls_close_reason_t kWhy[] = {
              CAPSTAN_TLS_CLOSE_PEER_EOF, CAPSTAN_TLS_CLOSE_TLS_ERROR,
              CAPSTAN_TLS_CLOSE_HANDSHAKE_FAILED, CAPSTAN_TLS_CLOSE_LOCAL};
          f->closed = 1;
          capf_session_closed(&f->s, kWhy[(ev >> 5) & 3]);
        }
        break;
    }
    /* Once the session closed its connection the host reports the close. */
    if (f->closes > 0 && !f->closed) {
      f->closed = 1;
      capf_session_closed(&f->s, CAPSTAN_TLS_CLOSE_LOCAL);
    }
  }

  /* The end, as the host: the close, then late commits and jobs. */
  if (!f->closed) {
    f->closed = 1;
    capf_session_closed(&f->s, CAPSTAN_TLS_CLOSE_PEER_EOF);
  }
  CHECK(f->s.state == CAPF_ST_CLOSING);
  CHECK(f->s.finished);
  while (f->rhead < f->rtail) commit_next(f, 0);
  while (f->jhead < f->jtail) work_next(f, 0, 3);
  CHECK(f->s.state == CAPF_ST_CLOSING);
  CHECK(outcomes() == before + 1);
  if (f->s.result == CAPF_RESULT_SERVER_ERROR) CHECK(f->faults);
  capf_session_cleanup(&f->s);
  free(f->device.handover_der);
  while (g_dummy_slots > 0) release_dummy_slot();
  uv_run(&g_loop, UV_RUN_NOWAIT);
  CHECK(g_shared.throttle.active == 0);
  CHECK(g_shared.throttle.waiting == 0);
  g_f = NULL;
  free(f);
  return 0;
}
