/* CSV reader and the device CSV format: quoting, CRLF, exact error
 * messages with line and column, header checks, import semantics in one
 * transaction, and a 10,000-row file. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "handlers/cli/cli.h"
#include "core/base/error.h"
#include "storage/devices.h"
#include "storage/store.h"
#include "store_test_util.h"

#define HDR CAPSTAN_DEVICE_CSV_HEADER "\n"

typedef struct {
  size_t n;
  size_t lines[16];
  char fields[16][8][64];
  size_t nfields[16];
} collect_t;

static int collect(size_t line, char **f, size_t n, void *arg) {
  collect_t *c = arg;
  assert_true(c->n < 16);
  c->lines[c->n] = line;
  c->nfields[c->n] = n;
  for (size_t i = 0; i < n && i < 8; i++) snprintf(c->fields[c->n][i], 64, "%s", f[i]);
  c->n++;
  return 0;
}

static int parse_str(const char *s, collect_t *c, size_t *eline, const char **emsg) {
  memset(c, 0, sizeof(*c));
  return capstan_csv_parse((const uint8_t *)s, strlen(s), collect, c, eline, emsg);
}

static void test_quoting_and_line_ends(void **state) {
  collect_t c;
  size_t el;
  const char *em;
  const char *in =
      "a,\"b,c\",\"say \"\"hi\"\"\"\r\n"
      "\"multi\nline\",,x\n"
      "\n"
      "last,\"\",z";
  assert_int_equal(parse_str(in, &c, &el, &em), 0);
  assert_int_equal(c.n, 3);
  assert_int_equal(c.lines[0], 1);
  assert_string_equal(c.fields[0][1], "b,c");
  assert_string_equal(c.fields[0][2], "say \"hi\"");
  assert_int_equal(c.lines[1], 2);
  assert_string_equal(c.fields[1][0], "multi\nline");
  assert_string_equal(c.fields[1][1], "");
  assert_int_equal(c.lines[2], 5); /* multi-line field and blank line counted */
  assert_int_equal(c.nfields[2], 3);
  assert_string_equal(c.fields[2][1], "");

  /* A trailing comma is an empty last field. */
  assert_int_equal(parse_str("a,b,\n", &c, &el, &em), 0);
  assert_int_equal(c.nfields[0], 3);

  /* A UTF-8 BOM (spreadsheet exports) is skipped. */
  assert_int_equal(parse_str("\xEF\xBB\xBFname,x\n", &c, &el, &em), 0);
  assert_string_equal(c.fields[0][0], "name");
}

static void test_syntax_errors(void **state) {
  collect_t c;
  size_t el;
  const char *em;
  assert_int_equal(parse_str("a,b\n\"open,c\nd\n", &c, &el, &em), CAPSTAN_EINVAL);
  assert_int_equal(el, 2);
  assert_string_equal(em, "unterminated quoted field");
  assert_int_equal(parse_str("a,b\nx,y\"z\n", &c, &el, &em), CAPSTAN_EINVAL);
  assert_int_equal(el, 2);
  assert_string_equal(
      em, "quote inside an unquoted field (quote the whole field and double the quote)");
  assert_int_equal(parse_str("\"a\"b,c\n", &c, &el, &em), CAPSTAN_EINVAL);
  assert_string_equal(em, "unexpected character after a closing quote");
  assert_int_equal(parse_str("a\rb\n", &c, &el, &em), CAPSTAN_EINVAL);
  assert_string_equal(em, "carriage return without line feed");
  uint8_t nul[] = {'a', 0, 'b', '\n'};
  memset(&c, 0, sizeof(c));
  assert_int_equal(capstan_csv_parse(nul, sizeof(nul), collect, &c, &el, &em), CAPSTAN_EINVAL);
  assert_string_equal(em, "NUL byte in field");

  char big[CAPSTAN_CSV_MAX_FIELD + 10];
  memset(big, 'x', sizeof(big) - 1);
  big[sizeof(big) - 1] = '\0';
  assert_int_equal(parse_str(big, &c, &el, &em), CAPSTAN_EINVAL);
  assert_string_equal(em, "field longer than 4096 bytes");
  char many[CAPSTAN_CSV_MAX_FIELDS * 2 + 8];
  memset(many, ',', CAPSTAN_CSV_MAX_FIELDS);
  many[CAPSTAN_CSV_MAX_FIELDS] = '\0';
  assert_int_equal(parse_str(many, &c, &el, &em), CAPSTAN_EINVAL);
  assert_string_equal(em, "more than 64 columns");
}

