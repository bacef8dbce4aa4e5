/* Admin CLI: the subcommands that work on the data directory (device,
 * config, keepalive, cert, report, init, serve), their shared helpers, and
 * the CSV reader/writer used by `device import` and `device export`.
 *
 * Every subcommand is a separate process that opens the LMDB environment
 * next to a possibly running server. Exit codes: 0 success, 1 operational
 * error (message on stderr says what to do), 2 usage error. Every command
 * parses its command line with capstan_cli_run (options.h), e.g. `capstan
 * device list --json --data-dir DIR`; the data directory is --data-dir,
 * else $CAPSTAN_DATA_DIR, else ./capstan-data (capstan_cli_data_dir). */
#ifndef CAPSTAN_HANDLERS_CLI_CLI_H
#define CAPSTAN_HANDLERS_CLI_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "handlers/cli/options.h"
#include "storage/records.pb-c.h"
#include "storage/store.h"

/* ---- Subcommands: argv[0] is the command word ("device", ...). -------- */
int capstan_cli_device_main(int argc, char **argv);
int capstan_cli_config_main(int argc, char **argv);
int capstan_cli_keepalive_main(int argc, char **argv);
int capstan_cli_cert_main(int argc, char **argv);
/* `capstan cert capf ...`: argv[0] is "capf". */
int capstan_cli_capf_main(int argc, char **argv);
int capstan_cli_report_main(int argc, char **argv);
int capstan_cli_init_main(int argc, char **argv);
int capstan_cli_serve_main(int argc, char **argv);
/* Reads |path| as `capstan serve --config` does (for tests/fuzz): 0, or -1
 * with |why| naming the line. What it read is freed. */
int capstan_cli_serve_read_config(const char *path, char *why, size_t whylen);
int capstan_cli_audit_main(int argc, char **argv);
int capstan_cli_reload_main(int argc, char **argv);
int capstan_cli_store_main(int argc, char **argv);
int capstan_cli_backup_main(int argc, char **argv);
int capstan_cli_restore_main(int argc, char **argv);

/* ---- Shared helpers ---------------------------------------------------- */

/* Opens the store, runs |fn| in one read transaction, closes the store.
 * A failure prints what to do, or "capstan: |what|: ..." for an error of
 * |fn|. Returns an exit code. */
int capstan_cli_read(const capstan_cli_t *c, int (*fn)(capstan_txn_t *txn, void *arg), void *arg,
                     const char *what);

/* The frame of a list command: opens the store, prints the table header
 * (|header_fmt| and its arguments) or, with --json, the "[" of a JSON array;
 * runs |iterate| in one read transaction (it prints the rows and counts
 * them in *|n|); closes the array; closes the store. A store failure
 * prints "capstan: |what|: ...". Returns an exit code. */
int capstan_cli_list(const capstan_cli_t *c, int (*iterate)(capstan_txn_t *txn, void *arg),
                     void *arg, const size_t *n, const char *what, const char *header_fmt, ...)
    __attribute__((format(printf, 6, 7)));

/* "capstan: <message>\n" on stderr. */
void capstan_cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Writes |s| as a JSON string literal (quotes, escapes; NULL as null). */
void capstan_cli_json_string(FILE *f, const char *s);

/* Writes |len| bytes of text (e.g. stored XML, not NUL-terminated) as a
 * JSON string literal; a NUL byte becomes a space. Writes null when out of
 * memory. */
void capstan_cli_json_bytes(FILE *f, const uint8_t *data, size_t len);

/* Parses an ISO 8601 date or UTC time: YYYY-MM-DD (midnight UTC),
 * YYYY-MM-DDTHH:MM[:SS](Z|+HH:MM|-HH:MM). CAPSTAN_EINVAL when malformed. */
int capstan_cli_parse_time(const char *s, int64_t *out);
/* Formats unix seconds as YYYY-MM-DDTHH:MM:SSZ (buf >= 32 bytes). */
void capstan_cli_format_time(int64_t t, char *buf, size_t len);

/* ---- The audit log (audit.c) -------------------------------------------- */

#define CAPSTAN_CLI_SINCE_FORMS \
  "RFC 3339 (2026-05-01T06:00:00Z; a date alone is 00:00 UTC) or an age (90s, 30m, 2h, 3d, 1w)"
/* Parses --since: CAPSTAN_CLI_SINCE_FORMS, an age counting back from
 * |now_ns|. CAPSTAN_EINVAL when malformed, CAPSTAN_ERANGE when too large. */
