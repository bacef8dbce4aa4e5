/* Configuration XML (core/files/cnfxml.h): validation messages, completion
 * that preserves bytes, the partial configuration, the default base. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/base/error.h"
#include "core/files/cnfxml.h"

#define HASH "0123456789abcdef0123456789abcdef"

static int validate(const char *xml, char *err, size_t errlen) {
  return capstan_cnfxml_validate((const uint8_t *)xml, strlen(xml), err, errlen);
}

static capstan_cnfxml_params_t params(void) {
  capstan_cnfxml_params_t p;
  memset(&p, 0, sizeof(p));
  p.auth_mode = 3;
  p.capf_host = "capf.example.net";
  p.capf_port = 3804;
  p.cert_hash = HASH;
  p.encr_config = 1;
  return p;
}

/* Completes |base| and compares with |expect|. */
static void complete_is(const char *base, const capstan_cnfxml_params_t *p, const char *expect) {
  uint8_t *out = NULL;
  size_t len = 0;
  char err[128];
  int rc =
      capstan_cnfxml_complete((const uint8_t *)base, strlen(base), p, &out, &len, err, sizeof(err));
  if (rc != 0) fprintf(stderr, "complete: %s\n", err);
  assert_int_equal(rc, 0);
  assert_int_equal(strlen((char *)out), len);
  assert_string_equal((char *)out, expect);
  free(out);
}

static void test_validate(void **state) {
  (void)state;
  char err[128];
  assert_int_equal(validate("<device/>", err, sizeof(err)), 0);
  assert_int_equal(validate("<?xml version=\"1.0\"?>\n<device>\n <a x='1'>&amp;</a>\n</device>\n",
                            err, sizeof(err)),
                   0);

  assert_int_equal(validate("<device>\n  <a>\n  </b>\n</device>\n", err, sizeof(err)),
                   CAPSTAN_EINVAL);
  assert_string_equal(err, "line 3: mismatched tag");
  assert_int_equal(validate("<device>\n\n\n\n<a x=1/></device>", err, sizeof(err)), CAPSTAN_EINVAL);
  assert_string_equal(err, "line 5: not well-formed (invalid token)");
  assert_int_equal(validate("<device>\n</device>\n<device/>", err, sizeof(err)), CAPSTAN_EINVAL);
  assert_string_equal(err, "line 3: junk after document element");
  assert_int_equal(validate("", err, sizeof(err)), CAPSTAN_EINVAL);
  assert_string_equal(err, "line 1: no element found");
  assert_int_equal(validate("<device>\n<a>", err, sizeof(err)), CAPSTAN_EINVAL);
  assert_string_equal(err, "line 2: no element found");

  assert_int_equal(
      validate("<?xml version=\"1.0\"?>\n\n<config><device/></config>", err, sizeof(err)),
      CAPSTAN_EINVAL);
  assert_string_equal(err, "line 3: root element is <config>, expected <device>");
  assert_int_equal(
      validate("<!DOCTYPE device [<!ENTITY a \"b\">]>\n<device>&a;</device>", err, sizeof(err)),
      CAPSTAN_EINVAL);
  assert_string_equal(err, "line 1: DOCTYPE not allowed");
  assert_int_equal(
      validate("<?xml version=\"1.0\" encoding=\"UTF-16\"?><device/>", err, sizeof(err)),
      CAPSTAN_EINVAL);
  static const uint8_t utf16[] = {0xFF, 0xFE, '<', 0, 'd', 0};
  assert_int_equal(capstan_cnfxml_validate(utf16, sizeof(utf16), err, sizeof(err)), CAPSTAN_EINVAL);
  /* A short error buffer is truncated, not overrun; NULL is accepted. */
  char tiny[8];
  assert_int_equal(validate("<x/>", tiny, sizeof(tiny)), CAPSTAN_EINVAL);
  assert_string_equal(tiny, "line 1:");
  assert_int_equal(validate("<x/>", NULL, 0), CAPSTAN_EINVAL);
}

static void test_complete_replaces_and_inserts(void **state) {
  (void)state;
  capstan_cnfxml_params_t p = params();
  complete_is(
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      "<device xsi:type=\"axl:XIPPhone\" ctiid=\"7\">\n"
      "  <fullConfig>true</fullConfig>\n"
      "  <!-- operator's comment, kept -->\n"
      "  <capfAuthMode>0</capfAuthMode>\n"
      "\t<loadInformation>sip88xx.14-1-1 &amp; more</loadInformation>\n"
      "  <certHash/>\n"
      "  <sub><capfAuthMode>9</capfAuthMode><certHash>x</certHash></sub>\n"
      "</device>\n",
      &p,
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      "<device xsi:type=\"axl:XIPPhone\" ctiid=\"7\">\n"
      "  <fullConfig>true</fullConfig>\n"
      "  <!-- operator's comment, kept -->\n"
      "  <capfAuthMode>3</capfAuthMode>\n"
      "\t<loadInformation>sip88xx.14-1-1 &amp; more</loadInformation>\n"
      "  <certHash>" HASH
      "</certHash>\n"
      "  <sub><capfAuthMode>9</capfAuthMode><certHash>x</certHash></sub>\n"
      "  <capfList><capf><phonePort>3804</phonePort><processNodeName>capf.example.net"
      "</processNodeName></capf></capfList>\n"
      "  <encrConfig>true</encrConfig>\n"
      "</device>\n");
}

