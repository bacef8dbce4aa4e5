/* The data directory: its lock and pid file (storage/lock.h) and the
 * default-directory rule of `capstan serve` (handlers/cli/options.h). A
 * POSIX lock never conflicts with its own process, so the other holder is
 * a child process. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "core/base/error.h"
#include "handlers/cli/options.h"
#include "storage/lock.h"
#include "store_test_util.h"

/* A child that takes the lock of |dir| as |kind|, says so on a pipe and
 * waits to be killed. Returns its pid once it holds the lock. */
static pid_t child_holding(const char *dir, capstan_dirlock_kind_t kind) {
  int p[2];
  assert_int_equal(pipe(p), 0);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    close(p[0]);
    capstan_dirlock_t *l = NULL;
    char ok = capstan_dirlock_acquire(dir, kind, &l, NULL) == 0 ? 'y' : 'n';
    if (write(p[1], &ok, 1) != 1) _exit(1);
    for (;;) pause();
  }
  close(p[1]);
  char ok = 0;
  assert_int_equal(read(p[0], &ok, 1), 1);
  close(p[0]);
  assert_int_equal(ok, 'y');
  return pid;
}

static void end_child(pid_t pid) {
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
}

static char *pid_file(const char *dir) {
  static char path[1024];
  snprintf(path, sizeof(path), "%s/%s", dir, CAPSTAN_SERVE_PID_FILE);
  return path;
}

static long pid_in_file(const char *dir) {
  FILE *f = fopen(pid_file(dir), "r");
  if (f == NULL) return -1;
  long v = -1;
  if (fscanf(f, "%ld", &v) != 1) v = -1;
  fclose(f);
  return v;
}

static void test_serve_lock_excludes_a_second_server(void **state) {
  (void)state;
  char *dir = test_tmpdir();
  pid_t srv = child_holding(dir, CAPSTAN_DIRLOCK_SERVE);
  assert_int_equal(pid_in_file(dir), (long)srv);

  /* A second server and a restore are refused and told who holds it. */
  capstan_dirlock_t *l = NULL;
  pid_t holder = 0;
  assert_int_equal(capstan_dirlock_acquire(dir, CAPSTAN_DIRLOCK_SERVE, &l, &holder), CAPSTAN_EBUSY);
  assert_null(l);
  assert_int_equal(holder, srv);
  holder = 0;
  assert_int_equal(capstan_dirlock_acquire(dir, CAPSTAN_DIRLOCK_RESTORE, &l, &holder),
                   CAPSTAN_EBUSY);
  assert_int_equal(holder, srv);
  /* The lock, not the file's text, names the server. */
  pid_t pid = 0, stale = 0;
  assert_int_equal(capstan_dirlock_server(dir, &pid, &stale), 0);
  assert_int_equal(pid, srv);

  /* Killed: the kernel drops the lock; the file's pid is stale. */
  end_child(srv);
  assert_int_equal(capstan_dirlock_server(dir, &pid, &stale), CAPSTAN_ENOENT);
  assert_int_equal(stale, srv);
  assert_int_equal(capstan_dirlock_acquire(dir, CAPSTAN_DIRLOCK_SERVE, &l, &holder), 0);
  assert_int_equal(pid_in_file(dir), (long)getpid());
  /* Released: the pid file is gone. */
  capstan_dirlock_release(l);
  struct stat st;
  assert_int_not_equal(stat(pid_file(dir), &st), 0);
  assert_int_equal(capstan_dirlock_server(dir, &pid, &stale), -ENOENT);
  assert_int_equal(stale, 0);
  test_rmdir(dir);
}

static void test_restore_lock_is_not_a_server(void **state) {
  (void)state;
  char *dir = test_tmpdir();
  pid_t rst = child_holding(dir, CAPSTAN_DIRLOCK_RESTORE);
  /* `capstan reload` finds no server to signal while a restore runs... */
  pid_t pid = 0;
  assert_int_equal(capstan_dirlock_server(dir, &pid, NULL), CAPSTAN_ENOENT);
  /* ...and a server cannot start on the store being replaced. */
  capstan_dirlock_t *l = NULL;
  pid_t holder = 0;
  assert_int_equal(capstan_dirlock_acquire(dir, CAPSTAN_DIRLOCK_SERVE, &l, &holder), CAPSTAN_EBUSY);
  assert_int_equal(holder, rst);
  end_child(rst);
  assert_int_equal(capstan_dirlock_acquire(dir, CAPSTAN_DIRLOCK_RESTORE, &l, &holder), 0);
  capstan_dirlock_release(l);
  test_rmdir(dir);
}

static void test_missing_directory(void **state) {
  (void)state;
  capstan_dirlock_t *l = NULL;
  pid_t pid;
  assert_int_equal(
      capstan_dirlock_acquire("/nonexistent/capstan-test", CAPSTAN_DIRLOCK_SERVE, &l, NULL),
      CAPSTAN_ENOENT);
  assert_int_equal(capstan_dirlock_server("/nonexistent/capstan-test", &pid, NULL), CAPSTAN_ENOENT);
}

static void expect_path(const char *path, const char *cwd, const char *want) {
  char out[256];
  assert_int_equal(capstan_cli_normalize_path(path, cwd, out, sizeof(out)), 0);
  assert_string_equal(out, want);
}

static void test_normalize_path(void **state) {
  (void)state;
  expect_path("./capstan-data", "/srv", "/srv/capstan-data");
  expect_path("capstan-data/", "/srv/", "/srv/capstan-data");
  expect_path("a//b/./c/../d", "/x", "/x/a/b/d");
  expect_path("/var/lib/capstan", "/ignored", "/var/lib/capstan");
  expect_path("../..", "/a", "/");
  expect_path(".", "/", "/");
  char small[8];
  assert_int_equal(capstan_cli_normalize_path("abcdefgh", "/", small, sizeof(small)),
                   CAPSTAN_ERANGE);
}

static void test_default_data_dir(void **state) {
  (void)state;
  char cwd[1024], abs[1100];
  assert_non_null(getcwd(cwd, sizeof(cwd)));
  snprintf(abs, sizeof(abs), "%s/capstan-data", cwd);
  assert_true(capstan_cli_is_default_data_dir("./capstan-data"));
  assert_true(capstan_cli_is_default_data_dir("capstan-data/"));
  assert_true(capstan_cli_is_default_data_dir(abs));
  assert_false(capstan_cli_is_default_data_dir("./capstan-dta"));
  assert_false(capstan_cli_is_default_data_dir("/var/lib/capstan"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_serve_lock_excludes_a_second_server),
      cmocka_unit_test(test_restore_lock_is_not_a_server),
      cmocka_unit_test(test_missing_directory),
      cmocka_unit_test(test_normalize_path),
      cmocka_unit_test(test_default_data_dir),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
