/* The simulated phone: one CAPF session per phone. See phone.h. */
#include "bench/phone/phone.h"
#include "bench/phone/phone_pki.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "core/base/error.h"
#include "core/pki/pki.h"
#include "core/tls.h"
#include "handlers/capf/wire.h"

#define PHONE_DEFAULT_STEP_TIMEOUT_MS 30000
/* A message the phone can receive is bounded by the protocol's own cap. */
#define PHONE_MAX_INPUT CAPSTAN_CAPF_MAX_MESSAGE

/* ---- Names ---------------------------------------------------------------- */

#define NAME_ENTRY(id, name) name,
static const char *const g_auth_names[] = {CAPSTAN_PHONE_AUTH_MODES(NAME_ENTRY)};
static const char *const g_result_names[] = {CAPSTAN_PHONE_RESULTS(NAME_ENTRY)};
static const char *const g_error_names[] = {CAPSTAN_PHONE_ERRORS(NAME_ENTRY)};
static const char *const g_op_names[] = {CAPSTAN_PHONE_OPERATIONS(NAME_ENTRY)};
#undef NAME_ENTRY

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

const char *capstan_phone_auth_name(capstan_phone_auth_t mode) {
  return (unsigned)mode < COUNT(g_auth_names) ? g_auth_names[mode] : "unknown";
}
const char *capstan_phone_result_name(capstan_phone_result_kind_t kind) {
  return (unsigned)kind < COUNT(g_result_names) ? g_result_names[kind] : "unknown";
}
const char *capstan_phone_error_name(capstan_phone_error_t err) {
  return (unsigned)err < COUNT(g_error_names) ? g_error_names[err] : "unknown";
}
const char *capstan_phone_operation_name(capstan_phone_operation_t op) {
  return (unsigned)op < COUNT(g_op_names) ? g_op_names[op] : "unknown";
}

int capstan_phone_parse_auth(const char *name, capstan_phone_auth_t *out) {
  for (unsigned i = 0; i < COUNT(g_auth_names); i++) {
    if (name != NULL && strcasecmp(name, g_auth_names[i]) == 0) {
      *out = (capstan_phone_auth_t)i;
      return 0;
    }
  }
  return CAPSTAN_EINVAL;
}

/* States of one session. After KEY_GEN_RESPONSE the phone is in WAIT_STORE,
 * where SIGN_CERT_REQUEST may come (once); after its SIGN_CERT_RESPONSE it
 * waits for the CA's certificate in WAIT_CA (STORE_CERT_REQUEST, or
 * RETRY_LATER when the request is kept for later), or, when it sent no
 * usable request (a misbehaviour mode), for the server's END_SESSION in
 * WAIT_REJECT. A STORE_CERT_REQUEST right after authentication is a
 * hand-over (a certificate for the pending key); when the phone refuses it,
 * the server may start over with KEY_GEN_REQUEST (WAIT_RESTART). */
#define PHONE_STATES(X) \
  X(CONNECTING)         \
  X(HANDSHAKE)          \
  X(WAIT_AUTH_REQUEST)  \
  X(WAIT_OPERATION)     \
  X(KEYGEN)             \
  X(WAIT_STORE)         \
  X(WAIT_CA)            \
  X(WAIT_REJECT)        \
  X(WAIT_RESTART)       \
  X(WAIT_END)           \
  X(CLOSING)

typedef enum {
#define X(id) ST_##id,
  PHONE_STATES(X)
#undef X
} phone_state_t;

static const char *state_name(phone_state_t s) {
  static const char *const names[] = {
#define X(id) #id,
      PHONE_STATES(X)
#undef X
  };
  return (unsigned)s < COUNT(names) ? names[s] : "UNKNOWN";
}

/* ---- Helpers --------------------------------------------------------------- */

static enum ssl_verify_result_t accept_unverified(SSL *ssl, uint8_t *out_alert) {
  (void)ssl;
  (void)out_alert;
  return ssl_verify_ok;
}

SSL_CTX *capstan_phone_ssl_ctx_new(const char *ca_pem_path, char *err, size_t err_size) {
  int verify = ca_pem_path != NULL && ca_pem_path[0] != '\0';
  /* Without a CA to check against, the server's certificate is accepted
   * unchecked (as SSL_VERIFY_NONE did) and never looked at: keep it as bytes
   * rather than decode it into an X509 every session. */
  SSL_CTX *ctx = SSL_CTX_new(verify ? TLS_method() : TLS_with_buffers_method());
  if (ctx == NULL) {
    snprintf(err, err_size, "SSL_CTX_new failed");
    goto fail;
  }
  if (!SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) ||
      !SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION)) {
    snprintf(err, err_size, "cannot set TLS versions");
    goto fail;
  }
  /* Thousands of one-shot sessions: no client session cache. */
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  if (verify) {
    if (!SSL_CTX_load_verify_locations(ctx, ca_pem_path, NULL)) {
      snprintf(err, err_size, "cannot load CA certificates from %s", ca_pem_path);
      goto fail;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
  } else {
    SSL_CTX_set_custom_verify(ctx, SSL_VERIFY_PEER, accept_unverified);
  }
  return ctx;
fail:
  SSL_CTX_free(ctx);
  ERR_clear_error();
  return NULL;
}

int capstan_phone_parse_addr(const char *hostport, struct sockaddr_storage *out) {
  if (hostport == NULL) return CAPSTAN_EINVAL;
  char host[256];
  const char *port_str;
  if (hostport[0] == '[') {
    const char *end = strchr(hostport, ']');
    if (end == NULL || end[1] != ':' || (size_t)(end - hostport - 1) >= sizeof(host)) {
      return CAPSTAN_EINVAL;
    }
    memcpy(host, hostport + 1, (size_t)(end - hostport - 1));
    host[end - hostport - 1] = '\0';
    port_str = end + 2;
  } else {
    const char *colon = strrchr(hostport, ':');
    if (colon == NULL || (size_t)(colon - hostport) >= sizeof(host)) return CAPSTAN_EINVAL;
    memcpy(host, hostport, (size_t)(colon - hostport));
    host[colon - hostport] = '\0';
    port_str = colon + 1;
  }
  char *end = NULL;
  unsigned long port = strtoul(port_str, &end, 10);
  if (end == port_str || *end != '\0' || port == 0 || port > 65535) return CAPSTAN_EINVAL;
  if (strcmp(host, "localhost") == 0) snprintf(host, sizeof(host), "127.0.0.1");
  memset(out, 0, sizeof(*out));
  if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)out) == 0) return 0;
  if (uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)out) == 0) return 0;
  return CAPSTAN_EINVAL;
}

