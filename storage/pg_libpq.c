/* Loading libpq into its own link-map namespace (storage/pg_libpq.h). */
#define _GNU_SOURCE /* dlmopen, LM_ID_NEWLM */
#include "storage/pg_libpq.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include "core/base/log.h"

#define LIBPQ_SONAME "libpq.so.5"
/* Thread-specific data indices the namespace's libc is made to skip (see
 * load): more than the main program's libraries use, and few enough that
 * OpenSSL's keys stay in the first block of 32. */
#define RESERVED_KEYS 16

static capstan_libpq_t g_pq;
/* The namespace's own libc's __ctype_init (see capstan_libpq_thread). */
static void (*g_ctype_init)(void);
static int (*g_key_create)(pthread_key_t *, void (*)(void *));
static int (*g_key_delete)(pthread_key_t);
static const capstan_libpq_t *g_loaded;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

/* PQconninfoParse frees its result with PQconninfoFree: both in the
 * namespace, so the check is made there. */
static PQconninfoOption *(*g_conninfo_parse)(const char *, char **);
static void (*g_conninfo_free)(PQconninfoOption *);

static int conninfo_valid(const char *conninfo) {
  char *err = NULL;
  PQconninfoOption *opts = g_conninfo_parse(conninfo, &err);
  if (err != NULL) g_pq.freemem(err);
  if (opts == NULL) return 0;
  g_conninfo_free(opts);
  return 1;
}

