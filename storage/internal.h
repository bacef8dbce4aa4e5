/* Inside the storage layer only: the environment's state, shared by the
 * files that own its parts (env.c: environment, transactions and error
 * mapping; records.c: record access; writer.c: the group-commit writer). */
#ifndef CAPSTAN_STORAGE_INTERNAL_H
#define CAPSTAN_STORAGE_INTERNAL_H

#include <lmdb.h>
#include <pthread.h>
#include <stdbool.h>
#include <time.h>
#include <uv.h>

#include "storage/store.h"

#define SETTINGS_KEY "settings"
#define MAX_DBS 16

extern const char *const capstan_store_db_names[CAPSTAN_DB_COUNT];

typedef struct writer writer_t;

struct capstan_store {
  MDB_env *env;
  MDB_dbi dbi[CAPSTAN_DB_COUNT];
  writer_t *writer;
  char *dir;
};

/* Counts a failed operation in capstan_storage_errors_total{op}. */
void capstan_store_count_error(const char *op);

/* The one place LMDB codes become ours (storage/store.h lists them);
 * failures are logged and counted under |op|. */
int capstan_store_map_err(int rc, const char *op);

#endif
