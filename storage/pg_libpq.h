/* libpq, loaded into a link-map namespace of its own.
 *
 * libpq links OpenSSL; the server links BoringSSL, which exports the same
 * symbol names. Linked (or dlopen'ed) into one namespace, libpq's OpenSSL
 * calls bind to BoringSSL's functions and the process aborts as soon as
 * libpq uses TLS (measured: "free(): invalid pointer" on sslmode=require).
 * dlmopen(LM_ID_NEWLM) gives libpq and its OpenSSL a namespace of their own
 * (their own libc too), so both TLS stacks live side by side. Only the
 * types come from libpq-fe.h; every call goes through this table.
 *
 * Memory libpq returns (results, notifications) belongs to the namespace's
 * libc: free it with the table's clear/freemem, never with free(). */
#ifndef CAPSTAN_STORAGE_PG_LIBPQ_H
#define CAPSTAN_STORAGE_PG_LIBPQ_H

#include <libpq-fe.h>

typedef struct {
  PGconn *(*connectdb_params)(const char *const *keywords, const char *const *values,
                              int expand_dbname);
  ConnStatusType (*status)(const PGconn *conn);
  char *(*error_message)(const PGconn *conn);
  void (*finish)(PGconn *conn);
  PGresult *(*exec)(PGconn *conn, const char *query);
  PGresult *(*exec_params)(PGconn *conn, const char *command, int n, const Oid *types,
                           const char *const *values, const int *lengths, const int *formats,
                           int result_format);
  ExecStatusType (*result_status)(const PGresult *res);
  char *(*result_error_field)(const PGresult *res, int fieldcode);
  char *(*result_error_message)(const PGresult *res);
  int (*ntuples)(const PGresult *res);
  char *(*cmd_tuples)(PGresult *res);
  char *(*cmd_status)(PGresult *res);
  char *(*getvalue)(const PGresult *res, int row, int col);
  int (*getlength)(const PGresult *res, int row, int col);
  int (*getisnull)(const PGresult *res, int row, int col);
  void (*clear)(PGresult *res);
  int (*socket)(const PGconn *conn);
  int (*consume_input)(PGconn *conn);
  PGnotify *(*notifies)(PGconn *conn);
  void (*freemem)(void *ptr);
  int (*ssl_in_use)(PGconn *conn);
  const char *(*ssl_attribute)(PGconn *conn, const char *name);
  PGTransactionStatusType (*transaction_status)(const PGconn *conn);
  int (*lib_version)(void);
  int (*send_query)(PGconn *conn, const char *query);
  int (*send_query_params)(PGconn *conn, const char *command, int n, const Oid *types,
                           const char *const *values, const int *lengths, const int *formats,
                           int result_format);
  PGresult *(*get_result)(PGconn *conn);
  PGresult *(*prepare)(PGconn *conn, const char *name, const char *query, int n, const Oid *types);
  PGresult *(*exec_prepared)(PGconn *conn, const char *name, int n, const char *const *values,
                             const int *lengths, const int *formats, int result_format);
  int (*send_query_prepared)(PGconn *conn, const char *name, int n, const char *const *values,
                             const int *lengths, const int *formats, int result_format);
  int (*enter_pipeline)(PGconn *conn);
  int (*exit_pipeline)(PGconn *conn);
  int (*pipeline_sync)(PGconn *conn);
  int (*send_flush_request)(PGconn *conn);
  int (*flush)(PGconn *conn);
  PQnoticeProcessor (*set_notice_processor)(PGconn *conn, PQnoticeProcessor proc, void *arg);
  int (*conninfo_valid)(const char *conninfo); /* 1 when libpq parses it */
} capstan_libpq_t;

/* The table, loading libpq.so.5 on first use (thread-safe, once). NULL when
 * it cannot be loaded (logged once, with dlerror's text and the package to
 * install). */
const capstan_libpq_t *capstan_libpq(void);

/* Makes the calling thread ready for libpq calls (once per thread, cheap
 * after): call it before the first call in every thread; capstan_libpq()
 * does it for the thread that calls it. */
void capstan_libpq_thread(void);

/* Once, after the first connection: checks that libpq's OpenSSL kept its
 * thread-specific keys where load() left room for them (logged). */
void capstan_libpq_check_keys(void);

#endif
