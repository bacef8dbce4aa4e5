/* `capstan config get|set|list` and `capstan keepalive set|show`. A running
 * server notices the committed change (store transaction id) and applies
 * it live. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "handlers/cli/cli.h"
#include "handlers/cli/files.h"
#include "core/base/error.h"
#include "core/capf_lifecycle.h"
#include "core/settings.h"
#include "storage/records.h"

/* The settings: the stored ones, or the defaults (what a server would
 * use) when there is no store yet. Returns an exit code. */
static int load(const capstan_cli_t *c, capstan_settings_t *out) {
  capstan_store_t *s;
  if (capstan_cli_open_store(c, CAPSTAN_CLI_STORE_OPTIONAL, &s) != 0) return CAPSTAN_EXIT_ERROR;
  if (s == NULL) {
    capstan_settings_defaults(out);
    return 0;
  }
  int err = capstan_settings_load(s, out);
  capstan_store_close(s);
  if (err != 0) return capstan_cli_store_error("cannot read settings", err);
  return 0;
}

/* Sets |name| to |value| in one write transaction (read-modify-write
 * inside it, so a concurrent change of another setting is not lost). */
typedef struct {
  const char *name, *value;
  char err[256];
  int set_rc;
  size_t ended; /* previous CAPF certificates whose trust window ended */
} set_ctx_t;

static int set_fn(capstan_txn_t *txn, void *arg) {
  set_ctx_t *c = arg;
  capstan_settings_t s;
  int err = capstan_settings_read(txn, &s);
  if (err != 0) return err;
  unsigned old_trust_days = s.capf_previous_trust_days;
  c->set_rc = capstan_settings_set(&s, c->name, c->value, c->err, sizeof(c->err));
  err = c->set_rc;
  if (err == 0) err = capstan_settings_write(txn, &s);
  if (err == 0) {
    char detail[320];
    snprintf(detail, sizeof(detail), "%s=%s", c->name, c->value);
    err = capstan_store_audit_append(txn, 0, NULL, "setting_changed", detail);
  }
  if (err == 0 && strcmp(c->name, "capf-previous-trust-days") == 0) {
    /* A previous CAPF whose window ended (under the old value or the new
     * one) stays ended: raising the value again must not re-trust it. */
    unsigned days =
        old_trust_days < s.capf_previous_trust_days ? old_trust_days : s.capf_previous_trust_days;
    err = capstan_capf_previous_end_elapsed(txn, (int64_t)time(NULL), days, &c->ended);
  }
  return err;
}

static int do_set(const capstan_cli_t *c, const char *name, const char *value) {
  char err[256];
  /* Validate before touching the store, so a typo never creates a data
   * directory or takes the write lock. */
  capstan_settings_t probe;
  capstan_settings_defaults(&probe);
  int rc = capstan_settings_set(&probe, name, value, err, sizeof(err));
  if (rc != 0) {
    capstan_cli_error("%s", err);
    return CAPSTAN_EXIT_USAGE; /* the command line is wrong, not the system */
  }
  capstan_store_t *s;
  if (capstan_cli_open_store(c, CAPSTAN_CLI_STORE_CREATE, &s) != 0) return CAPSTAN_EXIT_ERROR;
  set_ctx_t set = {.name = name, .value = value};
  rc = capstan_store_write(s, set_fn, &set);
  capstan_store_close(s);
  if (rc != 0 && set.set_rc != 0) {
    capstan_cli_error("%s", set.err);
    return CAPSTAN_EXIT_ERROR;
  }
  if (rc != 0) return capstan_cli_store_error("cannot save the setting", rc);
  printf("%s = %s\n", name, value);
  if (set.ended > 0) {
    fprintf(stderr,
            "capstan: %zu previous CAPF certificate%s reached the end of %s trust window and "
            "%s no longer trusted (raising the value later does not trust %s again)\n",
            set.ended, set.ended == 1 ? "" : "s", set.ended == 1 ? "its" : "their",
            set.ended == 1 ? "is" : "are", set.ended == 1 ? "it" : "them");
  }
  return CAPSTAN_EXIT_OK;
}

static int do_get(const capstan_cli_t *c, const char *name) {
  if (capstan_settings_find(name) == NULL) {
    capstan_cli_error("unknown setting '%s' (see 'capstan config list')", name);
    return CAPSTAN_EXIT_USAGE;
  }
  capstan_settings_t st;
  if (load(c, &st) != 0) return CAPSTAN_EXIT_ERROR;
  char buf[300];
  capstan_settings_get(&st, name, buf, sizeof(buf));
  printf("%s\n", buf);
  return CAPSTAN_EXIT_OK;
}

