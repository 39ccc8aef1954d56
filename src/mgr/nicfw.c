/* A vNIC's firewall in the daemon: the glue that applies it
 * (src/net/firewall.c) when the VM's taps exist, removes it when they go,
 * replaces it on a running VM and reads its counters. Its JSON: fwdef.c. */
#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <string.h>

#include "vireo/firewall.h"
#include "vireo/log.h"
#include "vireo/mgr.h"

/* The vNICs of def that have rules (on a network), into v (taps, macs). */
static unsigned int vnics(const struct vm_def *def, struct fw_vnic *v, char taps[][16],
			  char macs[][18])
{
	unsigned int n = 0;

	for (unsigned int i = 0; i < def->nnics; i++) {
		if (!def->nics[i].network || !fw_conf_active(&def->nics[i].fw))
			continue;
		mgr_nic_tap(def, i, taps[n]);
		mgr_nic_mac(def, i, macs[n]);
		v[n] = (struct fw_vnic){ taps[n], macs[n], &def->nics[i].fw };
		n++;
	}
	return n;
}

int mgr_fw_apply(const struct vm_def *def)
{
	struct fw_vnic v[MGR_MAX_NICS];
	char taps[MGR_MAX_NICS][16], macs[MGR_MAX_NICS][18];
	unsigned int n = vnics(def, v, taps, macs);
	int ret;

	if (!n)
		return 0;
	ret = fw_vnic_apply(v, n);
	return ret ? err_set(ret, "firewall: %s", err_get()) : 0;
}

void mgr_fw_remove(const struct vm_def *def)
{
	char taps[MGR_MAX_NICS][16];
	const char *p[MGR_MAX_NICS];
	unsigned int n = 0;

	for (unsigned int i = 0; i < def->nnics; i++) {
		if (!def->nics[i].network)
			continue;
		mgr_nic_tap(def, i, taps[n]);
		p[n] = taps[n];
		n++;
	}
	if (n && fw_vnic_remove(p, n))
		log_warn("VM %s: firewall: %s", def->name, err_get());
}

struct json_object *mgr_fw_counters(const struct vm_def *def)
{
	struct json_object *arr = json_object_new_array();

	for (unsigned int i = 0; i < def->nnics; i++) {
		struct json_object *o, *c;
		char tap[16];

		if (!def->nics[i].network || !fw_conf_active(&def->nics[i].fw))
			continue;
		mgr_nic_tap(def, i, tap);
		c = fw_vnic_counters(tap);
		if (!c)
			continue;
		o = json_object_new_object();
		json_object_object_add(o, "nic", json_object_new_int((int)i));
		json_object_object_add(o, "tap", json_object_new_string(tap));
		json_object_object_add(o, "counters", c);
		json_object_array_add(arr, o);
	}
	return arr;
}

/* Puts vNIC i's rules in force as def has them (none left if it needs none). */
static int apply_one(const struct vm_def *def, unsigned int i)
{
	char tap[16], mac[18];
	const char *p = tap;
	struct fw_vnic v = { tap, mac, &def->nics[i].fw };

	mgr_nic_tap(def, i, tap);
	mgr_nic_mac(def, i, mac);
	return fw_conf_active(v.conf) ? fw_vnic_apply(&v, 1) : fw_vnic_remove(&p, 1);
}

enum mgr_err mgr_fw_update(struct mgr *m, struct mgr_vm *vm, struct json_object *body)
{
	struct fw_conf c;
	struct vm_def nd;
	unsigned int i = 0;
	bool live = mgr_vm_active(vm);

	if (nicfw_update_from_json(body, &vm->def, &i, &c)) {
		nicfw_free(&c);
		return MGR_E_BAD;
	}
	if (vm_def_copy(&vm->def, &nd)) {
		nicfw_free(&c);
		return MGR_E_FAILED;
	}
	nicfw_free(&nd.nics[i].fw);
	nd.nics[i].fw = c;	/* nd owns the rules now */
	/* One transaction: a rule list nftables refuses changes nothing. */
	if (live && apply_one(&nd, i)) {
		err_set(-EINVAL, "firewall: %s", err_get());
		vm_def_free(&nd);
		return MGR_E_BAD;
	}
	if (store_save_def(m, &nd)) {
		if (live && apply_one(&vm->def, i))
			log_warn("VM %s: firewall: %s", vm->def.name, err_get());
		vm_def_free(&nd);
		return MGR_E_FAILED;
	}
	vm_def_free(&vm->def);
	vm->def = nd;
	return MGR_OK;
}
