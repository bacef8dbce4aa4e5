/* What capstan knows about a phone, said once: key algorithms and the key
 * sizes a phone may be asked for, hash ids, authentication modes,
 * certificate types, and the device-name and authentication-string rules.
 *
 * Every layer uses these values. The encodings that carry them keep their
 * own names and are checked against this header at compile time by the
 * layer that sees both (_Static_assert): the storage schema
 * (storage/records.proto enums, in storage/devices.c) and the CAPF wire
 * protocol (handlers/capf/wire.h, whose numbering docs/spec/
 * capf-protocol.md fixes, in handlers/capf/wire.c). core/pki takes these
 * values directly. The numbers below are the CAPF protocol's, so a value
 * crosses from one encoding to another without a translation table.
 *
 * Each enum comes from one X-macro list with its name table (lower-case
 * names, as the CLI, CSV, JSON and logs print them). Name functions return a
 * static string, never NULL: "?" for a value outside the table. All
 * functions are pure and thread-safe. */
#ifndef CAPSTAN_CORE_BASE_PHONE_H
#define CAPSTAN_CORE_BASE_PHONE_H

#include <stdbool.h>
#include <stddef.h>

/* ---- Key algorithms and sizes ------------------------------------------ */

/* X(id, value, name). */
#define CAPSTAN_KEY_ALGS(X) \
  X(RSA, 0, "rsa")          \
  X(EC, 1, "ec")

typedef enum {
#define X(id, v, name) CAPSTAN_KEY_##id = v,
  CAPSTAN_KEY_ALGS(X)
#undef X
} capstan_key_alg_t;

const char *capstan_key_alg_name(int alg); /* "rsa", "ec" */

/* The keys a phone may be asked to generate: X(name, alg, bits). For RSA
 * |bits| is the modulus size; for EC it names the curve (256 P-256, 384
 * P-384, 521 P-521). The order is the order of capstan_key_names(). */
#define CAPSTAN_KEYS(X)               \
  X("rsa512", CAPSTAN_KEY_RSA, 512)   \
  X("rsa1024", CAPSTAN_KEY_RSA, 1024) \
  X("rsa2048", CAPSTAN_KEY_RSA, 2048) \
  X("rsa3072", CAPSTAN_KEY_RSA, 3072) \
  X("rsa4096", CAPSTAN_KEY_RSA, 4096) \
  X("ec256", CAPSTAN_KEY_EC, 256)     \
  X("ec384", CAPSTAN_KEY_EC, 384)     \
  X("ec521", CAPSTAN_KEY_EC, 521)

/* True when (|alg|, |bits|) is one of CAPSTAN_KEYS. */
bool capstan_key_valid(int alg, unsigned bits);
/* "rsa2048", ...; "?" when not one of CAPSTAN_KEYS. */
const char *capstan_key_name(int alg, unsigned bits);
/* The names of CAPSTAN_KEYS, comma-separated, for messages. */
const char *capstan_key_names(void);
/* Looks |s| up among the names of CAPSTAN_KEYS (exact, case-sensitive).
 * Returns 0 and writes both outputs, or CAPSTAN_EINVAL (NULL |s| too). */
int capstan_key_from_name(const char *s, int *alg, unsigned *bits);

/* ---- Hash ids ------------------------------------------------------------ */

/* X(id, value, name): the digests phones sign with. */
#define CAPSTAN_HASHES(X) \
  X(SHA1, 1, "sha1")      \
  X(SHA256, 2, "sha256")  \
  X(SHA512, 3, "sha512")

typedef enum {
#define X(id, v, name) CAPSTAN_HASH_##id = v,
  CAPSTAN_HASHES(X)
#undef X
} capstan_hash_t;

const char *capstan_hash_name(int hash); /* "sha1", "sha256", "sha512" */

/* ---- Authentication modes ------------------------------------------------ */

/* X(id, value, name, choosable): how a phone proves who it is. NONE is what
 * a device without an operation has (and what the server announces before
 * it knows the device); an operator cannot choose it. */
#define CAPSTAN_AUTH_MODES(X)                                       \
  X(NONE, 0, "none", 0)                                             \
  X(STRING, 1, "string", 1)                                         \
  X(NULL_STRING, 2, "null", 1)                                      \
  X(LSC, 3, "lsc", 1) /* existing certificate, precedence to LSC */ \
  X(MIC, 4, "mic", 1) /* existing certificate, precedence to MIC */

typedef enum {
#define X(id, v, name, choosable) CAPSTAN_AUTH_MODE_##id = v,
  CAPSTAN_AUTH_MODES(X)
#undef X
} capstan_auth_mode_t;
#define CAPSTAN_AUTH_MODE_MIN CAPSTAN_AUTH_MODE_NONE
#define CAPSTAN_AUTH_MODE_MAX CAPSTAN_AUTH_MODE_MIC

const char *capstan_auth_mode_name(int mode); /* "none", "string", ... */
/* The choosable names, comma-separated: "string,null,lsc,mic". */
const char *capstan_auth_mode_names(void);
/* Looks |s| up among the choosable names. Returns 0 and the mode, or
 * CAPSTAN_EINVAL ("none" and NULL included). */
