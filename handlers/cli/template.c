/* `capstan template add|set|show|list|remove|assign|unassign`, and the
 * XML reader and template-name check shared with the device config
 * commands (handlers/cli/files.h).
 *
 * A template is a base SEP<MAC>.cnf.xml shared by devices (Device
 * template_name). The file service reads device records and templates on
 * every request, so changes here reach phones at their next download
 * without telling the server. A device's own base configuration (`capstan
 * device config set`) takes precedence over its template. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "handlers/cli/cli.h"
#include "handlers/cli/files.h"
#include "core/base/error.h"
#include "core/files/cnfxml.h"
#include "storage/devices.h"

#define TEMPLATE_NAME_MAX 64
#define TEMPLATE_REFS_SHOWN 5 /* device names named when refusing a removal */

/* ---- Shared helpers -------------------------------------------------------- */

int capstan_cli_read_config_xml(const char *path, uint8_t **out, size_t *len) {
  *out = NULL;
  *len = 0;
  uint8_t *data;
  size_t n;
  int err = capstan_cli_read_file(path, CAPSTAN_CNFXML_MAX, &data, &n);
  if (err != 0) return err;
  const char *fname = strcmp(path, "-") == 0 ? "<stdin>" : path;
  if (n == 0) {
    capstan_cli_error("%s: the file is empty: expected a <device> configuration", fname);
    free(data);
    return CAPSTAN_EINVAL;
  }
  char why[256];
  err = capstan_cnfxml_validate(data, n, why, sizeof(why));
  if (err != 0) {
    if (err == CAPSTAN_EINVAL) {
      capstan_cli_error("%s: %s", fname, why);
    } else {
      capstan_cli_error("%s: cannot check the XML: %s", fname, capstan_strerror(err));
    }
    free(data);
    return err;
  }
  *out = data;
  *len = n;
  return 0;
}

bool capstan_cli_template_name_valid(const char *name) {
  if (name == NULL) return false;
  size_t n = strnlen(name, TEMPLATE_NAME_MAX + 1);
  if (n == 0 || n > TEMPLATE_NAME_MAX || strcmp(name, "none") == 0) return false;
  for (size_t i = 0; i < n; i++) {
    char c = name[i];
    bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    if (!alnum && (i == 0 || (c != '.' && c != '_' && c != '-'))) return false;
  }
  return true;
}

/* ---- Helpers ------------------------------------------------------------------ */

static bool check_name(const char *name) {
  if (capstan_cli_template_name_valid(name)) return true;
  capstan_cli_error(
      "'%s' is not a template name: use 1 to 64 letters, digits, '.', '_' or '-', starting "
      "with a letter or digit ('none' is reserved)",
      name);
  return false;
}

/* Checks the template |name| from the command line, then opens the store.
 * Returns an exit code (the problem printed). */
static int open_for(const capstan_cli_t *c, const char *name, capstan_store_t **st) {
  if (!check_name(name)) return CAPSTAN_EXIT_USAGE;
  return capstan_cli_open_store(c, CAPSTAN_CLI_STORE_EXISTING, st);
}

/* Devices that use a template: a count and the first few names. */
typedef struct {
  const char *name;
  size_t n;
  char *first[TEMPLATE_REFS_SHOWN];
  int err;
} refs_t;

static int refs_one(const Capstan__Device *d, void *arg) {
  refs_t *r = arg;
  if (d->template_name == NULL || strcmp(d->template_name, r->name) != 0) return 0;
  if (r->n < TEMPLATE_REFS_SHOWN) {
    r->first[r->n] = strdup(d->name);
    if (r->first[r->n] == NULL) return CAPSTAN_ENOMEM;
  }
  r->n++;
  return 0;
}

static void refs_free(refs_t *r) {
  for (size_t i = 0; i < r->n && i < TEMPLATE_REFS_SHOWN; i++) free(r->first[i]);
}

static int refs_count(capstan_txn_t *txn, const char *name, refs_t *r) {
  memset(r, 0, sizeof(*r));
  r->name = name;
  return capstan_store_device_iterate(txn, refs_one, r);
}

