/* The shared command-line parser (options.h). */
#include "handlers/cli/options.h"

#include <errno.h>
#include <getopt.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/base/error.h"
#include "storage/audit.h"

/* getopt_long codes of the options every command knows; a table option i
 * is OPT_BASE + i. */
enum { CODE_DATA_DIR = 0x100, CODE_JSON, OPT_BASE = 0x200 };

/* An option given, in command-line order: a table index, or JSON. */
#define OCC_JSON (-1)
typedef struct {
  int opt;
  const char *value;
} occurrence_t;

static const char *usage_of(const capstan_cli_cmd_t *cmd, const capstan_cli_sub_t *sub) {
  return sub != NULL && sub->usage != NULL ? sub->usage : cmd->usage;
}

/* True when the command's rows carry their own usages: the command's
 * usage then lists the subcommand words. */
static bool lists_subs(const capstan_cli_cmd_t *cmd) {
  return cmd->nsubs > 0 && cmd->subs[0].name != NULL && cmd->subs[0].usage != NULL;
}

static void print_usage(FILE *f, const capstan_cli_cmd_t *cmd, const capstan_cli_sub_t *sub) {
  fprintf(f, "usage: %s\n", usage_of(cmd, sub));
  if ((sub != NULL && sub->usage != NULL) || !lists_subs(cmd)) return;
  fputs("commands:\n", f);
  for (size_t i = 0; i < cmd->nsubs; i++) fprintf(f, "  %s\n", cmd->subs[i].name);
  fprintf(f, "see 'capstan %s <command> --help'\n", cmd->name);
}

/* The command's help text goes with its own usage, not with a row's. */
static bool shows_help(const capstan_cli_cmd_t *cmd, const capstan_cli_sub_t *sub) {
  return cmd->help != NULL && (sub == NULL || sub->usage == NULL);
}

static int vusage_error(const capstan_cli_t *c, const char *fmt, va_list ap) {
  const capstan_cli_sub_t *sub = c->sub;
  bool named = sub != NULL && sub->name != NULL;
  fprintf(stderr, "capstan: %s%s%s: ", c->cmd->name, named ? " " : "", named ? sub->name : "");
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  print_usage(stderr, c->cmd, sub);
  if (shows_help(c->cmd, sub)) fprintf(stderr, "(see 'capstan %s --help')\n", c->cmd->name);
  return CAPSTAN_EXIT_USAGE;
}

int capstan_cli_usage_error(const capstan_cli_t *c, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int rc = vusage_error(c, fmt, ap);
  va_end(ap);
  return rc;
}

bool capstan_cli_has(const capstan_cli_t *c, int i) {
  return (c->seen & CAPSTAN_CLI_OPT(i)) != 0;
}

static const capstan_cli_sub_t *find_sub(const capstan_cli_cmd_t *cmd, const char *word) {
  for (size_t i = 0; i < cmd->nsubs; i++) {
    if (strcmp(cmd->subs[i].name, word) == 0) return &cmd->subs[i];
  }
  return NULL;
}

/* The first problem getopt_long reports, worded for the user. |text| is
 * the argument before optind: the long option as typed (a short option
 * may sit inside a cluster, so only optopt names it). */
static void describe_bad_option(int code, const char *text, char *why, size_t len) {
  const char *eq = strchr(text, '=');
  bool long_flag = optopt >= CODE_DATA_DIR || (optopt == 'h' && strncmp(text, "--", 2) == 0);
  if (code == ':') {
    snprintf(why, len, "option '%s' needs a value", text);
  } else if (optopt == 0) {
    snprintf(why, len, "unknown option '%s'", text);
  } else if (long_flag && eq != NULL) {
    snprintf(why, len, "option '%.*s' takes no value", (int)(eq - text), text);
  } else {
    snprintf(why, len, "unknown option '-%c'", optopt);
  }
}

/* Checks each option given against the row, in command-line order, and
 * hands its value to the table's set function. */
static int apply_options(capstan_cli_t *c, const occurrence_t *occ, int nocc) {
  for (int i = 0; i < nocc; i++) {
    if (occ[i].opt == OCC_JSON) {
      if (!c->sub->json) return capstan_cli_usage_error(c, "option '--json' does not apply here");
      c->json = true;
      continue;
    }
    const capstan_cli_opt_t *opt = &c->cmd->opts[occ[i].opt];
    if (!(c->sub->opts & CAPSTAN_CLI_OPT(occ[i].opt))) {
      return capstan_cli_usage_error(c, "option '--%s' does not apply here", opt->name);
    }
    char why[512];
    if (opt->set != NULL && opt->set(c->ctx, occ[i].value, why, sizeof(why)) != 0) {
      return capstan_cli_usage_error(c, "%s", why);
    }
    c->seen |= CAPSTAN_CLI_OPT(occ[i].opt);
    c->value[occ[i].opt] = occ[i].value;
  }
  return 0;
}

