/* Unit tests for the CAPF wire codec (handlers/capf/wire.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <dirent.h>
#include <stdio.h>
#include <openssl/mem.h>

#include "core/base/error.h"
#include "handlers/capf/wire.h"

/* ---- helpers ------------------------------------------------------------- */

/* Parses hex ("55 01 ...", spaces ignored) into buf; returns length. */
static size_t unhex(const char *hex, uint8_t *buf, size_t cap) {
  size_t n = 0;
  int hi = -1;
  for (const char *p = hex; *p; p++) {
    int v;
    if (*p >= '0' && *p <= '9') {
      v = *p - '0';
    } else if (*p >= 'a' && *p <= 'f') {
      v = *p - 'a' + 10;
    } else if (*p >= 'A' && *p <= 'F') {
      v = *p - 'A' + 10;
    } else {
      continue;
    }
    if (hi < 0) {
      hi = v;
    } else {
      assert_true(n < cap);
      buf[n++] = (uint8_t)(hi << 4 | v);
      hi = -1;
    }
  }
  assert_int_equal(hi, -1);
  return n;
}

/* Builds a message with the builder; fails the test on error. */
typedef struct {
  uint8_t *data;
  size_t len;
} msg_buf_t;

static void msg_free(msg_buf_t *m) {
  OPENSSL_free(m->data);
  m->data = NULL;
}

static msg_buf_t finish_ok(capstan_capf_builder_t *b) {
  msg_buf_t m = {NULL, 0};
  assert_int_equal(capstan_capf_builder_finish(b, &m.data, &m.len), 0);
  assert_non_null(m.data);
  return m;
}

/* ---- exact bytes ---------------------------------------------------------- */

static void test_auth_request_exact_bytes(void **state) {
  (void)state;
  capstan_capf_builder_t b;
  assert_int_equal(capstan_capf_builder_begin(&b, CAPSTAN_CAPF_CMD_AUTH_REQUEST, 0x1a2b3c4d, 1), 0);
  assert_int_equal(capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_VERSION, 3), 0);
  assert_int_equal(capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_AUTH_TYPE, 0), 0);
  msg_buf_t m = finish_ok(&b);
  uint8_t want[64];
  size_t want_len = unhex(
      "55 01 1a2b3c4d 0008"
      "07 0001 03"
      "08 0001 00",
      want, sizeof(want));
  assert_int_equal(m.len, want_len);
  assert_memory_equal(m.data, want, want_len);

  capstan_capf_msg_t p;
  assert_int_equal(capstan_capf_parse(m.data, m.len, &p), 0);
  assert_int_equal(p.command, CAPSTAN_CAPF_CMD_AUTH_REQUEST);
  assert_int_equal(p.session_id, 0x1a2b3c4d);
  assert_int_equal(p.length, 8);
  assert_int_equal(p.element_count, 2);
  uint8_t v;
  assert_int_equal(capstan_capf_get_version(&p, &v), 0);
  assert_int_equal(v, 3);
  assert_int_equal(capstan_capf_get_auth_type(&p, &v), 0);
  assert_int_equal(v, 0);
  assert_int_equal(capstan_capf_get_reason(&p, &v), CAPSTAN_ENOENT);
  msg_free(&m);
}

static void test_auth_response_exact_bytes(void **state) {
  (void)state;
  capstan_capf_builder_t b;
  assert_int_equal(capstan_capf_builder_begin(&b, CAPSTAN_CAPF_CMD_AUTH_RESPONSE, 7, 0), 0);
  assert_int_equal(capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_REASON, 1), 0);
  assert_int_equal(capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_VERSION, 3), 0);
  assert_int_equal(capstan_capf_builder_add_string(&b, CAPSTAN_CAPF_EL_DEVICE_NAME, "SEP1", 4), 0);
  assert_int_equal(capstan_capf_builder_add_string(&b, CAPSTAN_CAPF_EL_AUTH_PASSWORD, "", 0), 0);
  msg_buf_t m = finish_ok(&b);
  uint8_t want[64];
  size_t want_len = unhex(
      "55 02 00000007 0014"
      "01 0001 01"
      "07 0001 03"
      "0d 0005 53455031 00"
      "0b 0001 00",
      want, sizeof(want));
  assert_int_equal(m.len, want_len);
  assert_memory_equal(m.data, want, want_len);

  capstan_capf_msg_t p;
  assert_int_equal(capstan_capf_parse(m.data, m.len, &p), 0);
  char name[CAPSTAN_CAPF_DEVICE_NAME_MAX + 1];
  assert_int_equal(capstan_capf_get_device_name(&p, name), 0);
  assert_string_equal(name, "SEP1");
  capstan_capf_slice_t pw;
  assert_int_equal(capstan_capf_get_auth_password(&p, &pw), 0);
  assert_int_equal(pw.len, 0);
  msg_free(&m);
}

static void test_certificate_exact_bytes(void **state) {
  (void)state;
  const uint8_t der[3] = {0x30, 0x01, 0x00};
  capstan_capf_builder_t b;
  assert_int_equal(capstan_capf_builder_begin(&b, CAPSTAN_CAPF_CMD_STORE_CERT_REQUEST, 1, 1), 0);
  assert_int_equal(capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_CERTIFICATE_TYPE, 1), 0);
  assert_int_equal(
      capstan_capf_builder_add_certificate(&b, CAPSTAN_CAPF_CERT_LSC, der, sizeof(der)), 0);
  msg_buf_t m = finish_ok(&b);
  uint8_t want[64];
  size_t want_len = unhex(
      "55 09 00000001 000f"
      "03 0001 01"
      "04 0008 01 0005 00 01 300100",
      want, sizeof(want));
  assert_int_equal(m.len, want_len);
  assert_memory_equal(m.data, want, want_len);
  msg_free(&m);
}

/* ---- round trips ---------------------------------------------------------- */

