/* The phone's certificate request (SIGN_CERT_RESPONSE's CERT_REQUEST), and
 * the phone's pending key on disk. See phone.h. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bytestring.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include "bench/phone/phone.h"
#include "core/base/error.h"
#include "core/pki/pki.h"

/* A PKCS#8 key file is small: RSA 4096 is about 2.4 KB. */
#define KEY_FILE_MAX 16384
/* The garbage request: random bytes about the size of a real one. */
#define GARBAGE_LEN 300

#define NAME_ENTRY(id, name) name,
static const char *const g_csr_mode_names[] = {CAPSTAN_PHONE_CSR_MODES(NAME_ENTRY)};
#undef NAME_ENTRY
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

const char *capstan_phone_csr_mode_name(capstan_phone_csr_mode_t mode) {
  return (unsigned)mode < COUNT(g_csr_mode_names) ? g_csr_mode_names[mode] : "unknown";
}

int capstan_phone_parse_csr_mode(const char *name, capstan_phone_csr_mode_t *out) {
  for (unsigned i = 0; i < COUNT(g_csr_mode_names); i++) {
    if (name != NULL && strcasecmp(name, g_csr_mode_names[i]) == 0) {
      *out = (capstan_phone_csr_mode_t)i;
      return 0;
    }
  }
  return CAPSTAN_EINVAL;
}

/* A PKCS#10 request for |key|, subject CN=|cn| and nothing else, signed by
 * |key| with SHA-256 (ECDSA with SHA-256 for EC). */
static int make_req(EVP_PKEY *key, const char *cn, uint8_t **der, size_t *len) {
  int rc = CAPSTAN_ECRYPTO;
  X509_REQ *req = X509_REQ_new();
  X509_NAME *name = X509_NAME_new();
  if (req == NULL || name == NULL ||
      !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const uint8_t *)cn, -1, -1, 0) ||
      !X509_REQ_set_version(req, X509_REQ_VERSION_1) || !X509_REQ_set_subject_name(req, name) ||
      !X509_REQ_set_pubkey(req, key) || !X509_REQ_sign(req, key, EVP_sha256())) {
    goto done;
  }
  rc = capstan_pki_req_to_der(req, der, len);
done:
  X509_REQ_free(req);
  X509_NAME_free(name);
  ERR_clear_error();
  return rc;
}

/* A key of the same type and size as |key|. */
static int other_key(EVP_PKEY *key, EVP_PKEY **out) {
  int alg = EVP_PKEY_id(key) == EVP_PKEY_RSA ? CAPSTAN_KEY_RSA : CAPSTAN_KEY_EC;
  return capstan_pki_generate_key(alg, (unsigned)EVP_PKEY_bits(key), out);
}

int capstan_phone_make_csr(EVP_PKEY *key, const char *device_name, capstan_phone_csr_mode_t mode,
                           uint8_t **der, size_t *len) {
  if (der == NULL || len == NULL) return CAPSTAN_EINVAL;
  *der = NULL;
  *len = 0;
  if (key == NULL || device_name == NULL || device_name[0] == '\0') return CAPSTAN_EINVAL;
  int rc;
  switch (mode) {
    case CAPSTAN_PHONE_CSR_OK:
      return make_req(key, device_name, der, len);
    case CAPSTAN_PHONE_CSR_WRONG_KEY: {
      EVP_PKEY *other = NULL;
      rc = other_key(key, &other);
      if (rc == 0) rc = make_req(other, device_name, der, len);
      EVP_PKEY_free(other);
      return rc;
    }
    case CAPSTAN_PHONE_CSR_WRONG_CN:
      return make_req(
          key, strcmp(device_name, "SEP000000000000") != 0 ? "SEP000000000000" : "SEPFFFFFFFFFFFF",
          der, len);
    case CAPSTAN_PHONE_CSR_BAD_SIGNATURE:
      /* The request ends with its signature (a BIT STRING): change its last
       * byte, so that the DER still parses but the signature is wrong. */
      rc = make_req(key, device_name, der, len);
      if (rc == 0) (*der)[*len - 1] ^= 0x01;
      return rc;
    case CAPSTAN_PHONE_CSR_GARBAGE:
      *der = malloc(GARBAGE_LEN);
      if (*der == NULL) return CAPSTAN_ENOMEM;
      RAND_bytes(*der, GARBAGE_LEN);
      (*der)[0] = 0x00; /* never a SEQUENCE: not a request, whatever follows */
      *len = GARBAGE_LEN;
      return 0;
    default:
      /* refuse and silent send no request. */
      return CAPSTAN_EINVAL;
  }
}

int capstan_phone_load_key_file(const char *path, EVP_PKEY **out) {
  *out = NULL;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno == ENOENT ? CAPSTAN_ENOENT : CAPSTAN_EIO;
  uint8_t *buf = malloc(KEY_FILE_MAX);
  if (buf == NULL) {
    close(fd);
    return CAPSTAN_ENOMEM;
  }
  size_t len = 0;
  for (;;) {
    ssize_t n = read(fd, buf + len, KEY_FILE_MAX - len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    len += (size_t)n;
    if (len == KEY_FILE_MAX) break;
  }
  close(fd);
  int rc = CAPSTAN_EINVAL;
  if (len > 0 && len < KEY_FILE_MAX) {
    CBS cbs;
    CBS_init(&cbs, buf, len);
    EVP_PKEY *key = EVP_parse_private_key(&cbs);
    if (key != NULL && CBS_len(&cbs) == 0) {
      *out = key;
      rc = 0;
    } else {
      EVP_PKEY_free(key);
    }
  }
  OPENSSL_cleanse(buf, KEY_FILE_MAX);
  free(buf);
  ERR_clear_error();
  return rc;
}

int capstan_phone_save_key_file(const char *path, EVP_PKEY *key) {
  CBB cbb;
  uint8_t *der = NULL;
  size_t len = 0;
  if (!CBB_init(&cbb, 2048) || !EVP_marshal_private_key(&cbb, key) ||
      !CBB_finish(&cbb, &der, &len)) {
    CBB_cleanup(&cbb);
    ERR_clear_error();
    return CAPSTAN_ECRYPTO;
  }
  /* Write then rename: the key on disk is always a whole one, the old or the
   * new (not synced: a simulator, and the bench writes one per phone). */
  size_t plen = strlen(path);
  char *tmp = malloc(plen + 5);
  int rc = CAPSTAN_ENOMEM;
  if (tmp != NULL) {
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", 5);
    rc = CAPSTAN_EIO;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd >= 0) {
      size_t off = 0;
      int ok = fchmod(fd, 0600) == 0; /* also when the file was there */
      while (off < len) {
        ssize_t n = write(fd, der + off, len - off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        off += (size_t)n;
      }
      ok = ok && off == len;
      ok = close(fd) == 0 && ok;
      if (ok && rename(tmp, path) == 0) {
        rc = 0;
      } else {
        unlink(tmp);
      }
    }
    free(tmp);
  }
  OPENSSL_cleanse(der, len);
  OPENSSL_free(der);
  return rc;
}
