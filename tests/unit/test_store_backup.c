/* Backup and restore of the store (storage/store.h): a copy taken while a
 * write transaction is open elsewhere holds the last commit; the file is
 * 0600, opens read-only as a store, and installs as a directory's store;
 * anything else is refused as not a store. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <fcntl.h>
#include <sys/stat.h>

#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/base/error.h"
#include "core/ca/requests.h"
#include "storage/devices.h"
#include "storage/records.h"
#include "storage/store.h"
#include "store_test_util.h"

static void put_device(capstan_store_t *s, const char *name) {
  capstan_txn_t txn;
  assert_int_equal(capstan_store_begin(s, true, &txn), 0);
  Capstan__Device *d = capstan_device_new(name);
  assert_non_null(d);
  assert_int_equal(capstan_store_device_put(&txn, d), 0);
  capstan__device__free_unpacked(d, NULL);
  assert_int_equal(capstan_store_commit(&txn), 0);
}

static int has_device(capstan_store_t *s, const char *name) {
  capstan_txn_t txn;
  assert_int_equal(capstan_store_begin(s, false, &txn), 0);
  Capstan__Device *d = NULL;
  int rc = capstan_store_device_get(&txn, name, &d);
  capstan__device__free_unpacked(d, NULL);
  capstan_store_abort(&txn);
  return rc == 0;
}

static void test_backup_open_install(void **state) {
  (void)state;
  char *root = test_tmpdir();
  char data[600], file[700], target[600];
  snprintf(data, sizeof(data), "%s/data", root);
  snprintf(file, sizeof(file), "%s/backup.mdb", root);
  snprintf(target, sizeof(target), "%s/target", root);
  capstan_store_t *s = NULL;
  assert_int_equal(capstan_store_open(data, CAPSTAN_STORE_CREATE, &s), 0);
  put_device(s, "SEP000000000001");

  /* A write in flight (uncommitted) is not in the copy; the commit is. */
  capstan_txn_t w;
  assert_int_equal(capstan_store_begin(s, true, &w), 0);
  Capstan__Device *d = capstan_device_new("SEP000000000002");
  assert_int_equal(capstan_store_device_put(&w, d), 0);
  capstan__device__free_unpacked(d, NULL);
  mode_t old = umask(0);
  uint64_t bytes = 0;
  assert_int_equal(capstan_store_backup(s, file, &bytes), 0);
  umask(old);
  capstan_store_abort(&w);
  struct stat st;
  assert_int_equal(stat(file, &st), 0);
  assert_int_equal(st.st_mode & 0777, 0600);
  assert_int_equal((uint64_t)st.st_size, bytes);

  capstan_store_t *b = NULL;
  assert_int_equal(capstan_store_open_backup(file, &b), 0);
  assert_true(has_device(b, "SEP000000000001"));
  assert_false(has_device(b, "SEP000000000002"));
  /* Read-only: no write transaction on a backup. */
  capstan_txn_t t;
  assert_int_not_equal(capstan_store_begin(b, true, &t), 0);

  /* Installed over another store: the other store's records are gone. */
  capstan_store_t *other = NULL;
  assert_int_equal(capstan_store_open(target, CAPSTAN_STORE_CREATE, &other), 0);
  put_device(other, "SEP00000000FFFF");
  capstan_store_close(other);
  assert_int_equal(capstan_store_install(b, target), 0);
  capstan_store_close(b);
  assert_int_equal(capstan_store_open(target, 0, &other), 0);
  assert_true(has_device(other, "SEP000000000001"));
  assert_false(has_device(other, "SEP00000000FFFF"));
  put_device(other, "SEP000000000003"); /* a normal, writable store */
  capstan_store_close(other);
  snprintf(file, sizeof(file), "%s/data.mdb", target);
  assert_int_equal(stat(file, &st), 0);
  assert_int_equal(st.st_mode & 0777, 0600);

  capstan_store_close(s);
  test_rmdir(strdup(target));
  test_rmdir(strdup(data));
  test_rmdir(root);
}

/* A backup an earlier release wrote: an LMDB file with the databases of
 * the first release only (made here with LMDB itself), one device in it. */
