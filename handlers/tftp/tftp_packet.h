/* TFTP wire format: request parsing, packet building and the netascii
 * encoder. Pure functions with no I/O, used by the TFTP server (tftp.c) and
 * exposed so that the unit tests and the fuzz target reach the parser
 * directly. Not for other modules: they use handlers/tftp/tftp.h.
 *
 * Every byte from the network goes through CBS; every length has a cap
 * below. Nothing here allocates. */
#ifndef CAPSTAN_HANDLERS_TFTP_TFTP_PACKET_H
#define CAPSTAN_HANDLERS_TFTP_TFTP_PACKET_H

#include <stddef.h>
#include <stdint.h>

/* Opcodes (RFC 1350, RFC 2347). */
enum {
  CAPSTAN_TFTP_OP_RRQ = 1,
  CAPSTAN_TFTP_OP_WRQ = 2,
  CAPSTAN_TFTP_OP_DATA = 3,
  CAPSTAN_TFTP_OP_ACK = 4,
  CAPSTAN_TFTP_OP_ERROR = 5,
  CAPSTAN_TFTP_OP_OACK = 6,
};

/* Error codes (RFC 1350, RFC 2347). */
enum {
  CAPSTAN_TFTP_ERR_UNDEFINED = 0,
  CAPSTAN_TFTP_ERR_NOT_FOUND = 1,
  CAPSTAN_TFTP_ERR_ACCESS = 2,
  CAPSTAN_TFTP_ERR_DISK_FULL = 3,
  CAPSTAN_TFTP_ERR_ILLEGAL_OP = 4,
  CAPSTAN_TFTP_ERR_UNKNOWN_TID = 5,
  CAPSTAN_TFTP_ERR_FILE_EXISTS = 6,
  CAPSTAN_TFTP_ERR_NO_USER = 7,
  CAPSTAN_TFTP_ERR_OPTIONS = 8,
};

/* Hard caps. RFC 1350 limits a request to 512 bytes; some clients send a
 * little more with many options, so requests up to CAPSTAN_TFTP_REQUEST_MAX
 * are accepted (and counted), larger ones refused. */
#define CAPSTAN_TFTP_NAME_MAX 255        /* filename bytes, without the NUL */
#define CAPSTAN_TFTP_RFC_REQUEST_MAX 512 /* what RFC 1350 allows */
#define CAPSTAN_TFTP_REQUEST_MAX 1024    /* what we accept */
#define CAPSTAN_TFTP_VALUE_DIGITS_MAX 20 /* decimal digits in an option value */
#define CAPSTAN_TFTP_ERROR_MSG_MAX 128   /* bytes of an error message we send */

/* Option ranges (RFC 2348, RFC 2349, RFC 7440). */
#define CAPSTAN_TFTP_BLKSIZE_MIN 8
#define CAPSTAN_TFTP_BLKSIZE_MAX 65464
#define CAPSTAN_TFTP_BLKSIZE_DEFAULT 512
#define CAPSTAN_TFTP_TIMEOUT_MIN 1
#define CAPSTAN_TFTP_TIMEOUT_MAX 255
#define CAPSTAN_TFTP_WINDOWSIZE_MIN 1
#define CAPSTAN_TFTP_WINDOWSIZE_MAX 65535

/* Why a request was refused; the names are metric label values. */
#define CAPSTAN_TFTP_REJECT_REASONS(X)      \
  X(NONE, "none")                           \
  X(LIMIT_TOTAL, "limit_total")             \
  X(LIMIT_PER_ADDRESS, "limit_per_address") \
  X(MALFORMED, "malformed")                 \
  X(OVERSIZED, "oversized")                 \
  X(BAD_NAME, "bad_name")                   \
  X(BAD_MODE, "bad_mode")                   \
  X(BAD_OPCODE, "bad_opcode")               \
  X(WRITE_REQUEST, "write_request")         \
  X(RESOURCES, "resources")

typedef enum {
#define X(id, name) CAPSTAN_TFTP_REJECT_##id,
  CAPSTAN_TFTP_REJECT_REASONS(X)
#undef X
      CAPSTAN_TFTP_REJECT_COUNT
} capstan_tftp_reject_t;

