#include "core/descriptors.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sys/resource.h>
#include <unistd.h>

#include "core/base/error.h"
#include "core/base/log.h"
#include "core/base/metrics.h"

/* How often the process looks at its descriptors: while short, it counts
 * them; otherwise it checks that one is left. */
#define CHECK_MS 500

static struct {
  uv_loop_t *loop;
  uv_timer_t timer;
  int started;
  int spare; /* -1 when given up or not yet taken */
  int exhausted;
  uint64_t since_ms;
  double refused_before;
  capstan_metric_t *m_exhausted;
  capstan_metric_t *m_refused;
} g = {.spare = -1};

static rlim_t soft_limit(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return 0;
  return rl.rlim_cur;
}

/* The part of the limit kept for the process's own work: a sixteenth,
 * at least 8 (a small test limit) and at most 64 (what one loop turn of
 * file reads, transfers and a CA connection can need). */
static rlim_t reserve_for(rlim_t limit) {
  rlim_t r = limit / 16;
  if (r < 8) r = 8;
  if (r > 64) r = 64;
  return r;
}

/* The lowest free descriptor number, or -1 when none is free: the kernel
 * hands out the lowest first, so it stands for the count where /proc
 * cannot be read (a chroot or sandbox without it). */
static long lowest_free(void) {
  int fd = fcntl(g.spare >= 0 ? g.spare : 0, F_DUPFD_CLOEXEC, 0);
  if (fd < 0) return -1;
  close(fd);
  return fd;
}

/* Open descriptors now, or -1 when they cannot be counted (which itself
 * takes a descriptor). Only while short: it costs a directory read. */
static long count_open(void) {
  DIR *d = opendir("/proc/self/fd");
  if (d == NULL) {
    /* Still short; or no /proc, and the shortage must still end. */
    return errno == EMFILE || errno == ENFILE ? -1 : lowest_free();
  }
  long n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] != '.') n++;
  }
  closedir(d);
  return n - 1; /* the directory's own */
}

static void take_spare(void) {
  if (g.spare < 0) g.spare = open("/dev/null", O_RDONLY | O_CLOEXEC);
}

static void recover(long open_now, rlim_t limit) {
  g.exhausted = 0;
  capstan_metric_set(g.m_exhausted, 0);
  LOG_INFO("event=descriptors_recovered after_ms=%" PRIu64 " refused=%.0f open=%ld limit=%llu",
           uv_now(g.loop) - g.since_ms, capstan_metric_value(g.m_refused) - g.refused_before,
           open_now, (unsigned long long)limit);
}

static void start_condition(const char *where, int err);

/* When libuv's accept meets EMFILE it accepts and closes the pending
 * connections on its own reserve descriptor, without a word to the
 * listener: the one sign is that no descriptor is left. */
static void watch(void) {
  take_spare(); /* given up for a listener's EMFILE: taken back here */
  if (g.spare < 0) return;
  int fd = fcntl(g.spare, F_DUPFD_CLOEXEC, 0);
  if (fd >= 0) {
    close(fd);
    return;
  }
  if (errno == EMFILE || errno == ENFILE) start_condition("watch", -errno);
}

static void on_check(uv_timer_t *t) {
  (void)t;
  if (!g.exhausted) {
    watch();
    return;
  }
  take_spare();
  rlim_t limit = soft_limit();
  long open_now = count_open();
  if (open_now < 0) return;
  if (limit == 0 || (rlim_t)open_now + 2 * reserve_for(limit) <= limit) recover(open_now, limit);
}

static void start_condition(const char *where, int err) {
  if (g.exhausted) return;
  g.exhausted = 1;
  g.since_ms = uv_now(g.loop);
  g.refused_before = capstan_metric_value(g.m_refused);
  capstan_metric_set(g.m_exhausted, 1);
  rlim_t limit = soft_limit();
  LOG_WARN(
      "event=descriptors_exhausted where=%s error=%s limit=%llu reserve=%llu "
      "action=\"new connections closed, new transfers refused until descriptors are free\" "
      "hint=\"raise the open-files limit (LimitNOFILE=, ulimit -n) or lower max-connections\"",
      where, err < 0 ? uv_err_name(err) : "reserve_reached", (unsigned long long)limit,
      (unsigned long long)reserve_for(limit));
}

int capstan_descriptors_start(uv_loop_t *loop) {
  g.loop = loop;
  g.m_exhausted = capstan_metrics_gauge(
      "capstan_descriptors_exhausted",
      "1 while the process is short of file descriptors: new connections are closed", "");
  g.m_refused = capstan_metrics_counter(
      "capstan_descriptors_refused_total",
      "Connections closed and transfers or files refused for want of a file descriptor", "");
  if (g.m_exhausted == NULL || g.m_refused == NULL) return CAPSTAN_ENOMEM;
  int rc = uv_timer_init(loop, &g.timer);
  if (rc < 0) return rc;
  uv_unref((uv_handle_t *)&g.timer);
  uv_timer_start(&g.timer, on_check, CHECK_MS, CHECK_MS);
  g.started = 1;
  take_spare();
  return 0;
}

void capstan_descriptors_stop(void) {
  if (!g.started) return;
  g.started = 0;
  uv_close((uv_handle_t *)&g.timer, NULL);
  if (g.spare >= 0) close(g.spare);
  g.spare = -1;
}

int capstan_descriptors_is_exhaustion(int err) {
  return err == -EMFILE || err == -ENFILE;
}

int capstan_descriptors_admit(int fd, const char *where) {
  if (!g.started) return 0;
  if (!g.exhausted) {
    rlim_t limit = soft_limit();
    if (limit == 0 || fd < 0 || (rlim_t)fd + reserve_for(limit) < limit) return 0;
    /* Descriptors are handed out lowest first: every one below |fd| is
     * open, so the process is within its reserve. */
    start_condition(where, 0);
  }
  capstan_metric_inc(g.m_refused);
  return CAPSTAN_EBUSY;
}

int capstan_descriptors_note(int err, const char *where) {
  if (!g.started || !capstan_descriptors_is_exhaustion(err)) return 0;
  start_condition(where, err);
  capstan_metric_inc(g.m_refused);
  return 1;
}

void capstan_descriptors_release_spare(void) {
  if (g.spare < 0) return;
  close(g.spare);
  g.spare = -1;
}

int capstan_descriptors_exhausted_now(void) {
  return g.exhausted;
}
