/* `capstan device config set|show|clear`: a device's own base
 * SEP<MAC>.cnf.xml (Device config_xml). The file service completes the
 * base with the CAPF elements on every request: the device's own base if
 * it has one, else its template's, else the built-in default. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "handlers/cli/cli.h"
#include "handlers/cli/files.h"
#include "core/base/error.h"
#include "storage/devices.h"

#define DEVCONFIG_USAGE                                                                    \
  "capstan device config set NAME FILE.xml   (the XML is checked; '-' = stdin)\n"          \
  "       capstan device config show NAME [--json]\n"                                      \
  "       capstan device config clear NAME        (back to its template or the default)\n" \
  "       (all take --data-dir DIR)"

static bool has_own(const Capstan__Device *d) {
  return d->has_config_xml && d->config_xml.len > 0;
}

static bool has_template(const Capstan__Device *d) {
  return d->template_name != NULL && d->template_name[0] != '\0';
}

/* Reads device |name| in |txn|, printing what to do when it is missing. */
static int get_device(capstan_txn_t *txn, const char *name, Capstan__Device **d) {
  int err = capstan_store_device_get(txn, name, d);
  if (err == CAPSTAN_ENOENT || err == CAPSTAN_EINVAL) {
    capstan_cli_error("no device '%s': add it with 'capstan device add %s ...'", name, name);
  } else if (err != 0) {
    capstan_cli_store_error("cannot read the device", err);
  }
  return err;
}

/* set (|xml| non-NULL) or clear. */
static int write_config(capstan_cli_t *c, const uint8_t *xml, size_t len) {
  const char *name = c->args[0];
  capstan_store_t *st;
  if (capstan_cli_open_store(c, CAPSTAN_CLI_STORE_EXISTING, &st) != 0) return CAPSTAN_EXIT_ERROR;
  int rc = CAPSTAN_EXIT_ERROR;
  Capstan__Device *d = NULL;
  capstan_txn_t txn = {0};
  int err = capstan_store_begin(st, true, &txn);
  if (err != 0) {
    capstan_cli_store_error("cannot write the device", err);
    goto out;
  }
  if (get_device(&txn, name, &d) != 0) goto out;
  bool had = has_own(d);
  if (xml == NULL && !had) {
    rc = CAPSTAN_EXIT_OK; /* nothing to clear */
  } else {
    err = capstan_record_set_bytes(&d->config_xml, &d->has_config_xml, xml, len);
    d->has_updated_at = 1;
    d->updated_at = (int64_t)time(NULL);
    if (err == 0) err = capstan_store_device_put(&txn, d);
    if (err == 0) {
      err = capstan_store_audit_append(
          &txn, 0, name, xml != NULL ? "device_config_set" : "device_config_cleared", NULL);
    }
    if (err == 0) err = capstan_store_commit(&txn);
    if (err != 0) {
      capstan_cli_store_error("cannot write the device", err);
      goto out;
    }
    rc = CAPSTAN_EXIT_OK;
  }
  if (xml != NULL) {
    printf("%s: base configuration stored (%zu bytes); served at its next download\n", name, len);
    if (has_template(d)) {
      printf("%s: it takes precedence over template %s\n", name, d->template_name);
    }
  } else if (!had) {
    printf("%s: has no base configuration of its own: nothing to clear\n", name);
  } else if (has_template(d)) {
    printf("%s: base configuration cleared; it uses template %s again\n", name, d->template_name);
  } else {
    printf("%s: base configuration cleared; it uses the default base configuration\n", name);
  }
out:
  if (d != NULL) capstan__device__free_unpacked(d, NULL);
  capstan_store_abort(&txn);
  capstan_store_close(st);
  return rc;
}

