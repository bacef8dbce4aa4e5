/* `SEP<MAC>.cnf.xml.enc.sgn`: an encrypted configuration. Format:
 * docs/spec/file-formats.md, ".enc.sgn".
 *
 * Header VERSION 2.0 (sgnhdr.h) with, after TIMESTAMP:
 *   ENCRYPTION_INFO(16){
 *     ENCRYPTION_IV_INFO(17){ 18: 0 | ENCRYPTION_IV(19): 16 bytes |
 *                             ENCRYPTION_PADDING(20): u16 }
 *     ENCRYPTION_KEY_INFO(21){ 22: 0 | ENCRYPTION_KEY_SIZE(23): u16 bits |
 *                              ENCRYPTION_KEY_ALGORITHM(24): 1 |
 *                              ENCRYPTION_KEY(25): wrapped key } }
 *   ENCRYPTION_HASH_ALGORITHM(26): 1 or 3 | ENCRYPTION_HASH(27): digest
 * Containers 16, 17, 21 carry the full byte count of the fields they hold
 * (16 = 3 + |17| + 3 + |21|; 17 = 4 + 19 + 5 = 28; 21 = 4 + 5 + 4 + 3 + n).
 *
 * Payload: the configuration padded with 1..16 bytes of 0x0D to a multiple
 * of 16 (a whole block of 16 when already aligned), AES-128-CBC under a
 * fresh random key and IV, no further padding. The AES key is wrapped with
 * the phone's RSA public key (PKCS#1 v1.5 encryption). The whole file is
 * then signed with the TFTP key like any signed file. */
#ifndef CAPSTAN_CORE_FILES_ENCCONF_H
#define CAPSTAN_CORE_FILES_ENCCONF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/base.h>

#include "core/files/sgnhdr.h"

/* The reason given when the phone's key is EC (status, logs, metrics). */
#define CAPSTAN_ENCCONF_EC_REASON "phone key is EC: encrypted configuration needs an RSA key"

typedef struct {
  X509 *signer_cert;     /* TFTP certificate */
  EVP_PKEY *phone_pub;   /* the phone's public key (RSA, from its LSC or MIC) */
  const char *filename;  /* "SEP<MAC>.cnf.xml.enc.sgn" */
  const uint8_t *config; /* the full SEP<MAC>.cnf.xml */
  size_t config_len;
  int enc_hash_alg;  /* ENCRYPTION_HASH_ALGORITHM: CAPSTAN_SGN_HASH_SHA1 or _SHA512 */
  int sign_hash_alg; /* header HASH_ALGORITHM: CAPSTAN_SGN_HASH_SHA1 or _SHA512 */
  uint32_t timestamp;
} capstan_encconf_params_t;

/* capstan_encconf_key_usable says whether |phone_pub| can receive an
 * encrypted configuration: 0 for RSA up to 4096 bits; CAPSTAN_EINVAL with
 * |why| = CAPSTAN_ENCCONF_EC_REASON for an EC key, another reason for
 * other keys. */
int capstan_encconf_key_usable(EVP_PKEY *phone_pub, const char **why);

/* Why a device cannot get its encrypted configuration now, or NULL when it
 * can (or does not use one): |encrypted| is its encrypted-config choice,
 * |spki| the DER SubjectPublicKeyInfo on record (may be empty). For
 * `device show` and the logs. */
const char *capstan_encconf_unavailable_reason(bool encrypted, const uint8_t *spki,
                                               size_t spki_len);

/* capstan_encconf_prepare encrypts the configuration and builds the file
 * for signing (finish with capstan_sgn_compute + capstan_sgn_finish, clean
 * up with capstan_sgn_prepared_cleanup). The AES key exists only during
 * the call. Errors: CAPSTAN_EINVAL (EC phone key: |why| =
 * CAPSTAN_ENCCONF_EC_REASON; bad hash; header errors), CAPSTAN_ECRYPTO,
 * CAPSTAN_ENOMEM. */
int capstan_encconf_prepare(const capstan_encconf_params_t *params, capstan_sgn_prepared_t *out,
                            const char **why);

/* capstan_encconf_build = prepare + sign with |signer_key| + finish.
 * |*out| is malloc'd; caller frees with free(). */
int capstan_encconf_build(const capstan_encconf_params_t *params, EVP_PKEY *signer_key,
                          uint8_t **out, size_t *out_len, const char **why);

/* capstan_encconf_decrypt is the phone's side: parses |file| (VERSION 2.0),
 * unwraps the AES key with |phone_priv|, decrypts, checks that the padding
 * is ENCRYPTION_PADDING bytes of 0x0D and that ENCRYPTION_HASH matches, and
 * returns the configuration in |*plain| (malloc'd; caller frees with
 * free()). Does not verify the header signature (capstan_sgn_verify).
 * CAPSTAN_EINVAL for a malformed file, CAPSTAN_EACCES when the key cannot
 * unwrap it or the padding/hash do not match, CAPSTAN_ENOMEM. */
int capstan_encconf_decrypt(const uint8_t *file, size_t len, EVP_PKEY *phone_priv, uint8_t **plain,
                            size_t *plain_len, const char **why);

#endif