static int run_list(capstan_cli_t *c) {
  bool json = c->json;
  capstan_settings_t st;
  if (load(c, &st) != 0) return CAPSTAN_EXIT_ERROR;
  if (json) fputs("{", stdout);
  for (size_t i = 0; i < capstan_settings_count(); i++) {
    const capstan_setting_info_t *info = capstan_settings_info(i);
    char buf[300];
    capstan_settings_get(&st, info->name, buf, sizeof(buf));
    if (json) {
      fputs(i == 0 ? "\n  " : ",\n  ", stdout);
      capstan_cli_json_string(stdout, info->name);
      fputc(':', stdout);
      if (info->kind == CAPSTAN_SETTING_UINT) {
        fputs(buf, stdout);
      } else if (info->kind == CAPSTAN_SETTING_BOOL) {
        fputs(strcmp(buf, "on") == 0 ? "true" : "false", stdout);
      } else {
        capstan_cli_json_string(stdout, buf);
      }
    } else {
      char range[64] = "";
      switch (info->kind) {
        case CAPSTAN_SETTING_UINT:
          snprintf(range, sizeof(range), "%u..%u", info->min, info->max);
          break;
        case CAPSTAN_SETTING_BOOL:
          snprintf(range, sizeof(range), "on|off");
          break;
        case CAPSTAN_SETTING_DIGEST:
          snprintf(range, sizeof(range), "sha1|sha512");
          break;
        case CAPSTAN_SETTING_ISSUER:
          snprintf(range, sizeof(range), "capf|est|mscs|offline");
          break;
        case CAPSTAN_SETTING_HOST:
          snprintf(range, sizeof(range), "host|IP");
          break;
      }
      printf("%-34s %-16s %-14s %s\n", info->name, buf[0] != '\0' ? buf : "\"\"", range,
             info->help);
    }
  }
  if (json) fputs("\n}\n", stdout);
  return CAPSTAN_EXIT_OK;
}

static int run_get(capstan_cli_t *c) {
  return do_get(c, c->args[0]);
}

static int run_set(capstan_cli_t *c) {
  return do_set(c, c->args[0], c->args[1]);
}

#define CONFIG_USAGE                                                          \
  "capstan config get KEY | set KEY VALUE | list [--json] [--data-dir DIR]\n" \
  "       (see 'capstan config list' for the keys, their values and ranges)"

/* get and set have always taken --json and ignored it; scripts may pass it. */
static const capstan_cli_sub_t config_subs[] = {
    {"get", 0, true, 1, 1, NULL, run_get},
    {"set", 0, true, 2, 2, NULL, run_set},
    {"list", 0, true, 0, 0, NULL, run_list},
};

/* --help lists every setting from the table: its range, its default and
 * what it is for (for a limit: what it protects against and what a phone
 * beyond it is told). */
static const char *config_help(void) {
  static char text[8192];
  size_t used = 0;
  capstan_settings_t defaults;
  capstan_settings_defaults(&defaults);
  int n = snprintf(text, sizeof(text),
                   "Settings (live: a running server applies a change within a second; limits\n"
                   "apply to new connections, open ones are never cut):\n");
  for (size_t i = 0; n >= 0 && (size_t)n < sizeof(text) - used; i++) {
    used += (size_t)n;
    const capstan_setting_info_t *info = capstan_settings_info(i);
    if (info == NULL) break;
    char value[CAPSTAN_SETTING_HOST_MAX + 1], range[32] = "";
    capstan_settings_get(&defaults, info->name, value, sizeof(value));
    if (info->kind == CAPSTAN_SETTING_UINT)
      snprintf(range, sizeof(range), ", %u..%u", info->min, info->max);
    n = snprintf(text + used, sizeof(text) - used, "  %s (default %s%s)\n      %s\n", info->name,
                 value[0] != '\0' ? value : "\"\"", range, info->help);
  }
  return text;
}

int capstan_cli_config_main(int argc, char **argv) {
  static capstan_cli_cmd_t cmd = {
      "config", CONFIG_USAGE, NULL, NULL, 0, CAPSTAN_CLI_TABLE(config_subs)};
  cmd.help = config_help();
  return capstan_cli_run(&cmd, argc, argv, NULL);
}

static int run_keepalive_set(capstan_cli_t *c) {
  return do_set(c, "keepalive-minutes", c->args[0]);
}

static int run_keepalive_show(capstan_cli_t *c) {
  return do_get(c, "keepalive-minutes");
}

#define KEEPALIVE_USAGE "capstan keepalive set MINUTES (5..60) | show [--data-dir DIR]"

static const capstan_cli_sub_t keepalive_subs[] = {
    {"set", 0, false, 1, 1, NULL, run_keepalive_set},
    {"show", 0, false, 0, 0, NULL, run_keepalive_show},
};

int capstan_cli_keepalive_main(int argc, char **argv) {
  static const capstan_cli_cmd_t cmd = {
      "keepalive", KEEPALIVE_USAGE, NULL, NULL, 0, CAPSTAN_CLI_TABLE(keepalive_subs)};
  return capstan_cli_run(&cmd, argc, argv, NULL);
}
