/* The standard process metrics (core/base/process_metrics) and the counter
 * computed at scrape time they use (capstan_metrics_counter_fn): types in
 * the exposition, values that match what the process is. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "core/base/metrics.h"
#include "core/base/process_metrics.h"

/* The last rendering of every metric. A global: with it in a local passed
 * to helpers, GCC 12 at -O3 reports a dangling pointer that is not there. */
static char *g_text;

static void render(void) {
  free(g_text);
  g_text = NULL;
  size_t len = 0;
  assert_int_equal(capstan_metrics_render(&g_text, &len), 0);
}

/* The value of the unlabelled series |name| in g_text; fails when absent. */
static double value_of(const char *name) {
  char key[128];
  snprintf(key, sizeof(key), "\n%s ", name);
  const char *p = strstr(g_text, key);
  assert_non_null(p);
  return strtod(p + strlen(key), NULL);
}

static int occurrences(const char *needle) {
  int n = 0;
  size_t len = strlen(needle);
  for (size_t i = 0; g_text[i] != '\0'; i++) {
    if (strncmp(g_text + i, needle, len) == 0) n++;
  }
  return n;
}

static double counted;
static double count_up(void *arg) {
  return counted;
}

static void test_counter_fn_is_a_counter(void **state) {
  assert_non_null(capstan_metrics_counter_fn("test_things_total", "Things", "", count_up, NULL));
  counted = 41;
  render();
  assert_int_equal(occurrences("# TYPE test_things_total counter\n"), 1);
  assert_true(value_of("test_things_total") == 41);
  counted = 42;
  render();
  assert_true(value_of("test_things_total") == 42);
}

static void test_process_metrics(void **state) {
  capstan_process_metrics_register();
  capstan_process_metrics_register(); /* again: the same series */
  /* Burn a little CPU so the counter moves. */
  struct timespec t0, t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t0);
  volatile unsigned spin = 0;
  do {
    for (int i = 0; i < 100000; i++) spin += (unsigned)i;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  } while ((t.tv_sec - t0.tv_sec) * 1000000000L + (t.tv_nsec - t0.tv_nsec) < 50000000L);

  render();
  /* Each family once, with its type. */
  assert_int_equal(occurrences("# TYPE process_cpu_seconds_total counter\n"), 1);
  assert_int_equal(occurrences("# TYPE process_resident_memory_bytes gauge\n"), 1);
  assert_int_equal(occurrences("# TYPE process_virtual_memory_bytes gauge\n"), 1);
  assert_int_equal(occurrences("# TYPE process_max_fds gauge\n"), 1);
  double cpu = value_of("process_cpu_seconds_total");
  assert_true(cpu >= 0.05 && cpu < 3600);
  double rss = value_of("process_resident_memory_bytes");
  double vsz = value_of("process_virtual_memory_bytes");
  assert_true(rss > 1024 * 1024);
  assert_true(vsz >= rss);
  struct rlimit rl;
  assert_int_equal(getrlimit(RLIMIT_NOFILE, &rl), 0);
  assert_true(value_of("process_max_fds") == (double)rl.rlim_cur);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_counter_fn_is_a_counter),
      cmocka_unit_test(test_process_metrics),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  free(g_text);
  return rc;
}
