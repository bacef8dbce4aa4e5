/* The log limiter (core/base/log.h): one line per CAPSTAN_LOG_LIMIT_MS per
 * limiter, and the next line says how many were held back. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "core/base/log.h"

static void test_one_line_per_interval(void **state) {
  (void)state;
  capstan_log_limit_t l = {0};
  uint64_t held = 99;
  /* The first occurrence is written at once, whatever the clock says. */
  assert_int_equal(capstan_log_limit_pass(&l, 0, &held), 1);
  assert_int_equal(held, 0);
  /* A flood inside the interval is held back and counted. */
  for (int i = 1; i <= 1000; i++) {
    assert_int_equal(capstan_log_limit_pass(&l, (uint64_t)i, &held), 0);
  }
  assert_int_equal(capstan_log_limit_pass(&l, CAPSTAN_LOG_LIMIT_MS - 1, &held), 0);
  /* The next line, one interval later, says how many were held back. */
  assert_int_equal(capstan_log_limit_pass(&l, CAPSTAN_LOG_LIMIT_MS, &held), 1);
  assert_int_equal(held, 1001);
  assert_int_equal(capstan_log_limit_pass(&l, CAPSTAN_LOG_LIMIT_MS + 1, &held), 0);
  assert_int_equal(capstan_log_limit_pass(&l, 3 * CAPSTAN_LOG_LIMIT_MS, &held), 1);
  assert_int_equal(held, 1);
}

static void test_limiters_are_independent(void **state) {
  (void)state;
  capstan_log_limit_t a = {0}, b = {0};
  uint64_t held;
  assert_int_equal(capstan_log_limit_pass(&a, 100000, &held), 1);
  assert_int_equal(capstan_log_limit_pass(&a, 100001, &held), 0);
  /* Another reason has its own line. */
  assert_int_equal(capstan_log_limit_pass(&b, 100001, &held), 1);
  assert_int_equal(held, 0);
}

static void test_clock_going_back(void **state) {
  (void)state;
  capstan_log_limit_t l = {0};
  uint64_t held;
  assert_int_equal(capstan_log_limit_pass(&l, 50000, &held), 1);
  assert_int_equal(capstan_log_limit_pass(&l, 50001, &held), 0);
  /* Never silenced for good by a clock that moved back. */
  assert_int_equal(capstan_log_limit_pass(&l, 10, &held), 1);
  assert_int_equal(held, 1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_one_line_per_interval),
      cmocka_unit_test(test_limiters_are_independent),
      cmocka_unit_test(test_clock_going_back),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
