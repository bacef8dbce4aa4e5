#include "core/memory_shortage.h"

#include <inttypes.h>
#include <sys/mman.h>

#include "core/base/error.h"
#include "core/base/log.h"
#include "core/base/metrics.h"

/* How often recovery is looked for, and how long without a failure it
 * takes: a burst of failures is one condition, not many. */
#define RECOVERY_CHECK_MS 500
#define QUIET_MS 1000
/* The probe: address space for a few sessions' buffers and one more
 * allocator arena would fit. Reserved, never touched, unmapped at once. */
#define PROBE_BYTES ((size_t)16 << 20)

static struct {
  uv_loop_t *loop;
  uv_timer_t timer;
  int started;
  int exhausted;
  uint64_t since_ms, last_failure_ms;
  double failures_before;
  capstan_metric_t *m_exhausted;
  capstan_metric_t *m_failures;
} g;

static int probe_fits(void) {
  void *p = mmap(NULL, PROBE_BYTES, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return 0;
  munmap(p, PROBE_BYTES);
  return 1;
}

static void on_check(uv_timer_t *t) {
  (void)t;
  uint64_t now = uv_now(g.loop);
  if (now - g.last_failure_ms < QUIET_MS || !probe_fits()) return;
  g.exhausted = 0;
  uv_timer_stop(&g.timer);
  capstan_metric_set(g.m_exhausted, 0);
  LOG_INFO("event=memory_recovered after_ms=%" PRIu64 " failures=%.0f", now - g.since_ms,
           capstan_metric_value(g.m_failures) - g.failures_before);
}

int capstan_memory_shortage_start(uv_loop_t *loop) {
  g.loop = loop;
  g.m_exhausted =
      capstan_metrics_gauge("capstan_memory_exhausted",
                            "1 while allocations fail: sessions that cannot allocate end", "");
  g.m_failures =
      capstan_metrics_counter("capstan_memory_allocation_failures_total",
                              "Allocation failures that ended a session or a request", "");
  if (g.m_exhausted == NULL || g.m_failures == NULL) return CAPSTAN_ENOMEM;
  int rc = uv_timer_init(loop, &g.timer);
  if (rc < 0) return rc;
  uv_unref((uv_handle_t *)&g.timer);
  g.started = 1;
  return 0;
}

void capstan_memory_shortage_stop(void) {
  if (!g.started) return;
  g.started = 0;
  uv_close((uv_handle_t *)&g.timer, NULL);
}

void capstan_memory_shortage_note(const char *where) {
  if (!g.started) {
    LOG_ERROR("event=out_of_memory where=%s", where);
    return;
  }
  capstan_metric_inc(g.m_failures);
  g.last_failure_ms = uv_now(g.loop);
  if (g.exhausted) return;
  g.exhausted = 1;
  g.since_ms = g.last_failure_ms;
  g.failures_before = capstan_metric_value(g.m_failures) - 1;
  capstan_metric_set(g.m_exhausted, 1);
  LOG_ERROR(
      "event=memory_exhausted where=%s action=\"sessions and requests that cannot allocate end; "
      "phones come back\" hint=\"raise the memory limit (MemoryMax=, LimitAS=, ulimit -v) or "
      "lower max-connections\"",
      where);
  uv_timer_start(&g.timer, on_check, RECOVERY_CHECK_MS, RECOVERY_CHECK_MS);
}

int capstan_memory_shortage_now(void) {
  return g.exhausted;
}
