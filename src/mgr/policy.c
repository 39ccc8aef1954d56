/* The automatic memory policy (daemon --memory-policy=auto): balloon
 * targets follow the guests' own statistics (virtio-balloon stat tags 4
 * free and 5 total), read through each VMM's `info`. */
#include <inttypes.h>
#include <json-c/json.h>
#include <stdio.h>
#include <string.h>

#include "vireo/log.h"
#include "vireo/mgr.h"

#define POLICY_MAX_VMS 256
#define MIB ((uint64_t)1 << 20)

struct cand {
	struct mgr_vm *vm;
	uint64_t target, free, total, updates, floor;
};

static uint64_t get_u64(struct json_object *o, const char *key, bool *ok)
{
	struct json_object *v;

	if (!o || !json_object_object_get_ex(o, key, &v)) {
		*ok = false;
		return 0;
	}
	return (uint64_t)json_object_get_int64(v);
}

/* The VM's balloon as its VMM reports it (asked now, m->lock dropped
 * meanwhile; vm referenced by the caller); false if the guest has not
 * reported fresh statistics since our last change. */
static bool read_cand(struct mgr *m, struct mgr_vm *vm, struct cand *c)
{
	struct json_object *r, *b = NULL, *g = NULL;
	bool ok = true;

	if (mgr_refresh_info(m, vm, MGR_INFO_TIMEOUT_MS) || vm->deleted ||
	    vm->state != MGR_RUNNING)
		return false;
	r = vm->info;
	if (!r)
		return false;
	if (json_object_object_get_ex(r, "balloon", &b))
		json_object_object_get_ex(b, "guest", &g);
	c->vm = vm;
	c->target = get_u64(b, "target", &ok);
	c->updates = get_u64(b, "stats_updates", &ok);
	c->free = get_u64(g, "free", &ok);
	c->total = get_u64(g, "total", &ok);
	c->floor = vm->def.memory_min ? vm->def.memory_min : vm->def.memory / 4;
	return ok && c->total && c->updates >= vm->policy_fresh;
}

/* Under the VM's operation lock (a VM in an operation is left for the next
 * round), with m->lock dropped for the request. */
static int set_target(struct mgr *m, struct cand *c, uint64_t target)
{
	struct json_object *r;
	char sock[PATH_MAX], req[96];

	if (c->vm->deleted || pthread_mutex_trylock(&c->vm->lock))
		return -1;
	store_path(m, sock, sizeof(sock), "run", c->vm->def.name, ".sock");
	snprintf(req, sizeof(req), "{\"action\":\"balloon\",\"target\":%" PRIu64 "}", target);
	pthread_mutex_unlock(&m->lock);
	r = vmm_request(sock, req);
	pthread_mutex_lock(&m->lock);
	if (!r || c->vm->state != MGR_RUNNING) {
		json_object_put(r);
		pthread_mutex_unlock(&c->vm->lock);
		return -1;
	}
	json_object_put(r);
	log_info("VM %s: memory policy: balloon %" PRIu64 " -> %" PRIu64 " MiB (guest free %"
		 PRIu64 " of %" PRIu64 " MiB)", c->vm->def.name, c->target / MIB, target / MIB,
		 c->free / MIB, c->total / MIB);
	/* Until the guest reports again, assume it followed. */
	if (target > c->target)
		c->free = c->free > target - c->target ? c->free - (target - c->target) : 0;
	else
		c->free += c->target - target;
	c->target = target;
	c->vm->def.balloon_target = target;
	/* The stats the guest posts right after this may predate the change:
	 * wait for the second update. */
	c->vm->policy_fresh = c->updates + 2;
	store_save_def(m, &c->vm->def);
	pthread_mutex_unlock(&c->vm->lock);
	return 0;
}

static bool is_needy(const struct mgr *m, const struct cand *c)
{
	return c->target && c->free * 100 < c->total * m->mem_low_pct;
}

/* What an idle guest can give without going below its floor or its own
 * idle threshold. */
static uint64_t spare(const struct mgr *m, const struct cand *c)
{
	uint64_t keep = c->total * m->mem_high_pct / 100, room;

	if (c->free * 100 <= c->total * m->mem_high_pct || c->vm->def.memory <= c->target + c->floor)
		return 0;
	room = c->vm->def.memory - c->target - c->floor;
	return (c->free - keep < room ? c->free - keep : room) & ~(MIB - 1);
}

static uint64_t host_available(void)
{
	unsigned long long kb = 0;
	char line[128];
	FILE *f = fopen("/proc/meminfo", "r");

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1)
			break;
	fclose(f);
	return kb << 10;
}

/* Deflates one needy guest by up to a quarter of its memory: first from
 * idle guests' balloons, then from the host above the reserve. */
static void feed(struct mgr *m, struct cand *n, struct cand *c, unsigned int nc, uint64_t *avail)
{
	uint64_t want = n->vm->def.memory / 4, got = 0, host;

	if (want > n->target)
		want = n->target;
	for (unsigned int i = 0; i < nc && got < want; i++) {
		uint64_t give = spare(m, &c[i]);

		if (&c[i] == n || !give)
			continue;
		if (give > want - got)
			give = want - got;
		if (!set_target(m, &c[i], c[i].target + give))
			got += give;
	}
	host = want - got;
	if (*avail < m->mem_reserve + host)
		host = *avail > m->mem_reserve ? (*avail - m->mem_reserve) & ~(MIB - 1) : 0;
	if (got + host && !set_target(m, n, n->target - got - host))
		*avail -= host;
}

/* Below the host reserve: take back from idle guests. */
static void reclaim(struct mgr *m, struct cand *c, unsigned int nc, uint64_t avail)
{
	for (unsigned int i = 0; i < nc && avail < m->mem_reserve; i++) {
		uint64_t give = spare(m, &c[i]), need = (m->mem_reserve - avail + MIB - 1) & ~(MIB - 1);

		if (give > need)
			give = need;
		if (give && !set_target(m, &c[i], c[i].target + give))
			avail += give;
	}
}

void mgr_policy_run(struct mgr *m)
{
	static struct cand c[POLICY_MAX_VMS];
	static struct mgr_vm *vms[POLICY_MAX_VMS];
	unsigned int nc = 0, nv = 0;
	uint64_t avail = host_available();

	/* Referenced first: reading each drops m->lock, and the list may
	 * change meanwhile. */
	for (struct mgr_vm *vm = m->vms; vm && nv < POLICY_MAX_VMS; vm = vm->next)
		if (vm->state == MGR_RUNNING && vm->def.balloon) {
			mgr_ref(vm);
			vms[nv++] = vm;
		}
	for (unsigned int i = 0; i < nv; i++)
		if (read_cand(m, vms[i], &c[nc]))
			nc++;
	for (unsigned int i = 0; i < nc; i++)
		if (is_needy(m, &c[i]))
			feed(m, &c[i], c, nc, &avail);
	reclaim(m, c, nc, avail);
	for (unsigned int i = 0; i < nv; i++)
		mgr_unref(m, vms[i]);
}
