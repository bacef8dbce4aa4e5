/* TFTP wire format: request parsing policy, OACK/ERROR building, netascii
 * encoding (handlers/tftp/tftp_packet.h). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "handlers/tftp/tftp_packet.h"

#define BIT(o) (1u << CAPSTAN_TFTP_OPT_##o)
/* A table entry from a string literal: bytes and length without the final NUL. */
#define CASE(lit, x) \
  { lit, sizeof(lit) - 1, x }

static capstan_tftp_reject_t parse(const char *bytes, size_t len, capstan_tftp_request_t *req) {
  return capstan_tftp_parse_request((const uint8_t *)bytes, len, req);
}

static void test_parse_plain(void **state) {
  capstan_tftp_request_t req;
  static const char pkt[] = "\0\1SEP001122334455.cnf.xml\0octet\0";
  assert_int_equal(parse(pkt, sizeof(pkt) - 1, &req), CAPSTAN_TFTP_REJECT_NONE);
  assert_int_equal(req.opcode, CAPSTAN_TFTP_OP_RRQ);
  assert_string_equal(req.filename, "SEP001122334455.cnf.xml");
  assert_int_equal(req.netascii, 0);
  assert_int_equal(req.options, 0);
  assert_int_equal(req.size, sizeof(pkt) - 1);

  static const char wrq[] = "\0\2up\0NetAscii\0";
  assert_int_equal(parse(wrq, sizeof(wrq) - 1, &req), CAPSTAN_TFTP_REJECT_NONE);
  assert_int_equal(req.opcode, CAPSTAN_TFTP_OP_WRQ);
  assert_int_equal(req.netascii, 1);
}

static void test_parse_options(void **state) {
  capstan_tftp_request_t req;
  static const char pkt[] =
      "\0\1f\0octet\0BLKSIZE\0001468\0tsize\0000\0Timeout\0003\0windowSize\00016\0";
  assert_int_equal(parse(pkt, sizeof(pkt) - 1, &req), CAPSTAN_TFTP_REJECT_NONE);
  assert_int_equal(req.options, BIT(BLKSIZE) | BIT(TSIZE) | BIT(TIMEOUT) | BIT(WINDOWSIZE));
  assert_int_equal(req.blksize, 1468);
  assert_int_equal(req.tsize, 0);
  assert_int_equal(req.timeout, 3);
  assert_int_equal(req.windowsize, 16);

  /* Range edges. */
  static const char edges[] = "\0\1f\0octet\0blksize\0008\0timeout\000255\0windowsize\00065535\0";
  assert_int_equal(parse(edges, sizeof(edges) - 1, &req), CAPSTAN_TFTP_REJECT_NONE);
  assert_int_equal(req.options, BIT(BLKSIZE) | BIT(TIMEOUT) | BIT(WINDOWSIZE));
  assert_int_equal(req.blksize, 8);
  assert_int_equal(req.timeout, 255);
  assert_int_equal(req.windowsize, 65535);
  static const char top[] = "\0\1f\0octet\0blksize\00065464\0";
  assert_int_equal(parse(top, sizeof(top) - 1, &req), CAPSTAN_TFTP_REJECT_NONE);
  assert_int_equal(req.options, BIT(BLKSIZE));
  assert_int_equal(req.blksize, 65464);
}

static void test_parse_ignored_options(void **state) {
  capstan_tftp_request_t req;
  struct {
    const char *bytes;
    size_t len;
    unsigned options;
  } cases[] = {
      /* out of range */
      CASE("\0\1f\0octet\0blksize\0007\0", 0),
      CASE("\0\1f\0octet\0blksize\00065465\0", 0),
      CASE("\0\1f\0octet\0timeout\0000\0", 0),
      CASE("\0\1f\0octet\0windowsize\0000\0", 0),
      /* not plain decimal */
      CASE("\0\1f\0octet\0blksize\000+512\0", 0),
      CASE("\0\1f\0octet\0blksize\000512 \0", 0),
      CASE("\0\1f\0octet\0blksize\0\0", 0),
      CASE("\0\1f\0octet\0tsize\000123456789012345678901\0", 0),
      /* duplicates drop both, the other option stays */
      CASE("\0\1f\0octet\0blksize\000512\0tsize\0000\0BLKSIZE\000512\0", BIT(TSIZE)),
      /* value-less last option */
      CASE("\0\1f\0octet\0tsize\0000\0blksize\0", BIT(TSIZE)),
      /* unknown options */
      CASE("\0\1f\0octet\0multicast\0\0tsize\0000\0", BIT(TSIZE)),
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    assert_int_equal(parse(cases[i].bytes, cases[i].len, &req), CAPSTAN_TFTP_REJECT_NONE);
    assert_int_equal(req.options, cases[i].options);
  }
}

