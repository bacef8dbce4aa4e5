/* Logging: one line per event on stderr, "ts level=... msg key=value ...".
 * Never log secrets (authentication strings, private keys).
 * Thread-safe: each line is written with a single write(2). */
#ifndef CAPSTAN_CORE_BASE_LOG_H
#define CAPSTAN_CORE_BASE_LOG_H

#include <stdarg.h>
#include <stdint.h>

typedef enum {
  CAPSTAN_LOG_DEBUG = 0,
  CAPSTAN_LOG_INFO = 1,
  CAPSTAN_LOG_WARN = 2,
  CAPSTAN_LOG_ERROR = 3,
} capstan_log_level_t;

/* Lines below |level| are dropped. Default INFO; $CAPSTAN_LOG_LEVEL
 * (debug|info|warn|error) sets it at capstan_log_init. */
void capstan_log_init(void);
void capstan_log_set_level(capstan_log_level_t level);
int capstan_log_enabled(capstan_log_level_t level);

/* |fmt| is the event text, normally "event=name key=value ...". */
void capstan_log(capstan_log_level_t level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void capstan_logv(capstan_log_level_t level, const char *fmt, va_list ap);

/* A line that a flood could repeat (a refused connection, a busy answer):
 * at most one per CAPSTAN_LOG_LIMIT_MS for each limiter, and the line that
 * is written says how many were held back since the previous one. Keep one
 * limiter per kind of line (per refusal reason), zeroed at first. Not
 * thread-safe: each limiter belongs to one thread (a listener's loop). */
#define CAPSTAN_LOG_LIMIT_MS 5000

typedef struct capstan_log_limit {
  uint64_t last_ms;    /* when the last line was written (|now_ms| clock) */
  uint64_t suppressed; /* lines held back since then */
  int written;         /* a line was ever written */
} capstan_log_limit_t;

/* Decides for one occurrence at |now_ms| (any monotonic millisecond clock,
 * the same for every call on |l|): returns 1 when the line is to be written
 * now, with *suppressed set to the number held back since the previous one
 * (then reset); returns 0 and counts this one as held back otherwise. */
int capstan_log_limit_pass(capstan_log_limit_t *l, uint64_t now_ms, uint64_t *suppressed);

#define LOG_DEBUG(...)                                                                       \
  do {                                                                                       \
    if (capstan_log_enabled(CAPSTAN_LOG_DEBUG)) capstan_log(CAPSTAN_LOG_DEBUG, __VA_ARGS__); \
  } while (0)
#define LOG_INFO(...) capstan_log(CAPSTAN_LOG_INFO, __VA_ARGS__)
#define LOG_WARN(...) capstan_log(CAPSTAN_LOG_WARN, __VA_ARGS__)
#define LOG_ERROR(...) capstan_log(CAPSTAN_LOG_ERROR, __VA_ARGS__)

#endif
