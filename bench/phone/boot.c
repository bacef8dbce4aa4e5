/* The phone's boot sequence: ITL, signed configuration, certificate hash
 * check, CAPF enrollment, encrypted configuration. See phone.h. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <expat.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "bench/phone/phone.h"
#include "core/base/error.h"
#include "core/files/cnfxml.h"
#include "core/files/encconf.h"
#include "core/files/itl.h"
#include "core/files/sgnhdr.h"
#include "core/pki/pki.h"

/* "SEP" + 12 hex digits. */
#define DEVICE_NAME_LEN 15
#define MAC_LEN 12
/* Longest text we keep from a configuration element. */
#define XML_TEXT_MAX 64

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))
#define NAME_ENTRY(id, name) name,
static const char *const g_step_names[] = {CAPSTAN_PHONE_BOOT_STEPS(NAME_ENTRY)};
static const char *const g_failure_names[] = {CAPSTAN_PHONE_BOOT_FAILURES(NAME_ENTRY)};
static const char *const g_hash_names[] = {CAPSTAN_PHONE_CERT_HASH_STATES(NAME_ENTRY)};
#undef NAME_ENTRY

const char *capstan_phone_boot_step_name(capstan_phone_boot_step_id_t step) {
  return (unsigned)step < COUNT(g_step_names) ? g_step_names[step] : "unknown";
}
const char *capstan_phone_boot_failure_name(capstan_phone_boot_failure_t f) {
  return (unsigned)f < COUNT(g_failure_names) ? g_failure_names[f] : "unknown";
}
const char *capstan_phone_cert_hash_name(capstan_phone_cert_hash_t h) {
  return (unsigned)h < COUNT(g_hash_names) ? g_hash_names[h] : "unknown";
}

void capstan_phone_boot_result_cleanup(capstan_phone_boot_result_t *res) {
  if (res == NULL) return;
  X509_free(res->itl_signer);
  X509_free(res->tftp_cert);
  free(res->config);
  capstan_phone_result_cleanup(&res->capf);
  capstan_identity_cleanup(&res->lsc);
  memset(res, 0, sizeof(*res));
}

/* ---- Configuration XML --------------------------------------------------- */

/* What the phone reads from a configuration. Text fields hold at most
 * XML_TEXT_MAX bytes; longer text sets the field's overflow flag. */
typedef struct {
  int depth;
  int root_ok;
  int in_capf_list, in_capf, capf_done;
  int field; /* index into |text| being collected, -1 none */
  char text[6][XML_TEXT_MAX + 1];
  size_t text_len[6];
  int seen[6];
  int overflow;
  int doctype;
  XML_Parser parser;
} cnf_parse_t;

enum { F_CERT_HASH, F_ENCR, F_AUTH_MODE, F_FULL, F_PORT, F_HOST };

static void XMLCALL xml_start(void *ud, const XML_Char *name, const XML_Char **attrs) {
  (void)attrs;
  cnf_parse_t *c = ud;
  c->depth++;
  c->field = -1;
  if (c->depth == 1) {
    c->root_ok = strcmp(name, "device") == 0;
    return;
  }
  if (c->depth == 2) {
    c->in_capf_list = !c->capf_done && strcmp(name, "capfList") == 0;
    static const char *const direct[] = {"certHash", "encrConfig", "capfAuthMode", "fullConfig"};
    for (int i = 0; i < 4; i++) {
      if (strcmp(name, direct[i]) == 0 && !c->seen[i]) {
        c->field = i;
        c->seen[i] = 1;
      }
    }
    return;
  }
  if (c->depth == 3 && c->in_capf_list) {
    c->in_capf = strcmp(name, "capf") == 0;
    return;
  }
  if (c->depth == 4 && c->in_capf) {
    if (strcmp(name, "phonePort") == 0 && !c->seen[F_PORT]) {
      c->field = F_PORT;
      c->seen[F_PORT] = 1;
    } else if (strcmp(name, "processNodeName") == 0 && !c->seen[F_HOST]) {
      c->field = F_HOST;
      c->seen[F_HOST] = 1;
    }
  }
}

static void XMLCALL xml_end(void *ud, const XML_Char *name) {
  (void)name;
  cnf_parse_t *c = ud;
  if (c->depth == 3 && c->in_capf) {
    c->in_capf = 0;
    c->capf_done = 1; /* the first <capf> only */
  }
  if (c->depth == 2) c->in_capf_list = 0;
  c->depth--;
  c->field = -1;
}

static void XMLCALL xml_text(void *ud, const XML_Char *s, int len) {
  cnf_parse_t *c = ud;
  if (c->field < 0 || len <= 0) return;
  size_t *n = &c->text_len[c->field];
  if ((size_t)len > XML_TEXT_MAX - *n) {
    c->overflow = 1;
    return;
  }
  memcpy(c->text[c->field] + *n, s, (size_t)len);
  *n += (size_t)len;
  c->text[c->field][*n] = '\0';
}