static void test_every_command_round_trip(void **state) {
  (void)state;
  for (int cmd = CAPSTAN_CAPF_CMD_MIN; cmd <= CAPSTAN_CAPF_CMD_MAX; cmd++) {
    capstan_capf_builder_t b;
    assert_int_equal(capstan_capf_builder_begin(&b, cmd, 0xdeadbeef, 0), 0);
    msg_buf_t m = finish_ok(&b);
    assert_int_equal(m.len, CAPSTAN_CAPF_HEADER_LEN);
    size_t ml = 0;
    assert_int_equal(capstan_capf_frame(m.data, m.len, &ml), 0);
    assert_int_equal(ml, m.len);
    capstan_capf_msg_t p;
    assert_int_equal(capstan_capf_parse(m.data, m.len, &p), 0);
    assert_int_equal(p.command, cmd);
    assert_int_equal(p.session_id, 0xdeadbeef);
    assert_int_equal(p.present, 0);
    assert_int_equal(p.element_count, 0);
    assert_string_not_equal(capstan_capf_command_name(cmd), "UNKNOWN");
    msg_free(&m);
  }
  assert_string_equal(capstan_capf_command_name(1), "AUTH_REQUEST");
  assert_string_equal(capstan_capf_command_name(23), "SIGN_CERT_RESPONSE");
  assert_string_equal(capstan_capf_command_name(0), "UNKNOWN");
  assert_string_equal(capstan_capf_command_name(24), "UNKNOWN");
}

static void test_every_element_round_trip(void **state) {
  (void)state;
  for (int tag = 0; tag <= 255; tag++) {
    if (!capstan_capf_element_is_known(tag)) continue;
    uint8_t value[40];
    for (size_t i = 0; i < sizeof(value); i++) value[i] = (uint8_t)(tag + i);
    capstan_capf_builder_t b;
    assert_int_equal(capstan_capf_builder_begin(&b, CAPSTAN_CAPF_CMD_AUTH_RESPONSE, 42, 0), 0);
    /* A different length per tag, so a mixed-up slot would show. */
    assert_int_equal(capstan_capf_builder_add_bytes(&b, tag, value, (size_t)tag), 0);
    assert_int_equal(capstan_capf_builder_add_u8(&b, 200, 9), 0); /* unknown tag */
    msg_buf_t m = finish_ok(&b);
    capstan_capf_msg_t p;
    assert_int_equal(capstan_capf_parse(m.data, m.len, &p), 0);
    assert_int_equal(p.present, 1u << tag);
    assert_true(capstan_capf_msg_has(&p, tag));
    assert_int_equal(p.unknown_count, 1);
    assert_int_equal(p.element_count, 2);
    capstan_capf_slice_t s;
    assert_int_equal(capstan_capf_get_bytes(&p, tag, &s), 0);
    assert_int_equal(s.len, (size_t)tag);
    assert_memory_equal(s.data, value, (size_t)tag);
    /* The slice points into the message buffer. */
    assert_true(s.data > m.data && s.data + s.len <= m.data + m.len);
    assert_string_not_equal(capstan_capf_element_name(tag), "UNKNOWN");
    msg_free(&m);
  }
  assert_false(capstan_capf_element_is_known(14));
  assert_false(capstan_capf_element_is_known(15));
  assert_false(capstan_capf_element_is_known(0));
  assert_true(capstan_capf_element_is_known(21)); /* CERT_REQUEST, extension */
  assert_false(capstan_capf_element_is_known(22));
  assert_string_equal(capstan_capf_element_name(20), "SHA2_SIGNED_DATA");
}

static void test_all_typed_round_trip(void **state) {
  (void)state;
  uint8_t der[300];
  for (size_t i = 0; i < sizeof(der); i++) der[i] = (uint8_t)(i * 7);
  const uint8_t sig[] = {1, 2, 3, 4, 5};
  const uint8_t sig2[] = {9, 8, 7};
  const uint8_t spki[] = {0x30, 0x03, 0x02, 0x01, 0x00};
  capstan_capf_builder_t b;
  assert_int_equal(capstan_capf_builder_begin(&b, CAPSTAN_CAPF_CMD_AUTH_RESPONSE, 5, 0), 0);
  assert_int_equal(capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_REASON, 1), 0);
  assert_int_equal(capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_VERSION, 3), 0);
  assert_int_equal(
      capstan_capf_builder_add_string(&b, CAPSTAN_CAPF_EL_DEVICE_NAME, "SEP58971ECC97C1", 15), 0);
  assert_int_equal(capstan_capf_builder_add_string(&b, CAPSTAN_CAPF_EL_AUTH_PASSWORD, "s3cr3t", 6),
                   0);
  assert_int_equal(
      capstan_capf_builder_add_certificate(&b, CAPSTAN_CAPF_CERT_MIC, der, sizeof(der)), 0);
  assert_int_equal(capstan_capf_builder_add_bytes(&b, CAPSTAN_CAPF_EL_SIGNED_DATA, sig, 5), 0);
  assert_int_equal(capstan_capf_builder_add_sha2_signed_data(&b, 3, sig2, 3), 0);
  assert_int_equal(capstan_capf_builder_add_sudi(&b, der, 10, sig, 5, sig2, 3), 0);
  assert_int_equal(capstan_capf_builder_add_bytes(&b, CAPSTAN_CAPF_EL_PUBLIC_KEY, spki, 5), 0);
  assert_int_equal(capstan_capf_builder_add_u16(&b, CAPSTAN_CAPF_EL_KEY_SIZE, 2048), 0);
  assert_int_equal(capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_KEY_TYPE, 1), 0);
  assert_int_equal(capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_EC_CURVE, 2), 0);
  assert_int_equal(capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_CERTIFICATE_TYPE, 2), 0);
  assert_int_equal(capstan_capf_builder_add_u16(&b, CAPSTAN_CAPF_EL_RETRY_DELAY, 600), 0);
  assert_int_equal(capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_AUTH_TYPE, 4), 0);
  msg_buf_t m = finish_ok(&b);

  capstan_capf_msg_t p;
  assert_int_equal(capstan_capf_parse(m.data, m.len, &p), 0);
  assert_int_equal(p.element_count, 15);
  uint8_t u8;
  uint16_t u16;
  assert_int_equal(capstan_capf_get_reason(&p, &u8), 0);
  assert_int_equal(u8, 1);
  assert_int_equal(capstan_capf_get_version(&p, &u8), 0);
  assert_int_equal(u8, 3);
  assert_int_equal(capstan_capf_get_auth_type(&p, &u8), 0);
  assert_int_equal(u8, 4);
  assert_int_equal(capstan_capf_get_key_type(&p, &u8), 0);
  assert_int_equal(u8, 1);
  assert_int_equal(capstan_capf_get_ec_curve(&p, &u8), 0);
  assert_int_equal(u8, 2);
  assert_int_equal(capstan_capf_get_certificate_type(&p, &u8), 0);
  assert_int_equal(u8, 2);
  assert_int_equal(capstan_capf_get_key_size(&p, &u16), 0);
  assert_int_equal(u16, 2048);
  assert_int_equal(capstan_capf_get_retry_delay(&p, &u16), 0);
  assert_int_equal(u16, 600);
  char name[CAPSTAN_CAPF_DEVICE_NAME_MAX + 1];
  assert_int_equal(capstan_capf_get_device_name(&p, name), 0);
  assert_string_equal(name, "SEP58971ECC97C1");
  capstan_capf_slice_t s, s1, s2, c;
  assert_int_equal(capstan_capf_get_auth_password(&p, &s), 0);
  assert_int_equal(s.len, 6);
  assert_memory_equal(s.data, "s3cr3t", 6);
  uint8_t type = 0;
  assert_int_equal(capstan_capf_get_certificate(&p, &type, &s), 0);
  assert_int_equal(type, CAPSTAN_CAPF_CERT_MIC);
  assert_int_equal(s.len, sizeof(der));
  assert_memory_equal(s.data, der, sizeof(der));
  assert_int_equal(capstan_capf_get_signed_data(&p, &s), 0);
  assert_int_equal(s.len, 5);
  assert_memory_equal(s.data, sig, 5);
  assert_int_equal(capstan_capf_get_sha2_signed_data(&p, &u8, &s), 0);
  assert_int_equal(u8, 3);
  assert_int_equal(s.len, 3);
  assert_memory_equal(s.data, sig2, 3);
  assert_int_equal(capstan_capf_get_public_key(&p, &s), 0);
  assert_memory_equal(s.data, spki, 5);
  assert_int_equal(capstan_capf_get_sudi_data(&p, &s), 0);
  assert_int_equal(s.len, 9 + 10 + 5 + 3);
  assert_int_equal(capstan_capf_parse_sudi(s, &c, &s1, &s2), 0);
  assert_int_equal(c.len, 10);
  assert_memory_equal(c.data, der, 10);
  assert_int_equal(s1.len, 5);
  assert_memory_equal(s1.data, sig, 5);
  assert_int_equal(s2.len, 3);
  assert_memory_equal(s2.data, sig2, 3);

  char desc[256];
  capstan_capf_msg_describe(&p, desc, sizeof(desc));
  assert_non_null(strstr(desc, "AUTH_RESPONSE session=0x00000005 elements=REASON,"));
  assert_null(strstr(desc, "s3cr3t"));
  /* Truncation stays NUL-terminated. */
  capstan_capf_msg_describe(&p, desc, 10);
  assert_int_equal(strlen(desc), 9);
  msg_free(&m);
}

