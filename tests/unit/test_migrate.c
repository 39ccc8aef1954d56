/* Live migration's pure parts: the migration URI, the dirty bitmap count,
 * and the token proof both ends compute. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "../../src/vmm/migrate-wire.h"
#include "vireo/dirty.h"
#include "vireo/migrate.h"

static void uris(void **state)
{
	char host[64], port[16];

	(void)state;
	assert_int_equal(migrate_parse_uri("tcp:10.1.2.3:4444", host, sizeof(host), port,
					   sizeof(port)), 0);
	assert_string_equal(host, "10.1.2.3");
	assert_string_equal(port, "4444");
	assert_int_equal(migrate_parse_uri("tcp:[::1]:7", host, sizeof(host), port,
					   sizeof(port)), 0);
	assert_string_equal(host, "::1");
	assert_string_equal(port, "7");
	assert_int_equal(migrate_parse_uri("unix:/x", host, sizeof(host), port, sizeof(port)),
			 -EINVAL);
	assert_int_equal(migrate_parse_uri("tcp:host", host, sizeof(host), port, sizeof(port)),
			 -EINVAL);
	assert_int_equal(migrate_parse_uri("tcp::1", host, sizeof(host), port, sizeof(port)),
			 -EINVAL);
	assert_int_equal(migrate_parse_uri("tcp:h:", host, sizeof(host), port, sizeof(port)),
			 -EINVAL);
}

static void bitmap_count(void **state)
{
	uint64_t bits[3] = { 0x1, 0xffffffffffffffffull, 0x8000000000000001ull };

	(void)state;
	assert_int_equal(dirty_bitmap_count(bits, 3), 67);
	assert_int_equal(dirty_bitmap_count(bits, 0), 0);
}

static void token_proofs(void **state)
{
	uint8_t a[MIG_NONCE], b[MIG_NONCE], m1[MIG_MAC], m2[MIG_MAC];

	(void)state;
	memset(a, 1, sizeof(a));
	memset(b, 2, sizeof(b));
	assert_int_equal(mig_mac("tok", "src", a, b, m1), 0);
	assert_int_equal(mig_mac("tok", "src", a, b, m2), 0);
	assert_int_equal(mig_mac_cmp(m1, m2), 0);
	/* Another token, label or nonce order proves nothing. */
	assert_int_equal(mig_mac("tok2", "src", a, b, m2), 0);
	assert_int_not_equal(mig_mac_cmp(m1, m2), 0);
	assert_int_equal(mig_mac("tok", "dst", a, b, m2), 0);
	assert_int_not_equal(mig_mac_cmp(m1, m2), 0);
	assert_int_equal(mig_mac("tok", "src", b, a, m2), 0);
	assert_int_not_equal(mig_mac_cmp(m1, m2), 0);
	assert_int_equal(mig_mac("", "src", a, b, m2), 0); /* no token: still a MAC */
	assert_int_not_equal(mig_mac_cmp(m1, m2), 0);
}

static void hello(void **state)
{
	uint8_t buf[MIG_HELLO_SIZE], nonce[MIG_NONCE];
	const uint8_t *got;

	(void)state;
	memset(nonce, 7, sizeof(nonce));
	mig_hello(buf, nonce);
	assert_int_equal(mig_hello_check(buf, &got), 0);
	assert_memory_equal(got, nonce, MIG_NONCE);
	buf[8]++;
	assert_int_equal(mig_hello_check(buf, &got), -EPROTO);
	memcpy(buf, "GET / HT", 8);
	assert_int_equal(mig_hello_check(buf, &got), -EPROTO);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(uris),
		cmocka_unit_test(bitmap_count),
		cmocka_unit_test(token_proofs),
		cmocka_unit_test(hello),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
