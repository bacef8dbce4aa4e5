#include "core/files/service.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/base/error.h"
#include "core/base/phone.h"
#include "core/capf_lifecycle.h"
#include "core/descriptors.h"
#include "core/memory_shortage.h"
#include "core/files/cnfxml.h"
#include "core/files/encconf.h"
#include "core/files/itl.h"
#include "core/files/sgn.h"
#include "core/identities.h"
#include "core/base/log.h"
#include "core/base/metrics.h"
#include "core/pki/pki.h"
#include "storage/audit.h"
#include "storage/records.h"

#define CACHE_BUCKETS 16384
#define CACHE_MAX_ENTRIES 200000
#define NAME_MAX_LEN 255
#define STATIC_FILE_MAX (64u * 1024u * 1024u)
/* How many previous CAPF certificates an ITL lists at most (each
 * regenerate inside the trust window adds one; the lifecycle refuses a
 * ninth, so none is ever left out). */
#define ITL_MAX_PREVIOUS CAPSTAN_CAPF_MAX_PREVIOUS
/* First downloads since a change wait in memory and reach the audit log in
 * one write a second, or at once when this many are waiting. */
#define SERVED_FLUSH_MS 1000
#define SERVED_BATCH_MAX 4096

/* Identities used to sign and list (core/identities.h): a snapshot shared
 * read-only with workers; a build keeps the one it started with. */
typedef capstan_identities_t files_pki_t;

typedef struct waiter {
  capstan_file_cb cb;
  void *ctx;
  struct waiter *next;
} waiter_t;

typedef struct build_job build_job_t;

typedef struct cache_entry {
  char *name;
  capstan_file_kind_t kind;
  uint8_t key[SHA256_DIGEST_LENGTH]; /* digest of everything the file depends on */
  uint64_t txnid;                    /* store state the key was last checked against */
  capstan_blob_t *blob;              /* the built file, NULL until the first build */
  build_job_t *job;                  /* build in flight for |key|, if any */
  bool device_file;                  /* per-device: its first download is noted */
  bool noted;                        /* served since |key| or |device_version| changed */
  uint64_t device_version;           /* device_version() when last looked at */
  struct cache_entry *next;
} cache_entry_t;

/* A per-device file handed out for the first time since its content
 * changed, on its way to the audit log (capstan_audit_note_served). */
typedef struct served_note {
  int64_t at_ns;
  char device[CAPSTAN_DEVICE_NAME_MAX + 1];
  char file[CAPSTAN_DEVICE_NAME_MAX + 24]; /* ITL<name>.tlv, <name>.cnf.xml.enc.sgn */
} served_note_t;

typedef struct served_batch {
  capstan_store_t *store;
  size_t n;
  size_t appended; /* set by the write */
  served_note_t notes[];
} served_batch_t;

/* The flush timer lives apart from the service: its memory must outlive
 * the service until libuv's close callback. */
typedef struct served_timer {
  uv_timer_t timer;
  capstan_files_service_t *svc;
} served_timer_t;

typedef enum { BUILD_ITL, BUILD_SGN, BUILD_ENC, BUILD_READ_FILE } build_kind_t;

struct build_job {
  uv_work_t req;
  capstan_files_service_t *svc;
  cache_entry_t *entry; /* NULL once the entry was evicted */
  uint8_t key[SHA256_DIGEST_LENGTH];
  build_kind_t kind;
  capstan_file_kind_t file_kind;
  files_pki_t *pki;
  char name[NAME_MAX_LEN + 1];
  uint8_t *content;
  size_t content_len;
  EVP_PKEY *phone_key;
  int hash_alg;
  char *path;
  waiter_t *waiters;
  /* results */
  uint8_t *out;
  size_t out_len;
  int status;
  const char *why;
  double started;
};

struct capstan_files_service {
  capstan_filesource_t source;
  uv_loop_t *loop;
  capstan_store_t *store;
  files_pki_t *pki;
  char *static_dir; /* realpath, or NULL */
  char *default_host;
  uint16_t capf_port;
  char *capf_host; /* setting; NULL or "" = default */
  int sha512;
  cache_entry_t *buckets[CACHE_BUCKETS];
  size_t entries;
  unsigned jobs;
  int freeing;
  capstan_metric_t *builds[CAPSTAN_FILE_KIND_COUNT];
  capstan_metric_t *hits[CAPSTAN_FILE_KIND_COUNT];
  capstan_metric_t *stale; /* served from the cache while the store could not be read */
  capstan_metric_t *build_duration;
  capstan_metric_t *build_errors;
  capstan_metric_t *enc_ec, *enc_no_cert;
  served_batch_t *served; /* notes waiting for the next flush (up to SERVED_BATCH_MAX) */
  served_timer_t *served_timer;
  capstan_metric_t *served_recorded, *served_dropped;
};

/* --- Identities ----------------------------------------------------------- */

static files_pki_t *pki_ref(files_pki_t *p) {
  return capstan_identities_ref(p);
}

static void pki_unref(files_pki_t *p) {
  capstan_identities_unref(p);
}

static void cache_invalidate(capstan_files_service_t *svc);

int capstan_files_service_reload(capstan_files_service_t *svc) {
  files_pki_t *p = NULL;
  int rc =
      capstan_identities_load(svc->store, CAPSTAN_IDENTITIES_TFTP | CAPSTAN_IDENTITIES_CAPF, &p);
  if (rc < 0) {
    LOG_ERROR("event=files_identity_missing error=%s hint=\"run capstan init\"",
              capstan_strerror(rc));
    return rc;
  }
  pki_unref(svc->pki);
  svc->pki = p;
  cache_invalidate(svc);
  return 0;
}

