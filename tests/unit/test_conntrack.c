/* The per-address table every listener uses (core/base/conntrack) and the
 * listener address parser (core/base/netaddr): IPv4 and IPv4-mapped IPv6
 * are one peer, limits hold, entries go away at zero, the caller's slot is
 * kept, and listener addresses parse by one rule for CAPF, HTTP and TFTP. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "core/base/conntrack.h"
#include "core/base/error.h"
#include "core/base/netaddr.h"

static struct sockaddr_storage addr(const char *host_port) {
  struct sockaddr_storage ss;
  assert_int_equal(capstan_netaddr_parse(host_port, &ss), 0);
  return ss;
}

#define SA(ss) ((const struct sockaddr *)&(ss))

static void test_mapped_is_the_same_peer(void **state) {
  capstan_conntrack_t ct;
  assert_int_equal(capstan_conntrack_init(&ct, 16), 0);
  struct sockaddr_storage v4 = addr("192.0.2.7:1000"), mapped = addr("[::ffff:192.0.2.7]:2000"),
                          other = addr("[2001:db8::7]:1000");
  assert_int_equal(capstan_conntrack_add(&ct, SA(v4), 2), 0);
  assert_int_equal(capstan_conntrack_add(&ct, SA(mapped), 2), 0);
  assert_int_equal(capstan_conntrack_add(&ct, SA(v4), 2), CAPSTAN_EBUSY);
  assert_int_equal(capstan_conntrack_count(&ct, SA(mapped)), 2);
  assert_int_equal(capstan_conntrack_add(&ct, SA(other), 2), 0);
  assert_int_equal(ct.addresses, 2);
  capstan_conntrack_remove(&ct, SA(mapped));
  capstan_conntrack_remove(&ct, SA(v4));
  assert_int_equal(capstan_conntrack_count(&ct, SA(v4)), 0);
  assert_null(capstan_conntrack_find(&ct, SA(v4)));
  assert_int_equal(ct.addresses, 1);
  /* A limit of 0 refuses even the first connection. */
  assert_int_equal(capstan_conntrack_add(&ct, SA(v4), 0), CAPSTAN_EBUSY);
  capstan_conntrack_cleanup(&ct);
}

static void test_entry_keeps_the_callers_state(void **state) {
  capstan_conntrack_t ct;
  assert_int_equal(capstan_conntrack_init(&ct, 4), 0);
  struct sockaddr_storage a = addr("10.0.0.1:69"), b = addr("10.0.0.1:70");
  capstan_conntrack_entry_t *e1 = NULL, *e2 = NULL;
  int payload = 0;
  assert_int_equal(capstan_conntrack_acquire(&ct, SA(a), 8, &e1), 0);
  assert_null(e1->data);
  e1->data = &payload;
  assert_int_equal(capstan_conntrack_acquire(&ct, SA(b), 8, &e2), 0);
  assert_ptr_equal(e1, e2); /* ports do not count */
  assert_ptr_equal(capstan_conntrack_find(&ct, SA(b))->data, &payload);
  assert_int_equal(e1->count, 2);
  capstan_conntrack_release(&ct, e1);
  assert_ptr_equal(capstan_conntrack_find(&ct, SA(a)), e1);
  capstan_conntrack_release(&ct, e1);
  assert_null(capstan_conntrack_find(&ct, SA(a)));
  assert_int_equal(ct.addresses, 0);
  /* Many addresses in few buckets: every one is found again. */
  char hp[64];
  for (int i = 0; i < 200; i++) {
    snprintf(hp, sizeof(hp), "[2001:db8::%x]:1", i);
    struct sockaddr_storage x = addr(hp);
    assert_int_equal(capstan_conntrack_add(&ct, SA(x), 1), 0);
  }
  for (int i = 0; i < 200; i++) {
    snprintf(hp, sizeof(hp), "[2001:db8::%x]:1", i);
    struct sockaddr_storage x = addr(hp);
    assert_int_equal(capstan_conntrack_count(&ct, SA(x)), 1);
  }
  assert_int_equal(ct.addresses, 200);
  capstan_conntrack_cleanup(&ct);
}

static void test_listener_addresses(void **state) {
  struct sockaddr_storage ss;
  static const char *const good[] = {"127.0.0.1:69",  "0.0.0.0:3804",          "[::]:6970",
                                     "[::1]:0",       "[::ffff:127.0.0.1]:69", "[fe80::1%lo]:69",
                                     "[fe80::1%1]:69"};
  for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
    assert_int_equal(capstan_netaddr_parse(good[i], &ss), 0);
  }
  static const char *const bad[] = {
      "",           "127.0.0.1",  "localhost:69", "::1:69", "[::1]69", "[::1]:", "1.2.3.4:65536",
      "1.2.3.4:-1", "1.2.3.4:6x", "[]:69",        ":69"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    assert_int_equal(capstan_netaddr_parse(bad[i], &ss), CAPSTAN_EINVAL);
  }
  ss = addr("[2001:db8::1]:6970");
  char out[80];
  capstan_netaddr_format(SA(ss), out, sizeof(out));
  assert_string_equal(out, "[2001:db8::1]:6970");
  assert_int_equal(capstan_netaddr_port(SA(ss)), 6970);
  ss = addr("[fe80::1%lo]:69");
  assert_int_equal(((struct sockaddr_in6 *)&ss)->sin6_scope_id, if_nametoindex("lo"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_mapped_is_the_same_peer),
      cmocka_unit_test(test_entry_keeps_the_callers_state),
      cmocka_unit_test(test_listener_addresses),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
