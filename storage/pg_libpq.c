/* Loading libpq into its own link-map namespace (storage/pg_libpq.h). */
#define _GNU_SOURCE /* dlmopen, LM_ID_NEWLM */
#include "storage/pg_libpq.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>

#include "core/base/log.h"

#define LIBPQ_SONAME "libpq.so.5"
/* Thread-specific data indices the namespace's libc is made to skip (see
 * load): more than the main program's libraries use. */
#define RESERVED_KEYS 128

static capstan_libpq_t g_pq;
/* The namespace's own libc's __ctype_init (see capstan_libpq_thread). */
static void (*g_ctype_init)(void);
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
  if (dlinfo(h, RTLD_DI_LMID, &lmid) == 0) libc = dlmopen(lmid, "libc.so.6", RTLD_NOW | RTLD_NOLOAD);
  if (libc != NULL) g_ctype_init = (void (*)(void))dlsym(libc, "__ctype_init");
  if (g_ctype_init == NULL) {
    LOG_ERROR("event=postgres_library_unusable library=libc.so.6 missing=__ctype_init");
    dlclose(h);
    return;
  }
  /* Thread-specific data keys: each libc numbers its keys from 0 in a
   * table of its own, but both store the values in the same per-thread
   * array, and a thread exits through the main libc, which runs ITS
   * destructor of each index that holds a value. OpenSSL's keys (made in
   * the namespace) then met BoringSSL's destructor and the writer thread
   * aborted at exit (free(): invalid pointer, measured). Taking the
   * namespace's low indices here, before libpq first uses OpenSSL, puts
   * OpenSSL's keys where the main libc has none: their values are then
   * left at thread exit (a few bytes per thread that used TLS to the
   * database; the server's such threads live as long as it does). */
  int (*key_create)(pthread_key_t *, void (*)(void *)) =
      (int (*)(pthread_key_t *, void (*)(void *)))dlsym(libc, "pthread_key_create");
  for (int i = 0; i < RESERVED_KEYS && key_create != NULL; i++) {
    pthread_key_t unused;
    if (key_create(&unused, NULL) != 0) break;
  }
  g_pq.conninfo_valid = conninfo_valid;
  g_loaded = &g_pq;
  /* The handle stays open for the life of the process. */
}

const capstan_libpq_t *capstan_libpq(void) {
  pthread_once(&g_once, load);
  capstan_libpq_thread();
  return g_loaded;
}

void capstan_libpq_thread(void) {
  static _Thread_local bool ready;
  if (ready || g_ctype_init == NULL) return;
  g_ctype_init();
  ready = true;
}
