/* `capstan audit list`, and the event printer `capstan device history`
 * shares (handlers/cli/cli.h). */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "handlers/cli/cli.h"
#include "core/base/error.h"
#include "core/base/phone.h"
#include "storage/audit.h"

#define NS_PER_SECOND INT64_C(1000000000)

/* ---- --since ----------------------------------------------------------- */

int capstan_cli_parse_since(const char *s, int64_t now_ns, int64_t *out_ns) {
  if (s == NULL || s[0] == '\0') return CAPSTAN_EINVAL;
  /* Relative: digits and one unit. */
  char *end;
  if (s[0] >= '0' && s[0] <= '9') {
    unsigned long long n = strtoull(s, &end, 10);
    static const struct {
      char unit;
      int64_t seconds;
    } kUnits[] = {{'s', 1}, {'m', 60}, {'h', 3600}, {'d', 86400}, {'w', 7 * 86400}};
    for (size_t i = 0; end != s && end[0] != '\0' && end[1] == '\0' && i < 5; i++) {
      if (end[0] != kUnits[i].unit) continue;
      if (n > (unsigned long long)(INT64_MAX / NS_PER_SECOND / kUnits[i].seconds)) {
        return CAPSTAN_ERANGE;
      }
      int64_t back = (int64_t)n * kUnits[i].seconds * NS_PER_SECOND;
      *out_ns = now_ns > back ? now_ns - back : 0;
      return 0;
    }
  }
  /* RFC 3339 (or a date alone, 00:00 UTC), with optional fractional
   * seconds, which capstan_cli_parse_time does not take: cut them out. */
  char copy[64];
  if (strlen(s) >= sizeof(copy)) return CAPSTAN_EINVAL;
  snprintf(copy, sizeof(copy), "%s", s);
  int64_t frac = 0;
  char *dot = strchr(copy, '.');
  if (dot != NULL) {
    char *p = dot + 1;
    int64_t scale = NS_PER_SECOND / 10;
    if (*p < '0' || *p > '9') return CAPSTAN_EINVAL;
    for (; *p >= '0' && *p <= '9'; p++) {
      frac += (*p - '0') * scale;
      scale /= 10;
    }
    memmove(dot, p, strlen(p) + 1);
  }
  int64_t secs;
  if (capstan_cli_parse_time(copy, &secs) != 0) return CAPSTAN_EINVAL;
  if (secs < 0 || secs > INT64_MAX / NS_PER_SECOND - 1) return CAPSTAN_ERANGE;
  *out_ns = secs * NS_PER_SECOND + frac;
  return 0;
}

int64_t capstan_cli_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * NS_PER_SECOND + ts.tv_nsec;
}

/* ---- Printing ------------------------------------------------------------ */

/* RFC 3339 UTC, to the second for people, to the microsecond for scripts. */
static void format_at(int64_t ns, bool micro, char *buf, size_t len) {
  char base[40];
  capstan_cli_format_time(ns / NS_PER_SECOND, base, sizeof(base));
  if (!micro) {
    snprintf(buf, len, "%s", base);
    return;
  }
  size_t n = strlen(base);
  if (n > 0 && base[n - 1] == 'Z') base[n - 1] = '\0';
  snprintf(buf, len, "%s.%06" PRId64 "Z", base, (ns % NS_PER_SECOND) / 1000);
}

static int print_event(const capstan_audit_event_t *e, void *arg) {
  capstan_cli_audit_print_t *p = arg;
  char at[48];
  if (p->json) {
    format_at(e->at_ns, true, at, sizeof(at));
    fputs(p->n == 0 ? "\n  {\"at\":" : ",\n  {\"at\":", stdout);
    capstan_cli_json_string(stdout, at);
    if (p->device_column) {
      fputs(",\"device\":", stdout);
      capstan_cli_json_string(stdout, e->device);
    }
    fputs(",\"event\":", stdout);
    capstan_cli_json_string(stdout, e->event);
    fputs(",\"user\":", stdout);
    capstan_cli_json_string(stdout, e->user);
    fputs(",\"detail\":", stdout);
    capstan_cli_json_string(stdout, e->detail);
    fputc('}', stdout);
  } else {
    if (p->n == 0) {
      if (p->device_column) {
        printf("%-20s  %-20s %-20s %-22s %s\n", "TIME", "DEVICE", "EVENT", "USER", "DETAIL");
      } else {
        printf("%-20s  %-20s %-22s %s\n", "TIME", "EVENT", "USER", "DETAIL");
      }
    }
    format_at(e->at_ns, false, at, sizeof(at));
    const char *user = e->user != NULL ? e->user : "(server)";
    const char *detail = e->detail != NULL ? e->detail : "";
    if (p->device_column) {
      printf("%-20s  %-20s %-20s %-22s %s\n", at, e->device != NULL ? e->device : "-", e->event,
             user, detail);
    } else {
      printf("%-20s  %-20s %-22s %s\n", at, e->event, user, detail);
    }
  }
  p->n++;
  return 0;
}

