/* `capstan serve`: the server process. One libuv loop owns every listener
 * (the rows of listeners.c); the store's writer thread and the libuv thread
 * pool do the rest.
 *
 * Life cycle: open (with --init, initialise) the store, fail what a stopped
 * server left in progress, start the writer,
 * start the listeners, run. SIGHUP reloads certificates and settings;
 * admin commands' setting changes are noticed by polling the store's
 * transaction id once a second; the same poll removes audit events older
 * than audit-retention-days (at start, hourly, and when the setting
 * changes, in batches through the writer). SIGTERM/SIGINT drain: stop
 * accepting, let sessions finish up to --drain-seconds, then exit 0. */
#define _GNU_SOURCE /* sched_getaffinity */
#include "handlers/serve/serve.h"

#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "core/base/error.h"
#include "core/capf_lifecycle.h"
#include "core/descriptors.h"
#include "core/memory_shortage.h"
#include "core/identities.h"
#include "core/base/log.h"
#include "core/base/metrics.h"
#include "core/settings.h"
#include "handlers/serve/listeners.h"
#include "storage/audit.h"
#include "storage/devices.h"
#include "storage/store.h"

#define SETTINGS_POLL_MS 1000
#define EXPIRY_CHECK_SECONDS 86400 /* the CAPF expiry warning, once a day */
#define AUDIT_PRUNE_SECONDS 3600   /* audit events past their retention, hourly */
#define AUDIT_PRUNE_RETRY_SECONDS 60
#define STORAGE_REPAIR_SECONDS 2   /* between repairs while the store fails */
#define DEAD_NODE_REPAIR_SECONDS 5 /* between the leader's repairs of dead nodes' devices */

typedef struct server {
  const capstan_serve_options_t *opt;
  capstan_serve_ctx_t ctx; /* what the listener rows share */
  capstan_settings_t settings;
  uint64_t settings_txnid;
  uv_signal_t sigterm, sigint, sighup;
  uv_timer_t poll;
  /* The CAPF certificate's clock: when the first previous CAPF stops being
   * trusted (0: none is), and when to look at the CAPF's expiry next. */
  int64_t previous_trust_ends;
  int64_t next_expiry_check;
  /* The audit log's retention: when to prune next, and whether a prune is
   * with the writer. */
  int64_t next_audit_prune;
  int audit_prune_busy;
  /* The storage repair: the writer's failed batches it has covered, and
   * whether one is with the writer. */
  uint64_t repaired_failures;
  int64_t next_repair;
  int64_t next_dead_node_repair;
  int repair_busy;
  int stopping;
  unsigned stage;    /* drain stage in progress */
  unsigned draining; /* rows of that stage still draining */
} server_t;

/* --- Live settings -------------------------------------------------------- */

static void each_apply_settings(server_t *srv) {
  for (size_t i = 0; i < capstan_serve_listener_count; i++) {
    const capstan_serve_listener_t *row = &capstan_serve_listeners[i];
    if (row->apply_settings) row->apply_settings(&srv->ctx);
  }
}

static void each_reload(server_t *srv) {
  /* The time before the snapshots are built: a window that ends while they
   * load is then still ahead of |now| and gets its own reload. */
  int64_t now = (int64_t)time(NULL);
  for (size_t i = 0; i < capstan_serve_listener_count; i++) {
    const capstan_serve_listener_t *row = &capstan_serve_listeners[i];
    if (row->reload) row->reload(&srv->ctx);
  }
  srv->previous_trust_ends = capstan_capf_previous_trust_ends(srv->ctx.store, now);
  capstan_capf_check_expiry(srv->ctx.store, now);
}

/* Once a second: a previous CAPF certificate whose trust window ended
 * leaves CAPF-trust and the ITL files although nothing in the store
 * changed; and once a day the CAPF's own expiry is checked. */
static void check_capf_clock(server_t *srv) {
  if (srv->stopping) return;
  int64_t now = (int64_t)time(NULL);
  if (srv->previous_trust_ends != 0 && now >= srv->previous_trust_ends) {
    LOG_INFO("event=reload cause=capf_previous_trust_ended");
    each_reload(srv);
  }
  /* One node of several checks (and logs) the CAPF certificate's expiry. */
  if (now >= srv->next_expiry_check && capstan_store_leader(srv->ctx.store)) {
    capstan_capf_check_expiry(srv->ctx.store, now);
    srv->next_expiry_check = now + EXPIRY_CHECK_SECONDS;
  }
}

