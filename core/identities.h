/* The server's identities: the CAPF certificate and the TFTP signing
 * certificate, created in the store when missing. */
#ifndef CAPSTAN_CORE_IDENTITIES_H
#define CAPSTAN_CORE_IDENTITIES_H

#include "storage/store.h"

/* Creates whichever of the CAPF and TFTP identities |store| lacks (RSA 2048
 * key generation: about a second each). |subject_extra| ("O=Example,C=NZ")
 * may be NULL. Sets *created to the number of identities made. Returns 0 or
 * a negative error (logged). */
int capstan_init_identities(capstan_store_t *store, const char *subject_extra, int *created);

#endif