static void test_complete_all_present_and_duplicates(void **state) {
  (void)state;
  capstan_cnfxml_params_t p = params();
  p.auth_mode = 0;
  p.cert_hash = NULL;
  p.encr_config = 0;
  p.capf_port = 5000;
  p.capf_host = "a&b<c>\"d'";
  complete_is(
      "<device>\n"
      "  <encrConfig>true</encrConfig>\n"
      "  <capfList>\n    <capf><phonePort>1</phonePort></capf>\n  </capfList>\n"
      "  <certHash>ffffffffffffffffffffffffffffffff</certHash>\n"
      "  <capfAuthMode attr=\"1\">4</capfAuthMode>\n"
      "  <capfAuthMode>2</capfAuthMode>\n"
      "</device>",
      &p,
      "<device>\n"
      "  <encrConfig>false</encrConfig>\n"
      "  <capfList><capf><phonePort>5000</phonePort><processNodeName>a&amp;b&lt;c&gt;&quot;"
      "d&apos;</processNodeName></capf></capfList>\n"
      "  <certHash></certHash>\n"
      "  <capfAuthMode>0</capfAuthMode>\n"
      "  \n"
      "</device>");
}

static void test_complete_shapes(void **state) {
  (void)state;
  capstan_cnfxml_params_t p = params();
  p.cert_hash = "";
  /* Self-closing root. */
  complete_is("<device/>\n", &p,
              "<device>\n"
              "  <capfAuthMode>3</capfAuthMode>\n"
              "  <capfList><capf><phonePort>3804</phonePort><processNodeName>capf.example.net"
              "</processNodeName></capf></capfList>\n"
              "  <certHash></certHash>\n"
              "  <encrConfig>true</encrConfig>\n"
              "</device>\n");
  complete_is("<device a=\"1\" />", &p,
              "<device a=\"1\" >\n"
              "  <capfAuthMode>3</capfAuthMode>\n"
              "  <capfList><capf><phonePort>3804</phonePort><processNodeName>capf.example.net"
              "</processNodeName></capf></capfList>\n"
              "  <certHash></certHash>\n"
              "  <encrConfig>true</encrConfig>\n"
              "</device>");
  /* CRLF line endings are kept. */
  complete_is("<device>\r\n  <certHash/>\r\n</device>\r\n", &p,
              "<device>\r\n  <certHash></certHash>\r\n"
              "  <capfAuthMode>3</capfAuthMode>\r\n"
              "  <capfList><capf><phonePort>3804</phonePort><processNodeName>capf.example.net"
              "</processNodeName></capf></capfList>\r\n"
              "  <encrConfig>true</encrConfig>\r\n"
              "</device>\r\n");
  /* One line: inserted without line breaks; a nested <device> is a child. */
  complete_is("<device><x><device/></x><certHash>" HASH "</certHash></device>", &p,
              "<device><x><device/></x><certHash></certHash><capfAuthMode>3</capfAuthMode>"
              "<capfList><capf><phonePort>3804</phonePort><processNodeName>capf.example.net"
              "</processNodeName></capf></capfList><encrConfig>true</encrConfig></device>");
}

static void test_complete_refusals(void **state) {
  (void)state;
  uint8_t *out = NULL;
  size_t len = 0;
  char err[128];
  const char *base = "<device/>";
  capstan_cnfxml_params_t p = params();
  p.auth_mode = 5;
  assert_int_equal(capstan_cnfxml_complete((const uint8_t *)base, strlen(base), &p, &out, &len, err,
                                           sizeof(err)),
                   CAPSTAN_EINVAL);
  p = params();
  p.cert_hash = "0123456789ABCDEF0123456789abcdef";
  assert_int_equal(capstan_cnfxml_complete((const uint8_t *)base, strlen(base), &p, &out, &len, err,
                                           sizeof(err)),
                   CAPSTAN_EINVAL);
  p.cert_hash = "0123456789abcdef0123456789abcde";
  assert_int_equal(capstan_cnfxml_complete((const uint8_t *)base, strlen(base), &p, &out, &len, err,
                                           sizeof(err)),
                   CAPSTAN_EINVAL);
  p = params();
  p.capf_host = "";
  assert_int_equal(capstan_cnfxml_complete((const uint8_t *)base, strlen(base), &p, &out, &len, err,
                                           sizeof(err)),
                   CAPSTAN_EINVAL);
  p.capf_host = "a\nb";
  assert_int_equal(capstan_cnfxml_complete((const uint8_t *)base, strlen(base), &p, &out, &len, err,
                                           sizeof(err)),
                   CAPSTAN_EINVAL);
  p = params();
  const char *bad = "<device>\n<capfAuthMode>\n</device>";
  assert_int_equal(
      capstan_cnfxml_complete((const uint8_t *)bad, strlen(bad), &p, &out, &len, err, sizeof(err)),
      CAPSTAN_EINVAL);
  assert_string_equal(err, "line 3: mismatched tag");
  assert_null(out);
}