/* --- Audit retention ------------------------------------------------------ */

/* One prune on the writer thread: replayable (it reads its arguments and
 * overwrites its results). */
typedef struct audit_prune {
  server_t *srv;
  int64_t now_ns;
  unsigned retention_days;
  size_t removed;
  bool more;
} audit_prune_t;

static int audit_prune_write(capstan_txn_t *txn, void *arg) {
  audit_prune_t *p = arg;
  return capstan_audit_prune(txn, p->now_ns, p->retention_days, CAPSTAN_AUDIT_PRUNE_BATCH,
                             &p->removed, &p->more);
}

static void audit_prune_done(void *arg, int status) {
  audit_prune_t *p = arg;
  server_t *srv = p->srv;
  int64_t now = (int64_t)time(NULL);
  srv->audit_prune_busy = 0;
  if (status < 0) {
    LOG_WARN("event=audit_prune_failed error=%s retry_seconds=%d", capstan_strerror(status),
             AUDIT_PRUNE_RETRY_SECONDS);
    srv->next_audit_prune = now + AUDIT_PRUNE_RETRY_SECONDS;
  } else {
    if (p->removed > 0) {
      LOG_INFO("event=audit_pruned removed=%zu retention_days=%u more=%s", p->removed,
               p->retention_days, p->more ? "yes" : "no");
    }
    /* A backlog goes a batch a second, each in a short transaction. */
    srv->next_audit_prune = p->more ? now : now + AUDIT_PRUNE_SECONDS;
  }
  free(p);
}

/* Removes audit events past audit-retention-days when it is time: at
 * start, hourly, and when the setting changes. */
static void check_audit_retention(server_t *srv) {
  int64_t now = (int64_t)time(NULL);
  if (srv->stopping || srv->audit_prune_busy || now < srv->next_audit_prune) return;
  if (!capstan_store_leader(srv->ctx.store)) return; /* another node prunes the shared log */
  audit_prune_t *p = calloc(1, sizeof(*p));
  if (p == NULL) return;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  p->srv = srv;
  p->now_ns = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
  p->retention_days = srv->settings.audit_retention_days;
  if (capstan_store_submit(srv->ctx.store, audit_prune_write, p, audit_prune_done) < 0) {
    free(p);
    srv->next_audit_prune = now + AUDIT_PRUNE_RETRY_SECONDS;
    return;
  }
  srv->audit_prune_busy = 1;
}

/* --- Storage repair ------------------------------------------------------- */

/* After a storage outage some devices stay IN_PROGRESS: their session
 * could not record its outcome (or the phone's confirmation), told the
 * phone to retry, and ended. Once commits succeed again, each device in
 * progress without a running session of this process is failed with why,
 * its operation still scheduled, as at start-up (reconcile_interrupted).
 * The repair runs on the writer like any write, so every record a session
 * queued before it is already written: only sessions running when it is
 * queued can still end their devices' attempts, and they are skipped. It
 * is queued every STORAGE_REPAIR_SECONDS while the store fails (its write
 * is what shows the store writable again) and once more after the last
 * failure. */
typedef struct storage_repair {
  server_t *srv;
  const char *reason, *at; /* CAPSTAN_REASON_STORAGE_ERROR, or NODE_DIED */
  bool dead_nodes;         /* the leader's repair of dead nodes' devices */
  char **live;             /* sorted */
  size_t nlive;
  uint64_t failures; /* the writer's failed batches when it was queued */
  int64_t now;
  size_t failed;
} storage_repair_t;

static int storage_repair_write(capstan_txn_t *txn, void *arg) {
  storage_repair_t *r = arg;
  int err = capstan_devices_fail_in_progress(txn, r->now, r->reason, r->at, r->live, r->nlive,
                                             &r->failed, NULL);
  /* A write even when no device needs it: during an outage, its commit is
   * what tells the writer the store takes writes again. */
  if (err == 0 && !r->dead_nodes) err = capstan_store_touch(txn);
  return err;
}

static void storage_repair_free(storage_repair_t *r) {
  for (size_t i = 0; i < r->nlive; i++) free(r->live[i]);
  free(r->live);
  free(r);
}