/* "SEP1, SEP2, SEP3 and 7 more" */
static void refs_print(FILE *f, const refs_t *r) {
  for (size_t i = 0; i < r->n && i < TEMPLATE_REFS_SHOWN; i++) {
    fprintf(f, "%s%s", i > 0 ? ", " : "", r->first[i]);
  }
  if (r->n > TEMPLATE_REFS_SHOWN) fprintf(f, " and %zu more", r->n - TEMPLATE_REFS_SHOWN);
}

/* ---- add / set -------------------------------------------------------------------- */

static int add_or_set(capstan_cli_t *c, bool is_add) {
  const char *name = c->args[0], *path = c->args[1];
  if (!check_name(name)) return CAPSTAN_EXIT_USAGE;
  uint8_t *xml;
  size_t len;
  if (capstan_cli_read_config_xml(path, &xml, &len) != 0) return CAPSTAN_EXIT_ERROR;
  capstan_store_t *st;
  if (capstan_cli_open_store(c, CAPSTAN_CLI_STORE_EXISTING, &st) != 0) {
    free(xml);
    return CAPSTAN_EXIT_ERROR;
  }
  int rc = CAPSTAN_EXIT_ERROR;
  refs_t refs = {0};
  capstan_txn_t txn = {0};
  int err = capstan_store_begin(st, true, &txn);
  if (err != 0) {
    capstan_cli_store_error("cannot write the template", err);
    goto out;
  }
  Capstan__Template *old = NULL;
  err = capstan_store_template_get(&txn, name, &old);
  if (err == 0) capstan__template__free_unpacked(old, NULL);
  if (is_add && err == 0) {
    capstan_cli_error("template '%s' exists: replace it with 'capstan template set %s FILE.xml'",
                      name, name);
    goto out;
  }
  if (!is_add && err == CAPSTAN_ENOENT) {
    capstan_cli_error("no template '%s': create it with 'capstan template add %s FILE.xml'", name,
                      name);
    goto out;
  }
  if (err != 0 && err != CAPSTAN_ENOENT) {
    capstan_cli_store_error("cannot read the template", err);
    goto out;
  }
  Capstan__Template t = CAPSTAN__TEMPLATE__INIT;
  t.has_schema_version = 1;
  t.schema_version = 1;
  t.name = (char *)name;
  t.config_xml.data = xml;
  t.config_xml.len = len;
  t.has_updated_at = 1;
  t.updated_at = (int64_t)time(NULL);
  err = capstan_store_template_put(&txn, &t);
  if (err == 0) {
    err = capstan_store_audit_append(&txn, 0, NULL, is_add ? "template_added" : "template_updated",
                                     name);
  }
  if (err == 0) err = refs_count(&txn, name, &refs);
  if (err == 0) err = capstan_store_commit(&txn);
  if (err != 0) {
    capstan_cli_store_error("cannot write the template", err);
    goto out;
  }
  printf("template %s %s (%zu bytes)", name, is_add ? "added" : "updated", len);
  if (is_add) {
    printf("; assign it with 'capstan template assign %s DEVICE...'\n", name);
  } else {
    printf("; %zu devices use it: phones get it at their next configuration download\n", refs.n);
  }
  rc = CAPSTAN_EXIT_OK;
out:
  capstan_store_abort(&txn);
  capstan_store_close(st);
  refs_free(&refs);
  free(xml);
  return rc;
}

/* ---- show ---------------------------------------------------------------------------- */

