/* What a CAPF session reads from and writes to the store, as plain structs:
 * the device it serves (capf_device_t) and the durable records of its
 * progress (capf_record_t). records.c maps them to the storage schema; no
 * other file of handlers/capf includes it. */
#ifndef CAPSTAN_HANDLERS_CAPF_RECORDS_H
#define CAPSTAN_HANDLERS_CAPF_RECORDS_H

#include <stddef.h>
#include <stdint.h>

#include "handlers/capf/wire.h"
#include "storage/store.h"

/* The operation scheduled for a device (same numbers as the schema's). */
typedef enum {
  CAPF_OPERATION_NONE = 0,
  CAPF_OPERATION_INSTALL = 1, /* install or upgrade the LSC */
  CAPF_OPERATION_DELETE = 2,
  CAPF_OPERATION_TROUBLESHOOT = 3, /* fetch the phone's certificate */
} capf_operation_t;

/* Longest auth string a record may hold and still be usable: the one
 * limit of core/base/phone.h. A longer one (only a damaged record) is
 * treated as missing, so it never matches a truncated copy. */
#define CAPF_AUTH_STRING_MAX CAPSTAN_AUTH_STRING_MAX
_Static_assert(CAPF_AUTH_STRING_MAX <= CAPSTAN_CAPF_AUTH_PASSWORD_MAX,
               "a stored auth string fits in AUTH_PASSWORD");

/* A device as a session needs it. Auth mode numbers are the wire's AUTH_TYPE
 * values (records.c asserts the schema agrees); key_alg is
 * CAPSTAN_KEY_RSA or CAPSTAN_KEY_EC. */
typedef struct capf_device {
  capf_operation_t operation;
  capstan_capf_auth_type_t auth_mode;
  char auth_string[CAPF_AUTH_STRING_MAX + 1]; /* "" when none; never logged */
  int key_alg;
  unsigned key_bits;
  int64_t completes_by;   /* unix seconds; 0 = no deadline */
  int issuer;             /* capstan_issuer_t of the device's own --issuer; -1: the setting's */
  unsigned auth_failures; /* wrong authentication strings in a row */
  /* External issuers (external-ca.md): a certificate an offline or
   * pending online request brought, waiting for this phone (owned; NULL
   * when none), or a request of the device still waiting for its CA. */
  uint8_t *handover_der;
  size_t handover_len;
  uint8_t handover_key[CAPSTAN_SERIAL_LEN]; /* its certs database key */
  char handover_md5[33];
  int request_pending;
} capf_device_t;

/* Reads device |name| (and, for an install, its latest certificate
 * request) in |txn|. Returns 0, CAPSTAN_ENOENT for an unknown device, or a
 * store error. Release with capf_device_cleanup. */
int capf_device_read(capstan_txn_t *txn, const char *name, capf_device_t *out);
/* The same in a read transaction of its own (on LMDB, on the loop thread:
 * microseconds). */
int capf_device_load(capstan_store_t *store, const char *name, capf_device_t *out);
void capf_device_cleanup(capf_device_t *d);

/* The kinds of durable record a session writes. */
#define CAPF_RECORD_KINDS(X)                                                                 \
  X(STATUS, "status")                     /* set the status (+reason), maybe count */        \
  X(SEEN_CERT, "seen_cert")               /* the certificate the phone authenticated with */ \
  X(ISSUED, "issued")                     /* a new LSC, before it goes to the phone */       \
  X(INSTALLED, "installed")               /* the phone stored it */                          \
  X(DELETED, "deleted")                   /* the phone deleted its LSC */                    \
  X(FETCHED, "fetched")                   /* troubleshoot done */                            \
  X(CSR_PENDING, "csr_pending")           /* a checked request waits for its CA */           \
  X(HANDOVER_REFUSED, "handover_refused") /* the phone refused a CA's cert */                \
  X(STRING_OK, "string_ok")               /* a right auth string: wrong ones reset */

