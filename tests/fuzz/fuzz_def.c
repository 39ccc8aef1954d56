/* libFuzzer target: the daemon's VM definition and PATCH parsers
 * (src/mgr/def.c), which read API bodies and the state directory alike.
 * The input is a JSON text. An accepted definition must survive
 * to_json → from_json unchanged (the state dir relies on it); the input is
 * also tried as a PATCH of a fixed definition, applied to a copy. */
#include <json-c/json.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vireo/log.h"
#include "vireo/mgr.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char base_def[] =
	"{\"name\": \"web\", \"cpus\": 2, \"memory\": \"64M\", \"kernel\": \"/k\","
	" \"disks\": [{\"path\": \"/d0\"}, {\"path\": \"/d1\", \"readonly\": true}],"
	" \"nics\": [{\"tap\": \"t0\"}], \"balloon\": true, \"balloon_target\": \"8M\","
	" \"cpu_pin\": [\"0\", \"1\"]}";

static struct json_object *parse(const uint8_t *data, size_t size)
{
	struct json_tokener *tok = json_tokener_new_ex(32);
	struct json_object *o;

	if (!tok)
		return NULL;
	o = json_tokener_parse_ex(tok, (const char *)data, (int)size);
	if (o && json_tokener_get_error(tok) != json_tokener_success) {
		json_object_put(o);
		o = NULL;
	}
	json_tokener_free(tok);
	return o;
}

static void round_trip(const struct vm_def *def)
{
	struct json_object *a = vm_def_to_json(def), *b;
	struct vm_def copy;

	if (vm_def_from_json(a, &copy))
		abort();	/* what we write, we must read back */
	b = vm_def_to_json(&copy);
	if (strcmp(json_object_to_json_string(a), json_object_to_json_string(b)))
		abort();
	json_object_put(a);
	json_object_put(b);
	vm_def_free(&copy);
}

static void patch(struct json_object *o)
{
	static struct vm_def base;
	static bool have_base;
	struct vm_patch p;
	struct vm_def d;

	if (!have_base) {
		struct json_object *b = json_tokener_parse(base_def);

		if (!b || vm_def_from_json(b, &base))
			abort();
		json_object_put(b);
		have_base = true;
	}
	if (vm_patch_from_json(o, &base, &p))
		return;
	if (vm_def_copy(&base, &d))
		abort();
	vm_patch_apply(&d, &p);
	round_trip(&d);
	vm_def_free(&d);
	vm_patch_free(&p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct json_object *o;
	struct vm_def def;

	if (size > MGR_MAX_BODY)
		return 0;
	o = parse(data, size);
	if (!o)
		return 0;
	if (vm_def_from_json(o, &def) == 0) {
		if (!vm_name_valid(def.name))
			abort();
		round_trip(&def);
		vm_def_check_new(&def, "/var/lib/vireo");
		vm_def_free(&def);
	}
	patch(o);
	json_object_put(o);
	return 0;
}