static int run_show(capstan_cli_t *c) {
  const char *name = c->args[0];
  capstan_store_t *st;
  int rc = open_for(c, name, &st);
  if (rc != 0) return rc;
  capstan_txn_t txn = {0};
  Capstan__Template *t = NULL;
  refs_t refs = {0};
  int err = capstan_store_begin(st, false, &txn);
  if (err == 0) err = capstan_store_template_get(&txn, name, &t);
  if (err == 0 && c->json) err = refs_count(&txn, name, &refs);
  capstan_store_abort(&txn);
  capstan_store_close(st);
  if (err == CAPSTAN_ENOENT) {
    capstan_cli_error("no template '%s' (see 'capstan template list')", name);
    rc = CAPSTAN_EXIT_ERROR;
  } else if (err != 0) {
    rc = capstan_cli_store_error("cannot read the template", err);
  } else if (c->json) {
    char when[40];
    capstan_cli_format_time(t->updated_at, when, sizeof(when));
    printf("{\"name\":");
    capstan_cli_json_string(stdout, t->name);
    printf(",\"updated_at\":");
    capstan_cli_json_string(stdout, t->has_updated_at ? when : NULL);
    printf(",\"bytes\":%zu,\"devices\":%zu,\"config_xml\":", t->config_xml.len, refs.n);
    capstan_cli_json_bytes(stdout, t->config_xml.data, t->config_xml.len);
    printf("}\n");
  } else {
    fwrite(t->config_xml.data, 1, t->config_xml.len, stdout);
    if (t->config_xml.len > 0 && t->config_xml.data[t->config_xml.len - 1] != '\n') putchar('\n');
  }
  if (t != NULL) capstan__template__free_unpacked(t, NULL);
  refs_free(&refs);
  return rc;
}

/* ---- list ------------------------------------------------------------------------------- */

typedef struct {
  char **names;
  size_t *uses;
  size_t *bytes;
  int64_t *updated;
  size_t n, cap;
} tlist_t;

static int tlist_one(const Capstan__Template *t, void *arg) {
  tlist_t *l = arg;
  if (l->n == l->cap) {
    size_t cap = l->cap == 0 ? 16 : l->cap * 2;
    char **names = realloc(l->names, cap * sizeof(*names));
    if (names == NULL) return CAPSTAN_ENOMEM;
    l->names = names;
    size_t *uses = realloc(l->uses, cap * sizeof(*uses));
    if (uses == NULL) return CAPSTAN_ENOMEM;
    l->uses = uses;
    size_t *bytes = realloc(l->bytes, cap * sizeof(*bytes));
    if (bytes == NULL) return CAPSTAN_ENOMEM;
    l->bytes = bytes;
    int64_t *updated = realloc(l->updated, cap * sizeof(*updated));
    if (updated == NULL) return CAPSTAN_ENOMEM;
    l->updated = updated;
    l->cap = cap;
  }
  l->names[l->n] = strdup(t->name);
  if (l->names[l->n] == NULL) return CAPSTAN_ENOMEM;
  l->uses[l->n] = 0;
  l->bytes[l->n] = t->config_xml.len;
  l->updated[l->n] = t->has_updated_at ? t->updated_at : 0;
  l->n++;
  return 0;
}

static int tlist_count(const Capstan__Device *d, void *arg) {
  tlist_t *l = arg;
  if (d->template_name == NULL) return 0;
  for (size_t i = 0; i < l->n; i++) {
    if (strcmp(l->names[i], d->template_name) == 0) {
      l->uses[i]++;
      break;
    }
  }
  return 0;
}

/* The templates, then how many devices use each. */
static int tlist_all(capstan_txn_t *txn, void *arg) {
  int err = capstan_store_template_iterate(txn, tlist_one, arg);
  return err != 0 ? err : capstan_store_device_iterate(txn, tlist_count, arg);
}

