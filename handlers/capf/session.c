/* The CAPF protocol state machine (capf-protocol.md): the states, the
 * events that move them, and what each move says to the phone and writes
 * to the record. Sockets, timers, the store and the workers are behind the
 * session's hooks (session.h).
 *
 *  HANDSHAKE -handshake_done-> WAIT_AUTH -AUTH_RESPONSE-+-(string, null)---> authenticated
 *      (a connection over a limit: -handshake_done-> RETRY_LATER, CLOSING)
 *                                                       '-(lsc, mic)-> VERIFYING -verified->
 * authenticated
 *  On a shared database the device is read off the loop (load_device says
 *  CAPF_LOAD_PENDING): AUTH_RESPONSE -> LOADING -loaded-> as above, and
 *  VERIFYING -verified-> RELOADING -loaded-> authenticated.
 *
 *  authenticated: operation none -> CLOSING (NO_ACTION); deadline passed -> ENDING
 *      troubleshoot -> WAIT_FETCH -FETCH_CERT_RESPONSE--.
 *      delete       -> WAIT_DELETE -DELETE_CERT_RESPONSE-+-> CONCLUDING -recorded-> CLOSING (ok)
 *      install -> (THROTTLED -admitted->) WAIT_KEYGEN    |
 *           -KEY_GEN_RESPONSE-> SIGNING -signed-> RECORDING -recorded-> WAIT_STORE
 *           -STORE_CERT_RESPONSE-----------------------------------------'
 *
 *  install with an external issuer (setting `issuer`, external-ca.md):
 *      WAIT_KEYGEN -KEY_GEN_RESPONSE-> WAIT_CSR -SIGN_CERT_RESPONSE-> CHECKING_CSR -checked->
 *        online:  ASKING_CA -answered: issued-> RECORDING -> WAIT_STORE (as above)
 *                           -answered: pending, due within the phone's wait-> CA_RETRY -timer->
 *                            ASKING_CA
 *                           -pending beyond the wait / refused / unavailable-> ENDING (RETRY_LATER)
 *        offline: ENDING (the request recorded as pending; RETRY_LATER)
 *      a later session, the request's certificate waiting: authenticated -> WAIT_STORE
 *           -STORE_CERT_RESPONSE refused-> RESTARTING -recorded-> a new install (key generation)
 *
 *  A failure whose reason the device record must keep goes to ENDING, which
 *  waits for that record before END_SESSION (so `device show` already
 *  explains what the phone is told). A wrong authentication string then
 *  waits in DELAYING on the session's timer (the per-address delay of
 *  guessing.h) before END_SESSION: the loop is never blocked, and the
 *  phone holds no handshake slot (it gave that back after its handshake).
 *  A device with auth-max-failures wrong strings in a row is locked: its
 *  strings are refused unread until the operator re-arms it. Any other end
 *  goes straight to CLOSING. Every state may reach CLOSING: the peer hangs
 *  up, a send fails, the drain deadline passes.
 *
 * kTransitions below is the one place that says which event each state
 * takes and where it may lead; go() refuses any other move. States that
 * wait for the phone have a timer (kStateTimer); states that wait for the
 * server (a worker, the store) have none: the server bounds its own work. */
#include "handlers/capf/session.h"

#include <openssl/crypto.h>
#include <openssl/mem.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/base/error.h"
#include "core/base/log.h"
#include "core/base/phone.h"
#include "core/base/names.h"
#include "core/ca/requests.h"

/* --- States, events, timers ----------------------------------------------- */

CAPSTAN_DEFINE_NAME_FN(, capf_state_name, capf_state_t, CAPF_STATES, "?")

#define EVENTS(X)                                           \
  X(HANDSHAKE_DONE, "handshake_done")                       \
  X(AUTH_RESPONSE, "AUTH_RESPONSE")                         \
  X(KEY_GEN_RESPONSE, "KEY_GEN_RESPONSE")                   \
  X(STORE_CERT_RESPONSE, "STORE_CERT_RESPONSE")             \
  X(FETCH_CERT_RESPONSE, "FETCH_CERT_RESPONSE")             \
  X(DELETE_CERT_RESPONSE, "DELETE_CERT_RESPONSE")           \
  X(SIGN_CERT_RESPONSE, "SIGN_CERT_RESPONSE")               \
  X(IN_PROGRESS, "REQUEST_IN_PROGRESS")                     \
  X(OTHER_MESSAGE, "other_message") /* any other */         \
  X(ADMITTED, "admitted")           /* throttle */          \
  X(VERIFIED, "verified")           /* worker */            \
  X(SIGNED, "signed")               /* worker */            \
  X(CSR_CHECKED, "csr_checked")     /* worker */            \
  X(CA_ANSWERED, "ca_answered")     /* the online CA */     \
  X(LOADED, "loaded")               /* a device read */     \
  X(RECORDED, "recorded")           /* an awaited commit */ \
  X(TIMEOUT, "timeout")

typedef enum {
#define X(id, name) EV_##id,
  EVENTS(X)
#undef X
      EV_COUNT
} event_t;

/* The events that are messages from the phone. */
static int is_message(event_t ev) {
  return ev >= EV_AUTH_RESPONSE && ev <= EV_OTHER_MESSAGE;
}

typedef struct event_arg {
  const capstan_capf_msg_t *msg; /* message events */
  const uint8_t *raw;            /* message events: the bytes |msg| was parsed from */
  size_t raw_len;
  capf_device_t *device;         /* LOADED, when status is 0 */
  capf_job_t *job;               /* VERIFIED, SIGNED, CSR_CHECKED */
  const capstan_ca_result_t *ca; /* CA_ANSWERED */
  int status;                    /* RECORDED, LOADED */
} event_arg_t;

typedef void (*action_fn)(capf_session_t *s, const event_arg_t *e);

typedef struct transition {
  action_fn action;
  uint32_t to; /* the states |action| may move to, besides CLOSING */
} transition_t;

typedef enum {
  TIMER_NONE,
  TIMER_HANDSHAKE,
  TIMER_STEP,
  TIMER_KEYGEN,
  TIMER_HOLD,
  TIMER_CA /* what is left of the phone's wait for the CA */
} timer_kind_t;

#define TO(st) (1u << CAPF_ST_##st)
_Static_assert(CAPF_ST_COUNT <= 32, "states fit a 32-bit set");

/* Where authentication leads, by the device's scheduled operation. */
#define AUTHENTICATED \
  (TO(THROTTLED) | TO(WAIT_KEYGEN) | TO(WAIT_FETCH) | TO(WAIT_DELETE) | TO(WAIT_STORE) | TO(ENDING))

static void greet(capf_session_t *s, const event_arg_t *e);
static void check_auth(capf_session_t *s, const event_arg_t *e);
static void auth_device_loaded(capf_session_t *s, const event_arg_t *e);
static void cert_auth_verified(capf_session_t *s, const event_arg_t *e);
static void verified_device_loaded(capf_session_t *s, const event_arg_t *e);
static void keygen_admitted(capf_session_t *s, const event_arg_t *e);
static void keygen_in_progress(capf_session_t *s, const event_arg_t *e);
static void sign_phone_key(capf_session_t *s, const event_arg_t *e);
static void check_csr(capf_session_t *s, const event_arg_t *e);
static void no_csr(capf_session_t *s, const event_arg_t *e);
static void csr_timed_out(capf_session_t *s, const event_arg_t *e);
static void csr_checked(capf_session_t *s, const event_arg_t *e);
static void ca_answered(capf_session_t *s, const event_arg_t *e);
static void ca_wait_over(capf_session_t *s, const event_arg_t *e);
static void ask_ca_again(capf_session_t *s, const event_arg_t *e);
static void restart_install(capf_session_t *s, const event_arg_t *e);
static void record_issued(capf_session_t *s, const event_arg_t *e);
static void store_failed(capf_session_t *s);
static void send_store_request(capf_session_t *s, const event_arg_t *e);
static void check_stored(capf_session_t *s, const event_arg_t *e);
static void record_fetched(capf_session_t *s, const event_arg_t *e);
static void check_deleted(capf_session_t *s, const event_arg_t *e);
static void end_succeeded(capf_session_t *s, const event_arg_t *e);
static void end_as_recorded(capf_session_t *s, const event_arg_t *e);
static void end_delayed(capf_session_t *s, const event_arg_t *e);
static void wait_on(capf_session_t *s, const event_arg_t *e);
static void handshake_timed_out(capf_session_t *s, const event_arg_t *e);
static void hold_expired(capf_session_t *s, const event_arg_t *e);
static void phone_timed_out(capf_session_t *s, const event_arg_t *e);
static void load_timed_out(capf_session_t *s, const event_arg_t *e);

/* Every transition: (state, event) -> action, and where it may lead. An
 * event with no entry: a message from the phone is a protocol error (to
 * ENDING when its operation is under way and it was the phone's turn, else
 * CLOSING); anything else is stale (a late timer, a job or record of a
 * session already ending) and ignored. Two events are outside the table
 * because every state takes them the same way: the connection closed, and
 * abort (drain deadline); both lead to CLOSING. */
