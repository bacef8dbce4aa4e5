/* The one command-line parser of every capstan command (a table-driven
 * layer over getopt_long), and the helpers every command shares to find the
 * data directory, open the store and word its errors.
 *
 * A command declares a capstan_cli_cmd_t: its name, usage, its options (a
 * table of capstan_cli_opt_t) and its subcommands (a table of
 * capstan_cli_sub_t, each naming the options it accepts, how many
 * positional arguments it takes and the function that runs it). A command
 * without subcommand words has one row whose name is NULL.
 * capstan_cli_run parses argv and calls the chosen row's run:
 *
 *  - options may come anywhere after the command word, also before the
 *    subcommand word; "--" ends them; "-" is a positional argument;
 *  - --data-dir DIR, --help (-h, or the subcommand word "help") are known to
 *    every command, --json to every row that sets json;
 *  - a usage error prints "capstan: CMD[ SUB]: WHAT" and the usage on
 *    stderr and exits CAPSTAN_EXIT_USAGE (2): an unknown option, a missing
 *    value, an option the row does not take, a value its set function
 *    refuses, a missing or unknown subcommand, too few or too many
 *    positional arguments;
 *  - --help prints the usage (and the command's help text) on stdout and
 *    exits 0.
 * The order of the checks: unknown options and missing values, --help,
 * the subcommand, then each option in command-line order (does it apply,
 * does its value parse), then the number of arguments. */
#ifndef CAPSTAN_HANDLERS_CLI_OPTIONS_H
#define CAPSTAN_HANDLERS_CLI_OPTIONS_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "storage/store.h"

#define CAPSTAN_EXIT_OK 0
#define CAPSTAN_EXIT_ERROR 1
#define CAPSTAN_EXIT_USAGE 2

/* Options in one command's table, at most. */
#define CAPSTAN_CLI_MAX_OPTS 64
/* The bit of option |i| (its index in the command's table) in
 * capstan_cli_sub_t.opts and capstan_cli_t.seen. */
#define CAPSTAN_CLI_OPT(i) (UINT64_C(1) << (i))
/* Rows (or options) in a static table. */
#define CAPSTAN_CLI_COUNT(a) (sizeof(a) / sizeof((a)[0]))
/* A static table and its length, for capstan_cli_cmd_t's opts/nopts and
 * subs/nsubs. */
#define CAPSTAN_CLI_TABLE(a) (a), CAPSTAN_CLI_COUNT(a)
/* max_args of a row that takes any number of arguments. */
#define CAPSTAN_CLI_ARGS_ANY INT_MAX

/* One option: --NAME, or --NAME VALUE when |has_value|. |set|, when not
 * NULL, checks the value (NULL for a flag) and stores it in the command's
 * context |ctx|; it returns 0, or non-zero with the whole complaint in
 * |why| (e.g. "--key must be one of ...; got 'x'"), a usage error. Without
 * |set| the command reads the value from capstan_cli_t.value. */
typedef struct {
  const char *name;
  bool has_value;
  int (*set)(void *ctx, const char *value, char *why, size_t whylen);
} capstan_cli_opt_t;

typedef struct capstan_cli capstan_cli_t;

/* One subcommand (or the only row of a command without subcommands). */
typedef struct {
  const char *name;       /* the subcommand word; NULL: the command has none */
  uint64_t opts;          /* CAPSTAN_CLI_OPT bits of the options it takes */
  bool json;              /* takes --json */
  int min_args, max_args; /* positional arguments after the subcommand word */
  const char *usage;      /* its own usage; NULL: the command's */
  int (*run)(capstan_cli_t *c);
} capstan_cli_sub_t;

typedef struct {
  const char *name;  /* as in messages: "device", "device config" */
  const char *usage; /* printed after "usage: "; several lines may follow */
  const char *help;  /* more text for --help, after a blank line; or NULL */
  const capstan_cli_opt_t *opts;
  size_t nopts;
  const capstan_cli_sub_t *subs;
  size_t nsubs;
} capstan_cli_cmd_t;

