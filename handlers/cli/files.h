/* Admin CLI for what the phone-facing services read: trust stores
 * (`capstan trust ...`, cli_trust.c), configuration templates (`capstan
 * template ...`, cli_template.c) and per-device base configurations
 * (`capstan device config ...`, cli_devconfig.c), plus the option parser
 * and XML file reader they share (cli_template.c).
 *
 * Same conventions as core/cli.h: argv[0] is the command word, options may
 * come anywhere after it, exit codes CAPSTAN_EXIT_OK / _ERROR / _USAGE, and
 * every operational failure prints what to do on stderr. */
#ifndef CAPSTAN_HANDLERS_CLI_FILES_H
#define CAPSTAN_HANDLERS_CLI_FILES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- Subcommands ------------------------------------------------------- */
int capstan_cli_trust_main(int argc, char **argv);
int capstan_cli_template_main(int argc, char **argv);
/* `capstan device config set|show|clear ...`: argv[0] is "config". */
int capstan_cli_devconfig_main(int argc, char **argv);

/* ---- Shared option parsing ----------------------------------------------- */

/* Options known to the parser; a subcommand allows a subset (--data-dir
 * and --help are always allowed). */
enum {
  CAPSTAN_FOPT_JSON = 1u << 0,        /* --json */
  CAPSTAN_FOPT_PURPOSE = 1u << 1,     /* --purpose P */
  CAPSTAN_FOPT_ALL_PURPOSE = 1u << 2, /* --all-purpose P */
  CAPSTAN_FOPT_OUT = 1u << 3,         /* --out FILE */
  CAPSTAN_FOPT_ALL = 1u << 4,         /* --all */
  CAPSTAN_FOPT_DAYS = 1u << 5,        /* --days N (0..36500) */
};

typedef struct {
  unsigned seen; /* CAPSTAN_FOPT_* bits given */
  const char *data_dir;
  const char *purpose;
  const char *all_purpose;
  const char *out;
  long days;
  bool json;
  bool all;
  bool help;
  char **args; /* positional arguments (borrowed strings; array malloc'd) */
  int nargs;
} capstan_cli_fopts_t;

/* Parses argv[1..] (argv[0] is the command word) into |o|. Positional
 * arguments may be mixed with options; "-" is a positional argument. On a
 * usage error prints "capstan: <cmd>: <what>" and |usage| and returns
 * CAPSTAN_EXIT_USAGE; 0 otherwise. Free with capstan_cli_fopts_free, also
 * after a failure. */
int capstan_cli_fopts_parse(int argc, char **argv, unsigned allowed, const char *cmd,
                            const char *usage, capstan_cli_fopts_t *o);
void capstan_cli_fopts_free(capstan_cli_fopts_t *o);

/* Reads the XML file |path| ("-" = stdin) of at most CAPSTAN_CNFXML_MAX
 * bytes and checks it with capstan_cnfxml_validate. On failure prints
 * "capstan: FILE: line N: reason" (or why the file cannot be read) and
 * returns a negative error; on success *out (malloc'd, caller frees) holds
 * the bytes unchanged. */
int capstan_cli_read_config_xml(const char *path, uint8_t **out, size_t *len);

/* True for a template name: 1..64 characters of [A-Za-z0-9._-] starting
 * with a letter or digit, and not "none" (which means "no template"). */
bool capstan_cli_template_name_valid(const char *name);

#endif