/* ---- framing -------------------------------------------------------------- */

static void test_frame_need_more_every_prefix(void **state) {
  (void)state;
  uint8_t msg[64];
  size_t len = unhex("55 01 1a2b3c4d 0008 07000103 08000100", msg, sizeof(msg));
  /* Followed by the start of a second message, which must not count. */
  uint8_t stream[80];
  memcpy(stream, msg, len);
  memcpy(stream + len, msg, 5);
  for (size_t i = 0; i < len; i++) {
    size_t ml = 12345;
    assert_int_equal(capstan_capf_frame(stream, i, &ml), CAPSTAN_CAPF_NEED_MORE);
    assert_int_equal(ml, 12345);
  }
  for (size_t extra = 0; extra <= 5; extra++) {
    size_t ml = 0;
    assert_int_equal(capstan_capf_frame(stream, len + extra, &ml), 0);
    assert_int_equal(ml, len);
  }
  /* The second message in the stream, once its header is complete, still
   * needs its elements. */
  size_t ml = 0;
  assert_int_equal(capstan_capf_frame(stream + len, 5, &ml), CAPSTAN_CAPF_NEED_MORE);
}

static void test_frame_malformed_and_caps(void **state) {
  (void)state;
  uint8_t bad[1] = {0x16}; /* a TLS record, for instance */
  size_t ml = 0;
  assert_int_equal(capstan_capf_frame(bad, 1, &ml), CAPSTAN_EPROTO);
  uint8_t hdr[8] = {0x55, 0x02, 0, 0, 0, 1, 0xff, 0xff};
  /* Full-size message: allowed by default, needs more bytes. */
  assert_int_equal(capstan_capf_frame(hdr, 8, &ml), CAPSTAN_CAPF_NEED_MORE);
  /* With a smaller cap, refused as soon as the header is in. */
  assert_int_equal(capstan_capf_frame_max(hdr, 7, 4096, &ml), CAPSTAN_CAPF_NEED_MORE);
  assert_int_equal(capstan_capf_frame_max(hdr, 8, 4096, &ml), CAPSTAN_ERANGE);
  /* Exactly at the cap is fine. */
  uint8_t at_cap[8] = {0x55, 0x02, 0, 0, 0, 1, 0x0f, 0xf8}; /* 4088 + 8 = 4096 */
  assert_int_equal(capstan_capf_frame_max(at_cap, 8, 4096, &ml), CAPSTAN_CAPF_NEED_MORE);
  assert_int_equal(capstan_capf_frame_max(at_cap, 8, 4095, &ml), CAPSTAN_ERANGE);
  /* A cap above the protocol's own is clamped to it; the largest message
   * still frames. */
  uint8_t *big = calloc(1, CAPSTAN_CAPF_MAX_MESSAGE);
  assert_non_null(big);
  memcpy(big, hdr, 8);
  assert_int_equal(capstan_capf_frame_max(big, CAPSTAN_CAPF_MAX_MESSAGE, SIZE_MAX, &ml), 0);
  assert_int_equal(ml, CAPSTAN_CAPF_MAX_MESSAGE);
  /* 65535 bytes of zero-tag elements: each is tag 0 len 0 (3 bytes), 21845 of them. */
  capstan_capf_msg_t p;
  assert_int_equal(capstan_capf_parse(big, ml, &p), 0);
  assert_int_equal(p.unknown_count, 21845);
  free(big);
  /* Empty input needs more. */
  assert_int_equal(capstan_capf_frame(NULL, 0, &ml), CAPSTAN_CAPF_NEED_MORE);
}

/* ---- hostile input -------------------------------------------------------- */

static void expect_parse_fails(const char *hex) {
  uint8_t buf[256];
  size_t len = unhex(hex, buf, sizeof(buf));
  capstan_capf_msg_t p;
  memset(&p, 0xa5, sizeof(p));
  assert_int_equal(capstan_capf_parse(buf, len, &p), CAPSTAN_EPROTO);
  /* Zeroed on error. */
  assert_int_equal(p.present, 0);
  assert_int_equal(p.command, 0);
}