static void storage_repair_done(void *arg, int status) {
  storage_repair_t *r = arg;
  server_t *srv = r->srv;
  srv->repair_busy = 0;
  if (status == 0 && r->dead_nodes) {
    if (r->failed > 0) {
      LOG_WARN("event=dead_nodes_repaired devices=%zu status=failed reason=\"%s\"", r->failed,
               r->reason);
    }
  } else if (status == 0) {
    srv->repaired_failures = r->failures;
    if (r->failed > 0) {
      LOG_WARN("event=storage_repaired devices=%zu status=failed reason=\"%s\"", r->failed,
               r->reason);
    }
  }
  storage_repair_free(r);
}

/* Queues a repair of the devices in progress that no session of this
 * process runs (and, on a shared store, that no other live node put
 * there): the storage repair after an outage, or the leader's repair of
 * what dead nodes left. */
static void queue_repair(server_t *srv, bool dead_nodes, uint64_t failures, int64_t now) {
  storage_repair_t *r = calloc(1, sizeof(*r));
  if (r == NULL) return;
  r->srv = srv;
  r->failures = failures;
  r->now = now;
  r->dead_nodes = dead_nodes;
  r->reason = dead_nodes ? CAPSTAN_REASON_NODE_DIED : CAPSTAN_REASON_STORAGE_ERROR;
  r->at = dead_nodes ? "dead_node_repair" : "storage_repair";
  if (capstan_capf_server_live_devices(srv->ctx.capf, &r->live, &r->nlive) < 0) {
    storage_repair_free(r);
    return;
  }
  capstan_devices_sort_names(r->live, r->nlive);
  if (capstan_store_submit(srv->ctx.store, storage_repair_write, r, storage_repair_done) < 0) {
    storage_repair_free(r);
    return;
  }
  srv->repair_busy = 1;
}

static void check_storage_repair(server_t *srv) {
  capstan_store_t *store = srv->ctx.store;
  int64_t now = (int64_t)time(NULL);
  if (srv->stopping || srv->repair_busy) return;
  uint64_t failures = capstan_store_failed_batches(store);
  if (now >= srv->next_repair &&
      (failures != srv->repaired_failures || !capstan_store_available(store))) {
    queue_repair(srv, false, failures, now);
    srv->next_repair = now + STORAGE_REPAIR_SECONDS;
    return;
  }
  /* Several nodes: a node that died mid-session left its devices in
   * progress; the leader fails them (operation still scheduled) once the
   * node's heartbeat is CAPSTAN_NODE_DEAD_SECONDS old, so the phones'
   * next sessions, on any node, run them again. */
  if (capstan_store_node_name(store) != NULL && strcmp(capstan_store_backend(store), "lmdb") != 0 &&
      capstan_store_leader(store) && now >= srv->next_dead_node_repair) {
    queue_repair(srv, true, 0, now);
    srv->next_dead_node_repair = now + DEAD_NODE_REPAIR_SECONDS;
  }
}

static void apply_settings(server_t *srv) {
  capstan_settings_t s;
  if (capstan_settings_load(srv->ctx.store, &s) < 0) return;
  /* Most transactions are not about settings: say so only on a change, so
   * an operator (or a test) can see when a `config set` took effect. */
  if (!capstan_settings_equal(&srv->settings, &s)) {
    char all[1536]; /* every setting, capf-host at its longest included */
    capstan_settings_format(&s, all, sizeof(all));
    LOG_INFO("event=settings_applied %s", all);
  }
  uint64_t old_generation = srv->settings.trust_generation;
  unsigned old_trust_days = srv->settings.capf_previous_trust_days;
  /* A shorter retention applies at the next poll, not in an hour. */
  if (s.audit_retention_days != srv->settings.audit_retention_days) srv->next_audit_prune = 0;
  srv->settings = s;
  /* Once draining, rows are going away: no settings or reloads reach them
   * (the poll and SIGHUP stay live until everything drained). */
  if (srv->stopping) return;
  each_apply_settings(srv);
  /* `capstan trust` and `capstan cert capf` bump the generation with
   * every change: reload the identities and trust stores as SIGHUP would,
   * without the operator sending it. A new trust window for previous CAPF
   * certificates changes which of them are trusted. */
  if (s.trust_generation != old_generation) {
    LOG_INFO("event=reload cause=trust_changed generation=%llu",
             (unsigned long long)s.trust_generation);
    each_reload(srv);
  } else if (s.capf_previous_trust_days != old_trust_days) {
    LOG_INFO("event=reload cause=capf_previous_trust_days days=%u", s.capf_previous_trust_days);
    each_reload(srv);
  }
}

