/* Store: a map that cannot grow because the process may not map more
 * (RLIMIT_AS, as ulimit -v, LimitAS= or prlimit --as set it). LMDB 0.9.24
 * unmaps the old map before mapping the larger one; the store must come
 * back at the old size (or stay closed and broken), never leave an
 * environment without a map for the next transaction to crash on. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <signal.h>
#include <stdio.h>
#include <time.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/base/error.h"
#include "storage/devices.h"
#include "storage/internal.h"
#include "storage/records.h"
#include "storage/store.h"
#include "store_test_util.h"

#define MIB ((size_t)1 << 20)

static size_t mapped_bytes(void) {
  unsigned long pages = 0;
  FILE *f = fopen("/proc/self/statm", "r");
  if (f == NULL) return 0;
  if (fscanf(f, "%lu", &pages) != 1) pages = 0;
  fclose(f);
  return pages * (size_t)sysconf(_SC_PAGESIZE);
}

static int limit_as(rlim_t bytes) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_AS, &rl) != 0) return -1;
  rl.rlim_cur = bytes;
  return setrlimit(RLIMIT_AS, &rl);
}

static int put_device(capstan_store_t *s, const char *name) {
  capstan_txn_t txn;
  int err = capstan_store_begin(s, true, &txn);
  if (err != 0) return err;
  Capstan__Device *d = capstan_device_new(name);
  err = capstan_store_device_put(&txn, d);
  capstan__device__free_unpacked(d, NULL);
  if (err != 0) {
    capstan_store_abort(&txn);
    return err;
  }
  return capstan_store_commit(&txn);
}

static int load_device(capstan_store_t *s, const char *name) {
  Capstan__Device *d = NULL;
  int err = capstan_store_device_load(s, name, &d);
  if (d != NULL) capstan__device__free_unpacked(d, NULL);
  return err;
}

/* In a child (the limit stays there; a crash is seen as a signal): each
 * failed check exits with its own status. */
static int grow_under_limit(const char *dir) {
  capstan_store_t *s;
  if (capstan_store_open(dir, CAPSTAN_STORE_CREATE, &s) != 0) return 10;
  if (capstan_store_set_map(s, 64 * MIB, 1024 * MIB) != 0) return 11;
  if (put_device(s, "SEP000000000001") != 0) return 12;
  rlim_t unlimited = RLIM_INFINITY;

  /* Room for 16 MiB more: the 128 MiB map cannot replace the 64 MiB one,
   * the 64 MiB one can be mapped again. */
  if (limit_as(mapped_bytes() + 16 * MIB) != 0) return 13;
  int err = capstan_store_grow_map(s);
  if (err == 0 || err == CAPSTAN_ENOSPC) return 14;
  if (s->env == NULL || capstan_store_map_size(s) != 64 * MIB) return 15;
  if (load_device(s, "SEP000000000001") != 0) return 16; /* crashed here before */
  if (put_device(s, "SEP000000000002") != 0) return 17;

  /* Below what is mapped now: not even the old map comes back. The store
   * is closed and broken; transactions fail instead of crashing. */
  if (limit_as(mapped_bytes() - 8 * MIB) != 0) return 18;
  err = capstan_store_grow_map(s);
  if (err == 0 || err == CAPSTAN_ENOSPC) return 19;
  if (s->env != NULL || !atomic_load(&s->broken)) return 20;
  if (load_device(s, "SEP000000000001") != CAPSTAN_EIO) return 21;
  if (put_device(s, "SEP000000000003") != CAPSTAN_EIO) return 22;
  if (capstan_store_grow_map(s) != CAPSTAN_EIO) return 23;
  capstan_store_adopt_map(s); /* with no environment: must not touch it */
  atomic_store(&s->resized, true);
  capstan_store_adopt_map(s);

  /* The limit lifted, the writer's reopen brings it back and it grows. */
  if (limit_as(unlimited) != 0) return 24;
  if (capstan_store_reopen(s) != 0 || atomic_load(&s->broken)) return 25;
  if (load_device(s, "SEP000000000002") != 0) return 26;
  if (capstan_store_grow_map(s) != 0 || capstan_store_map_size(s) != 128 * MIB) return 27;
  if (put_device(s, "SEP000000000003") != 0) return 28;
  capstan_store_close(s);
  return 0;
}

