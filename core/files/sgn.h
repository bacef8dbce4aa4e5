/* `<name>.sgn`: the signed header (VERSION 1.0, FILENAME `<name>.sgn`)
 * followed by the unchanged bytes of `<name>`. Used for
 * SEP<MAC>.cnf.xml.sgn and any other file a deployment wants signed.
 * Format: docs/spec/file-formats.md; header details: sgnhdr.h. */
#ifndef CAPSTAN_CORE_FILES_SGN_H
#define CAPSTAN_CORE_FILES_SGN_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/base.h>

#include "core/files/sgnhdr.h"

/* capstan_sgnfile_prepare prepares `<name>.sgn` for signing: |name| is the
 * unsigned file's name (".sgn" is appended for FILENAME), |content| its
 * bytes, |signer_cert| the TFTP certificate, |hash_alg| SHA-1 or SHA-512.
 * Finish with capstan_sgn_compute + capstan_sgn_finish; |out| is cleaned up
 * by the caller with capstan_sgn_prepared_cleanup. Errors as
 * capstan_sgn_prepare. */
int capstan_sgnfile_prepare(const char *name, const uint8_t *content, size_t len, X509 *signer_cert,
                            int hash_alg, uint32_t timestamp, capstan_sgn_prepared_t *out,
                            const char **why);

/* capstan_sgnfile_build does prepare + sign + finish with |signer_key| (the
 * TFTP private key). |*out| is malloc'd; caller frees with free(). */
int capstan_sgnfile_build(const char *name, const uint8_t *content, size_t len, X509 *signer_cert,
                          EVP_PKEY *signer_key, int hash_alg, uint32_t timestamp, uint8_t **out,
                          size_t *out_len, const char **why);

/* capstan_sgnfile_parse checks that |file| is a VERSION 1.0 signed file
 * (header parsed as capstan_sgn_parse) and returns the header in |info|;
 * the original content is info->payload. Does not verify the signature
 * (capstan_sgn_verify). */
int capstan_sgnfile_parse(const uint8_t *file, size_t len, capstan_sgn_info_t *info,
                          const char **why);

#endif
