/* `capstan config get|set|list` and `capstan keepalive set|show`. A running
 * server notices the committed change (store transaction id) and applies
 * it live. */
#include <stdlib.h>
#include <string.h>

#include "handlers/cli/cli.h"
#include "handlers/cli/files.h"
#include "core/base/error.h"
#include "core/settings.h"
#include "storage/records.h"

/* The settings in |dir|: the stored ones, or the defaults (what a server
 * would use) when there is no store yet. Returns an exit code. */
static int load(const char *dir, capstan_settings_t *out) {
  capstan_store_t *s;
  int err = capstan_store_open(dir, 0, &s);
  if (err == CAPSTAN_ENOENT) {
    capstan_settings_defaults(out);
    return 0;
  }
  if (err != 0) return capstan_cli_open_store(dir, false, &s); /* prints why */
  err = capstan_settings_load(s, out);
  capstan_store_close(s);
  if (err != 0) {
    capstan_cli_error("cannot read settings: %s", capstan_strerror(err));
    return CAPSTAN_EXIT_ERROR;
  }
  return 0;
}

/* Sets |name| to |value| in one write transaction (read-modify-write
 * inside it, so a concurrent change of another setting is not lost). */
typedef struct {
  const char *name, *value;
  char err[256];
  int set_rc;
} set_ctx_t;

static int set_fn(capstan_txn_t *txn, void *arg) {
  set_ctx_t *c = arg;
  capstan_settings_t s;
  int err = capstan_settings_read(txn, &s);
  if (err != 0) return err;
  c->set_rc = capstan_settings_set(&s, c->name, c->value, c->err, sizeof(c->err));
  err = c->set_rc;
  if (err == 0) err = capstan_settings_write(txn, &s);
  if (err == 0) {
    char detail[320];
    snprintf(detail, sizeof(detail), "%s=%s", c->name, c->value);
    err = capstan_store_audit_append(txn, 0, NULL, "setting_changed", detail);
  }
  return err;
}

static int do_set(const char *dir, const char *name, const char *value) {
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
  if (capstan_cli_open_store(dir, true, &s) != 0) return CAPSTAN_EXIT_ERROR;
  set_ctx_t c = {.name = name, .value = value};
  rc = capstan_store_write(s, set_fn, &c);
  capstan_store_close(s);
  if (rc != 0) {
    if (c.set_rc != 0) {
      capstan_cli_error("%s", c.err);
    } else {
      capstan_cli_error("cannot save the setting: %s", capstan_strerror(rc));
    }
    return CAPSTAN_EXIT_ERROR;
  }
  printf("%s = %s\n", name, value);
  return CAPSTAN_EXIT_OK;
}

static int do_get(const char *dir, const char *name) {
  if (capstan_settings_find(name) == NULL) {
    capstan_cli_error("unknown setting '%s' (see 'capstan config list')", name);
    return CAPSTAN_EXIT_USAGE;
  }
  capstan_settings_t st;
  if (load(dir, &st) != 0) return CAPSTAN_EXIT_ERROR;
  char buf[300];
  capstan_settings_get(&st, name, buf, sizeof(buf));
  printf("%s\n", buf);
  return CAPSTAN_EXIT_OK;
}

static int do_list(const char *dir, bool json) {
  capstan_settings_t st;
  if (load(dir, &st) != 0) return CAPSTAN_EXIT_ERROR;
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
        case CAPSTAN_SETTING_HOST:
          snprintf(range, sizeof(range), "host|IP");
          break;
      }
      printf("%-28s %-16s %-14s %s\n", info->name, buf[0] != '\0' ? buf : "\"\"", range,
             info->help);
    }
  }
  if (json) fputs("\n}\n", stdout);
  return CAPSTAN_EXIT_OK;
}

#define CONFIG_USAGE                                                          \
  "capstan config get KEY | set KEY VALUE | list [--json] [--data-dir DIR]\n" \
  "       (see 'capstan config list' for the keys, their values and ranges)"

int capstan_cli_config_main(int argc, char **argv) {
  capstan_cli_fopts_t o;
  int rc = capstan_cli_fopts_parse(argc, argv, CAPSTAN_FOPT_JSON, "config", CONFIG_USAGE, &o);
  if (rc != 0) {
    capstan_cli_fopts_free(&o);
    return rc;
  }
  const char *dir = capstan_store_data_dir(o.data_dir);
  if (o.help || (o.nargs == 1 && strcmp(o.args[0], "help") == 0)) {
    printf("usage: %s\n", CONFIG_USAGE);
    rc = CAPSTAN_EXIT_OK;
  } else if (o.nargs == 2 && strcmp(o.args[0], "get") == 0) {
    rc = do_get(dir, o.args[1]);
  } else if (o.nargs == 3 && strcmp(o.args[0], "set") == 0) {
    rc = do_set(dir, o.args[1], o.args[2]);
  } else if (o.nargs == 1 && strcmp(o.args[0], "list") == 0) {
    rc = do_list(dir, o.json);
  } else {
    fprintf(stderr, "capstan: config: expected get KEY, set KEY VALUE or list\nusage: %s\n",
            CONFIG_USAGE);
    rc = CAPSTAN_EXIT_USAGE;
  }
  capstan_cli_fopts_free(&o);
  return rc;
}

#define KEEPALIVE_USAGE "capstan keepalive set MINUTES (5..60) | show [--data-dir DIR]"

int capstan_cli_keepalive_main(int argc, char **argv) {
  capstan_cli_fopts_t o;
  int rc = capstan_cli_fopts_parse(argc, argv, 0, "keepalive", KEEPALIVE_USAGE, &o);
  if (rc != 0) {
    capstan_cli_fopts_free(&o);
    return rc;
  }
  const char *dir = capstan_store_data_dir(o.data_dir);
  if (o.help) {
    printf("usage: %s\n", KEEPALIVE_USAGE);
    rc = CAPSTAN_EXIT_OK;
  } else if (o.nargs == 2 && strcmp(o.args[0], "set") == 0) {
    rc = do_set(dir, "keepalive-minutes", o.args[1]);
  } else if (o.nargs == 1 && strcmp(o.args[0], "show") == 0) {
    rc = do_get(dir, "keepalive-minutes");
  } else {
    fprintf(stderr, "capstan: keepalive: expected set MINUTES or show\nusage: %s\n",
            KEEPALIVE_USAGE);
    rc = CAPSTAN_EXIT_USAGE;
  }
  capstan_cli_fopts_free(&o);
  return rc;
}