static void test_partial(void **state) {
  (void)state;
  static const char full[] =
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      "<device>\n"
      "  <fullConfig>true</fullConfig>\n"
      "  <capfAuthMode>1</capfAuthMode>\n"
      "  <loadInformation>sip88xx.14-1-1</loadInformation>\n"
      "  <secret>not copied</secret>\n"
      "  <ipAddressMode>2</ipAddressMode>\n"
      "  <capfList><capf><phonePort>3804</phonePort><processNodeName>h</processNodeName></capf>"
      "</capfList>\n"
      "  <certHash>ffffffffffffffffffffffffffffffff</certHash>\n"
      "  <encrConfig>true</encrConfig>\n"
      "</device>\n";
  uint8_t *out = NULL;
  size_t len = 0;
  char err[128];
  assert_int_equal(capstan_cnfxml_partial((const uint8_t *)full, strlen(full), HASH, &out, &len,
                                          err, sizeof(err)),
                   0);
  assert_string_equal((char *)out,
                      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
                      "<device>\n"
                      "  <fullConfig>false</fullConfig>\n"
                      "  <ipAddressMode>2</ipAddressMode>\n"
                      "  <loadInformation>sip88xx.14-1-1</loadInformation>\n"
                      "  <capfAuthMode>1</capfAuthMode>\n"
                      "  <capfList><capf><phonePort>3804</phonePort><processNodeName>h"
                      "</processNodeName></capf></capfList>\n"
                      "  <certHash>" HASH
                      "</certHash>\n"
                      "  <encrConfig>true</encrConfig>\n"
                      "</device>\n");
  assert_int_equal(len, strlen((char *)out));
  assert_int_equal(capstan_cnfxml_validate(out, len, err, sizeof(err)), 0);
  free(out);

  /* Nothing to copy, empty hash, no XML declaration. */
  static const char bare[] = "<device><a/></device>";
  assert_int_equal(capstan_cnfxml_partial((const uint8_t *)bare, strlen(bare), NULL, &out, &len,
                                          err, sizeof(err)),
                   0);
  assert_string_equal((char *)out,
                      "<device>\n"
                      "  <fullConfig>false</fullConfig>\n"
                      "  <certHash></certHash>\n"
                      "  <encrConfig>true</encrConfig>\n"
                      "</device>\n");
  free(out);
  out = NULL;
  assert_int_equal(
      capstan_cnfxml_partial((const uint8_t *)"<dev/>", 6, NULL, &out, &len, err, sizeof(err)),
      CAPSTAN_EINVAL);
  assert_string_equal(err, "line 1: root element is <dev>, expected <device>");
  assert_int_equal(capstan_cnfxml_partial((const uint8_t *)bare, strlen(bare), "xyz", &out, &len,
                                          err, sizeof(err)),
                   CAPSTAN_EINVAL);
  assert_null(out);
}

static void test_default_base(void **state) {
  (void)state;
  size_t len = 0;
  const char *base = capstan_cnfxml_default_base(&len);
  assert_int_equal(strlen(base), len);
  char err[128];
  assert_int_equal(capstan_cnfxml_validate((const uint8_t *)base, len, err, sizeof(err)), 0);
  assert_non_null(strstr(base, "<!--"));
  capstan_cnfxml_params_t p = params();
  uint8_t *full = NULL, *partial = NULL;
  size_t full_len = 0, partial_len = 0;
  assert_int_equal(
      capstan_cnfxml_complete((const uint8_t *)base, len, &p, &full, &full_len, err, sizeof(err)),
      0);
  assert_non_null(strstr((char *)full, "  <capfAuthMode>3</capfAuthMode>\n"));
  assert_non_null(strstr((char *)full, "<encrConfig>true</encrConfig>\n</device>\n"));
  /* The partial configuration of a completed one carries its CAPF elements. */
  assert_int_equal(
      capstan_cnfxml_partial(full, full_len, HASH, &partial, &partial_len, err, sizeof(err)), 0);
  assert_non_null(strstr((char *)partial, "<capfAuthMode>3</capfAuthMode>"));
  assert_non_null(strstr((char *)partial, "<processNodeName>capf.example.net</processNodeName>"));
  free(full);
  free(partial);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_validate),
      cmocka_unit_test(test_complete_replaces_and_inserts),
      cmocka_unit_test(test_complete_all_present_and_duplicates),
      cmocka_unit_test(test_complete_shapes),
      cmocka_unit_test(test_complete_refusals),
      cmocka_unit_test(test_partial),
      cmocka_unit_test(test_default_base),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