static void on_poll(uv_timer_t *t) {
  server_t *srv = t->data;
  check_capf_clock(srv);
  check_audit_retention(srv);
  check_storage_repair(srv);
  uint64_t txnid = capstan_store_txnid(srv->ctx.store);
  if (txnid == srv->settings_txnid) return;
  srv->settings_txnid = txnid;
  apply_settings(srv);
}

/* --- Signals and drain ---------------------------------------------------- */

static void drain_stage(server_t *srv);

static void on_row_drained(void *arg) {
  server_t *srv = arg;
  if (--srv->draining > 0) return;
  if (++srv->stage < CAPSTAN_SERVE_STAGES) {
    drain_stage(srv);
    return;
  }
  LOG_INFO("event=drained");
  uv_close((uv_handle_t *)&srv->sigterm, NULL);
  uv_close((uv_handle_t *)&srv->sigint, NULL);
  uv_close((uv_handle_t *)&srv->sighup, NULL);
  uv_close((uv_handle_t *)&srv->poll, NULL);
  capstan_descriptors_stop();
  capstan_memory_shortage_stop();
  /* Sessions are gone: commit what they queued, then let the loop end. */
  capstan_store_writer_stop(srv->ctx.store);
}

/* Drains every row of the current stage together; the next stage starts
 * when the last of them is done. */
static void drain_stage(server_t *srv) {
  uint64_t deadline_ms = (uint64_t)srv->opt->drain_seconds * 1000;
  srv->draining = 1; /* held until every row of the stage is asked */
  for (size_t i = 0; i < capstan_serve_listener_count; i++) {
    const capstan_serve_listener_t *row = &capstan_serve_listeners[i];
    if (row->stage != srv->stage) continue;
    srv->draining++;
    row->drain(&srv->ctx, deadline_ms, on_row_drained, srv);
  }
  on_row_drained(srv);
}

static void stop_server(server_t *srv) {
  if (srv->stopping) return;
  srv->stopping = 1;
  LOG_INFO("event=stopping drain_seconds=%u", srv->opt->drain_seconds);
  srv->stage = 0;
  drain_stage(srv);
}

static void on_signal(uv_signal_t *h, int signum) {
  server_t *srv = h->data;
  if (signum == SIGHUP) {
    LOG_INFO("event=reload signal=SIGHUP");
    apply_settings(srv);
    if (!srv->stopping) each_reload(srv);
    return;
  }
  stop_server(srv);
}

/* Process-wide set-up before any thread starts. */
static void tune_process(void) {
  signal(SIGPIPE, SIG_IGN);
  /* Every phone holds a socket: take every descriptor the system allows. */
  struct rlimit nofile;
  if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
    nofile.rlim_cur = nofile.rlim_max;
    setrlimit(RLIMIT_NOFILE, &nofile);
  }
  /* Crypto runs on libuv's thread pool: one thread per core this process
   * may run on (its CPU affinity, so a server pinned with taskset or a
   * cpuset does not oversubscribe its cores), set before the pool starts.
   * An operator may override it. */
  if (getenv("UV_THREADPOOL_SIZE") == NULL) {
    cpu_set_t cpus;
    long n = sched_getaffinity(0, sizeof(cpus), &cpus) == 0 ? CPU_COUNT(&cpus)
                                                            : sysconf(_SC_NPROCESSORS_ONLN);
    char buf[24];
    snprintf(buf, sizeof(buf), "%ld", n < 1 ? 1 : (n > 64 ? 64 : n));
    setenv("UV_THREADPOOL_SIZE", buf, 1);
  }
  /* SCHED_BATCH, inherited by every thread started from here on: a thread
   * woken by a packet or a finished job no longer preempts a crypto worker
   * in the middle of a signature; it runs at the worker's next scheduling
   * point and then handles everything that arrived meanwhile in one pass.
   * Under load that cuts the server's context switches from about 3.3 to
   * 1.25 per enrollment (bench/RESULTS.md, run 4); an idle core still runs
   * a woken thread at once. The priority (nice value) is unchanged. */
  struct sched_param no_priority = {0};
  if (sched_setscheduler(0, SCHED_BATCH, &no_priority) != 0) {
    LOG_WARN("event=sched_batch_unavailable error=\"%s\"", strerror(errno));
  }
}

