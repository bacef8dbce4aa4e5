/* Live settings: the fields of records.proto's Settings under the names an
 * operator types (`capstan config set keepalive-minutes 10`), with their
 * kinds, ranges and help, from one table (CAPSTAN_SETTINGS_TABLE below),
 * as a plain struct that the server's layers take. settings.c is the one
 * place that maps it to and from the stored record. */
#ifndef CAPSTAN_CORE_SETTINGS_H
#define CAPSTAN_CORE_SETTINGS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "storage/store.h"

/* X(cli name, field, kind, min, max, help): the field is a member of both
 * capstan_settings_t and records.proto's Settings. */
#define CAPSTAN_SETTINGS_TABLE(X)                                                                  \
  X("keepalive-minutes", keepalive_minutes, UINT, 5, 60,                                           \
    "minutes between CAPF keep-alives on idle connections")                                        \
  X("validity-days", validity_days, UINT, 1, 1825, "validity of issued LSCs, in days")             \
  X("max-concurrent-keygen", max_concurrent_keygen, UINT, 1, 100000,                               \
    "phones allowed in key generation at once")                                                    \
  X("max-new-keygen-per-second", max_new_keygen_per_second, UINT, 1, 100000,                       \
    "new key generations started per second")                                                      \
  X("throttle-hold-seconds", throttle_hold_seconds, UINT, 0, 600,                                  \
    "how long a throttled phone waits for a slot before being told to retry")                      \
  X("retry-delay-seconds", retry_delay_seconds, UINT, 1, 3600,                                     \
    "RETRY_DELAY sent to phones told to come back (key generation throttle, CAPF limits)")         \
  X("legacy-tls", legacy_tls, BOOL, 0, 1, "allow TLS 1.0/1.1 and AES-CBC-SHA for old phones")      \
  X("enable-ipv6", enable_ipv6, BOOL, 0, 1,                                                        \
    "accept CAPF connections that arrive over IPv6 (off: refuse them)")                            \
  X("keygen-ceiling-seconds", keygen_ceiling_seconds, UINT, 60, 86400,                             \
    "longest wait for a phone's key generation")                                                   \
  X("handshake-timeout-seconds", handshake_timeout_seconds, UINT, 1, 600, "TLS handshake timeout") \
  X("step-timeout-seconds", step_timeout_seconds, UINT, 1, 3600,                                   \
    "timeout of each CAPF protocol step but key generation")                                       \
  X("max-connections", max_connections, UINT, 1, 1000000,                                          \
    "CAPF connections at once, all addresses: bounds the server's memory and sockets; "            \
    "beyond it a phone is told RETRY_LATER")                                                       \
  X("max-connections-per-address", max_connections_per_address, UINT, 1, 100000,                   \
    "CAPF connections at once from one address: keeps one client from taking every slot "          \
    "(a NAT or load balancer is one address); beyond it RETRY_LATER")                              \
  X("max-handshakes", max_handshakes, UINT, 1, 100000,                                             \
    "CAPF TLS handshakes in progress at once (newcomers wait in the server's queue, accepted "     \
    "but not started): keeps the crypto workers finishing handshakes instead of timing them all "  \
    "out")                                                                                         \
  X("capf-host", capf_host, HOST, 0, 0,                                                            \
    "CAPF host name or address given to phones (empty: the listener address)")                     \
  X("enc-config-digest", enc_config_sha512, DIGEST, 0, 1,                                          \
    "digest of signed phone files (ITL, .sgn, .enc.sgn) and of the encrypted configuration")       \
  X("capf-previous-trust-days", capf_previous_trust_days, UINT, 0, 3650,                           \
    "days a replaced CAPF certificate stays trusted (CAPF-trust and ITL files)")                   \
  X("audit-retention-days", audit_retention_days, UINT, 1, 3650,                                   \
    "days audit events are kept (capstan audit list); the server removes older ones hourly")       \
  X("http-max-connections", http_max_connections, UINT, 1, 1000000,                                \
    "phone HTTP connections at once, all addresses: bounds memory and sockets; beyond it 503")     \
  X("http-max-connections-per-address", http_max_connections_per_address, UINT, 1, 100000,         \
    "phone HTTP connections at once from one address: keeps one client from taking every "         \
    "slot (a NAT or load balancer is one address); beyond it 503 with Retry-After")                \
  X("tftp-max-transfers", tftp_max_transfers, UINT, 1, 1000000,                                    \
    "TFTP transfers at once, all addresses (a socket each): beyond it a busy ERROR")               \
  X("tftp-max-transfers-per-address", tftp_max_transfers_per_address, UINT, 1, 100000,             \
    "TFTP transfers at once from one address (UDP: it may be forged): bounds what one client "     \
    "holds and what is sent to one address; beyond it a busy ERROR")                               \
  X("admin-max-connections", admin_max_connections, UINT, 1, 100000,                               \
    "admin HTTP connections at once (/metrics, /healthz): beyond it 503")                          \
  X("admin-max-connections-per-address", admin_max_connections_per_address, UINT, 1, 100000,       \
    "admin HTTP connections at once from one address: beyond it 503")                              \
  X("issuer", issuer, ISSUER, 0, 3,                                                                \
    "who signs phones' LSCs: capf (this server), est or mscs (an online CA: `capstan ca set`), "   \
    "offline (requests wait for `capstan csr export` and `csr import`)")                           \
  X("files-retry-after-seconds", files_retry_after_seconds, UINT, 1, 3600,                         \
    "delay a phone refused by an HTTP or TFTP limit is asked to wait (Retry-After, the TFTP "      \
    "busy message)")                                                                               \
  X("auth-max-failures", auth_max_failures, UINT, 1, 1000,                                         \
    "wrong authentication strings in a row after which a device's operation is locked until "      \
    "the operator re-arms it (capstan device set NAME --operation ...)")                           \
  X("auth-delay-max-seconds", auth_delay_max_seconds, UINT, 0, 300,                                \
    "longest delay before a wrong authentication string is answered: the delay doubles from 1 s "  \
    "with each wrong string from one address, halving per quiet minute (0: no delay)")