void capstan_phone_result_cleanup(capstan_phone_result_t *res) {
  if (res == NULL) return;
  capstan_identity_cleanup(&res->lsc);
  EVP_PKEY_free(res->pending_key);
  free(res->received_cert);
  memset(res, 0, sizeof(*res));
}

/* Appends |s| JSON-escaped. */
static size_t json_str(char *buf, size_t size, size_t off, const char *s) {
  for (; *s != '\0'; s++) {
    char esc[8];
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') {
      snprintf(esc, sizeof(esc), "\\%c", c);
    } else if (c < 0x20 || c >= 0x7f) {
      snprintf(esc, sizeof(esc), "\\u%04x", c);
    } else {
      esc[0] = (char)c;
      esc[1] = '\0';
    }
    for (const char *p = esc; *p; p++) {
      if (off + 1 < size) buf[off] = *p;
      off++;
    }
  }
  return off;
}

/* Appends printf output at *off; tracks the would-be length past |size|. */
static void appendf(char *buf, size_t size, size_t *off, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void appendf(char *buf, size_t size, size_t *off, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  size_t room = *off < size ? size - *off : 0;
  char scratch[1];
  int n = vsnprintf(room ? buf + *off : scratch, room ? room : sizeof(scratch), fmt, ap);
  va_end(ap);
  if (n > 0) *off += (size_t)n;
}

size_t capstan_phone_result_json(const capstan_phone_result_t *res, char *buf, size_t size) {
  if (size == 0) return 0;
  size_t off = 0;
  appendf(buf, size, &off,
          "{\"result\":\"%s\",\"reason\":%d,\"operation\":\"%s\",\"error\":\"%s\",\"detail\":\"",
          capstan_phone_result_name(res->kind), res->end_reason,
          capstan_phone_operation_name(res->operation), capstan_phone_error_name(res->error));
  off = json_str(buf, size, off, res->detail);
  appendf(buf, size, &off,
          "\",\"cert_md5\":\"%s\",\"session_id\":%u,\"retry_delay\":%d,\"in_progress\":%s,",
          res->lsc_md5, (unsigned)res->session_id, res->retry_delay,
          res->sent_in_progress ? "true" : "false");
  if (res->key_alg >= 0) {
    appendf(buf, size, &off, "\"key\":\"%s%u\",", res->key_alg == CAPSTAN_KEY_RSA ? "rsa" : "ec",
            res->key_bits);
  }
  appendf(buf, size, &off,
          "\"csr_requested\":%s,\"csr_sent\":%s,\"handover\":%s,\"store_refused\":%u,"
          "\"lsc_stored\":%s,\"key_file_written\":%s,\"pending_key\":%s,",
          res->csr_requested ? "true" : "false", res->csr_sent ? "true" : "false",
          res->handover ? "true" : "false", res->stores_refused, res->lsc_stored ? "true" : "false",
          res->key_file_written ? "true" : "false", res->pending_key ? "true" : "false");
  appendf(buf, size, &off,
          "\"messages\":%u,\"connect_ms\":%.3f,\"handshake_ms\":%.3f,\"total_ms\":%.3f}",
          res->messages_received, res->connect_ms, res->handshake_ms, res->total_ms);
  if (off >= size) {
    buf[size - 1] = '\0';
    return size - 1;
  }
  buf[off] = '\0';
  return off;
}

void capstan_phone_cert_md5(const X509 *cert, char out[33]) {
  out[0] = '\0';
  uint8_t *der = NULL;
  size_t len = 0;
  if (cert != NULL && capstan_pki_cert_to_der(cert, &der, &len) == 0) {
    capstan_pki_md5hash(der, len, out);
    free(der);
  }
}

/* ---- The phone ------------------------------------------------------------ */

struct capstan_phone {
  uv_loop_t *loop;
  capstan_phone_config_t cfg; /* strings point at the copies below */
  char name[CAPSTAN_CAPF_DEVICE_NAME_MAX + 1];
  char *auth_string;
  capstan_identity_t lsc, mic, sudi; /* own references */

  capstan_tls_conn_t *conn;
  uv_timer_t timer;
  uv_connect_t connect_req;
  int handles_open; /* the TLS connection and the timer */
  int closing;
  phone_state_t state;

  uint8_t *in;
  size_t in_len;
  int have_session;
  uint32_t session_id;
  EVP_PKEY *new_key;     /* the key sent in KEY_GEN_RESPONSE */
  EVP_PKEY *pending_key; /* the key of an earlier request (hand-over) */
  EVP_PKEY *stored_key;  /* the key of the certificate stored (borrowed) */
  char *key_file;
  int did_keygen;     /* a KEY_GEN_REQUEST came in this session */
  int sign_answered;  /* SIGN_CERT_REQUEST answered for the current key */
  int store_refusals; /* refuse_store: refusals done */
  int holding;
  int got_end;
  uint64_t t0;

  capstan_phone_result_t res;
  capstan_phone_done_cb cb;
  void *cb_arg;
};

static double ms_since(const capstan_phone_t *p) {
  return (double)(uv_hrtime() - p->t0) / 1e6;
}

static void begin_close(capstan_phone_t *p);

/* Records the first error; later ones are consequences. */
static void note_error(capstan_phone_t *p, capstan_phone_error_t err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void note_error(capstan_phone_t *p, capstan_phone_error_t err, const char *fmt, ...) {
  if (p->res.error != CAPSTAN_PHONE_ERR_NONE) return;
  p->res.error = err;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(p->res.detail, sizeof(p->res.detail), fmt, ap);
  va_end(ap);
}

#define FAIL(p, err, ...)            \
  do {                               \
    note_error(p, err, __VA_ARGS__); \
    begin_close(p);                  \
  } while (0)

static uint64_t step_timeout(const capstan_phone_t *p) {
  return p->cfg.step_timeout_ms ? p->cfg.step_timeout_ms : PHONE_DEFAULT_STEP_TIMEOUT_MS;
}

/* While the server asks its CA, the phone waits the longer of the two. */
static uint64_t ca_wait(const capstan_phone_t *p) {
  uint64_t w = p->cfg.ca_wait_ms ? p->cfg.ca_wait_ms : CAPSTAN_PHONE_DEFAULT_CA_WAIT_MS;
  return w > step_timeout(p) ? w : step_timeout(p);
}

static void on_timer(uv_timer_t *t);

static void arm_step_timer(capstan_phone_t *p) {
  if (p->closing) return;
  uv_timer_start(&p->timer, on_timer, step_timeout(p), 0);
}

static void arm_ca_timer(capstan_phone_t *p) {
  if (p->closing) return;
  uv_timer_start(&p->timer, on_timer, ca_wait(p), 0);
}

static void finish(capstan_phone_t *p) {
  capstan_phone_result_t *r = &p->res;
  r->total_ms = ms_since(p);
  if (r->error != CAPSTAN_PHONE_ERR_NONE) {
    r->kind = CAPSTAN_PHONE_RESULT_ERROR;
  } else if (p->got_end) {
    r->kind =
        r->operation != CAPSTAN_PHONE_OP_NONE ? CAPSTAN_PHONE_RESULT_OK : CAPSTAN_PHONE_RESULT_END;
  } else {
    r->kind = CAPSTAN_PHONE_RESULT_ERROR;
    r->error = CAPSTAN_PHONE_ERR_INTERNAL;
    snprintf(r->detail, sizeof(r->detail), "session ended without an outcome");
  }
  /* The key of a request still without its certificate goes with the
   * result, for the phone's next session (a failed key generation leaves
   * the earlier one). */
  EVP_PKEY *pending = p->new_key != NULL ? p->new_key : p->pending_key;
  if (pending != NULL && pending != p->stored_key) {
    EVP_PKEY_up_ref(pending);
    r->pending_key = pending;
  }
  /* The phone's LSC goes with the result. */
  r->lsc = p->lsc;
  memset(&p->lsc, 0, sizeof(p->lsc));
  capstan_phone_cert_md5(r->lsc.cert, r->lsc_md5);
  if (p->cb != NULL) p->cb(p, p->cb_arg, r);
  capstan_phone_result_cleanup(r);
  capstan_identity_cleanup(&p->lsc);
  capstan_identity_cleanup(&p->mic);
  capstan_identity_cleanup(&p->sudi);
  EVP_PKEY_free(p->new_key);
  EVP_PKEY_free(p->pending_key);
  free(p->key_file);
  free(p->auth_string);
  free(p->in);
  free(p);
}

static void handle_closed(capstan_phone_t *p) {
  if (--p->handles_open == 0) finish(p);
}

static void on_timer_closed(uv_handle_t *h) {
  handle_closed(h->data);
}

static void on_tls_close(capstan_tls_conn_t *conn, void *arg, capstan_tls_close_reason_t reason) {
  capstan_phone_t *p = arg;
  if (!p->got_end && reason != CAPSTAN_TLS_CLOSE_LOCAL) {
    switch (reason) {
      case CAPSTAN_TLS_CLOSE_HANDSHAKE_FAILED:
        note_error(p, CAPSTAN_PHONE_ERR_TLS, "TLS handshake failed");
        break;
      case CAPSTAN_TLS_CLOSE_TLS_ERROR:
        note_error(p, CAPSTAN_PHONE_ERR_TLS, "TLS error in state %s", state_name(p->state));
        break;
      case CAPSTAN_TLS_CLOSE_NO_MEMORY:
        note_error(p, CAPSTAN_PHONE_ERR_INTERNAL, "out of memory");
        break;
      default:
        if (p->state == ST_CONNECTING) {
          note_error(p, CAPSTAN_PHONE_ERR_CONNECT, "connection failed");
        } else if (p->state == ST_HANDSHAKE) {
          note_error(p, CAPSTAN_PHONE_ERR_TLS, "server closed during the TLS handshake (%s)",
                     capstan_tls_close_reason_name(reason));
        } else {
          note_error(p, CAPSTAN_PHONE_ERR_CLOSED, "server closed in state %s (%s)",
                     state_name(p->state), capstan_tls_close_reason_name(reason));
        }
    }
  }
  p->conn = NULL;
  begin_close(p); /* closes the timer */
  handle_closed(p);
}

static void begin_close(capstan_phone_t *p) {
  if (!p->closing) {
    p->closing = 1;
    p->state = ST_CLOSING;
    uv_timer_stop(&p->timer);
    uv_close((uv_handle_t *)&p->timer, on_timer_closed);
  }
  if (p->conn != NULL) capstan_tls_conn_close(p->conn, CAPSTAN_TLS_CLOSE_LOCAL);
}

/* ---- Sending ------------------------------------------------------------- */

/* Finishes |b| and writes the message as one TLS record. */
static int send_msg(capstan_phone_t *p, capstan_capf_builder_t *b) {
  uint8_t *msg = NULL;
  size_t len = 0;
  int rc = capstan_capf_builder_finish(b, &msg, &len);
  if (rc != 0) {
    FAIL(p, CAPSTAN_PHONE_ERR_INTERNAL, "cannot build message: %s", capstan_strerror(rc));
    return rc;
  }
  rc = p->conn != NULL ? capstan_tls_conn_write(p->conn, msg, len) : CAPSTAN_EIO;
  OPENSSL_free(msg);
  if (rc != 0) FAIL(p, CAPSTAN_PHONE_ERR_TLS, "write failed");
  return rc;
}

static uint32_t reply_session(const capstan_phone_t *p) {
  return p->cfg.bad_session_id ? p->session_id + 1 : p->session_id;
}

static int send_simple(capstan_phone_t *p, int command, int reason) {
  capstan_capf_builder_t b;
  capstan_capf_builder_begin(&b, command, reply_session(p), 0);
  if (reason >= 0) capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_REASON, (uint8_t)reason);
  return send_msg(p, &b);
}

/* The certificate the phone authenticates with, by mode. */
static const capstan_identity_t *auth_identity(const capstan_phone_t *p, int *type) {
  const capstan_identity_t *first = &p->lsc, *second = &p->mic;
  int t1 = CAPSTAN_CAPF_CERT_LSC, t2 = CAPSTAN_CAPF_CERT_MIC;
  if (p->cfg.auth == CAPSTAN_PHONE_AUTH_MIC) {
    first = &p->mic;
    second = &p->lsc;
    t1 = CAPSTAN_CAPF_CERT_MIC;
    t2 = CAPSTAN_CAPF_CERT_LSC;
  }
  if (first->cert != NULL && first->key != NULL) {
    *type = t1;
    return first;
  }
  if (second->cert != NULL && second->key != NULL) {
    *type = t2;
    return second;
  }
  return NULL;
}

/* Adds CERTIFICATE, SIGNED_DATA, SHA2_SIGNED_DATA over auth_data =
 * DEVICE_NAME | 0x00 | certificate DER. */
static int add_cert_auth(capstan_phone_t *p, capstan_capf_builder_t *b) {
  int type = 0;
  const capstan_identity_t *id = auth_identity(p, &type);
  if (id == NULL) return CAPSTAN_EINVAL;
  uint8_t *der = NULL, *data = NULL, *sig1 = NULL, *sig2 = NULL;
  size_t der_len = 0, sig1_len = 0, sig2_len = 0;
  size_t name_len = strlen(p->name);
  int rc = capstan_pki_cert_to_der(id->cert, &der, &der_len);
  if (rc != 0) goto out;
  data = malloc(name_len + 1 + der_len);
  if (data == NULL) {
    rc = CAPSTAN_ENOMEM;
    goto out;
  }
  memcpy(data, p->name, name_len);
  data[name_len] = 0;
  memcpy(data + name_len + 1, der, der_len);
  size_t data_len = name_len + 1 + der_len;
  rc = capstan_phone_sign(id->key, CAPSTAN_HASH_SHA1, data, data_len, &sig1, &sig1_len);
  if (rc != 0) goto out;
  rc = capstan_phone_sign(id->key, CAPSTAN_HASH_SHA512, data, data_len, &sig2, &sig2_len);
  if (rc != 0) goto out;
  if ((rc = capstan_capf_builder_add_certificate(b, type, der, der_len)) != 0 ||
      (rc = capstan_capf_builder_add_bytes(b, CAPSTAN_CAPF_EL_SIGNED_DATA, sig1, sig1_len)) != 0 ||
      (rc = capstan_capf_builder_add_sha2_signed_data(b, CAPSTAN_CAPF_HASH_SHA512, sig2,
                                                      sig2_len)) != 0) {
    goto out;
  }
out:
  free(der);
  free(data);
  free(sig1);
  free(sig2);
  return rc;
}

static int add_sudi(capstan_phone_t *p, capstan_capf_builder_t *b) {
  uint8_t *der = NULL, *sudi = NULL;
  size_t der_len = 0, sudi_len = 0;
  int rc = capstan_pki_cert_to_der(p->sudi.cert, &der, &der_len);
  if (rc == 0) {
    rc = capstan_phone_make_sudi(p->sudi.key, der, der_len, p->session_id, &sudi, &sudi_len);
  }
  if (rc == 0) rc = capstan_capf_builder_add_bytes(b, CAPSTAN_CAPF_EL_SUDI_DATA, sudi, sudi_len);
  free(der);
  free(sudi);
  return rc;
}

static void send_auth_response(capstan_phone_t *p) {
  capstan_capf_builder_t b;
  capstan_capf_builder_begin(&b, CAPSTAN_CAPF_CMD_AUTH_RESPONSE, reply_session(p), 0);
  capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_REASON, CAPSTAN_CAPF_REASON_UPDATE_CERTIFICATE);
  capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_VERSION,
                              p->cfg.version ? p->cfg.version : CAPSTAN_CAPF_PROTOCOL_VERSION);
  capstan_capf_builder_add_string(&b, CAPSTAN_CAPF_EL_DEVICE_NAME, p->name, strlen(p->name));
  if (p->cfg.auth == CAPSTAN_PHONE_AUTH_STRING) {
    const char *s = p->auth_string ? p->auth_string : "";
    capstan_capf_builder_add_string(&b, CAPSTAN_CAPF_EL_AUTH_PASSWORD, s, strlen(s));
  } else if (p->cfg.auth != CAPSTAN_PHONE_AUTH_NULL_ABSENT) {
    capstan_capf_builder_add_string(&b, CAPSTAN_CAPF_EL_AUTH_PASSWORD, "", 0);
  }
  int rc = 0;
  if (p->cfg.auth == CAPSTAN_PHONE_AUTH_LSC || p->cfg.auth == CAPSTAN_PHONE_AUTH_MIC) {
    rc = add_cert_auth(p, &b);
  }
  if (rc == 0 && p->sudi.cert != NULL) rc = add_sudi(p, &b);
  if (rc != 0) {
    capstan_capf_builder_cleanup(&b);
    FAIL(p, CAPSTAN_PHONE_ERR_INTERNAL, "cannot make the certificate authentication: %s",
         capstan_strerror(rc));
    return;
  }
  send_msg(p, &b);
}