int capstan_cli_parse_since(const char *s, int64_t now_ns, int64_t *out_ns);
/* The wall clock in unix nanoseconds. */
int64_t capstan_cli_now_ns(void);

/* What capstan_cli_audit_print prints, and how many it printed (n). */
typedef struct {
  int64_t since_ns;   /* 0: from the first */
  const char *device; /* NULL: every event */
  bool device_column; /* text: a DEVICE column; JSON: a "device" member */
  bool json;          /* a JSON array (no newline after it) instead of a table */
  size_t n;
} capstan_cli_audit_print_t;
/* Prints the events |p| selects, oldest first: a table with a header line
 * (none when there are no events), or a JSON array of {at, [device,]
 * event, user, detail}. Returns a store error. */
int capstan_cli_audit_print(capstan_txn_t *txn, capstan_cli_audit_print_t *p);

/* Writes |n| (CAPSTAN_AUTH_STRING_MIN..MAX) random decimal digits from
 * the system's CSPRNG plus a NUL into |out| (n + 1 bytes). Uniform: no
 * modulo bias. */
int capstan_cli_random_digits(char *out, size_t n);

/* Reads a whole file ("-" = stdin) of at most |max| bytes into a malloc'd
 * buffer (caller frees). Prints the failure and returns a negative error. */
int capstan_cli_read_file(const char *path, size_t max, uint8_t **out, size_t *len);

/* Writes |text| to the file |path| (NULL or "-": stdout), e.g. the value of
 * --out. On failure prints why, naming |what|, and returns
 * CAPSTAN_EXIT_ERROR; 0 on success. */
int capstan_cli_write_text(const char *path, const char *text, const char *what);

/* notAfter of the DER certificate |der| as unix seconds. CAPSTAN_EINVAL if
 * it does not parse. */
int capstan_cli_cert_not_after(const uint8_t *der, size_t len, int64_t *out);

/* Whether directory |dir| holds anything but a serve.pid (one left by a
 * server that never made a store is no content). 0, or a negative errno. */
int capstan_cli_dir_has_content(const char *dir, bool *out);

/* Hex of |len| bytes into |out| (2 * len + 1 bytes). */
void capstan_cli_hex(const uint8_t *data, size_t len, char *out);

/* ---- CSV (RFC 4180) ---------------------------------------------------- */

#define CAPSTAN_CSV_MAX_FIELD 4096       /* bytes in one field */
#define CAPSTAN_CSV_MAX_FIELDS 64        /* fields in one record */
#define CAPSTAN_CSV_MAX_FILE (64u << 20) /* bytes in one file */

/* Called for each record: |line| is the line the record starts on (1 for
 * the first), |fields| NUL-terminated copies valid during the call. Return
 * 0 to go on; a non-zero value stops the parse and is returned. */
typedef int (*capstan_csv_record_fn)(size_t line, char **fields, size_t nfields, void *arg);

/* Parses |data|: comma-separated fields, records ending in CRLF or LF (the
 * last may lack it), fields optionally in double quotes with "" for a
 * quote and line breaks allowed inside. A UTF-8 byte order mark at the
 * start is skipped; blank lines are skipped. Syntax errors return
 * CAPSTAN_EINVAL with *err_line and a static *err_msg (e.g. "unterminated
 * quoted field"). */
int capstan_csv_parse(const uint8_t *data, size_t len, capstan_csv_record_fn fn, void *arg,
                      size_t *err_line, const char **err_msg);

/* Writes one field, quoted when it holds a comma, quote, CR or LF. */
void capstan_csv_write_field(FILE *f, const char *s);

/* The device CSV header, exactly. */
#define CAPSTAN_DEVICE_CSV_HEADER "name,operation,auth_mode,auth_string,key,completes_by"

#define CAPSTAN_DEVICE_CSV_NAME_MAX 72

