#include "core/base/process_metrics.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

#include "core/base/metrics.h"

static double cpu_seconds(void *arg) {
  struct rusage ru;
  if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
  return (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
         ((double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_usec) / 1e6;
}

/* Field |index| (0: size, 1: resident) of /proc/self/statm, in bytes. The
 * file is one line of decimal page counts separated by spaces. */
static double statm_bytes(int index) {
  int fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  char buf[128];
  ssize_t n = read(fd, buf, sizeof(buf) - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = '\0'; /* ours: the parse below stops at it */
  const char *p = buf;
  for (int i = 0;; i++) {
    char *end = NULL;
    unsigned long long pages = strtoull(p, &end, 10);
    if (end == p) return 0;
    if (i == index) return (double)pages * (double)sysconf(_SC_PAGESIZE);
    p = end;
  }
}

static double resident_bytes(void *arg) {
  return statm_bytes(1);
}

static double virtual_bytes(void *arg) {
  return statm_bytes(0);
}

static double max_fds(void *arg) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return 0;
  return (double)rl.rlim_cur;
}

void capstan_process_metrics_register(void) {
  capstan_metrics_counter_fn("process_cpu_seconds_total",
                             "Total user and system CPU time spent in seconds", "", cpu_seconds,
                             NULL);
  capstan_metrics_gauge_fn("process_resident_memory_bytes", "Resident memory size in bytes", "",
                           resident_bytes, NULL);
  capstan_metrics_gauge_fn("process_virtual_memory_bytes", "Virtual memory size in bytes", "",
                           virtual_bytes, NULL);
  capstan_metrics_gauge_fn("process_max_fds", "Maximum number of open file descriptors", "",
                           max_fds, NULL);
}