static void send_keygen_response(capstan_phone_t *p) {
  capstan_capf_builder_t b;
  capstan_capf_builder_begin(&b, CAPSTAN_CAPF_CMD_KEY_GEN_RESPONSE, reply_session(p), 0);
  if (p->cfg.keygen_fail || p->new_key == NULL) {
    capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_REASON, CAPSTAN_CAPF_REASON_INVALID_ELEMENT);
  } else {
    uint8_t *spki = NULL;
    size_t spki_len = 0;
    int rc = capstan_pki_public_key_to_der(p->new_key, &spki, &spki_len);
    if (rc != 0) {
      capstan_capf_builder_cleanup(&b);
      FAIL(p, CAPSTAN_PHONE_ERR_INTERNAL, "cannot encode the public key");
      return;
    }
    capstan_capf_builder_add_bytes(&b, CAPSTAN_CAPF_EL_PUBLIC_KEY, spki, spki_len);
    free(spki);
  }
  if (send_msg(p, &b) != 0) return;
  p->state = p->cfg.keygen_fail ? ST_WAIT_END : ST_WAIT_STORE;
  arm_step_timer(p);
}

/* ---- Receiving ------------------------------------------------------------ */

static void on_keygen_request(capstan_phone_t *p, const capstan_capf_msg_t *m) {
  uint8_t key_type = CAPSTAN_CAPF_KEY_RSA;
  int rc = capstan_capf_get_key_type(m, &key_type);
  if (rc == CAPSTAN_EPROTO) {
    FAIL(p, CAPSTAN_PHONE_ERR_PROTOCOL, "KEY_GEN_REQUEST: bad KEY_TYPE");
    return;
  }
  unsigned bits = 0;
  if (key_type == CAPSTAN_CAPF_KEY_RSA) {
    uint16_t size;
    if (capstan_capf_get_key_size(m, &size) != 0) {
      FAIL(p, CAPSTAN_PHONE_ERR_PROTOCOL, "KEY_GEN_REQUEST: RSA without a valid KEY_SIZE");
      return;
    }
    bits = size;
  } else {
    uint8_t curve;
    if (capstan_capf_get_ec_curve(m, &curve) != 0) {
      FAIL(p, CAPSTAN_PHONE_ERR_PROTOCOL, "KEY_GEN_REQUEST: EC without a valid EC_CURVE");
      return;
    }
    static const unsigned curve_bits[] = {256, 384, 521};
    bits = curve_bits[curve];
  }
  p->res.operation = CAPSTAN_PHONE_OP_INSTALL;
  p->res.key_alg = key_type;
  p->res.key_bits = bits;
  p->did_keygen = 1;
  p->sign_answered = 0;
  EVP_PKEY_free(p->new_key);
  p->new_key = NULL;
  if (!p->cfg.keygen_fail) {
    int alg = key_type, kbits = (int)bits;
    if (p->cfg.answer_key_bits != 0) {
      alg = p->cfg.answer_key_alg;
      kbits = (int)p->cfg.answer_key_bits;
    }
    rc = capstan_phone_keypool_get(p->cfg.keys, alg, (unsigned)kbits, &p->new_key);
    if (rc == CAPSTAN_EINVAL) {
      FAIL(p, CAPSTAN_PHONE_ERR_PROTOCOL, "KEY_GEN_REQUEST: unsupported key %s %u",
           capstan_capf_key_type_name(key_type), bits);
      return;
    }
    if (rc != 0) {
      FAIL(p, CAPSTAN_PHONE_ERR_INTERNAL, "key generation failed: %s", capstan_strerror(rc));
      return;
    }
    /* The phone keeps the key of its request until a certificate for it
     * comes, maybe in a later session: on disk before it is sent. */
    if (p->key_file != NULL) {
      rc = capstan_phone_save_key_file(p->key_file, p->new_key);
      if (rc != 0) {
        FAIL(p, CAPSTAN_PHONE_ERR_INTERNAL, "cannot write the key file %s: %s", p->key_file,
             capstan_strerror(rc));
        return;
      }
      p->res.key_file_written = 1;
    }
  }
  if (p->cfg.hold || p->cfg.keygen_delay_ms > 0) {
    if (send_simple(p, CAPSTAN_CAPF_CMD_REQUEST_IN_PROGRESS, -1) != 0) return;
    p->res.sent_in_progress = 1;
    p->state = ST_KEYGEN;
    uv_timer_stop(&p->timer);
    if (p->cfg.hold) {
      p->holding = 1;
      if (p->cfg.on_hold != NULL) p->cfg.on_hold(p, p->cb_arg);
    } else {
      uv_timer_start(&p->timer, on_timer, p->cfg.keygen_delay_ms, 0);
    }
    return;
  }
  send_keygen_response(p);
}