/* One validated row of a device CSV. */
typedef struct {
  size_t line;
  char name[CAPSTAN_DEVICE_CSV_NAME_MAX];
  Capstan__Operation operation;
  Capstan__AuthMode auth_mode;
  char auth_string[16]; /* "" when the row has none */
  Capstan__KeyAlg key_alg;
  uint32_t key_bits;
  int64_t completes_by; /* 0 = none */
  bool name_upcased;    /* the file had the MAC name with lower-case hex */
  bool name_other_form; /* not SEP + 12 hex digits (CAPSTAN_DEVICE_NAME_OTHER) */
} capstan_device_row_t;
/* Parses and validates a device CSV named |fname| (for messages): header,
 * column count, every field, duplicate names. On success *rows (malloc'd,
 * caller frees) holds *nrows rows. On failure returns CAPSTAN_EINVAL (or
 * CAPSTAN_ENOMEM) with one message in |err| such as
 * "devices.csv:17: column 'key': 'rsa2049' is not one of rsa512,...". Names
 * follow the MAC-name rule of core/base/phone.h: a lower-case MAC name is
 * upper-cased (name_upcased), a malformed SEP name refused, another form
 * kept and marked (name_other_form; the caller decides). A
 * string-mode row without an auth string is valid here: the importer
 * decides (existing string, generation, or an error). */
int capstan_device_csv_parse(const char *fname, const uint8_t *data, size_t len,
                             capstan_device_row_t **rows, size_t *nrows, char *err, size_t errlen);

/* A deadline ("completes by": --completes-by, the CSV's completes_by), in
 * words for help and messages. */
#define CAPSTAN_DEADLINE_FORMS                                                   \
  "YYYY-MM-DD (00:00 UTC that day), YYYY-MM-DDTHH:MM[:SS] (local time: TZ), or " \
  "YYYY-MM-DDTHH:MM[:SS] with Z (UTC) or an offset (+HH:MM, -HH:MM)"
/* Parses a deadline: capstan_cli_parse_time's forms, and a date and time
 * without a zone as local time (the TZ environment variable; a time that
 * does not exist there, in a DST gap, is refused). Returns 0 or
 * CAPSTAN_EINVAL. */
int capstan_cli_parse_deadline(const char *s, int64_t *out);
/* Formats a deadline in local time with its zone, and in UTC when the zone
 * is not UTC: "2030-06-01 09:00:00 NZST (2030-05-31T21:00:00Z)". */
void capstan_cli_format_deadline(int64_t t, char *buf, size_t len);

/* Writes the header and one row per device of |txn| to |f|. */
int capstan_device_csv_export(capstan_txn_t *txn, FILE *f);

/* How an import fills string-mode rows that have no auth string. */
typedef enum {
  CAPSTAN_GENERATE_NONE = 0, /* keep the device's stored string, else error */
  CAPSTAN_GENERATE_UNIQUE,   /* a new random string per such row */
  CAPSTAN_GENERATE_SHARED,   /* one new random string for all such rows */
} capstan_generate_t;

/* What an import did (or, with dry_run, would do). */
typedef struct {
  size_t unchanged;     /* existing devices the row leaves as they are */
  size_t rearmed;       /* succeeded devices scheduled again */
  size_t auth_replaced; /* authentication strings already set, replaced */
  size_t refused;       /* rows refused for want of rearm/replace_auth_strings */
} capstan_device_import_stats_t;

typedef struct {
  const char *fname;
  bool no_update; /* refuse rows naming an existing device */
  capstan_generate_t generate;
  unsigned auth_string_length; /* for generation, 4..10 (0 = 6) */
  int64_t now;
  bool dry_run;                         /* change nothing; report to |report| */
  bool rearm;                           /* allow scheduling a succeeded device again */
  bool replace_auth_strings;            /* allow replacing a string already set */
  FILE *report;                         /* when not NULL: one line per added/changed device */
  capstan_device_import_stats_t *stats; /* when not NULL: filled in */
} capstan_device_import_opts_t;

/* Applies validated rows inside |txn| (a write transaction; the caller
 * commits on success, aborts otherwise). New devices are created; existing
 * ones get the row's fields and are re-armed when the operation changes or
 * their last attempt ended (succeeded, failed, expired). A row that changes
 * nothing is not written. Two changes need a flag: scheduling a succeeded
 * device again (|rearm|) and replacing an authentication string already
 * set, by the row's or a generated one (|replace_auth_strings|); without
 * it every such row is counted and the import fails, naming the first.
 * With |dry_run| nothing is written and those rows are reported, not
 * refused. On failure returns an error with a line-numbered message in
 * |err|. *created and *updated count the rows added and changed. */
int capstan_device_import_rows(capstan_txn_t *txn, capstan_device_row_t *rows, size_t nrows,
                               const capstan_device_import_opts_t *opts, size_t *created,
                               size_t *updated, char *err, size_t errlen);

/* The rule shared by `device set` and import: re-arm when the operation
 * changes or the previous run is over. */
bool capstan_device_should_rearm(const Capstan__Device *d, Capstan__Operation new_op);

#endif
