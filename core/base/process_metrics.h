/* The process metrics every Prometheus client library exports, under their
 * usual names, so that dashboards and alerts written for other services
 * work unchanged:
 *
 *   process_cpu_seconds_total       counter  user + system CPU (getrusage)
 *   process_resident_memory_bytes   gauge    resident set (/proc/self/statm)
 *   process_virtual_memory_bytes    gauge    address space (/proc/self/statm)
 *   process_max_fds                 gauge    RLIMIT_NOFILE (soft)
 *
 * Computed at scrape time, on the scraping thread, each with one system call
 * or one read of a one-line file. There is no process_open_fds: counting
 * /proc/self/fd costs milliseconds per scrape with 20,000 phones connected,
 * on the loop thread; the connection gauges of each listener say the same.
 * The start time is capstan_process_start_time_seconds. */
#ifndef CAPSTAN_CORE_BASE_PROCESS_METRICS_H
#define CAPSTAN_CORE_BASE_PROCESS_METRICS_H

/* Registers them (again is harmless). A value that cannot be read is 0. */
void capstan_process_metrics_register(void);

#endif