static int run_list(capstan_cli_t *c) {
  tlist_t l = {0};
  int rc = capstan_cli_read(c, tlist_all, &l, "cannot list templates");
  if (rc != 0) {
    /* printed */
  } else if (c->json) {
    printf("[");
    for (size_t i = 0; i < l.n; i++) {
      char when[40];
      capstan_cli_format_time(l.updated[i], when, sizeof(when));
      printf("%s{\"name\":", i == 0 ? "\n" : ",\n");
      capstan_cli_json_string(stdout, l.names[i]);
      printf(",\"devices\":%zu,\"bytes\":%zu,\"updated_at\":", l.uses[i], l.bytes[i]);
      capstan_cli_json_string(stdout, l.updated[i] != 0 ? when : NULL);
      printf("}");
    }
    printf(l.n > 0 ? "\n]\n" : "]\n");
  } else {
    printf("%-24s %8s %8s %s\n", "NAME", "DEVICES", "BYTES", "UPDATED");
    for (size_t i = 0; i < l.n; i++) {
      char when[40] = "-";
      if (l.updated[i] != 0) capstan_cli_format_time(l.updated[i], when, sizeof(when));
      printf("%-24s %8zu %8zu %s\n", l.names[i], l.uses[i], l.bytes[i], when);
    }
  }
  for (size_t i = 0; i < l.n; i++) free(l.names[i]);
  free(l.names);
  free(l.uses);
  free(l.bytes);
  free(l.updated);
  return rc;
}

/* ---- remove ------------------------------------------------------------------------------ */

static int run_remove(capstan_cli_t *c) {
  const char *name = c->args[0];
  capstan_store_t *st;
  int rc = open_for(c, name, &st);
  if (rc != 0) return rc;
  rc = CAPSTAN_EXIT_ERROR;
  refs_t refs = {0};
  capstan_txn_t txn = {0};
  int err = capstan_store_begin(st, true, &txn);
  /* Counted in the write transaction: no device can start using it between
   * the check and the delete. */
  if (err == 0) err = refs_count(&txn, name, &refs);
  if (err == 0 && refs.n > 0) {
    fprintf(stderr, "capstan: template '%s' is used by %zu device%s (", name, refs.n,
            refs.n == 1 ? "" : "s");
    refs_print(stderr, &refs);
    fprintf(stderr,
            "): give them another template ('capstan template assign OTHER DEVICE...') or none "
            "('capstan template unassign DEVICE...') first\n");
    goto out;
  }
  if (err == 0) err = capstan_store_template_delete(&txn, name);
  if (err == 0) err = capstan_store_audit_append(&txn, 0, NULL, "template_removed", name);
  if (err == 0) err = capstan_store_commit(&txn);
  if (err == CAPSTAN_ENOENT) {
    capstan_cli_error("no template '%s' (see 'capstan template list')", name);
    goto out;
  }
  if (err != 0) {
    capstan_cli_store_error("cannot remove the template", err);
    goto out;
  }
  printf("template %s removed\n", name);
  rc = CAPSTAN_EXIT_OK;
out:
  capstan_store_abort(&txn);
  capstan_store_close(st);
  refs_free(&refs);
  return rc;
}

/* ---- assign / unassign ------------------------------------------------------------------- */

/* Sets (|tname| non-NULL) or clears the template of every device in
 * args[first..], all in one transaction: one unknown device changes
 * nothing. */