static void parse_ok(const char *hex, uint8_t *buf, size_t cap, capstan_capf_msg_t *p) {
  size_t len = unhex(hex, buf, cap);
  assert_int_equal(capstan_capf_parse(buf, len, p), 0);
}

static void test_parse_truncated_header(void **state) {
  (void)state;
  const char *full = "55 01 00000001 0000";
  char hex[64];
  /* Every strict prefix of a valid empty message is malformed for parse. */
  for (size_t n = 0; n < strlen(full); n++) {
    memcpy(hex, full, n);
    hex[n] = '\0';
    /* Skip prefixes that cut a hex pair in half. */
    size_t digits = 0;
    for (size_t i = 0; i < n; i++) digits += hex[i] != ' ';
    if (digits % 2) continue;
    expect_parse_fails(hex);
  }
  uint8_t buf[16];
  capstan_capf_msg_t p;
  parse_ok(full, buf, sizeof(buf), &p);
}

static void test_parse_bad_header_fields(void **state) {
  (void)state;
  expect_parse_fails("54 01 00000001 0000");             /* protocol id */
  expect_parse_fails("55 00 00000001 0000");             /* command 0 */
  expect_parse_fails("55 18 00000001 0000");             /* command 24 */
  expect_parse_fails("55 ff 00000001 0000");             /* command 255 */
  expect_parse_fails("55 01 00000001 0004 07000103 00"); /* length too short */
  expect_parse_fails("55 01 00000001 0005 07000103");    /* length too long */
  expect_parse_fails("55 01 00000001 0003 07000103");    /* length cuts an element */
  expect_parse_fails("55 01 00000001 0000 00");          /* left over */
}

static void test_parse_element_overrun(void **state) {
  (void)state;
  expect_parse_fails("55 02 00000001 0004 07 0002 03"); /* value overruns the area */
  expect_parse_fails("55 02 00000001 0002 07 00");      /* element header truncated */
  expect_parse_fails("55 02 00000001 0001 07");         /* only a tag */
  expect_parse_fails("55 02 00000001 0003 07 ffff");    /* huge length */
  /* An element that would fit the buffer but not the area. */
  expect_parse_fails("55 02 00000001 0004 07 0002 03 04");
}

static void test_parse_zero_length_and_unknown(void **state) {
  (void)state;
  uint8_t buf[64];
  capstan_capf_msg_t p;
  parse_ok("55 11 00000001 0006 0e 0000 63 0000", buf, sizeof(buf), &p);
  assert_int_equal(p.command, CAPSTAN_CAPF_CMD_REQUEST_IN_PROGRESS);
  assert_int_equal(p.present, 0);
  assert_int_equal(p.unknown_count, 2);
  /* A zero-length known element is present but fails typed accessors. */
  parse_ok("55 02 00000001 000f 01 0000 07 0000 0d 0000 0b 0000 09 0000", buf, sizeof(buf), &p);
  assert_true(capstan_capf_msg_has(&p, CAPSTAN_CAPF_EL_REASON));
  uint8_t u8;
  uint16_t u16;
  capstan_capf_slice_t s;
  char name[CAPSTAN_CAPF_DEVICE_NAME_MAX + 1];
  assert_int_equal(capstan_capf_get_reason(&p, &u8), CAPSTAN_EPROTO);
  assert_int_equal(capstan_capf_get_version(&p, &u8), CAPSTAN_EPROTO);
  assert_int_equal(capstan_capf_get_device_name(&p, name), CAPSTAN_EPROTO);
  assert_int_equal(capstan_capf_get_auth_password(&p, &s), CAPSTAN_EPROTO);
  assert_int_equal(capstan_capf_get_public_key(&p, &s), CAPSTAN_EPROTO);
  assert_int_equal(capstan_capf_get_bytes(&p, CAPSTAN_CAPF_EL_PUBLIC_KEY, &s), 0);
  assert_int_equal(s.len, 0);
  assert_int_equal(capstan_capf_get_key_size(&p, &u16), CAPSTAN_ENOENT);
  /* Unknown tags may repeat; known tags interleave with them. */
  parse_ok("55 0a 00000001 000a 63 0000 01 0001 01 63 0000", buf, sizeof(buf), &p);
  assert_int_equal(p.unknown_count, 2);
  assert_int_equal(capstan_capf_get_reason(&p, &u8), 0);
  assert_int_equal(u8, 1);
}

static void test_parse_duplicate_known(void **state) {
  (void)state;
  expect_parse_fails("55 02 00000001 0008 01 0001 01 01 0001 01");
  expect_parse_fails("55 02 00000001 000a 01 0001 01 63 0000 01 0001 07");
}

static void test_typed_wrong_lengths(void **state) {
  (void)state;
  uint8_t buf[64];
  capstan_capf_msg_t p;
  uint8_t u8;
  uint16_t u16;
  parse_ok("55 03 00000001 0011 01 0002 0101 0a 0001 08 11 0001 02 12 0001 03", buf, sizeof(buf),
           &p);
  assert_int_equal(capstan_capf_get_reason(&p, &u8), CAPSTAN_EPROTO);    /* 2 bytes */
  assert_int_equal(capstan_capf_get_key_size(&p, &u16), CAPSTAN_EPROTO); /* 1 byte */
  assert_int_equal(capstan_capf_get_key_type(&p, &u8), CAPSTAN_EPROTO);  /* value 2 */
  assert_int_equal(capstan_capf_get_ec_curve(&p, &u8), CAPSTAN_EPROTO);  /* value 3 */
  parse_ok("55 03 00000001 000c 0a 0003 000800 0c 0003 000001", buf, sizeof(buf), &p);
  assert_int_equal(capstan_capf_get_key_size(&p, &u16), CAPSTAN_EPROTO);
  assert_int_equal(capstan_capf_get_retry_delay(&p, &u16), CAPSTAN_EPROTO);
  parse_ok("55 09 00000001 0004 03 0001 00", buf, sizeof(buf), &p);
  assert_int_equal(capstan_capf_get_certificate_type(&p, &u8), CAPSTAN_EPROTO);
}