static const transition_t kTransitions[CAPF_ST_COUNT][EV_COUNT] =
    {
        [CAPF_ST_HANDSHAKE] =
            {
                [EV_HANDSHAKE_DONE] = {greet, TO(WAIT_AUTH)},
                [EV_TIMEOUT] = {handshake_timed_out, 0},
            },
        [CAPF_ST_WAIT_AUTH] =
            {
                [EV_AUTH_RESPONSE] = {check_auth, TO(LOADING) | TO(VERIFYING) | AUTHENTICATED},
                [EV_TIMEOUT] = {phone_timed_out, 0},
            },
        /* The device is read off the loop (a shared database). A database
         * that answers nothing in a step's time (a lock held, overload)
         * sends the phone away with RETRY_LATER; the late answer finds the
         * session closed. */
        [CAPF_ST_LOADING] =
            {
                [EV_LOADED] = {auth_device_loaded, TO(VERIFYING) | AUTHENTICATED},
                [EV_IN_PROGRESS] = {wait_on, 0},
                [EV_TIMEOUT] = {load_timed_out, 0},
            },
        [CAPF_ST_VERIFYING] =
            {
                [EV_VERIFIED] = {cert_auth_verified, TO(RELOADING) | AUTHENTICATED},
                [EV_IN_PROGRESS] = {wait_on, 0},
            },
        [CAPF_ST_RELOADING] =
            {
                [EV_LOADED] = {verified_device_loaded, AUTHENTICATED},
                [EV_IN_PROGRESS] = {wait_on, 0},
                [EV_TIMEOUT] = {load_timed_out, 0},
            },
        [CAPF_ST_THROTTLED] =
            {
                [EV_ADMITTED] = {keygen_admitted, TO(WAIT_KEYGEN)},
                [EV_IN_PROGRESS] = {wait_on, 0},
                [EV_TIMEOUT] = {hold_expired, 0}, /* RETRY_LATER */
            },
        [CAPF_ST_WAIT_KEYGEN] =
            {
                [EV_KEY_GEN_RESPONSE] = {sign_phone_key, TO(SIGNING) | TO(WAIT_CSR) | TO(ENDING)},
                [EV_IN_PROGRESS] = {keygen_in_progress, 0},
                [EV_TIMEOUT] = {phone_timed_out, TO(ENDING)},
            },
        /* Any answer to SIGN_CERT_REQUEST but a request, or none in time:
         * "phone cannot make a certificate request" (capf-protocol.md). */
        [CAPF_ST_WAIT_CSR] =
            {
                [EV_SIGN_CERT_RESPONSE] = {check_csr, TO(CHECKING_CSR) | TO(ENDING)},
                [EV_IN_PROGRESS] = {wait_on, 0},
                [EV_AUTH_RESPONSE] = {no_csr, TO(ENDING)},
                [EV_KEY_GEN_RESPONSE] = {no_csr, TO(ENDING)},
                [EV_STORE_CERT_RESPONSE] = {no_csr, TO(ENDING)},
                [EV_FETCH_CERT_RESPONSE] = {no_csr, TO(ENDING)},
                [EV_DELETE_CERT_RESPONSE] = {no_csr, TO(ENDING)},
                [EV_OTHER_MESSAGE] = {no_csr, TO(ENDING)},
                [EV_TIMEOUT] = {csr_timed_out, TO(ENDING)},
            },
        [CAPF_ST_CHECKING_CSR] =
            {
                [EV_CSR_CHECKED] = {csr_checked, TO(ASKING_CA) | TO(ENDING)},
                [EV_IN_PROGRESS] = {wait_on, 0},
            },
        [CAPF_ST_ASKING_CA] =
            {
                [EV_CA_ANSWERED] = {ca_answered, TO(RECORDING) | TO(CA_RETRY) | TO(ENDING)},
                [EV_IN_PROGRESS] = {wait_on, 0},
                [EV_TIMEOUT] = {ca_wait_over, TO(ENDING)},
            },
        [CAPF_ST_CA_RETRY] =
            {
                [EV_IN_PROGRESS] = {wait_on, 0},
                [EV_TIMEOUT] = {ask_ca_again, TO(ASKING_CA) | TO(ENDING)},
            },
        [CAPF_ST_RESTARTING] =
            {
                [EV_RECORDED] = {restart_install, TO(THROTTLED) | TO(WAIT_KEYGEN) | TO(ENDING)},
                [EV_IN_PROGRESS] = {wait_on, 0},
            },
        [CAPF_ST_SIGNING] =
            {
                [EV_SIGNED] = {record_issued, TO(RECORDING) | TO(ENDING)},
                [EV_IN_PROGRESS] = {wait_on, 0},
            },
        [CAPF_ST_RECORDING] =
            {
                [EV_RECORDED] = {send_store_request, TO(WAIT_STORE)},
                [EV_IN_PROGRESS] = {wait_on, 0},
            },
        [CAPF_ST_WAIT_STORE] =
            {
                [EV_STORE_CERT_RESPONSE] = {check_stored,
                                            TO(CONCLUDING) | TO(RESTARTING) | TO(ENDING)},
                [EV_TIMEOUT] = {phone_timed_out, TO(ENDING)},
            },
        [CAPF_ST_WAIT_FETCH] =
            {
                [EV_FETCH_CERT_RESPONSE] = {record_fetched, TO(CONCLUDING) | TO(ENDING)},
                [EV_TIMEOUT] = {phone_timed_out, TO(ENDING)},
            },
        [CAPF_ST_WAIT_DELETE] =
            {
                [EV_DELETE_CERT_RESPONSE] = {check_deleted, TO(CONCLUDING) | TO(ENDING)},
                [EV_TIMEOUT] = {phone_timed_out, TO(ENDING)},
            },
        [CAPF_ST_CONCLUDING] =
            {
                [EV_RECORDED] = {end_succeeded, 0},
                [EV_IN_PROGRESS] = {wait_on, 0},
            },
        /* The phone is not heard here (capf_session_received drops its bytes):
         * the outcome is being recorded and END_SESSION follows. */
        [CAPF_ST_ENDING] =
            {
                [EV_RECORDED] = {end_as_recorded, TO(DELAYING)},
            },
        /* A wrong authentication string, recorded: END_SESSION when the
         * per-address delay is over. The phone is not heard here either. */
        [CAPF_ST_DELAYING] =
            {
                [EV_TIMEOUT] = {end_delayed, 0},
            },
        [CAPF_ST_CLOSING] = {{0}},
};

/* The timer each state runs while it waits for the phone. */
static const timer_kind_t kStateTimer[CAPF_ST_COUNT] = {
    [CAPF_ST_HANDSHAKE] = TIMER_HANDSHAKE, [CAPF_ST_WAIT_AUTH] = TIMER_STEP,
    [CAPF_ST_LOADING] = TIMER_STEP,        [CAPF_ST_RELOADING] = TIMER_STEP,
    [CAPF_ST_THROTTLED] = TIMER_HOLD,      [CAPF_ST_WAIT_KEYGEN] = TIMER_KEYGEN,
    [CAPF_ST_WAIT_STORE] = TIMER_STEP,     [CAPF_ST_WAIT_FETCH] = TIMER_STEP,
    [CAPF_ST_WAIT_DELETE] = TIMER_STEP,    [CAPF_ST_WAIT_CSR] = TIMER_STEP,
    [CAPF_ST_ASKING_CA] = TIMER_CA,
};

/* What the log says of a message that has no transition in a state. */
static const char *unexpected_message(capf_state_t st) {
  switch (st) {
    case CAPF_ST_WAIT_AUTH:
      return "expected AUTH_RESPONSE";
    case CAPF_ST_WAIT_KEYGEN:
      return "expected KEY_GEN_RESPONSE";
    case CAPF_ST_WAIT_STORE:
      return "expected STORE_CERT_RESPONSE";
    case CAPF_ST_WAIT_FETCH:
      return "expected FETCH_CERT_RESPONSE";
    case CAPF_ST_WAIT_DELETE:
      return "expected DELETE_CERT_RESPONSE";
    default:
      return "message while the server is working";
  }
}

static void arm_state_timer(capf_session_t *s) {
  const capf_settings_t *c = &s->shared->settings;
  unsigned secs = 0;
  switch (kStateTimer[s->state]) {
    case TIMER_NONE:
      break;
    case TIMER_HANDSHAKE:
      secs = c->handshake_timeout_seconds;
      /* A refusal holds a slot of the flood ceiling: it gets less. */
      if (s->refused && secs > CAPF_REFUSED_HANDSHAKE_SECONDS) {
        secs = CAPF_REFUSED_HANDSHAKE_SECONDS;
      }
      break;
    case TIMER_STEP:
      secs = c->step_timeout_seconds;
      break;
    case TIMER_KEYGEN:
      secs = c->keygen_ceiling_seconds;
      break;
    case TIMER_HOLD:
      /* A hold of 0 seconds means "no holding": RETRY_LATER at once. */
      s->hooks->start_timer(s, (uint64_t)c->throttle_hold_seconds * 1000);
      return;
    case TIMER_CA: {
      double left = s->ca_deadline - capstan_now_seconds();
      s->hooks->start_timer(s, left > 0.001 ? (uint64_t)(left * 1000) : 1);
      return;
    }
  }
  if (secs > 0) {
    s->hooks->start_timer(s, (uint64_t)secs * 1000);
  } else {
    s->hooks->stop_timer(s);
  }
}

static void enter_state(capf_session_t *s, capf_state_t st) {
  s->state = st;
  arm_state_timer(s);
}

/* Moves to |st| if the running transition allows it. CLOSING is final: an
 * action that goes on after its session closed moves it nowhere. */
static void close_session(capf_session_t *s, capf_result_t result);

static void go(capf_session_t *s, capf_state_t st) {
  if (s->state == CAPF_ST_CLOSING) return;
  if (!((s->allowed | TO(CLOSING)) & (1u << st))) {
    /* The table and the actions disagree: a bug in this file. A phone's
     * bytes led here, so it must not take the server down (docs/design.md: input
     * never aborts): this session alone ends, counted as a server error. */
    LOG_ERROR("event=capf_bad_transition from=%s to=%s peer=%s note=\"a bug: please report\"",
              capf_state_name(s->state), capf_state_name(st), s->peer_host);
    close_session(s, CAPF_RESULT_SERVER_ERROR);
    return;
  }
  enter_state(s, st);
}

static void protocol_error(capf_session_t *s, const char *what);

static void dispatch(capf_session_t *s, event_t ev, const event_arg_t *arg) {
  const transition_t *t = &kTransitions[s->state][ev];
  uint32_t outer = s->allowed;
  if (t->action != NULL) {
    s->allowed = t->to;
    t->action(s, arg);
  } else if (is_message(ev)) {
    protocol_error(s, unexpected_message(s->state));
  }
  s->allowed = outer;
}

/* --- Outcome -------------------------------------------------------------- */

static int64_t unix_now(void) {
  return (int64_t)time(NULL);
}

static const char *device_or_dash(const capf_session_t *s) {
  return s->device[0] ? s->device : "-";
}

/* Records the session's outcome in metrics, once. */
static void finish(capf_session_t *s, capf_result_t result) {
  if (s->finished) return;
  s->finished = 1;
  s->result = result;
  capf_metrics_t *m = &s->shared->m;
  capstan_metric_inc(m->sessions[s->op_label][result]);
  capstan_metric_observe(m->session_duration, capstan_now_seconds() - s->started_at);
}