static int cert_matches_key(X509 *cert, EVP_PKEY *key) {
  if (key == NULL) return 0;
  EVP_PKEY *pub = X509_get_pubkey(cert);
  int ok = pub != NULL && EVP_PKEY_cmp(pub, key) == 1;
  EVP_PKEY_free(pub);
  return ok;
}

/* STORE_CERT_REQUEST: after KEY_GEN_RESPONSE (and maybe a certificate
 * request) for the key sent then; right after authentication (a hand-over)
 * for the pending key of an earlier request. */
static void on_store_request(capstan_phone_t *p, const capstan_capf_msg_t *m) {
  uint8_t type = 0;
  capstan_capf_slice_t der;
  uint8_t cert_type;
  int handover = !p->did_keygen;
  if (handover) {
    p->res.handover = 1;
    p->res.operation = CAPSTAN_PHONE_OP_INSTALL;
  }
  int rc = capstan_capf_get_certificate_type(m, &cert_type);
  if (rc == 0 && cert_type != CAPSTAN_CAPF_CERT_LSC) {
    FAIL(p, CAPSTAN_PHONE_ERR_PROTOCOL, "STORE_CERT_REQUEST: CERTIFICATE_TYPE %u", cert_type);
    return;
  }
  if (rc == CAPSTAN_EPROTO) {
    FAIL(p, CAPSTAN_PHONE_ERR_PROTOCOL, "STORE_CERT_REQUEST: bad CERTIFICATE_TYPE");
    return;
  }
  if (capstan_capf_get_certificate(m, &type, &der) != 0) {
    FAIL(p, CAPSTAN_PHONE_ERR_PROTOCOL, "STORE_CERT_REQUEST: missing or malformed CERTIFICATE");
    return;
  }
  free(p->res.received_cert);
  p->res.received_cert = malloc(der.len);
  if (p->res.received_cert == NULL) {
    FAIL(p, CAPSTAN_PHONE_ERR_INTERNAL, "out of memory");
    return;
  }
  memcpy(p->res.received_cert, der.data, der.len);
  p->res.received_cert_len = der.len;

  EVP_PKEY *key = handover ? p->pending_key : p->new_key;
  int reason = p->cfg.store_reason ? p->cfg.store_reason : CAPSTAN_CAPF_REASON_UPDATE_CERTIFICATE;
  X509 *cert = NULL;
  if (type != CAPSTAN_CAPF_CERT_LSC) {
    note_error(p, CAPSTAN_PHONE_ERR_BAD_CERT, "STORE_CERT_REQUEST: certificate prefix type %u",
               type);
    reason = CAPSTAN_CAPF_REASON_INVALID_ELEMENT;
  } else if (capstan_pki_parse_cert(der.data, der.len, &cert) != 0) {
    note_error(p, CAPSTAN_PHONE_ERR_BAD_CERT, "STORE_CERT_REQUEST: certificate does not parse");
    reason = CAPSTAN_CAPF_REASON_INVALID_ELEMENT;
  } else if (handover && key == NULL) {
    note_error(p, CAPSTAN_PHONE_ERR_BAD_CERT,
               "STORE_CERT_REQUEST without KEY_GEN_REQUEST, and the phone has no pending key");
    reason = CAPSTAN_CAPF_REASON_INVALID_ELEMENT;
  } else if (!cert_matches_key(cert, key)) {
    note_error(p, CAPSTAN_PHONE_ERR_BAD_CERT, "STORE_CERT_REQUEST: certificate is not for %s",
               handover ? "the phone's pending key" : "the key the phone sent");
    reason = CAPSTAN_CAPF_REASON_INVALID_ELEMENT;
  } else if (p->cfg.refuse_store && p->store_refusals == 0) {
    p->store_refusals++;
    reason = CAPSTAN_CAPF_REASON_INVALID_ELEMENT;
  }
  ERR_clear_error();
  if (reason == CAPSTAN_CAPF_REASON_UPDATE_CERTIFICATE) {
    capstan_identity_cleanup(&p->lsc);
    p->lsc.cert = cert;
    p->lsc.key = key;
    EVP_PKEY_up_ref(key);
    p->stored_key = key;
    p->res.lsc_stored = 1;
    cert = NULL;
  } else {
    p->res.stores_refused++;
  }
  X509_free(cert);
  if (send_simple(p, CAPSTAN_CAPF_CMD_STORE_CERT_RESPONSE, reason) != 0) return;
  /* A refused hand-over: the server may start over with a new request. */
  p->state =
      handover && reason != CAPSTAN_CAPF_REASON_UPDATE_CERTIFICATE ? ST_WAIT_RESTART : ST_WAIT_END;
  arm_step_timer(p);
}

