/* capstan: subcommand dispatch. Each command gets argv starting at its own
 * word and returns the process exit code (0 ok, 1 operational error, 2
 * usage error). */
#include <stdio.h>
#include <string.h>

#include "handlers/cli/cli.h"
#include "handlers/cli/files.h"
#include "core/base/log.h"

typedef struct {
  const char *name;
  int (*main)(int argc, char **argv);
  const char *summary;
} command_t;

static const command_t commands[] = {
    {"serve", capstan_cli_serve_main, "run the server in the foreground"},
    {"reload", capstan_cli_reload_main,
     "make the server of the data directory reload certificates and settings"},
    {"backup", capstan_cli_backup_main,
     "copy the store (private keys included) to a file, also while serving"},
    {"restore", capstan_cli_restore_main, "make a backup file the store of a data directory"},
    {"init", capstan_cli_init_main, "create the data directory and the CAPF and TFTP identities"},
    {"store", capstan_cli_store_main,
     "where the store is (LMDB or PostgreSQL); migrate its schema"},
    {"device", capstan_cli_device_main,
     "add, set, show, list, remove, import, export devices; their history; auth strings"},
    {"config", capstan_cli_config_main, "get, set and list live settings"},
    {"keepalive", capstan_cli_keepalive_main, "set or show the CAPF keep-alive (minutes)"},
    {"cert", capstan_cli_cert_main,
     "the CAPF certificate (show, regenerate, CSR, import, retire); export; stale LSCs"},
    {"report", capstan_cli_report_main, "operation status counts; expiring certificates"},
    {"trust", capstan_cli_trust_main, "add, list, remove, export CAPF-trust and CallManager-trust"},
    {"template", capstan_cli_template_main, "base configuration templates; assign them to devices"},
    {"csr", capstan_cli_csr_main,
     "phones' certificate requests for an offline CA: list, export, import"},
    {"ca", capstan_cli_ca_main, "the online CA (EST or Microsoft CA): set, show, test"},
    {"audit", capstan_cli_audit_main, "the audit log: who changed what, and what the server did"},
};

static void usage(FILE *f) {
  fprintf(f, "usage: capstan <command> [arguments] [--data-dir DIR]\n\ncommands:\n");
  for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
    fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
  }
  fprintf(f,
          "\nThe data directory is --data-dir, else $CAPSTAN_DATA_DIR, else ./capstan-data.\n"
          "See 'capstan <command> --help'.\n");
}

int main(int argc, char **argv) {
  capstan_log_init();
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
      strcmp(argv[1], "help") == 0) {
    usage(stdout);
    return 0;
  }
  if (strcmp(argv[1], "--version") == 0) {
    printf("capstan %s\n", CAPSTAN_VERSION);
    return 0;
  }
  for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
    if (strcmp(argv[1], commands[i].name) == 0) return commands[i].main(argc - 1, argv + 1);
  }
  fprintf(stderr, "capstan: unknown command '%s'\n", argv[1]);
  usage(stderr);
  return 2;
}
