/* Helpers shared by the storage unit tests: a fresh temporary data
 * directory per test, removed afterwards. */
#ifndef CAPSTAN_TESTS_STORE_TEST_UTIL_H
#define CAPSTAN_TESTS_STORE_TEST_UTIL_H

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

#endif