/* --- Names ---------------------------------------------------------------- */

static int ends_with(const char *s, size_t n, const char *suffix) {
  size_t m = strlen(suffix);
  return n > m && memcmp(s + n - m, suffix, m) == 0;
}

/* Names phones ask for: printable ASCII, no backslash, no absolute path, no
 * empty, "." or ".." segment. Only static files may have '/'. */
static int name_acceptable(const char *name) {
  size_t n = strlen(name);
  if (n == 0 || n > NAME_MAX_LEN || name[0] == '/') return 0;
  const char *seg = name;
  for (const char *p = name;; p++) {
    if (*p == '/' || *p == '\0') {
      size_t len = (size_t)(p - seg);
      if (len == 0 || (len == 1 && seg[0] == '.') || (len == 2 && seg[0] == '.' && seg[1] == '.'))
        return 0;
      if (*p == '\0') break;
      seg = p + 1;
      continue;
    }
    if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f || *p == '\\') return 0;
  }
  return 1;
}

/* Splits a per-device name into the device and the kind; returns 0 when it
 * is not a per-device name. */
static int device_file(const char *name, char *device, size_t cap, capstan_file_kind_t *kind) {
  size_t n = strlen(name);
  size_t base = 0;
  if (strchr(name, '/') != NULL) return 0;
  if (strncmp(name, "ITL", 3) == 0 && ends_with(name, n, ".tlv")) {
    if (strcmp(name, "ITLFile.tlv") == 0) return 0;
    *kind = CAPSTAN_FILE_ITL;
    if (n - 7 >= cap) return 0;
    memcpy(device, name + 3, n - 7);
    device[n - 7] = '\0';
    return 1;
  }
  if (ends_with(name, n, ".cnf.xml.enc.sgn")) {
    *kind = CAPSTAN_FILE_CNF_ENC_SGN;
    base = n - strlen(".cnf.xml.enc.sgn");
  } else if (ends_with(name, n, ".cnf.xml.sgn")) {
    *kind = CAPSTAN_FILE_CNF_SGN;
    base = n - strlen(".cnf.xml.sgn");
  } else if (ends_with(name, n, ".cnf.xml")) {
    *kind = CAPSTAN_FILE_CNF;
    base = n - strlen(".cnf.xml");
  } else {
    return 0;
  }
  if (base == 0 || base >= cap) return 0;
  memcpy(device, name, base);
  device[base] = '\0';
  return 1;
}

/* --- Cache ---------------------------------------------------------------- */

static size_t bucket_of(const char *name) {
  uint64_t h = 1469598103934665603ull;
  for (const char *p = name; *p; p++) h = (h ^ (uint8_t)*p) * 1099511628211ull;
  return (size_t)(h % CACHE_BUCKETS);
}

static cache_entry_t *cache_find(capstan_files_service_t *svc, const char *name) {
  for (cache_entry_t *e = svc->buckets[bucket_of(name)]; e; e = e->next) {
    if (strcmp(e->name, name) == 0) return e;
  }
  return NULL;
}

static void entry_free(cache_entry_t *e) {
  if (e->job) e->job->entry = NULL;
  capstan_blob_unref(e->blob);
  free(e->name);
  free(e);
}

/* Keeps the cache bounded: drops every entry of one bucket run when full
 * (cheap, and a dropped file is only re-signed on its next request). */
static void cache_make_room(capstan_files_service_t *svc) {
  static size_t sweep;
  while (svc->entries >= CACHE_MAX_ENTRIES) {
    cache_entry_t **pp = &svc->buckets[sweep++ % CACHE_BUCKETS];
    while (*pp) {
      cache_entry_t *e = *pp;
      *pp = e->next;
      entry_free(e);
      svc->entries--;
    }
  }
}

static cache_entry_t *cache_get(capstan_files_service_t *svc, const char *name,
                                capstan_file_kind_t kind) {
  cache_entry_t *e = cache_find(svc, name);
  if (e) return e;
  cache_make_room(svc);
  e = calloc(1, sizeof(*e));
  if (e == NULL || (e->name = strdup(name)) == NULL) {
    free(e);
    return NULL;
  }
  e->kind = kind;
  size_t b = bucket_of(name);
  e->next = svc->buckets[b];
  svc->buckets[b] = e;
  svc->entries++;
  return e;
}

/* Makes every entry re-check its key on its next request. The fast path in
 * open_device_file trusts an entry whose txnid is the store's; settings and
 * identities are applied some time after the write that changed them, so a
 * request in between would otherwise pin the old file until the next write. */
static void cache_invalidate(capstan_files_service_t *svc) {
  for (size_t i = 0; i < CACHE_BUCKETS; i++) {
    for (cache_entry_t *e = svc->buckets[i]; e; e = e->next) e->txnid = UINT64_MAX;
  }
}

/* --- First download since a change ------------------------------------------
 * Phones download their files at every boot: thousands a second in a reset
 * storm. Only the first download of each file after its content changed is
 * worth a line in a device's history (the first encrypted configuration
 * after an LSC was installed), so the cache entry remembers whether its
 * current content was handed out, and those first downloads are written in
 * batches, off the loop, by the storage writer. The writer skips a file the
 * device's history already shows as served since the device last changed,
 * so a restart (an empty cache) adds nothing new. */

