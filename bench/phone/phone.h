/* The simulated phone: a CAPF client library for the load generator
 * (capstan-bench), the command-line phone (capstan-phone) and tests.
 *
 * Each phone is one CAPF session over real TLS (core/tls.h, BoringSSL) on a
 * libuv loop; one loop runs thousands of phones. A phone speaks the protocol
 * of docs/spec/capf-protocol.md the way real phones do: it answers
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

#include "core/pki/pki.h"

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

/* Makes sure |n| keys (at most per_kind) of CAPSTAN_KEY_RSA/EC |bits| are
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

/* ---- Certificate requests (SIGN_CERT_REQUEST, extension) ------------------ */

/* How the phone answers SIGN_CERT_REQUEST (docs/spec/capf-protocol.md,
 * "Certificate requests from the phone"): "ok" sends SIGN_CERT_RESPONSE
 * {REASON=1, CERT_REQUEST} with a PKCS#10 request for the key it sent in
 * KEY_GEN_RESPONSE, subject CN=<device name>, signed by that key with
 * SHA-256. The others misbehave, to test the server's checks. */
#define CAPSTAN_PHONE_CSR_MODES(X)                                              \
  X(OK, "ok")                       /* the correct request */                   \
  X(REFUSE, "refuse")               /* REASON=7 alone: the phone cannot */      \
  X(WRONG_KEY, "wrong-key")         /* a request for (signed by) another key */ \
  X(WRONG_CN, "wrong-cn")           /* CN=SEP000000000000 */                    \
  X(BAD_SIGNATURE, "bad-signature") /* a byte of the signature flipped */       \
  X(GARBAGE, "garbage")             /* CERT_REQUEST of random bytes */          \
  X(SILENT, "silent")               /* never answer SIGN_CERT_REQUEST */

typedef enum {
#define X(id, name) CAPSTAN_PHONE_CSR_##id,
  CAPSTAN_PHONE_CSR_MODES(X)
#undef X
} capstan_phone_csr_mode_t;

const char *capstan_phone_csr_mode_name(capstan_phone_csr_mode_t mode);
/* Returns 0 and the mode for "ok", "refuse", "wrong-key", "wrong-cn",
 * "bad-signature", "garbage", "silent"; else CAPSTAN_EINVAL. */
int capstan_phone_parse_csr_mode(const char *name, capstan_phone_csr_mode_t *out);

/* The CERT_REQUEST the phone sends in |mode| for its key |key| (DER,
 * malloc'd in |*der|): OK a PKCS#10 request (version 1, subject CN =
 * |device_name| only, no attributes, SHA-256 signature by |key|);
 * WRONG_KEY the same for a fresh key of the same type and size (blocks
 * while an RSA key is generated); WRONG_CN with CN=SEP000000000000 (or
 * SEPFFFFFFFFFFFF when that is the device); BAD_SIGNATURE the correct
 * request with the last byte of its signature changed (it still parses);
 * GARBAGE 300 random bytes that are not DER. REFUSE and SILENT send no
 * request: CAPSTAN_EINVAL. Returns 0 or a negative error. */
int capstan_phone_make_csr(EVP_PKEY *key, const char *device_name, capstan_phone_csr_mode_t mode,
                           uint8_t **der, size_t *len);

/* The phone's pending key on disk (PKCS#8 DER; see key_file below). Load:
 * 0, CAPSTAN_ENOENT when there is no file, CAPSTAN_EINVAL when it is not a
 * key, CAPSTAN_EIO. Save: written to PATH.tmp (mode 0600) and renamed
 * over PATH; 0 or a negative error. */