/* What capstan_cli_run parsed; valid while the row's run runs. */
struct capstan_cli {
  const capstan_cli_cmd_t *cmd;
  const capstan_cli_sub_t *sub;
  void *ctx;             /* the command's own context, as given */
  const char *data_dir;  /* --data-dir as given, or NULL (see capstan_cli_data_dir) */
  const char *store_url; /* where a store the command creates goes (init --store) */
  bool json;             /* --json */
  uint64_t seen;         /* CAPSTAN_CLI_OPT bits of the options given */
  const char *value[CAPSTAN_CLI_MAX_OPTS]; /* the last value of each option given */
  char **args;                             /* positional arguments after the subcommand word */
  int nargs;
};

/* Parses argv (argv[0] is the command word, or the last word of a nested
 * command such as "config" in `capstan device config`) as described at the
 * top, then runs the chosen row with |ctx| in capstan_cli_t.ctx. Returns the
 * process exit code. */
int capstan_cli_run(const capstan_cli_cmd_t *cmd, int argc, char **argv, void *ctx);

/* True when option |i| of the command's table was given. */
bool capstan_cli_has(const capstan_cli_t *c, int i);

/* A usage error found by a row's run (e.g. two options that exclude each
 * other): prints it as the parser does and returns CAPSTAN_EXIT_USAGE. */
int capstan_cli_usage_error(const capstan_cli_t *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The data directory: --data-dir, else $CAPSTAN_DATA_DIR, else
 * ./capstan-data (capstan_store_data_dir; borrowed). */
const char *capstan_cli_data_dir(const capstan_cli_t *c);

/* |path| made absolute against |cwd| (when relative) and normalised
 * lexically: no ".", "..", repeated or trailing "/" (symbolic links are not
 * followed). 0, or CAPSTAN_ERANGE when it does not fit |len| bytes. */
int capstan_cli_normalize_path(const char *path, const char *cwd, char *out, size_t len);

/* True when |dir| names the built-in default data directory,
 * CAPSTAN_STORE_DEFAULT_DIR of the current directory, however it is written
 * ("./capstan-data", "capstan-data/", its absolute path). `capstan serve`
 * initialises only this one without --init. */
bool capstan_cli_is_default_data_dir(const char *dir);

/* How capstan_cli_open_store opens the store. */
typedef enum {
  CAPSTAN_CLI_STORE_EXISTING = 0, /* it must exist */
  CAPSTAN_CLI_STORE_CREATE,       /* create the data directory and store if missing */
  CAPSTAN_CLI_STORE_OPTIONAL,     /* a missing store is no error: *out = NULL */
} capstan_cli_store_how_t;

/* Opens the store in the data directory, with capstan_cli_actor as the
 * user of the audit events it appends. On failure prints what to do
 * ("no capstan data in DIR: run 'capstan init --data-dir DIR' first", a
 * permission problem, or the error) and returns CAPSTAN_EXIT_ERROR; 0 on
 * success. The caller closes *out. */
int capstan_cli_open_store(const capstan_cli_t *c, capstan_cli_store_how_t how,
                           capstan_store_t **out);

/* Who runs this command, as audit events record it: the Unix user name of
 * the real uid ("uid N" when it has none), and when $SUDO_USER names
 * someone else, " (sudo by NAME)" ("root (sudo by alice)"). $SUDO_USER is
 * only what the environment says; the uid is the kernel's. The store
 * opened by capstan_cli_open_store stamps it on every audit event. */
#define CAPSTAN_CLI_ACTOR_MAX 160
void capstan_cli_actor(char *buf, size_t len);
/* The rule itself, for tests: |name| may be NULL; a name with spaces or
 * control characters is not used. */
void capstan_cli_format_actor(const char *name, unsigned uid, const char *sudo_user, char *buf,
                              size_t len);

/* Prints "capstan: WHAT: REASON" for a failed store operation (a full
 * store says what to do) and returns CAPSTAN_EXIT_ERROR. */
int capstan_cli_store_error(const char *what, int err);

#endif