static void XMLCALL xml_doctype(void *ud, const XML_Char *name, const XML_Char *sysid,
                                const XML_Char *pubid, int has_internal) {
  (void)name;
  (void)sysid;
  (void)pubid;
  (void)has_internal;
  cnf_parse_t *c = ud;
  c->doctype = 1;
  /* Stop before an internal subset can define entities to expand. */
  XML_StopParser(c->parser, XML_FALSE);
}

/* Trims XML whitespace in place. */
static const char *trimmed(char *s) {
  while (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n') s++;
  size_t n = strlen(s);
  while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\n')) {
    s[--n] = '\0';
  }
  return s;
}

/* Parses a configuration. Returns 0, or CAPSTAN_EINVAL with |*why|. */
static int parse_cnf(const uint8_t *xml, size_t len, cnf_parse_t *c, const char **why) {
  memset(c, 0, sizeof(*c));
  c->field = -1;
  if (len > CAPSTAN_CNFXML_MAX || len > (size_t)INT32_MAX) {
    *why = "configuration too large";
    return CAPSTAN_EINVAL;
  }
  XML_Parser p = XML_ParserCreate(NULL);
  if (p == NULL) {
    *why = "out of memory";
    return CAPSTAN_ENOMEM;
  }
  c->parser = p;
  XML_SetUserData(p, c);
  XML_SetElementHandler(p, xml_start, xml_end);
  XML_SetCharacterDataHandler(p, xml_text);
  XML_SetStartDoctypeDeclHandler(p, xml_doctype);
  enum XML_Status st = XML_Parse(p, (const char *)xml, (int)len, 1);
  XML_ParserFree(p);
  c->parser = NULL;
  if (c->doctype) {
    *why = "configuration has a DOCTYPE";
    return CAPSTAN_EINVAL;
  }
  if (st != XML_STATUS_OK) {
    *why = "configuration is not well-formed XML";
    return CAPSTAN_EINVAL;
  }
  if (!c->root_ok) {
    *why = "configuration root is not <device>";
    return CAPSTAN_EINVAL;
  }
  if (c->overflow) {
    *why = "configuration element too long";
    return CAPSTAN_EINVAL;
  }
  return 0;
}

/* ---- The boot -------------------------------------------------------------- */

typedef enum { BOOT_ITL, BOOT_ITL_FALLBACK, BOOT_CNF, BOOT_ENC, BOOT_CAPF } boot_state_t;

struct capstan_phone_boot {
  uv_loop_t *loop;
  capstan_phone_boot_config_t cfg;
  char name[DEVICE_NAME_LEN + 1];
  char *auth_string;
  char *key_file;        /* the CAPF session's pending key file (copy) */
  EVP_PKEY *pending_key; /* and its pending key (own reference) */
  capstan_identity_t lsc, mic, sudi;
  X509 *trusted;
  boot_state_t state;
  capstan_phone_fetch_t *fetch;
  capstan_phone_http_conn_t *conn; /* kept between downloads (keep-alive) */
  capstan_phone_t *capf;
  uint64_t t0, step_t0;
  EVP_PKEY *tftp_pub;
  cnf_parse_t cnf;
  capstan_phone_boot_result_t res;
  capstan_phone_boot_cb cb;
  void *cb_arg;
};

static double ms_since(uint64_t t0) {
  return (double)(uv_hrtime() - t0) / 1e6;
}

static void boot_free(capstan_phone_boot_t *b) {
  capstan_phone_http_conn_close(b->conn);
  capstan_identity_cleanup(&b->lsc);
  capstan_identity_cleanup(&b->mic);
  capstan_identity_cleanup(&b->sudi);
  X509_free(b->trusted);
  EVP_PKEY_free(b->tftp_pub);
  EVP_PKEY_free(b->pending_key);
  free(b->key_file);
  free(b->auth_string);
  capstan_phone_boot_result_cleanup(&b->res);
  free(b);
}

/* Ends the boot: hands the result over and frees the boot. Called from a
 * download's or session's completion callback (or never synchronously from
 * start), so nothing of ours is open any more. */
static void boot_done(capstan_phone_boot_t *b) {
  capstan_phone_boot_result_t *r = &b->res;
  r->total_ms = ms_since(b->t0);
  /* The phone's LSC at the end, unless a CAPF session already put its own. */
  if (!r->capf_ran) {
    r->lsc = b->lsc;
    memset(&b->lsc, 0, sizeof(b->lsc));
  }
  capstan_phone_cert_md5(r->lsc.cert, r->lsc_md5);
  ERR_clear_error();
  if (b->cb != NULL) b->cb(b, b->cb_arg, r);
  boot_free(b);
}

static void fail(capstan_phone_boot_t *b, capstan_phone_boot_failure_t f, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fail(capstan_phone_boot_t *b, capstan_phone_boot_failure_t f, const char *fmt, ...) {
  if (b->res.failure == CAPSTAN_PHONE_BOOT_NONE) {
    b->res.failure = f;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b->res.detail, sizeof(b->res.detail), fmt, ap);
    va_end(ap);
  }
  boot_done(b);
}