/* SIGN_CERT_REQUEST (no element), once after KEY_GEN_RESPONSE: the phone
 * answers with a request for its new key, as its csr_mode says. */
static void on_sign_request(capstan_phone_t *p, const capstan_capf_msg_t *m) {
  if (m->element_count != 0) {
    FAIL(p, CAPSTAN_PHONE_ERR_PROTOCOL, "SIGN_CERT_REQUEST carries %u element(s); it has none",
         m->element_count);
    return;
  }
  p->res.csr_requested = 1;
  p->sign_answered = 1;
  capstan_phone_csr_mode_t mode = p->cfg.csr_mode;
  if (mode == CAPSTAN_PHONE_CSR_SILENT) {
    /* The server's step timer must end this, with END_SESSION. */
    p->state = ST_WAIT_REJECT;
    arm_ca_timer(p);
    return;
  }
  capstan_capf_builder_t b;
  capstan_capf_builder_begin(&b, CAPSTAN_CAPF_CMD_SIGN_CERT_RESPONSE, reply_session(p), 0);
  if (mode == CAPSTAN_PHONE_CSR_REFUSE) {
    capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_REASON, CAPSTAN_CAPF_REASON_INVALID_ELEMENT);
  } else {
    uint8_t *der = NULL;
    size_t len = 0;
    int rc = capstan_phone_make_csr(p->new_key, p->name, mode, &der, &len);
    if (rc != 0) {
      capstan_capf_builder_cleanup(&b);
      FAIL(p, CAPSTAN_PHONE_ERR_INTERNAL, "cannot make the certificate request: %s",
           capstan_strerror(rc));
      return;
    }
    capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_REASON, CAPSTAN_CAPF_REASON_UPDATE_CERTIFICATE);
    capstan_capf_builder_add_bytes(&b, CAPSTAN_CAPF_EL_CERT_REQUEST, der, len);
    free(der);
  }
  if (send_msg(p, &b) != 0) return;
  p->res.csr_sent = mode != CAPSTAN_PHONE_CSR_REFUSE;
  /* A good request: the server asks its CA, which may take long. A bad one
   * (or none): the server must end the operation, and nothing else. */
  p->state = mode == CAPSTAN_PHONE_CSR_OK ? ST_WAIT_CA : ST_WAIT_REJECT;
  arm_ca_timer(p);
}