static void write_old_store(const char *path, int with_devices) {
  static const char *const kFirst[] = {"devices",   "certs",    "pki",  "trust",
                                       "templates", "settings", "audit"};
  MDB_env *env;
  assert_int_equal(mdb_env_create(&env), 0);
  assert_int_equal(mdb_env_set_maxdbs(env, 16), 0);
  assert_int_equal(mdb_env_open(env, path, MDB_NOSUBDIR, 0600), 0);
  MDB_txn *txn;
  assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
  for (size_t i = with_devices ? 0 : 1; i < sizeof(kFirst) / sizeof(kFirst[0]); i++) {
    MDB_dbi dbi;
    assert_int_equal(mdb_dbi_open(txn, kFirst[i], MDB_CREATE, &dbi), 0);
    if (i == 0) {
      Capstan__Device *d = capstan_device_new("SEP0000000000AA");
      size_t n = protobuf_c_message_get_packed_size(&d->base);
      uint8_t *buf = malloc(n);
      protobuf_c_message_pack(&d->base, buf);
      MDB_val k = {.mv_size = strlen(d->name), .mv_data = d->name},
              v = {.mv_size = n, .mv_data = buf};
      assert_int_equal(mdb_put(txn, dbi, &k, &v, 0), 0);
      free(buf);
      capstan__device__free_unpacked(d, NULL);
    }
  }
  assert_int_equal(mdb_txn_commit(txn), 0);
  mdb_env_close(env);
  char lock[4096];
  assert_true((size_t)snprintf(lock, sizeof(lock), "%s-lock", path) < sizeof(lock));
  unlink(lock);
}

static int count_requests(const capstan_cert_request_t *r, void *arg) {
  (void)r;
  (*(int *)arg)++;
  return 0;
}

static void test_backup_of_an_earlier_release(void **state) {
  (void)state;
  char *root = test_tmpdir();
  char file[700], target[600], bad[700];
  snprintf(file, sizeof(file), "%s/old.mdb", root);
  snprintf(bad, sizeof(bad), "%s/bad.mdb", root);
  snprintf(target, sizeof(target), "%s/target", root);
  write_old_store(file, 1);
  capstan_store_t *b = NULL;
  assert_int_equal(capstan_store_open_backup(file, &b), 0);
  assert_true(has_device(b, "SEP0000000000AA"));
  /* What it lacks reads as empty. */
  capstan_txn_t t;
  assert_int_equal(capstan_store_begin(b, false, &t), 0);
  int n = 0;
  assert_int_equal(capstan_csr_each(&t, count_requests, &n), 0);
  assert_int_equal(n, 0);
  uint64_t count = 1;
  assert_int_equal(capstan_store_count(&t, CAPSTAN_DB_CAPF_PREVIOUS, &count), 0);
  assert_int_equal(count, 0);
  capstan_store_abort(&t);
  /* Restored, it is a store of this release (the databases are made). */
  assert_int_equal(mkdir(target, 0700), 0);
  assert_int_equal(capstan_store_install(b, target), 0);
  capstan_store_close(b);
  capstan_store_t *s = NULL;
  assert_int_equal(capstan_store_open(target, 0, &s), 0);
  assert_true(has_device(s, "SEP0000000000AA"));
  put_device(s, "SEP0000000000BB");
  capstan_store_close(s);
  /* A file without the devices database is not a capstan store. */
  write_old_store(bad, 0);
  assert_int_equal(capstan_store_open_backup(bad, &b), CAPSTAN_EINVAL);
  test_rmdir(strdup(target));
  test_rmdir(root);
}

static void test_not_a_backup(void **state) {
  (void)state;
  char *root = test_tmpdir();
  char junk[600], empty[600];
  snprintf(junk, sizeof(junk), "%s/junk", root);
  snprintf(empty, sizeof(empty), "%s/empty", root);
  FILE *f = fopen(junk, "w");
  for (int i = 0; i < 3000; i++) fputs("not an LMDB file\n", f);
  fclose(f);
  fclose(fopen(empty, "w"));
  capstan_store_t *b = NULL;
  assert_int_equal(capstan_store_open_backup(junk, &b), CAPSTAN_EINVAL);
  assert_null(b);
  assert_int_equal(capstan_store_open_backup(empty, &b), CAPSTAN_EINVAL);
  assert_int_equal(capstan_store_open_backup(root, &b), CAPSTAN_EINVAL); /* a directory */
  snprintf(junk, sizeof(junk), "%s/missing", root);
  assert_int_equal(capstan_store_open_backup(junk, &b), CAPSTAN_ENOENT);
  test_rmdir(root);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_backup_open_install),
      cmocka_unit_test(test_not_a_backup),
      cmocka_unit_test(test_backup_of_an_earlier_release),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
