/* `capstan reload`: SIGHUP to the `capstan serve` of one data directory,
 * found through the directory's lock (storage/lock.h), never by name: other
 * capstan servers on the machine are not touched. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "core/base/error.h"
#include "handlers/cli/cli.h"
#include "storage/lock.h"

static int run_reload(capstan_cli_t *c) {
  const char *dir = capstan_cli_data_dir(c);
  pid_t pid = 0, stale = 0;
  int err = capstan_dirlock_server(dir, &pid, &stale);
  if (err == CAPSTAN_ENOENT) {
    if (stale > 0) {
      capstan_cli_error(
          "reload: no capstan serve is running on '%s' (%s/%s names pid %ld, which "
          "holds no lock: a server that stopped without removing it)",
          dir, dir, CAPSTAN_SERVE_PID_FILE, (long)stale);
    } else {
      capstan_cli_error("reload: no capstan serve is running on '%s'", dir);
    }
    return CAPSTAN_EXIT_ERROR;
  }
  if (err < 0) {
    capstan_cli_error("reload: cannot read '%s/%s': %s", dir, CAPSTAN_SERVE_PID_FILE,
                      capstan_strerror(err));
    return CAPSTAN_EXIT_ERROR;
  }
  if (pid <= 0) {
    capstan_cli_error(
        "reload: a server holds '%s' but its pid is not visible from here (another "
        "pid namespace?)",
        dir);
    return CAPSTAN_EXIT_ERROR;
  }
  if (kill(pid, SIGHUP) != 0) {
    capstan_cli_error("reload: cannot signal capstan serve (pid %ld): %s%s", (long)pid,
                      strerror(errno), errno == EPERM ? " (run as the server's user)" : "");
    return CAPSTAN_EXIT_ERROR;
  }
  printf(
      "capstan: sent SIGHUP to capstan serve (pid %ld) on %s: it reloads its certificates, "
      "trust and settings (its log says event=reload)\n",
      (long)pid, dir);
  return CAPSTAN_EXIT_OK;
}

int capstan_cli_reload_main(int argc, char **argv) {
  static const capstan_cli_sub_t subs[] = {
      {NULL, 0, false, 0, 0, NULL, run_reload},
  };
  static const capstan_cli_cmd_t cmd = {
      .name = "reload",
      .usage = "capstan reload [--data-dir DIR]",
      .help =
          "Makes the `capstan serve` running on DIR reload its certificates, trust and\n"
          "settings (SIGHUP), and no other capstan on the machine. The server is the process\n"
          "that holds the lock of DIR/serve.pid. Exit 1 when no server runs on DIR.\n"
          "Settings changed with `capstan config set` reach the server within a second\n"
          "without it.",
      .subs = subs,
      .nsubs = CAPSTAN_CLI_COUNT(subs),
  };
  return capstan_cli_run(&cmd, argc, argv, NULL);
}