int capstan_phone_load_key_file(const char *path, EVP_PKEY **out);
int capstan_phone_save_key_file(const char *path, EVP_PKEY *key);

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
  /* After SIGN_CERT_RESPONSE (or a SIGN_CERT_REQUEST left unanswered), how
   * long to wait for the server's next message while it asks its CA, in
   * milliseconds; 0 means CAPSTAN_PHONE_DEFAULT_CA_WAIT_MS. */
  uint64_t ca_wait_ms;

  /* The key of an earlier certificate request (offline CA: the phone made
   * its request in an earlier session and keeps the key). A
   * STORE_CERT_REQUEST that comes without a KEY_GEN_REQUEST before it in the
   * session (a hand-over) must be for this key. Borrowed (the phone takes a
   * reference). When NULL and |key_file| names an existing file, the phone
   * loads it from there at start. */
  EVP_PKEY *pending_key;
  /* PKCS#8 DER file of the pending key (copied; NULL: none): read at start
   * (above), and written (0600) with every key the phone sends in
   * KEY_GEN_RESPONSE, before it sends it. A file that is not a key makes
   * capstan_phone_start fail with CAPSTAN_EINVAL. */
  const char *key_file;

  /* Misbehaviour knobs for tests of the server (defaults: 0 = normal). */
  uint8_t version;                   /* VERSION in AUTH_RESPONSE; 0 means 3 */
  int keygen_fail;                   /* KEY_GEN_RESPONSE {REASON=7}, no key */
  int answer_key_alg;                /* with answer_key_bits: answer with this key */
  unsigned answer_key_bits;          /* instead of the requested one (0: off) */
  int store_reason;                  /* STORE_CERT_RESPONSE reason; 0 means 1 */
  int stall;                         /* never answer AUTH_REQUEST */
  int bad_session_id;                /* answer with session id + 1 */
  capstan_phone_csr_mode_t csr_mode; /* how to answer SIGN_CERT_REQUEST */
  /* Answer the first STORE_CERT_REQUEST of the session with REASON=7 and
   * keep the old LSC (later ones as usual). */
  int refuse_store;
} capstan_phone_config_t;

#define CAPSTAN_PHONE_DEFAULT_CA_WAIT_MS 180000

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
  /* Certificate requests and hand-overs (extension). */
  int csr_requested;       /* SIGN_CERT_REQUEST received */
  int csr_sent;            /* SIGN_CERT_RESPONSE {REASON=1, CERT_REQUEST} sent */
  int handover;            /* a STORE_CERT_REQUEST came with no KEY_GEN_REQUEST
                            * before it in the session (certificate for the
                            * pending key) */
  unsigned stores_refused; /* STORE_CERT_RESPONSE with a REASON other than 1 */
  int lsc_stored;          /* a certificate was stored as the new LSC */
  int key_file_written;    /* the new key was written to key_file */
  /* The key of a request the phone holds no certificate for at the end (the
   * key it sent in this session, or the pending key it came with), for its
   * next session (config pending_key); owned, NULL if none. */
  EVP_PKEY *pending_key;
  /* Milliseconds from start: TCP connected, TLS done, first message, end. */
  double connect_ms, handshake_ms, first_message_ms, total_ms;
  unsigned messages_received;
} capstan_phone_result_t;

/* Writes the md5hash (32 lower-case hex digits) of |cert|'s DER into |out|,
 * or "" when |cert| is NULL or cannot be encoded. */
void capstan_phone_cert_md5(const X509 *cert, char out[33]);

/* Frees what the result owns and zeroes it. */
void capstan_phone_result_cleanup(capstan_phone_result_t *res);

/* Writes the result as one JSON object line (no newline) into |buf|:
 * {"result":"ok","reason":1,"operation":"install","error":"none",
 *  "detail":"","cert_md5":"...","session_id":N,"retry_delay":-1,
 *  "in_progress":false,"key":"rsa2048","csr_requested":true,"csr_sent":true,
 *  "handover":false,"store_refused":0,"lsc_stored":true,"key_file_written":true,
 *  "pending_key":false,"messages":5,...,"total_ms":12.3} ("key" only after a
 *  KEY_GEN_REQUEST). Returns the length (truncated to size-1). */
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

/* ---- File downloads (HTTP and TFTP clients) --------------------------------- */

/* One file download, as a phone does it at boot: an HTTP/1.1 GET on its own
 * TCP connection ("Connection: close"), or with keep_alive on a connection
 * kept from an earlier download (see |reuse|), or a TFTP read
 * request (RFC 1350, octet mode, with the blksize and tsize options of RFC
 * 2348/2349) on its own UDP socket. Event-driven on a libuv loop like the
 * CAPF session; thousands run concurrently on one loop.
 *
 * HTTP: the status line and Content-Length are required (a response without
 * Content-Length, with Transfer-Encoding, a header block over
 * CAPSTAN_PHONE_HTTP_MAX_HEADER bytes or a malformed line is bad_response);
 * the body is read up to Content-Length, which must not exceed the cap.
 * Each step (connect, every read) must progress within the timeout.
 *
 * TFTP: the request is retransmitted, then every ACK, when no packet comes
 * within the retransmission timeout (doubled at each resend, capped at 8 x);
 * after |tftp_retries| resends without progress the download ends as
 * timeout. The server's transfer port (TID) is learned from its first answer
 * (which must come from the server's IP address); packets from any other
 * address or port get ERROR 5 and are otherwise ignored. A duplicate DATA
 * block is acknowledged again. */