const char *capstan_tftp_reject_name(capstan_tftp_reject_t reason);

/* Options, as bits of capstan_tftp_request_t.options. The names are metric
 * label values and the option names on the wire. */
#define CAPSTAN_TFTP_OPTIONS(X) \
  X(BLKSIZE, "blksize")         \
  X(TSIZE, "tsize")             \
  X(TIMEOUT, "timeout")         \
  X(WINDOWSIZE, "windowsize")

typedef enum {
#define X(id, name) CAPSTAN_TFTP_OPT_##id,
  CAPSTAN_TFTP_OPTIONS(X)
#undef X
      CAPSTAN_TFTP_OPT_COUNT
} capstan_tftp_option_t;

const char *capstan_tftp_option_name(capstan_tftp_option_t opt);

/* A parsed RRQ or WRQ. Option policy (RFC 2347 leaves the choice): an
 * option is silently ignored (never acknowledged, never an error 8) when it
 * is unknown, has no value, has a value that is not plain decimal or is out
 * of the RFC range, or appears more than once (then every occurrence is
 * ignored, since we cannot know which one the client meant). */
typedef struct {
  uint16_t opcode;                          /* RRQ or WRQ */
  char filename[CAPSTAN_TFTP_NAME_MAX + 1]; /* NUL-terminated, no control chars */
  int netascii;                             /* 0: octet, 1: netascii */
  unsigned options;                         /* bit (1u << capstan_tftp_option_t) per valid option */
  uint32_t blksize;                         /* valid if BLKSIZE bit set: 8..65464 */
  uint32_t timeout;                         /* valid if TIMEOUT bit set: 1..255 seconds */
  uint32_t windowsize;                      /* valid if WINDOWSIZE bit set: 1..65535 */
  uint64_t tsize;                           /* valid if TSIZE bit set (the RRQ sends 0) */
  size_t size;                              /* bytes of the request packet */
} capstan_tftp_request_t;

/* capstan_tftp_parse_request parses a packet received on the listening
 * port. Returns CAPSTAN_TFTP_REJECT_NONE and fills |out| for a well-formed
 * RRQ or WRQ (the caller refuses WRQs); otherwise the reason the packet is
 * refused (MALFORMED, OVERSIZED, BAD_NAME, BAD_MODE, BAD_OPCODE), and |out|
 * is unspecified. Never reads past |len|. */
capstan_tftp_reject_t capstan_tftp_parse_request(const uint8_t *pkt, size_t len,
                                                 capstan_tftp_request_t *out);

/* capstan_tftp_build_error writes an ERROR packet (|msg| truncated to
 * CAPSTAN_TFTP_ERROR_MSG_MAX bytes) into |buf|. Returns its length, or 0 if
 * |cap| is too small. */
size_t capstan_tftp_build_error(uint8_t *buf, size_t cap, uint16_t code, const char *msg);

/* capstan_tftp_build_oack writes an OACK with the options whose bit is set
 * in |options|, values taken from |req| (already clamped by the caller).
 * Returns its length, or 0 if |cap| is too small. */
size_t capstan_tftp_build_oack(uint8_t *buf, size_t cap, unsigned options,
                               const capstan_tftp_request_t *req);

/* Netascii encoder (RFC 764 as used by RFC 1350): LF -> CR LF and
 * CR -> CR NUL, produced on the fly, block by block. Zero-initialise. */
typedef struct {
  size_t in;           /* next input byte */
  uint8_t pending;     /* second byte of a CR LF / CR NUL pair still to emit */
  uint8_t has_pending; /* whether |pending| is meaningful */
} capstan_tftp_netascii_t;

/* Fills |out| with up to |cap| encoded bytes of |data| and returns how many;
 * fewer than |cap| only at the end of the input. */
size_t capstan_tftp_netascii_fill(capstan_tftp_netascii_t *st, const uint8_t *data, size_t len,
                                  uint8_t *out, size_t cap);

/* Size of the netascii encoding of |data|: len + number of CR and LF. */
uint64_t capstan_tftp_netascii_size(const uint8_t *data, size_t len);

#endif