static void expect_device_error(const char *csv, const char *want) {
  capstan_device_row_t *rows = (capstan_device_row_t *)1;
  size_t n = 99;
  char err[512];
  assert_int_equal(capstan_device_csv_parse("devices.csv", (const uint8_t *)csv, strlen(csv), &rows,
                                            &n, err, sizeof(err)),
                   CAPSTAN_EINVAL);
  assert_string_equal(err, want);
  assert_null(rows);
  assert_int_equal(n, 0);
}

static void test_device_rows(void **state) {
  const char *csv = HDR
      "SEP0011223344AA,install,string,1234,ec256,2027-03-01\r\n"
      "\"phone-2\",delete,null,,,2027-03-01T12:30:00Z\r\n"
      "CSFjdoe,troubleshoot,mic,,rsa4096,\n";
  capstan_device_row_t *rows;
  size_t n;
  char err[512];
  assert_int_equal(capstan_device_csv_parse("devices.csv", (const uint8_t *)csv, strlen(csv), &rows,
                                            &n, err, sizeof(err)),
                   0);
  assert_int_equal(n, 3);
  assert_string_equal(rows[0].name, "SEP0011223344AA");
  assert_int_equal(rows[0].line, 2);
  assert_int_equal(rows[0].operation, CAPSTAN__OPERATION__OPERATION_INSTALL);
  assert_int_equal(rows[0].auth_mode, CAPSTAN__AUTH_MODE__AUTH_MODE_STRING);
  assert_string_equal(rows[0].auth_string, "1234");
  assert_int_equal(rows[0].key_alg, CAPSTAN__KEY_ALG__KEY_ALG_EC);
  assert_int_equal(rows[0].key_bits, 256);
  assert_int_equal(rows[0].completes_by, 1803859200); /* 2027-03-01T00:00:00Z */
  assert_int_equal(rows[1].key_bits, 2048);           /* default key */
  assert_int_equal(rows[1].completes_by, 1803859200 + 12 * 3600 + 30 * 60);
  assert_int_equal(rows[2].completes_by, 0);
  assert_int_equal(rows[2].auth_mode, CAPSTAN__AUTH_MODE__AUTH_MODE_MIC);
  assert_false(rows[0].name_other_form);
  assert_true(rows[1].name_other_form);
  assert_true(rows[2].name_other_form);
  free(rows);

  /* Lower-case hex in a MAC name: upper-cased and marked. */
  const char *lower = HDR "SEP0011223344aa,install,null,,,\n";
  assert_int_equal(capstan_device_csv_parse("devices.csv", (const uint8_t *)lower, strlen(lower),
                                            &rows, &n, err, sizeof(err)),
                   0);
  assert_string_equal(rows[0].name, "SEP0011223344AA");
  assert_true(rows[0].name_upcased);
  assert_false(rows[0].name_other_form);
  free(rows);

  /* Header only: valid, nothing to import. */
  assert_int_equal(capstan_device_csv_parse("devices.csv", (const uint8_t *)HDR, strlen(HDR), &rows,
                                            &n, err, sizeof(err)),
                   0);
  assert_int_equal(n, 0);
  free(rows);
}

/* Deadlines: the UTC forms, and local time by TZ (a POSIX TZ string, so the
 * test needs no time zone database). */
static void test_deadlines(void **state) {
  (void)state;
  int64_t t;
  setenv("TZ", "XST-5", 1); /* UTC+5, named XST */
  tzset();
  assert_int_equal(capstan_cli_parse_deadline("2027-03-01", &t), 0);
  assert_int_equal(t, 1803859200); /* a date alone: 00:00 UTC */
  assert_int_equal(capstan_cli_parse_deadline("2027-03-01T05:00Z", &t), 0);
  assert_int_equal(t, 1803859200 + 5 * 3600);
  assert_int_equal(capstan_cli_parse_deadline("2027-03-01T05:00:00+05:00", &t), 0);
  assert_int_equal(t, 1803859200);
  assert_int_equal(capstan_cli_parse_deadline("2027-03-01T05:00", &t), 0);
  assert_int_equal(t, 1803859200); /* local 05:00 at UTC+5 */
  assert_int_equal(capstan_cli_parse_deadline("2027-03-01 05:00:30", &t), 0);
  assert_int_equal(t, 1803859200 + 30);
  assert_int_equal(capstan_cli_parse_deadline("2027-02-30T05:00", &t), CAPSTAN_EINVAL);
  assert_int_equal(capstan_cli_parse_deadline("2027-03-01T24:00", &t), CAPSTAN_EINVAL);
  assert_int_equal(capstan_cli_parse_deadline("2027-03-01T05", &t), CAPSTAN_EINVAL);
  assert_int_equal(capstan_cli_parse_deadline("2027-03-01T05:00x", &t), CAPSTAN_EINVAL);
  char buf[96];
  capstan_cli_format_deadline(1803859200, buf, sizeof(buf));
  assert_string_equal(buf, "2027-03-01 05:00:00 XST (2027-03-01T00:00:00Z)");
  setenv("TZ", "UTC0", 1);
  tzset();
  capstan_cli_format_deadline(1803859200, buf, sizeof(buf));
  assert_string_equal(buf, "2027-03-01 00:00:00 UTC");
  unsetenv("TZ");
  tzset();
}