static void on_fetch_request(capstan_phone_t *p) {
  p->res.operation = CAPSTAN_PHONE_OP_FETCH;
  capstan_capf_builder_t b;
  capstan_capf_builder_begin(&b, CAPSTAN_CAPF_CMD_FETCH_CERT_RESPONSE, reply_session(p), 0);
  if (p->lsc.cert != NULL) {
    uint8_t *der = NULL;
    size_t len = 0;
    if (capstan_pki_cert_to_der(p->lsc.cert, &der, &len) != 0) {
      capstan_capf_builder_cleanup(&b);
      FAIL(p, CAPSTAN_PHONE_ERR_INTERNAL, "cannot encode the LSC");
      return;
    }
    capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_REASON, CAPSTAN_CAPF_REASON_UPDATE_CERTIFICATE);
    capstan_capf_builder_add_certificate(&b, CAPSTAN_CAPF_CERT_LSC, der, len);
    free(der);
  } else {
    capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_REASON, CAPSTAN_CAPF_REASON_INVALID_ELEMENT);
  }
  if (send_msg(p, &b) != 0) return;
  p->state = ST_WAIT_END;
  arm_step_timer(p);
}

static void on_delete_request(capstan_phone_t *p) {
  p->res.operation = CAPSTAN_PHONE_OP_DELETE;
  capstan_identity_cleanup(&p->lsc);
  if (send_simple(p, CAPSTAN_CAPF_CMD_DELETE_CERT_RESPONSE,
                  CAPSTAN_CAPF_REASON_UPDATE_CERTIFICATE) != 0) {
    return;
  }
  p->state = ST_WAIT_END;
  arm_step_timer(p);
}

/* Checks what every server message must satisfy. Returns 0 or fails. */
static int check_server_message(capstan_phone_t *p, const capstan_capf_msg_t *m) {
  const char *cmd = capstan_capf_command_name(m->command);
  if (!p->have_session) {
    if (m->session_id == 0) {
      FAIL(p, CAPSTAN_PHONE_ERR_PROTOCOL, "%s: session id 0", cmd);
      return -1;
    }
    p->have_session = 1;
    p->session_id = m->session_id;
    p->res.session_id = m->session_id;
  } else if (m->session_id != p->session_id) {
    FAIL(p, CAPSTAN_PHONE_ERR_PROTOCOL, "%s: session id 0x%08x, expected 0x%08x", cmd,
         (unsigned)m->session_id, (unsigned)p->session_id);
    return -1;
  }
  /* SIGN_CERT_REQUEST is server-sent too (extension; no element). */
  if (!capstan_capf_command_is_server_sent(m->command) &&
      m->command != CAPSTAN_CAPF_CMD_SIGN_CERT_REQUEST) {
    FAIL(p, CAPSTAN_PHONE_ERR_PROTOCOL, "server sent phone command %s", cmd);
    return -1;
  }
  if (m->unknown_count > 0) {
    FAIL(p, CAPSTAN_PHONE_ERR_PROTOCOL, "%s: %u element(s) with unknown tags", cmd,
         m->unknown_count);
    return -1;
  }
  for (int tag = 0; tag <= CAPSTAN_CAPF_EL_MAX; tag++) {
    if (capstan_capf_msg_has(m, tag) && !capstan_capf_server_may_send(m->command, tag)) {
      FAIL(p, CAPSTAN_PHONE_ERR_PROTOCOL, "%s: tag %s not allowed from the server", cmd,
           capstan_capf_element_name(tag));
      return -1;
    }
  }
  return 0;
}

static void unexpected(capstan_phone_t *p, const capstan_capf_msg_t *m) {
  FAIL(p, CAPSTAN_PHONE_ERR_PROTOCOL, "unexpected %s in state %s",
       capstan_capf_command_name(m->command), state_name(p->state));
}

/* RETRY_LATER {RETRY_DELAY}: the session ends; the delay is the result's. */
static void on_retry_later(capstan_phone_t *p, const capstan_capf_msg_t *m) {
  uint16_t delay;
  int rc = capstan_capf_get_retry_delay(m, &delay);
  if (rc == CAPSTAN_EPROTO) {
    FAIL(p, CAPSTAN_PHONE_ERR_PROTOCOL, "RETRY_LATER: bad RETRY_DELAY");
    return;
  }
  p->res.retry_delay = rc == 0 ? delay : -1;
  FAIL(p, CAPSTAN_PHONE_ERR_RETRY_LATER, "retry later (%d s)", p->res.retry_delay);
}