static void test_grow_fails_under_address_limit(void **state) {
  (void)state;
#if defined(__SANITIZE_ADDRESS__)
  skip(); /* RLIMIT_AS cannot apply: ASan's shadow maps terabytes */
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
  skip();
#endif
#endif
  char *dir = test_tmpdir();
  assert_non_null(dir);
  fflush(NULL);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    /* A crash must end the child (cmocka's handlers would go on testing). */
    signal(SIGSEGV, SIG_DFL);
    signal(SIGBUS, SIG_DFL);
    _exit(grow_under_limit(dir));
  }
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  if (WIFSIGNALED(status)) fail_msg("the child died of signal %d", WTERMSIG(status));
  assert_true(WIFEXITED(status));
  assert_int_equal(WEXITSTATUS(status), 0);
  test_rmdir(dir);
}

/* A command opening a store the server grew past 4 GiB maps what the server
 * grew it to (LMDB keeps the largest map in the meta page), not only the
 * data: else its writes needing a new page fail while the server has room.
 * The map is address space only: nothing near 8 GiB is written. */
static void test_command_adopts_grown_map(void **state) {
  (void)state;
  char *dir = test_tmpdir();
  assert_non_null(dir);
  capstan_store_t *s;
  assert_int_equal(capstan_store_open(dir, CAPSTAN_STORE_CREATE, &s), 0);
  assert_int_equal(capstan_store_set_map(s, 1 * MIB, 8192 * MIB), 0);
  while (capstan_store_map_size(s) < 8192 * MIB) assert_int_equal(capstan_store_grow_map(s), 0);
  assert_int_equal(put_device(s, "SEP000000000001"), 0); /* the meta page records 8 GiB */
  capstan_store_close(s);

  assert_int_equal(capstan_store_open(dir, 0, &s), 0);
  assert_int_equal(capstan_store_map_size(s), 8192 * MIB);
  assert_int_equal(put_device(s, "SEP000000000002"), 0);
  capstan_store_close(s);
  test_rmdir(dir);
}

/* A reopen (after MDB_PANIC or a failed resize, txn_lock held exclusive:
 * every read of the server waits) must not wait for a command's write
 * transaction, which LMDB serialises across processes. */
static void test_reopen_beside_command_write(void **state) {
  (void)state;
  char *dir = test_tmpdir();
  assert_non_null(dir);
  capstan_store_t *s;
  assert_int_equal(capstan_store_open(dir, CAPSTAN_STORE_CREATE, &s), 0);
  int ready[2];
  assert_int_equal(pipe(ready), 0);
  fflush(NULL);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    /* The command: its own environment (LMDB's is not fork-safe), one
     * write transaction held for 20 s. */
    capstan_store_t *c;
    capstan_txn_t txn;
    if (capstan_store_open(dir, 0, &c) != 0 || capstan_store_begin(c, true, &txn) != 0) _exit(1);
    if (write(ready[1], "x", 1) != 1) _exit(2);
    sleep(20);
    capstan_store_abort(&txn);
    _exit(0);
  }
  close(ready[1]);
  char x;
  assert_int_equal(read(ready[0], &x, 1), 1);
  close(ready[0]);
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  assert_int_equal(capstan_store_reopen(s), 0);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  kill(pid, SIGKILL);
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  /* Milliseconds when it does not wait; 20 s when it does. */
  assert_true(t1.tv_sec - t0.tv_sec < 10);
  assert_int_equal(load_device(s, "SEP000000000009"), CAPSTAN_ENOENT);
  capstan_store_close(s);
  test_rmdir(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_grow_fails_under_address_limit),
      cmocka_unit_test(test_command_adopts_grown_map),
      cmocka_unit_test(test_reopen_beside_command_write),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
