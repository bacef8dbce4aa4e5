/* Fuzz target for the configuration XML functions: validation, completion
 * (byte splicing at expat offsets) and the partial configuration. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/files/cnfxml.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char err[128];
  if (size > CAPSTAN_CNFXML_MAX / 2) return 0; /* completion could exceed the cap */
  if (capstan_cnfxml_validate(data, size, err, sizeof(err)) != 0) return 0;
  capstan_cnfxml_params_t p;
  memset(&p, 0, sizeof(p));
  p.auth_mode = 4;
  p.capf_host = "capf&<example>";
  p.capf_port = 3804;
  p.cert_hash = "0123456789abcdef0123456789abcdef";
  p.encr_config = 1;
  uint8_t *full = NULL, *partial = NULL;
  size_t full_len = 0, partial_len = 0;
  /* A valid base must always complete, and its completion must be valid
   * and give a valid partial configuration. */
  if (capstan_cnfxml_complete(data, size, &p, &full, &full_len, err, sizeof(err)) != 0) abort();
  if (capstan_cnfxml_partial(full, full_len, p.cert_hash, &partial, &partial_len, err,
                             sizeof(err)) != 0)
    abort();
  if (capstan_cnfxml_validate(partial, partial_len, err, sizeof(err)) != 0) abort();
  free(full);
  free(partial);
  return 0;
}