static void on_fetched(capstan_phone_fetch_t *fetch, void *arg, capstan_phone_fetch_result_t *fr);

static void fetch_file(capstan_phone_boot_t *b, boot_state_t state, const char *suffix_or_name,
                       int whole_name) {
  char file[64];
  if (whole_name) {
    snprintf(file, sizeof(file), "%s", suffix_or_name);
  } else if (state == BOOT_ITL) {
    snprintf(file, sizeof(file), "ITL%s.tlv", b->name);
  } else {
    snprintf(file, sizeof(file), "%s%s", b->name, suffix_or_name);
  }
  b->state = state;
  capstan_phone_fetch_config_t fc = {
      .transport = b->cfg.transport,
      .addr = b->cfg.file_addr,
      .bind_addr = b->cfg.phone.bind_addr,
      .has_bind = b->cfg.phone.has_bind,
      .name = file,
      .max_bytes = b->cfg.max_file_bytes,
      .timeout_ms = b->cfg.phone.step_timeout_ms,
      .tftp_rto_ms = b->cfg.tftp_rto_ms,
      .tftp_retries = b->cfg.tftp_retries,
      .tftp_blksize = b->cfg.tftp_blksize,
      .keep_alive = b->cfg.http_keep_alive && b->cfg.transport == CAPSTAN_PHONE_TRANSPORT_HTTP,
      .reuse = b->conn,
  };
  b->conn = NULL; /* the download owns it now */
  int rc = capstan_phone_fetch_start(b->loop, &fc, on_fetched, b, &b->fetch);
  if (rc != 0) {
    /* Only a bad configuration or memory: the name is ours and valid. */
    capstan_phone_boot_failure_t f = state == BOOT_ITL || state == BOOT_ITL_FALLBACK
                                         ? CAPSTAN_PHONE_BOOT_ITL_FETCH
                                     : state == BOOT_CNF ? CAPSTAN_PHONE_BOOT_CNF_FETCH
                                                         : CAPSTAN_PHONE_BOOT_ENC_FETCH;
    fail(b, f, "cannot start the download of %s: %s", file, capstan_strerror(rc));
  }
}

/* The header's FILENAME must be the name asked for. */
static int filename_is(const capstan_sgn_info_t *h, const char *name) {
  size_t n = strlen(name);
  return h->filename.len == n && memcmp(h->filename.data, name, n) == 0;
}

static X509 *record_cert(const capstan_itl_record_t *rec) {
  X509 *x = NULL;
  if (capstan_pki_parse_cert(rec->certificate.data, rec->certificate.len, &x) != 0) return NULL;
  return x;
}

static void verify_itl(capstan_phone_boot_t *b, const uint8_t *file, size_t len,
                       const char *fname) {
  capstan_phone_boot_result_t *r = &b->res;
  capstan_itl_info_t *info = malloc(sizeof(*info));
  X509 *signer = NULL, *tftp = NULL;
  EVP_PKEY *key = NULL;
  const char *why = NULL;
  capstan_phone_boot_failure_t f = CAPSTAN_PHONE_BOOT_ITL_INVALID;
  char detail[128] = "";
  if (info == NULL) {
    f = CAPSTAN_PHONE_BOOT_INTERNAL;
    snprintf(detail, sizeof(detail), "out of memory");
    goto bad;
  }
  if (capstan_itl_parse(file, len, info, &why) != 0) {
    snprintf(detail, sizeof(detail), "%s: %s", fname, why ? why : "malformed");
    goto bad;
  }
  if (!filename_is(&info->header, fname)) {
    snprintf(detail, sizeof(detail), "%s: FILENAME is not the file's name", fname);
    goto bad;
  }
  r->itl_records = (unsigned)info->n_records;
  for (size_t i = 0; i < info->n_records; i++) {
    if (capstan_itl_check_record(&info->records[i], &why) != 0) {
      snprintf(detail, sizeof(detail), "%s: record %zu: %s", fname, i, why ? why : "invalid");
      goto bad;
    }
  }
  signer = record_cert(&info->records[0]);
  for (size_t i = 1; i < info->n_records && tftp == NULL; i++) {
    uint16_t role = info->records[i].role;
    if (role == CAPSTAN_ITL_ROLE_TFTP || role == CAPSTAN_ITL_ROLE_CCM_TFTP) {
      tftp = record_cert(&info->records[i]);
      if (tftp == NULL) break;
    }
  }
  if (signer == NULL || tftp == NULL) {
    snprintf(detail, sizeof(detail), "%s: %s", fname,
             signer == NULL ? "signer certificate unreadable" : "no TFTP certificate");
    goto bad;
  }
  /* A phone that already trusts a TFTP certificate accepts only an ITL it
   * signed; a new phone trusts the first ITL's own signer. */
  key = X509_get_pubkey(b->trusted != NULL ? b->trusted : signer);
  if (key == NULL) {
    snprintf(detail, sizeof(detail), "%s: signer key unreadable", fname);
    goto bad;
  }
  int rc = capstan_sgn_verify(file, len, key, &why);
  if (rc != 0) {
    f = b->trusted != NULL && X509_cmp(b->trusted, signer) != 0 ? CAPSTAN_PHONE_BOOT_ITL_UNTRUSTED
                                                                : CAPSTAN_PHONE_BOOT_ITL_SIGNATURE;
    snprintf(detail, sizeof(detail), "%s: %s", fname,
             f == CAPSTAN_PHONE_BOOT_ITL_UNTRUSTED ? "not signed by the trusted certificate"
                                                   : (why ? why : "signature does not verify"));
    goto bad;
  }
  b->tftp_pub = X509_get_pubkey(tftp);
  if (b->tftp_pub == NULL) {
    snprintf(detail, sizeof(detail), "%s: TFTP key unreadable", fname);
    goto bad;
  }
  EVP_PKEY_free(key);
  free(info);
  r->itl_signer = signer;
  r->tftp_cert = tftp;
  r->steps[CAPSTAN_PHONE_STEP_ITL].ok = 1;
  fetch_file(b, BOOT_CNF, ".cnf.xml.sgn", 0);
  return;
bad:
  ERR_clear_error();
  EVP_PKEY_free(key);
  X509_free(signer);
  X509_free(tftp);
  free(info);
  fail(b, f, "%s", detail);
}