static void release_keygen_slot(capf_session_t *s) {
  if (!s->holds_keygen_slot) return;
  s->holds_keygen_slot = 0;
  capstan_throttle_release(&s->shared->throttle);
  capstan_metric_set(s->shared->m.keygen_active, s->shared->throttle.active);
  capstan_metric_set(s->shared->m.keygen_waiting, s->shared->throttle.waiting);
}

/* Drops the session's request to the online CA, if one is out. */
static void cancel_ca_request(capf_session_t *s) {
  if (!s->asking_ca) return;
  s->asking_ca = 0;
  s->hooks->ca_cancel(s);
}

/* Closes the connection after queued messages are written. */
static void close_session(capf_session_t *s, capf_result_t result) {
  cancel_ca_request(s);
  finish(s, result);
  s->state = CAPF_ST_CLOSING;
  s->hooks->stop_timer(s);
  s->hooks->close(s);
}

/* --- Sending -------------------------------------------------------------- */

static int send_built(capf_session_t *s, capstan_capf_builder_t *b) {
  uint8_t *msg = NULL;
  size_t len = 0;
  int rc = capstan_capf_builder_finish(b, &msg, &len);
  if (rc == 0) rc = s->hooks->send(s, msg, len);
  OPENSSL_free(msg);
  if (rc < 0)
    LOG_ERROR("event=capf_send_failed peer=%s error=%s", s->peer_host, capstan_strerror(rc));
  return rc;
}

static int send_simple(capf_session_t *s, int command) {
  capstan_capf_builder_t b;
  capstan_capf_builder_begin(&b, command, s->session_id, 1);
  return send_built(s, &b);
}

static void send_end_session(capf_session_t *s, uint8_t reason) {
  capstan_capf_builder_t b;
  capstan_capf_builder_begin(&b, CAPSTAN_CAPF_CMD_END_SESSION, s->session_id, 1);
  capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_REASON, reason);
  send_built(s, &b);
}

/* RETRY_DELAY as sent (a 16-bit element). */
static unsigned retry_delay(const capf_session_t *s) {
  unsigned delay = s->shared->settings.retry_delay_seconds;
  return delay > 65535 ? 65535 : delay;
}

static void send_retry_later(capf_session_t *s) {
  capstan_capf_builder_t b;
  capstan_capf_builder_begin(&b, CAPSTAN_CAPF_CMD_RETRY_LATER, s->session_id, 1);
  capstan_capf_builder_add_u16(&b, CAPSTAN_CAPF_EL_RETRY_DELAY, (uint16_t)retry_delay(s));
  send_built(s, &b);
}

/* Ends the session with END_SESSION {REASON} and the given outcome. */
static void end_with(capf_session_t *s, uint8_t reason, capf_result_t result) {
  /* END_SESSION and close_notify leave in one write. */
  if (s->state != CAPF_ST_CLOSING) s->hooks->hold_output(s);
  send_end_session(s, reason);
  close_session(s, result);
}

/* --- Records -------------------------------------------------------------- */

/* Queues |r| (NULL: out of memory); with |awaited| the commit comes back
 * as EV_RECORDED. */
static int submit_record(capf_session_t *s, capf_record_t *r, int awaited) {
  if (r == NULL) return CAPSTAN_ENOMEM;
  r->awaited = awaited;
  r->operation = s->operation;
  snprintf(r->peer, sizeof(r->peer), "%s", s->peer_host[0] ? s->peer_host : "-");
  return s->hooks->record(s, r);
}

static capf_record_t *status_record(capf_session_t *s, capf_status_t status, const char *reason,
                                    int count_attempt) {
  capf_record_t *r = capf_record_new(CAPF_RECORD_STATUS, s->device);
  if (r == NULL) return NULL;
  r->status = status;
  if (reason != NULL) {
    /* The record keeps its own copy: a reason may be a CA's words. */
    snprintf(r->reason_text, sizeof(r->reason_text), "%s", reason);
    r->reason = r->reason_text;
  }
  r->count_attempt = count_attempt;
  return r;
}

/* A record nobody waits for: a failed write is logged by the host. */
static void record_status(capf_session_t *s, capf_status_t status, const char *reason,
                          int count_attempt) {
  submit_record(s, status_record(s, status, reason, count_attempt), 0);
}

/* Records the outcome, then tells the phone (ENDING, then end_as_recorded):
 * once a phone has its END_SESSION, `device show` already says why. The
 * result is counted now, so a phone that drops while the record is written
 * stays counted as what happened to it. */
static void record_then_end(capf_session_t *s, capf_status_t status, const char *reason,
                            int count_attempt, uint8_t end_reason, capf_result_t result) {
  finish(s, result);
  s->end_reason = end_reason;
  capf_record_t *r = status_record(s, status, reason, count_attempt);
  go(s, CAPF_ST_ENDING);
  if (submit_record(s, r, 1) < 0) end_with(s, end_reason, result);
}

static void fail_operation(capf_session_t *s, const char *reason, capf_result_t result) {
  LOG_INFO("event=capf_operation_failed device=%s peer=%s reason=\"%s\"", s->device, s->peer_host,
           reason);
  record_then_end(s, CAPF_STATUS_FAILED, reason, 0, CAPSTAN_CAPF_REASON_INVALID_ELEMENT, result);
}

/* How a session can end while its device's operation is under way. */
typedef enum { END_DROPPED, END_TIMED_OUT, END_PROTOCOL } end_cause_t;

#define STEP_REASON(cause, step)                                \
  ((cause) == END_DROPPED     ? "phone disconnected " step      \
   : (cause) == END_TIMED_OUT ? "phone stopped answering " step \
                              : "protocol error from the phone " step)

/* The failure reason a device keeps when its session ends in |st| for
 * |cause|, so it is not left "in progress" forever; NULL when no operation
 * is under way in |st|. In CONCLUDING the phone has given its final answer
 * and its outcome is being recorded: a drop or a stray message there
 * changes nothing about the operation. */
static const char *operation_failure(capf_state_t st, end_cause_t cause) {
  switch (st) {
    case CAPF_ST_THROTTLED:
      return STEP_REASON(cause, "while held by the throttle");
    case CAPF_ST_WAIT_KEYGEN:
      return STEP_REASON(cause, "during key generation");
    case CAPF_ST_SIGNING:
    case CAPF_ST_RECORDING:
    case CAPF_ST_CHECKING_CSR:
    case CAPF_ST_RESTARTING:
      return STEP_REASON(cause, "while the server was working");
    case CAPF_ST_WAIT_CSR:
      return STEP_REASON(cause, "before sending its certificate request");
    case CAPF_ST_ASKING_CA:
    case CAPF_ST_CA_RETRY:
      return STEP_REASON(cause, "while the CA was asked");
    case CAPF_ST_WAIT_STORE:
      return STEP_REASON(cause, "before confirming it stored the certificate");
    case CAPF_ST_WAIT_FETCH:
      return STEP_REASON(cause, "before sending its certificate");
    case CAPF_ST_WAIT_DELETE:
      return STEP_REASON(cause, "before confirming the delete");
    default:
      return NULL;
  }
}

/* States where the phone is to speak and the server has no work in
 * flight: a session ending here may wait for its record. */
static int phones_turn(capf_state_t st) {
  return st == CAPF_ST_WAIT_KEYGEN || st == CAPF_ST_WAIT_STORE || st == CAPF_ST_WAIT_FETCH ||
         st == CAPF_ST_WAIT_DELETE || st == CAPF_ST_WAIT_CSR;
}

/* Input can break the protocol in any state, inside a transition or
 * before one is chosen (a malformed frame, a wrong session id): ENDING is
 * therefore always a way out of a protocol error. */
static void protocol_error(capf_session_t *s, const char *what) {
  uint32_t outer = s->allowed;
  s->allowed |= TO(ENDING);
  LOG_WARN("event=capf_protocol_error device=%s peer=%s state=%s error=\"%s\"", device_or_dash(s),
           s->peer_host, capf_state_name(s->state), what);
  capstan_metric_inc(s->shared->m.protocol_errors);
  const char *why = operation_failure(s->state, END_PROTOCOL);
  if (why != NULL && phones_turn(s->state)) {
    record_then_end(s, CAPF_STATUS_FAILED, why, 0, CAPSTAN_CAPF_REASON_INVALID_ELEMENT,
                    CAPF_RESULT_PROTOCOL_ERROR);
  } else {
    /* Server work is in flight: end now (its completion finds a closing
     * session) and let the record follow. */
    if (why != NULL) record_status(s, CAPF_STATUS_FAILED, why, 0);
    end_with(s, CAPSTAN_CAPF_REASON_INVALID_ELEMENT, CAPF_RESULT_PROTOCOL_ERROR);
  }
  s->allowed = outer;
}

/* --- Handshake and authentication ----------------------------------------- */

/* The handshake is done: the server speaks first. AUTH_REQUEST, or for a
 * connection over a limit RETRY_LATER, and the session ends. */
static void greet(capf_session_t *s, const event_arg_t *e) {
  (void)e;
  capf_metrics_t *m = &s->shared->m;
  capstan_metric_inc(m->handshakes_ok);
  capstan_metric_observe(m->handshake_duration, capstan_now_seconds() - s->handshake_started_at);
  if (s->refused) {
    LOG_DEBUG("event=capf_retry_later peer=%s cause=connection_limit delay=%u", s->peer_host,
              s->shared->settings.retry_delay_seconds);
    s->hooks->hold_output(s); /* RETRY_LATER and close_notify in one write */
    send_retry_later(s);
    close_session(s, CAPF_RESULT_RETRY_LATER);
    return;
  }
  capstan_capf_builder_t b;
  capstan_capf_builder_begin(&b, CAPSTAN_CAPF_CMD_AUTH_REQUEST, s->session_id, 1);
  capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_VERSION, CAPSTAN_CAPF_PROTOCOL_VERSION);
  capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_AUTH_TYPE, CAPSTAN_CAPF_AUTH_NONE);
  if (send_built(s, &b) < 0) {
    close_session(s, CAPF_RESULT_SERVER_ERROR);
    return;
  }
  go(s, CAPF_ST_WAIT_AUTH);
}