static int run_set(capstan_cli_t *c) {
  if (!capstan_device_name_valid(c->args[0])) {
    capstan_cli_error("'%s' is not a device name (e.g. SEP0011223344AA)", c->args[0]);
    return CAPSTAN_EXIT_USAGE;
  }
  uint8_t *xml;
  size_t len;
  if (capstan_cli_read_config_xml(c->args[1], &xml, &len) != 0) {
    fprintf(stderr, "capstan: nothing was stored\n");
    return CAPSTAN_EXIT_ERROR;
  }
  int rc = write_config(c, xml, len);
  free(xml);
  return rc;
}

static int run_clear(capstan_cli_t *c) {
  return write_config(c, NULL, 0);
}

static int run_show(capstan_cli_t *c) {
  const char *name = c->args[0];
  capstan_store_t *st;
  if (capstan_cli_open_store(c, CAPSTAN_CLI_STORE_EXISTING, &st) != 0) return CAPSTAN_EXIT_ERROR;
  Capstan__Device *d = NULL;
  capstan_txn_t txn = {0};
  bool template_exists = false;
  int err = capstan_store_begin(st, false, &txn);
  if (err != 0) {
    capstan_cli_store_error("cannot read the device", err);
  } else if ((err = get_device(&txn, name, &d)) == 0 && has_template(d)) {
    Capstan__Template *t = NULL;
    int terr = capstan_store_template_get(&txn, d->template_name, &t);
    template_exists = terr == 0;
    if (t != NULL) capstan__template__free_unpacked(t, NULL);
  }
  capstan_store_abort(&txn);
  capstan_store_close(st);
  if (err != 0) return CAPSTAN_EXIT_ERROR;
  /* What the file service serves: own base, else an existing template,
   * else the default. */
  const char *source = has_own(d) ? "device" : template_exists ? "template" : "default";
  if (c->json) {
    printf("{\"name\":");
    capstan_cli_json_string(stdout, d->name);
    printf(",\"source\":\"%s\",\"template\":", source);
    capstan_cli_json_string(stdout, has_template(d) ? d->template_name : NULL);
    printf(",\"template_exists\":%s,\"bytes\":%zu,\"config_xml\":",
           template_exists ? "true" : "false", has_own(d) ? d->config_xml.len : (size_t)0);
    if (has_own(d)) {
      capstan_cli_json_bytes(stdout, d->config_xml.data, d->config_xml.len);
    } else {
      printf("null");
    }
    printf("}\n");
  } else if (has_own(d)) {
    fwrite(d->config_xml.data, 1, d->config_xml.len, stdout);
    if (d->config_xml.data[d->config_xml.len - 1] != '\n') putchar('\n');
    if (has_template(d)) {
      fprintf(stderr, "capstan: note: %s's own base configuration overrides template %s\n", name,
              d->template_name);
    }
  } else if (template_exists) {
    printf(
        "%s has no base configuration of its own: it uses template %s "
        "(see 'capstan template show %s')\n",
        name, d->template_name, d->template_name);
  } else if (has_template(d)) {
    printf(
        "%s has no base configuration of its own and its template %s does not exist: it "
        "uses the default base configuration (add the template with 'capstan template add "
        "%s FILE.xml')\n",
        name, d->template_name, d->template_name);
  } else {
    printf(
        "%s has no base configuration of its own and no template: it uses the default base "
        "configuration\n",
        name);
  }
  capstan__device__free_unpacked(d, NULL);
  return CAPSTAN_EXIT_OK;
}

static const capstan_cli_sub_t devconfig_subs[] = {
    {"set", 0, false, 2, 2, NULL, run_set},
    {"show", 0, true, 1, 1, NULL, run_show},
    {"clear", 0, false, 1, 1, NULL, run_clear},
};

int capstan_cli_devconfig_main(int argc, char **argv) {
  static const capstan_cli_cmd_t cmd = {
      "device config", DEVCONFIG_USAGE, NULL, NULL, 0, CAPSTAN_CLI_TABLE(devconfig_subs)};
  return capstan_cli_run(&cmd, argc, argv, NULL);
}
