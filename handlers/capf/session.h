/* The CAPF protocol state machine (capf-protocol.md), one per connection.
 *
 * A session owns no socket, timer, store or thread. What happens to it
 * comes in through the capf_session_* event functions below; what it does
 * goes out through its hooks (capf_session_hooks_t): connection.c binds
 * them to a TLS connection, a libuv timer, the store's group-commit writer
 * and the thread pool, and tests/unit/test_capf_session.c to fakes. Loop
 * thread only; no event function blocks. */
#ifndef CAPSTAN_HANDLERS_CAPF_SESSION_H
#define CAPSTAN_HANDLERS_CAPF_SESSION_H

#include <stddef.h>
#include <stdint.h>

#include "core/ca/ca.h"
#include "core/tls.h"
#include "handlers/capf/internal.h"
#include "handlers/capf/jobs.h"
#include "handlers/capf/records.h"
#include "handlers/capf/wire.h"

/* Largest message a phone may send: a certificate, two signatures and SUDI
 * data fit well inside. Anything longer is refused before it is buffered. */
#define CAPF_MAX_PHONE_MESSAGE 16384

/* The states; session.c draws how they connect. */
#define CAPF_STATES(X)            \
  X(HANDSHAKE, "handshake")       \
  X(WAIT_AUTH, "wait_auth")       \
  X(LOADING, "loading")           \
  X(VERIFYING, "verifying")       \
  X(RELOADING, "reloading")       \
  X(THROTTLED, "throttled")       \
  X(WAIT_KEYGEN, "wait_keygen")   \
  X(WAIT_CSR, "wait_csr")         \
  X(CHECKING_CSR, "checking_csr") \
  X(ASKING_CA, "asking_ca")       \
  X(CA_RETRY, "ca_retry")         \
  X(RESTARTING, "restarting")     \
  X(SIGNING, "signing")           \
  X(WAIT_STORE, "wait_store")     \
  X(WAIT_FETCH, "wait_fetch")     \
  X(WAIT_DELETE, "wait_delete")   \
  X(RECORDING, "recording")       \
  X(CONCLUDING, "concluding")     \
  X(ENDING, "ending")             \
  X(DELAYING, "delaying")         \
  X(CLOSING, "closing")

typedef enum {
#define X(id, name) CAPF_ST_##id,
  CAPF_STATES(X)
#undef X
      CAPF_ST_COUNT
} capf_state_t;

const char *capf_state_name(capf_state_t st);

typedef struct capf_session capf_session_t;

/* What a session asks of its surroundings. Every hook is required. */
typedef struct capf_session_hooks {
  /* Queues one message for the phone. 0, or a negative error (the
   * connection is then closing and capf_session_closed follows). */
  int (*send)(capf_session_t *s, const uint8_t *msg, size_t len);
  /* What is sent from now on leaves together with the close that follows
   * in the same event (END_SESSION and close_notify in one write). */
  void (*hold_output)(capf_session_t *s);
  /* Closes the connection once queued output is written. Never calls back
   * at once: capf_session_closed follows from a later loop callback. */
  void (*close)(capf_session_t *s);
  /* Arms the session's one timer to call capf_session_timed_out after
   * |ms| (0: on the next loop iteration), replacing the armed one. */
  void (*start_timer)(capf_session_t *s, uint64_t ms);
  void (*stop_timer)(capf_session_t *s);
  /* Reads the device: 0 with |out| filled now, CAPSTAN_ENOENT, a store
   * error, or CAPF_LOAD_PENDING: the read waits on the network (a shared
   * database) and capf_session_device_loaded follows on the loop. */
  int (*load_device)(capf_session_t *s, const char *name, capf_device_t *out);
  /* Takes |r| and queues it for a durable commit; capf_session_recorded
   * follows after the commit, then the host frees |r|. A negative return
   * means it could not be queued: |r| is freed and no callback follows. */
  int (*record)(capf_session_t *s, capf_record_t *r);
  /* Takes |j| and runs capf_job_run on a worker; capf_session_worked
   * follows on the loop, then the host frees |j|. A negative return: |j| is
   * freed, no callback follows. */
  int (*work)(capf_session_t *s, capf_job_t *j);
  /* Asks the online CA to sign |csr| for the session's device (whose key
   * is |spki|); |request_id| non-empty asks for a request the CA left
   * pending. capf_session_ca_answered follows on the loop, unless
   * ca_cancel comes first. A negative return: no CA to ask (none
   * configured), no callback follows. */
  int (*ca_submit)(capf_session_t *s, const uint8_t *csr, size_t csr_len, const uint8_t *spki,
                   size_t spki_len, const char *request_id);
  /* Drops the outstanding CA request: no callback follows. */
  void (*ca_cancel)(capf_session_t *s);
} capf_session_hooks_t;

/* load_device's "later": not an error. */
#define CAPF_LOAD_PENDING 1

/* One session. The host embeds it (no allocation of its own) and reads
 * only state, device and result; everything else is the state machine's. */