static int served_write(capstan_txn_t *txn, void *arg) {
  served_batch_t *b = arg;
  b->appended = 0;
  for (size_t i = 0; i < b->n; i++) {
    bool appended = false;
    int rc = capstan_audit_note_served(txn, b->notes[i].at_ns, b->notes[i].device, b->notes[i].file,
                                       &appended);
    if (rc == CAPSTAN_EINVAL) continue; /* not a name the store keys: skip it */
    if (rc < 0) return rc;
    b->appended += appended;
  }
  return 0;
}

static void served_done(void *arg, int status) {
  served_batch_t *b = arg;
  /* During a storage outage the writer has said so once. */
  if (status < 0) {
    capstan_log(capstan_store_available(b->store) ? CAPSTAN_LOG_WARN : CAPSTAN_LOG_DEBUG,
                "event=files_served_not_recorded files=%zu error=%s", b->n,
                capstan_strerror(status));
  }
  free(b);
}

/* Hands the waiting notes to the storage writer. */
static void served_flush(capstan_files_service_t *svc) {
  served_batch_t *b = svc->served;
  if (b == NULL || b->n == 0) return;
  svc->served = NULL;
  if (capstan_store_submit(svc->store, served_write, b, served_done) < 0) {
    /* No writer (a service without a server): nothing to record into. */
    capstan_metric_add(svc->served_dropped, (double)b->n);
    free(b);
    return;
  }
  capstan_metric_add(svc->served_recorded, (double)b->n);
}

static void served_tick(uv_timer_t *t) {
  served_timer_t *st = t->data;
  served_flush(st->svc);
}

static void served_timer_closed(uv_handle_t *h) {
  free(h->data);
}

/* A digest of what changes when the device record does: a download after
 * a change of the device is noted even when the file itself is the same
 * (the ITL), so the history shows it as the storage rule counts it. */
static uint64_t device_version(const Capstan__Device *d) {
  uint64_t h = 1469598103934665603ull;
#define MIX(v)                                  \
  do {                                          \
    uint64_t v_ = (uint64_t)(v);                \
    for (int i_ = 0; i_ < 8; i_++, v_ >>= 8) {  \
      h = (h ^ (v_ & 0xff)) * 1099511628211ull; \
    }                                           \
  } while (0)
  MIX(d->updated_at);
  MIX(d->status_changed_at);
  MIX(d->status);
  MIX(d->operation);
  MIX(d->attempts);
  MIX(d->cert_seen_at);
  MIX(d->n_cert_history);
  MIX(d->encrypted_config);
  MIX(d->config_xml.len);
  for (const char *p = d->md5hash ? d->md5hash : ""; *p; p++) MIX(*p);
  for (const char *p = d->template_name ? d->template_name : ""; *p; p++) MIX(*p);
#undef MIX
  return h;
}

/* Called for every download of |e| that succeeded: notes the first one
 * since its content or its device changed. */
static void note_served(capstan_files_service_t *svc, cache_entry_t *e) {
  if (e == NULL || !e->device_file || e->noted || svc->freeing) return;
  e->noted = true;
  capstan_file_kind_t kind;
  served_note_t note = {0};
  if (strlen(e->name) >= sizeof(note.file) ||
      !device_file(e->name, note.device, sizeof(note.device), &kind)) {
    return;
  }
  if (svc->served == NULL) {
    svc->served = malloc(sizeof(served_batch_t) + SERVED_BATCH_MAX * sizeof(served_note_t));
    if (svc->served == NULL) {
      capstan_metric_inc(svc->served_dropped);
      return;
    }
    svc->served->n = 0;
    svc->served->store = svc->store;
  }
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  note.at_ns = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
  memcpy(note.file, e->name, strlen(e->name) + 1);
  svc->served->notes[svc->served->n++] = note;
  if (svc->served->n == SERVED_BATCH_MAX) served_flush(svc);
}

/* --- Building on the workers ---------------------------------------------- */

static void job_free(build_job_t *j) {
  pki_unref(j->pki);
  free(j->content);
  free(j->out);
  free(j->path);
  EVP_PKEY_free(j->phone_key);
  free(j);
}