static void test_device_errors(void **state) {
  expect_device_error(
      "", "devices.csv: empty file: the first line must be the header " CAPSTAN_DEVICE_CSV_HEADER);
  /* Blank lines and a BOM alone are empty too. */
  expect_device_error(
      "\xEF\xBB\xBF\r\n\n",
      "devices.csv: empty file: the first line must be the header " CAPSTAN_DEVICE_CSV_HEADER);
}

static void test_device_error_messages(void **state) {
  expect_device_error(
      HDR "SEP0011223344AA,install,null,,rsa2048,\nSEP0011223344AB,install,null,,rsa2049,\n",
      "devices.csv:3: column 'key': 'rsa2049' is not one of "
      "rsa512,rsa1024,rsa2048,rsa3072,rsa4096,ec256,ec384,ec521");
  expect_device_error(HDR "SEP0011223344AA,upgrade,null,,,\n",
                      "devices.csv:2: column 'operation': 'upgrade' is not one of "
                      "install,delete,troubleshoot,none");
  expect_device_error(HDR "SEP0011223344AA,install,,,,\n",
                      "devices.csv:2: column 'auth_mode': required, one of string,null,lsc,mic");
  expect_device_error(HDR "SEP0011223344AA,install,string,12,,\n",
                      "devices.csv:2: column 'auth_string': must be 4 to 10 digits (got 2 "
                      "characters)");
  expect_device_error(HDR "SEP0011223344AA,install,null,,,2027-02-30\n",
                      "devices.csv:2: column 'completes_by': '2027-02-30' is not a date "
                      "(" CAPSTAN_DEADLINE_FORMS ")");
  expect_device_error(HDR "bad name,install,null,,,\n",
                      "devices.csv:2: column 'name': 'bad name' is not a device name (a "
                      "phone's is SEP + 12 hex digits (the phone's MAC address, e.g. "
                      "SEP58971ECC97C1); other forms are 1 to 64 of A-Z a-z 0-9 . _ - starting "
                      "with a letter)");
  expect_device_error(HDR "SEP00112233,install,null,,,\n",
                      "devices.csv:2: column 'name': 'SEP00112233' starts with SEP but is not a "
                      "phone's name: a SEP name must be SEP + 12 hex digits (the phone's MAC "
                      "address, e.g. SEP58971ECC97C1)");
  /* A lower-case MAC name is the upper-case one: two rows of one phone. */
  expect_device_error(HDR "SEP0011223344AA,install,null,,,\nsep0011223344aa,install,null,,,\n",
                      "devices.csv:3: column 'name': 'SEP0011223344AA' is already on line 2");
  expect_device_error(HDR "SEP0011223344AA,install,null,,\n",
                      "devices.csv:2: expected 6 columns (" CAPSTAN_DEVICE_CSV_HEADER "), found 5");
  expect_device_error(HDR "a1,install,null,,,\nb1,none,null,,,\n\"a1\",none,null,,,\n",
                      "devices.csv:4: column 'name': 'a1' is already on line 2");
  expect_device_error(HDR "a1,install,null,,,\n\"b1,none,null,,,\n",
                      "devices.csv:3: unterminated quoted field");
}

