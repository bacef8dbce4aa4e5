/* CAPF wire codec: framing, parsing and building of CAPF protocol messages
 * (protocol version 3, see docs/spec/capf-protocol.md). Used by the server
 * (handlers/capf) and by the phone simulator (bench/phone).
 *
 * Pure functions over caller-owned buffers: no I/O, no globals, no logging.
 * Every byte goes through BoringSSL's CBS/CBB. Errors follow core/base/error.h:
 * 0 on success, a negative CAPSTAN_E* code on failure.
 *
 * Message layout:
 *   protocol id 0x55 (u8) | command (u8) | session id (u32) | length (u16) |
 *   elements: tag (u8) | length (u16) | value, until the element area ends. */
#ifndef CAPSTAN_HANDLERS_CAPF_WIRE_H
#define CAPSTAN_HANDLERS_CAPF_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/bytestring.h>

#include "core/base/phone.h"

/* ---- Constants ----------------------------------------------------------- */

#define CAPSTAN_CAPF_PROTOCOL_ID 0x55
#define CAPSTAN_CAPF_PROTOCOL_VERSION 3
#define CAPSTAN_CAPF_HEADER_LEN 8
/* The element area length is a uint16: this is the largest possible message.
 * A server may enforce a smaller cap through capstan_capf_frame_max. */
#define CAPSTAN_CAPF_MAX_ELEMENTS_LEN 65535
#define CAPSTAN_CAPF_MAX_MESSAGE (CAPSTAN_CAPF_HEADER_LEN + CAPSTAN_CAPF_MAX_ELEMENTS_LEN)
/* Longest device name (without the NUL), e.g. "SEP58971ECC97C1" is 15. The
 * protocol sets no limit of its own: this is capstan's. */
#define CAPSTAN_CAPF_DEVICE_NAME_MAX CAPSTAN_DEVICE_NAME_MAX
/* Longest authentication string (without the NUL). */
#define CAPSTAN_CAPF_AUTH_PASSWORD_MAX 64
/* CERTIFICATE value prefix: 0x01 | u16 (DER length + 2) | 0x00 | type. */
#define CAPSTAN_CAPF_CERT_PREFIX_LEN 5
/* Largest DER certificate that fits in one CERTIFICATE element. */
#define CAPSTAN_CAPF_CERT_DER_MAX (CAPSTAN_CAPF_MAX_ELEMENTS_LEN - 3 - CAPSTAN_CAPF_CERT_PREFIX_LEN)

/* ---- Name tables (X-macros: one list, enum and names generated) ----------
 * The values are the protocol's, as docs/spec/capf-protocol.md fixes them.
 * AUTH_TYPE, hash ids, KEY_TYPE and CERTIFICATE_TYPE carry concepts that
 * core/base/phone.h defines for all of capstan; wire.c asserts at compile
 * time that the two agree value for value, so a value read from the wire
 * is the base value (and the reverse) without translation. */

#define CAPSTAN_CAPF_COMMANDS(X) \
  X(AUTH_REQUEST, 1)             \
  X(AUTH_RESPONSE, 2)            \
  X(KEY_GEN_REQUEST, 3)          \
  X(KEY_GEN_RESPONSE, 4)         \
  X(ENCRYPT_RESPONSE, 5)         \
  X(ENCRYPT_REQUEST, 6)          \
  X(DECRYPT_REQUEST, 7)          \
  X(DECRYPT_RESPONSE, 8)         \
  X(STORE_CERT_REQUEST, 9)       \
  X(STORE_CERT_RESPONSE, 10)     \
  X(FETCH_CERT_REQUEST, 11)      \
  X(FETCH_CERT_RESPONSE, 12)     \
  X(DELETE_CERT_REQUEST, 13)     \
  X(DELETE_CERT_RESPONSE, 14)    \
  X(END_SESSION, 15)             \
  X(RETRY_LATER, 16)             \
  X(REQUEST_IN_PROGRESS, 17)     \
  X(STATUS_ENQUIRY, 18)          \
  X(STATUS_RESPONSE, 19)         \
  X(ABORT_REQUEST, 20)           \
  X(ABORT_RESPONSE, 21)          \
  X(SIGN_CERT_REQUEST, 22)       \
  X(SIGN_CERT_RESPONSE, 23)