static void build_run(uv_work_t *req) {
  build_job_t *j = req->data;
  files_pki_t *p = j->pki;
  uint32_t now = (uint32_t)time(NULL);
  switch (j->kind) {
    case BUILD_ITL: {
      /* The TFTP signer, the live CAPF and every previous CAPF still
       * trusted (roll-over: phones holding LSCs from it keep trusting the
       * server until they enroll again). */
      capstan_itl_entry_t entries[2 + ITL_MAX_PREVIOUS];
      size_t n = 0;
      entries[n++] = (capstan_itl_entry_t){.cert = p->tftp.cert, .role = CAPSTAN_ITL_ROLE_TFTP};
      entries[n++] = (capstan_itl_entry_t){.cert = p->capf.cert, .role = CAPSTAN_ITL_ROLE_CAPF};
      size_t previous = sk_X509_num(p->capf_previous);
      /* Newest first when there are more than fit. */
      for (size_t i = previous; i > 0 && n < sizeof(entries) / sizeof(entries[0]); i--) {
        entries[n++] = (capstan_itl_entry_t){.cert = sk_X509_value(p->capf_previous, i - 1),
                                             .role = CAPSTAN_ITL_ROLE_CAPF};
      }
      capstan_itl_params_t params = {
          .signer_cert = p->tftp.cert,
          .entries = entries,
          .n_entries = n,
          .filename = j->name,
          .hash_alg = j->hash_alg,
          .signer_version_minor = 0,
          .timestamp = now,
      };
      j->status = capstan_itl_build(&params, p->tftp.key, &j->out, &j->out_len, &j->why);
      break;
    }
    case BUILD_SGN: {
      /* FILENAME is "<name>.sgn" where <name> is the unsigned file. */
      char unsigned_name[NAME_MAX_LEN + 1];
      size_t n = strlen(j->name) - 4;
      memcpy(unsigned_name, j->name, n);
      unsigned_name[n] = '\0';
      j->status =
          capstan_sgnfile_build(unsigned_name, j->content, j->content_len, p->tftp.cert,
                                p->tftp.key, j->hash_alg, now, &j->out, &j->out_len, &j->why);
      break;
    }
    case BUILD_ENC: {
      capstan_encconf_params_t params = {
          .signer_cert = p->tftp.cert,
          .phone_pub = j->phone_key,
          .filename = j->name,
          .config = j->content,
          .config_len = j->content_len,
          .enc_hash_alg = j->hash_alg,
          .sign_hash_alg = j->hash_alg,
          .timestamp = now,
      };
      j->status = capstan_encconf_build(&params, p->tftp.key, &j->out, &j->out_len, &j->why);
      break;
    }
    case BUILD_READ_FILE: {
      int fd = open(j->path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
      struct stat st;
      if (fd < 0) {
        /* Out of descriptors is the machine's fault, not a missing file. */
        j->status = errno == EMFILE || errno == ENFILE ? -errno : CAPSTAN_ENOENT;
        break;
      }
      j->status = CAPSTAN_ENOENT;
      if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size <= STATIC_FILE_MAX) {
        j->out = malloc(st.st_size ? (size_t)st.st_size : 1);
        size_t got = 0;
        while (j->out && got < (size_t)st.st_size) {
          ssize_t r = read(fd, j->out + got, (size_t)st.st_size - got);
          if (r <= 0) break;
          got += (size_t)r;
        }
        j->out_len = got;
        j->status = j->out == NULL ? CAPSTAN_ENOMEM : got == (size_t)st.st_size ? 0 : CAPSTAN_EIO;
      }
      close(fd);
      break;
    }
  }
}

static void notify(waiter_t *w, int status, capstan_blob_t *blob, capstan_file_kind_t kind) {
  while (w) {
    waiter_t *next = w->next;
    w->cb(w->ctx, status, status == 0 ? capstan_blob_ref(blob) : NULL, kind);
    free(w);
    w = next;
  }
}

/* What a waiter hears of a build's outcome |rc|: the file, no such file,
 * try later (the machine is short of memory or descriptors), or an error. */
static int waiter_status(int rc) {
  if (rc == 0 || rc == CAPSTAN_ENOENT) return rc;
  if (rc == CAPSTAN_ENOMEM || capstan_descriptors_is_exhaustion(rc)) return CAPSTAN_EBUSY;
  return CAPSTAN_EIO;
}

static void build_done(uv_work_t *req, int status) {
  build_job_t *j = req->data;
  capstan_files_service_t *svc = j->svc;
  capstan_blob_t *blob = NULL;
  int rc = status < 0 ? CAPSTAN_EIO : j->status;
  if (rc == 0) {
    blob = capstan_blob_new(j->out, j->out_len);
    if (blob == NULL) rc = CAPSTAN_ENOMEM;
  }
  capstan_metric_observe(svc->build_duration, capstan_now_seconds() - j->started);
  if (rc < 0) {
    capstan_metric_inc(svc->build_errors);
    /* Running out of descriptors or memory is logged once, as a condition. */
    if (rc == CAPSTAN_ENOMEM)
      capstan_memory_shortage_note("files");
    else if (!capstan_descriptors_note(rc, "files"))
      LOG_ERROR("event=file_build_failed file=%s error=%s why=\"%s\"", j->name,
                capstan_strerror(rc), j->why ? j->why : "-");
  } else {
    capstan_metric_inc(svc->builds[j->file_kind]);
  }
  cache_entry_t *e = j->entry;
  if (e != NULL) {
    e->job = NULL;
    if (rc == 0 && memcmp(e->key, j->key, sizeof(j->key)) == 0) {
      capstan_blob_unref(e->blob);
      e->blob = capstan_blob_ref(blob);
      if (j->waiters != NULL) note_served(svc, e);
    }
  }
  notify(j->waiters, waiter_status(rc), blob, j->file_kind);
  capstan_blob_unref(blob);
  job_free(j);
  svc->jobs--;
  if (svc->freeing && svc->jobs == 0) capstan_files_service_free(svc);
}

/* Serves |e| when its key matches, joins a build in flight for the same key,
 * or starts one from |j| (which the call then owns). |txnid|: the store's
 * change count read before what |j| was made from, so that a change
 * committed meanwhile makes the next request check again. */