static void test_parse_rejects(void **state) {
  capstan_tftp_request_t req;
  struct {
    const char *bytes;
    size_t len;
    capstan_tftp_reject_t why;
  } cases[] = {
      CASE("", CAPSTAN_TFTP_REJECT_MALFORMED),
      CASE("\0", CAPSTAN_TFTP_REJECT_MALFORMED),
      CASE("\0\1", CAPSTAN_TFTP_REJECT_MALFORMED),
      CASE("\0\1f", CAPSTAN_TFTP_REJECT_MALFORMED),
      CASE("\0\1f\0oct", CAPSTAN_TFTP_REJECT_MALFORMED),
      CASE("\0\1f\0octet\0blksize\000512", CAPSTAN_TFTP_REJECT_MALFORMED),
      CASE("\0\1f\0octet\0blksize", CAPSTAN_TFTP_REJECT_MALFORMED),
      CASE("\0\0f\0octet\0", CAPSTAN_TFTP_REJECT_BAD_OPCODE),
      CASE("\0\3\0\1", CAPSTAN_TFTP_REJECT_BAD_OPCODE),
      CASE("\1\1f\0octet\0", CAPSTAN_TFTP_REJECT_BAD_OPCODE),
      CASE("\0\1\0octet\0", CAPSTAN_TFTP_REJECT_BAD_NAME),
      CASE("\0\1a\tb\0octet\0", CAPSTAN_TFTP_REJECT_BAD_NAME),
      CASE("\0\1a\x7f\0octet\0", CAPSTAN_TFTP_REJECT_BAD_NAME),
      CASE("\0\1f\0mail\0", CAPSTAN_TFTP_REJECT_BAD_MODE),
      CASE("\0\1f\0\0", CAPSTAN_TFTP_REJECT_BAD_MODE),
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    assert_int_equal(parse(cases[i].bytes, cases[i].len, &req), cases[i].why);
  }
  /* Name length: 255 accepted, 256 refused; high bytes are passed on. */
  uint8_t pkt[CAPSTAN_TFTP_REQUEST_MAX + 8];
  pkt[0] = 0;
  pkt[1] = 1;
  memset(pkt + 2, 0xc3, 255);
  memcpy(pkt + 257, "\0octet\0", 7);
  assert_int_equal(capstan_tftp_parse_request(pkt, 264, &req), CAPSTAN_TFTP_REJECT_NONE);
  assert_int_equal(strlen(req.filename), 255);
  memset(pkt + 2, 'a', 256);
  memcpy(pkt + 258, "\0octet\0", 7);
  assert_int_equal(capstan_tftp_parse_request(pkt, 265, &req), CAPSTAN_TFTP_REJECT_BAD_NAME);
  /* Size: 1024 accepted (padding in an unknown option), 1025 refused. */
  memcpy(pkt, "\0\1f\0octet\0pad\0", 14);
  memset(pkt + 14, 'p', CAPSTAN_TFTP_REQUEST_MAX - 15);
  pkt[CAPSTAN_TFTP_REQUEST_MAX - 1] = 0;
  assert_int_equal(capstan_tftp_parse_request(pkt, CAPSTAN_TFTP_REQUEST_MAX, &req),
                   CAPSTAN_TFTP_REJECT_NONE);
  assert_int_equal(capstan_tftp_parse_request(pkt, CAPSTAN_TFTP_REQUEST_MAX + 1, &req),
                   CAPSTAN_TFTP_REJECT_OVERSIZED);
}

static void test_build(void **state) {
  uint8_t buf[200];
  size_t n = capstan_tftp_build_error(buf, sizeof(buf), 1, "File not found");
  assert_int_equal(n, 4 + 14 + 1);
  assert_memory_equal(buf, "\0\5\0\1File not found\0", n);
  assert_int_equal(capstan_tftp_build_error(buf, 10, 1, "File not found"), 0);

  capstan_tftp_request_t req = {.blksize = 1468, .tsize = 4096, .timeout = 3, .windowsize = 8};
  n = capstan_tftp_build_oack(buf, sizeof(buf), BIT(BLKSIZE) | BIT(TSIZE) | BIT(WINDOWSIZE), &req);
  static const char want[] = "\0\6blksize\0001468\0tsize\0004096\0windowsize\0008\0";
  assert_int_equal(n, sizeof(want) - 1);
  assert_memory_equal(buf, want, n);
  assert_int_equal(capstan_tftp_build_oack(buf, 12, BIT(BLKSIZE) | BIT(TSIZE), &req), 0);
}

static void test_netascii(void **state) {
  static const uint8_t in[] = "a\nb\r\n\rc";
  static const uint8_t want[] = "a\r\nb\r\0\r\n\r\0c";
  size_t len = sizeof(in) - 1, wlen = sizeof(want) - 1;
  assert_int_equal(capstan_tftp_netascii_size(in, len), wlen);
  /* Every block size, so pairs straddle block boundaries. */
  for (size_t blk = 1; blk <= wlen + 1; blk++) {
    capstan_tftp_netascii_t st;
    memset(&st, 0, sizeof(st));
    uint8_t out[32];
    size_t total = 0, got;
    while ((got = capstan_tftp_netascii_fill(&st, in, len, out + total, blk)) > 0) {
      total += got;
      if (got < blk) break;
    }
    assert_int_equal(total, wlen);
    assert_memory_equal(out, want, wlen);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_parse_plain),
      cmocka_unit_test(test_parse_options),
      cmocka_unit_test(test_parse_ignored_options),
      cmocka_unit_test(test_parse_rejects),
      cmocka_unit_test(test_build),
      cmocka_unit_test(test_netascii),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
