/* The simulated phone: a CAPF client library for the load generator
 * (capstan-bench), the command-line phone (capstan-phone) and tests.
 *
 * Each phone is one CAPF session over real TLS (core/tls.h, BoringSSL) on a
 * libuv loop; one loop runs thousands of phones. A phone speaks the protocol
 * of shared/spec/capf-protocol.md the way real phones do: it answers
 * AUTH_REQUEST with its name and credentials, KEY_GEN_REQUEST with a public
 * key (after an optional simulated key-generation delay, announced with
 * REQUEST_IN_PROGRESS), STORE_CERT_REQUEST by storing the certificate when it
 * matches its key, FETCH_CERT_REQUEST with its LSC, DELETE_CERT_REQUEST by
 * deleting it, and stops at END_SESSION or RETRY_LATER.
 *
 * The phone is also a strict checker of the server: every message it receives
 * must frame and parse, carry the session id of the first message (non-zero),
 * be a server command expected in the current state, and carry only tags the
 * server may send (capstan_capf_server_may_send). Anything else ends the
 * session with CAPSTAN_PHONE_ERR_PROTOCOL and a detail string.
 *
 * Every message the phone sends goes out in one SSL_write (one TLS record).
 * Threads: all calls for phones on one loop happen on that loop's thread,
 * except capstan_phone_run_one, which runs its own loop. */
#ifndef CAPSTAN_BENCH_PHONE_H
#define CAPSTAN_BENCH_PHONE_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <openssl/base.h>
#include <uv.h>

#include "core/pki.h"

/* ---- Key pool ------------------------------------------------------------- */

/* Pre-generated key pairs, so that a benchmark does not spend its time in RSA
 * key generation: phones take keys from the pool (several phones may share a
 * key; the server does not care). With a cache directory, keys are kept as
 * PKCS#8 DER files named "<rsa|ec><bits>-<n>.der" and reused across runs.
 * Not thread-safe: use from one thread. */
typedef struct capstan_phone_keypool capstan_phone_keypool_t;

/* |cache_dir| may be NULL (no cache); it is created if missing. Each (type,
 * size) holds up to |per_kind| keys (at least 1). Returns NULL on allocation
 * failure. */
capstan_phone_keypool_t *capstan_phone_keypool_new(const char *cache_dir, unsigned per_kind);
void capstan_phone_keypool_free(capstan_phone_keypool_t *pool);

/* Makes sure |n| keys (at most per_kind) of CAPSTAN_PKI_KEY_RSA/EC |bits| are
 * in the pool, loading from the cache or generating (slow for RSA; blocks).
 * Returns 0 or a negative error. */
int capstan_phone_keypool_prewarm(capstan_phone_keypool_t *pool, int key_alg, unsigned bits,
                                  unsigned n);

/* Returns a key of that type and size in |*out| (a new reference the caller
 * frees with EVP_PKEY_free): round robin over the pool, generating (and
 * caching) one when the pool holds fewer than per_kind. Blocks while it
 * generates. Returns 0, CAPSTAN_EINVAL for an unsupported size, or another
 * negative error. */
int capstan_phone_keypool_get(capstan_phone_keypool_t *pool, int key_alg, unsigned bits,
                              EVP_PKEY **out);

/* Parses "rsa2048", "rsa1024", "ec256", "ec384", "ec521" (also "p256" etc.).
 * Returns 0 or CAPSTAN_EINVAL. */
int capstan_phone_parse_key_spec(const char *spec, int *key_alg, unsigned *bits);

/* ---- Helpers ------------------------------------------------------------- */

/* A client SSL_CTX: TLS 1.2 and 1.3, no SNI. With |ca_pem_path|, the server's
 * certificate must chain to one of the PEM certificates in that file (the
 * CAPF certificate); no host name check (the CAPF CN is not a host name).
 * Without it, the server certificate is not verified. NULL on failure, with
 * a message in |err| (|err_size| bytes). */
SSL_CTX *capstan_phone_ssl_ctx_new(const char *ca_pem_path, char *err, size_t err_size);

/* Parses "HOST:PORT", "[V6]:PORT" (numeric addresses, or "localhost").
 * Returns 0 or CAPSTAN_EINVAL. */
int capstan_phone_parse_addr(const char *hostport, struct sockaddr_storage *out);

/* ---- Configuration and result ---------------------------------------------- */