/* Starts every row in table order; on the first failure the rows started
 * so far drain through the normal path. Returns 0 or the error. */
static int start_rows(server_t *srv) {
  int64_t now = (int64_t)time(NULL); /* before the snapshots, as each_reload */
  for (size_t i = 0; i < capstan_serve_listener_count; i++) {
    int rc = capstan_serve_listeners[i].start(&srv->ctx);
    if (rc < 0) {
      LOG_ERROR("event=start_failed listener=%s error=%s", capstan_serve_listeners[i].name,
                capstan_strerror(rc));
      return rc;
    }
  }
  capstan_serve_log_listeners(&srv->ctx);
  srv->previous_trust_ends = capstan_capf_previous_trust_ends(srv->ctx.store, now);
  srv->next_expiry_check = now; /* the first poll checks the expiry */
  return 0;
}

/* --- Start-up ------------------------------------------------------------- */

static int reconcile_txn(capstan_txn_t *txn, void *arg) {
  return capstan_devices_reconcile_interrupted(txn, (int64_t)time(NULL), arg);
}

/* Devices left in progress by a server that stopped during their
 * operation: before anything listens no session can be running (the data
 * directory's lock keeps other servers away), so each of them is failed
 * with why, and runs again when its phone comes back. Failed rather than
 * pending: the operator sees that an attempt was cut short (an LSC may have
 * been issued and not confirmed), and the attempt counts stay true.
 * Returns 1 when the store is full at its maximum and nothing was done. */
static int reconcile_interrupted(capstan_store_t *store) {
  size_t n = 0;
  int rc = capstan_store_write(store, reconcile_txn, &n); /* grows a full map */
  if (rc == CAPSTAN_ENOSPC) {
    /* Full at --store-max-mib (a restart after the map filled): start
     * anyway, so that files are served; the writer's repair of devices
     * left in progress fails them once writes work (a larger maximum). */
    LOG_WARN(
        "event=reconcile_skipped error=%s map_bytes=%zu max_bytes=%zu hint=\"the store is "
        "full at its maximum: raise --store-max-mib (or store-max-mib in the config file) and "
        "restart; devices left in progress are repaired once writes work\"",
        capstan_strerror(rc), capstan_store_map_size(store), capstan_store_map_max(store));
    return 1;
  }
  if (rc < 0) {
    LOG_ERROR("event=reconcile_failed error=%s", capstan_strerror(rc));
    return rc;
  }
  if (n > 0) {
    LOG_WARN("event=reconciled_interrupted devices=%zu status=failed reason=\"%s\"", n,
             CAPSTAN_REASON_INTERRUPTED);
  }
  return 0;
}

/* --node-name, else host:data directory: unique among the nodes that
 * share a store (one server per data directory, storage/lock.h) and the
 * same across restarts of one, so that a restarted node knows the devices
 * it left in progress as its own. A path too long for a name is replaced
 * by its hash. */
static void node_name(const capstan_serve_options_t *opt, char *out, size_t len) {
  if (opt->node_name != NULL && opt->node_name[0] != '\0') {
    snprintf(out, len, "%s", opt->node_name);
    return;
  }
  char host[64] = "localhost";
  gethostname(host, sizeof(host) - 1);
  host[sizeof(host) - 1] = '\0';
  char dir[PATH_MAX];
  if (realpath(opt->data_dir, dir) == NULL) snprintf(dir, sizeof(dir), "%s", opt->data_dir);
  int n = snprintf(out, len, "%s:%s", host, dir);
  if (n > 0 && (size_t)n < len) return;
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (const char *p = dir; *p != '\0'; p++) h = (h ^ (uint8_t)*p) * 1099511628211ull;
  snprintf(out, len, "%s:%016llx", host, (unsigned long long)h);
}