static void serve_or_build(capstan_files_service_t *svc, cache_entry_t *e, build_job_t *j,
                           capstan_file_cb cb, void *ctx, uint64_t txnid) {
  if (e->blob != NULL && memcmp(e->key, j->key, sizeof(j->key)) == 0) {
    e->txnid = txnid;
    capstan_metric_inc(svc->hits[e->kind]);
    job_free(j);
    note_served(svc, e);
    cb(ctx, 0, capstan_blob_ref(e->blob), e->kind);
    return;
  }
  waiter_t *w = malloc(sizeof(*w));
  if (w == NULL) {
    job_free(j);
    cb(ctx, CAPSTAN_ENOMEM, NULL, e->kind);
    return;
  }
  w->cb = cb;
  w->ctx = ctx;
  if (e->job != NULL && memcmp(e->job->key, j->key, sizeof(j->key)) == 0) {
    w->next = e->job->waiters;
    e->job->waiters = w;
    job_free(j);
    return;
  }
  w->next = NULL;
  j->waiters = w;
  j->svc = svc;
  j->entry = e;
  j->file_kind = e->kind;
  j->pki = pki_ref(svc->pki);
  j->started = capstan_now_seconds();
  j->req.data = j;
  snprintf(j->name, sizeof(j->name), "%s", e->name);
  if (memcmp(e->key, j->key, sizeof(j->key)) != 0) e->noted = false; /* new content */
  memcpy(e->key, j->key, sizeof(j->key));
  e->txnid = txnid;
  if (e->job) e->job->entry = NULL; /* an older build no longer updates the entry */
  e->job = j;
  svc->jobs++;
  if (uv_queue_work(svc->loop, &j->req, build_run, build_done) < 0) {
    svc->jobs--;
    e->job = NULL;
    j->waiters = NULL;
    job_free(j);
    notify(w, CAPSTAN_EIO, NULL, e->kind);
  }
}

/* --- Per-device content --------------------------------------------------- */

typedef struct device_view {
  Capstan__Device *device;
  Capstan__Template *tmpl;
} device_view_t;

static int read_device(capstan_txn_t *txn, void *arg) {
  device_view_t *v = arg;
  int rc = capstan_store_device_get(txn, v->device->name, &v->device);
  if (rc < 0) {
    v->device = NULL;
    return rc;
  }
  if (v->device->template_name && v->device->template_name[0] && (v->device->config_xml.len == 0)) {
    capstan_store_template_get(txn, v->device->template_name, &v->tmpl);
  }
  return 0;
}

static int load_device(capstan_files_service_t *svc, const char *name, device_view_t *v) {
  Capstan__Device probe = CAPSTAN__DEVICE__INIT;
  probe.name = (char *)name;
  v->device = &probe;
  v->tmpl = NULL;
  int rc = capstan_store_read(svc->store, read_device, v);
  if (rc < 0 && v->device == &probe) v->device = NULL;
  return rc;
}

static void free_view(device_view_t *v) {
  if (v->device) capstan__device__free_unpacked(v->device, NULL);
  if (v->tmpl) capstan__template__free_unpacked(v->tmpl, NULL);
}

/* The completed configuration for |d|; *out malloc'd. */
static int complete_config(capstan_files_service_t *svc, const device_view_t *v, uint8_t **out,
                           size_t *out_len) {
  const Capstan__Device *d = v->device;
  const uint8_t *base;
  size_t base_len;
  if (d->config_xml.len > 0) {
    base = d->config_xml.data;
    base_len = d->config_xml.len;
  } else if (v->tmpl != NULL) {
    base = v->tmpl->config_xml.data;
    base_len = v->tmpl->config_xml.len;
  } else {
    base = (const uint8_t *)capstan_cnfxml_default_base(&base_len);
  }
  capstan_cnfxml_params_t params = {
      .auth_mode = d->operation == CAPSTAN__OPERATION__OPERATION_NONE ? CAPSTAN_AUTH_MODE_NONE
                                                                      : (int)d->auth_mode,
      .capf_host = svc->capf_host && svc->capf_host[0] ? svc->capf_host : svc->default_host,
      .capf_port = svc->capf_port,
      .cert_hash = d->md5hash && strlen(d->md5hash) == 32 ? d->md5hash : NULL,
      .encr_config = d->encrypted_config,
  };
  char err[160];
  int rc = capstan_cnfxml_complete(base, base_len, &params, out, out_len, err, sizeof(err));
  if (rc < 0) LOG_ERROR("event=config_complete_failed device=%s error=\"%s\"", d->name, err);
  return rc;
}

static void key_of(build_job_t *j, const char *tag, const uint8_t *a, size_t alen, const uint8_t *b,
                   size_t blen, const files_pki_t *p) {
  SHA256_CTX ctx;
  SHA256_Init(&ctx);
  SHA256_Update(&ctx, tag, strlen(tag) + 1);
  SHA256_Update(&ctx, &j->hash_alg, sizeof(j->hash_alg));
  SHA256_Update(&ctx, &p, sizeof(p)); /* a new identity snapshot means new files */
  if (a) SHA256_Update(&ctx, a, alen);
  if (b) SHA256_Update(&ctx, b, blen);
  SHA256_Final(j->key, &ctx);
}

static void open_static(capstan_files_service_t *svc, const char *name, capstan_file_cb cb,
                        void *ctx);

/* The file |name| of |device| from its record |v| as read (|rc|): built,
 * served from the cache, or the static directory's. */