#define CAPSTAN_PHONE_AUTH_MODES(X)                                      \
  X(STRING, "string")      /* AUTH_PASSWORD = auth_string */             \
  X(NULL_STRING, "null")   /* AUTH_PASSWORD = a single NUL */            \
  X(NULL_ABSENT, "absent") /* no AUTH_PASSWORD element at all */         \
  X(LSC, "lsc")            /* existing certificate, precedence to LSC */ \
  X(MIC, "mic")            /* existing certificate, precedence to MIC */

typedef enum {
#define X(id, name) CAPSTAN_PHONE_AUTH_##id,
  CAPSTAN_PHONE_AUTH_MODES(X)
#undef X
} capstan_phone_auth_t;

const char *capstan_phone_auth_name(capstan_phone_auth_t mode);
/* Returns 0 and the mode for "string", "null", "absent", "lsc", "mic". */
int capstan_phone_parse_auth(const char *name, capstan_phone_auth_t *out);

typedef struct capstan_phone capstan_phone_t;

typedef struct {
  /* Where to connect. */
  struct sockaddr_storage addr;
  /* Local address to bind before connecting (port 0), when has_bind is set:
   * lets a benchmark spread phones over many loopback addresses (127.x.y.z),
   * as real phones come from many addresses. */
  struct sockaddr_storage bind_addr;
  int has_bind;
  /* DEVICE_NAME, e.g. "SEP58971ECC97C1" (copied at start). */
  const char *device_name;
  capstan_phone_auth_t auth;
  const char *auth_string; /* for CAPSTAN_PHONE_AUTH_STRING; copied */

  /* The phone's certificates (borrowed; the phone takes its own references).
   * |lsc| is what FETCH returns and what "lsc" auth sends first; |mic| is
   * sent by "mic" auth first. Either may be empty ({0}). */
  capstan_identity_t lsc;
  capstan_identity_t mic;
  /* Optional second identity: when set, AUTH_RESPONSE carries SUDI_DATA. */
  capstan_identity_t sudi;

  /* Borrowed; must outlive the phone. NULL in capstan_phone_run_one means a
   * private one (no CA check / no cache). */
  SSL_CTX *ssl_ctx;
  capstan_phone_keypool_t *keys;

  /* Simulated key generation time in milliseconds (0: answer at once, without
   * REQUEST_IN_PROGRESS). */
  uint64_t keygen_delay_ms;
  /* Stay in key generation until capstan_phone_release_hold (bench --hold). */
  int hold;
  /* Called (if set) when the phone enters the hold. */
  void (*on_hold)(capstan_phone_t *phone, void *arg);

  /* How long to wait for the server at each step (connect, handshake, each
   * expected message), in milliseconds; 0 means 30000. */
  uint64_t step_timeout_ms;

  /* Misbehaviour knobs for tests of the server (defaults: 0 = normal). */
  uint8_t version;          /* VERSION in AUTH_RESPONSE; 0 means 3 */
  int keygen_fail;          /* KEY_GEN_RESPONSE {REASON=7}, no key */
  int answer_key_alg;       /* with answer_key_bits: answer with this key */
  unsigned answer_key_bits; /* instead of the requested one (0: off) */
  int store_reason;         /* STORE_CERT_RESPONSE reason; 0 means 1 */
  int stall;                /* never answer AUTH_REQUEST */
  int bad_session_id;       /* answer with session id + 1 */
} capstan_phone_config_t;

/* Result kinds: "ok" (an operation ran and END_SESSION came), "end"
 * (END_SESSION right after authentication, no operation), "error". */
#define CAPSTAN_PHONE_RESULTS(X) \
  X(OK, "ok")                    \
  X(END, "end")                  \
  X(ERROR, "error")

typedef enum {
#define X(id, name) CAPSTAN_PHONE_RESULT_##id,
  CAPSTAN_PHONE_RESULTS(X)
#undef X
} capstan_phone_result_kind_t;

#define CAPSTAN_PHONE_ERRORS(X)                                                \
  X(NONE, "none")                                                              \
  X(CONNECT, "connect_failed")   /* TCP connect failed */                      \
  X(TLS, "tls_failed")           /* handshake or record layer failed */        \
  X(PROTOCOL, "protocol_error")  /* the server broke the protocol */           \
  X(CLOSED, "closed")            /* the server closed before END_SESSION */    \
  X(TIMEOUT, "timeout")          /* the server did not answer in time */       \
  X(RETRY_LATER, "retry_later")  /* RETRY_LATER received */                    \
  X(BAD_CERT, "bad_certificate") /* STORE: certificate unusable or not ours */ \
  X(INTERNAL, "internal")        /* the simulator failed (memory, keygen) */