static void test_strings(void **state) {
  (void)state;
  uint8_t buf[256];
  capstan_capf_msg_t p;
  char name[CAPSTAN_CAPF_DEVICE_NAME_MAX + 1];
  capstan_capf_slice_t s;
  /* No NUL. */
  parse_ok("55 02 00000001 000e 0d 0004 53455031 0b 0004 61626364", buf, sizeof(buf), &p);
  assert_int_equal(capstan_capf_get_device_name(&p, name), CAPSTAN_EPROTO);
  assert_int_equal(capstan_capf_get_auth_password(&p, &s), CAPSTAN_EPROTO);
  /* Interior NUL. */
  parse_ok("55 02 00000001 0010 0d 0005 53450031 00 0b 0005 61006364 00", buf, sizeof(buf), &p);
  assert_int_equal(capstan_capf_get_device_name(&p, name), CAPSTAN_EPROTO);
  assert_int_equal(capstan_capf_get_auth_password(&p, &s), CAPSTAN_EPROTO);
  /* Two trailing NULs. */
  parse_ok("55 02 00000001 0010 0d 0005 534550 0000 0b 0005 616263 0000", buf, sizeof(buf), &p);
  assert_int_equal(capstan_capf_get_device_name(&p, name), CAPSTAN_EPROTO);
  assert_int_equal(capstan_capf_get_auth_password(&p, &s), CAPSTAN_EPROTO);
  /* Empty: name must not be empty, password may be. */
  parse_ok("55 02 00000001 0008 0d 0001 00 0b 0001 00", buf, sizeof(buf), &p);
  assert_int_equal(capstan_capf_get_device_name(&p, name), CAPSTAN_EPROTO);
  assert_int_equal(capstan_capf_get_auth_password(&p, &s), 0);
  assert_int_equal(s.len, 0);
  /* Non-printable and space in a name; UTF-8 is fine in a password. */
  parse_ok("55 02 00000001 0011 0d 0005 5345 0a 31 00 0b 0006 c3a9 20 7a 7a 00", buf, sizeof(buf),
           &p);
  assert_int_equal(capstan_capf_get_device_name(&p, name), CAPSTAN_EPROTO);
  assert_int_equal(capstan_capf_get_auth_password(&p, &s), 0);
  assert_int_equal(s.len, 5);
  parse_ok("55 02 00000001 0009 0d 0006 5345 20 31 31 00", buf, sizeof(buf), &p);
  assert_int_equal(capstan_capf_get_device_name(&p, name), CAPSTAN_EPROTO);
  /* Length limits: 64 ok, 65 refused. */
  for (size_t n = 63; n <= 66; n++) {
    char str[80];
    memset(str, 'A', n);
    capstan_capf_builder_t b;
    assert_int_equal(capstan_capf_builder_begin(&b, CAPSTAN_CAPF_CMD_AUTH_RESPONSE, 1, 0), 0);
    assert_int_equal(capstan_capf_builder_add_string(&b, CAPSTAN_CAPF_EL_DEVICE_NAME, str, n), 0);
    assert_int_equal(capstan_capf_builder_add_string(&b, CAPSTAN_CAPF_EL_AUTH_PASSWORD, str, n), 0);
    msg_buf_t m = finish_ok(&b);
    assert_int_equal(capstan_capf_parse(m.data, m.len, &p), 0);
    int want = n <= 64 ? 0 : CAPSTAN_EPROTO;
    assert_int_equal(capstan_capf_get_device_name(&p, name), want);
    if (want == 0) assert_int_equal(strlen(name), n);
    assert_int_equal(capstan_capf_get_auth_password(&p, &s), want);
    msg_free(&m);
  }
  /* The builder refuses an interior NUL. */
  capstan_capf_builder_t b;
  assert_int_equal(capstan_capf_builder_begin(&b, CAPSTAN_CAPF_CMD_AUTH_RESPONSE, 1, 0), 0);
  assert_int_equal(capstan_capf_builder_add_string(&b, CAPSTAN_CAPF_EL_DEVICE_NAME, "a\0b", 3),
                   CAPSTAN_EINVAL);
  capstan_capf_builder_cleanup(&b);
}

static void test_certificate_prefix(void **state) {
  (void)state;
  uint8_t buf[64];
  capstan_capf_msg_t p;
  uint8_t type;
  capstan_capf_slice_t der;
  /* Good: 3 DER bytes, prefix length 5. */
  parse_ok("55 0c 00000001 000b 04 0008 01 0005 00 01 aabbcc", buf, sizeof(buf), &p);
  assert_int_equal(capstan_capf_get_certificate(&p, &type, &der), 0);
  assert_int_equal(type, 1);
  assert_int_equal(der.len, 3);
  assert_int_equal(der.data[0], 0xaa);
  /* NULL outputs allowed. */
  assert_int_equal(capstan_capf_get_certificate(&p, NULL, NULL), 0);
  /* Prefix length says 4 / 6 (lengths disagree). */
  parse_ok("55 0c 00000001 000b 04 0008 01 0004 00 01 aabbcc", buf, sizeof(buf), &p);
  assert_int_equal(capstan_capf_get_certificate(&p, &type, &der), CAPSTAN_EPROTO);
  parse_ok("55 0c 00000001 000b 04 0008 01 0006 00 01 aabbcc", buf, sizeof(buf), &p);
  assert_int_equal(capstan_capf_get_certificate(&p, &type, &der), CAPSTAN_EPROTO);
  /* Prefix length equals the DER length (the "+ 2" forgotten). */
  parse_ok("55 0c 00000001 000b 04 0008 01 0003 00 01 aabbcc", buf, sizeof(buf), &p);
  assert_int_equal(capstan_capf_get_certificate(&p, &type, &der), CAPSTAN_EPROTO);
  /* Wrong marker byte, wrong zero byte, bad type. */
  parse_ok("55 0c 00000001 000b 04 0008 02 0005 00 01 aabbcc", buf, sizeof(buf), &p);
  assert_int_equal(capstan_capf_get_certificate(&p, &type, &der), CAPSTAN_EPROTO);
  parse_ok("55 0c 00000001 000b 04 0008 01 0005 01 01 aabbcc", buf, sizeof(buf), &p);
  assert_int_equal(capstan_capf_get_certificate(&p, &type, &der), CAPSTAN_EPROTO);
  parse_ok("55 0c 00000001 000b 04 0008 01 0005 00 03 aabbcc", buf, sizeof(buf), &p);
  assert_int_equal(capstan_capf_get_certificate(&p, &type, &der), CAPSTAN_EPROTO);
  /* Prefix only, no DER; and shorter than the prefix. */
  parse_ok("55 0c 00000001 0008 04 0005 01 0002 00 01", buf, sizeof(buf), &p);
  assert_int_equal(capstan_capf_get_certificate(&p, &type, &der), CAPSTAN_EPROTO);
  parse_ok("55 0c 00000001 0007 04 0004 01 0002 00", buf, sizeof(buf), &p);
  assert_int_equal(capstan_capf_get_certificate(&p, &type, &der), CAPSTAN_EPROTO);
  /* Absent. */
  parse_ok("55 0c 00000001 0000", buf, sizeof(buf), &p);
  assert_int_equal(capstan_capf_get_certificate(&p, &type, &der), CAPSTAN_ENOENT);
}

