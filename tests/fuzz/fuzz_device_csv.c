/* Fuzz target for the CSV reader and the device CSV validator used by
 * `capstan device import`: any bytes either parse into rows or give one
 * line-numbered message; nothing may crash, leak, or read past the input
 * (the input is not NUL-terminated). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "handlers/cli/cli.h"
#include "core/base/error.h"

static int count_fields(size_t line, char **fields, size_t n, void *arg) {
  size_t *total = arg;
  for (size_t i = 0; i < n; i++) *total += strlen(fields[i]);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  size_t total = 0, eline;
  const char *emsg;
  int rc = capstan_csv_parse(data, size, count_fields, &total, &eline, &emsg);
  if (rc != 0 && emsg == NULL) abort(); /* every failure says why */
  if (total > size) abort();            /* fields come from the input only */

  capstan_device_row_t *rows = NULL;
  size_t n = 0;
  char err[512];
  err[0] = '\0';
  rc = capstan_device_csv_parse("fuzz.csv", data, size, &rows, &n, err, sizeof(err));
  if (rc != 0 && (err[0] == '\0' || rows != NULL || n != 0)) abort();
  for (size_t i = 0; i < n; i++) {
    if (rows[i].line == 0 || rows[i].name[0] == '\0') abort();
  }
  free(rows);
  return 0;
}