static void test_header_errors(void **state) {
  expect_device_error("name,operation,auth_mode,auth_string,key,completes_by,notes\n",
                      "devices.csv:1: unknown column 'notes': the header must be "
                      "exactly " CAPSTAN_DEVICE_CSV_HEADER);
  expect_device_error("name,operation,auth,auth_string,key,completes_by\n",
                      "devices.csv:1: column 3 is 'auth', expected 'auth_mode': the header must "
                      "be exactly " CAPSTAN_DEVICE_CSV_HEADER);
  expect_device_error("name,operation,auth_mode,auth_string,key\n",
                      "devices.csv:1: missing column 'completes_by': the header must be "
                      "exactly " CAPSTAN_DEVICE_CSV_HEADER);
}

/* ---- import into a store --------------------------------------------------- */

typedef struct {
  char *dir;
  capstan_store_t *store;
} fixture_t;

static int setup(void **state) {
  fixture_t *f = calloc(1, sizeof(*f));
  f->dir = test_tmpdir();
  assert_int_equal(capstan_store_open(f->dir, CAPSTAN_STORE_CREATE, &f->store), 0);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture_t *f = *state;
  capstan_store_close(f->store);
  test_rmdir(f->dir);
  free(f);
  return 0;
}

static int import_csv(fixture_t *f, const char *csv, const capstan_device_import_opts_t *o,
                      size_t *created, size_t *updated, char *err, size_t errlen) {
  capstan_device_row_t *rows;
  size_t n;
  int rc = capstan_device_csv_parse("devices.csv", (const uint8_t *)csv, strlen(csv), &rows, &n,
                                    err, errlen);
  if (rc != 0) return rc;
  capstan_txn_t txn;
  assert_int_equal(capstan_store_begin(f->store, true, &txn), 0);
  rc = capstan_device_import_rows(&txn, rows, n, o, created, updated, err, errlen);
  if (rc == 0) {
    rc = capstan_store_commit(&txn);
  } else {
    capstan_store_abort(&txn);
  }
  free(rows);
  return rc;
}

static uint64_t device_count(fixture_t *f) {
  capstan_txn_t txn;
  uint64_t n;
  assert_int_equal(capstan_store_begin(f->store, false, &txn), 0);
  assert_int_equal(capstan_store_count(&txn, CAPSTAN_DB_DEVICES, &n), 0);
  capstan_store_abort(&txn);
  return n;
}

static void test_import_semantics(void **state) {
  fixture_t *f = *state;
  capstan_device_import_opts_t o = {.fname = "devices.csv", .now = 1000};
  size_t created, updated;
  char err[512];

  /* String mode without a string: refused, and nothing is stored. */
  const char *csv = HDR "a1,install,null,,,\na2,install,string,,,\n";
  assert_int_equal(import_csv(f, csv, &o, &created, &updated, err, sizeof(err)), CAPSTAN_EINVAL);
  assert_string_equal(err,
                      "devices.csv:3: column 'auth_string': required when auth_mode is string "
                      "(or use --generate-auth-strings unique|shared)");
  assert_int_equal(device_count(f), 0);

  /* Shared generation: one string for all rows that need one. */
  o.generate = CAPSTAN_GENERATE_SHARED;
  o.auth_string_length = 8;
  csv = HDR
      "a1,install,null,,,\na2,install,string,,,\na3,install,string,,,\na4,install,string,4321,,\n";
  assert_int_equal(import_csv(f, csv, &o, &created, &updated, err, sizeof(err)), 0);
  assert_int_equal(created, 4);
  Capstan__Device *d2, *d3, *d4;
  assert_int_equal(capstan_store_device_load(f->store, "a2", &d2), 0);
  assert_int_equal(capstan_store_device_load(f->store, "a3", &d3), 0);
  assert_int_equal(capstan_store_device_load(f->store, "a4", &d4), 0);
  assert_true(capstan_auth_string_valid(d2->auth_string));
  assert_int_equal(strlen(d2->auth_string), 8);
  assert_string_equal(d2->auth_string, d3->auth_string);
  assert_string_equal(d4->auth_string, "4321");
  assert_int_equal(d2->status, CAPSTAN__OP_STATUS__OP_STATUS_PENDING);
  assert_int_equal(d2->created_at, 1000);
  char kept[16];
  snprintf(kept, sizeof(kept), "%s", d2->auth_string);
  capstan__device__free_unpacked(d2, NULL);
  capstan__device__free_unpacked(d3, NULL);
  capstan__device__free_unpacked(d4, NULL);

  /* --no-update refuses an existing device; nothing changes. */
  o.generate = CAPSTAN_GENERATE_NONE;
  o.no_update = true;
  csv = HDR "b1,install,null,,,\na1,delete,null,,,\n";
  assert_int_equal(import_csv(f, csv, &o, &created, &updated, err, sizeof(err)), CAPSTAN_EINVAL);
  assert_string_equal(
      err, "devices.csv:3: device 'a1' already exists (run without --no-update to update it)");
  assert_int_equal(device_count(f), 4);

  /* Update: a string-mode row without a string keeps the stored one; a
   * failed device with the same operation is re-armed. */
  o.no_update = false;
  o.now = 2000;
  capstan_txn_t txn;
  assert_int_equal(capstan_store_begin(f->store, true, &txn), 0);
  assert_int_equal(capstan_devices_set_status(&txn, "a2", CAPSTAN__OP_STATUS__OP_STATUS_FAILED,
                                              "timeout", 1500, true),
                   0);
  assert_int_equal(capstan_store_commit(&txn), 0);
  csv = HDR "a2,install,string,,ec521,\n";
  assert_int_equal(import_csv(f, csv, &o, &created, &updated, err, sizeof(err)), 0);
  assert_int_equal(created, 0);
  assert_int_equal(updated, 1);
  assert_int_equal(capstan_store_device_load(f->store, "a2", &d2), 0);
  assert_string_equal(d2->auth_string, kept);
  assert_int_equal(d2->key_bits, 521);
  assert_int_equal(d2->status, CAPSTAN__OP_STATUS__OP_STATUS_PENDING);
  assert_int_equal(d2->attempts, 0);
  assert_null(d2->status_reason);
  capstan__device__free_unpacked(d2, NULL);
}

