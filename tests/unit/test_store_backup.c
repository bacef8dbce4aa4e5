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

#include "core/base/error.h"
#include "storage/devices.h"
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
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