static void device_file_read(capstan_files_service_t *svc, const char *name, const char *device,
                             capstan_file_kind_t kind, capstan_file_cb cb, void *ctx, int rc,
                             device_view_t v, uint64_t txnid) {
  cache_entry_t *e = cache_find(svc, name);
  if (rc < 0) {
    free_view(&v);
    /* Not a device: a file of that name may still be in the static
     * directory (operators keep hand-made configurations there). */
    if (rc == CAPSTAN_ENOENT) {
      open_static(svc, name, cb, ctx);
    } else if (e != NULL && e->blob != NULL) {
      /* The store cannot be read (a shared database unreachable): the
       * phone gets what this node last served it, and the metric says
       * how often that happened. */
      capstan_metric_inc(svc->stale);
      cb(ctx, 0, capstan_blob_ref(e->blob), kind);
    } else {
      cb(ctx, CAPSTAN_EIO, NULL, kind);
    }
    return;
  }
  build_job_t *j = calloc(1, sizeof(*j));
  if (j == NULL) goto nomem;
  j->hash_alg = svc->sha512 ? CAPSTAN_SGN_HASH_SHA512 : CAPSTAN_SGN_HASH_SHA1;
  const Capstan__Device *d = v.device;
  if (kind == CAPSTAN_FILE_ITL) {
    j->kind = BUILD_ITL;
    key_of(j, "itl", NULL, 0, NULL, 0, svc->pki);
  } else {
    uint8_t *full = NULL;
    size_t full_len = 0;
    rc = complete_config(svc, &v, &full, &full_len);
    if (rc < 0) {
      free(j);
      free_view(&v);
      cb(ctx, CAPSTAN_EIO, NULL, kind);
      return;
    }
    if (kind == CAPSTAN_FILE_CNF) {
      /* The plain configuration is never served to an encrypted device. */
      free(j);
      if (d->encrypted_config) {
        LOG_INFO("event=file_denied file=%s reason=\"device has encrypted configuration\"", name);
        free(full);
        free_view(&v);
        cb(ctx, CAPSTAN_EACCES, NULL, kind);
        return;
      }
      capstan_blob_t *blob = capstan_blob_new(full, full_len);
      free(full);
      free_view(&v);
      cb(ctx, blob ? 0 : CAPSTAN_ENOMEM, blob, kind);
      return;
    }
    if (kind == CAPSTAN_FILE_CNF_SGN) {
      j->kind = BUILD_SGN;
      if (d->encrypted_config) {
        uint8_t *partial = NULL;
        size_t partial_len = 0;
        /* The hash tells the phone its certificate is on record and its
         * encrypted file is ready. While it is not (no certificate, or an
         * EC one the file cannot be encrypted for), the hash stays empty. */
        const char *why = capstan_encconf_unavailable_reason(d->encrypted_config,
                                                             d->public_key.data, d->public_key.len);
        if (why != NULL) {
          LOG_INFO("event=enc_config_unavailable device=%s reason=\"%s\"", device, why);
        }
        const char *hash =
            why == NULL && d->md5hash && strlen(d->md5hash) == 32 ? d->md5hash : NULL;
        rc = capstan_cnfxml_partial(full, full_len, hash, &partial, &partial_len, NULL, 0);
        free(full);
        if (rc < 0) goto fail_io;
        full = partial;
        full_len = partial_len;
      }
      j->content = full;
      j->content_len = full_len;
      key_of(j, "sgn", full, full_len, NULL, 0, svc->pki);
    } else { /* CNF_ENC_SGN */
      const char *why = capstan_encconf_unavailable_reason(d->encrypted_config, d->public_key.data,
                                                           d->public_key.len);
      if (!d->encrypted_config || why != NULL) {
        free(full);
        if (d->encrypted_config) {
          capstan_metric_inc(d->public_key.len ? svc->enc_ec : svc->enc_no_cert);
          LOG_INFO("event=enc_config_unavailable device=%s reason=\"%s\"", device, why);
        }
        free(j);
        free_view(&v);
        cb(ctx, CAPSTAN_ENOENT, NULL, kind);
        return;
      }
      const uint8_t *p = d->public_key.data;
      j->phone_key = d2i_PUBKEY(NULL, &p, (long)d->public_key.len);
      j->kind = BUILD_ENC;
      j->content = full;
      j->content_len = full_len;
      /* Encryption is randomised: the key covers what the phone decrypts. */
      key_of(j, "enc", full, full_len, d->public_key.data, d->public_key.len, svc->pki);
    }
  }
  uint64_t version = device_version(v.device);
  free_view(&v);
  e = cache_get(svc, name, kind);
  if (e == NULL) {
    job_free(j);
    cb(ctx, CAPSTAN_ENOMEM, NULL, kind);
    return;
  }
  e->device_file = true;
  if (e->device_version != version) {
    e->device_version = version;
    e->noted = false;
  }
  serve_or_build(svc, e, j, cb, ctx, txnid);
  return;
fail_io:
  job_free(j);
  free_view(&v);
  cb(ctx, CAPSTAN_EIO, NULL, kind);
  return;
nomem:
  free_view(&v);
  cb(ctx, CAPSTAN_ENOMEM, NULL, kind);
}

/* A device read on a reader thread (a shared database): the request waits
 * for it as for a signature, and counts as a job of the service. */
typedef struct device_read {
  capstan_files_service_t *svc;
  char *name, *device;
  capstan_file_kind_t kind;
  capstan_file_cb cb;
  void *ctx;
  uint64_t txnid;        /* the store's change count before the read */
  Capstan__Device probe; /* names the device until the read replaces it */
  device_view_t v;
} device_read_t;

static int read_device_of(capstan_txn_t *txn, void *arg) {
  return read_device(txn, &((device_read_t *)arg)->v);
}

static void device_read_done(void *arg, int status) {
  device_read_t *r = arg;
  capstan_files_service_t *svc = r->svc;
  if (status < 0 && r->v.device == &r->probe) r->v.device = NULL;
  device_file_read(svc, r->name, r->device, r->kind, r->cb, r->ctx, status, r->v, r->txnid);
  free(r->name);
  free(r->device);
  free(r);
  svc->jobs--;
  if (svc->freeing && svc->jobs == 0) capstan_files_service_free(svc);
}