/* Re-import safety: a dry run writes nothing and reports; replacing a set
 * string or re-arming a succeeded device needs its flag. */
static void test_import_reimport(void **state) {
  fixture_t *f = *state;
  capstan_device_import_stats_t st;
  capstan_device_import_opts_t o = {.fname = "devices.csv", .now = 1000, .stats = &st};
  size_t created, updated;
  char err[512];
  const char *csv = HDR "a1,install,string,1111,,\na2,install,null,,,\n";
  assert_int_equal(import_csv(f, csv, &o, &created, &updated, err, sizeof(err)), 0);
  assert_int_equal(created, 2);
  capstan_txn_t txn;
  assert_int_equal(capstan_store_begin(f->store, true, &txn), 0);
  assert_int_equal(capstan_devices_set_status(&txn, "a2", CAPSTAN__OP_STATUS__OP_STATUS_SUCCEEDED,
                                              NULL, 1500, true),
                   0);
  assert_int_equal(capstan_store_commit(&txn), 0);

  /* The same file: a1 unchanged, a2 (succeeded: operation none) re-armed. */
  char *buf = NULL;
  size_t len = 0;
  o.report = open_memstream(&buf, &len);
  o.dry_run = true;
  assert_int_equal(import_csv(f, csv, &o, &created, &updated, err, sizeof(err)), 0);
  fclose(o.report);
  o.report = NULL;
  assert_int_equal(st.unchanged, 1);
  assert_int_equal(st.rearmed, 1);
  assert_int_equal(updated, 1);
  assert_string_equal(buf,
                      "update a2: operation none -> install, re-armed: status succeeded -> pending "
                      "(needs --rearm)\n");
  free(buf);
  Capstan__Device *d;
  assert_int_equal(capstan_store_device_load(f->store, "a2", &d), 0);
  assert_int_equal(d->status, CAPSTAN__OP_STATUS__OP_STATUS_SUCCEEDED);
  capstan__device__free_unpacked(d, NULL);

  o.dry_run = false;
  assert_int_equal(import_csv(f, csv, &o, &created, &updated, err, sizeof(err)), CAPSTAN_EINVAL);
  assert_string_equal(err,
                      "devices.csv:3: device 'a2' succeeded and the file would schedule it again: "
                      "1 succeeded device would be re-armed (give --rearm to do so)");
  o.rearm = true;
  assert_int_equal(import_csv(f, csv, &o, &created, &updated, err, sizeof(err)), 0);
  assert_int_equal(st.rearmed, 1);
  assert_int_equal(capstan_store_device_load(f->store, "a2", &d), 0);
  assert_int_equal(d->status, CAPSTAN__OP_STATUS__OP_STATUS_PENDING);
  capstan__device__free_unpacked(d, NULL);

  /* A new string for a1: refused, then replaced with the flag. */
  csv = HDR "a1,install,string,2222,,\n";
  assert_int_equal(import_csv(f, csv, &o, &created, &updated, err, sizeof(err)), CAPSTAN_EINVAL);
  assert_string_equal(err,
                      "devices.csv:2: device 'a1' has an authentication string the file would "
                      "replace: 1 string would be replaced (give --replace-auth-strings to do so)");
  assert_int_equal(capstan_store_device_load(f->store, "a1", &d), 0);
  assert_string_equal(d->auth_string, "1111");
  capstan__device__free_unpacked(d, NULL);
  o.replace_auth_strings = true;
  assert_int_equal(import_csv(f, csv, &o, &created, &updated, err, sizeof(err)), 0);
  assert_int_equal(st.auth_replaced, 1);
  assert_int_equal(capstan_store_device_load(f->store, "a1", &d), 0);
  assert_string_equal(d->auth_string, "2222");
  capstan__device__free_unpacked(d, NULL);
}