/* Checks the header (VERSION, FILENAME) and the signature with the TFTP key.
 * Returns 0 and the header in |h|, or fails the boot with |f|. */
static int verify_signed(capstan_phone_boot_t *b, const uint8_t *file, size_t len,
                         const char *fname, uint8_t major, capstan_sgn_info_t *h,
                         capstan_phone_boot_failure_t f) {
  const char *why = NULL;
  if (capstan_sgn_parse(file, len, h, &why) != 0) {
    fail(b, f, "%s: %s", fname, why ? why : "malformed header");
    return -1;
  }
  if (h->version_major != major || h->version_minor != 0 || !filename_is(h, fname)) {
    fail(b, f, "%s: %s", fname,
         filename_is(h, fname) ? "unexpected header VERSION" : "FILENAME is not the file's name");
    return -1;
  }
  if (capstan_sgn_verify(file, len, b->tftp_pub, &why) != 0) {
    ERR_clear_error();
    fail(b, f, "%s: %s", fname, why ? why : "signature does not verify");
    return -1;
  }
  return 0;
}

static int own_cert_md5(const capstan_phone_boot_t *b, char out[33]) {
  out[0] = '\0';
  X509 *cert = b->lsc.cert != NULL ? b->lsc.cert : b->mic.cert;
  if (cert == NULL) return 0;
  uint8_t *der = NULL;
  size_t len = 0;
  if (capstan_pki_cert_to_der(cert, &der, &len) != 0) return CAPSTAN_ENOMEM;
  capstan_pki_md5hash(der, len, out);
  free(der);
  return 0;
}

static void on_capf_done(capstan_phone_t *phone, void *arg, capstan_phone_result_t *res);

/* Opens the CAPF session the configuration asks for. */
static void start_capf(capstan_phone_boot_t *b) {
  capstan_phone_boot_result_t *r = &b->res;
  /* No more downloads in this boot: the phone resets after the session. */
  capstan_phone_http_conn_close(b->conn);
  b->conn = NULL;
  capstan_phone_config_t pc = b->cfg.phone;
  pc.device_name = b->name;
  pc.auth_string = b->auth_string;
  pc.lsc = b->lsc;
  pc.mic = b->mic;
  pc.sudi = b->sudi;
  switch (r->capf_auth_mode) {
    case 1:
      pc.auth = CAPSTAN_PHONE_AUTH_STRING;
      break;
    case 2:
      pc.auth = CAPSTAN_PHONE_AUTH_NULL_STRING;
      break;
    case 3:
      pc.auth = CAPSTAN_PHONE_AUTH_LSC;
      break;
    case 4:
      pc.auth = CAPSTAN_PHONE_AUTH_MIC;
      break;
    default:
      break;
  }
  if ((pc.auth == CAPSTAN_PHONE_AUTH_LSC || pc.auth == CAPSTAN_PHONE_AUTH_MIC) &&
      b->lsc.cert == NULL && b->mic.cert == NULL) {
    /* Nothing to authenticate with: the server will say no, as it should. */
    pc.auth = CAPSTAN_PHONE_AUTH_NULL_STRING;
  }
  if (b->cfg.has_capf_addr) {
    pc.addr = b->cfg.capf_addr;
  } else {
    char hostport[XML_TEXT_MAX * 2 + 4];
    const char *host = trimmed(b->cnf.text[F_HOST]);
    const char *port = trimmed(b->cnf.text[F_PORT]);
    snprintf(hostport, sizeof(hostport), strchr(host, ':') ? "[%s]:%s" : "%s:%s", host, port);
    if (capstan_phone_parse_addr(hostport, &pc.addr) != 0) {
      fail(b, CAPSTAN_PHONE_BOOT_CAPF, "capfList gives no usable address (%s)", hostport);
      return;
    }
  }
  b->state = BOOT_CAPF;
  b->step_t0 = uv_hrtime();
  r->capf_ran = 1;
  r->steps[CAPSTAN_PHONE_STEP_CAPF].ran = 1;
  int rc = capstan_phone_start(b->loop, &pc, on_capf_done, b, &b->capf);
  if (rc != 0) fail(b, CAPSTAN_PHONE_BOOT_CAPF, "cannot start CAPF: %s", capstan_strerror(rc));
}