static void store_failed(capf_session_t *s);

/* What a device read brought (|rc| as the load_device hook's): 0 with the
 * operation, mode and key taken from |d|, or a negative error after ending
 * the session: END 9 for an unknown device, RETRY_LATER when the store
 * cannot be read. */
static int take_device(capf_session_t *s, int rc, const capf_device_t *d) {
  if (rc == CAPSTAN_ENOENT) {
    LOG_INFO("event=capf_unknown_device device=%s peer=%s", s->device, s->peer_host);
    end_with(s, CAPSTAN_CAPF_REASON_UNKNOWN_DEVICE, CAPF_RESULT_UNKNOWN_DEVICE);
    return rc;
  }
  if (rc < 0) {
    store_failed(s); /* the host has logged it; the phone comes back (R26) */
    return rc;
  }
  s->operation = d->operation;
  s->auth_mode = d->auth_mode;
  s->key_alg = d->key_alg;
  s->key_bits = d->key_bits;
  return 0;
}

/* Reads the session's device into |d|: take_device's answer, or
 * CAPF_LOAD_PENDING when EV_LOADED brings it later. */
static int load_device(capf_session_t *s, capf_device_t *d) {
  int rc = s->hooks->load_device(s, s->device, d);
  return rc == CAPF_LOAD_PENDING ? rc : take_device(s, rc, d);
}

static void auth_failed(capf_session_t *s, const char *reason) {
  int mode = (int)s->auth_mode;
  if (mode >= 1 && mode <= 4) capstan_metric_inc(s->shared->m.auth_failures[mode]);
  LOG_WARN("event=capf_auth_failed device=%s peer=%s mode=%s reason=\"%s\"", s->device,
           s->peer_host, capstan_capf_auth_type_name(mode), reason);
  record_then_end(s, CAPF_STATUS_FAILED, reason, 1, CAPSTAN_CAPF_REASON_INVALID_ELEMENT,
                  CAPF_RESULT_AUTH_FAILED);
}

/* A wrong string, or one refused because the device is locked: recorded
 * (the device's count, its status and the lock reason come from the
 * store), then END_SESSION 7 after |delay_ms|. */
static void string_failed(capf_session_t *s, capf_auth_string_t kind, unsigned long delay_ms) {
  capstan_metric_inc(s->shared->m.auth_failures[CAPSTAN_CAPF_AUTH_STRING]);
  capf_record_t *r = status_record(s, CAPF_STATUS_FAILED, "authentication failed", 1);
  if (r != NULL) {
    r->auth_string = kind;
    r->auth_max_failures = s->shared->settings.auth_max_failures;
  }
  finish(s, CAPF_RESULT_AUTH_FAILED);
  s->end_reason = CAPSTAN_CAPF_REASON_INVALID_ELEMENT;
  s->end_delay_ms = delay_ms;
  go(s, CAPF_ST_ENDING);
  if (submit_record(s, r, 1) < 0) {
    end_with(s, CAPSTAN_CAPF_REASON_INVALID_ELEMENT, CAPF_RESULT_AUTH_FAILED);
  }
}

/* The device has had auth-max-failures wrong strings in a row (0: no
 * limit): its operation takes no string until the operator re-arms it.
 * The string is not even compared, and not delayed: it tells nothing. */
static int string_locked(capf_session_t *s, const capf_device_t *d) {
  unsigned max = s->shared->settings.auth_max_failures;
  if (max == 0 || d->auth_failures < max) return 0;
  capstan_metric_inc(s->shared->m.auth_locked_refused);
  LOG_WARN(
      "event=capf_auth_failed device=%s peer=%s mode=string reason=\"locked\" "
      "wrong_strings=%u max=%u",
      s->device, s->peer_host, d->auth_failures, max);
  string_failed(s, CAPF_AUTH_STRING_LOCKED, 0);
  return 1;
}

/* A wrong (or missing) string: counted against the device, which locks
 * at auth-max-failures, and against the peer's address, whose wrong
 * strings are answered ever later (guessing.h). */
static void wrong_string(capf_session_t *s, const capf_device_t *d) {
  capf_shared_t *sh = s->shared;
  unsigned max = sh->settings.auth_max_failures;
  unsigned n = d->auth_failures + 1;
  unsigned from_address = 0;
  unsigned long delay_ms = capf_guess_wrong(&sh->guesses, s->peer_host, capstan_now_seconds(),
                                            sh->settings.auth_delay_max_seconds, &from_address);
  LOG_WARN(
      "event=capf_auth_failed device=%s peer=%s mode=string reason=\"authentication "
      "failed\" wrong_strings=%u",
      s->device, s->peer_host, n);
  if (max > 0 && n == max) {
    capstan_metric_inc(sh->m.auth_lockouts);
    LOG_WARN(
        "event=capf_auth_locked device=%s peer=%s wrong_strings=%u note=\"no string is "
        "accepted until the operation is re-armed: capstan device set %s --operation ...\"",
        s->device, s->peer_host, n, s->device);
  }
  if (delay_ms > 0) {
    capstan_metric_inc(sh->m.auth_delayed);
    LOG_INFO("event=capf_auth_delayed device=%s peer=%s delay_ms=%lu wrong_strings_from_address=%u",
             s->device, s->peer_host, delay_ms, from_address);
  }
  string_failed(s, CAPF_AUTH_STRING_WRONG, delay_ms);
}

static void send_keygen_request(capf_session_t *s) {
  capstan_capf_builder_t b;
  capstan_capf_builder_begin(&b, CAPSTAN_CAPF_CMD_KEY_GEN_REQUEST, s->session_id, 1);
  if (s->key_alg == CAPSTAN_KEY_EC) {
    uint8_t curve = s->key_bits == 384   ? CAPSTAN_CAPF_CURVE_P384
                    : s->key_bits == 521 ? CAPSTAN_CAPF_CURVE_P521
                                         : CAPSTAN_CAPF_CURVE_P256;
    capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_KEY_TYPE, CAPSTAN_CAPF_KEY_EC);
    capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_EC_CURVE, curve);
  } else {
    capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_KEY_TYPE, CAPSTAN_CAPF_KEY_RSA);
    capstan_capf_builder_add_u16(&b, CAPSTAN_CAPF_EL_KEY_SIZE, (uint16_t)s->key_bits);
  }
  if (send_built(s, &b) < 0) {
    close_session(s, CAPF_RESULT_SERVER_ERROR);
    return;
  }
  s->keygen_started_at = capstan_now_seconds();
  go(s, CAPF_ST_WAIT_KEYGEN);
}

/* The throttle calls this when it grants a held phone its slot. The slot
 * is the session's from now on, whatever state it is in: a session that
 * ended meanwhile gives it back when it closes. */
static void on_keygen_admitted(capstan_throttle_waiter_t *w) {
  capf_session_t *s = (capf_session_t *)((char *)w - offsetof(capf_session_t, waiter));
  s->holds_keygen_slot = 1;
  dispatch(s, EV_ADMITTED, &(event_arg_t){0});
}

static void keygen_admitted(capf_session_t *s, const event_arg_t *e) {
  (void)e;
  capstan_metric_inc(s->shared->m.throttled_admitted);
  capstan_metric_set(s->shared->m.keygen_active, s->shared->throttle.active);
  capstan_metric_set(s->shared->m.keygen_waiting, s->shared->throttle.waiting);
  send_keygen_request(s);
}

static void start_install(capf_session_t *s) {
  capstan_throttle_t *t = &s->shared->throttle;
  s->waiter.on_admitted = on_keygen_admitted;
  if (capstan_throttle_acquire(t, &s->waiter)) {
    s->holds_keygen_slot = 1;
    capstan_metric_set(s->shared->m.keygen_active, t->active);
    send_keygen_request(s);
    return;
  }
  /* Held: a slot or a token frees up, or the hold runs out (RETRY_LATER). */
  LOG_INFO("event=capf_throttled device=%s peer=%s waiting=%u", s->device, s->peer_host,
           t->waiting);
  capstan_metric_set(s->shared->m.keygen_waiting, t->waiting);
  go(s, CAPF_ST_THROTTLED);
}

static void begin_install(capf_session_t *s, capf_device_t *d);

static void start_operation(capf_session_t *s, capf_device_t *d) {
  record_status(s, CAPF_STATUS_IN_PROGRESS, NULL, 1);
  switch (s->operation) {
    case CAPF_OPERATION_INSTALL:
      begin_install(s, d);
      return;
    case CAPF_OPERATION_TROUBLESHOOT:
      /* A failed send closes the connection: the drop is recorded then. */
      send_simple(s, CAPSTAN_CAPF_CMD_FETCH_CERT_REQUEST);
      go(s, CAPF_ST_WAIT_FETCH);
      return;
    case CAPF_OPERATION_DELETE:
      send_simple(s, CAPSTAN_CAPF_CMD_DELETE_CERT_REQUEST);
      go(s, CAPF_ST_WAIT_DELETE);
      return;
    default:
      end_with(s, CAPSTAN_CAPF_REASON_NO_ACTION, CAPF_RESULT_NO_ACTION);
      return;
  }
}

static void wait_for_ca(capf_session_t *s);

/* After authentication: nothing scheduled, deadline passed, a request
 * still with its CA, or go. */
static void authenticated(capf_session_t *s, capf_device_t *d) {
  if (s->operation == CAPF_OPERATION_NONE) {
    end_with(s, CAPSTAN_CAPF_REASON_NO_ACTION, CAPF_RESULT_NO_ACTION);
    return;
  }
  if (d->completes_by > 0 && unix_now() > d->completes_by) {
    LOG_INFO("event=capf_operation_expired device=%s peer=%s", s->device, s->peer_host);
    record_then_end(s, CAPF_STATUS_EXPIRED, "operation deadline passed", 0,
                    CAPSTAN_CAPF_REASON_NO_ACTION, CAPF_RESULT_EXPIRED);
    return;
  }
  s->issuer = d->issuer >= 0 ? (unsigned)d->issuer : s->shared->settings.issuer;
  /* Its earlier request still waits for a CA: a new key now would make
   * that request (perhaps already exported and being signed) stale. With
   * the issuer back at capf the request no longer matters. */
  if (s->operation == CAPF_OPERATION_INSTALL && d->request_pending &&
      s->issuer != CAPSTAN_ISSUER_CAPF && d->handover_der == NULL) {
    wait_for_ca(s);
    return;
  }
  start_operation(s, d);
}

