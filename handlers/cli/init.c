/* `capstan init`: the data directory, the store and the identities. */
#include <stdio.h>

#include "core/base/error.h"
#include "core/identities.h"
#include "handlers/cli/cli.h"

enum { OPT_SUBJECT, OPT_STORE };

static int run_init(capstan_cli_t *c) {
  const char *dir = capstan_cli_data_dir(c);
  capstan_store_t *store = NULL;
  c->store_url = c->value[OPT_STORE];
  if (capstan_cli_open_store(c, CAPSTAN_CLI_STORE_CREATE, &store) != 0) return CAPSTAN_EXIT_ERROR;
  int created = 0;
  int rc = capstan_init_identities(store, c->value[OPT_SUBJECT], &created);
  bool shared = capstan_store_url(store) != NULL;
  capstan_store_close(store);
  if (rc < 0) {
    fprintf(stderr, "capstan init: failed: %s%s\n", capstan_strerror(rc),
            rc == CAPSTAN_EINVAL ? " (check --subject: only O, OU, L, ST, C; C is 2 letters)" : "");
    return CAPSTAN_EXIT_ERROR;
  }
  if (created == 0 && shared) {
    printf(
        "capstan: %s joined the store in PostgreSQL (its CAPF and TFTP identities are the "
        "store's)\n",
        dir);
  } else if (created == 0) {
    printf("capstan: %s is already initialised\n", dir);
  } else {
    printf("capstan: initialised %s (CAPF and TFTP certificates created)\n", dir);
  }
  return CAPSTAN_EXIT_OK;
}

int capstan_cli_init_main(int argc, char **argv) {
  static const capstan_cli_opt_t opts[] = {
      [OPT_SUBJECT] = {"subject", true, NULL},
      [OPT_STORE] = {"store", true, NULL},
  };
  static const capstan_cli_sub_t subs[] = {
      {NULL, CAPSTAN_CLI_OPT(OPT_SUBJECT) | CAPSTAN_CLI_OPT(OPT_STORE), false, 0, 0, NULL,
       run_init},
  };
  static const capstan_cli_cmd_t cmd = {
      .name = "init",
      .usage = "capstan init [--data-dir DIR] [--subject \"O=Org,OU=Unit,C=NZ\"] [--store URL]",
      .help =
          "Creates the data directory (default ./capstan-data, or $CAPSTAN_DATA_DIR), the\n"
          "store, a self-signed CAPF certificate (CN CAPF-xxxxxxxx, RSA 2048, CA:TRUE\n"
          "pathlen 0) and a TFTP signing certificate. Running it again creates only what\n"
          "is missing. --subject adds O/OU/L/ST/C to both certificates' subjects; LSCs\n"
          "copy them from the CAPF certificate.\n"
          "\n"
          "--store URL puts the store in PostgreSQL instead of the directory (LMDB), for\n"
          "several nodes that share it: a libpq URL such as\n"
          "  postgresql://capstan@db.example:5432/capstan?sslmode=verify-full\n"
          "(default: $CAPSTAN_STORE when set). The database must exist; capstan creates\n"
          "its tables. On a database that already holds a capstan store the directory\n"
          "joins it: the node uses the store's CAPF and TFTP identities, never its own.\n"
          "The directory remembers the URL (DIR/store.conf, mode 0600).",
      .opts = opts,
      .nopts = CAPSTAN_CLI_COUNT(opts),
      .subs = subs,
      .nsubs = CAPSTAN_CLI_COUNT(subs),
  };
  return capstan_cli_run(&cmd, argc, argv, NULL);
}