/* capstan_capf_validate: every known element judged, needed or not. */
static void expect_valid(const char *hex) {
  uint8_t buf[256];
  capstan_capf_msg_t p;
  parse_ok(hex, buf, sizeof(buf), &p);
  int bad = -1;
  assert_int_equal(capstan_capf_validate(&p, &bad), 0);
  assert_int_equal(bad, -1);
}

static void expect_invalid(const char *hex, int tag) {
  uint8_t buf[256];
  capstan_capf_msg_t p;
  parse_ok(hex, buf, sizeof(buf), &p);
  int bad = -1;
  assert_int_equal(capstan_capf_validate(&p, &bad), CAPSTAN_EPROTO);
  assert_int_equal(bad, tag);
  assert_int_equal(capstan_capf_validate(&p, NULL), CAPSTAN_EPROTO);
}

static void test_validate(void **state) {
  (void)state;
  /* An AUTH_RESPONSE as a phone sends it, a null string, unknown tags. */
  expect_valid(
      "55 02 00000001 0022 01 0001 01 07 0001 03 0d 0010 534550303031313232333334343535 00"
      " 0b 0001 00 63 0000");
  expect_valid("55 02 00000001 0000");
  /* The case: a null-string AUTH_RESPONSE with a CERTIFICATE whose
   * prefix lies (0x01 0xffff 0x00 0x01, then two bytes). */
  expect_invalid(
      "55 02 00000001 001d 0d 0010 534550303031313232333334343535 00"
      " 04 0007 01 ffff 00 01 aabb",
      CAPSTAN_CAPF_EL_CERTIFICATE);
  expect_valid("55 02 00000001 000b 04 0008 01 0005 00 01 aabbcc");
  expect_invalid("55 02 00000001 0003 04 0000", CAPSTAN_CAPF_EL_CERTIFICATE);
  /* 1-byte elements: 0 or 2 bytes. */
  expect_invalid("55 02 00000001 0003 01 0000", CAPSTAN_CAPF_EL_REASON);
  expect_invalid("55 02 00000001 0005 07 0002 0303", CAPSTAN_CAPF_EL_VERSION);
  expect_invalid("55 02 00000001 0005 08 0002 0001", CAPSTAN_CAPF_EL_AUTH_TYPE);
  expect_invalid("55 02 00000001 0004 03 0001 03", CAPSTAN_CAPF_EL_CERTIFICATE_TYPE);
  expect_invalid("55 02 00000001 0004 11 0001 02", CAPSTAN_CAPF_EL_KEY_TYPE);
  expect_invalid("55 02 00000001 0004 12 0001 03", CAPSTAN_CAPF_EL_EC_CURVE);
  /* A version above 3 is well formed: the session refuses it. */
  expect_valid("55 02 00000001 0004 07 0001 04");
  /* u16 elements. */
  expect_invalid("55 04 00000001 0004 0a 0001 08", CAPSTAN_CAPF_EL_KEY_SIZE);
  expect_invalid("55 04 00000001 0006 0c 0003 000001", CAPSTAN_CAPF_EL_RETRY_DELAY);
  /* Strings: without the NUL, an interior NUL, too long. */
  expect_invalid("55 02 00000001 0004 0b 0001 31", CAPSTAN_CAPF_EL_AUTH_PASSWORD);
  expect_invalid("55 02 00000001 0007 0b 0004 31003200", CAPSTAN_CAPF_EL_AUTH_PASSWORD);
  expect_invalid("55 02 00000001 0006 0d 0003 534550", CAPSTAN_CAPF_EL_DEVICE_NAME);
  expect_invalid("55 02 00000001 0004 0d 0001 00", CAPSTAN_CAPF_EL_DEVICE_NAME);
  /* SHA2_SIGNED_DATA and SUDI_DATA layouts. */
  expect_valid("55 02 00000001 0009 14 0006 03 0003 aabbcc");
  expect_invalid("55 02 00000001 0009 14 0006 03 0004 aabbcc", CAPSTAN_CAPF_EL_SHA2_SIGNED_DATA);
  expect_invalid("55 02 00000001 0009 14 0006 07 0003 aabbcc", CAPSTAN_CAPF_EL_SHA2_SIGNED_DATA);
  expect_valid("55 02 00000001 000f 10 000c 00 0001 aa 01 0001 bb 03 0001 cc");
  expect_invalid("55 02 00000001 000e 10 000b 00 0001 aa 01 0001 bb 03 0001",
                 CAPSTAN_CAPF_EL_SUDI_DATA);
  expect_invalid("55 02 00000001 0003 10 0000", CAPSTAN_CAPF_EL_SUDI_DATA);
  /* Raw values whose layout the protocol leaves open pass, even empty. */
  expect_valid("55 04 00000001 000f 09 0000 06 0000 02 0000 05 0000 13 0000");
  /* The first malformed element is named. */
  expect_invalid("55 02 00000001 0006 01 0000 07 0000", CAPSTAN_CAPF_EL_REASON);
}