typedef enum {
#define X(id, v) CAPSTAN_CAPF_CMD_##id = v,
  CAPSTAN_CAPF_COMMANDS(X)
#undef X
} capstan_capf_command_t;
#define CAPSTAN_CAPF_CMD_MIN 1
#define CAPSTAN_CAPF_CMD_MAX 23

/* Element tags. 14 and 15 are not known and are treated as unknown tags. */
#define CAPSTAN_CAPF_ELEMENTS(X) \
  X(REASON, 1)                   \
  X(REASON_INFO, 2)              \
  X(CERTIFICATE_TYPE, 3)         \
  X(CERTIFICATE, 4)              \
  X(CERTIFICATE_ID, 5)           \
  X(SIGNED_DATA, 6)              \
  X(VERSION, 7)                  \
  X(AUTH_TYPE, 8)                \
  X(PUBLIC_KEY, 9)               \
  X(KEY_SIZE, 10)                \
  X(AUTH_PASSWORD, 11)           \
  X(RETRY_DELAY, 12)             \
  X(DEVICE_NAME, 13)             \
  X(SUDI_DATA, 16)               \
  X(KEY_TYPE, 17)                \
  X(EC_CURVE, 18)                \
  X(DIGEST_TYPE, 19)             \
  X(SHA2_SIGNED_DATA, 20)        \
  X(CERT_REQUEST, 21) /* extension: phone-sent DER PKCS#10 (SIGN_CERT_RESPONSE) */

typedef enum {
#define X(id, v) CAPSTAN_CAPF_EL_##id = v,
  CAPSTAN_CAPF_ELEMENTS(X)
#undef X
} capstan_capf_element_t;
/* Highest known tag; parsed element slots are indexed by tag 0..this. */
#define CAPSTAN_CAPF_EL_MAX 21

#define CAPSTAN_CAPF_REASONS(X) \
  X(NO_ACTION, 0)               \
  X(UPDATE_CERTIFICATE, 1)      \
  X(INVALID_ELEMENT, 7)         \
  X(UNKNOWN_DEVICE, 9)

typedef enum {
#define X(id, v) CAPSTAN_CAPF_REASON_##id = v,
  CAPSTAN_CAPF_REASONS(X)
#undef X
} capstan_capf_reason_t;

#define CAPSTAN_CAPF_AUTH_TYPES(X) \
  X(NONE, 0)                       \
  X(STRING, 1)                     \
  X(NULL_STRING, 2)                \
  X(LSC, 3)                        \
  X(MIC, 4)

typedef enum {
#define X(id, v) CAPSTAN_CAPF_AUTH_##id = v,
  CAPSTAN_CAPF_AUTH_TYPES(X)
#undef X
} capstan_capf_auth_type_t;

#define CAPSTAN_CAPF_HASHES(X) \
  X(SHA1, 1)                   \
  X(SHA256, 2)                 \
  X(SHA512, 3)

typedef enum {
#define X(id, v) CAPSTAN_CAPF_HASH_##id = v,
  CAPSTAN_CAPF_HASHES(X)
#undef X
} capstan_capf_hash_t;

#define CAPSTAN_CAPF_CERT_TYPES(X) \
  X(LSC, 1)                        \
  X(MIC, 2)

typedef enum {
#define X(id, v) CAPSTAN_CAPF_CERT_##id = v,
  CAPSTAN_CAPF_CERT_TYPES(X)
#undef X
} capstan_capf_cert_type_t;

#define CAPSTAN_CAPF_KEY_TYPES(X) \
  X(RSA, 0)                       \
  X(EC, 1)

typedef enum {
#define X(id, v) CAPSTAN_CAPF_KEY_##id = v,
  CAPSTAN_CAPF_KEY_TYPES(X)
#undef X
} capstan_capf_key_type_t;

#define CAPSTAN_CAPF_CURVES(X) \
  X(P256, 0)                   \
  X(P384, 1)                   \
  X(P521, 2)

typedef enum {
#define X(id, v) CAPSTAN_CAPF_CURVE_##id = v,
  CAPSTAN_CAPF_CURVES(X)
#undef X
} capstan_capf_curve_t;

/* Each returns a static name ("AUTH_REQUEST", "REASON", "UPDATE_CERTIFICATE",
 * "STRING", "SHA512", "LSC", "RSA", "P256") or "UNKNOWN" for any other value.
 * Never NULL. */
