/* capstan: subcommand dispatch. */
#include <stdio.h>
#include <string.h>

#include "core/log.h"

int main(int argc, char **argv) {
  capstan_log_init();
  if (argc < 2 || strcmp(argv[1], "--help") == 0) {
    printf("usage: capstan <command> [options]\n");
    return argc < 2 ? 2 : 0;
  }
  fprintf(stderr, "capstan: unknown command '%s'\n", argv[1]);
  return 2;
}