static void on_capf_done(capstan_phone_t *phone, void *arg, capstan_phone_result_t *res) {
  (void)phone;
  capstan_phone_boot_t *b = arg;
  capstan_phone_boot_result_t *r = &b->res;
  b->capf = NULL;
  capstan_phone_boot_step_t *st = &r->steps[CAPSTAN_PHONE_STEP_CAPF];
  st->ms = ms_since(b->step_t0);
  r->capf = *res;
  memset(res, 0, sizeof(*res));
  /* The LSC the phone holds after the session is the phone's now. */
  r->lsc = r->capf.lsc;
  memset(&r->capf.lsc, 0, sizeof(r->capf.lsc));
  if (r->capf.kind == CAPSTAN_PHONE_RESULT_ERROR) {
    fail(b, CAPSTAN_PHONE_BOOT_CAPF, "CAPF %s: %s", capstan_phone_error_name(r->capf.error),
         r->capf.detail);
    return;
  }
  st->ok = 1;
  r->enrolled = r->capf.kind == CAPSTAN_PHONE_RESULT_OK &&
                r->capf.operation == CAPSTAN_PHONE_OP_INSTALL && r->lsc.cert != NULL;
  boot_done(b);
}

static void verify_cnf(capstan_phone_boot_t *b, uint8_t *file, size_t len, const char *fname) {
  capstan_phone_boot_result_t *r = &b->res;
  capstan_sgn_info_t h;
  if (verify_signed(b, file, len, fname, 1, &h, CAPSTAN_PHONE_BOOT_CNF_SIGNATURE) != 0) return;
  const char *why = NULL;
  int rc = parse_cnf(h.payload.data, h.payload.len, &b->cnf, &why);
  if (rc != 0) {
    fail(b, rc == CAPSTAN_ENOMEM ? CAPSTAN_PHONE_BOOT_INTERNAL : CAPSTAN_PHONE_BOOT_CNF_INVALID,
         "%s: %s", fname, why);
    return;
  }
  r->config = malloc(h.payload.len ? h.payload.len : 1);
  if (r->config == NULL) {
    fail(b, CAPSTAN_PHONE_BOOT_INTERNAL, "out of memory");
    return;
  }
  memcpy(r->config, h.payload.data, h.payload.len);
  r->config_len = h.payload.len;
  cnf_parse_t *c = &b->cnf;
  const char *hash = trimmed(c->text[F_CERT_HASH]);
  r->encr_config = strcmp(trimmed(c->text[F_ENCR]), "true") == 0;
  r->full_config = strcmp(trimmed(c->text[F_FULL]), "false") != 0;
  const char *mode = trimmed(c->text[F_AUTH_MODE]);
  r->capf_auth_mode = -1;
  if (c->seen[F_AUTH_MODE] && strlen(mode) == 1 && mode[0] >= '0' && mode[0] <= '9') {
    r->capf_auth_mode = mode[0] - '0';
  }
  if (strlen(hash) <= 32) snprintf(r->server_hash, sizeof(r->server_hash), "%s", hash);
  if (own_cert_md5(b, r->own_hash) != 0) {
    fail(b, CAPSTAN_PHONE_BOOT_INTERNAL, "cannot encode the phone's certificate");
    return;
  }
  if (hash[0] == '\0') {
    r->cert_hash = CAPSTAN_PHONE_HASH_EMPTY;
  } else if (r->own_hash[0] != '\0' && strcmp(hash, r->own_hash) == 0) {
    r->cert_hash = CAPSTAN_PHONE_HASH_MATCH;
  } else {
    r->cert_hash = CAPSTAN_PHONE_HASH_MISMATCH;
  }
  r->steps[CAPSTAN_PHONE_STEP_CNF].ok = 1;

  if (r->cert_hash != CAPSTAN_PHONE_HASH_MATCH) {
    /* The server has not got this phone's certificate: enroll, if an
     * operation is scheduled and the phone can authenticate the way the
     * configuration says (a string needs someone to type it). */
    int can = !b->cfg.boot_only && r->capf_auth_mode > 0 &&
              (r->capf_auth_mode != 1 || b->auth_string != NULL);
    if (can) {
      start_capf(b);
      return;
    }
    boot_done(b);
    return;
  }
  if (r->encr_config && b->lsc.key != NULL && EVP_PKEY_id(b->lsc.key) == EVP_PKEY_RSA) {
    fetch_file(b, BOOT_ENC, ".cnf.xml.enc.sgn", 0);
    return;
  }
  boot_done(b);
}