/* Constant-time comparison of the typed string with the record: compare
 * digests so neither content nor length leaks through timing. */
static int auth_string_matches(const capstan_capf_slice_t *typed, const char *expected) {
  uint8_t a[SHA256_DIGEST_LENGTH], b[SHA256_DIGEST_LENGTH];
  SHA256(typed->data, typed->len, a);
  SHA256((const uint8_t *)expected, strlen(expected), b);
  return CRYPTO_memcmp(a, b, sizeof(a)) == 0 && expected[0] != '\0';
}

/* Authentication by existing certificate: the signatures and the chain are
 * checked on a worker (EV_VERIFIED). CAPSTAN_EACCES when the message lacks
 * what that needs. */
static int start_cert_auth(capf_session_t *s, const capstan_capf_msg_t *m) {
  uint8_t type = 0, hash = 0;
  capstan_capf_slice_t der, sig1, sig2, sudi;
  if (capstan_capf_get_certificate(m, &type, &der) < 0 ||
      capstan_capf_get_signed_data(m, &sig1) < 0 ||
      capstan_capf_get_sha2_signed_data(m, &hash, &sig2) < 0) {
    return CAPSTAN_EACCES;
  }
  int has_sudi = capstan_capf_get_sudi_data(m, &sudi) == 0;
  capf_job_t *j = capf_job_new_verify(s->device, s->session_id, type, der, sig1, hash, sig2,
                                      has_sudi ? &sudi : NULL);
  if (j == NULL) return CAPSTAN_ENOMEM;
  go(s, CAPF_ST_VERIFYING);
  return s->hooks->work(s, j);
}

static capf_op_label_t op_label(capf_operation_t op) {
  switch (op) {
    case CAPF_OPERATION_INSTALL:
      return CAPF_OP_INSTALL;
    case CAPF_OPERATION_DELETE:
      return CAPF_OP_DELETE;
    case CAPF_OPERATION_TROUBLESHOOT:
      return CAPF_OP_TROUBLESHOOT;
    default:
      return CAPF_OP_NONE;
  }
}

/* The device is known: check what AUTH_RESPONSE |m| offers against it. */
static void authenticate(capf_session_t *s, capf_device_t *d, const capstan_capf_msg_t *m) {
  s->op_label = op_label(d->operation);
  capstan_capf_slice_t typed = {0};
  int rc;
  switch (d->auth_mode) {
    case CAPSTAN_CAPF_AUTH_STRING:
      if (string_locked(s, d)) break;
      if (capstan_capf_get_auth_password(m, &typed) < 0 ||
          !auth_string_matches(&typed, d->auth_string)) {
        wrong_string(s, d);
        break;
      }
      /* The right string: the device's count of wrong ones starts over
       * (the address's does not: a guesser may know one string). */
      if (d->auth_failures > 0) {
        submit_record(s, capf_record_new(CAPF_RECORD_STRING_OK, s->device), 0);
      }
      authenticated(s, d);
      break;
    case CAPSTAN_CAPF_AUTH_LSC:
    case CAPSTAN_CAPF_AUTH_MIC:
      rc = start_cert_auth(s, m);
      if (rc == CAPSTAN_EACCES) {
        auth_failed(s, "certificate, SIGNED_DATA or SHA2_SIGNED_DATA missing or malformed");
      } else if (rc < 0) {
        close_session(s, CAPF_RESULT_SERVER_ERROR);
      }
      break;
    case CAPSTAN_CAPF_AUTH_NULL_STRING: /* nothing more to check */
      authenticated(s, d);
      break;
    default: /* a record without a usable mode lets nobody in */
      auth_failed(s, "device has no authentication mode");
      break;
  }
}

static void check_auth(capf_session_t *s, const event_arg_t *e) {
  const capstan_capf_msg_t *m = e->msg;
  uint8_t version = 0;
  if (capstan_capf_get_device_name(m, s->device) < 0) {
    s->device[0] = '\0';
    protocol_error(s, "AUTH_RESPONSE without a valid DEVICE_NAME");
    return;
  }
  if (capstan_capf_get_version(m, &version) == 0 && version > CAPSTAN_CAPF_PROTOCOL_VERSION) {
    LOG_WARN("event=capf_version_refused device=%s peer=%s version=%u", s->device, s->peer_host,
             version);
    end_with(s, CAPSTAN_CAPF_REASON_INVALID_ELEMENT, CAPF_RESULT_PROTOCOL_ERROR);
    return;
  }
  capf_device_t d;
  int rc = load_device(s, &d);
  if (rc == CAPF_LOAD_PENDING) {
    /* The message is needed once the device is known (its string, or the
     * certificate and signatures): keep it until EV_LOADED. */
    s->auth_msg = capf_dup_bytes(e->raw, e->raw_len);
    if (s->auth_msg == NULL) {
      close_session(s, CAPF_RESULT_SERVER_ERROR);
      return;
    }
    s->auth_msg_len = e->raw_len;
    go(s, CAPF_ST_LOADING);
    return;
  }
  if (rc < 0) return;
  authenticate(s, &d, m);
  capf_device_cleanup(&d);
}

static void forget_auth_msg(capf_session_t *s) {
  if (s->auth_msg == NULL) return;
  OPENSSL_cleanse(s->auth_msg, s->auth_msg_len); /* it may hold the string */
  free(s->auth_msg);
  s->auth_msg = NULL;
  s->auth_msg_len = 0;
}

static void auth_device_loaded(capf_session_t *s, const event_arg_t *e) {
  if (take_device(s, e->status, e->device) == 0) {
    capstan_capf_msg_t m;
    /* It parsed when it arrived; the copy parses the same. */
    if (capstan_capf_parse(s->auth_msg, s->auth_msg_len, &m) == 0) {
      authenticate(s, e->device, &m);
    } else {
      close_session(s, CAPF_RESULT_SERVER_ERROR);
    }
  }
  forget_auth_msg(s);
}

static void cert_auth_verified(capf_session_t *s, const event_arg_t *e) {
  capf_job_t *j = e->job;
  if (j->status == CAPSTAN_ENOMEM || j->status == CAPSTAN_EIO) {
    close_session(s, CAPF_RESULT_SERVER_ERROR);
    return;
  }
  if (j->status < 0) {
    auth_failed(s, j->why);
    return;
  }
  /* Record the certificate the phone holds (certHash for its config). */
  capf_verify_job_t *v = &j->u.verify;
  capf_record_t *r = capf_record_new(CAPF_RECORD_SEEN_CERT, s->device);
  if (r != NULL) {
    r->der = v->cert_der;
    r->der_len = v->cert_len;
    r->cert_type = v->cert_type;
    r->spki = v->spki;
    r->spki_len = v->spki_len;
    memcpy(r->md5, v->md5, sizeof(r->md5));
    v->cert_der = NULL;
    v->spki = NULL;
    submit_record(s, r, 0);
  }
  /* The device record was read before the worker ran; read it again so a
   * change made meanwhile (operation cancelled) is honoured. */
  capf_device_t d;
  int rc = load_device(s, &d);
  if (rc == CAPF_LOAD_PENDING) {
    go(s, CAPF_ST_RELOADING);
    return;
  }
  if (rc < 0) return;
  authenticated(s, &d);
  capf_device_cleanup(&d);
}

static void verified_device_loaded(capf_session_t *s, const event_arg_t *e) {
  if (take_device(s, e->status, e->device) == 0) authenticated(s, e->device);
}

static void load_timed_out(capf_session_t *s, const event_arg_t *e) {
  (void)e;
  LOG_WARN(
      "event=capf_store_read_slow device=%s peer=%s note=\"the store did not answer the "
      "device read within a step: the phone is told to retry\"",
      s->device, s->peer_host);
  forget_auth_msg(s);
  store_failed(s);
}

/* --- Install -------------------------------------------------------------- */

static void keygen_in_progress(capf_session_t *s, const event_arg_t *e) {
  (void)e;
  LOG_DEBUG("event=capf_keygen_in_progress device=%s", s->device);
}

/* The phone's new key: check it and sign the LSC on a worker (EV_SIGNED),
 * or with an external issuer ask the phone for its certificate request. */
static void sign_phone_key(capf_session_t *s, const event_arg_t *e) {
  capstan_metric_observe(s->shared->m.keygen_duration,
                         capstan_now_seconds() - s->keygen_started_at);
  release_keygen_slot(s);
  capstan_capf_slice_t spki;
  if (capstan_capf_get_public_key(e->msg, &spki) < 0) {
    fail_operation(s, "key generation failed on the phone", CAPF_RESULT_FAILED);
    return;
  }
  if (s->issuer != CAPSTAN_ISSUER_CAPF) {
    free(s->phone_spki);
    s->phone_spki = capf_dup_bytes(spki.data, spki.len);
    s->phone_spki_len = spki.len;
    if (s->phone_spki == NULL || send_simple(s, CAPSTAN_CAPF_CMD_SIGN_CERT_REQUEST) < 0) {
      close_session(s, CAPF_RESULT_SERVER_ERROR);
      return;
    }
    go(s, CAPF_ST_WAIT_CSR);
    return;
  }
  capf_job_t *j = capf_job_new_issue(s->device, spki, s->key_alg, s->key_bits,
                                     s->shared->settings.validity_days);
  if (j == NULL) {
    close_session(s, CAPF_RESULT_SERVER_ERROR);
    return;
  }
  go(s, CAPF_ST_SIGNING);
  if (s->hooks->work(s, j) < 0) close_session(s, CAPF_RESULT_SERVER_ERROR);
}

/* The session holds a new LSC (s->lsc_*): record it before the phone sees
 * it (EV_RECORDED, then STORE_CERT_REQUEST). */