#define CAPSTAN_PHONE_HTTP_MAX_HEADER 8192u        /* response header block */
#define CAPSTAN_PHONE_FETCH_DEFAULT_MAX (1u << 20) /* default body cap */
#define CAPSTAN_PHONE_FETCH_MAX_NAME 255u          /* file name bytes */

#define CAPSTAN_PHONE_TRANSPORTS(X) \
  X(HTTP, "http")                   \
  X(TFTP, "tftp")

typedef enum {
#define X(id, name) CAPSTAN_PHONE_TRANSPORT_##id,
  CAPSTAN_PHONE_TRANSPORTS(X)
#undef X
} capstan_phone_transport_t;

const char *capstan_phone_transport_name(capstan_phone_transport_t t);
/* Returns 0 and the transport for "http" or "tftp", else CAPSTAN_EINVAL. */
int capstan_phone_parse_transport(const char *name, capstan_phone_transport_t *out);

#define CAPSTAN_PHONE_FETCH_ERRORS(X)                                            \
  X(NONE, "none")                                                                \
  X(NOT_FOUND, "not_found")       /* HTTP 404, TFTP error 1 */                   \
  X(SERVER_ERROR, "server_error") /* another HTTP status or TFTP error (code) */ \
  X(CONNECT, "connect_failed")    /* TCP connect or UDP bind/send failed */      \
  X(TIMEOUT, "timeout")           /* no progress in time (after the retries) */  \
  X(CLOSED, "closed")             /* the server closed before the whole body */  \
  X(BAD_RESPONSE, "bad_response") /* malformed status line, header or packet */  \
  X(TOO_LARGE, "too_large")       /* the file is larger than the cap */          \
  X(ABORTED, "aborted")           /* capstan_phone_fetch_abort */                \
  X(INTERNAL, "internal")         /* the simulator failed (memory) */

typedef enum {
#define X(id, name) CAPSTAN_PHONE_FETCH_##id,
  CAPSTAN_PHONE_FETCH_ERRORS(X)
#undef X
} capstan_phone_fetch_error_t;

const char *capstan_phone_fetch_error_name(capstan_phone_fetch_error_t err);

/* An open HTTP connection kept between downloads (keep-alive). */
typedef struct capstan_phone_http_conn capstan_phone_http_conn_t;

/* Closes a kept connection (its memory goes when libuv has closed it; the
 * loop must run). Accepts NULL. */
void capstan_phone_http_conn_close(capstan_phone_http_conn_t *conn);

typedef struct {
  capstan_phone_transport_t transport;
  /* The HTTP or TFTP server. */
  struct sockaddr_storage addr;
  /* Local address to bind (port 0) when has_bind is set. */
  struct sockaddr_storage bind_addr;
  int has_bind;
  /* The file name (copied): 1..CAPSTAN_PHONE_FETCH_MAX_NAME bytes of
   * letters, digits, '.', '-' and '_'. */
  const char *name;
  size_t max_bytes;      /* body cap; 0 means CAPSTAN_PHONE_FETCH_DEFAULT_MAX */
  uint64_t timeout_ms;   /* HTTP per-step timeout; 0 means 30000 */
  uint64_t tftp_rto_ms;  /* TFTP first retransmission timeout; 0 means 1000 */
  unsigned tftp_retries; /* TFTP resends without progress; 0 means 5 */
  uint16_t tftp_blksize; /* TFTP blksize option; 0 means 1428; 512 sends none */
  /* HTTP keep-alive: ask to keep the connection ("Connection: keep-alive")
   * and, after a complete 200 the server did not close, hand it over in the
   * result (res->conn). */
  int keep_alive;
  /* HTTP: a connection from an earlier result to send the request on
   * (taken over by capstan_phone_fetch_start whether it succeeds or not).
   * If it fails before any byte of the response (the server closed it
   * while idle), the download starts again once on a new connection. */
  capstan_phone_http_conn_t *reuse;
} capstan_phone_fetch_config_t;

