/* Fuzz target for what operators type or write that the server parses as
 * text: the `capstan serve --config` file (handlers/cli/serve.c, read from
 * a file as the server does), each line as a setting (`capstan config set
 * NAME VALUE`: core/settings.c, with the value the setting then shows set
 * again to the same settings), host names, issuers, times (--since, ISO
 * 8601) and path normalisation. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <strings.h>
#include <sys/types.h>
#include <unistd.h>

#include "core/base/log.h"
#include "core/settings.h"
#include "handlers/cli/cli.h"
#include "handlers/cli/options.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char g_path[64];
static int g_fd = -1;

static void init(void) {
  capstan_log_init();
  if (getenv("CAPSTAN_LOG_LEVEL") == NULL) capstan_log_set_level(CAPSTAN_LOG_ERROR);
  snprintf(g_path, sizeof(g_path), "/tmp/fuzz_config_file.%d", (int)getpid());
  g_fd = open(g_path, O_RDWR | O_CREAT | O_TRUNC, 0600);
  if (g_fd < 0) abort();
}

static void cleanup(void) {
  if (g_fd >= 0) unlink(g_path);
}

/* One "name=value" (or "name value") line as `capstan config set`. */
static void setting(capstan_settings_t *s, char *line) {
  char *sep = strpbrk(line, "= ");
  if (sep == NULL) return;
  *sep = '\0';
  const char *name = line, *value = sep + 1;
  char err[256] = "";
  capstan_settings_t before = *s;
  int rc = capstan_settings_set(s, name, value, err, sizeof(err));
  if (rc != 0) {
    if (err[0] == '\0') abort();                      /* the operator is told why */
    if (!capstan_settings_equal(&before, s)) abort(); /* and nothing changed */
    return;
  }
  /* What `config show` prints is accepted back, unchanged. */
  char shown[1024];
  if (capstan_settings_get(s, name, shown, sizeof(shown)) != 0) abort();
  capstan_settings_t again = *s;
  if (capstan_settings_set(&again, name, shown, err, sizeof(err)) != 0) {
    fprintf(stderr, "setting %s: '%s' shown, refused back: %s\n", name, shown, err);
    abort();
  }
  if (!capstan_settings_equal(&again, s)) abort();
  char fmt[4096];
  capstan_settings_format(s, fmt, sizeof(fmt));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (g_fd < 0) {
    init();
    atexit(cleanup);
  }
  /* The whole input as a config file. */
  if (ftruncate(g_fd, 0) != 0 || pwrite(g_fd, data, size, 0) != (ssize_t)size) abort();
  char why[512];
  if (capstan_cli_serve_read_config(g_path, why, sizeof(why)) != 0 && why[0] == '\0') abort();

  /* Each line (up to a NUL) as a setting and as the other strings. */
  char *text = malloc(size + 1);
  if (text == NULL) return 0;
  memcpy(text, data, size);
  text[size] = '\0';
  capstan_settings_t s;
  capstan_settings_defaults(&s);
  char *save = NULL;
  for (char *line = strtok_r(text, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
    (void)capstan_settings_host_valid(line);
    unsigned issuer;
    if (capstan_issuer_parse(line, &issuer) == 0 &&
        strcmp(capstan_issuer_name(issuer), line) != 0 &&
        strcasecmp(capstan_issuer_name(issuer), line) != 0) {
      abort();
    }
    int64_t t, ns;
    (void)capstan_cli_parse_time(line, &t);
    (void)capstan_cli_parse_since(line, 1780000000LL * 1000000000LL, &ns);
    char norm[256];
    (void)capstan_cli_normalize_path(line, "/var/lib/capstan", norm, sizeof(norm));
    setting(&s, line);
  }
  free(text);
  return 0;
}