int capstan_cli_audit_print(capstan_txn_t *txn, capstan_cli_audit_print_t *p) {
  if (p->json) fputc('[', stdout);
  int err = capstan_audit_query(txn, p->since_ns, p->device, print_event, p);
  if (p->json) fputs(p->n > 0 ? "\n]" : "]", stdout);
  return err;
}

/* ---- capstan audit list ---------------------------------------------------- */

enum { OPT_SINCE, OPT_DEVICE, NOPTS };

typedef struct {
  int64_t since_ns;
} opts_t;

static int set_since(void *ctx, const char *a, char *why, size_t len) {
  opts_t *o = ctx;
  if (capstan_cli_parse_since(a, capstan_cli_now_ns(), &o->since_ns) == 0) return 0;
  snprintf(why, len, "--since must be " CAPSTAN_CLI_SINCE_FORMS "; got '%s'", a);
  return -1;
}

static int list_fn(capstan_txn_t *txn, void *arg) {
  capstan_cli_audit_print_t *p = arg;
  int err = capstan_cli_audit_print(txn, p);
  if (p->json) fputc('\n', stdout);
  return err;
}

static int run_list(capstan_cli_t *c) {
  const opts_t *o = c->ctx;
  const char *device = c->value[OPT_DEVICE];
  if (device != NULL && !capstan_device_name_valid(device)) {
    return capstan_cli_usage_error(c, "'%s' is not a device name", device);
  }
  capstan_cli_audit_print_t p = {
      .since_ns = o->since_ns, .device = device, .device_column = true, .json = c->json};
  int rc = capstan_cli_read(c, list_fn, &p, "cannot read the audit log");
  if (rc == CAPSTAN_EXIT_OK && !c->json && p.n == 0) printf("no events\n");
  return rc;
}

int capstan_cli_audit_main(int argc, char **argv) {
  static const capstan_cli_opt_t opts[NOPTS] = {
      [OPT_SINCE] = {"since", true, set_since},
      [OPT_DEVICE] = {"device", true, NULL},
  };
  static const capstan_cli_sub_t subs[] = {
      {"list", CAPSTAN_CLI_OPT(OPT_SINCE) | CAPSTAN_CLI_OPT(OPT_DEVICE), true, 0, 0, NULL,
       run_list},
  };
  static const capstan_cli_cmd_t cmd = {
      .name = "audit",
      .usage = "capstan audit list [--since T] [--device NAME] [--json] [--data-dir DIR]",
      .help =
          "Lists the audit log, oldest first: every admin change (devices, settings, trust,\n"
          "certificates, templates) with the Unix user who made it (\"root (sudo by alice)\"\n"
          "under sudo), and what the server did: CAPF attempts with the phone's address and\n"
          "their outcome, certificates issued, installed, stale and deleted with their\n"
          "serials, and the first download of each phone file after a device changed\n"
          "(file_served). Events the server records have no user.\n"
          "\n"
          "  --since T      events at or after T: an RFC 3339 time (2026-05-01T06:00:00Z,\n"
          "                 +HH:MM offsets and fractions of a second allowed; a date alone\n"
          "                 is 00:00 UTC) or an age: 90s, 30m, 2h, 3d, 1w\n"
          "  --device NAME  one device's events (also 'capstan device history NAME')\n"
          "  --json         an array of {at, device, event, user, detail}; at is RFC 3339\n"
          "                 UTC with microseconds, user is null for the server's events\n"
          "\n"
          "Events older than the audit-retention-days setting (default 365) are removed by\n"
          "the running server, hourly: 'capstan config set audit-retention-days 90'.",
      .opts = opts,
      .nopts = NOPTS,
      .subs = subs,
      .nsubs = CAPSTAN_CLI_COUNT(subs),
  };
  opts_t o = {0};
  return capstan_cli_run(&cmd, argc, argv, &o);
}
