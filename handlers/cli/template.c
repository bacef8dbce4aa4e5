/* `capstan template add|set|show|list|remove|assign|unassign`, and the
 * option parser and XML reader shared by the trust, template and device
 * config commands (core/cli_files.h).
 *
 * A template is a base SEP<MAC>.cnf.xml shared by devices (Device
 * template_name). The file service reads device records and templates on
 * every request, so changes here reach phones at their next download
 * without telling the server. A device's own base configuration (`capstan
 * device config set`) takes precedence over its template. */
#include <errno.h>
#include <getopt.h>
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

int capstan_cli_fopts_parse(int argc, char **argv, unsigned allowed, const char *cmd,
                            const char *usage, capstan_cli_fopts_t *o) {
  static const struct option longopts[] = {
      {"data-dir", required_argument, NULL, 'd'},
      {"json", no_argument, NULL, 'j'},
      {"purpose", required_argument, NULL, 'p'},
      {"all-purpose", required_argument, NULL, 'A'},
      {"out", required_argument, NULL, 'o'},
      {"all", no_argument, NULL, 'a'},
      {"days", required_argument, NULL, 'D'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  memset(o, 0, sizeof(*o));
  o->args = calloc((size_t)argc + 1, sizeof(char *));
  if (o->args == NULL) {
    capstan_cli_error("out of memory");
    return CAPSTAN_EXIT_ERROR;
  }
  optind = 0; /* GNU: re-initialise, argv differs from any earlier parse */
  opterr = 0;
  int c;
  while ((c = getopt_long(argc, argv, "-:", longopts, NULL)) != -1) {
    unsigned bit = 0;
    switch (c) {
      case 1:
        o->args[o->nargs++] = optarg;
        break;
      case 'd':
        o->data_dir = optarg;
        break;
      case 'j':
        bit = CAPSTAN_FOPT_JSON;
        o->json = true;
        break;
      case 'p':
        bit = CAPSTAN_FOPT_PURPOSE;
        o->purpose = optarg;
        break;
      case 'A':
        bit = CAPSTAN_FOPT_ALL_PURPOSE;
        o->all_purpose = optarg;
        break;
      case 'o':
        bit = CAPSTAN_FOPT_OUT;
        o->out = optarg;
        break;
      case 'a':
        bit = CAPSTAN_FOPT_ALL;
        o->all = true;
        break;
      case 'D': {
        bit = CAPSTAN_FOPT_DAYS;
        char *end;
        errno = 0;
        o->days = strtol(optarg, &end, 10);
        if (*end != '\0' || optarg[0] == '\0' || errno != 0 || o->days < 0 || o->days > 36500) {
          fprintf(stderr,
                  "capstan: %s: --days must be a number of days from 0 to 36500\nusage: %s\n", cmd,
                  usage);
          return CAPSTAN_EXIT_USAGE;
        }
        break;
      }
      case 'h':
        o->help = true;
        break;
      case ':':
        fprintf(stderr, "capstan: %s: option '%s' needs a value\nusage: %s\n", cmd,
                argv[optind - 1], usage);
        return CAPSTAN_EXIT_USAGE;
      default:
        fprintf(stderr, "capstan: %s: unknown option '%s'\nusage: %s\n", cmd, argv[optind - 1],
                usage);
        return CAPSTAN_EXIT_USAGE;
    }
    if (bit != 0 && !(allowed & bit)) {
      fprintf(stderr, "capstan: %s: option '%s' does not apply here\nusage: %s\n", cmd,
              argv[optind - 1], usage);
      return CAPSTAN_EXIT_USAGE;
    }
    o->seen |= bit;
  }
  return 0;
}

void capstan_cli_fopts_free(capstan_cli_fopts_t *o) {
  free(o->args);
  o->args = NULL;
  o->nargs = 0;
}

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

static int store_error(const char *what, int err) {
  if (err == CAPSTAN_ENOSPC) {
    capstan_cli_error("%s: the store is full (4 GiB map): remove old records", what);
  } else {
    capstan_cli_error("%s: %s", what, capstan_strerror(err));
  }
  return CAPSTAN_EXIT_ERROR;
}

static bool check_name(const char *name) {
  if (capstan_cli_template_name_valid(name)) return true;
  capstan_cli_error(
      "'%s' is not a template name: use 1 to 64 letters, digits, '.', '_' or '-', starting "
      "with a letter or digit ('none' is reserved)",
      name);
  return false;
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

static int add_or_set(capstan_cli_fopts_t *o, bool is_add) {
  const char *name = o->args[1], *path = o->args[2];
  if (!check_name(name)) return CAPSTAN_EXIT_USAGE;
  uint8_t *xml;
  size_t len;
  if (capstan_cli_read_config_xml(path, &xml, &len) != 0) return CAPSTAN_EXIT_ERROR;
  capstan_store_t *st;
  if (capstan_cli_open_store(capstan_store_data_dir(o->data_dir), false, &st) != 0) {
    free(xml);
    return CAPSTAN_EXIT_ERROR;
  }
  int rc = CAPSTAN_EXIT_ERROR;
  refs_t refs = {0};
  capstan_txn_t txn = {0};
  int err = capstan_store_begin(st, true, &txn);
  if (err != 0) {
    store_error("cannot write the template", err);
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
    store_error("cannot read the template", err);
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
    store_error("cannot write the template", err);
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

static void json_bytes_string(FILE *f, const uint8_t *data, size_t len) {
  /* Stored XML passed capstan_cnfxml_validate (no NUL bytes), but the
   * record is not NUL-terminated: copy it into a C string. */
  char *s = malloc(len + 1);
  if (s == NULL) {
    fputs("null", f);
    return;
  }
  for (size_t i = 0; i < len; i++) s[i] = data[i] == 0 ? ' ' : (char)data[i];
  s[len] = '\0';
  capstan_cli_json_string(f, s);
  free(s);
}

static int run_show(capstan_cli_fopts_t *o) {
  const char *name = o->args[1];
  if (!check_name(name)) return CAPSTAN_EXIT_USAGE;
  capstan_store_t *st;
  if (capstan_cli_open_store(capstan_store_data_dir(o->data_dir), false, &st) != 0) {
    return CAPSTAN_EXIT_ERROR;
  }
  capstan_txn_t txn = {0};
  Capstan__Template *t = NULL;
  refs_t refs = {0};
  int err = capstan_store_begin(st, false, &txn);
  if (err == 0) err = capstan_store_template_get(&txn, name, &t);
  if (err == 0 && o->json) err = refs_count(&txn, name, &refs);
  capstan_store_abort(&txn);
  capstan_store_close(st);
  int rc = CAPSTAN_EXIT_OK;
  if (err == CAPSTAN_ENOENT) {
    capstan_cli_error("no template '%s' (see 'capstan template list')", name);
    rc = CAPSTAN_EXIT_ERROR;
  } else if (err != 0) {
    rc = store_error("cannot read the template", err);
  } else if (o->json) {
    char when[40];
    capstan_cli_format_time(t->updated_at, when, sizeof(when));
    printf("{\"name\":");
    capstan_cli_json_string(stdout, t->name);
    printf(",\"updated_at\":");
    capstan_cli_json_string(stdout, t->has_updated_at ? when : NULL);
    printf(",\"bytes\":%zu,\"devices\":%zu,\"config_xml\":", t->config_xml.len, refs.n);
    json_bytes_string(stdout, t->config_xml.data, t->config_xml.len);
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

static int run_list(capstan_cli_fopts_t *o) {
  capstan_store_t *st;
  if (capstan_cli_open_store(capstan_store_data_dir(o->data_dir), false, &st) != 0) {
    return CAPSTAN_EXIT_ERROR;
  }
  tlist_t l = {0};
  capstan_txn_t txn = {0};
  int err = capstan_store_begin(st, false, &txn);
  if (err == 0) err = capstan_store_template_iterate(&txn, tlist_one, &l);
  if (err == 0) err = capstan_store_device_iterate(&txn, tlist_count, &l);
  capstan_store_abort(&txn);
  capstan_store_close(st);
  int rc = CAPSTAN_EXIT_OK;
  if (err != 0) {
    rc = store_error("cannot list templates", err);
  } else if (o->json) {
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

static int run_remove(capstan_cli_fopts_t *o) {
  const char *name = o->args[1];
  if (!check_name(name)) return CAPSTAN_EXIT_USAGE;
  capstan_store_t *st;
  if (capstan_cli_open_store(capstan_store_data_dir(o->data_dir), false, &st) != 0) {
    return CAPSTAN_EXIT_ERROR;
  }
  int rc = CAPSTAN_EXIT_ERROR;
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
    store_error("cannot remove the template", err);
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
static int set_template(capstan_cli_fopts_t *o, const char *tname, int first) {
  capstan_store_t *st;
  if (capstan_cli_open_store(capstan_store_data_dir(o->data_dir), false, &st) != 0) {
    return CAPSTAN_EXIT_ERROR;
  }
  int rc = CAPSTAN_EXIT_ERROR;
  int64_t now = (int64_t)time(NULL);
  capstan_txn_t txn = {0};
  int err = capstan_store_begin(st, true, &txn);
  if (err != 0) {
    store_error("cannot update devices", err);
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
      store_error("cannot read the template", err);
      goto out;
    }
  }
  size_t changed = 0;
  for (int i = first; i < o->nargs; i++) {
    const char *dev = o->args[i];
    Capstan__Device *d = NULL;
    err = capstan_store_device_get(&txn, dev, &d);
    if (err == CAPSTAN_ENOENT || err == CAPSTAN_EINVAL) {
      capstan_cli_error("no device '%s' (add it with 'capstan device add'); nothing was changed",
                        dev);
      goto out;
    }
    if (err != 0) {
      store_error("cannot read a device", err);
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
      store_error("cannot update a device", err);
      goto out;
    }
  }
  err = capstan_store_commit(&txn);
  if (err != 0) {
    store_error("cannot update devices", err);
    goto out;
  }
  if (tname != NULL) {
    printf("%zu devices now use template %s (%zu already did)\n", changed, tname,
           (size_t)(o->nargs - first) - changed);
  } else {
    printf("%zu devices no longer use a template (%zu had none)\n", changed,
           (size_t)(o->nargs - first) - changed);
  }
  rc = CAPSTAN_EXIT_OK;
out:
  capstan_store_abort(&txn);
  capstan_store_close(st);
  return rc;
}

static int run_assign(capstan_cli_fopts_t *o) {
  if (!check_name(o->args[1])) return CAPSTAN_EXIT_USAGE;
  return set_template(o, o->args[1], 2);
}

static int run_unassign(capstan_cli_fopts_t *o) {
  return set_template(o, NULL, 1);
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

typedef struct {
  const char *name;
  unsigned allowed;
  int min_args, max_args; /* positional arguments, the command word included */
  int (*run)(capstan_cli_fopts_t *o);
} tsub_t;

static int run_add(capstan_cli_fopts_t *o) {
  return add_or_set(o, true);
}
static int run_set(capstan_cli_fopts_t *o) {
  return add_or_set(o, false);
}

static const tsub_t tsubs[] = {
    {"add", 0, 3, 3, run_add},
    {"set", 0, 3, 3, run_set},
    {"show", CAPSTAN_FOPT_JSON, 2, 2, run_show},
    {"list", CAPSTAN_FOPT_JSON, 1, 1, run_list},
    {"remove", 0, 2, 2, run_remove},
    {"assign", 0, 3, 1 << 20, run_assign},
    {"unassign", 0, 2, 1 << 20, run_unassign},
};

int capstan_cli_template_main(int argc, char **argv) {
  capstan_cli_fopts_t o;
  int rc = capstan_cli_fopts_parse(argc, argv, CAPSTAN_FOPT_JSON, "template", TEMPLATE_USAGE, &o);
  if (rc != 0) goto done;
  if (o.help) {
    printf("usage: %s\n", TEMPLATE_USAGE);
    goto done;
  }
  const char *cmd = o.nargs > 0 ? o.args[0] : "";
  for (size_t i = 0; i < sizeof(tsubs) / sizeof(tsubs[0]); i++) {
    const tsub_t *t = &tsubs[i];
    if (strcmp(cmd, t->name) != 0) continue;
    if ((o.seen & ~t->allowed) != 0) {
      fprintf(stderr, "capstan: template %s: --json does not apply here\nusage: %s\n", cmd,
              TEMPLATE_USAGE);
      rc = CAPSTAN_EXIT_USAGE;
    } else if (o.nargs < t->min_args || o.nargs > t->max_args) {
      fprintf(stderr, "capstan: template %s: %s\nusage: %s\n", cmd,
              o.nargs < t->min_args ? "missing argument" : "too many arguments", TEMPLATE_USAGE);
      rc = CAPSTAN_EXIT_USAGE;
    } else {
      rc = t->run(&o);
    }
    goto done;
  }
  if (cmd[0] == '\0') {
    fprintf(stderr, "capstan: template: missing command\nusage: %s\n", TEMPLATE_USAGE);
  } else {
    fprintf(stderr, "capstan: template: unknown command '%s'\nusage: %s\n", cmd, TEMPLATE_USAGE);
  }
  rc = CAPSTAN_EXIT_USAGE;
done:
  capstan_cli_fopts_free(&o);
  return rc;
}