const char *capstan_capf_command_name(int command);
const char *capstan_capf_element_name(int tag);
const char *capstan_capf_reason_name(int reason);
const char *capstan_capf_auth_type_name(int auth_type);
const char *capstan_capf_hash_name(int hash_id);
const char *capstan_capf_cert_type_name(int cert_type);
const char *capstan_capf_key_type_name(int key_type);
const char *capstan_capf_curve_name(int curve);

/* 1 if |command| is one of the known codes 1..23, else 0. */
int capstan_capf_command_is_known(int command);
/* 1 if |tag| is a known element tag (the table above), else 0. */
int capstan_capf_element_is_known(int tag);
/* 1 if the server may send |tag| inside |command|, else 0 (the spec's
 * "server-sent" list: RETRY_DELAY only inside RETRY_LATER). */
int capstan_capf_server_may_send(int command, int tag);
/* 1 if |command| is sent by the server (AUTH_REQUEST, KEY_GEN_REQUEST,
 * STORE/FETCH/DELETE_CERT_REQUEST, END_SESSION, RETRY_LATER), else 0. */
int capstan_capf_command_is_server_sent(int command);

/* ---- Framing ------------------------------------------------------------- */

/* Outcome of framing besides errors: not enough bytes yet. */
#define CAPSTAN_CAPF_NEED_MORE 1

/* Finds the first message in a stream buffer |buf| of |len| bytes.
 * Returns:
 *   0                      a complete message is at buf[0..*msg_len);
 *   CAPSTAN_CAPF_NEED_MORE more bytes are needed (*msg_len untouched);
 *   CAPSTAN_EPROTO         the first byte is not the protocol id 0x55;
 *   CAPSTAN_ERANGE         the header announces a message longer than
 *                          |max_message| (capped at CAPSTAN_CAPF_MAX_MESSAGE).
 * A wrong protocol id is reported as soon as one byte is there, and an
 * oversized length as soon as the header is, so a reader never buffers
 * bytes it will refuse. */
int capstan_capf_frame_max(const uint8_t *buf, size_t len, size_t max_message, size_t *msg_len);
/* Same with max_message = CAPSTAN_CAPF_MAX_MESSAGE. */
int capstan_capf_frame(const uint8_t *buf, size_t len, size_t *msg_len);

/* ---- Parsing ------------------------------------------------------------- */

typedef struct {
  const uint8_t *data; /* points into the parsed message buffer */
  size_t len;
} capstan_capf_slice_t;

/* A parsed message. It holds pointers into the message buffer given to
 * capstan_capf_parse, so it is valid only as long as that buffer is. */
typedef struct {
  uint8_t command;     /* 1..23 */
  uint32_t session_id; /* as sent; the session layer checks it */
  uint16_t length;     /* element area length */
  /* Bit (1u << tag) is set when known element |tag| is present. */
  uint32_t present;
  /* Number of elements with an unknown tag (skipped). */
  unsigned unknown_count;
  /* Total number of elements, known and unknown. */
  unsigned element_count;
  /* Value of each known element, indexed by tag; valid when present. */
  capstan_capf_slice_t el[CAPSTAN_CAPF_EL_MAX + 1];
} capstan_capf_msg_t;

/* Parses exactly one message of |len| bytes at |msg| (normally the bytes
 * capstan_capf_frame delimited) into |*out|. Returns 0, or CAPSTAN_EPROTO
 * when: the header is short, the protocol id is not 0x55, the command is not
 * one of 1..23, the length disagrees with |len| (too long or too short), an
 * element is truncated or overruns the area, or a known tag appears twice.
 * Unknown tags are skipped and counted. Element values are not validated
 * here: use the accessors below. On error *out is zeroed. */
int capstan_capf_parse(const uint8_t *msg, size_t len, capstan_capf_msg_t *out);

/* 1 if known element |tag| is present in |m|, else 0. */
int capstan_capf_msg_has(const capstan_capf_msg_t *m, int tag);

/* Typed accessors. Each returns 0 on success, CAPSTAN_ENOENT when the element
 * is absent, CAPSTAN_EPROTO when its value is malformed. Outputs are written
 * only on success. */

/* Any element whose value is exactly 1 byte. */
int capstan_capf_get_u8(const capstan_capf_msg_t *m, int tag, uint8_t *out);
/* Any element whose value is exactly a big-endian uint16. */
int capstan_capf_get_u16(const capstan_capf_msg_t *m, int tag, uint16_t *out);
/* Raw value of any known element, possibly empty. */
int capstan_capf_get_bytes(const capstan_capf_msg_t *m, int tag, capstan_capf_slice_t *out);