static void on_message(capstan_phone_t *p, const capstan_capf_msg_t *m) {
  p->res.messages_received++;
  if (p->res.messages_received == 1) p->res.first_message_ms = ms_since(p);
  if (check_server_message(p, m) != 0) return;

  if (m->command == CAPSTAN_CAPF_CMD_END_SESSION) {
    uint8_t reason;
    if (capstan_capf_get_reason(m, &reason) != 0) {
      FAIL(p, CAPSTAN_PHONE_ERR_PROTOCOL, "END_SESSION without a valid REASON");
      return;
    }
    if (p->state == ST_WAIT_REJECT && reason == CAPSTAN_CAPF_REASON_UPDATE_CERTIFICATE) {
      FAIL(p, CAPSTAN_PHONE_ERR_PROTOCOL,
           "END_SESSION REASON=1 after certificate request mode %s (no usable request)",
           capstan_phone_csr_mode_name(p->cfg.csr_mode));
      return;
    }
    p->res.end_reason = reason;
    p->got_end = 1;
    p->holding = 0;
    begin_close(p);
    return;
  }
  /* The server may answer any step with RETRY_LATER: over a connection
   * limit (in place of AUTH_REQUEST), while a CA decides or is down, or when
   * it could not record a step (a full disk): the session ends and the
   * phone comes back. */
  if (m->command == CAPSTAN_CAPF_CMD_RETRY_LATER) {
    on_retry_later(p, m);
    return;
  }
  switch (p->state) {
    case ST_WAIT_AUTH_REQUEST: {
      if (m->command != CAPSTAN_CAPF_CMD_AUTH_REQUEST) {
        unexpected(p, m);
        return;
      }
      uint8_t version, auth_type;
      if (capstan_capf_get_version(m, &version) != 0 || version != CAPSTAN_CAPF_PROTOCOL_VERSION) {
        FAIL(p, CAPSTAN_PHONE_ERR_PROTOCOL, "AUTH_REQUEST: VERSION missing or not 3");
        return;
      }
      if (capstan_capf_get_auth_type(m, &auth_type) != 0 || auth_type > CAPSTAN_CAPF_AUTH_MIC) {
        FAIL(p, CAPSTAN_PHONE_ERR_PROTOCOL, "AUTH_REQUEST: AUTH_TYPE missing or invalid");
        return;
      }
      p->state = ST_WAIT_OPERATION;
      arm_step_timer(p);
      if (p->cfg.stall) return; /* the server's auth timer should end this */
      send_auth_response(p);
      return;
    }
    case ST_WAIT_OPERATION:
      switch (m->command) {
        case CAPSTAN_CAPF_CMD_KEY_GEN_REQUEST:
          on_keygen_request(p, m);
          return;
        case CAPSTAN_CAPF_CMD_FETCH_CERT_REQUEST:
          on_fetch_request(p);
          return;
        case CAPSTAN_CAPF_CMD_DELETE_CERT_REQUEST:
          on_delete_request(p);
          return;
        case CAPSTAN_CAPF_CMD_STORE_CERT_REQUEST:
          /* A hand-over: the certificate for an earlier request. */
          on_store_request(p, m);
          return;
        default:
          unexpected(p, m);
          return;
      }
    case ST_WAIT_STORE:
      if (m->command == CAPSTAN_CAPF_CMD_STORE_CERT_REQUEST) {
        on_store_request(p, m);
      } else if (m->command == CAPSTAN_CAPF_CMD_SIGN_CERT_REQUEST && !p->sign_answered) {
        on_sign_request(p, m);
      } else if (m->command == CAPSTAN_CAPF_CMD_RETRY_LATER) {
        /* The server could not issue or record the certificate (a full
         * disk, no memory: issue 13): the phone comes back. */
        on_retry_later(p, m);
      } else {
        unexpected(p, m);
      }
      return;
    case ST_WAIT_CA:
      if (m->command == CAPSTAN_CAPF_CMD_STORE_CERT_REQUEST) {
        on_store_request(p, m);
      } else {
        unexpected(p, m);
      }
      return;
    case ST_WAIT_RESTART:
      if (m->command == CAPSTAN_CAPF_CMD_KEY_GEN_REQUEST) {
        on_keygen_request(p, m);
      } else {
        unexpected(p, m);
      }
      return;
    default:
      unexpected(p, m);
      return;
  }
}

static void on_tls_data(capstan_tls_conn_t *conn, void *arg, const uint8_t *data, size_t len) {
  capstan_phone_t *p = arg;
  if (p->closing) return;
  /* Framing consumes every complete message, so what stays buffered is less
   * than one message; this only guards against a framing bug. */
  if (p->in_len + len > 2 * PHONE_MAX_INPUT) {
    FAIL(p, CAPSTAN_PHONE_ERR_PROTOCOL, "too much input");
    return;
  }
  uint8_t *buf = realloc(p->in, p->in_len + len);
  if (buf == NULL) {
    FAIL(p, CAPSTAN_PHONE_ERR_INTERNAL, "out of memory");
    return;
  }
  p->in = buf;
  memcpy(p->in + p->in_len, data, len);
  p->in_len += len;
  size_t off = 0;
  while (!p->closing && off < p->in_len) {
    size_t msg_len = 0;
    int rc = capstan_capf_frame(p->in + off, p->in_len - off, &msg_len);
    if (rc == CAPSTAN_CAPF_NEED_MORE) break;
    if (rc != 0) {
      FAIL(p, CAPSTAN_PHONE_ERR_PROTOCOL, "cannot frame the server's message: %s",
           rc == CAPSTAN_EPROTO ? "protocol id is not 0x55" : "too long");
      return;
    }
    capstan_capf_msg_t m;
    if (capstan_capf_parse(p->in + off, msg_len, &m) != 0) {
      FAIL(p, CAPSTAN_PHONE_ERR_PROTOCOL, "malformed message from the server");
      return;
    }
    on_message(p, &m);
    off += msg_len;
  }
  if (p->closing || off == p->in_len) {
    free(p->in);
    p->in = NULL;
    p->in_len = 0;
  } else if (off > 0) {
    memmove(p->in, p->in + off, p->in_len - off);
    p->in_len -= off;
  }
}

static void on_tls_handshake(capstan_tls_conn_t *conn, void *arg) {
  capstan_phone_t *p = arg;
  p->res.handshake_ms = ms_since(p);
  p->state = ST_WAIT_AUTH_REQUEST;
  arm_step_timer(p);
}

static const capstan_tls_callbacks_t g_tls_callbacks = {
    .on_handshake = on_tls_handshake,
    .on_data = on_tls_data,
    .on_close = on_tls_close,
};

static void on_connect(uv_connect_t *req, int status) {
  capstan_phone_t *p = req->data;
  if (status == UV_ECANCELED || p->closing) return;
  if (status < 0) {
    FAIL(p, CAPSTAN_PHONE_ERR_CONNECT, "connect: %s", uv_strerror(status));
    return;
  }
  p->res.connect_ms = ms_since(p);
  p->state = ST_HANDSHAKE;
  arm_step_timer(p);
  if (capstan_tls_conn_start(p->conn) != 0) {
    FAIL(p, CAPSTAN_PHONE_ERR_TLS, "cannot start TLS");
  }
}