static void record_lsc(capf_session_t *s, int64_t not_after) {
  capstan_metric_inc(s->shared->m.certs_issued);
  capf_record_t *r = capf_record_new(CAPF_RECORD_ISSUED, s->device);
  if (r != NULL) {
    memcpy(r->serial, s->serial, sizeof(r->serial));
    r->der = capf_dup_bytes(s->lsc_der, s->lsc_len);
    r->der_len = s->lsc_len;
    r->not_after = not_after;
    memcpy(r->md5, s->lsc_md5, sizeof(r->md5));
    if (r->der == NULL) {
      capf_record_free(r);
      r = NULL;
    }
  }
  go(s, CAPF_ST_RECORDING);
  if (submit_record(s, r, 1) < 0) {
    end_with(s, CAPSTAN_CAPF_REASON_INVALID_ELEMENT, CAPF_RESULT_SERVER_ERROR);
  }
}

/* The LSC is signed by the CAPF key. */
static void record_issued(capf_session_t *s, const event_arg_t *e) {
  capf_job_t *j = e->job;
  if (j->status == CAPSTAN_ENOMEM) {
    /* The server's fault, and it passes: the phone comes back. */
    store_failed(s);
    return;
  }
  if (j->status < 0) {
    fail_operation(s, j->why ? j->why : "LSC issue failed", CAPF_RESULT_FAILED);
    return;
  }
  capf_issue_job_t *i = &j->u.issue;
  s->lsc_der = i->lsc_der;
  s->lsc_len = i->lsc_len;
  s->lsc_spki = i->lsc_spki;
  s->lsc_spki_len = i->lsc_spki_len;
  memcpy(s->serial, i->serial, sizeof(s->serial));
  memcpy(s->lsc_md5, i->md5, sizeof(s->lsc_md5));
  i->lsc_der = NULL;
  i->lsc_spki = NULL;
  record_lsc(s, i->not_after);
}

static void send_store_cert(capf_session_t *s) {
  capstan_capf_builder_t b;
  capstan_capf_builder_begin(&b, CAPSTAN_CAPF_CMD_STORE_CERT_REQUEST, s->session_id, 1);
  capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_CERTIFICATE_TYPE, CAPSTAN_CAPF_CERT_LSC);
  capstan_capf_builder_add_certificate(&b, CAPSTAN_CAPF_CERT_LSC, s->lsc_der, s->lsc_len);
  if (send_built(s, &b) < 0) {
    close_session(s, CAPF_RESULT_SERVER_ERROR);
    return;
  }
  go(s, CAPF_ST_WAIT_STORE);
}

/* The store could not record a step (a full disk, an I/O error): nothing
 * more happens in this session, and the phone is asked to come back
 * (RETRY_LATER) rather than told it failed: the fault is the server's and
 * passes (issue 13, R26). The host has logged and counted the failure. */
static void store_failed(capf_session_t *s) {
  if (s->state != CAPF_ST_CLOSING) s->hooks->hold_output(s);
  send_retry_later(s);
  close_session(s, CAPF_RESULT_SERVER_ERROR);
}

static void send_store_request(capf_session_t *s, const event_arg_t *e) {
  if (e->status < 0) {
    store_failed(s); /* never hand out a certificate that is not on record */
    return;
  }
  send_store_cert(s);
}

static void drop_lsc(capf_session_t *s) {
  free(s->lsc_der);
  free(s->lsc_spki);
  s->lsc_der = s->lsc_spki = NULL;
  s->lsc_len = s->lsc_spki_len = 0;
}

static void check_stored(capf_session_t *s, const event_arg_t *e) {
  uint8_t reason = 0;
  int stored = capstan_capf_get_reason(e->msg, &reason) == 0 &&
               reason == CAPSTAN_CAPF_REASON_UPDATE_CERTIFICATE;
  if (!stored && s->handover) {
    /* The certificate a CA signed for the phone's earlier request: the
     * phone may have lost that key. Start over in this session with a new
     * key and request; the old one and its certificate become stale. */
    capstan_metric_inc(s->shared->m.handovers_refused);
    LOG_INFO("event=capf_handover_refused device=%s peer=%s reason=%u", s->device, s->peer_host,
             reason);
    s->handover = 0;
    drop_lsc(s);
    go(s, CAPF_ST_RESTARTING);
    if (submit_record(s, capf_record_new(CAPF_RECORD_HANDOVER_REFUSED, s->device), 1) < 0) {
      close_session(s, CAPF_RESULT_SERVER_ERROR);
    }
    return;
  }
  if (!stored) {
    fail_operation(s, "phone did not store the certificate", CAPF_RESULT_FAILED);
    return;
  }
  capf_record_t *r = capf_record_new(CAPF_RECORD_INSTALLED, s->device);
  if (r != NULL) {
    r->handover = s->handover;
    memcpy(r->serial, s->serial, sizeof(r->serial));
    r->spki = capf_dup_bytes(s->lsc_spki, s->lsc_spki_len);
    r->spki_len = s->lsc_spki_len;
    memcpy(r->md5, s->lsc_md5, sizeof(r->md5));
  }
  go(s, CAPF_ST_CONCLUDING);
  if (submit_record(s, r, 1) < 0) close_session(s, CAPF_RESULT_SERVER_ERROR);
}

/* --- External issuers (external-ca.md) ------------------------------------- */

/* The phone's request waits for its CA (offline, or an online CA that has
 * not decided): the phone comes back later. The device says why. */
static void wait_for_ca(capf_session_t *s) {
  LOG_INFO("event=capf_request_waiting device=%s peer=%s issuer=%s", s->device, s->peer_host,
           capstan_issuer_name(s->issuer));
  s->hooks->hold_output(s); /* RETRY_LATER and close_notify in one write */
  send_retry_later(s);
  close_session(s, CAPF_RESULT_RETRY_LATER);
}

/* The operation failed for a reason the phone cannot help (its CA): it is
 * recorded, and the phone is told to come back (RETRY_LATER) instead of
 * END_SESSION. */
static void fail_then_retry(capf_session_t *s, const char *reason) {
  LOG_INFO("event=capf_operation_failed device=%s peer=%s reason=\"%s\"", s->device, s->peer_host,
           reason);
  s->end_retry = 1;
  record_then_end(s, CAPF_STATUS_FAILED, reason, 0, CAPSTAN_CAPF_REASON_INVALID_ELEMENT,
                  CAPF_RESULT_FAILED);
}

/* The checked request is kept for its CA (CertRequest, pending): by the
 * operator (offline) or the server's poller (an online CA's "pending").
 * Once it is on record the phone hears RETRY_LATER. */
static void park_request(capf_session_t *s, const char *reason, int64_t next_poll_at) {
  capf_record_t *r = capf_record_new(CAPF_RECORD_CSR_PENDING, s->device);
  if (r != NULL) {
    r->der = capf_dup_bytes(s->csr_der, s->csr_len);
    r->der_len = s->csr_len;
    r->spki = capf_dup_bytes(s->phone_spki, s->phone_spki_len);
    r->spki_len = s->phone_spki_len;
    r->issuer = s->issuer;
    snprintf(r->ca_request_id, sizeof(r->ca_request_id), "%s", s->ca_request_id);
    r->next_poll_at = next_poll_at;
    snprintf(r->reason_text, sizeof(r->reason_text), "%s", reason);
    r->reason = r->reason_text;
    if (r->der == NULL || r->spki == NULL) {
      capf_record_free(r);
      r = NULL;
    }
  }
  LOG_INFO("event=capf_request_pending device=%s peer=%s issuer=%s reason=\"%s\"", s->device,
           s->peer_host, capstan_issuer_name(s->issuer), reason);
  finish(s, CAPF_RESULT_RETRY_LATER);
  s->end_retry = 1;
  go(s, CAPF_ST_ENDING);
  if (submit_record(s, r, 1) < 0) end_with(s, CAPSTAN_CAPF_REASON_INVALID_ELEMENT, s->result);
}

/* An install with an external issuer may hand over the certificate an
 * earlier request brought; an online CA takes RSA keys only. */
static void begin_install(capf_session_t *s, capf_device_t *d) {
  if (d->handover_der != NULL) {
    X509 *cert = NULL;
    EVP_PKEY *key = NULL;
    int ok = capstan_pki_parse_cert(d->handover_der, d->handover_len, &cert) == 0 &&
             (key = X509_get_pubkey(cert)) != NULL &&
             capstan_pki_public_key_to_der(key, &s->lsc_spki, &s->lsc_spki_len) == 0;
    EVP_PKEY_free(key);
    X509_free(cert);
    if (!ok) {
      close_session(s, CAPF_RESULT_SERVER_ERROR);
      return;
    }
    s->lsc_der = d->handover_der;
    s->lsc_len = d->handover_len;
    d->handover_der = NULL;
    memcpy(s->serial, d->handover_key, sizeof(s->serial));
    memcpy(s->lsc_md5, d->handover_md5, sizeof(s->lsc_md5));
    s->handover = 1;
    LOG_INFO("event=capf_handover device=%s peer=%s md5=%s", s->device, s->peer_host, s->lsc_md5);
    send_store_cert(s);
    return;
  }
  if (CAPSTAN_ISSUER_IS_ONLINE(s->issuer) && s->key_alg == CAPSTAN_KEY_EC) {
    fail_operation(s, "EC keys are not supported with an online CA", CAPF_RESULT_FAILED);
    return;
  }
  start_install(s);
}

static void restart_install(capf_session_t *s, const event_arg_t *e) {
  if (e->status < 0) {
    store_failed(s);
    return;
  }
  if (CAPSTAN_ISSUER_IS_ONLINE(s->issuer) && s->key_alg == CAPSTAN_KEY_EC) {
    fail_operation(s, "EC keys are not supported with an online CA", CAPF_RESULT_FAILED);
    return;
  }
  start_install(s);
}

static void check_csr(capf_session_t *s, const event_arg_t *e) {
  uint8_t reason = 0;
  capstan_capf_slice_t csr;
  if (capstan_capf_get_reason(e->msg, &reason) < 0 ||
      reason != CAPSTAN_CAPF_REASON_UPDATE_CERTIFICATE ||
      capstan_capf_get_cert_request(e->msg, &csr) < 0) {
    no_csr(s, e);
    return;
  }
  capf_job_t *j = capf_job_new_check_csr(s->device, csr, s->phone_spki, s->phone_spki_len,
                                         s->key_alg, s->key_bits);
  if (j == NULL) {
    close_session(s, CAPF_RESULT_SERVER_ERROR);
    return;
  }
  go(s, CAPF_ST_CHECKING_CSR);
  if (s->hooks->work(s, j) < 0) close_session(s, CAPF_RESULT_SERVER_ERROR);
}