typedef struct {
  capstan_phone_fetch_error_t error;
  int code;         /* HTTP status or TFTP error code; -1 if none came */
  char detail[128]; /* human-readable, "" if none */
  uint8_t *body;    /* the file (malloc'd, owned by the result), NULL on error */
  size_t len;
  double total_ms;      /* start to last byte (or failure) */
  unsigned retransmits; /* TFTP packets sent again */
  /* keep_alive: the connection, open, for the next download (owned by the
   * result: take it and set it to NULL, or cleanup closes it). */
  capstan_phone_http_conn_t *conn;
  int new_connection; /* HTTP: the download opened a connection */
} capstan_phone_fetch_result_t;

typedef struct capstan_phone_fetch capstan_phone_fetch_t;

/* Called once, when the download is over and its handles are closed. |res|
 * is freed when the callback returns: take res->body (and set it to NULL)
 * to keep it. */
typedef void (*capstan_phone_fetch_cb)(capstan_phone_fetch_t *fetch, void *arg,
                                       capstan_phone_fetch_result_t *res);

/* Starts a download on |loop|. Returns 0 (and the download in |*out|, may be
 * NULL), or CAPSTAN_EINVAL (bad name or address) / CAPSTAN_ENOMEM, in which
 * case nothing started and |cb| is not called. Network failures, even
 * immediate ones, are reported through |cb|. */
int capstan_phone_fetch_start(uv_loop_t *loop, const capstan_phone_fetch_config_t *cfg,
                              capstan_phone_fetch_cb cb, void *arg, capstan_phone_fetch_t **out);

/* Stops a download in progress; |cb| follows with error "aborted". */
void capstan_phone_fetch_abort(capstan_phone_fetch_t *fetch);

/* Frees what the result owns and zeroes it. */
void capstan_phone_fetch_result_cleanup(capstan_phone_fetch_result_t *res);

/* ---- The boot sequence ------------------------------------------------------ */

/* What a phone does at boot (docs/spec/file-formats.md):
 *
 *  1. ITL: fetch ITLSEP<MAC>.tlv (ITLFile.tlv when that is not found), parse
 *     it (capstan_itl_parse), check its records against their certificates,
 *     check FILENAME, and verify its signature: with the trusted TFTP
 *     certificate given in the configuration, or, without one, with the
 *     ITL's own signer (SAST record): trust on first use. The ITL must list
 *     a TFTP certificate (role TFTP or CCM+TFTP).
 *  2. Configuration: fetch SEP<MAC>.cnf.xml.sgn, check FILENAME and VERSION
 *     1.0, verify the signature with the ITL's TFTP certificate, parse the
 *     XML (root <device>) and read certHash, encrConfig, capfAuthMode and
 *     capfList.
 *  3. certHash against the MD5 of the phone's own certificate (LSC, else
 *     MIC). On an empty hash or a mismatch, and when an operation is
 *     scheduled (capfAuthMode not 0; for mode 1, authentication string,
 *     only if the phone has a string: it stands for the person who types
 *     it), the phone runs a CAPF session (unless boot_only) and the boot
 *     ends there: the caller "resets" the phone by booting it again with
 *     the new LSC (result.lsc).
 *  4. Encrypted configuration: when encrConfig is true, the hash matches and
 *     the phone has an RSA LSC, fetch SEP<MAC>.cnf.xml.enc.sgn, check
 *     FILENAME and VERSION 2.0, verify the signature with the TFTP
 *     certificate, decrypt it with the LSC key (capstan_encconf_decrypt) and
 *     check it is a full configuration (<device>, fullConfig not false, the
 *     same certHash).
 *
 * The CAPF session authenticates as capfAuthMode says (1 string, 2 null,
 * 3 LSC, 4 MIC), and connects to |capf_addr| when has_capf_addr is set,
 * else to capfList's processNodeName (a numeric address) and phonePort.
 * Files and the CAPF session bind to phone.bind_addr when phone.has_bind. */

#define CAPSTAN_PHONE_BOOT_STEPS(X) \
  X(ITL, "itl")                     \
  X(CNF, "cnf")                     \
  X(ENC, "enc")                     \
  X(CAPF, "capf")

