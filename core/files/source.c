#include "core/files/source.h"

#include <stdlib.h>
#include <string.h>
#include "core/base/names.h"

CAPSTAN_DEFINE_NAME_FN(, capstan_file_kind_name, capstan_file_kind_t, CAPSTAN_FILE_KINDS, "other")

static int ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), m = strlen(suffix);
  return n >= m && memcmp(s + n - m, suffix, m) == 0;
}

capstan_file_kind_t capstan_file_kind_of(const char *name) {
  if (strncmp(name, "ITL", 3) == 0 && ends_with(name, ".tlv")) return CAPSTAN_FILE_ITL;
  if (ends_with(name, ".cnf.xml.enc.sgn")) return CAPSTAN_FILE_CNF_ENC_SGN;
  if (ends_with(name, ".cnf.xml.sgn")) return CAPSTAN_FILE_CNF_SGN;
  if (ends_with(name, ".cnf.xml")) return CAPSTAN_FILE_CNF;
  return CAPSTAN_FILE_OTHER;
}

static void blob_free_default(capstan_blob_t *blob) {
  free(blob);
}

capstan_blob_t *capstan_blob_new(const uint8_t *data, size_t len) {
  capstan_blob_t *blob = malloc(sizeof(*blob) + (len ? len : 1));
  if (blob == NULL) return NULL;
  uint8_t *body = (uint8_t *)(blob + 1);
  if (len) memcpy(body, data, len);
  blob->data = body;
  blob->len = len;
  blob->refs = 1;
  blob->free_fn = blob_free_default;
  return blob;
}

capstan_blob_t *capstan_blob_ref(capstan_blob_t *blob) {
  if (blob) blob->refs++;
  return blob;
}

void capstan_blob_unref(capstan_blob_t *blob) {
  if (blob && --blob->refs == 0) blob->free_fn(blob);
}