int capstan_capf_get_reason(const capstan_capf_msg_t *m, uint8_t *out);
int capstan_capf_get_version(const capstan_capf_msg_t *m, uint8_t *out);
int capstan_capf_get_auth_type(const capstan_capf_msg_t *m, uint8_t *out);
/* Also checks the value is a known key type / curve / certificate type. */
int capstan_capf_get_key_type(const capstan_capf_msg_t *m, uint8_t *out);
int capstan_capf_get_ec_curve(const capstan_capf_msg_t *m, uint8_t *out);
int capstan_capf_get_certificate_type(const capstan_capf_msg_t *m, uint8_t *out);
int capstan_capf_get_key_size(const capstan_capf_msg_t *m, uint16_t *out);
int capstan_capf_get_retry_delay(const capstan_capf_msg_t *m, uint16_t *out);

/* DEVICE_NAME: must be 1..CAPSTAN_CAPF_DEVICE_NAME_MAX printable ASCII bytes
 * (0x21..0x7e) followed by exactly one NUL. Copies the name, NUL-terminated,
 * into |out|, which must hold CAPSTAN_CAPF_DEVICE_NAME_MAX + 1 bytes. */
int capstan_capf_get_device_name(const capstan_capf_msg_t *m,
                                 char out[CAPSTAN_CAPF_DEVICE_NAME_MAX + 1]);

/* AUTH_PASSWORD: 0..CAPSTAN_CAPF_AUTH_PASSWORD_MAX bytes with no NUL,
 * followed by exactly one NUL. |*out| is the value without the NUL (len 0
 * for an empty string sent as a single NUL); it points into the message,
 * so the secret is not copied around. */
int capstan_capf_get_auth_password(const capstan_capf_msg_t *m, capstan_capf_slice_t *out);

/* CERTIFICATE: checks the 5-byte prefix 0x01 | u16 (DER length + 2) | 0x00 |
 * type, that the lengths agree, that the DER is not empty and that the type
 * is LSC (1) or MIC (2). |*type| gets the type, |*der| the DER bytes (not
 * parsed as X.509 here). Either output may be NULL. */
int capstan_capf_get_certificate(const capstan_capf_msg_t *m, uint8_t *type,
                                 capstan_capf_slice_t *der);

/* SHA2_SIGNED_DATA: hash id (u8, 1..3) | u16 length | signature, lengths
 * agreeing, signature not empty. */
int capstan_capf_get_sha2_signed_data(const capstan_capf_msg_t *m, uint8_t *hash_id,
                                      capstan_capf_slice_t *sig);

/* Non-empty raw values. */
int capstan_capf_get_signed_data(const capstan_capf_msg_t *m, capstan_capf_slice_t *out);
int capstan_capf_get_public_key(const capstan_capf_msg_t *m, capstan_capf_slice_t *out);

/* SIGN_CERT_RESPONSE's CERT_REQUEST (extension): the phone's DER PKCS#10
 * request, not yet parsed. 0, or CAPSTAN_EPROTO when missing or empty. */
int capstan_capf_get_cert_request(const capstan_capf_msg_t *m, capstan_capf_slice_t *out);
int capstan_capf_get_sudi_data(const capstan_capf_msg_t *m, capstan_capf_slice_t *out);

/* Splits a SUDI_DATA value: 0x00 | u16 len | cert DER | 0x01 | u16 len |
 * SHA-1 signature | 0x03 | u16 len | SHA-512 signature, each part non-empty,
 * nothing left over. Returns 0 or CAPSTAN_EPROTO. */
int capstan_capf_parse_sudi(capstan_capf_slice_t sudi, capstan_capf_slice_t *cert,
                            capstan_capf_slice_t *sha1_sig, capstan_capf_slice_t *sha512_sig);

