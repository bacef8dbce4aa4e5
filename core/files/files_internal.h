/* Helpers shared by the file writers (internal to core/files).
 *
 * The DN and serial helpers are interim: core/pki.h will provide
 * capstan_pki_dn_string and capstan_pki_serial_bytes with the same
 * behaviour; once it is on main these become thin calls to it (one
 * implementation in the tree). */
#ifndef CAPSTAN_FILES_INTERNAL_H
#define CAPSTAN_FILES_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/base.h>

/* capstan_files_dn_string writes |name| as comma-separated RFC 4514
 * attributes in certificate order (first RDN first), e.g.
 * "CN=CAPF-1a2b3c4d,O=Example,C=NZ"; attributes of a multi-valued RDN are
 * joined with '+'. |*out| is malloc'd, NUL-terminated; caller frees.
 * Returns 0, CAPSTAN_ENOMEM or CAPSTAN_EINVAL (undecodable string). */
int capstan_files_dn_string(const X509_NAME *name, char **out);

/* capstan_files_serial_bytes writes |cert|'s serial as big-endian bytes
 * without leading zero bytes (a zero serial is one 0 byte). Returns 0,
 * CAPSTAN_EINVAL for a negative serial, CAPSTAN_ERANGE if |cap| is too
 * small. */
int capstan_files_serial_bytes(const X509 *cert, uint8_t *out, size_t cap, size_t *len);

#endif
