/* Store: which back end a data directory has (DIR/store.conf). The file is
 * input from disk: a line that is not "store = URL" is refused with a
 * reason, never taken in part; a directory keeps the store it has; a
 * PostgreSQL URL that does not answer leaves no store.conf behind; libpq
 * loads into its own namespace in a process that has BoringSSL. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <netinet/in.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/base/error.h"
#include "storage/pg_libpq.h"
#include "storage/store.h"
#include "store_test_util.h"

static void write_file(const char *dir, const char *name, const char *text) {
  char path[1024];
  assert_non_null(dir);
  snprintf(path, sizeof(path), "%s/%s", dir, name);
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

static bool exists(const char *dir, const char *name) {
  char path[1024];
  struct stat st;
  if (dir == NULL) return false;
  snprintf(path, sizeof(path), "%s/%s", dir, name);
  return stat(path, &st) == 0;
}

/* A loopback port nothing listens on (bound, then closed). */
static int closed_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof(a);
  assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
  assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
  close(fd);
  return ntohs(a.sin_port);
}

static void test_bad_conf_refused(void **state) {
  static const char *const kBad[] = {
      "",                            /* no line */
      "# only a comment\n",          /* no line */
      "store\n",                     /* no = */
      "store =\n",                   /* no URL */
      "url = postgresql://x/y\n",    /* another key */
      "store postgresql://x/y\n",    /* no = */
      "stores = postgresql://x/y\n", /* a longer key */
  };
  for (size_t i = 0; i < sizeof(kBad) / sizeof(kBad[0]); i++) {
    char *dir = test_tmpdir();
    write_file(dir, CAPSTAN_STORE_CONF, kBad[i]);
    capstan_store_t *s = NULL;
    int err = capstan_store_open(dir, 0, &s);
    if (err != CAPSTAN_EINVAL) fail_msg("store.conf %zu (\"%s\"): got %d", i, kBad[i], err);
    assert_null(s);
    /* Creation does not paper over it either. */
    assert_int_equal(capstan_store_open(dir, CAPSTAN_STORE_CREATE, &s), CAPSTAN_EINVAL);
    assert_false(exists(dir, "data.mdb"));
    test_rmdir(dir);
  }
  /* A URL longer than the store keeps. */
  char *dir = test_tmpdir();
  char line[CAPSTAN_STORE_URL_MAX + 64];
  int n = snprintf(line, sizeof(line), "store = postgresql://h/");
  memset(line + n, 'd', sizeof(line) - (size_t)n - 2);
  line[sizeof(line) - 2] = '\n';
  line[sizeof(line) - 1] = '\0';
  write_file(dir, CAPSTAN_STORE_CONF, line);
  capstan_store_t *s = NULL;
  assert_int_equal(capstan_store_open(dir, 0, &s), CAPSTAN_EINVAL);
  test_rmdir(dir);
}

static void test_unreachable_leaves_nothing(void **state) {
  assert_non_null(capstan_libpq());
  char *dir = test_tmpdir();
  char url[200];
  snprintf(url, sizeof(url),
           "postgresql://capstan@127.0.0.1:%d/none?sslmode=require&connect_timeout=2",
           closed_port());
  capstan_store_t *s = NULL;
  assert_int_equal(capstan_store_open_url(dir, url, CAPSTAN_STORE_CREATE, &s), CAPSTAN_EIO);
  assert_null(s);
  assert_false(exists(dir, CAPSTAN_STORE_CONF));
  assert_false(exists(dir, "data.mdb"));
  /* A store.conf naming it: opening says so (CAPSTAN_EIO), and makes no
   * LMDB store instead. */
  char conf[300];
  snprintf(conf, sizeof(conf), "# a comment\n  store =  %s  \n", url);
  write_file(dir, CAPSTAN_STORE_CONF, conf);
  assert_int_equal(capstan_store_open(dir, CAPSTAN_STORE_CREATE, &s), CAPSTAN_EIO);
  assert_false(exists(dir, "data.mdb"));
  test_rmdir(dir);
  /* A malformed URL is refused before any connection. */
  dir = test_tmpdir();
  assert_int_equal(capstan_store_open_url(dir, "no_such_keyword=1", CAPSTAN_STORE_CREATE, &s),
                   CAPSTAN_EINVAL);
  assert_false(exists(dir, CAPSTAN_STORE_CONF));
  test_rmdir(dir);
}

static void test_directory_keeps_its_store(void **state) {
  char *dir = test_tmpdir();
  capstan_store_t *s = NULL;
  /* "" is LMDB whatever $CAPSTAN_STORE says. */
  setenv("CAPSTAN_STORE", "postgresql://127.0.0.1:1/x", 1);
  assert_int_equal(capstan_store_open_url(dir, "", CAPSTAN_STORE_CREATE, &s), 0);
  assert_string_equal(capstan_store_backend(s), "lmdb");
  assert_null(capstan_store_url(s));
  capstan_store_close(s);
  /* An LMDB directory takes no PostgreSQL URL, and ignores the variable. */
  assert_int_equal(capstan_store_open_url(dir, "postgresql://127.0.0.1:1/x", 0, &s),
                   CAPSTAN_EEXIST);
  assert_int_equal(capstan_store_open(dir, CAPSTAN_STORE_CREATE, &s), 0);
  assert_string_equal(capstan_store_backend(s), "lmdb");
  capstan_store_close(s);
  unsetenv("CAPSTAN_STORE");
  /* LMDB alone: one node, always the leader, always reachable. */
  assert_int_equal(capstan_store_open(dir, 0, &s), 0);
  assert_true(capstan_store_leader(s));
  assert_true(capstan_store_reachable(s));
  assert_int_equal(capstan_store_node_start(s, "n1", "detail"), 0);
  capstan_store_node_t *nodes = NULL;
  size_t n = 0;
  assert_int_equal(capstan_store_nodes(s, &nodes, &n), 0);
  assert_int_equal(n, 1);
  assert_string_equal(nodes[0].name, "n1");
  assert_true(nodes[0].self && nodes[0].leader && nodes[0].alive);
  free(nodes);
  capstan_store_close(s);
  test_rmdir(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_bad_conf_refused),
      cmocka_unit_test(test_unreachable_leaves_nothing),
      cmocka_unit_test(test_directory_keeps_its_store),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