int capstan_auth_mode_from_name(const char *s, int *mode);

/* The authentication string of mode STRING: 4..10 ASCII digits. */
#define CAPSTAN_AUTH_STRING_MIN 4
#define CAPSTAN_AUTH_STRING_MAX 10
/* True for 4..10 ASCII digits (false for NULL). */
bool capstan_auth_string_valid(const char *s);

/* ---- Certificate types --------------------------------------------------- */

/* X(id, value, name): a phone's certificate, locally significant (issued by
 * the CAPF) or manufacturer-installed. UNKNOWN: none seen yet. */
#define CAPSTAN_CERT_TYPES(X) \
  X(UNKNOWN, 0, "unknown")    \
  X(LSC, 1, "lsc")            \
  X(MIC, 2, "mic")

typedef enum {
#define X(id, v, name) CAPSTAN_CERT_##id = v,
  CAPSTAN_CERT_TYPES(X)
#undef X
} capstan_cert_type_t;

const char *capstan_cert_type_name(int type); /* "unknown", "lsc", "mic" */

/* ---- Device names -------------------------------------------------------- */

/* Longest device name in bytes, without the NUL ("SEP58971ECC97C1" is 15).
 * An LSC's subject CN is the device name, so this must fit X.509's
 * ub-common-name (64); core/pki checks that. */
#define CAPSTAN_DEVICE_NAME_MAX 64

/* True for "SEP" + 12 upper-case hex digits, or for another operator name
 * form: 1..CAPSTAN_DEVICE_NAME_MAX characters of [A-Za-z0-9._-] starting
 * with a letter. A name that looks like a phone MAC name with lower-case hex
 * ("SEPabcdef012345") is refused, so that one phone cannot get two records.
 * False for NULL. */
bool capstan_device_name_valid(const char *name);

/* The forms of a device name, for the operator-facing rule of the CLI (add,
 * set, import). capstan_device_name_valid above stays the storage rule. */
typedef enum {
  CAPSTAN_DEVICE_NAME_INVALID = 0, /* not a device name at all */
  CAPSTAN_DEVICE_NAME_MAC,         /* "SEP" + 12 upper-case hex digits */
  CAPSTAN_DEVICE_NAME_MAC_LOWER,   /* "SEP" + 12 hex digits, some in lower case
                                    * (or a lower-case "sep"): a MAC name that
                                    * capstan_device_name_canonical upper-cases */
  CAPSTAN_DEVICE_NAME_BAD_SEP,     /* starts with SEP (any case) but is not SEP +
                                    * 12 hex digits: short, long or not hex */
  CAPSTAN_DEVICE_NAME_OTHER,       /* another name form (CSF..., BOT..., TCT...,
                                    * TAB..., ATA..., a lab name): valid for
                                    * storage, but not a phone's MAC name */
} capstan_device_name_form_t;

/* The MAC-name rule in words, for messages. */
#define CAPSTAN_DEVICE_NAME_MAC_RULE \
  "SEP + 12 hex digits (the phone's MAC address, e.g. SEP58971ECC97C1)"
/* The other-form rule in words, for messages. */
#define CAPSTAN_DEVICE_NAME_OTHER_RULE "1 to 64 of A-Z a-z 0-9 . _ - starting with a letter"

/* Which form |name| has (CAPSTAN_DEVICE_NAME_INVALID for NULL). */
capstan_device_name_form_t capstan_device_name_form(const char *name);

/* Copies |name| to |out| (|cap| bytes) in its canonical form: a MAC name
 * (CAPSTAN_DEVICE_NAME_MAC_LOWER) upper-cased, any other name unchanged.
 * Returns false when it does not fit. */
bool capstan_device_name_canonical(const char *name, char *out, size_t cap);

/* The name lists of the X-macro tables are built with a trailing ',':
 * copies |list| without it into |buf| (|cap| at least strlen(list)) and
 * returns |buf|, for "one of a,b,c" messages. */
const char *capstan_name_list_text(const char *list, char *buf, size_t cap);

/* ---- Device status reasons ---------------------------------------------- */

/* Why an operation ended without its phone's doing: the server itself
 * stopped during it. A session cut at the drain deadline records it, and at
 * the next start every device still in progress gets it (no session of a
 * server that has just started can be running). */
#define CAPSTAN_REASON_INTERRUPTED "interrupted: the server stopped during the operation"
/* Why an operation ended when the store could not record its outcome (a
 * full disk, I/O errors): set by the running server's repair once it
 * writes again, on devices no session of it is running. */
#define CAPSTAN_REASON_STORAGE_ERROR "storage error: the outcome could not be recorded"
/* The reason of a device left IN_PROGRESS by a node that died (several
 * nodes on one store): the leader fails it, its operation still scheduled,
 * so the phone's next session (on any node) runs it again. */
#define CAPSTAN_REASON_NODE_DIED "interrupted: the node that ran the session stopped"

#endif
