/* `capstan init`: creates the data directory, the store, the CAPF
 * certificate and the TFTP signing certificate. */
#ifndef CAPSTAN_INIT_H
#define CAPSTAN_INIT_H

#include "storage/store.h"

/* Creates whichever of the CAPF and TFTP identities |store| lacks (RSA 2048
 * key generation: about a second each). |subject_extra| ("O=Example,C=NZ")
 * may be NULL. Sets *created to the number of identities made. Returns 0 or
 * a negative error (logged). */
int capstan_init_identities(capstan_store_t *store, const char *subject_extra, int *created);

/* The subcommand. Exit codes: 0 success, 1 operational error, 2 usage. */
int capstan_init_main(int argc, char **argv);

/* The data directory: --data-dir, else $CAPSTAN_DATA_DIR, else
 * ./capstan-data. */
const char *capstan_default_data_dir(void);

#endif