static void test_sha2_and_sudi(void **state) {
  (void)state;
  uint8_t buf[128];
  capstan_capf_msg_t p;
  uint8_t id;
  capstan_capf_slice_t sig;
  parse_ok("55 02 00000001 0008 14 0005 03 0002 abcd", buf, sizeof(buf), &p);
  assert_int_equal(capstan_capf_get_sha2_signed_data(&p, &id, &sig), 0);
  assert_int_equal(id, 3);
  assert_int_equal(sig.len, 2);
  parse_ok("55 02 00000001 0008 14 0005 03 0003 abcd", buf, sizeof(buf), &p);
  assert_int_equal(capstan_capf_get_sha2_signed_data(&p, &id, &sig), CAPSTAN_EPROTO);
  parse_ok("55 02 00000001 0008 14 0005 03 0001 abcd", buf, sizeof(buf), &p);
  assert_int_equal(capstan_capf_get_sha2_signed_data(&p, &id, &sig), CAPSTAN_EPROTO);
  parse_ok("55 02 00000001 0008 14 0005 04 0002 abcd", buf, sizeof(buf), &p);
  assert_int_equal(capstan_capf_get_sha2_signed_data(&p, &id, &sig), CAPSTAN_EPROTO);
  parse_ok("55 02 00000001 0006 14 0003 03 0000", buf, sizeof(buf), &p);
  assert_int_equal(capstan_capf_get_sha2_signed_data(&p, &id, &sig), CAPSTAN_EPROTO);

  uint8_t raw[64];
  capstan_capf_slice_t s = {raw, 0}, c, s1, s2;
  s.len = unhex("00 0002 3000 01 0001 aa 03 0001 bb", raw, sizeof(raw));
  assert_int_equal(capstan_capf_parse_sudi(s, &c, &s1, &s2), 0);
  assert_int_equal(c.len, 2);
  assert_int_equal(s1.data[0], 0xaa);
  assert_int_equal(s2.data[0], 0xbb);
  s.len = unhex("00 0002 3000 01 0001 aa 03 0001 bb 00", raw, sizeof(raw)); /* left over */
  assert_int_equal(capstan_capf_parse_sudi(s, &c, &s1, &s2), CAPSTAN_EPROTO);
  s.len = unhex("00 0002 3000 03 0001 aa 01 0001 bb", raw, sizeof(raw)); /* order */
  assert_int_equal(capstan_capf_parse_sudi(s, &c, &s1, &s2), CAPSTAN_EPROTO);
  s.len = unhex("00 0002 3000 01 0001 aa 03 0002 bb", raw, sizeof(raw)); /* overrun */
  assert_int_equal(capstan_capf_parse_sudi(s, &c, &s1, &s2), CAPSTAN_EPROTO);
  s.len = unhex("00 0000 01 0001 aa 03 0001 bb", raw, sizeof(raw)); /* empty cert */
  assert_int_equal(capstan_capf_parse_sudi(s, &c, &s1, &s2), CAPSTAN_EPROTO);
  s.len = 0;
  assert_int_equal(capstan_capf_parse_sudi(s, &c, &s1, &s2), CAPSTAN_EPROTO);
}

/* ---- builder policy and limits -------------------------------------------- */

static void test_builder_server_side_policy(void **state) {
  (void)state;
  capstan_capf_builder_t b;
  /* Server may not send phone commands. */
  assert_int_equal(capstan_capf_builder_begin(&b, CAPSTAN_CAPF_CMD_AUTH_RESPONSE, 1, 1),
                   CAPSTAN_EINVAL);
  uint8_t *out = NULL;
  size_t out_len = 0;
  assert_int_equal(capstan_capf_builder_finish(&b, &out, &out_len), CAPSTAN_EINVAL);
  assert_null(out);
  /* Unknown commands are refused on both sides. */
  assert_int_equal(capstan_capf_builder_begin(&b, 0, 1, 0), CAPSTAN_EINVAL);
  capstan_capf_builder_cleanup(&b);
  assert_int_equal(capstan_capf_builder_begin(&b, 24, 1, 0), CAPSTAN_EINVAL);
  capstan_capf_builder_cleanup(&b);

  const int server_cmds[] = {1, 3, 9, 11, 13, 15, 16, 22};
  for (size_t i = 0; i < sizeof(server_cmds) / sizeof(server_cmds[0]); i++) {
    int cmd = server_cmds[i];
    for (int tag = 0; tag <= 255; tag++) {
      assert_int_equal(capstan_capf_builder_begin(&b, cmd, 1, 1), 0);
      int allowed = cmd != CAPSTAN_CAPF_CMD_SIGN_CERT_REQUEST &&
                    (tag == 1 || tag == 3 || tag == 4 || tag == 7 || tag == 8 || tag == 10 ||
                     tag == 17 || tag == 18 || (tag == 12 && cmd == CAPSTAN_CAPF_CMD_RETRY_LATER));
      assert_int_equal(capstan_capf_server_may_send(cmd, tag), allowed);
      int rc = capstan_capf_builder_add_u8(&b, tag, 0);
      assert_int_equal(rc, allowed ? 0 : CAPSTAN_EINVAL);
      /* Sticky: the next valid add fails too, and finish gives nothing. */
      if (!allowed) {
        assert_int_equal(capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_REASON, 0),
                         CAPSTAN_EINVAL);
        out = NULL;
        assert_int_equal(capstan_capf_builder_finish(&b, &out, &out_len), CAPSTAN_EINVAL);
        assert_null(out);
      } else {
        capstan_capf_builder_cleanup(&b);
        capstan_capf_builder_cleanup(&b); /* twice is safe */
      }
    }
  }
  /* RETRY_LATER carries RETRY_DELAY. */
  assert_int_equal(capstan_capf_builder_begin(&b, CAPSTAN_CAPF_CMD_RETRY_LATER, 9, 1), 0);
  assert_int_equal(capstan_capf_builder_add_u16(&b, CAPSTAN_CAPF_EL_RETRY_DELAY, 30), 0);
  msg_buf_t m = finish_ok(&b);
  uint8_t want[16];
  size_t want_len = unhex("55 10 00000009 0005 0c 0002 001e", want, sizeof(want));
  assert_int_equal(m.len, want_len);
  assert_memory_equal(m.data, want, want_len);
  msg_free(&m);
  /* Without server_side any tag goes (the phone and tests need that). */
  assert_int_equal(capstan_capf_builder_begin(&b, CAPSTAN_CAPF_CMD_END_SESSION, 1, 0), 0);
  assert_int_equal(capstan_capf_builder_add_u8(&b, CAPSTAN_CAPF_EL_SIGNED_DATA, 0), 0);
  capstan_capf_builder_cleanup(&b);
}