static void decrypt_enc(capstan_phone_boot_t *b, uint8_t *file, size_t len, const char *fname) {
  capstan_phone_boot_result_t *r = &b->res;
  capstan_sgn_info_t h;
  if (verify_signed(b, file, len, fname, 2, &h, CAPSTAN_PHONE_BOOT_ENC_SIGNATURE) != 0) return;
  uint8_t *plain = NULL;
  size_t plain_len = 0;
  const char *why = NULL;
  int rc = capstan_encconf_decrypt(file, len, b->lsc.key, &plain, &plain_len, &why);
  ERR_clear_error();
  if (rc != 0) {
    fail(b, rc == CAPSTAN_ENOMEM ? CAPSTAN_PHONE_BOOT_INTERNAL : CAPSTAN_PHONE_BOOT_ENC_DECRYPT,
         "%s: %s", fname, why ? why : capstan_strerror(rc));
    return;
  }
  cnf_parse_t c;
  rc = parse_cnf(plain, plain_len, &c, &why);
  if (rc == 0 && strcmp(trimmed(c.text[F_FULL]), "false") == 0) {
    rc = CAPSTAN_EINVAL;
    why = "decrypted configuration is partial";
  }
  if (rc == 0 && strcmp(trimmed(c.text[F_CERT_HASH]), r->own_hash) != 0) {
    rc = CAPSTAN_EINVAL;
    why = "decrypted configuration has another certHash";
  }
  if (rc != 0) {
    free(plain);
    fail(b, CAPSTAN_PHONE_BOOT_ENC_INVALID, "%s: %s", fname, why);
    return;
  }
  free(r->config);
  r->config = plain;
  r->config_len = plain_len;
  r->decrypted = 1;
  r->full_config = 1;
  r->steps[CAPSTAN_PHONE_STEP_ENC].ok = 1;
  boot_done(b);
}

static void on_fetched(capstan_phone_fetch_t *fetch, void *arg, capstan_phone_fetch_result_t *fr) {
  (void)fetch;
  capstan_phone_boot_t *b = arg;
  capstan_phone_boot_result_t *r = &b->res;
  b->fetch = NULL;
  if (fr->new_connection) r->connections++;
  /* A kept connection waits for the next download (closed if none). */
  b->conn = fr->conn;
  fr->conn = NULL;
  capstan_phone_boot_step_id_t sid = b->state == BOOT_CNF   ? CAPSTAN_PHONE_STEP_CNF
                                     : b->state == BOOT_ENC ? CAPSTAN_PHONE_STEP_ENC
                                                            : CAPSTAN_PHONE_STEP_ITL;
  capstan_phone_boot_step_t *st = &r->steps[sid];
  st->ran = 1;
  st->ms += fr->total_ms; /* the ITL step adds the fallback download */
  st->retransmits += fr->retransmits;
  st->fetch_error = fr->error;
  st->code = fr->error == CAPSTAN_PHONE_FETCH_NONE ? -1 : fr->code;
  if (fr->error == CAPSTAN_PHONE_FETCH_NONE) {
    st->bytes = fr->len;
    r->files++;
  }
  char fname[64];
  if (b->state == BOOT_ITL) {
    snprintf(fname, sizeof(fname), "ITL%s.tlv", b->name);
  } else if (b->state == BOOT_ITL_FALLBACK) {
    snprintf(fname, sizeof(fname), "ITLFile.tlv");
  } else {
    snprintf(fname, sizeof(fname), "%s%s", b->name,
             b->state == BOOT_CNF ? ".cnf.xml.sgn" : ".cnf.xml.enc.sgn");
  }
  if (fr->error != CAPSTAN_PHONE_FETCH_NONE) {
    if (b->state == BOOT_ITL && fr->error == CAPSTAN_PHONE_FETCH_NOT_FOUND) {
      r->itl_fallback = 1;
      fetch_file(b, BOOT_ITL_FALLBACK, "ITLFile.tlv", 1);
      return;
    }
    capstan_phone_boot_failure_t f = sid == CAPSTAN_PHONE_STEP_ITL   ? CAPSTAN_PHONE_BOOT_ITL_FETCH
                                     : sid == CAPSTAN_PHONE_STEP_CNF ? CAPSTAN_PHONE_BOOT_CNF_FETCH
                                                                     : CAPSTAN_PHONE_BOOT_ENC_FETCH;
    fail(b, f, "%s: %s: %s", fname, capstan_phone_fetch_error_name(fr->error), fr->detail);
    return;
  }
  switch (b->state) {
    case BOOT_ITL:
    case BOOT_ITL_FALLBACK:
      verify_itl(b, fr->body, fr->len, fname);
      return;
    case BOOT_CNF:
      verify_cnf(b, fr->body, fr->len, fname);
      return;
    case BOOT_ENC:
      decrypt_enc(b, fr->body, fr->len, fname);
      return;
    default:
      fail(b, CAPSTAN_PHONE_BOOT_INTERNAL, "download in state %d", (int)b->state);
      return;
  }
}