typedef enum {
#define X(id, name) CAPSTAN_PHONE_STEP_##id,
  CAPSTAN_PHONE_BOOT_STEPS(X)
#undef X
      CAPSTAN_PHONE_STEP_COUNT
} capstan_phone_boot_step_id_t;

const char *capstan_phone_boot_step_name(capstan_phone_boot_step_id_t step);

#define CAPSTAN_PHONE_BOOT_FAILURES(X)                                            \
  X(NONE, "none")                                                                 \
  X(ITL_FETCH, "itl_fetch")         /* neither ITL could be downloaded */         \
  X(ITL_INVALID, "itl_invalid")     /* malformed, bad record, no TFTP cert */     \
  X(ITL_SIGNATURE, "itl_signature") /* signature does not verify */               \
  X(ITL_UNTRUSTED, "itl_untrusted") /* not signed by the trusted certificate */   \
  X(CNF_FETCH, "cnf_fetch")         /* SEP<MAC>.cnf.xml.sgn not downloaded */     \
  X(CNF_SIGNATURE, "cnf_signature") /* bad header or signature */                 \
  X(CNF_INVALID, "cnf_invalid")     /* not a <device> configuration */            \
  X(ENC_FETCH, "enc_fetch")         /* SEP<MAC>.cnf.xml.enc.sgn not downloaded */ \
  X(ENC_SIGNATURE, "enc_signature") /* bad header or signature */                 \
  X(ENC_DECRYPT, "enc_decrypt")     /* cannot decrypt, or padding/hash wrong */   \
  X(ENC_INVALID, "enc_invalid")     /* decrypted, but not a full configuration */ \
  X(CAPF, "capf")                   /* the CAPF session ended in error */         \
  X(INTERNAL, "internal")           /* the simulator failed */

typedef enum {
#define X(id, name) CAPSTAN_PHONE_BOOT_##id,
  CAPSTAN_PHONE_BOOT_FAILURES(X)
#undef X
} capstan_phone_boot_failure_t;

const char *capstan_phone_boot_failure_name(capstan_phone_boot_failure_t f);

#define CAPSTAN_PHONE_CERT_HASH_STATES(X)           \
  X(UNKNOWN, "unknown") /* no configuration read */ \
  X(EMPTY, "empty")     /* <certHash> empty */      \
  X(MATCH, "match")                                 \
  X(MISMATCH, "mismatch")

typedef enum {
#define X(id, name) CAPSTAN_PHONE_HASH_##id,
  CAPSTAN_PHONE_CERT_HASH_STATES(X)
#undef X
} capstan_phone_cert_hash_t;

const char *capstan_phone_cert_hash_name(capstan_phone_cert_hash_t h);

typedef struct {
  /* The phone: device_name (SEP + 12 upper-case hex digits), lsc, mic, the
   * bind address, and for the CAPF session ssl_ctx, keys, auth_string,
   * keygen_delay_ms, step_timeout_ms (also the HTTP timeout). |addr| is
   * not used: see capf_addr. */
  capstan_phone_config_t phone;
  capstan_phone_transport_t transport;
  struct sockaddr_storage file_addr; /* the HTTP or TFTP server */
  struct sockaddr_storage capf_addr;
  int has_capf_addr;
  /* The TFTP certificate the phone already trusts (borrowed; the boot takes
   * a reference), or NULL: trust the first ITL. */
  X509 *trusted_tftp;
  int boot_only; /* files only: never a CAPF session */
  /* HTTP: one connection for all the boot's downloads (keep-alive). */
  int http_keep_alive;
  /* Download tuning (see capstan_phone_fetch_config_t; 0 = defaults). */
  size_t max_file_bytes;
  uint64_t tftp_rto_ms;
  unsigned tftp_retries;
  uint16_t tftp_blksize;
} capstan_phone_boot_config_t;

typedef struct {
  int ran;      /* the step was attempted */
  int ok;       /* it succeeded (downloaded and verified; CAPF: no error) */
  double ms;    /* duration (ITL: both requests when it fell back) */
  size_t bytes; /* bytes downloaded */
  capstan_phone_fetch_error_t fetch_error; /* why the download failed */
  int code; /* HTTP status / TFTP error code of a failed download, -1 */
  unsigned retransmits;
} capstan_phone_boot_step_t;

