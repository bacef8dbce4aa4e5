/* `capstan backup` and `capstan restore`: the store, with the CAPF and TFTP
 * identities' private keys, copied to one file while the server runs, and
 * that file made the store of a data directory that no server uses. */
#include <dirent.h>
#include <errno.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/base/error.h"
#include "handlers/cli/cli.h"
#include "storage/lock.h"
#include "storage/records.h"

enum { OPT_FORCE };

static const capstan_cli_opt_t opts[] = {
    [OPT_FORCE] = {"force", false, NULL},
};

#define KEYS_WARNING                                                                     \
  "The file holds the private keys of the CAPF and TFTP identities: whoever has it can " \
  "issue certificates your phones trust. Keep it as private as the data directory."

/* What a store holds, for the operator and for the checks. */
typedef struct {
  char capf_sha256[2 * SHA256_DIGEST_LENGTH + 1];
  char tftp_sha256[2 * SHA256_DIGEST_LENGTH + 1];
  uint64_t devices, certs;
} summary_t;

static int identity_sha256(capstan_txn_t *txn, const char *which, char *out) {
  Capstan__Identity *id = NULL;
  int err = capstan_store_identity_get(txn, which, &id);
  if (err != 0) return err;
  uint8_t fp[SHA256_DIGEST_LENGTH];
  SHA256(id->cert_der.data, id->cert_der.len, fp);
  capstan_cli_hex(fp, sizeof(fp), out);
  capstan__identity__free_unpacked(id, NULL);
  return 0;
}

/* Both identities must be there: a store without them is no backup of a
 * server. CAPSTAN_ENOENT when one is missing. */
static int summarise(capstan_txn_t *txn, void *arg) {
  summary_t *s = arg;
  int err = identity_sha256(txn, CAPSTAN_IDENTITY_CAPF, s->capf_sha256);
  if (err == 0) err = identity_sha256(txn, CAPSTAN_IDENTITY_TFTP, s->tftp_sha256);
  if (err == 0) err = capstan_store_count(txn, CAPSTAN_DB_DEVICES, &s->devices);
  if (err == 0) err = capstan_store_count(txn, CAPSTAN_DB_CERTS, &s->certs);
  return err;
}

static void print_summary(const char *verb, const char *what, const summary_t *s) {
  printf("capstan: %s %s\n", verb, what);
  printf("  CAPF certificate sha256 %s\n", s->capf_sha256);
  printf("  TFTP certificate sha256 %s\n", s->tftp_sha256);
  printf("  %llu devices, %llu issued certificates\n", (unsigned long long)s->devices,
         (unsigned long long)s->certs);
}

/* Opens |file| as a backup and reads its summary; says what is wrong. */
static int open_checked_backup(const char *cmd, const char *file, capstan_store_t **out,
                               summary_t *sum) {
  int err = capstan_store_open_backup(file, out);
  if (err == CAPSTAN_EINVAL) {
    capstan_cli_error(
        "%s: '%s' is not a capstan backup (not an LMDB store with capstan's "
        "databases)",
        cmd, file);
    return CAPSTAN_EXIT_ERROR;
  }
  if (err != 0) {
    capstan_cli_error("%s: cannot read '%s': %s", cmd, file, capstan_strerror(err));
    return CAPSTAN_EXIT_ERROR;
  }
  err = capstan_store_read(*out, summarise, sum);
  if (err == 0) return 0;
  capstan_store_close(*out);
  *out = NULL;
  if (err == CAPSTAN_ENOENT) {
    capstan_cli_error(
        "%s: '%s' is a store without a CAPF or TFTP identity: not a backup of a "
        "capstan server",
        cmd, file);
  } else {
    capstan_cli_error("%s: cannot read '%s': %s", cmd, file, capstan_strerror(err));
  }
  return CAPSTAN_EXIT_ERROR;
}

static bool same_summary(const summary_t *a, const summary_t *b) {
  return strcmp(a->capf_sha256, b->capf_sha256) == 0 &&
         strcmp(a->tftp_sha256, b->tftp_sha256) == 0 && a->devices == b->devices &&
         a->certs == b->certs;
}

/* --- backup --------------------------------------------------------------- */

static int run_backup(capstan_cli_t *c) {
  const char *file = c->args[0];
  struct stat st;
  if (!capstan_cli_has(c, OPT_FORCE) && lstat(file, &st) == 0) {
    return capstan_cli_usage_error(c, "'%s' exists: choose another file, or --force replaces it",
                                   file);
  }
  capstan_store_t *store = NULL;
  if (capstan_cli_open_store(c, CAPSTAN_CLI_STORE_EXISTING, &store) != 0) {
    return CAPSTAN_EXIT_ERROR;
  }
  uint64_t bytes = 0;
  int err = capstan_store_backup(store, file, &bytes);
  capstan_store_close(store);
  if (err != 0) {
    capstan_cli_error("backup: cannot write '%s': %s (nothing was written there)", file,
                      capstan_strerror(err));
    return CAPSTAN_EXIT_ERROR;
  }
  /* Read back what was written: a backup that does not open is none. */
  summary_t sum = {0};
  capstan_store_t *copy = NULL;
  if (open_checked_backup("backup", file, &copy, &sum) != 0) return CAPSTAN_EXIT_ERROR;
  capstan_store_close(copy);
  char what[4200];
  snprintf(what, sizeof(what), "%s to %s (%llu bytes, mode 0600)", capstan_cli_data_dir(c), file,
           (unsigned long long)bytes);
  print_summary("backed up", what, &sum);
  printf("%s\n", KEYS_WARNING);
  return CAPSTAN_EXIT_OK;
}

/* --- restore -------------------------------------------------------------- */

