/* `capstan store`: the store of a data directory: where it is, and the
 * PostgreSQL schema's migration. */
#include <stdio.h>
#include <string.h>

#include "core/base/error.h"
#include "handlers/cli/cli.h"
#include "storage/store.h"

/* |url| with its password, if any, replaced by "***": in a URI's
 * user:password@ and in a key=value string's password=... */
static void mask_password(const char *url, char *out, size_t len) {
  /* "***" may be longer than the password: room for it, else nothing. */
  if (strlen(url) + 8 > len) {
    snprintf(out, len, "(%zu bytes, not shown)", strlen(url));
    return;
  }
  snprintf(out, len, "%s", url);
  char *scheme = strstr(out, "://");
  if (scheme != NULL) {
    char *user = scheme + 3, *at = strchr(user, '@'), *slash = strchr(user, '/');
    char *colon = strchr(user, ':');
    if (at != NULL && (slash == NULL || at < slash) && colon != NULL && colon < at) {
      memmove(colon + 4, at, strlen(at) + 1);
      memcpy(colon + 1, "***", 3);
    }
  }
  char *pw = strstr(out, "password=");
  if (pw != NULL) {
    char *v = pw + strlen("password="), *end = v + strcspn(v, " &");
    memmove(v + 3, end, strlen(end) + 1);
    memcpy(v, "***", 3);
  }
}

static int run_show(capstan_cli_t *c) {
  capstan_store_t *store = NULL;
  if (capstan_cli_open_store(c, CAPSTAN_CLI_STORE_EXISTING, &store) != 0) {
    return CAPSTAN_EXIT_ERROR;
  }
  const char *url = capstan_store_url(store);
  printf("backend: %s\n", capstan_store_backend(store));
  if (url != NULL) {
    char shown[CAPSTAN_STORE_URL_MAX];
    mask_password(url, shown, sizeof(shown));
    printf("url: %s\n", shown);
  }
  printf("size_bytes: %llu\n", (unsigned long long)capstan_store_size_bytes(store));
  capstan_store_close(store);
  return CAPSTAN_EXIT_OK;
}

static int run_migrate(capstan_cli_t *c) {
  const char *dir = capstan_cli_data_dir(c);
  capstan_store_t *store = NULL;
  int err = capstan_store_open(dir, CAPSTAN_STORE_MIGRATE, &store);
  if (err != 0) {
    capstan_cli_error("store migrate: cannot open the store of '%s': %s", dir,
                      capstan_strerror(err));
    return CAPSTAN_EXIT_ERROR;
  }
  const char *backend = capstan_store_backend(store);
  capstan_store_close(store);
  printf("capstan: the %s store of %s is at the current schema\n", backend, dir);
  return CAPSTAN_EXIT_OK;
}

int capstan_cli_store_main(int argc, char **argv) {
  static const capstan_cli_sub_t subs[] = {
      {"show", 0, false, 0, 0, NULL, run_show},
      {"migrate", 0, false, 0, 0, NULL, run_migrate},
  };
  static const capstan_cli_cmd_t cmd = {
      .name = "store",
      .usage = "capstan store show|migrate [--data-dir DIR]",
      .help =
          "show     where the data directory's store is (lmdb, or postgresql and its URL)\n"
          "         and its size.\n"
          "migrate  brings a PostgreSQL store's schema to this version's (the tables are\n"
          "         created by 'capstan init --store URL'). Other commands and the server\n"
          "         refuse an older schema and say to run this; upgrade every node before\n"
          "         it runs. An LMDB store needs no migration.",
      .opts = NULL,
      .nopts = 0,
      .subs = subs,
      .nsubs = CAPSTAN_CLI_COUNT(subs),
  };
  return capstan_cli_run(&cmd, argc, argv, NULL);
}