#define CAPSTAN_SETTING_HOST_MAX 253 /* RFC 1123 host name */
#define CAPSTAN_SETTING_FIELD_UINT(field) unsigned field;
#define CAPSTAN_SETTING_FIELD_BOOL(field) bool field;
#define CAPSTAN_SETTING_FIELD_DIGEST(field) bool field;     /* false sha1, true sha512 */
#define CAPSTAN_SETTING_FIELD_ISSUER(field) unsigned field; /* capstan_issuer_t */
#define CAPSTAN_SETTING_FIELD_HOST(field) char field[CAPSTAN_SETTING_HOST_MAX + 1]; /* "" unset */
#define CAPSTAN_SETTING_FIELD(cli, field, kind, min, max, help) CAPSTAN_SETTING_FIELD_##kind(field)

/* Every live setting, by value: copy it freely. */
typedef struct capstan_settings {
  CAPSTAN_SETTINGS_TABLE(CAPSTAN_SETTING_FIELD)
  /* Bumped by every `capstan trust` and `capstan cert capf` change: a
   * running server reloads its identities and trust stores when it moves
   * (not an operator setting). */
  uint64_t trust_generation;
} capstan_settings_t;

/* Who signs the phones' LSCs (external-ca.md; records.proto's Issuer). */
typedef enum {
  CAPSTAN_ISSUER_CAPF = 0,   /* the CAPF key, in the same session */
  CAPSTAN_ISSUER_EST = 1,    /* an online CA over EST (RFC 7030) */
  CAPSTAN_ISSUER_MSCS = 2,   /* an online Microsoft CA (certsrv) */
  CAPSTAN_ISSUER_OFFLINE = 3 /* the operator carries requests and certificates */
} capstan_issuer_t;

/* "capf", "est", "mscs", "offline"; "?" for anything else. */
const char *capstan_issuer_name(unsigned issuer);
/* The issuer named |name|: 0 with *out set, or CAPSTAN_EINVAL. */
int capstan_issuer_parse(const char *name, unsigned *out);
/* EST or MSCS: a CA answers in the phone's session. */
#define CAPSTAN_ISSUER_IS_ONLINE(i) ((i) == CAPSTAN_ISSUER_EST || (i) == CAPSTAN_ISSUER_MSCS)

typedef enum {
  CAPSTAN_SETTING_UINT,   /* integer in [min, max] */
  CAPSTAN_SETTING_BOOL,   /* on | off */
  CAPSTAN_SETTING_HOST,   /* host name or IP literal; "" = unset */
  CAPSTAN_SETTING_DIGEST, /* sha1 | sha512 */
  CAPSTAN_SETTING_ISSUER, /* capf | est | mscs | offline (capstan_issuer_t) */
} capstan_setting_kind_t;

typedef struct {
  const char *name; /* CLI name, e.g. "keepalive-minutes" */
  capstan_setting_kind_t kind;
  unsigned min, max; /* UINT only */
  const char *help;
} capstan_setting_info_t;

/* Number of settings and the i-th one's description (NULL past the end). */
size_t capstan_settings_count(void);
const capstan_setting_info_t *capstan_settings_info(size_t i);
/* Looks a setting up by CLI name; NULL if unknown. */
const capstan_setting_info_t *capstan_settings_find(const char *name);

/* Sets |name| from |value| after validating it. On failure returns
 * CAPSTAN_ENOENT (unknown name), CAPSTAN_ERANGE (number out of range),
 * CAPSTAN_EINVAL (malformed), and writes a message for
 * the operator into |err| (e.g. "keepalive-minutes must be an integer from
 * 5 to 60, got '61'"); |s| is then unchanged. */
int capstan_settings_set(capstan_settings_t *s, const char *name, const char *value, char *err,
                         size_t errlen);

/* Writes the value of |name| as the CLI shows it ("15", "on", "sha1",
 * a host or ""). CAPSTAN_ENOENT for an unknown name, CAPSTAN_ERANGE if
 * |buf| is too small. */
int capstan_settings_get(const capstan_settings_t *s, const char *name, char *buf, size_t len);

/* True for a valid host name (RFC 1123 labels, at most 253 characters) or
 * an IPv4/IPv6 literal. */
int capstan_settings_host_valid(const char *host);

/* records.proto's defaults. */
void capstan_settings_defaults(capstan_settings_t *out);

/* Reads the stored settings (the defaults where nothing is stored) inside
 * |txn|, or in a read transaction of its own. Store errors as in
 * storage/store.h. */
int capstan_settings_read(capstan_txn_t *txn, capstan_settings_t *out);
int capstan_settings_load(capstan_store_t *store, capstan_settings_t *out);

/* Stores |s| inside the write transaction |txn| (fields of the stored
 * record that this build does not know are kept). */
int capstan_settings_write(capstan_txn_t *txn, const capstan_settings_t *s);

/* Bumps trust_generation inside the write transaction |txn|: a running
 * server reloads its identities and trust stores once |txn| commits. */
int capstan_settings_bump_trust_generation(capstan_txn_t *txn);

/* Every operator setting as "name=value" pairs for a log line
 * (keepalive-minutes=15 ... capf-host="..."), truncated to |len|. */
void capstan_settings_format(const capstan_settings_t *s, char *buf, size_t len);

/* True when every setting (and the trust generation) is the same. */
bool capstan_settings_equal(const capstan_settings_t *a, const capstan_settings_t *b);

#endif