static int copy_identity(const capstan_identity_t *src, capstan_identity_t *dst) {
  if (src->cert == NULL && src->key == NULL) return 0;
  if (src->cert == NULL || src->key == NULL) return CAPSTAN_EINVAL;
  return capstan_identity_copy(src, dst);
}

static int is_device_name(const char *name) {
  if (name == NULL || strlen(name) != DEVICE_NAME_LEN || strncmp(name, "SEP", 3) != 0) return 0;
  for (int i = 3; i < DEVICE_NAME_LEN; i++) {
    char c = name[i];
    if (!((c >= '0' && c <= '9') || (c >= 'A' && c <= 'F'))) return 0;
  }
  return 1;
}

int capstan_phone_boot_start(uv_loop_t *loop, const capstan_phone_boot_config_t *cfg,
                             capstan_phone_boot_cb cb, void *arg, capstan_phone_boot_t **out) {
  if (out != NULL) *out = NULL;
  if (!is_device_name(cfg->phone.device_name) ||
      (!cfg->boot_only && (cfg->phone.ssl_ctx == NULL || cfg->phone.keys == NULL))) {
    return CAPSTAN_EINVAL;
  }
  capstan_phone_boot_t *b = calloc(1, sizeof(*b));
  if (b == NULL) return CAPSTAN_ENOMEM;
  b->loop = loop;
  b->cfg = *cfg;
  memset(&b->cfg.phone.lsc, 0, sizeof(b->cfg.phone.lsc));
  memset(&b->cfg.phone.mic, 0, sizeof(b->cfg.phone.mic));
  memset(&b->cfg.phone.sudi, 0, sizeof(b->cfg.phone.sudi));
  b->cfg.trusted_tftp = NULL;
  memcpy(b->name, cfg->phone.device_name, DEVICE_NAME_LEN + 1);
  b->cfg.phone.device_name = b->name;
  b->cb = cb;
  b->cb_arg = arg;
  b->res.capf_auth_mode = -1;
  for (int i = 0; i < CAPSTAN_PHONE_STEP_COUNT; i++) b->res.steps[i].code = -1;
  int rc = 0;
  if (cfg->phone.auth_string != NULL) {
    b->auth_string = strdup(cfg->phone.auth_string);
    if (b->auth_string == NULL) rc = CAPSTAN_ENOMEM;
  }
  b->cfg.phone.auth_string = b->auth_string;
  if (rc == 0 && cfg->phone.key_file != NULL) {
    b->key_file = strdup(cfg->phone.key_file);
    if (b->key_file == NULL) rc = CAPSTAN_ENOMEM;
  }
  b->cfg.phone.key_file = b->key_file;
  if (cfg->phone.pending_key != NULL) {
    b->pending_key = cfg->phone.pending_key;
    EVP_PKEY_up_ref(b->pending_key);
  }
  b->cfg.phone.pending_key = b->pending_key;
  if (rc == 0) rc = copy_identity(&cfg->phone.lsc, &b->lsc);
  if (rc == 0) rc = copy_identity(&cfg->phone.mic, &b->mic);
  if (rc == 0) rc = copy_identity(&cfg->phone.sudi, &b->sudi);
  if (rc == 0 && cfg->trusted_tftp != NULL) {
    b->trusted = cfg->trusted_tftp;
    X509_up_ref(b->trusted);
  }
  if (rc != 0) {
    boot_free(b);
    return rc;
  }
  b->t0 = uv_hrtime();
  char file[32];
  snprintf(file, sizeof(file), "ITL%s.tlv", b->name);
  b->state = BOOT_ITL;
  capstan_phone_fetch_config_t fc = {
      .transport = cfg->transport,
      .addr = cfg->file_addr,
      .bind_addr = cfg->phone.bind_addr,
      .has_bind = cfg->phone.has_bind,
      .name = file,
      .max_bytes = cfg->max_file_bytes,
      .timeout_ms = cfg->phone.step_timeout_ms,
      .tftp_rto_ms = cfg->tftp_rto_ms,
      .tftp_retries = cfg->tftp_retries,
      .tftp_blksize = cfg->tftp_blksize,
      .keep_alive = cfg->http_keep_alive && cfg->transport == CAPSTAN_PHONE_TRANSPORT_HTTP,
  };
  rc = capstan_phone_fetch_start(loop, &fc, on_fetched, b, &b->fetch);
  if (rc != 0) {
    boot_free(b);
    return rc;
  }
  if (out != NULL) *out = b;
  return 0;
}

