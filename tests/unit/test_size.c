#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "vireo/size.h"

static void parses_suffixes(void **state)
{
	uint64_t v;

	(void)state;
	assert_int_equal(size_parse("512", &v), 0);
	assert_int_equal(v, 512);
	assert_int_equal(size_parse("64K", &v), 0);
	assert_int_equal(v, 65536);
	assert_int_equal(size_parse("512M", &v), 0);
	assert_int_equal(v, 512ull << 20);
	assert_int_equal(size_parse("2GiB", &v), 0);
	assert_int_equal(v, 2ull << 30);
	assert_int_equal(size_parse("1t", &v), 0);
	assert_int_equal(v, 1ull << 40);
}

static void rejects_garbage(void **state)
{
	uint64_t v;

	(void)state;
	assert_int_equal(size_parse("", &v), -EINVAL);
	assert_int_equal(size_parse("-1", &v), -EINVAL);
	assert_int_equal(size_parse("12Q", &v), -EINVAL);
	assert_int_equal(size_parse("12MX", &v), -EINVAL);
	assert_int_equal(size_parse("99999999999999999999", &v), -ERANGE);
	assert_int_equal(size_parse("17179869184G", &v), -ERANGE);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(parses_suffixes),
		cmocka_unit_test(rejects_garbage),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