static void no_csr(capf_session_t *s, const event_arg_t *e) {
  (void)e;
  capstan_metric_inc(s->shared->m.csr_none);
  fail_operation(s, "phone cannot make a certificate request", CAPF_RESULT_FAILED);
}

/* No answer to SIGN_CERT_REQUEST before the step timer: counted with the
 * other sessions a timer ended, then failed like any missing request. */
static void csr_timed_out(capf_session_t *s, const event_arg_t *e) {
  capstan_metric_inc(s->shared->m.timeouts_step);
  no_csr(s, e);
}

static void ask_ca(capf_session_t *s) {
  if (s->hooks->ca_submit(s, s->csr_der, s->csr_len, s->phone_spki, s->phone_spki_len,
                          s->ca_request_id) < 0) {
    fail_then_retry(s, "CA unavailable: no CA is configured (capstan ca set)");
    return;
  }
  s->asking_ca = 1;
  go(s, CAPF_ST_ASKING_CA);
}

static void csr_checked(capf_session_t *s, const event_arg_t *e) {
  capf_job_t *j = e->job;
  if (j->status == CAPSTAN_ENOMEM || j->status == CAPSTAN_EIO) {
    close_session(s, CAPF_RESULT_SERVER_ERROR);
    return;
  }
  if (j->status < 0) {
    capstan_metric_inc(s->shared->m.csr_rejected);
    fail_operation(s, j->why ? j->why : "certificate request refused", CAPF_RESULT_FAILED);
    return;
  }
  capstan_metric_inc(s->shared->m.csr_ok);
  free(s->csr_der);
  s->csr_der = j->u.csr.csr_der;
  s->csr_len = j->u.csr.csr_len;
  j->u.csr.csr_der = NULL;
  if (s->issuer == CAPSTAN_ISSUER_OFFLINE) {
    park_request(s, "waiting for the offline CA: capstan csr export", 0);
    return;
  }
  s->ca_deadline = capstan_now_seconds() + (double)s->shared->settings.ca_phone_wait_seconds;
  ask_ca(s);
}

static void ca_answered(capf_session_t *s, const event_arg_t *e) {
  const capstan_ca_result_t *r = e->ca;
  s->asking_ca = 0;
  switch (r->outcome) {
    case CAPSTAN_CA_ISSUED: {
      int64_t not_after = 0;
      X509 *cert = NULL;
      s->lsc_der = capf_dup_bytes(r->cert_der, r->cert_len);
      s->lsc_len = r->cert_len;
      s->lsc_spki = capf_dup_bytes(s->phone_spki, s->phone_spki_len);
      s->lsc_spki_len = s->phone_spki_len;
      if (s->lsc_der == NULL || s->lsc_spki == NULL ||
          capstan_pki_parse_cert(r->cert_der, r->cert_len, &cert) < 0 ||
          capstan_pki_cert_validity(cert, NULL, &not_after) < 0) {
        X509_free(cert);
        close_session(s, CAPF_RESULT_SERVER_ERROR);
        return;
      }
      X509_free(cert);
      capstan_csr_cert_key(r->cert_der, r->cert_len, s->serial);
      capstan_pki_md5hash(r->cert_der, r->cert_len, s->lsc_md5);
      record_lsc(s, not_after);
      return;
    }
    case CAPSTAN_CA_PENDING:
      snprintf(s->ca_request_id, sizeof(s->ca_request_id), "%s", r->request_id);
      /* retry_at is wall-clock; the phone's wait runs on the monotonic
       * clock of the timers. */
      double in = (double)r->retry_at - (double)unix_now();
      if (capstan_now_seconds() + in < s->ca_deadline) {
        /* Asked again in this session while the phone's wait allows. */
        go(s, CAPF_ST_CA_RETRY);
        s->hooks->start_timer(s, in > 0 ? (uint64_t)(in * 1000) : 0);
        return;
      }
      park_request(s, r->reason[0] ? r->reason : "waiting for the CA", r->retry_at);
      return;
    default:
      fail_then_retry(s, r->reason[0] ? r->reason : "CA unavailable");
      return;
  }
}

/* The phone has waited as long as it may: the CA keeps the request and
 * the server's poller asks again; the phone gets the certificate in its
 * next session. */
static void ca_wait_over(capf_session_t *s, const event_arg_t *e) {
  (void)e;
  cancel_ca_request(s);
  park_request(s, "the CA had not answered within the phone's wait", unix_now());
}

static void ask_ca_again(capf_session_t *s, const event_arg_t *e) {
  (void)e;
  ask_ca(s);
}

/* --- Troubleshoot and delete ---------------------------------------------- */

static void record_fetched(capf_session_t *s, const event_arg_t *e) {
  const capstan_capf_msg_t *m = e->msg;
  uint8_t reason = 0, type = 0;
  capstan_capf_slice_t der;
  capf_record_t *r = capf_record_new(CAPF_RECORD_FETCHED, s->device);
  if (r == NULL) {
    close_session(s, CAPF_RESULT_SERVER_ERROR);
    return;
  }
  if (capstan_capf_get_reason(m, &reason) == 0 &&
      reason == CAPSTAN_CAPF_REASON_UPDATE_CERTIFICATE) {
    /* REASON=1 says a certificate follows: a missing or malformed one is a
     * bad element, not "the phone has none". */
    if (capstan_capf_get_certificate(m, &type, &der) < 0) {
      capf_record_free(r);
      protocol_error(s, "FETCH_CERT_RESPONSE certificate missing or malformed");
      return;
    }
    X509 *cert = NULL;
    EVP_PKEY *key = NULL;
    if (capstan_pki_parse_cert(der.data, der.len, &cert) < 0 ||
        (key = X509_get_pubkey(cert)) == NULL ||
        capstan_pki_public_key_to_der(key, &r->spki, &r->spki_len) < 0) {
      EVP_PKEY_free(key);
      X509_free(cert);
      capf_record_free(r);
      protocol_error(s, "FETCH_CERT_RESPONSE certificate malformed");
      return;
    }
    EVP_PKEY_free(key);
    X509_free(cert);
    r->der = capf_dup_bytes(der.data, der.len);
    r->der_len = der.len;
    r->cert_type = type;
    capstan_pki_md5hash(der.data, der.len, r->md5);
    r->reason = NULL;
  } else {
    r->reason = "phone reported no certificate";
  }
  go(s, CAPF_ST_CONCLUDING);
  if (submit_record(s, r, 1) < 0) close_session(s, CAPF_RESULT_SERVER_ERROR);
}

static void check_deleted(capf_session_t *s, const event_arg_t *e) {
  uint8_t reason = 0;
  if (capstan_capf_get_reason(e->msg, &reason) < 0 ||
      reason != CAPSTAN_CAPF_REASON_UPDATE_CERTIFICATE) {
    fail_operation(s, "phone did not delete its certificate", CAPF_RESULT_FAILED);
    return;
  }
  go(s, CAPF_ST_CONCLUDING);
  if (submit_record(s, capf_record_new(CAPF_RECORD_DELETED, s->device), 1) < 0) {
    close_session(s, CAPF_RESULT_SERVER_ERROR);
  }
}

/* --- Endings -------------------------------------------------------------- */

static void end_succeeded(capf_session_t *s, const event_arg_t *e) {
  if (e->status < 0) {
    store_failed(s); /* its outcome is not on record: the operation runs again */
    return;
  }
  uint8_t reason = s->operation == CAPF_OPERATION_TROUBLESHOOT
                       ? CAPSTAN_CAPF_REASON_NO_ACTION
                       : CAPSTAN_CAPF_REASON_UPDATE_CERTIFICATE;
  LOG_INFO("event=capf_operation_succeeded device=%s peer=%s operation=%s", s->device, s->peer_host,
           capf_op_label_name(s->op_label));
  end_with(s, reason, CAPF_RESULT_OK);
}

static void end_as_recorded(capf_session_t *s, const event_arg_t *e) {
  (void)e; /* a failed write is logged by the host; the phone's answer stands */
  if (s->end_delay_ms > 0 && !s->shared->draining) {
    go(s, CAPF_ST_DELAYING);
    s->hooks->start_timer(s, s->end_delay_ms);
    return;
  }
  if (s->end_retry) {
    s->hooks->hold_output(s);
    send_retry_later(s);
    close_session(s, s->result);
    return;
  }
  end_with(s, s->end_reason, s->result);
}

static void end_delayed(capf_session_t *s, const event_arg_t *e) {
  (void)e;
  end_with(s, s->end_reason, s->result);
}

/* The phone may say REQUEST_IN_PROGRESS while the server works. */
static void wait_on(capf_session_t *s, const event_arg_t *e) {
  (void)s;
  (void)e;
}

/* --- Timers --------------------------------------------------------------- */

static void handshake_timed_out(capf_session_t *s, const event_arg_t *e) {
  (void)e;
  capstan_metric_inc(s->shared->m.handshakes_timeout);
  capstan_metric_inc(s->shared->m.timeouts_handshake);
  close_session(s, CAPF_RESULT_TIMEOUT);
}

/* The hold ran out: RETRY_LATER, and the device shows when the phone is
 * due back (not "in progress" with no session behind it). */
static void hold_expired(capf_session_t *s, const event_arg_t *e) {
  (void)e;
  capf_shared_t *sh = s->shared;
  capstan_throttle_cancel(&sh->throttle, &s->waiter);
  capstan_metric_set(sh->m.keygen_waiting, sh->throttle.waiting);
  capstan_metric_inc(sh->m.throttled_retry_later);
  LOG_INFO("event=capf_retry_later device=%s peer=%s retry_delay=%u", s->device, s->peer_host,
           sh->settings.retry_delay_seconds);
  capf_record_t *r = status_record(s, CAPF_STATUS_THROTTLED, NULL, 0);
  if (r != NULL) r->retry_after = r->now + (int64_t)retry_delay(s);
  submit_record(s, r, 0);
  send_retry_later(s);
  close_session(s, CAPF_RESULT_RETRY_LATER);
}