void capstan_phone_boot_abort(capstan_phone_boot_t *b) {
  if (b == NULL) return;
  if (b->fetch != NULL) capstan_phone_fetch_abort(b->fetch);
  if (b->capf != NULL) capstan_phone_abort(b->capf);
}

/* ---- JSON ---------------------------------------------------------------- */

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

static void append_json_str(char *buf, size_t size, size_t *off, const char *s) {
  appendf(buf, size, off, "\"");
  for (; *s != '\0'; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') {
      appendf(buf, size, off, "\\%c", c);
    } else if (c < 0x20 || c >= 0x7f) {
      appendf(buf, size, off, "\\u%04x", c);
    } else {
      appendf(buf, size, off, "%c", c);
    }
  }
  appendf(buf, size, off, "\"");
}

#define JBOOL(x) ((x) ? "true" : "false")

size_t capstan_phone_boot_result_json(const capstan_phone_boot_result_t *r, char *buf,
                                      size_t size) {
  if (size == 0) return 0;
  size_t off = 0;
  appendf(buf, size, &off, "{\"result\":\"%s\",\"failure\":\"%s\",\"detail\":",
          r->failure == CAPSTAN_PHONE_BOOT_NONE ? "ok" : "error",
          capstan_phone_boot_failure_name(r->failure));
  append_json_str(buf, size, &off, r->detail);
  appendf(buf, size, &off,
          ",\"itl_fallback\":%s,\"itl_records\":%u,\"cert_hash\":\"%s\",\"server_hash\":\"%s\","
          "\"own_hash\":\"%s\",\"capf_auth_mode\":%d,\"encr_config\":%s,\"decrypted\":%s,"
          "\"full_config\":%s,\"enrolled\":%s,\"lsc_md5\":\"%s\",\"files\":%u,\"connections\":%u,"
          "\"total_ms\":%.3f,\"steps\":{",
          JBOOL(r->itl_fallback), r->itl_records, capstan_phone_cert_hash_name(r->cert_hash),
          r->server_hash, r->own_hash, r->capf_auth_mode, JBOOL(r->encr_config),
          JBOOL(r->decrypted), JBOOL(r->full_config), JBOOL(r->enrolled), r->lsc_md5, r->files,
          r->connections, r->total_ms);
  int first = 1;
  for (int i = 0; i < CAPSTAN_PHONE_STEP_COUNT; i++) {
    const capstan_phone_boot_step_t *st = &r->steps[i];
    if (!st->ran) continue;
    appendf(buf, size, &off,
            "%s\"%s\":{\"ok\":%s,\"ms\":%.3f,\"bytes\":%zu,\"error\":\"%s\",\"code\":%d,"
            "\"retransmits\":%u}",
            first ? "" : ",", capstan_phone_boot_step_name((capstan_phone_boot_step_id_t)i),
            JBOOL(st->ok), st->ms, st->bytes, capstan_phone_fetch_error_name(st->fetch_error),
            st->code, st->retransmits);
    first = 0;
  }
  appendf(buf, size, &off, "}");
  if (r->capf_ran) {
    char capf[512];
    capstan_phone_result_json(&r->capf, capf, sizeof(capf));
    appendf(buf, size, &off, ",\"capf\":%s", capf);
  }
  appendf(buf, size, &off, "}");
  if (off >= size) {
    buf[size - 1] = '\0';
    return size - 1;
  }
  buf[off] = '\0';
  return off;
}

/* ---- Blocking helper ------------------------------------------------------ */

static void run_one_done(capstan_phone_boot_t *boot, void *arg, capstan_phone_boot_result_t *res) {
  (void)boot;
  capstan_phone_boot_result_t *out = arg;
  *out = *res;
  memset(res, 0, sizeof(*res));
}

int capstan_phone_boot_run_one(const capstan_phone_boot_config_t *cfg,
                               capstan_phone_boot_result_t *out) {
  memset(out, 0, sizeof(*out));
  uv_loop_t loop;
  int rc = uv_loop_init(&loop);
  if (rc != 0) return rc;
  capstan_phone_boot_config_t c = *cfg;
  SSL_CTX *own_ctx = NULL;
  capstan_phone_keypool_t *own_keys = NULL;
  if (c.phone.ssl_ctx == NULL) {
    char err[128];
    own_ctx = capstan_phone_ssl_ctx_new(NULL, err, sizeof(err));
    if (own_ctx == NULL) rc = CAPSTAN_ENOMEM;
    c.phone.ssl_ctx = own_ctx;
  }
  if (rc == 0 && c.phone.keys == NULL) {
    own_keys = capstan_phone_keypool_new(NULL, 1);
    if (own_keys == NULL) rc = CAPSTAN_ENOMEM;
    c.phone.keys = own_keys;
  }
  if (rc == 0) rc = capstan_phone_boot_start(&loop, &c, run_one_done, out, NULL);
  if (rc == 0) uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  SSL_CTX_free(own_ctx);
  capstan_phone_keypool_free(own_keys);
  return rc;
}
