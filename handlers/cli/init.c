/* `capstan init`: the data directory, the store and the identities. */
#include <getopt.h>
#include <stdio.h>

#include "core/base/error.h"
#include "core/identities.h"
#include "handlers/cli/cli.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: capstan init [--data-dir DIR] [--subject \"O=Org,OU=Unit,C=NZ\"]\n"
          "\n"
          "Creates the data directory (default ./capstan-data, or $CAPSTAN_DATA_DIR), the\n"
          "store, a self-signed CAPF certificate (CN CAPF-xxxxxxxx, RSA 2048, CA:TRUE\n"
          "pathlen 0) and a TFTP signing certificate. Running it again creates only what\n"
          "is missing. --subject adds O/OU/L/ST/C to both certificates' subjects; LSCs\n"
          "copy them from the CAPF certificate.\n");
}

int capstan_cli_init_main(int argc, char **argv) {
  static const struct option kOpts[] = {
      {"data-dir", required_argument, NULL, 'd'},
      {"subject", required_argument, NULL, 's'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  const char *dir = capstan_store_data_dir(NULL);
  const char *subject = NULL;
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "", kOpts, NULL)) != -1) {
    switch (c) {
      case 'd':
        dir = optarg;
        break;
      case 's':
        subject = optarg;
        break;
      case 'h':
        usage(stdout);
        return 0;
      default:
        usage(stderr);
        return 2;
    }
  }
  if (optind != argc) {
    fprintf(stderr, "capstan init: unexpected argument '%s'\n", argv[optind]);
    usage(stderr);
    return 2;
  }
  capstan_store_t *store = NULL;
  int rc = capstan_store_open(dir, CAPSTAN_STORE_CREATE, &store);
  if (rc < 0) {
    fprintf(stderr, "capstan init: cannot open data directory %s: %s\n", dir, capstan_strerror(rc));
    return 1;
  }
  int created = 0;
  rc = capstan_init_identities(store, subject, &created);
  capstan_store_close(store);
  if (rc < 0) {
    fprintf(stderr, "capstan init: failed: %s%s\n", capstan_strerror(rc),
            rc == CAPSTAN_EINVAL ? " (check --subject: only O, OU, L, ST, C; C is 2 letters)" : "");
    return 1;
  }
  if (created == 0) {
    printf("capstan: %s is already initialised\n", dir);
  } else {
    printf("capstan: initialised %s (CAPF and TFTP certificates created)\n", dir);
  }
  return 0;
}