typedef enum {
#define X(id, name) CAPF_RECORD_##id,
  CAPF_RECORD_KINDS(X)
#undef X
} capf_record_kind_t;

const char *capf_record_kind_name(capf_record_kind_t kind);

/* Statuses a session sets (CAPF_RECORD_STATUS). */
typedef enum {
  CAPF_STATUS_IN_PROGRESS,
  CAPF_STATUS_FAILED,
  CAPF_STATUS_EXPIRED,
  CAPF_STATUS_THROTTLED, /* sent RETRY_LATER: back at retry_after */
} capf_status_t;

/* What a failed status says of an authentication string. */
typedef enum {
  CAPF_AUTH_STRING_NONE = 0,
  CAPF_AUTH_STRING_WRONG,  /* counted: at auth_max_failures the device locks */
  CAPF_AUTH_STRING_LOCKED, /* the device was locked: refused unread */
} capf_auth_string_t;

/* One durable write. It is read on the writer thread, possibly more than
 * once (a batch replay), so it holds its own copies of everything. */
typedef struct capf_record {
  capf_record_kind_t kind;
  int awaited; /* the session waits for this commit before moving on */
  void *host;  /* the host's: what it needs back after the commit */
  char device[CAPSTAN_CAPF_DEVICE_NAME_MAX + 1];
  int64_t now;
  /* For the audit events (set by the session when it submits): the
   * phone's address and the device's operation. */
  char peer[48];
  capf_operation_t operation;
  /* STATUS */
  capf_status_t status;
  const char *reason;    /* static string or reason_text; STATUS, FETCHED without a certificate */
  char reason_text[256]; /* a reason made at run time (a CA's answer) */
  int count_attempt;
  int64_t retry_after; /* STATUS THROTTLED: unix seconds */
  /* STATUS FAILED by an authentication string (capstan_devices_wrong_string):
   * a wrong string, counted against the device, or one refused unread
   * because the device is locked; |auth_max_failures| the setting. */
  capf_auth_string_t auth_string;
  unsigned auth_max_failures;
  /* SEEN_CERT, ISSUED, INSTALLED, FETCHED: the certificate (owned) */
  uint8_t serial[CAPSTAN_SERIAL_LEN]; /* ISSUED, INSTALLED */
  uint8_t *der;                       /* NULL for INSTALLED, and FETCHED without one */
  size_t der_len;
  uint8_t *spki;
  size_t spki_len;
  char md5[33];
  int cert_type; /* CAPSTAN_CAPF_CERT_* */
  int64_t not_after;
  int handover; /* INSTALLED: the certificate came from a certificate request */
  /* CSR_PENDING: the request (der/der_len) and public key (spki), for whom,
   * and for an online CA's "pending", its request id and next poll. */
  unsigned issuer;
  char ca_request_id[64];
  int64_t next_poll_at;
} capf_record_t;

/* A zeroed record of |kind| for |device|, stamped with the time now. NULL
 * when out of memory. */
capf_record_t *capf_record_new(capf_record_kind_t kind, const char *device);

/* Frees |r| and the buffers it owns. NULL is ignored. */
void capf_record_free(capf_record_t *r);

/* Applies |arg| (a capf_record_t) in the writer's transaction: a
 * capstan_store_write_fn. Touches only the record and |txn|. Appends the
 * session's audit events in the same transaction: "attempt" (an operation
 * starts), "attempt_failed" and "operation_expired" (with the reason),
 * "cert_seen", "cert_fetched", "operation_succeeded", each with the peer;
 * the certificate events (issued, stale, installed, deleted) come from
 * storage/devices.h. */
int capf_record_apply(capstan_txn_t *txn, void *arg);
/* The records capf_record_apply reads for |r| (its device; for INSTALLED
 * also its certificate), for capstan_store_submit_reading: fills |keys|
 * (pointing into |r|) and returns how many. */
size_t capf_record_reads(const capf_record_t *r,
                         capstan_store_key_t keys[CAPSTAN_STORE_SUBMIT_KEYS_MAX]);

#endif
