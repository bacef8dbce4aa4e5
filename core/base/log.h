/* Logging: one line per event on stderr, "ts level=... msg key=value ...".
 * Never log secrets (authentication strings, private keys).
 * Thread-safe: each line is written with a single write(2). */
#ifndef CAPSTAN_CORE_BASE_LOG_H
#define CAPSTAN_CORE_BASE_LOG_H

#include <stdarg.h>

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

#define LOG_DEBUG(...)                                                                       \
  do {                                                                                       \
    if (capstan_log_enabled(CAPSTAN_LOG_DEBUG)) capstan_log(CAPSTAN_LOG_DEBUG, __VA_ARGS__); \
  } while (0)
#define LOG_INFO(...) capstan_log(CAPSTAN_LOG_INFO, __VA_ARGS__)
#define LOG_WARN(...) capstan_log(CAPSTAN_LOG_WARN, __VA_ARGS__)
#define LOG_ERROR(...) capstan_log(CAPSTAN_LOG_ERROR, __VA_ARGS__)

#endif