typedef enum {
#define X(id, name) CAPSTAN_PHONE_ERR_##id,
  CAPSTAN_PHONE_ERRORS(X)
#undef X
} capstan_phone_error_t;

#define CAPSTAN_PHONE_OPERATIONS(X) \
  X(NONE, "none")                   \
  X(INSTALL, "install")             \
  X(FETCH, "fetch")                 \
  X(DELETE, "delete")

typedef enum {
#define X(id, name) CAPSTAN_PHONE_OP_##id,
  CAPSTAN_PHONE_OPERATIONS(X)
#undef X
} capstan_phone_operation_t;

const char *capstan_phone_result_name(capstan_phone_result_kind_t kind);
const char *capstan_phone_error_name(capstan_phone_error_t err);
const char *capstan_phone_operation_name(capstan_phone_operation_t op);

typedef struct {
  capstan_phone_result_kind_t kind;
  capstan_phone_error_t error;
  char detail[160]; /* human-readable error detail, "" if none */
  int end_reason;   /* END_SESSION REASON, -1 if none */
  capstan_phone_operation_t operation;
  uint32_t session_id;  /* 0 if no message came */
  int retry_delay;      /* RETRY_LATER delay in seconds, -1 if none */
  int sent_in_progress; /* REQUEST_IN_PROGRESS was sent */
  int key_alg;          /* requested key, -1 if no KEY_GEN_REQUEST */
  unsigned key_bits;
  /* The phone's LSC at the end (after an install: the new one; after a
   * delete: none). Owned by the result. */
  capstan_identity_t lsc;
  char lsc_md5[33]; /* md5hash of the LSC DER, "" if none */
  /* The certificate received in FETCH/STORE (DER, owned), for tests. */
  uint8_t *received_cert;
  size_t received_cert_len;
  /* Milliseconds from start: TCP connected, TLS done, first message, end. */
  double connect_ms, handshake_ms, first_message_ms, total_ms;
  unsigned messages_received;
} capstan_phone_result_t;

/* Frees what the result owns and zeroes it. */
void capstan_phone_result_cleanup(capstan_phone_result_t *res);

/* Writes the result as one JSON object line (no newline) into |buf|:
 * {"result":"ok","reason":1,"operation":"install","error":"none",
 *  "detail":"","cert_md5":"...","session_id":N,"retry_delay":-1,
 *  "total_ms":12.3}. Returns the length (truncated to size-1). */
size_t capstan_phone_result_json(const capstan_phone_result_t *res, char *buf, size_t size);

/* ---- Running phones ------------------------------------------------------ */

/* Called once when the phone's session is over and its handles are closed.
 * |res| belongs to the phone and is freed when the callback returns: move
 * what you keep (e.g. take res->lsc and zero it). */
typedef void (*capstan_phone_done_cb)(capstan_phone_t *phone, void *arg,
                                      capstan_phone_result_t *res);

/* Starts one phone on |loop|. cfg->ssl_ctx and cfg->keys must be set. The
 * config is copied (strings and identity references). Returns 0 and the
 * phone in |*out| (may be NULL), or a negative error (nothing started, |cb|
 * not called). */
int capstan_phone_start(uv_loop_t *loop, const capstan_phone_config_t *cfg,
                        capstan_phone_done_cb cb, void *arg, capstan_phone_t **out);

/* Ends a held key generation: the phone sends its KEY_GEN_RESPONSE and goes
 * on. No effect on a phone that is not holding. */
void capstan_phone_release_hold(capstan_phone_t *phone);

/* Aborts a phone's session (result: error timeout, detail "aborted"). */
void capstan_phone_abort(capstan_phone_t *phone);

/* Runs one phone to completion on a private loop and fills |*out| (caller
 * cleans it up). cfg->ssl_ctx / cfg->keys may be NULL (then private ones:
 * no server verification, keys generated on demand). Returns 0 when the
 * session ran (look at out->kind), or a negative error when it could not
 * start. */
int capstan_phone_run_one(const capstan_phone_config_t *cfg, capstan_phone_result_t *out);

#endif
