/* Admin CLI for what the phone-facing services read: trust stores
 * (`capstan trust ...`, trust.c), configuration templates (`capstan
 * template ...`, template.c) and per-device base configurations
 * (`capstan device config ...`, devconfig.c), plus the XML file reader
 * they share (template.c).
 *
 * Same conventions as handlers/cli/cli.h: argv[0] is the command word,
 * options (handlers/cli/options.h) may come anywhere after it, exit codes
 * CAPSTAN_EXIT_OK / _ERROR / _USAGE, and every operational failure prints
 * what to do on stderr. */
#ifndef CAPSTAN_HANDLERS_CLI_FILES_H
#define CAPSTAN_HANDLERS_CLI_FILES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- Subcommands ------------------------------------------------------- */
int capstan_cli_trust_main(int argc, char **argv);
/* `capstan csr ...` (csr.c) and `capstan ca ...` (ca.c). */
int capstan_cli_csr_main(int argc, char **argv);
int capstan_cli_ca_main(int argc, char **argv);
int capstan_cli_template_main(int argc, char **argv);
/* `capstan device config set|show|clear ...`: argv[0] is "config". */
int capstan_cli_devconfig_main(int argc, char **argv);

/* ---- Shared helpers ------------------------------------------------------ */

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