typedef struct {
  capstan_phone_boot_failure_t failure;
  char detail[160];
  capstan_phone_boot_step_t steps[CAPSTAN_PHONE_STEP_COUNT];
  unsigned files;       /* files downloaded (any status 200 / complete) */
  unsigned connections; /* HTTP connections opened (keep-alive: fewer than files) */
  int itl_fallback;     /* ITLSEP<MAC>.tlv not found: ITLFile.tlv used */
  unsigned itl_records;
  /* The ITL's signer (trust it for the next boot) and TFTP certificate;
   * owned by the result, NULL if not reached. */
  X509 *itl_signer;
  X509 *tftp_cert;
  /* From the signed configuration. */
  capstan_phone_cert_hash_t cert_hash;
  char server_hash[33]; /* <certHash> as read ("" if empty or too long) */
  char own_hash[33];    /* the phone's certificate md5 ("" if none) */
  int capf_auth_mode;   /* -1 if absent */
  int encr_config;      /* <encrConfig>true</encrConfig> */
  int full_config;      /* the configuration held at the end is full */
  int decrypted;        /* the .enc.sgn was decrypted */
  /* The configuration at the end: the decrypted full one, or the payload
   * of the .sgn (malloc'd, owned), NULL if none. */
  uint8_t *config;
  size_t config_len;
  /* CAPF: whether a session ran, its result (its lsc moved to |lsc| below),
   * and whether it installed a new LSC. */
  int capf_ran;
  capstan_phone_result_t capf;
  int enrolled;
  /* The phone's LSC at the end (owned): the one it booted with, or the new
   * one after an install, none after a delete. */
  capstan_identity_t lsc;
  char lsc_md5[33];
  double total_ms;
} capstan_phone_boot_result_t;

/* Frees what the result owns and zeroes it. */
void capstan_phone_boot_result_cleanup(capstan_phone_boot_result_t *res);

/* One JSON object (no newline) into |buf|:
 * {"result":"ok|error","failure":"none","detail":"","itl_fallback":false,
 *  "itl_records":3,"cert_hash":"empty","capf_auth_mode":2,"encr_config":true,
 *  "decrypted":false,"full_config":false,"enrolled":true,"lsc_md5":"...",
 *  "files":2,"connections":2,"total_ms":..,"steps":{"itl":{"ok":true,"ms":..,"bytes":..,
 *  "error":"none","code":-1,"retransmits":0},...},"capf":{<CAPF result>}}
 * Steps that did not run are left out; "capf" only when a session ran.
 * Returns the length (truncated to size-1). */
size_t capstan_phone_boot_result_json(const capstan_phone_boot_result_t *res, char *buf,
                                      size_t size);

typedef struct capstan_phone_boot capstan_phone_boot_t;

/* Called once at the end of the boot (every download and session closed).
 * |res| is freed when the callback returns: move what you keep (lsc,
 * itl_signer, tftp_cert, config; set them to NULL/zero). */
typedef void (*capstan_phone_boot_cb)(capstan_phone_boot_t *boot, void *arg,
                                      capstan_phone_boot_result_t *res);

/* Starts a boot on |loop|. The configuration is copied (strings, identity
 * and certificate references). phone.ssl_ctx and phone.keys are needed
 * unless boot_only. Returns 0 (boot in |*out|, may be NULL), or
 * CAPSTAN_EINVAL / CAPSTAN_ENOMEM with nothing started. */
int capstan_phone_boot_start(uv_loop_t *loop, const capstan_phone_boot_config_t *cfg,
                             capstan_phone_boot_cb cb, void *arg, capstan_phone_boot_t **out);

/* Aborts a boot: the download or session in progress stops, and |cb|
 * follows with the failure of that step (error "aborted" / "timeout"). */
void capstan_phone_boot_abort(capstan_phone_boot_t *boot);

/* Runs one boot to completion on a private loop and fills |*out| (caller
 * cleans it up). cfg->phone.ssl_ctx / keys may be NULL (private ones).
 * Returns 0 when the boot ran (look at out->failure), or a negative error
 * when it could not start. */
int capstan_phone_boot_run_one(const capstan_phone_boot_config_t *cfg,
                               capstan_phone_boot_result_t *out);

#endif
