/* The file source: what the phone file servers (TFTP and HTTP) ask for a
 * file by name. It is an interface so that the servers do not know how a
 * file is produced (from device state, signed on workers, cached; or from
 * the static directory), and so that tests can plug in a simple one.
 *
 * All calls and callbacks happen on the loop thread. */
#ifndef CAPSTAN_CORE_FILES_SOURCE_H
#define CAPSTAN_CORE_FILES_SOURCE_H

#include <stddef.h>
#include <stdint.h>

/* File kinds, for metrics labels. X-macro: one list, names generated. */
#define CAPSTAN_FILE_KINDS(X)   \
  X(ITL, "itl")                 \
  X(CNF, "cnf")                 \
  X(CNF_SGN, "cnf_sgn")         \
  X(CNF_ENC_SGN, "cnf_enc_sgn") \
  X(STATIC, "static")           \
  X(OTHER, "other")

typedef enum {
#define X(id, name) CAPSTAN_FILE_##id,
  CAPSTAN_FILE_KINDS(X)
#undef X
      CAPSTAN_FILE_KIND_COUNT
} capstan_file_kind_t;

/* Returns the metrics label for |kind| ("itl", "cnf", ...). */
const char *capstan_file_kind_name(capstan_file_kind_t kind);

/* capstan_file_kind_of classifies a requested name (without looking it up):
 * ITL*.tlv -> ITL, SEP*.cnf.xml -> CNF, *.cnf.xml.sgn -> CNF_SGN,
 * *.cnf.xml.enc.sgn -> CNF_ENC_SGN, anything else -> OTHER (a source may
 * answer STATIC for files found in the static directory). */
capstan_file_kind_t capstan_file_kind_of(const char *name);

/* An immutable, reference-counted file body. Servers hold a reference for
 * the duration of a transfer, so a file replaced in the cache mid-transfer
 * stays valid for the transfers already using it. */
typedef struct capstan_blob {
  const uint8_t *data;
  size_t len;
  uint32_t refs;                              /* loop thread only */
  void (*free_fn)(struct capstan_blob *blob); /* called when refs drops to 0 */
} capstan_blob_t;

/* capstan_blob_new copies |len| bytes into a new blob with one reference.
 * Returns NULL on allocation failure. */
capstan_blob_t *capstan_blob_new(const uint8_t *data, size_t len);
capstan_blob_t *capstan_blob_ref(capstan_blob_t *blob);
void capstan_blob_unref(capstan_blob_t *blob); /* accepts NULL */

/* Result of a lookup. On status 0, |blob| holds one reference that the
 * callee of the callback now owns (it must unref it). Status values:
 * 0, CAPSTAN_ENOENT (not found: say "file not found", disclose no path),
 * CAPSTAN_EACCES (name refused: traversal, control characters...),
 * CAPSTAN_EIO or other negative codes (error producing the file). */
typedef void (*capstan_file_cb)(void *ctx, int status, capstan_blob_t *blob,
                                capstan_file_kind_t kind);

typedef struct capstan_filesource capstan_filesource_t;
struct capstan_filesource {
  /* Looks |name| up (a NUL-terminated string the server already checked is
   * at most 255 bytes). Calls |cb| exactly once, either before returning
   * or later on the loop thread. |ctx| must stay valid until then: a
   * server that wants to abandon a transfer waits for the callback. */
  void (*open)(capstan_filesource_t *src, const char *name, capstan_file_cb cb, void *ctx);
  void *impl;
};

#endif
