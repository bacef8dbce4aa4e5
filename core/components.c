/* The components that join the CAPF server in `capstan serve`: the admin
 * listener and the phone file servers. */
#include <string.h>

#include "core/serve.h"

int capstan_serve_start_components(const capstan_serve_env_t *env,
                                   capstan_serve_components_t *out) {
  memset(out, 0, sizeof(*out));
  return 0;
}