static int lock_for_restore(const char *dir, capstan_dirlock_t **lock) {
  pid_t holder = 0, server = 0;
  int err = capstan_dirlock_acquire(dir, CAPSTAN_DIRLOCK_RESTORE, lock, &holder);
  if (err == 0) return 0;
  if (err != CAPSTAN_EBUSY) {
    capstan_cli_error("restore: cannot lock '%s/%s': %s", dir, CAPSTAN_SERVE_PID_FILE,
                      capstan_strerror(err));
  } else if (capstan_dirlock_server(dir, &server, NULL) == 0) {
    capstan_cli_error(
        "restore: a capstan serve (pid %ld) is running on '%s': stop it before "
        "restoring (nothing was changed)",
        (long)server, dir);
  } else {
    capstan_cli_error("restore: '%s' is locked by process %ld (another restore?)", dir,
                      (long)holder);
  }
  return CAPSTAN_EXIT_ERROR;
}

static int run_restore(capstan_cli_t *c) {
  const char *file = c->args[0];
  const char *dir = capstan_cli_data_dir(c);
  summary_t sum = {0};
  capstan_store_t *backup = NULL;
  int rc = open_checked_backup("restore", file, &backup, &sum);
  if (rc != 0) return rc;
  capstan_dirlock_t *lock = NULL;
  if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
    capstan_cli_error("restore: cannot create '%s': %s", dir, strerror(errno));
    rc = CAPSTAN_EXIT_ERROR;
    goto out;
  }
  if ((rc = lock_for_restore(dir, &lock)) != 0) goto out;
  bool content = false;
  int err = capstan_cli_dir_has_content(dir, &content);
  if (err != 0) {
    capstan_cli_error("restore: cannot read '%s': %s", dir, strerror(-err));
    rc = CAPSTAN_EXIT_ERROR;
    goto out;
  }
  if (content && !capstan_cli_has(c, OPT_FORCE)) {
    rc = capstan_cli_usage_error(c,
                                 "'%s' is not empty: --force replaces the store there (its "
                                 "identities, devices and certificates are lost unless backed up)",
                                 dir);
    goto out;
  }
  err = capstan_store_install(backup, dir);
  if (err != 0) {
    capstan_cli_error("restore: cannot write the store in '%s': %s", dir, capstan_strerror(err));
    rc = CAPSTAN_EXIT_ERROR;
    goto out;
  }
  /* The restored store opens as any store and holds what the file held. */
  summary_t got = {0};
  capstan_store_t *store = NULL;
  err = capstan_store_open(dir, 0, &store);
  if (err == 0) err = capstan_store_read(store, summarise, &got);
  capstan_store_close(store);
  if (err != 0 || !same_summary(&got, &sum)) {
    capstan_cli_error("restore: the restored store in '%s' does not read back as the backup: %s",
                      dir, err != 0 ? capstan_strerror(err) : "contents differ");
    rc = CAPSTAN_EXIT_ERROR;
    goto out;
  }
  char what[8400];
  snprintf(what, sizeof(what), "%s into %s", file, dir);
  print_summary("restored", what, &got);
  printf("Start it with: capstan serve --data-dir %s\n", dir);
out:
  capstan_dirlock_release(lock);
  capstan_store_close(backup);
  return rc;
}

int capstan_cli_backup_main(int argc, char **argv) {
  static const capstan_cli_sub_t subs[] = {
      {NULL, CAPSTAN_CLI_OPT(OPT_FORCE), false, 1, 1, NULL, run_backup},
  };
  static const capstan_cli_cmd_t cmd = {
      .name = "backup",
      .usage = "capstan backup FILE [--force] [--data-dir DIR]",
      .help =
          "Writes a consistent copy of the store (identities with their private keys,\n"
          "devices, certificates, trust, templates, settings, audit) to FILE, also while\n"
          "the server runs: one LMDB read transaction, compacted, written to a temporary\n"
          "file beside FILE (mode 0600), fsynced, then renamed to FILE. An existing FILE is\n"
          "replaced only with --force. The copy is read back before the command succeeds;\n"
          "it prints the identities' SHA-256 fingerprints and what the copy holds.\n"
          "\n" KEYS_WARNING
          "\n"
          "Restore with 'capstan restore FILE --data-dir DIR'.",
      .opts = opts,
      .nopts = CAPSTAN_CLI_COUNT(opts),
      .subs = subs,
      .nsubs = CAPSTAN_CLI_COUNT(subs),
  };
  return capstan_cli_run(&cmd, argc, argv, NULL);
}

int capstan_cli_restore_main(int argc, char **argv) {
  static const capstan_cli_sub_t subs[] = {
      {NULL, CAPSTAN_CLI_OPT(OPT_FORCE), false, 1, 1, NULL, run_restore},
  };
  static const capstan_cli_cmd_t cmd = {
      .name = "restore",
      .usage = "capstan restore FILE --data-dir DIR [--force]",
      .help =
          "Makes the backup FILE (from 'capstan backup') the store of DIR, created when\n"
          "missing. FILE is checked first: an LMDB store with capstan's databases and both\n"
          "the CAPF and TFTP identities. Refused while a capstan serve runs on DIR (stop it\n"
          "first), and when DIR holds anything unless --force, which replaces the store\n"
          "there. Afterwards 'capstan serve --data-dir DIR' serves the same identities,\n"
          "devices and certificates as the server that was backed up; operations that were\n"
          "in progress at the backup are marked failed (interrupted) when it starts.\n"
          "\n" KEYS_WARNING,
      .opts = opts,
      .nopts = CAPSTAN_CLI_COUNT(opts),
      .subs = subs,
      .nsubs = CAPSTAN_CLI_COUNT(subs),
  };
  return capstan_cli_run(&cmd, argc, argv, NULL);
}