/* Reads the device off the loop: 0, or an error (nothing started). */
static int read_device_later(capstan_files_service_t *svc, const char *name, const char *device,
                             capstan_file_kind_t kind, capstan_file_cb cb, void *ctx) {
  device_read_t *r = calloc(1, sizeof(*r));
  if (r == NULL) return CAPSTAN_ENOMEM;
  *r = (device_read_t){
      .svc = svc, .kind = kind, .cb = cb, .ctx = ctx, .txnid = capstan_store_txnid(svc->store)};
  r->name = strdup(name);
  r->device = strdup(device);
  capstan__device__init(&r->probe);
  r->probe.name = r->device;
  r->v.device = &r->probe;
  int rc = r->name != NULL && r->device != NULL ? 0 : CAPSTAN_ENOMEM;
  if (rc == 0) rc = capstan_store_read_async(svc->store, read_device_of, r, device_read_done);
  if (rc < 0) {
    free(r->name);
    free(r->device);
    free(r);
    return rc;
  }
  svc->jobs++;
  return 0;
}

static void open_device_file(capstan_files_service_t *svc, const char *name, const char *device,
                             capstan_file_kind_t kind, capstan_file_cb cb, void *ctx) {
  cache_entry_t *e = cache_find(svc, name);
  /* Nothing changed in the store since the key was checked: serve. */
  if (e && e->blob && e->job == NULL && e->txnid == capstan_store_txnid(svc->store)) {
    capstan_metric_inc(svc->hits[kind]);
    note_served(svc, e);
    cb(ctx, 0, capstan_blob_ref(e->blob), kind);
    return;
  }
  /* On a shared database a read is a round trip: not on the loop. */
  if (capstan_store_reads_wait(svc->store) &&
      read_device_later(svc, name, device, kind, cb, ctx) == 0) {
    return;
  }
  uint64_t txnid = capstan_store_txnid(svc->store);
  device_view_t v;
  int rc = load_device(svc, device, &v);
  device_file_read(svc, name, device, kind, cb, ctx, rc, v, txnid);
}

static void open_cluster_itl(capstan_files_service_t *svc, const char *name, capstan_file_cb cb,
                             void *ctx) {
  build_job_t *j = calloc(1, sizeof(*j));
  cache_entry_t *e = cache_get(svc, name, CAPSTAN_FILE_ITL);
  if (j == NULL || e == NULL) {
    free(j);
    cb(ctx, CAPSTAN_ENOMEM, NULL, CAPSTAN_FILE_ITL);
    return;
  }
  e->device_file = false;
  j->kind = BUILD_ITL;
  j->hash_alg = svc->sha512 ? CAPSTAN_SGN_HASH_SHA512 : CAPSTAN_SGN_HASH_SHA1;
  key_of(j, "itl", NULL, 0, NULL, 0, svc->pki);
  serve_or_build(svc, e, j, cb, ctx, capstan_store_txnid(svc->store));
}

/* Static files: the resolved path must stay inside the directory. */
static void open_static(capstan_files_service_t *svc, const char *name, capstan_file_cb cb,
                        void *ctx) {
  char path[PATH_MAX], real[PATH_MAX];
  if (svc->static_dir == NULL ||
      snprintf(path, sizeof(path), "%s/%s", svc->static_dir, name) >= (int)sizeof(path) ||
      realpath(path, real) == NULL) {
    cb(ctx, CAPSTAN_ENOENT, NULL, CAPSTAN_FILE_OTHER);
    return;
  }
  size_t dl = strlen(svc->static_dir);
  if (strncmp(real, svc->static_dir, dl) != 0 || real[dl] != '/') {
    LOG_WARN("event=file_denied file=%s reason=\"resolves outside the files directory\"", name);
    cb(ctx, CAPSTAN_EACCES, NULL, CAPSTAN_FILE_STATIC);
    return;
  }
  struct stat st;
  if (stat(real, &st) < 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size > STATIC_FILE_MAX) {
    cb(ctx, CAPSTAN_ENOENT, NULL, CAPSTAN_FILE_STATIC);
    return;
  }
  build_job_t *j = calloc(1, sizeof(*j));
  cache_entry_t *e = cache_get(svc, name, CAPSTAN_FILE_STATIC);
  if (j == NULL || e == NULL || (j->path = strdup(real)) == NULL) {
    free(j);
    cb(ctx, CAPSTAN_ENOMEM, NULL, CAPSTAN_FILE_STATIC);
    return;
  }
  e->device_file = false;
  j->kind = BUILD_READ_FILE;
  struct {
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
  } id = {st.st_dev, st.st_ino, st.st_size, st.st_mtim};
  key_of(j, "static", (const uint8_t *)&id, sizeof(id), NULL, 0, NULL);
  serve_or_build(svc, e, j, cb, ctx, capstan_store_txnid(svc->store));
}

static void source_open(capstan_filesource_t *src, const char *name, capstan_file_cb cb,
                        void *ctx) {
  capstan_files_service_t *svc = src->impl;
  if (!name_acceptable(name)) {
    LOG_INFO("event=file_denied reason=\"name refused\"");
    cb(ctx, CAPSTAN_EACCES, NULL, capstan_file_kind_of(name));
    return;
  }
  char device[NAME_MAX_LEN + 1];
  capstan_file_kind_t kind;
  if (strcmp(name, "ITLFile.tlv") == 0) {
    open_cluster_itl(svc, name, cb, ctx);
  } else if (device_file(name, device, sizeof(device), &kind)) {
    open_device_file(svc, name, device, kind, cb, ctx);
  } else {
    open_static(svc, name, cb, ctx);
  }
}

