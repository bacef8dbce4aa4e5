/* Fuzz target for the phone file service (core/files/service.c), the
 * source behind TFTP and HTTP: the input is the name a phone asks for. It
 * runs the name filter, the split of per-device names (ITL<dev>.tlv,
 * <dev>.cnf.xml[.sgn|.enc.sgn]), the device lookup in a real store, the
 * building and signing of ITL and configuration files on the thread pool,
 * the cache, and the static directory with its containment check. The
 * static directory holds a file, a subdirectory, and symbolic links that
 * lead out of it (to a file holding a marker, and to its parent): a name
 * may never get the marker's bytes, and every request is answered once. */
#define _GNU_SOURCE /* memmem */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "core/base/log.h"
#include "core/files/service.h"
#include "core/files/source.h"
#include "core/identities.h"
#include "core/settings.h"
#include "storage/records.h"
#include "storage/store.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MARKER "OUTSIDE-THE-FILES-DIRECTORY"

static uv_loop_t g_loop;
static capstan_store_t *g_store;
static capstan_files_service_t *g_svc;
static capstan_filesource_t *g_src;
static char g_dir[256];

static void write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  if (f == NULL || fputs(text, f) < 0 || fclose(f) != 0) abort();
}

static int put_device(capstan_txn_t *txn, void *arg) {
  (void)arg;
  Capstan__Device d = CAPSTAN__DEVICE__INIT;
  d.name = "SEP001122334455";
  d.has_encrypted_config = 1;
  d.encrypted_config = 0;
  if (capstan_store_device_put(txn, &d) != 0) return -1;
  Capstan__Device e = CAPSTAN__DEVICE__INIT;
  e.name = "SEPAABBCCDDEEFF";
  static uint8_t xml[] = "<device><x>1</x></device>";
  e.has_config_xml = 1;
  e.config_xml.data = xml;
  e.config_xml.len = sizeof(xml) - 1;
  return capstan_store_device_put(txn, &e);
}

static void cleanup(void) {
  if (g_svc != NULL) {
    capstan_files_service_free(g_svc);
    for (int i = 0; i < 1000 && uv_run(&g_loop, UV_RUN_NOWAIT) != 0; i++) usleep(1000);
  }
  if (g_store != NULL) capstan_store_close(g_store);
  char cmd[300];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_dir);
  if (g_dir[0] != '\0' && system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_dir);
}

static void init(void) {
  capstan_log_init();
  if (getenv("CAPSTAN_LOG_LEVEL") == NULL) capstan_log_set_level(CAPSTAN_LOG_ERROR);
  snprintf(g_dir, sizeof(g_dir), "/tmp/fuzz_files_service.XXXXXX");
  if (mkdtemp(g_dir) == NULL) abort();
  atexit(cleanup);
  char p[512], q[512];
  snprintf(p, sizeof(p), "%s/store", g_dir);
  if (capstan_store_open(p, CAPSTAN_STORE_CREATE, &g_store) != 0) abort();
  int created = 0;
  if (capstan_init_identities(g_store, NULL, &created) != 0) abort();
  if (capstan_store_write(g_store, put_device, NULL) != 0) abort();
  snprintf(p, sizeof(p), "%s/secret", g_dir);
  write_file(p, MARKER "\n");
  snprintf(p, sizeof(p), "%s/files", g_dir);
  if (mkdir(p, 0700) != 0) abort();
  snprintf(p, sizeof(p), "%s/files/sub", g_dir);
  if (mkdir(p, 0700) != 0) abort();
  snprintf(p, sizeof(p), "%s/files/a.txt", g_dir);
  write_file(p, "static file\n");
  snprintf(p, sizeof(p), "%s/files/sub/b.txt", g_dir);
  write_file(p, "in a subdirectory\n");
  snprintf(p, sizeof(p), "%s/files/escape", g_dir);
  snprintf(q, sizeof(q), "%s/secret", g_dir);
  if (symlink(q, p) != 0) abort();
  snprintf(p, sizeof(p), "%s/files/up", g_dir);
  if (symlink("..", p) != 0) abort();
  snprintf(p, sizeof(p), "%s/files/sub/inside", g_dir);
  if (symlink("../a.txt", p) != 0) abort();
  if (uv_loop_init(&g_loop) != 0) abort();
  capstan_settings_t settings;
  capstan_settings_defaults(&settings);
  snprintf(p, sizeof(p), "%s/files", g_dir);
  capstan_files_config_t cfg = {
      .static_dir = p, .default_capf_host = "capf.example.com", .capf_port = 3804};
  if (capstan_files_service_new(&g_loop, g_store, &cfg, &settings, &g_svc) != 0) abort();
  g_src = capstan_files_service_source(g_svc);
}

typedef struct {
  int calls;
  int status;
  size_t len;
  int marker;
} answer_t;

static void on_file(void *ctx, int status, capstan_blob_t *blob, capstan_file_kind_t kind) {
  answer_t *a = ctx;
  (void)kind;
  a->calls++;
  a->status = status;
  if (status == 0) {
    if (blob == NULL) abort();
    a->len = blob->len;
    if (blob->len >= strlen(MARKER) &&
        memmem(blob->data, blob->len, MARKER, strlen(MARKER)) != NULL)
      a->marker = 1;
    capstan_blob_unref(blob);
  } else if (blob != NULL) {
    abort();
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (g_src == NULL) init();
  char name[1024];
  if (size >= sizeof(name)) size = sizeof(name) - 1;
  memcpy(name, data, size);
  name[size] = '\0';
  answer_t a = {0};
  g_src->open(g_src, name, on_file, &a);
  for (int i = 0; i < 100000 && a.calls == 0; i++) uv_run(&g_loop, UV_RUN_ONCE);
  if (a.calls != 1) {
    fprintf(stderr, "fuzz_files_service: '%s' answered %d times\n", name, a.calls);
    abort();
  }
  if (a.marker) {
    fprintf(stderr, "fuzz_files_service: '%s' served a file outside the directory\n", name);
    abort();
  }
  return 0;
}