struct capf_session {
  const capf_session_hooks_t *hooks;
  capf_shared_t *shared;
  capf_state_t state;
  uint32_t allowed;    /* states the running action may move to (a bit each) */
  uint32_t session_id; /* random, never 0 */
  char peer_host[48];  /* for logs */
  capstan_throttle_waiter_t waiter;
  /* Reassembly of a message split across reads; NULL when none pending. */
  uint8_t *rx;
  size_t rx_len;
  /* CAPF_ST_LOADING: the AUTH_RESPONSE read while its device loads. */
  uint8_t *auth_msg;
  size_t auth_msg_len;
  /* The device, once AUTH_RESPONSE named it, and what its record asks. */
  char device[CAPSTAN_CAPF_DEVICE_NAME_MAX + 1];
  capf_operation_t operation;
  capstan_capf_auth_type_t auth_mode;
  int key_alg;
  unsigned key_bits;
  /* The LSC being handed out, between signing and the phone's answer. */
  uint8_t serial[CAPSTAN_SERIAL_LEN];
  uint8_t *lsc_der;
  size_t lsc_len;
  uint8_t *lsc_spki;
  size_t lsc_spki_len;
  char lsc_md5[33];
  /* External issuers: the issuer this session's install uses (the setting
   * when it authenticated), the phone's key and request, and the CA. */
  unsigned issuer;
  uint8_t *phone_spki;
  size_t phone_spki_len;
  uint8_t *csr_der;
  size_t csr_len;
  double ca_deadline; /* when the phone's wait for the CA ends (capstan_now_seconds) */
  char ca_request_id[CAPSTAN_CA_REQUEST_ID_MAX + 1];
  unsigned asking_ca : 1; /* a CA request is outstanding */
  unsigned handover : 1;  /* the LSC in hand came from a certificate request */
  unsigned end_retry : 1; /* CAPF_ST_ENDING: RETRY_LATER instead of END_SESSION */
  double started_at, handshake_started_at, keygen_started_at;
  unsigned holds_keygen_slot : 1;
  unsigned finished : 1;
  unsigned refused : 1; /* over a connection limit: RETRY_LATER after the handshake */
  capf_op_label_t op_label;
  capf_result_t result; /* valid once finished */
  uint8_t end_reason;   /* CAPF_ST_ENDING: the END_SESSION reason once recorded */
  /* A wrong authentication string: how long END_SESSION waits once the
   * failure is recorded (CAPF_ST_DELAYING; the per-address delay). */
  unsigned long end_delay_ms;
};

/* Sets |s| up in CAPF_ST_HANDSHAKE with a fresh session id; nothing is
 * sent and no timer runs until capf_session_start. |peer_host| is copied. */
void capf_session_init(capf_session_t *s, const capf_session_hooks_t *hooks, capf_shared_t *shared,
                       const char *peer_host);

/* The connection is over a connection limit (capf_session_refuse, before
 * capf_session_start): the phone is not cut off but told to come back.
 * Its handshake gets at most CAPF_REFUSED_HANDSHAKE_SECONDS (or the
 * handshake timeout, if shorter); once it is done the phone hears
 * RETRY_LATER {RETRY_DELAY = retry-delay-seconds} and the session ends with
 * result retry_later, before any authentication. */
#define CAPF_REFUSED_HANDSHAKE_SECONDS 5
void capf_session_refuse(capf_session_t *s);

/* Frees what the session holds. Call once capf_session_closed has run and
 * no record or job of the session is outstanding. */
void capf_session_cleanup(capf_session_t *s);

/* --- Events --------------------------------------------------------------- */

/* The connection was admitted and its TLS handshake begins. */
void capf_session_start(capf_session_t *s);
/* The TLS handshake finished: the server speaks first. */
void capf_session_handshake_done(capf_session_t *s);
/* Decrypted bytes from the phone (any split); valid only during the call. */
void capf_session_received(capf_session_t *s, const uint8_t *data, size_t len);
/* The timer armed by start_timer fired. */
void capf_session_timed_out(capf_session_t *s);
/* A record queued by the record hook was committed (|status| 0) or not. */
void capf_session_recorded(capf_session_t *s, const capf_record_t *r, int status);
/* A job queued by the work hook ended; the session may take its outputs
 * (it NULLs what it takes). */
void capf_session_worked(capf_session_t *s, capf_job_t *j);
/* The read load_device left pending ended: |status| as load_device's
 * return, |d| filled when 0 (the host cleans it up after the call). */
void capf_session_device_loaded(capf_session_t *s, int status, capf_device_t *d);
/* The CA answered the request of the ca_submit hook. */
void capf_session_ca_answered(capf_session_t *s, const capstan_ca_result_t *r);
/* The connection is closed (by either side); |why| says how. Records what
 * the phone left unfinished; nothing is sent. */
void capf_session_closed(capf_session_t *s, capstan_tls_close_reason_t why);
/* The server is draining (the host has set shared->draining, so no new
 * delay starts): a phone held only by the wrong-string delay
 * (CAPF_ST_DELAYING) hears its END_SESSION now rather than hold the drain
 * up; any other state goes on. */
void capf_session_draining(capf_session_t *s);
/* Ends the session now with |result| (drain deadline: SHUTDOWN; the host
 * could not start it: SERVER_ERROR). END_SESSION is not sent. */
void capf_session_abort(capf_session_t *s, capf_result_t result);

#endif
