/* SEP<MAC>.cnf.xml: validation and completion of the operator's base
 * configuration, and the partial configuration served to devices whose
 * full configuration is encrypted. Format: docs/spec/file-formats.md,
 * "Configuration files and the certificate hash". Parsing with expat.
 *
 * Documents are handled as bytes: completion replaces only the managed
 * top-level children of <device> (capfAuthMode, capfList, certHash,
 * encrConfig), located through expat's byte offsets, and copies every other
 * byte unchanged. Accepted documents: UTF-8 (or US-ASCII / ISO-8859-1), root
 * element <device>, no DOCTYPE, at most CAPSTAN_CNFXML_MAX bytes.
 *
 * Errors: 0, CAPSTAN_EINVAL with a message "line N: reason" in |err|
 * (NUL-terminated, truncated to |errlen|; |err| may be NULL), or
 * CAPSTAN_ENOMEM. Output documents are malloc'd, NUL-terminated (the NUL is
 * not counted in |*out_len|); the caller frees them with free(). */
#ifndef CAPSTAN_CORE_FILES_CNFXML_H
#define CAPSTAN_CORE_FILES_CNFXML_H

#include <stddef.h>
#include <stdint.h>

#define CAPSTAN_CNFXML_MAX (1024u * 1024u)
#define CAPSTAN_CNFXML_MAX_HOST 255u

/* The CAPF elements capstan writes into a configuration. */
typedef struct {
  /* <capfAuthMode>: a capstan_auth_mode_t (core/base/phone.h), whose
   * numbers are the CAPF protocol's AUTH_TYPE (docs/spec/file-formats.md):
   * 1 authentication string, 2 null string, 3 existing LSC, 4 existing MIC;
   * 0 (NONE) when no operation is scheduled. */
  int auth_mode;
  const char *capf_host; /* <processNodeName>, XML-escaped on output */
  uint16_t capf_port;    /* <phonePort>, normally 3804 */
  /* <certHash>: MD5 of the phone's current certificate as 32 lower-case hex
   * digits, or NULL / "" for an empty <certHash></certHash>. */
  const char *cert_hash;
  int encr_config; /* <encrConfig>true</encrConfig> if non-zero, else false */
} capstan_cnfxml_params_t;

/* capstan_cnfxml_validate checks that |xml| is well-formed with root
 * <device>. Messages: "line N: <expat error string>", "line N: root element
 * is <x>, expected <device>", "line N: DOCTYPE not allowed". */
int capstan_cnfxml_validate(const uint8_t *xml, size_t len, char *err, size_t errlen);

/* capstan_cnfxml_complete returns |base| with, inside the root <device>,
 * the first top-level capfAuthMode, capfList, certHash and encrConfig
 * replaced by the values in |params| (further top-level copies of these
 * removed), and the missing ones inserted before </device> in that order.
 * All other bytes are kept. CAPSTAN_EINVAL for an invalid |base| or bad
 * parameters (auth mode outside 0..4, empty or over-long host, cert hash
 * not 32 lower-case hex digits). */
int capstan_cnfxml_complete(const uint8_t *base, size_t len, const capstan_cnfxml_params_t *params,
                            uint8_t **out, size_t *out_len, char *err, size_t errlen);

/* capstan_cnfxml_partial returns the partial configuration for a device
 * whose full configuration |full| is encrypted:
 *
 *   <device>
 *     <fullConfig>false</fullConfig>
 *     (ipAddressMode, loadInformation, capfAuthMode, capfList: the first
 *      top-level one of each in |full|, bytes copied, when present)
 *     <certHash>HASH</certHash>
 *     <encrConfig>true</encrConfig>
 *   </device>
 *
 * preceded by |full|'s XML declaration if it has one (so the declared
 * encoding still applies to the copied bytes). |cert_hash| as in
 * capstan_cnfxml_params_t. */
int capstan_cnfxml_partial(const uint8_t *full, size_t len, const char *cert_hash, uint8_t **out,
                           size_t *out_len, char *err, size_t errlen);

/* capstan_cnfxml_default_base returns the base configuration used when the
 * operator gave none for a device (static storage; do not free):
 *
 *   <?xml version="1.0" encoding="UTF-8"?>
 *   <device>
 *     <!-- default base configuration from capstan: ... -->
 *   </device>
 *
 * capstan_cnfxml_complete adds the CAPF and security elements to it. */
const char *capstan_cnfxml_default_base(size_t *len);

#endif
