/* Helpers shared by the storage unit tests: a fresh temporary data
 * directory per test, removed afterwards. */
#ifndef CAPSTAN_TESTS_STORE_TEST_UTIL_H
#define CAPSTAN_TESTS_STORE_TEST_UTIL_H

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "storage/store.h"

static inline char *test_tmpdir(void) {
  const char *base = getenv("TMPDIR");
  char tmpl[512];
  snprintf(tmpl, sizeof(tmpl), "%s/capstan-test-XXXXXX", base != NULL ? base : "/tmp");
  char *d = mkdtemp(tmpl);
  return d != NULL ? strdup(d) : NULL;
}

/* Removes the files of |dir| (one level) and |dir|, then frees the string. */
static inline void test_rmdir(char *dir) {
  if (dir == NULL) return;
  DIR *d = opendir(dir);
  if (d != NULL) {
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
      if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
      char p[1024];
      snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
      unlink(p);
    }
    closedir(d);
  }
  rmdir(dir);
  free(dir);
}

/* Opens (creating) the store of the test's directory |dir|: LMDB, or in
 * PostgreSQL mode (tests/tools/on_postgres.sh sets CAPSTAN_TEST_PG) a
 * database made for it now, so that every test's store starts empty. */
static inline int test_store_open(const char *dir, capstan_store_t **out) {
  const char *pg = getenv("CAPSTAN_TEST_PG");
  const char *src = getenv("CAPSTAN_SOURCE_DIR");
  if (pg == NULL || pg[0] == '\0' || src == NULL) return capstan_store_open_url(dir, "", 1u, out);
  char cmd[2048], url[1024] = "";
  snprintf(cmd, sizeof(cmd), "timeout 60 '%s/tests/tools/pg_cluster.sh' newdb '%s' c_unit", src,
           pg);
  FILE *p = popen(cmd, "r");
  if (p == NULL) return -1;
  if (fgets(url, sizeof(url), p) == NULL) url[0] = '\0';
  pclose(p);
  url[strcspn(url, "\r\n")] = '\0';
  if (url[0] == '\0') return -1;
  return capstan_store_open_url(dir, url, 1u, out);
}

#endif