static void phone_timed_out(capf_session_t *s, const event_arg_t *e) {
  (void)e;
  capf_metrics_t *m = &s->shared->m;
  capstan_metric_inc(s->state == CAPF_ST_WAIT_KEYGEN ? m->timeouts_keygen : m->timeouts_step);
  const char *why = operation_failure(s->state, END_TIMED_OUT);
  if (why != NULL) {
    record_then_end(s, CAPF_STATUS_FAILED, why, 0, CAPSTAN_CAPF_REASON_INVALID_ELEMENT,
                    CAPF_RESULT_TIMEOUT);
    return;
  }
  end_with(s, CAPSTAN_CAPF_REASON_INVALID_ELEMENT, CAPF_RESULT_TIMEOUT);
}

/* --- Events from the host ------------------------------------------------- */

void capf_session_init(capf_session_t *s, const capf_session_hooks_t *hooks, capf_shared_t *shared,
                       const char *peer_host) {
  *s = (capf_session_t){
      .hooks = hooks,
      .shared = shared,
      .state = CAPF_ST_HANDSHAKE,
      .started_at = capstan_now_seconds(),
      .op_label = CAPF_OP_UNKNOWN,
  };
  size_t n = strlen(peer_host);
  if (n >= sizeof(s->peer_host)) n = sizeof(s->peer_host) - 1;
  memcpy(s->peer_host, peer_host, n);
  do {
    RAND_bytes((uint8_t *)&s->session_id, sizeof(s->session_id));
  } while (s->session_id == 0);
}

void capf_session_refuse(capf_session_t *s) {
  s->refused = 1;
}

void capf_session_cleanup(capf_session_t *s) {
  forget_auth_msg(s);
  free(s->rx);
  free(s->lsc_der);
  free(s->lsc_spki);
  free(s->phone_spki);
  free(s->csr_der);
  s->rx = s->lsc_der = s->lsc_spki = s->phone_spki = s->csr_der = NULL;
}

void capf_session_start(capf_session_t *s) {
  /* It may have waited for a handshake slot since it was accepted. */
  s->handshake_started_at = capstan_now_seconds();
  enter_state(s, CAPF_ST_HANDSHAKE);
}

void capf_session_handshake_done(capf_session_t *s) {
  dispatch(s, EV_HANDSHAKE_DONE, &(event_arg_t){0});
}

static event_t message_event(int command) {
  switch (command) {
    case CAPSTAN_CAPF_CMD_AUTH_RESPONSE:
      return EV_AUTH_RESPONSE;
    case CAPSTAN_CAPF_CMD_KEY_GEN_RESPONSE:
      return EV_KEY_GEN_RESPONSE;
    case CAPSTAN_CAPF_CMD_STORE_CERT_RESPONSE:
      return EV_STORE_CERT_RESPONSE;
    case CAPSTAN_CAPF_CMD_FETCH_CERT_RESPONSE:
      return EV_FETCH_CERT_RESPONSE;
    case CAPSTAN_CAPF_CMD_DELETE_CERT_RESPONSE:
      return EV_DELETE_CERT_RESPONSE;
    case CAPSTAN_CAPF_CMD_SIGN_CERT_RESPONSE:
      return EV_SIGN_CERT_RESPONSE;
    case CAPSTAN_CAPF_CMD_REQUEST_IN_PROGRESS:
      return EV_IN_PROGRESS;
    default:
      return EV_OTHER_MESSAGE;
  }
}

static void on_message(capf_session_t *s, const uint8_t *msg, size_t len) {
  capstan_capf_msg_t m;
  if (capstan_capf_parse(msg, len, &m) < 0) {
    protocol_error(s, "malformed message");
    return;
  }
  if (m.session_id != s->session_id) {
    protocol_error(s, "wrong session id");
    return;
  }
  /* A known element that is malformed is a protocol error wherever it
   * appears, whether or not this message or the device's mode needs it. */
  int bad_tag = 0;
  if (capstan_capf_validate(&m, &bad_tag) < 0) {
    char what[96];
    snprintf(what, sizeof(what), "%s with a malformed %s element",
             capstan_capf_command_name(m.command), capstan_capf_element_name(bad_tag));
    protocol_error(s, what);
    return;
  }
  if (capstan_log_enabled(CAPSTAN_LOG_DEBUG)) {
    char desc[256];
    capstan_capf_msg_describe(&m, desc, sizeof(desc));
    LOG_DEBUG("event=capf_message device=%s state=%s msg=\"%s\"", s->device,
              capf_state_name(s->state), desc);
  }
  dispatch(s, message_event(m.command), &(event_arg_t){.msg = &m, .raw = msg, .raw_len = len});
}

/* In ENDING the outcome is being recorded and END_SESSION follows: nothing
 * the phone says now changes it, not even the rest of the read that ended
 * its operation (a second message pipelined behind it must not answer the
 * phone before the record commits). */
static int hears_phone(const capf_session_t *s) {
  return s->state != CAPF_ST_ENDING && s->state != CAPF_ST_DELAYING && s->state != CAPF_ST_CLOSING;
}

/* Frames the decrypted stream into messages. Complete messages are handled
 * straight from the read buffer; only a partial tail is copied. */
void capf_session_received(capf_session_t *s, const uint8_t *data, size_t len) {
  if (!hears_phone(s)) return;
  const uint8_t *buf = data;
  size_t avail = len;
  if (s->rx != NULL) {
    if (s->rx_len + len > CAPF_MAX_PHONE_MESSAGE) {
      protocol_error(s, "message too long");
      return;
    }
    uint8_t *p = realloc(s->rx, s->rx_len + len);
    if (p == NULL) {
      close_session(s, CAPF_RESULT_SERVER_ERROR);
      return;
    }
    memcpy(p + s->rx_len, data, len);
    s->rx = p;
    s->rx_len += len;
    buf = s->rx;
    avail = s->rx_len;
  }
  size_t off = 0;
  while (off < avail && hears_phone(s)) {
    size_t msg_len = 0;
    int rc = capstan_capf_frame_max(buf + off, avail - off, CAPF_MAX_PHONE_MESSAGE, &msg_len);
    if (rc == CAPSTAN_CAPF_NEED_MORE) break;
    if (rc < 0) {
      protocol_error(s, rc == CAPSTAN_ERANGE ? "message too long" : "wrong protocol id");
      break;
    }
    on_message(s, buf + off, msg_len);
    off += msg_len;
  }
  size_t left = hears_phone(s) ? avail - off : 0;
  if (left == 0) {
    free(s->rx);
    s->rx = NULL;
    s->rx_len = 0;
  } else if (buf == s->rx) {
    memmove(s->rx, s->rx + off, left);
    s->rx_len = left;
  } else {
    s->rx = capf_dup_bytes(buf + off, left);
    s->rx_len = s->rx ? left : 0;
    if (s->rx == NULL) close_session(s, CAPF_RESULT_SERVER_ERROR);
  }
}

void capf_session_timed_out(capf_session_t *s) {
  if (s->state != CAPF_ST_DELAYING) /* the delay is logged when it starts */
    LOG_INFO("event=capf_timeout device=%s peer=%s state=%s", device_or_dash(s), s->peer_host,
             capf_state_name(s->state));
  dispatch(s, EV_TIMEOUT, &(event_arg_t){0});
}

void capf_session_recorded(capf_session_t *s, const capf_record_t *r, int status) {
  if (!r->awaited) return; /* written on the side; nothing waits for it */
  dispatch(s, EV_RECORDED, &(event_arg_t){.status = status});
}

void capf_session_worked(capf_session_t *s, capf_job_t *j) {
  event_t ev = j->kind == CAPF_JOB_VERIFY      ? EV_VERIFIED
               : j->kind == CAPF_JOB_CHECK_CSR ? EV_CSR_CHECKED
                                               : EV_SIGNED;
  dispatch(s, ev, &(event_arg_t){.job = j});
}

void capf_session_device_loaded(capf_session_t *s, int status, capf_device_t *d) {
  dispatch(s, EV_LOADED, &(event_arg_t){.status = status, .device = d});
}

void capf_session_ca_answered(capf_session_t *s, const capstan_ca_result_t *r) {
  if (!s->asking_ca) return; /* cancelled meanwhile */
  s->asking_ca = 0;
  dispatch(s, EV_CA_ANSWERED, &(event_arg_t){.ca = r});
}

void capf_session_closed(capf_session_t *s, capstan_tls_close_reason_t why) {
  capf_shared_t *sh = s->shared;
  if (!s->finished) {
    capf_result_t r = CAPF_RESULT_DISCONNECTED;
    if (why == CAPSTAN_TLS_CLOSE_HANDSHAKE_FAILED) {
      r = CAPF_RESULT_TLS_FAILED;
      capstan_metric_inc(sh->m.handshakes_failed);
    } else if (why == CAPSTAN_TLS_CLOSE_TLS_ERROR) {
      r = CAPF_RESULT_PROTOCOL_ERROR;
    }
    LOG_INFO("event=capf_session_dropped device=%s peer=%s state=%s reason=%s", device_or_dash(s),
             s->peer_host, capf_state_name(s->state), capstan_tls_close_reason_name(why));
    /* A phone that goes away in the middle of its operation leaves the
     * device failed with the step it stopped at. */
    const char *reason = operation_failure(s->state, END_DROPPED);
    if (reason != NULL) record_status(s, CAPF_STATUS_FAILED, reason, 0);
    finish(s, r);
  }
  s->state = CAPF_ST_CLOSING;
  cancel_ca_request(s);
  capstan_throttle_cancel(&sh->throttle, &s->waiter);
  release_keygen_slot(s);
  capstan_metric_set(sh->m.keygen_waiting, sh->throttle.waiting);
}

void capf_session_draining(capf_session_t *s) {
  if (s->state == CAPF_ST_DELAYING) dispatch(s, EV_TIMEOUT, &(event_arg_t){0});
}

void capf_session_abort(capf_session_t *s, capf_result_t result) {
  /* Cut off at the drain deadline in the middle of its operation: the
   * device says so (the writer commits it before the server exits). */
  if (result == CAPF_RESULT_SHUTDOWN && !s->finished &&
      operation_failure(s->state, END_DROPPED) != NULL) {
    record_status(s, CAPF_STATUS_FAILED, CAPSTAN_REASON_INTERRUPTED, 0);
  }
  close_session(s, result);
}