int capstan_serve_run(const capstan_serve_options_t *opt) {
  server_t srv = {.opt = opt};
  tune_process();
  int exit_code = 1;
  capstan_store_t *store = NULL;
  int rc = capstan_store_open_url(opt->data_dir, opt->store_url,
                                  opt->init ? CAPSTAN_STORE_CREATE : 0, &store);
  if (rc < 0) {
    LOG_ERROR("event=store_open_failed dir=%s error=%s", opt->data_dir, capstan_strerror(rc));
    goto out;
  }
  int created = 0;
  if (opt->init && capstan_init_identities(store, opt->subject, &created) < 0) goto out;
  if (created) LOG_INFO("event=initialised dir=%s identities=%d", opt->data_dir, created);
  rc = capstan_store_set_map(store, (size_t)opt->store_map_mib << 20,
                             (size_t)opt->store_max_mib << 20);
  if (rc < 0) {
    LOG_ERROR("event=store_map_failed map_mib=%u max_mib=%u error=%s", opt->store_map_mib,
              opt->store_max_mib, capstan_strerror(rc));
    goto out;
  }
  LOG_INFO("event=store_map map_bytes=%zu max_bytes=%zu", capstan_store_map_size(store),
           capstan_store_map_max(store));
  /* Named before the reconcile: on a shared store it fails only this
   * node's devices left in progress (and dead nodes'), not those of nodes
   * running now. */
  char node[CAPSTAN_NODE_NAME_MAX];
  node_name(opt, node, sizeof(node));
  if (capstan_store_node_start(store, node, "starting") < 0) goto out;
  LOG_INFO("event=node name=\"%s\" store=%s", node, capstan_store_backend(store));
  rc = reconcile_interrupted(store);
  if (rc < 0) goto out;
  /* Skipped (the map full): the runtime repair fails the devices left in
   * progress instead, as soon as a write succeeds. No failed batch would
   * queue it if the first writes fit, so it is owed from the start. */
  if (rc > 0) srv.repaired_failures = UINT64_MAX;
  uv_loop_t *loop = uv_default_loop();
  if (capstan_store_writer_start(store, loop) < 0) goto out;
  srv.settings_txnid = capstan_store_txnid(store);
  if (capstan_settings_load(store, &srv.settings) < 0) goto out_writer;
  srv.ctx =
      (capstan_serve_ctx_t){.loop = loop, .store = store, .opt = opt, .settings = &srv.settings};

  uv_signal_init(loop, &srv.sigterm);
  uv_signal_init(loop, &srv.sigint);
  uv_signal_init(loop, &srv.sighup);
  srv.sigterm.data = srv.sigint.data = srv.sighup.data = &srv;
  /* Handles first: a failed start drains through the same path. */
  uv_signal_start(&srv.sigterm, on_signal, SIGTERM);
  uv_signal_start(&srv.sigint, on_signal, SIGINT);
  uv_signal_start(&srv.sighup, on_signal, SIGHUP);
  if (capstan_descriptors_start(loop) < 0 || capstan_memory_shortage_start(loop) < 0)
    goto out_writer;
  uv_timer_init(loop, &srv.poll);
  srv.poll.data = &srv;
  uv_timer_start(&srv.poll, on_poll, SETTINGS_POLL_MS, SETTINGS_POLL_MS);
  if (start_rows(&srv) < 0) {
    stop_server(&srv);
    uv_run(loop, UV_RUN_DEFAULT);
    goto out_writer;
  }
  char detail[256];
  snprintf(detail, sizeof(detail), "capf_port=%d data_dir=%s",
           capstan_capf_server_port(srv.ctx.capf), opt->data_dir);
  capstan_store_node_start(store, node, detail);
  LOG_INFO("event=ready version=%s data_dir=%s capf=%s capf_port=%d pid=%d", CAPSTAN_VERSION,
           opt->data_dir, opt->capf_listen, capstan_capf_server_port(srv.ctx.capf), (int)getpid());
  uv_run(loop, UV_RUN_DEFAULT);
  exit_code = 0;
out_writer:
  capstan_store_writer_stop(store);
  uv_run(loop, UV_RUN_DEFAULT);
  uv_loop_close(loop);
out:
  capstan_store_close(store);
  LOG_INFO("event=exit code=%d", exit_code);
  return exit_code;
}
