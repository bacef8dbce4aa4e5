/* Running out of file descriptors (core/descriptors): the reserve at
 * accept, the condition entered once and counted, the watch that notices
 * a full descriptor table by itself, and recovery without a restart. The
 * test process lowers its own open-files limit to 64 (reserve 8). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>
#include <uv.h>

#include "core/base/error.h"
#include "core/base/metrics.h"
#include "core/descriptors.h"

#define LIMIT 64

static uv_loop_t g_loop;
static capstan_metric_t *g_exhausted, *g_refused;

static void on_stop(uv_timer_t *t) {
  uv_stop(t->loop);
}

/* Runs the loop for |ms|: the module's timer is unreferenced. */
static void run_for(uint64_t ms) {
  uv_timer_t t;
  uv_timer_init(&g_loop, &t);
  uv_timer_start(&t, on_stop, ms, 0);
  uv_run(&g_loop, UV_RUN_DEFAULT);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(&g_loop, UV_RUN_NOWAIT);
}

static int setup(void **state) {
  (void)state;
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return -1;
  rl.rlim_cur = LIMIT;
  if (setrlimit(RLIMIT_NOFILE, &rl) != 0) return -1;
  if (uv_loop_init(&g_loop) != 0) return -1;
  if (capstan_descriptors_start(&g_loop) != 0) return -1;
  g_exhausted = capstan_metrics_gauge("capstan_descriptors_exhausted", "", "");
  g_refused = capstan_metrics_counter("capstan_descriptors_refused_total", "", "");
  return 0;
}

static int teardown(void **state) {
  (void)state;
  capstan_descriptors_stop();
  uv_run(&g_loop, UV_RUN_DEFAULT);
  return uv_loop_close(&g_loop) == 0 ? 0 : -1; /* no handle left behind */
}

static void test_reserve_at_accept(void **state) {
  (void)state;
  assert_int_equal(capstan_descriptors_admit(10, "t"), 0);
  assert_int_equal(capstan_descriptors_admit(LIMIT - 9, "t"), 0);
  assert_true(capstan_metric_value(g_exhausted) == 0);
  /* Within the last 8: every descriptor below it is open. */
  assert_int_equal(capstan_descriptors_admit(LIMIT - 8, "t"), CAPSTAN_EBUSY);
  assert_true(capstan_metric_value(g_exhausted) == 1);
  /* While short, every new connection is refused, however low its fd. */
  assert_int_equal(capstan_descriptors_admit(10, "t"), CAPSTAN_EBUSY);
  assert_true(capstan_metric_value(g_refused) == 2);
  /* Few descriptors are open here: the next check ends the condition. */
  run_for(700);
  assert_true(capstan_metric_value(g_exhausted) == 0);
  assert_int_equal(capstan_descriptors_admit(10, "t"), 0);
}

static void test_errors_noted(void **state) {
  (void)state;
  assert_true(capstan_descriptors_is_exhaustion(UV_EMFILE));
  assert_true(capstan_descriptors_is_exhaustion(UV_ENFILE));
  assert_false(capstan_descriptors_is_exhaustion(UV_EIO));
  double refused = capstan_metric_value(g_refused);
  assert_int_equal(capstan_descriptors_note(UV_ECONNRESET, "t"), 0);
  assert_true(capstan_metric_value(g_exhausted) == 0);
  assert_int_equal(capstan_descriptors_note(UV_EMFILE, "t"), 1);
  assert_true(capstan_metric_value(g_exhausted) == 1);
  assert_true(capstan_metric_value(g_refused) == refused + 1);
  run_for(700);
  assert_true(capstan_metric_value(g_exhausted) == 0);
}

static void test_full_table_noticed(void **state) {
  (void)state;
  int fds[LIMIT];
  int n = 0;
  while (n < LIMIT) {
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd < 0) break;
    fds[n++] = fd;
  }
  assert_int_equal(errno, EMFILE);
  /* Nobody called the module: its watch finds no descriptor left. */
  run_for(700);
  assert_true(capstan_metric_value(g_exhausted) == 1);
  while (n > 0) close(fds[--n]);
  run_for(700);
  assert_true(capstan_metric_value(g_exhausted) == 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_reserve_at_accept),
      cmocka_unit_test(test_errors_noted),
      cmocka_unit_test(test_full_table_noticed),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
