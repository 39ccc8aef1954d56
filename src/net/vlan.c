/* Sets of 802.1Q VLAN ids (include/vireo/net.h): a bitmap, and its JSON form
 * [10, "20-30"] as Proxmox writes trunks=10;20-30. */
#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vireo/log.h"
#include "vireo/net.h"

bool vlan_set_empty(const struct vlan_set *s)
{
	for (size_t i = 0; i < sizeof(s->bits) / sizeof(s->bits[0]); i++)
		if (s->bits[i])
			return false;
	return true;
}

bool vlan_next_range(const struct vlan_set *s, unsigned int *id, unsigned int *end)
{
	unsigned int i = *id ? *id : 1;

	while (i <= VLAN_ID_MAX && !vlan_has(s, i))
		i++;
	if (i > VLAN_ID_MAX)
		return false;
	*id = i;
	while (i + 1 <= VLAN_ID_MAX && vlan_has(s, i + 1))
		i++;
	*end = i;
	return true;
}

/* One element: an id, or "A-B" with A <= B; [*lo, *hi]. */
static int element(struct json_object *v, long *lo, long *hi)
{
	if (json_object_is_type(v, json_type_int)) {
		*lo = *hi = (long)json_object_get_int64(v);
	} else if (json_object_is_type(v, json_type_string)) {
		const char *str = json_object_get_string(v);
		char *e1, *e2;

		*lo = strtol(str, &e1, 10);
		if (e1 == str || *e1 != '-')
			return -EINVAL;
		*hi = strtol(e1 + 1, &e2, 10);
		if (e2 == e1 + 1 || *e2 || *hi < *lo)
			return -EINVAL;
	} else {
		return -EINVAL;
	}
	return vlan_valid(*lo) && vlan_valid(*hi) ? 0 : -EINVAL;
}

int vlan_set_from_json(struct json_object *arr, const char *key, struct vlan_set *out)
{
	struct vlan_set s = { 0 };
	unsigned int id = 0, end, runs = 0;
	size_t n;

	if (!json_object_is_type(arr, json_type_array) ||
	    (n = json_object_array_length(arr)) == 0)
		return err_set(-EINVAL, "'%s' must be a non-empty array of VLAN ids", key);
	for (size_t i = 0; i < n; i++) {
		long lo, hi;

		if (element(json_object_array_get_idx(arr, i), &lo, &hi))
			return err_set(-EINVAL, "'%s'[%zu] must be a VLAN id 1 to %d or a range "
				       "\"A-B\" of them", key, i, VLAN_ID_MAX);
		for (long v = lo; v <= hi; v++)
			vlan_add(&s, (unsigned int)v);
	}
	while (vlan_next_range(&s, &id, &end) && ++runs <= VLAN_RANGES_MAX)
		id = end + 1;
	if (runs > VLAN_RANGES_MAX)
		return err_set(-EINVAL, "'%s' has more than %d separate VLAN ranges", key,
			       VLAN_RANGES_MAX);
	*out = s;
	return 0;
}

struct json_object *vlan_set_to_json(const struct vlan_set *s)
{
	struct json_object *arr = json_object_new_array();
	unsigned int id = 0, end;

	while (vlan_next_range(s, &id, &end)) {
		char range[16];

		if (end - id >= 2) {
			snprintf(range, sizeof(range), "%u-%u", id, end);
			json_object_array_add(arr, json_object_new_string(range));
		} else {
			for (unsigned int v = id; v <= end; v++)
				json_object_array_add(arr, json_object_new_int((int)v));
		}
		id = end + 1;
	}
	return arr;
}

struct json_object *vlan_list_json(const char *text)
{
	struct json_object *arr = json_object_new_array();
	char *copy = strdup(text), *save = NULL;

	for (char *tok = copy ? strtok_r(copy, ";,", &save) : NULL; tok;
	     tok = strtok_r(NULL, ";,", &save)) {
		char *end;
		long v = strtol(tok, &end, 10);

		json_object_array_add(arr, *end || end == tok ? json_object_new_string(tok) :
					   json_object_new_int64(v));
	}
	free(copy);
	return arr;
}