static int set_template(capstan_cli_t *c, const char *tname, int first) {
  capstan_store_t *st;
  if (capstan_cli_open_store(c, CAPSTAN_CLI_STORE_EXISTING, &st) != 0) return CAPSTAN_EXIT_ERROR;
  int rc = CAPSTAN_EXIT_ERROR;
  int64_t now = (int64_t)time(NULL);
  capstan_txn_t txn = {0};
  int err = capstan_store_begin(st, true, &txn);
  if (err != 0) {
    capstan_cli_store_error("cannot update devices", err);
    goto out;
  }
  if (tname != NULL) {
    Capstan__Template *t = NULL;
    err = capstan_store_template_get(&txn, tname, &t);
    if (t != NULL) capstan__template__free_unpacked(t, NULL);
    if (err == CAPSTAN_ENOENT) {
      capstan_cli_error("no template '%s': create it with 'capstan template add %s FILE.xml'",
                        tname, tname);
      goto out;
    }
    if (err != 0) {
      capstan_cli_store_error("cannot read the template", err);
      goto out;
    }
  }
  size_t changed = 0;
  for (int i = first; i < c->nargs; i++) {
    const char *dev = c->args[i];
    Capstan__Device *d = NULL;
    err = capstan_store_device_get(&txn, dev, &d);
    if (err == CAPSTAN_ENOENT || err == CAPSTAN_EINVAL) {
      capstan_cli_error("no device '%s' (add it with 'capstan device add'); nothing was changed",
                        dev);
      goto out;
    }
    if (err != 0) {
      capstan_cli_store_error("cannot read a device", err);
      goto out;
    }
    bool same = tname == NULL ? (d->template_name == NULL || d->template_name[0] == '\0')
                              : (d->template_name != NULL && strcmp(d->template_name, tname) == 0);
    if (!same) {
      err = capstan_record_set_string(&d->template_name, tname);
      d->has_updated_at = 1;
      d->updated_at = now;
      if (err == 0) err = capstan_store_device_put(&txn, d);
      if (err == 0) {
        err = capstan_store_audit_append(&txn, 0, dev, "template_assigned",
                                         tname != NULL ? tname : "none");
      }
      changed++;
    }
    if (err == 0 && tname != NULL && d->has_config_xml && d->config_xml.len > 0) {
      fprintf(stderr,
              "capstan: note: %s has its own base configuration, which is served instead of "
              "the template ('capstan device config clear %s' to use the template)\n",
              dev, dev);
    }
    capstan__device__free_unpacked(d, NULL);
    if (err != 0) {
      capstan_cli_store_error("cannot update a device", err);
      goto out;
    }
  }
  err = capstan_store_commit(&txn);
  if (err != 0) {
    capstan_cli_store_error("cannot update devices", err);
    goto out;
  }
  if (tname != NULL) {
    printf("%zu devices now use template %s (%zu already did)\n", changed, tname,
           (size_t)(c->nargs - first) - changed);
  } else {
    printf("%zu devices no longer use a template (%zu had none)\n", changed,
           (size_t)(c->nargs - first) - changed);
  }
  rc = CAPSTAN_EXIT_OK;
out:
  capstan_store_abort(&txn);
  capstan_store_close(st);
  return rc;
}

static int run_assign(capstan_cli_t *c) {
  if (!check_name(c->args[0])) return CAPSTAN_EXIT_USAGE;
  return set_template(c, c->args[0], 1);
}

static int run_unassign(capstan_cli_t *c) {
  return set_template(c, NULL, 0);
}

/* ---- dispatch ------------------------------------------------------------------------------ */

#define TEMPLATE_USAGE                                                              \
  "capstan template add NAME FILE.xml      (a new template; the XML is checked)\n"  \
  "       capstan template set NAME FILE.xml      (replace an existing one)\n"      \
  "       capstan template show NAME [--json]\n"                                    \
  "       capstan template list [--json]\n"                                         \
  "       capstan template remove NAME            (refused while devices use it)\n" \
  "       capstan template assign NAME DEVICE...  (devices use it as their base)\n" \
  "       capstan template unassign DEVICE...     (devices use the default base)\n" \
  "       (all take --data-dir DIR)"

static int run_add(capstan_cli_t *c) {
  return add_or_set(c, true);
}
static int run_set(capstan_cli_t *c) {
  return add_or_set(c, false);
}

static const capstan_cli_sub_t template_subs[] = {
    {"add", 0, false, 2, 2, NULL, run_add},
    {"set", 0, false, 2, 2, NULL, run_set},
    {"show", 0, true, 1, 1, NULL, run_show},
    {"list", 0, true, 0, 0, NULL, run_list},
    {"remove", 0, false, 1, 1, NULL, run_remove},
    {"assign", 0, false, 2, CAPSTAN_CLI_ARGS_ANY, NULL, run_assign},
    {"unassign", 0, false, 1, CAPSTAN_CLI_ARGS_ANY, NULL, run_unassign},
};

int capstan_cli_template_main(int argc, char **argv) {
  static const capstan_cli_cmd_t cmd = {
      "template", TEMPLATE_USAGE, NULL, NULL, 0, CAPSTAN_CLI_TABLE(template_subs)};
  return capstan_cli_run(&cmd, argc, argv, NULL);
}