int capstan_cli_run(const capstan_cli_cmd_t *cmd, int argc, char **argv, void *ctx) {
  if (cmd->nopts > CAPSTAN_CLI_MAX_OPTS || cmd->nsubs == 0) {
    fprintf(stderr, "capstan: %s: bad option table\n", cmd->name);
    abort(); /* a programming error, never input */
  }
  struct option longopts[CAPSTAN_CLI_MAX_OPTS + 4];
  size_t n = 0;
  for (; n < cmd->nopts; n++) {
    longopts[n] =
        (struct option){cmd->opts[n].name, cmd->opts[n].has_value ? required_argument : no_argument,
                        NULL, OPT_BASE + (int)n};
  }
  longopts[n++] = (struct option){"data-dir", required_argument, NULL, CODE_DATA_DIR};
  longopts[n++] = (struct option){"json", no_argument, NULL, CODE_JSON};
  longopts[n++] = (struct option){"help", no_argument, NULL, 'h'};
  longopts[n] = (struct option){NULL, 0, NULL, 0};

  capstan_cli_t c = {.cmd = cmd, .ctx = ctx};
  int rc = CAPSTAN_EXIT_OK, nocc = 0;
  bool help = false;
  char bad[256] = "";
  char **args = calloc((size_t)argc + 1, sizeof(char *));
  occurrence_t *occ = calloc((size_t)argc + 1, sizeof(*occ));
  c.args = args;
  if (args == NULL || occ == NULL) {
    fprintf(stderr, "capstan: out of memory\n");
    rc = CAPSTAN_EXIT_ERROR;
    goto out;
  }
  optind = 0; /* GNU: re-initialise, argv differs from any earlier parse */
  opterr = 0;
  int code;
  /* "-": positional arguments come back in order (code 1); ":": a missing
   * value is ':' rather than '?'. */
  while ((code = getopt_long(argc, argv, "-:h", longopts, NULL)) != -1) {
    if (code == 1) {
      c.args[c.nargs++] = optarg;
    } else if (code == 'h') {
      help = true;
    } else if (code == CODE_DATA_DIR) {
      c.data_dir = optarg;
    } else if (code == CODE_JSON) {
      occ[nocc++] = (occurrence_t){OCC_JSON, NULL};
    } else if (code >= OPT_BASE) {
      occ[nocc++] = (occurrence_t){code - OPT_BASE, optarg};
    } else if (bad[0] == '\0') {
      describe_bad_option(code, argv[optind - 1], bad, sizeof(bad));
    }
  }
  while (optind < argc) c.args[c.nargs++] = argv[optind++]; /* after "--" */

  /* The subcommand word. */
  bool has_words = cmd->subs[0].name != NULL;
  if (!has_words) {
    c.sub = &cmd->subs[0];
  } else if (c.nargs > 0) {
    if (strcmp(c.args[0], "help") == 0) {
      help = true;
    } else {
      c.sub = find_sub(cmd, c.args[0]);
    }
    if (c.sub != NULL || help) {
      c.args++;
      c.nargs--;
    }
    if (help && c.sub == NULL && c.nargs > 0) c.sub = find_sub(cmd, c.args[0]);
  }
  if (bad[0] != '\0') {
    rc = capstan_cli_usage_error(&c, "%s", bad);
  } else if (help) {
    print_usage(stdout, cmd, c.sub);
    if (shows_help(cmd, c.sub)) printf("\n%s\n", cmd->help);
  } else if (c.sub == NULL) {
    rc = c.nargs == 0 ? capstan_cli_usage_error(&c, "missing command")
                      : capstan_cli_usage_error(&c, "unknown command '%s'", c.args[0]);
  } else if ((rc = apply_options(&c, occ, nocc)) != 0) {
    /* printed */
  } else if (c.nargs < c.sub->min_args) {
    rc = capstan_cli_usage_error(&c, "missing argument");
  } else if (c.nargs > c.sub->max_args) {
    rc = capstan_cli_usage_error(&c, "unexpected argument '%s'", c.args[c.sub->max_args]);
  } else {
    rc = c.sub->run(&c);
  }
out:
  free(args);
  free(occ);
  return rc;
}

const char *capstan_cli_data_dir(const capstan_cli_t *c) {
  return capstan_store_data_dir(c->data_dir);
}