static void on_timer(uv_timer_t *t) {
  capstan_phone_t *p = t->data;
  if (p->state == ST_KEYGEN) {
    send_keygen_response(p);
    return;
  }
  FAIL(p, CAPSTAN_PHONE_ERR_TIMEOUT, "no answer from the server in state %s", state_name(p->state));
}

static int copy_identity(const capstan_identity_t *src, capstan_identity_t *dst) {
  if (src->cert == NULL && src->key == NULL) return 0;
  if (src->cert == NULL || src->key == NULL) return CAPSTAN_EINVAL;
  return capstan_identity_copy(src, dst);
}

int capstan_phone_start(uv_loop_t *loop, const capstan_phone_config_t *cfg,
                        capstan_phone_done_cb cb, void *arg, capstan_phone_t **out) {
  if (out != NULL) *out = NULL;
  if (cfg->ssl_ctx == NULL || cfg->keys == NULL || cfg->device_name == NULL) {
    return CAPSTAN_EINVAL;
  }
  size_t name_len = strlen(cfg->device_name);
  if (name_len == 0 || name_len > CAPSTAN_CAPF_DEVICE_NAME_MAX) return CAPSTAN_EINVAL;
  if ((cfg->auth == CAPSTAN_PHONE_AUTH_LSC || cfg->auth == CAPSTAN_PHONE_AUTH_MIC) &&
      cfg->lsc.cert == NULL && cfg->mic.cert == NULL) {
    return CAPSTAN_EINVAL;
  }
  capstan_phone_t *p = calloc(1, sizeof(*p));
  if (p == NULL) return CAPSTAN_ENOMEM;
  p->loop = loop;
  p->cfg = *cfg;
  memset(&p->cfg.lsc, 0, sizeof(p->cfg.lsc));
  memset(&p->cfg.mic, 0, sizeof(p->cfg.mic));
  memset(&p->cfg.sudi, 0, sizeof(p->cfg.sudi));
  memcpy(p->name, cfg->device_name, name_len + 1);
  p->cfg.device_name = p->name;
  p->cb = cb;
  p->cb_arg = arg;
  p->res.end_reason = -1;
  p->res.retry_delay = -1;
  p->res.key_alg = -1;
  int rc = 0;
  if (cfg->auth_string != NULL) {
    p->auth_string = strdup(cfg->auth_string);
    if (p->auth_string == NULL) rc = CAPSTAN_ENOMEM;
  }
  p->cfg.auth_string = p->auth_string;
  if (rc == 0 && cfg->key_file != NULL) {
    p->key_file = strdup(cfg->key_file);
    if (p->key_file == NULL) rc = CAPSTAN_ENOMEM;
  }
  p->cfg.key_file = p->key_file;
  p->cfg.pending_key = NULL;
  if (rc == 0 && cfg->pending_key != NULL) {
    EVP_PKEY_up_ref(cfg->pending_key);
    p->pending_key = cfg->pending_key;
  } else if (rc == 0 && p->key_file != NULL) {
    rc = capstan_phone_load_key_file(p->key_file, &p->pending_key);
    if (rc == CAPSTAN_ENOENT) rc = 0;
  }
  if (rc == 0) rc = copy_identity(&cfg->lsc, &p->lsc);
  if (rc == 0) rc = copy_identity(&cfg->mic, &p->mic);
  if (rc == 0) rc = copy_identity(&cfg->sudi, &p->sudi);
  if (rc == 0) {
    p->conn = capstan_tls_conn_new(loop, cfg->ssl_ctx, 0, &g_tls_callbacks, p);
    if (p->conn == NULL) rc = CAPSTAN_ENOMEM;
  }
  if (rc != 0) {
    capstan_identity_cleanup(&p->lsc);
    capstan_identity_cleanup(&p->mic);
    capstan_identity_cleanup(&p->sudi);
    EVP_PKEY_free(p->pending_key);
    free(p->key_file);
    free(p->auth_string);
    free(p);
    return rc;
  }
  uv_timer_init(loop, &p->timer);
  p->timer.data = p;
  p->handles_open = 2;
  p->t0 = uv_hrtime();
  p->state = ST_CONNECTING;
  if (out != NULL) *out = p;
  p->connect_req.data = p;
  if (cfg->has_bind) {
    rc = uv_tcp_bind(capstan_tls_conn_tcp(p->conn), (const struct sockaddr *)&cfg->bind_addr, 0);
    if (rc != 0) {
      FAIL(p, CAPSTAN_PHONE_ERR_CONNECT, "bind: %s", uv_strerror(rc));
      return 0;
    }
  }
  rc = uv_tcp_connect(&p->connect_req, capstan_tls_conn_tcp(p->conn),
                      (const struct sockaddr *)&cfg->addr, on_connect);
  if (rc != 0) {
    /* Reported through the callback like any other connect failure. */
    FAIL(p, CAPSTAN_PHONE_ERR_CONNECT, "connect: %s", uv_strerror(rc));
    return 0;
  }
  arm_step_timer(p);
  return 0;
}

void capstan_phone_release_hold(capstan_phone_t *p) {
  if (p == NULL || !p->holding || p->closing) return;
  p->holding = 0;
  send_keygen_response(p);
}

void capstan_phone_abort(capstan_phone_t *p) {
  if (p == NULL || p->closing) return;
  FAIL(p, CAPSTAN_PHONE_ERR_TIMEOUT, "aborted");
}

/* ---- Blocking helper ------------------------------------------------------ */

static void run_one_done(capstan_phone_t *phone, void *arg, capstan_phone_result_t *res) {
  capstan_phone_result_t *out = arg;
  *out = *res;
  memset(res, 0, sizeof(*res));
}

int capstan_phone_run_one(const capstan_phone_config_t *cfg, capstan_phone_result_t *out) {
  memset(out, 0, sizeof(*out));
  uv_loop_t loop;
  int rc = uv_loop_init(&loop);
  if (rc != 0) return rc;
  capstan_phone_config_t c = *cfg;
  SSL_CTX *own_ctx = NULL;
  capstan_phone_keypool_t *own_keys = NULL;
  if (c.ssl_ctx == NULL) {
    char err[128];
    own_ctx = capstan_phone_ssl_ctx_new(NULL, err, sizeof(err));
    if (own_ctx == NULL) rc = CAPSTAN_ENOMEM;
    c.ssl_ctx = own_ctx;
  }
  if (rc == 0 && c.keys == NULL) {
    own_keys = capstan_phone_keypool_new(NULL, 1);
    if (own_keys == NULL) rc = CAPSTAN_ENOMEM;
    c.keys = own_keys;
  }
  if (rc == 0) rc = capstan_phone_start(&loop, &c, run_one_done, out, NULL);
  if (rc == 0) uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  SSL_CTX_free(own_ctx);
  capstan_phone_keypool_free(own_keys);
  return rc;
}
