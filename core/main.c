/* capstan: subcommand dispatch. */
#include <stdio.h>
#include <string.h>

#include "core/init.h"
#include "core/log.h"
#include "core/serve.h"

int main(int argc, char **argv) {
  capstan_log_init();
  if (argc < 2 || strcmp(argv[1], "--help") == 0) {
    printf("usage: capstan <command> [options]\n");
    return argc < 2 ? 2 : 0;
  }
  if (strcmp(argv[1], "serve") == 0) return capstan_serve_main(argc - 1, argv + 1);
  if (strcmp(argv[1], "init") == 0) return capstan_init_main(argc - 1, argv + 1);
  fprintf(stderr, "capstan: unknown command '%s'\n", argv[1]);
  return 2;
}