int capstan_cli_normalize_path(const char *path, const char *cwd, char *out, size_t len) {
  if (len < 2) return CAPSTAN_ERANGE;
  size_t n = 0; /* out holds "" (the root) or "/a/b" */
  for (int pass = path[0] == '/' ? 1 : 0; pass < 2; pass++) {
    const char *p = pass == 0 ? cwd : path;
    while (*p != '\0') {
      while (*p == '/') p++;
      const char *end = strchr(p, '/');
      size_t seg = end != NULL ? (size_t)(end - p) : strlen(p);
      if (seg == 0 || (seg == 1 && p[0] == '.')) {
        /* nothing */
      } else if (seg == 2 && p[0] == '.' && p[1] == '.') {
        while (n > 0 && out[n - 1] != '/') n--;
        if (n > 0) n--;
      } else {
        if (n + 1 + seg + 1 > len) return CAPSTAN_ERANGE;
        out[n++] = '/';
        memcpy(out + n, p, seg);
        n += seg;
      }
      p += seg;
    }
  }
  if (n == 0) out[n++] = '/';
  out[n] = '\0';
  return 0;
}

bool capstan_cli_is_default_data_dir(const char *dir) {
  char cwd[4096], a[4096], b[4096];
  if (getcwd(cwd, sizeof(cwd)) == NULL) return false;
  return capstan_cli_normalize_path(dir, cwd, a, sizeof(a)) == 0 &&
         capstan_cli_normalize_path(CAPSTAN_STORE_DEFAULT_DIR, cwd, b, sizeof(b)) == 0 &&
         strcmp(a, b) == 0;
}

int capstan_cli_open_store(const capstan_cli_t *c, capstan_cli_store_how_t how,
                           capstan_store_t **out) {
  const char *dir = capstan_cli_data_dir(c);
  *out = NULL;
  int err = capstan_store_open_url(dir, c->store_url,
                                   how == CAPSTAN_CLI_STORE_CREATE ? CAPSTAN_STORE_CREATE : 0, out);
  if (err == 0) {
    /* Every audit event this command appends names who ran it. */
    char actor[CAPSTAN_CLI_ACTOR_MAX];
    capstan_cli_actor(actor, sizeof(actor));
    err = capstan_store_set_actor(*out, actor);
    if (err == 0) return 0;
    capstan_store_close(*out);
    *out = NULL;
  }
  if (err == CAPSTAN_ENOENT && how == CAPSTAN_CLI_STORE_OPTIONAL) return 0;
  if (err == CAPSTAN_ENOENT) {
    fprintf(stderr, "capstan: no capstan data in '%s': run 'capstan init --data-dir %s' first\n",
            dir, dir);
  } else if (err == CAPSTAN_EACCES || err == -EPERM) {
    fprintf(stderr, "capstan: cannot open '%s': permission denied (run as the user that owns it)\n",
            dir);
  } else {
    fprintf(stderr, "capstan: cannot open the store in '%s': %s\n", dir, capstan_strerror(err));
  }
  return CAPSTAN_EXIT_ERROR;
}

int capstan_cli_store_error(const char *what, int err) {
  if (err == CAPSTAN_ENOSPC) {
    /* The command maps what the server's map has grown to, 4 GiB at least. */
    fprintf(stderr,
            "capstan: %s: the store is full (its map as large as the server grew it, 4 GiB at "
            "least): let the server grow it (--store-max-mib) or remove old records\n",
            what);
  } else {
    fprintf(stderr, "capstan: %s: %s\n", what, capstan_strerror(err));
  }
  return CAPSTAN_EXIT_ERROR;
}

/* A user name as given by the environment: printable, no spaces. */
static bool plain_name(const char *s) {
  if (s == NULL || s[0] == '\0' || strlen(s) > 64) return false;
  for (const char *p = s; *p != '\0'; p++) {
    if (*p <= ' ' || *p >= 0x7f) return false;
  }
  return true;
}

void capstan_cli_format_actor(const char *name, unsigned uid, const char *sudo_user, char *buf,
                              size_t len) {
  char who[80];
  if (plain_name(name)) {
    snprintf(who, sizeof(who), "%s", name);
  } else {
    snprintf(who, sizeof(who), "uid %u", uid);
  }
  if (sudo_user != NULL && sudo_user[0] != '\0' && strcmp(sudo_user, who) != 0) {
    snprintf(buf, len, "%s (sudo by %s)", who, plain_name(sudo_user) ? sudo_user : "?");
  } else {
    snprintf(buf, len, "%s", who);
  }
}

void capstan_cli_actor(char *buf, size_t len) {
  uid_t uid = getuid();
  struct passwd pw, *found = NULL;
  char scratch[4096];
  const char *name = NULL;
  if (getpwuid_r(uid, &pw, scratch, sizeof(scratch), &found) == 0 && found != NULL) {
    name = found->pw_name;
  }
  capstan_cli_format_actor(name, (unsigned)uid, getenv("SUDO_USER"), buf, len);
}