/* Checks the value of every known element |m| carries against the
 * protocol's layout for it, whether or not the message or the mode needs
 * that element: the sizes of 1-byte and u16 elements, CERTIFICATE_TYPE,
 * KEY_TYPE and EC_CURVE in their tables, CERTIFICATE's prefix (lengths
 * agreeing, type LSC or MIC, DER not empty), DEVICE_NAME and AUTH_PASSWORD
 * as their getters read them (one trailing NUL, within their limits),
 * SHA2_SIGNED_DATA's and SUDI_DATA's layouts. Elements whose layout the
 * protocol leaves open (REASON_INFO, CERTIFICATE_ID, SIGNED_DATA,
 * PUBLIC_KEY, DIGEST_TYPE, CERT_REQUEST) pass with any value. Values of
 * REASON, VERSION and AUTH_TYPE are not judged here (the session does).
 * Returns 0, or CAPSTAN_EPROTO with *bad_tag (if not NULL) the first
 * malformed element's tag. */
int capstan_capf_validate(const capstan_capf_msg_t *m, int *bad_tag);

/* Writes a short description for logs into |buf| (always NUL-terminated when
 * |size| > 0): "AUTH_RESPONSE session=0x0000abcd elements=REASON,VERSION,..."
 * Element names only, never values (they can be secrets). */
void capstan_capf_msg_describe(const capstan_capf_msg_t *m, char *buf, size_t size);

/* ---- Building ------------------------------------------------------------ */

/* Builds one message into one contiguous buffer, so it can go out in a
 * single SSL_write (one TLS record). Errors are sticky: after any failure
 * the other calls return the same error, finish fails, and only cleanup
 * is needed. Embedded struct: begin, add..., finish or cleanup. */
typedef struct {
  CBB cbb;   /* the whole message */
  CBB area;  /* the u16-length-prefixed element area */
  int error; /* first error, or 0 */
  int server_side;
  uint8_t command;
  int started;
} capstan_capf_builder_t;

/* Starts a message. With |server_side| set, the builder refuses (EINVAL) a
 * command the server does not send and, later, any element tag the server
 * must not send in that command: a safety net so that the server never puts
 * a tag on the wire that known clients reject. Returns 0, CAPSTAN_EINVAL
 * (unknown command, or a phone command with server_side) or CAPSTAN_ENOMEM.
 * Call capstan_capf_builder_cleanup in every case. */
int capstan_capf_builder_begin(capstan_capf_builder_t *b, int command, uint32_t session_id,
                               int server_side);

/* Add one element. Return 0, CAPSTAN_EINVAL (tag refused, see begin),
 * CAPSTAN_ERANGE (value longer than a u16 length or the message limit), or
 * CAPSTAN_ENOMEM. */
int capstan_capf_builder_add_u8(capstan_capf_builder_t *b, int tag, uint8_t v);
int capstan_capf_builder_add_u16(capstan_capf_builder_t *b, int tag, uint16_t v);
int capstan_capf_builder_add_bytes(capstan_capf_builder_t *b, int tag, const uint8_t *data,
                                   size_t len);
/* Adds |str| (len bytes, no NUL inside: else EINVAL) followed by one NUL, as
 * DEVICE_NAME and AUTH_PASSWORD are sent. */
int capstan_capf_builder_add_string(capstan_capf_builder_t *b, int tag, const char *str,
                                    size_t len);
/* Adds CERTIFICATE with its prefix: 0x01 | u16 (len + 2) | 0x00 | type. */
int capstan_capf_builder_add_certificate(capstan_capf_builder_t *b, int cert_type,
                                         const uint8_t *der, size_t len);
/* Adds SHA2_SIGNED_DATA: hash_id | u16 len | sig. */
int capstan_capf_builder_add_sha2_signed_data(capstan_capf_builder_t *b, int hash_id,
                                              const uint8_t *sig, size_t len);
/* Adds SUDI_DATA in the layout capstan_capf_parse_sudi reads. */
int capstan_capf_builder_add_sudi(capstan_capf_builder_t *b, const uint8_t *cert, size_t cert_len,
                                  const uint8_t *sha1_sig, size_t sha1_len,
                                  const uint8_t *sha512_sig, size_t sha512_len);

/* Finishes the message. On success *out is the whole message (header and
 * elements), owned by the caller, freed with OPENSSL_free, and *out_len its
 * length. On failure returns the sticky error (or ENOMEM/ERANGE) and frees
 * everything. The builder is cleaned up in both cases. */
int capstan_capf_builder_finish(capstan_capf_builder_t *b, uint8_t **out, size_t *out_len);

/* Releases a builder that was not finished. Safe on a finished or zeroed
 * builder, and safe to call twice. */
void capstan_capf_builder_cleanup(capstan_capf_builder_t *b);

#endif