/* --- Life cycle ----------------------------------------------------------- */

void capstan_files_service_apply_settings(capstan_files_service_t *svc,
                                          const capstan_settings_t *s) {
  const char *old_host = svc->capf_host ? svc->capf_host : "";
  const char *new_host = s->capf_host;
  /* Called on every store change: walk the cache only when a setting the
   * files depend on changed. */
  int changed = strcmp(old_host, new_host) != 0 || svc->sha512 != (int)s->enc_config_sha512;
  free(svc->capf_host);
  svc->capf_host = s->capf_host[0] != '\0' ? strdup(s->capf_host) : NULL;
  svc->sha512 = s->enc_config_sha512;
  if (changed) cache_invalidate(svc);
}

int capstan_files_service_new(uv_loop_t *loop, capstan_store_t *store,
                              const capstan_files_config_t *cfg, const capstan_settings_t *settings,
                              capstan_files_service_t **out) {
  capstan_files_service_t *svc = calloc(1, sizeof(*svc));
  if (svc == NULL) return CAPSTAN_ENOMEM;
  svc->loop = loop;
  svc->store = store;
  svc->source.open = source_open;
  svc->source.impl = svc;
  svc->capf_port = cfg->capf_port;
  svc->default_host = strdup(cfg->default_capf_host ? cfg->default_capf_host : "capstan");
  if (cfg->static_dir != NULL) {
    char real[PATH_MAX];
    if (realpath(cfg->static_dir, real) == NULL) {
      LOG_ERROR("event=files_dir_missing dir=%s", cfg->static_dir);
      capstan_files_service_free(svc);
      return CAPSTAN_ENOENT;
    }
    svc->static_dir = strdup(real);
  }
  capstan_files_service_apply_settings(svc, settings);
  int rc = capstan_files_service_reload(svc);
  if (rc < 0) {
    capstan_files_service_free(svc);
    return rc;
  }
  char labels[64];
  for (int k = 0; k < CAPSTAN_FILE_KIND_COUNT; k++) {
    snprintf(labels, sizeof(labels), "kind=\"%s\"", capstan_file_kind_name(k));
    svc->builds[k] = capstan_metrics_counter(
        "capstan_files_builds_total", "Phone files produced (signed, encrypted or read)", labels);
    svc->hits[k] = capstan_metrics_counter("capstan_files_cache_hits_total",
                                           "Phone file requests served from the cache", labels);
  }
  svc->stale = capstan_metrics_counter(
      "capstan_files_served_stale_total",
      "Phone files served from this node's cache because the store could not be read (a shared "
      "database unreachable)",
      NULL);
  svc->build_duration = capstan_metrics_histogram("capstan_files_build_duration_seconds",
                                                  "Time to produce a phone file on a worker", NULL,
                                                  capstan_buckets_fast, capstan_buckets_fast_n);
  svc->build_errors = capstan_metrics_counter("capstan_files_build_errors_total",
                                              "Phone files that could not be produced", NULL);
  svc->enc_ec = capstan_metrics_counter("capstan_files_enc_config_unavailable_total",
                                        "Encrypted configuration requests that cannot be served",
                                        "reason=\"key_not_rsa\"");
  svc->enc_no_cert = capstan_metrics_counter(
      "capstan_files_enc_config_unavailable_total",
      "Encrypted configuration requests that cannot be served", "reason=\"no_certificate\"");
  svc->served_recorded = capstan_metrics_counter(
      "capstan_files_first_served_total",
      "First downloads of a per-device file since it changed, sent to the audit log", NULL);
  svc->served_dropped = capstan_metrics_counter(
      "capstan_files_first_served_dropped_total",
      "First downloads of a per-device file that could not be sent to the audit log", NULL);
  svc->served_timer = calloc(1, sizeof(*svc->served_timer));
  if (svc->served_timer == NULL) {
    capstan_files_service_free(svc);
    return CAPSTAN_ENOMEM;
  }
  svc->served_timer->svc = svc;
  svc->served_timer->timer.data = svc->served_timer;
  uv_timer_init(loop, &svc->served_timer->timer);
  uv_timer_start(&svc->served_timer->timer, served_tick, SERVED_FLUSH_MS, SERVED_FLUSH_MS);
  /* The timer alone does not keep the loop running. */
  uv_unref((uv_handle_t *)&svc->served_timer->timer);
  *out = svc;
  return 0;
}

capstan_filesource_t *capstan_files_service_source(capstan_files_service_t *svc) {
  return &svc->source;
}

void capstan_files_service_free(capstan_files_service_t *svc) {
  if (svc == NULL) return;
  if (!svc->freeing) {
    /* What was served so far still reaches the audit log (the writer stops
     * after the listeners). */
    served_flush(svc);
    if (svc->served_timer != NULL) {
      uv_close((uv_handle_t *)&svc->served_timer->timer, served_timer_closed);
      svc->served_timer = NULL;
    }
  }
  svc->freeing = 1;
  if (svc->jobs > 0) return; /* the last build or device read to end finishes the job */
  for (size_t i = 0; i < CACHE_BUCKETS; i++) {
    cache_entry_t *e = svc->buckets[i];
    while (e) {
      cache_entry_t *next = e->next;
      entry_free(e);
      e = next;
    }
  }
  free(svc->served);
  pki_unref(svc->pki);
  free(svc->static_dir);
  free(svc->default_host);
  free(svc->capf_host);
  free(svc);
}