static void test_builder_size_limits(void **state) {
  (void)state;
  uint8_t *big = calloc(1, 70000);
  assert_non_null(big);
  capstan_capf_builder_t b;
  uint8_t *out = NULL;
  size_t out_len = 0;
  /* The largest single element: 65535 - 3 bytes of value. */
  assert_int_equal(capstan_capf_builder_begin(&b, CAPSTAN_CAPF_CMD_FETCH_CERT_RESPONSE, 1, 0), 0);
  assert_int_equal(capstan_capf_builder_add_bytes(&b, CAPSTAN_CAPF_EL_PUBLIC_KEY, big, 65532), 0);
  assert_int_equal(capstan_capf_builder_finish(&b, &out, &out_len), 0);
  assert_int_equal(out_len, CAPSTAN_CAPF_MAX_MESSAGE);
  capstan_capf_msg_t p;
  assert_int_equal(capstan_capf_parse(out, out_len, &p), 0);
  OPENSSL_free(out);
  /* One more byte does not fit. */
  assert_int_equal(capstan_capf_builder_begin(&b, CAPSTAN_CAPF_CMD_FETCH_CERT_RESPONSE, 1, 0), 0);
  assert_int_equal(capstan_capf_builder_add_bytes(&b, CAPSTAN_CAPF_EL_PUBLIC_KEY, big, 65533),
                   CAPSTAN_ERANGE);
  capstan_capf_builder_cleanup(&b);
  /* Many elements that together overflow. */
  assert_int_equal(capstan_capf_builder_begin(&b, CAPSTAN_CAPF_CMD_FETCH_CERT_RESPONSE, 1, 0), 0);
  assert_int_equal(capstan_capf_builder_add_bytes(&b, 100, big, 40000), 0);
  assert_int_equal(capstan_capf_builder_add_bytes(&b, 101, big, 40000), CAPSTAN_ERANGE);
  assert_int_equal(capstan_capf_builder_finish(&b, &out, &out_len), CAPSTAN_ERANGE);
  /* Certificate limits. */
  assert_int_equal(capstan_capf_builder_begin(&b, CAPSTAN_CAPF_CMD_STORE_CERT_REQUEST, 1, 1), 0);
  assert_int_equal(capstan_capf_builder_add_certificate(&b, 1, big, CAPSTAN_CAPF_CERT_DER_MAX), 0);
  assert_int_equal(capstan_capf_builder_finish(&b, &out, &out_len), 0);
  assert_int_equal(out_len, CAPSTAN_CAPF_MAX_MESSAGE);
  assert_int_equal(capstan_capf_parse(out, out_len, &p), 0);
  capstan_capf_slice_t der;
  assert_int_equal(capstan_capf_get_certificate(&p, NULL, &der), 0);
  assert_int_equal(der.len, CAPSTAN_CAPF_CERT_DER_MAX);
  OPENSSL_free(out);
  assert_int_equal(capstan_capf_builder_begin(&b, CAPSTAN_CAPF_CMD_STORE_CERT_REQUEST, 1, 1), 0);
  assert_int_equal(capstan_capf_builder_add_certificate(&b, 1, big, CAPSTAN_CAPF_CERT_DER_MAX + 1),
                   CAPSTAN_ERANGE);
  capstan_capf_builder_cleanup(&b);
  /* Zeroed builder: cleanup is safe, finish refuses. */
  memset(&b, 0, sizeof(b));
  capstan_capf_builder_cleanup(&b);
  assert_int_equal(capstan_capf_builder_finish(&b, &out, &out_len), CAPSTAN_EINVAL);
  free(big);
}

static void test_names(void **state) {
  (void)state;
  assert_string_equal(capstan_capf_reason_name(0), "NO_ACTION");
  assert_string_equal(capstan_capf_reason_name(1), "UPDATE_CERTIFICATE");
  assert_string_equal(capstan_capf_reason_name(7), "INVALID_ELEMENT");
  assert_string_equal(capstan_capf_reason_name(9), "UNKNOWN_DEVICE");
  assert_string_equal(capstan_capf_reason_name(2), "UNKNOWN");
  assert_string_equal(capstan_capf_auth_type_name(2), "NULL_STRING");
  assert_string_equal(capstan_capf_auth_type_name(5), "UNKNOWN");
  assert_string_equal(capstan_capf_hash_name(3), "SHA512");
  assert_string_equal(capstan_capf_cert_type_name(2), "MIC");
  assert_string_equal(capstan_capf_key_type_name(1), "EC");
  assert_string_equal(capstan_capf_curve_name(1), "P384");
  assert_string_equal(capstan_capf_curve_name(-1), "UNKNOWN");
}

/* The fuzz seeds (the named files) must be valid message streams, or the
 * fuzzer would start from garbage. The inputs libFuzzer grew and merged
 * (named by their SHA-1: 40 hex digits) may be anything. */
static int grown_input(const char *name) {
  if (strlen(name) != 40) return 0;
  for (const char *p = name; *p; p++) {
    if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f'))) return 0;
  }
  return 1;
}

static void test_fuzz_corpus_is_valid(void **state) {
  (void)state;
  const char *data = getenv("CAPSTAN_TEST_DATA");
  if (data == NULL) skip();
  /* $CAPSTAN_TEST_DATA is <source>/tests/data, which may not exist yet: go
   * through the string, not the file system. */
  size_t dl = strlen(data);
  if (dl >= 5 && strcmp(data + dl - 5, "/data") == 0) dl -= 5;
  char dir[4096];
  snprintf(dir, sizeof(dir), "%.*s/fuzz/corpus/fuzz_capf_wire", (int)dl, data);
  DIR *d = opendir(dir);
  assert_non_null(d);
  int files = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.' || grown_input(e->d_name)) continue;
    char path[8192];
    snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    static uint8_t buf[CAPSTAN_CAPF_MAX_MESSAGE * 2];
    size_t n = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    size_t off = 0;
    int msgs = 0;
    while (off < n) {
      size_t ml = 0;
      assert_int_equal(capstan_capf_frame(buf + off, n - off, &ml), 0);
      capstan_capf_msg_t p;
      assert_int_equal(capstan_capf_parse(buf + off, ml, &p), 0);
      off += ml;
      msgs++;
    }
    assert_true(msgs > 0);
    files++;
  }
  closedir(d);
  assert_true(files >= 5);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_auth_request_exact_bytes),
      cmocka_unit_test(test_auth_response_exact_bytes),
      cmocka_unit_test(test_certificate_exact_bytes),
      cmocka_unit_test(test_every_command_round_trip),
      cmocka_unit_test(test_every_element_round_trip),
      cmocka_unit_test(test_all_typed_round_trip),
      cmocka_unit_test(test_frame_need_more_every_prefix),
      cmocka_unit_test(test_frame_malformed_and_caps),
      cmocka_unit_test(test_parse_truncated_header),
      cmocka_unit_test(test_parse_bad_header_fields),
      cmocka_unit_test(test_parse_element_overrun),
      cmocka_unit_test(test_parse_zero_length_and_unknown),
      cmocka_unit_test(test_parse_duplicate_known),
      cmocka_unit_test(test_typed_wrong_lengths),
      cmocka_unit_test(test_strings),
      cmocka_unit_test(test_certificate_prefix),
      cmocka_unit_test(test_sha2_and_sudi),
      cmocka_unit_test(test_validate),
      cmocka_unit_test(test_builder_server_side_policy),
      cmocka_unit_test(test_builder_size_limits),
      cmocka_unit_test(test_names),
      cmocka_unit_test(test_fuzz_corpus_is_valid),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
