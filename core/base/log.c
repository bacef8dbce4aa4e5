#include "core/base/log.h"
#include "core/base/error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static capstan_log_level_t g_level = CAPSTAN_LOG_INFO;

static const char *const kLevelNames[] = {"debug", "info", "warn", "error"};

void capstan_log_init(void) {
  const char *env = getenv("CAPSTAN_LOG_LEVEL");
  if (env == NULL) return;
  for (int i = 0; i < 4; i++) {
    if (strcasecmp(env, kLevelNames[i]) == 0) g_level = (capstan_log_level_t)i;
  }
}

void capstan_log_set_level(capstan_log_level_t level) {
  g_level = level;
}

int capstan_log_enabled(capstan_log_level_t level) {
  return level >= g_level;
}

void capstan_logv(capstan_log_level_t level, const char *fmt, va_list ap) {
  if (level < g_level) return;
  char line[2048];
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s ",
                   tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                   ts.tv_nsec / 1000000, kLevelNames[level]);
  if (n < 0) return;
  int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
  size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
  if (len > sizeof(line) - 2) len = sizeof(line) - 2; /* truncated line */
  line[len++] = '\n';
  /* One write per line keeps lines whole when threads log together. */
  ssize_t w = write(STDERR_FILENO, line, len);
  (void)w;
}

void capstan_log(capstan_log_level_t level, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  capstan_logv(level, fmt, ap);
  va_end(ap);
}

int capstan_log_limit_pass(capstan_log_limit_t *l, uint64_t now_ms, uint64_t *suppressed) {
  /* A clock that went back (another clock source) counts as time passed. */
  if (l->written && now_ms >= l->last_ms && now_ms - l->last_ms < CAPSTAN_LOG_LIMIT_MS) {
    l->suppressed++;
    return 0;
  }
  *suppressed = l->suppressed;
  l->suppressed = 0;
  l->last_ms = now_ms;
  l->written = 1;
  return 1;
}

const char *capstan_strerror(int err) {
  switch (err) {
    case 0:
      return "success";
    case CAPSTAN_ECRYPTO:
      return "cryptographic operation failed";
    case CAPSTAN_EPROTO:
      return "protocol error";
    case CAPSTAN_EBUSY:
      return "limit reached, try later";
    default:
      return err < 0 ? strerror(-err) : "unknown error";
  }
}