static void test_import_10000_rows(void **state) {
  fixture_t *f = *state;
  size_t cap = 10000 * 64 + 128;
  char *csv = malloc(cap);
  size_t pos = (size_t)snprintf(csv, cap, "%s", HDR);
  for (int i = 0; i < 10000; i++) {
    pos += (size_t)snprintf(csv + pos, cap - pos, "SEP%012X,install,string,%06d,rsa2048,\r\n", i,
                            i % 1000000);
  }
  capstan_device_import_opts_t o = {.fname = "big.csv", .now = 1};
  size_t created, updated;
  char err[512];
  assert_int_equal(import_csv(f, csv, &o, &created, &updated, err, sizeof(err)), 0);
  assert_int_equal(created, 10000);
  assert_int_equal(device_count(f), 10000);

  /* Export reproduces the input (with LF line ends). */
  char *out = NULL;
  size_t outlen = 0;
  FILE *mf = open_memstream(&out, &outlen);
  capstan_txn_t txn;
  assert_int_equal(capstan_store_begin(f->store, false, &txn), 0);
  assert_int_equal(capstan_device_csv_export(&txn, mf), 0);
  capstan_store_abort(&txn);
  fclose(mf);
  size_t j = 0;
  for (size_t i = 0; i < pos; i++) {
    if (csv[i] == '\r') continue;
    assert_true(j < outlen);
    assert_int_equal(csv[i], out[j]);
    j++;
  }
  assert_int_equal(j, outlen);
  free(out);
  free(csv);
}

static void test_time_parse(void **state) {
  int64_t t;
  assert_int_equal(capstan_cli_parse_time("1970-01-01", &t), 0);
  assert_int_equal(t, 0);
  assert_int_equal(capstan_cli_parse_time("2024-02-29T23:59:59Z", &t), 0);
  assert_int_equal(t, 1709251199);
  assert_int_equal(capstan_cli_parse_time("2024-03-01T01:00+01:00", &t), 0);
  assert_int_equal(t, 1709251200);
  assert_int_equal(capstan_cli_parse_time("2023-02-29", &t), CAPSTAN_EINVAL);
  assert_int_equal(capstan_cli_parse_time("2024-03-01T01:00", &t), CAPSTAN_EINVAL); /* no zone */
  assert_int_equal(capstan_cli_parse_time("2024-3-1", &t), CAPSTAN_EINVAL);
  assert_int_equal(capstan_cli_parse_time("2024-03-01x", &t), CAPSTAN_EINVAL);
  char buf[40];
  capstan_cli_format_time(1709251199, buf, sizeof(buf));
  assert_string_equal(buf, "2024-02-29T23:59:59Z");

  char digits[11];
  assert_int_equal(capstan_cli_random_digits(digits, 10), 0);
  assert_true(capstan_auth_string_valid(digits));
  assert_int_equal(capstan_cli_random_digits(digits, 3), CAPSTAN_EINVAL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_quoting_and_line_ends),
      cmocka_unit_test(test_syntax_errors),
      cmocka_unit_test(test_device_rows),
      cmocka_unit_test(test_deadlines),
      cmocka_unit_test(test_device_errors),
      cmocka_unit_test(test_device_error_messages),
      cmocka_unit_test(test_header_errors),
      cmocka_unit_test_setup_teardown(test_import_semantics, setup, teardown),
      cmocka_unit_test_setup_teardown(test_import_reimport, setup, teardown),
      cmocka_unit_test_setup_teardown(test_import_10000_rows, setup, teardown),
      cmocka_unit_test(test_time_parse),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