static void load(void) {
  void *h = dlmopen(LM_ID_NEWLM, LIBPQ_SONAME, RTLD_NOW | RTLD_LOCAL);
  if (h == NULL) {
    const char *why = dlerror();
    LOG_ERROR("event=postgres_library_missing library=%s error=\"%s\" hint=\"install libpq5\"",
              LIBPQ_SONAME, why != NULL ? why : "unknown");
    return;
  }
  struct {
    void **slot;
    const char *name;
  } syms[] = {
      {(void **)&g_pq.connectdb_params, "PQconnectdbParams"},
      {(void **)&g_pq.status, "PQstatus"},
      {(void **)&g_pq.error_message, "PQerrorMessage"},
      {(void **)&g_pq.finish, "PQfinish"},
      {(void **)&g_pq.exec, "PQexec"},
      {(void **)&g_pq.exec_params, "PQexecParams"},
      {(void **)&g_pq.result_status, "PQresultStatus"},
      {(void **)&g_pq.result_error_field, "PQresultErrorField"},
      {(void **)&g_pq.result_error_message, "PQresultErrorMessage"},
      {(void **)&g_pq.ntuples, "PQntuples"},
      {(void **)&g_pq.cmd_tuples, "PQcmdTuples"},
      {(void **)&g_pq.cmd_status, "PQcmdStatus"},
      {(void **)&g_pq.getvalue, "PQgetvalue"},
      {(void **)&g_pq.getlength, "PQgetlength"},
      {(void **)&g_pq.getisnull, "PQgetisnull"},
      {(void **)&g_pq.clear, "PQclear"},
      {(void **)&g_pq.socket, "PQsocket"},
      {(void **)&g_pq.consume_input, "PQconsumeInput"},
      {(void **)&g_pq.notifies, "PQnotifies"},
      {(void **)&g_pq.freemem, "PQfreemem"},
      {(void **)&g_pq.ssl_in_use, "PQsslInUse"},
      {(void **)&g_pq.ssl_attribute, "PQsslAttribute"},
      {(void **)&g_pq.transaction_status, "PQtransactionStatus"},
      {(void **)&g_pq.lib_version, "PQlibVersion"},
      {(void **)&g_pq.send_query, "PQsendQuery"},
      {(void **)&g_pq.send_query_params, "PQsendQueryParams"},
      {(void **)&g_pq.get_result, "PQgetResult"},
      {(void **)&g_pq.prepare, "PQprepare"},
      {(void **)&g_pq.exec_prepared, "PQexecPrepared"},
      {(void **)&g_pq.send_query_prepared, "PQsendQueryPrepared"},
      {(void **)&g_pq.enter_pipeline, "PQenterPipelineMode"},
      {(void **)&g_pq.exit_pipeline, "PQexitPipelineMode"},
      {(void **)&g_pq.pipeline_sync, "PQpipelineSync"},
      {(void **)&g_pq.send_flush_request, "PQsendFlushRequest"},
      {(void **)&g_pq.flush, "PQflush"},
      {(void **)&g_pq.set_notice_processor, "PQsetNoticeProcessor"},
      {(void **)&g_conninfo_parse, "PQconninfoParse"},
      {(void **)&g_conninfo_free, "PQconninfoFree"},
  };
  for (size_t i = 0; i < sizeof(syms) / sizeof(syms[0]); i++) {
    *syms[i].slot = dlsym(h, syms[i].name);
    if (*syms[i].slot == NULL) {
      LOG_ERROR("event=postgres_library_unusable library=%s missing=%s", LIBPQ_SONAME,
                syms[i].name);
      dlclose(h);
      return;
    }
  }
  /* The namespace's libc sets each thread's ctype table pointers when
   * that libc starts the thread; threads the main libc started (the
   * writer, the listener, libuv's) have them NULL there, and OpenSSL's
   * first isspace() in libpq crashed (measured). __ctype_init sets them
   * for the calling thread. */
  Lmid_t lmid;
  void *libc = NULL;
  if (dlinfo(h, RTLD_DI_LMID, &lmid) == 0)
    libc = dlmopen(lmid, "libc.so.6", RTLD_NOW | RTLD_NOLOAD);
  if (libc != NULL) g_ctype_init = (void (*)(void))dlsym(libc, "__ctype_init");
  if (g_ctype_init == NULL) {
    LOG_ERROR("event=postgres_library_unusable library=libc.so.6 missing=__ctype_init");
    dlclose(h);
    return;
  }
  /* Thread-specific data keys: each libc numbers its keys from 0 in a
   * table of its own, but both keep the values in the same per-thread
   * array. Keys of the two that shared an index would read each other's
   * values (BoringSSL's thread state would be OpenSSL's), and a thread
   * exits through the main libc, which runs ITS destructor of each index
   * holding a value: the writer thread aborted there (free(): invalid
   * pointer, measured). So the namespace's libc is made to skip the
   * indices the main program uses (its few keys take the lowest free
   * indices), and OpenSSL's keys land above them. They stay below 32: an
   * index past the first block of 32 gets an array its libc allocates and
   * the main libc frees (ASan: "free on address which was not
   * malloc()-ed"). At thread exit the main libc finds OpenSSL's values
   * under keys it never made and leaves them (a few bytes per thread that
   * used TLS to the database; the server's such threads live as long as
   * it does). */
  int (*key_create)(pthread_key_t *, void (*)(void *)) =
      (int (*)(pthread_key_t *, void (*)(void *)))dlsym(libc, "pthread_key_create");
  pthread_key_t probe;
  if (key_create == NULL || pthread_key_create(&probe, NULL) != 0) {
    LOG_ERROR("event=postgres_library_unusable reason=\"no thread-specific key\"");
    dlclose(h);
    return;
  }
  pthread_key_delete(probe);
  if (probe >= RESERVED_KEYS) {
    LOG_ERROR(
        "event=postgres_library_unusable reason=\"the process uses %u thread-specific "
        "keys, more than the %d kept apart from libpq's\"",
        (unsigned)probe, RESERVED_KEYS);
    dlclose(h);
    return;
  }
  for (int i = 0; i < RESERVED_KEYS; i++) {
    pthread_key_t unused;
    if (key_create(&unused, NULL) != 0) break;
  }
  g_key_create = key_create;
  g_key_delete = (int (*)(pthread_key_t))dlsym(libc, "pthread_key_delete");
  g_pq.conninfo_valid = conninfo_valid;
  g_loaded = &g_pq;
  /* The handle stays open for the life of the process. */
}

const capstan_libpq_t *capstan_libpq(void) {
  pthread_once(&g_once, load);
  capstan_libpq_thread();
  return g_loaded;
}

void capstan_libpq_check_keys(void) {
  static _Atomic bool checked;
  if (g_key_create == NULL || g_key_delete == NULL || atomic_exchange(&checked, true)) return;
  pthread_key_t next;
  if (g_key_create(&next, NULL) != 0) return;
  g_key_delete(next);
  /* 32: the first block of the per-thread array (see load). */
  if (next >= 32) {
    LOG_ERROR(
        "event=postgres_library_keys next_key=%u hint=\"libpq's OpenSSL made more "
        "thread-specific keys than expected: threads that used it may fail at exit\"",
        (unsigned)next);
  } else {
    LOG_DEBUG("event=postgres_library_keys next_key=%u", (unsigned)next);
  }
}

void capstan_libpq_thread(void) {
  static _Thread_local bool ready;
  if (ready || g_ctype_init == NULL) return;
  g_ctype_init();
  ready = true;
}
