/* The automatic I/O policy (daemon --io-policy=auto, docs/api.md): disk and
 * vNIC token buckets follow demand. Every interval it reads each running
 * VM's per-device counters through its VMM's `info` (what the rate limiter
 * charged, and how long it held requests back), estimates each device's
 * demand, divides the host budgets by weighted max-min fairness above the
 * floors (io_allocate(), a pure function) and sets the limits that changed
 * with `set-limits`, the action a PATCH of disk or nic limits uses. */
#include <inttypes.h>
#include <json-c/json.h>
#include <stdio.h>
#include <string.h>

#include "vireo/log.h"
#include "vireo/mgr.h"

#define IO_MAX_VMS 256
#define IO_MAX_SHARES (IO_MAX_VMS * MGR_MAX_DISKS)
#define BISECT_STEPS 64

/* The budgets: disk bytes/s, disk ops/s, vNIC bytes/s (receive and
 * transmit are separate pools of the same size: a link is full duplex). */
enum { POOL_DISK_BPS, POOL_DISK_IOPS, POOL_NET_RX, POOL_NET_TX, NPOOLS };

/* ---- the allocation (pure) ---- */

static double weight_of(const struct io_share *s)
{
	return s->weight ? (double)s->weight : 1.0;
}

static double clampd(double v, double lo, double hi)
{
	return v < lo ? lo : v > hi ? hi : v;
}

static double fill_sum(const struct io_share *s, unsigned int n, const double *base,
		       const double *lo, const double *hi, double level, double *out)
{
	double sum = 0;

	for (unsigned int i = 0; i < n; i++) {
		out[i] = clampd(base[i] + level * weight_of(&s[i]), lo[i], hi[i]);
		sum += out[i];
	}
	return sum;
}

/* out[i] = clamp(base[i] + level * weight[i], lo[i], hi[i]) for the largest
 * level whose sum stays within budget (all at hi if that fits): a water
 * level rising in vessels whose widths are the weights. sum(lo) <= budget. */
static void fill(const struct io_share *s, unsigned int n, const double *base, const double *lo,
		 const double *hi, double budget, double *out)
{
	double low = 0, high = 0;

	for (unsigned int i = 0; i < n; i++) {
		double need = (hi[i] - base[i]) / weight_of(&s[i]);

		if (need > high)
			high = need;
	}
	if (fill_sum(s, n, base, lo, hi, high, out) <= budget)
		return;
	for (int k = 0; k < BISECT_STEPS; k++) {
		double mid = (low + high) / 2;

		if (fill_sum(s, n, base, lo, hi, mid, out) <= budget)
			low = mid;
		else
			high = mid;
	}
	fill_sum(s, n, base, lo, hi, low, out);
}

/* Each share keeps at least 0.1 % of the budget: a limit of 0 would mean
 * "unlimited", and a tiny one would stall the device for good. */
static uint64_t min_limit(uint64_t budget)
{
	return budget / 1000 ? budget / 1000 : 1;
}

bool io_allocate(struct io_share *s, unsigned int n, uint64_t budget)
{
	static double lo[IO_MAX_SHARES], hi[IO_MAX_SHARES], base[IO_MAX_SHARES],
		out[IO_MAX_SHARES];
	double b = (double)budget, floors = 0;
	uint64_t least = min_limit(budget);
	bool over;

	if (n > IO_MAX_SHARES)
		n = IO_MAX_SHARES;
	for (unsigned int i = 0; i < n; i++) {
		double cap = s[i].cap && s[i].cap < budget ? (double)s[i].cap : b;
		double want = s[i].demand == IO_UNBOUNDED ? b : (double)s[i].demand;

		/* The minimum counts as a floor, so that it fits in the budget. */
		lo[i] = s[i].floor > least ? (double)s[i].floor : (double)least;
		lo[i] = lo[i] < cap ? lo[i] : cap;
		hi[i] = clampd(want, lo[i], cap);
		base[i] = 0;
		floors += lo[i];
	}
	over = floors > b;
	if (over) {
		/* Promised more than there is: each floor gets the same fraction. */
		for (unsigned int i = 0; i < n; i++)
			out[i] = lo[i] * b / floors;
	} else {
		/* Demands first, above the floors, by weight... */
		fill(s, n, base, lo, hi, b, out);
		/* ...then what nobody asked for, by weight up to the caps. */
		for (unsigned int i = 0; i < n; i++) {
			base[i] = lo[i] = out[i];
			hi[i] = s[i].cap && s[i].cap < budget ? (double)s[i].cap : b;
		}
		fill(s, n, base, lo, hi, b, out);
	}
	for (unsigned int i = 0; i < n; i++) {
		uint64_t v = (uint64_t)out[i], lim = s[i].cap && least > s[i].cap ? s[i].cap : least;

		/* Only scaled floors fall below: the sum passes the budget by
		 * at most the minimum of each device then. */
		s[i].limit = v > lim ? v : lim;
	}
	return over;
}

static uint64_t add_sat(uint64_t a, uint64_t b)
{
	return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

/* Adds share x to its group's share g at the host level: what a capped
 * share cannot take is not claimed for it (the others get it). */
static void join(struct io_share *g, const struct io_share *x)
{
	uint64_t want = x->cap && x->demand > x->cap ? x->cap : x->demand;

	g->demand = add_sat(g->demand, want);
	g->weight += x->weight ? x->weight : 1;
	g->floor = add_sat(g->floor, x->cap && x->floor > x->cap ? x->cap : x->floor);
}

/* The shares of group g divide `alloc` among themselves. */
static bool divide_group(struct io_share *s, const int *group, unsigned int n, int g,
			 uint64_t alloc)
{
	static struct io_share sub[IO_MAX_SHARES];
	static unsigned int idx[IO_MAX_SHARES];
	unsigned int k = 0;
	bool over;

	for (unsigned int i = 0; i < n; i++)
		if (group[i] == g) {
			sub[k] = s[i];
			idx[k++] = i;
		}
	over = io_allocate(sub, k, alloc);
	for (unsigned int j = 0; j < k; j++)
		s[idx[j]].limit = sub[j].limit;
	return over;
}

bool io_allocate_groups(struct io_share *s, const int *group, unsigned int n,
			const uint64_t *gbudget, uint64_t *galloc, unsigned int ng, uint64_t budget)
{
	static struct io_share top[IO_MAX_SHARES];
	static unsigned int at[IO_MAX_SHARES];
	static int gtop[IO_MAX_SHARES];
	unsigned int nt = 0;
	bool over = false;

	n = n > IO_MAX_SHARES ? IO_MAX_SHARES : n;
	ng = ng > IO_MAX_SHARES ? IO_MAX_SHARES : ng;
	for (unsigned int g = 0; g < ng; g++)
		gtop[g] = -1;
	/* The host level: each ungrouped share as itself, each group as one. */
	for (unsigned int i = 0; i < n; i++) {
		int g = group[i] < (int)ng ? group[i] : -1;

		if (g < 0) {
			top[nt] = s[i];
			at[i] = nt++;
			continue;
		}
		if (gtop[g] < 0) {
			top[nt] = (struct io_share){ .cap = gbudget[g] };
			gtop[g] = (int)nt++;
		}
		join(&top[gtop[g]], &s[i]);
		at[i] = (unsigned int)gtop[g];
	}
	if (budget) {
		over = io_allocate(top, nt, budget);
	} else {
		for (unsigned int t = 0; t < nt; t++)
			top[t].limit = 0;	/* ungrouped: not managed */
		for (unsigned int g = 0; g < ng; g++)
			if (gtop[g] >= 0)
				top[gtop[g]].limit = gbudget[g];
	}
	/* Each group divides what it got among its shares. */
	for (unsigned int g = 0; g < ng; g++) {
		galloc[g] = gtop[g] < 0 ? 0 : top[gtop[g]].limit;
		if (gtop[g] >= 0)
			over |= divide_group(s, group, n, (int)g, galloc[g]);
	}
	for (unsigned int i = 0; i < n; i++)
		if (group[i] < 0 || group[i] >= (int)ng)
			s[i].limit = top[at[i]].limit;
	return over;
}

uint64_t io_demand(bool first, uint64_t used, uint64_t limit, uint64_t throttled_ns,
		   uint64_t interval_ns, uint64_t budget)
{
	if (first)
		return IO_UNBOUNDED; /* nothing known yet: its fair share */
	/* Held back a tenth of the time, or near its limit: it would take
	 * more. Being held back is the steady sign: a guest that is short of
	 * CPU now and then does not reach its limit in every interval, but
	 * its requests still wait for the bucket. */
	if (limit && (used >= limit - limit / 10 || throttled_ns >= interval_ns / 10))
		return IO_UNBOUNDED;
	/* Room to grow by a quarter, plus 1 % of the budget for a device
	 * that starts from nothing; past that it saturates and is seen. */
	return used + used / 4 + budget / 100;
}

/* ---- one round ---- */

static uint64_t get_u64(struct json_object *o, const char *key, bool *ok)
{
	struct json_object *v;

	if (!o || !json_object_object_get_ex(o, key, &v)) {
		*ok = false;
		return 0;
	}
	return json_object_get_uint64(v);
}

static uint64_t rate(uint64_t now, uint64_t before, uint64_t ms)
{
	return now > before && ms ? (now - before) * 1000 / ms : 0;
}

static uint64_t pool_budget(const struct mgr *m, int pool)
{
	switch (pool) {
	case POOL_DISK_BPS: return m->io_budget_bps;
	case POOL_DISK_IOPS: return m->io_budget_iops;
	default: return m->net_budget_bps;
	}
}

/* Which bucket of a disk holds it back: the one nearest its limit (a
 * fixed one included); the throttled time counts for that one only. */
static int binding(const uint64_t used[2], const uint64_t cur[2])
{
	double r0 = cur[0] ? (double)used[0] / (double)cur[0] : 0;
	double r1 = cur[1] ? (double)used[1] / (double)cur[1] : 0;

	return r1 > r0;
}

/* The network with its own budget that vNIC `nic` is on, or NULL. */
static struct mgr_net *budget_net(struct mgr *m, const struct mgr_nic *nic)
{
	struct mgr_net *n = nic->network ? mgr_net_find(m, nic->network) : NULL;

	return n && n->budget_bps ? n : NULL;
}

/* The budget a vNIC draws from (each direction): its network's, else the
 * host's. */
static uint64_t nic_budget(struct mgr *m, const struct mgr_nic *nic)
{
	struct mgr_net *n = budget_net(m, nic);

	return n ? n->budget_bps : m->net_budget_bps;
}

/* Takes in one device's new counters (ops: 0 for a vNIC side) and the
 * limits in force (the VMM's own figures), and estimates its demand
 * (budgets: of its two dimensions, 0 for one not managed). */
static void dev_update(struct io_dev *d, bool fresh, uint64_t ms, const uint64_t cnt[3],
		       const uint64_t cur[2], const uint64_t budgets[2])
{
	bool first = !fresh || !d->seen || cnt[0] < d->bytes || cnt[1] < d->ops;
	uint64_t throttled = first ? 0 : cnt[2] - d->throttled_ns;
	int bind;

	for (int k = 0; k < 2; k++)
		d->used[k] = first ? 0 : rate(cnt[k], k ? d->ops : d->bytes, ms);
	bind = binding(d->used, cur);
	for (int k = 0; k < 2; k++) {
		uint64_t budget = budgets[k];

		d->limit[k] = budget ? cur[k] : 0;
		d->demand[k] = budget ? io_demand(first, d->used[k], cur[k],
						  k == bind ? throttled : 0, ms * 1000000,
						  budget) : 0;
	}
	d->bytes = cnt[0];
	d->ops = cnt[1];
	d->throttled_ns = cnt[2];
	d->seen = true;
}

/* Reads the VM's counters (asked now; m->lock dropped meanwhile, vm
 * referenced). False if it has none or is no longer running. */
static bool read_vm(struct mgr *m, struct mgr_vm *vm)
{
	const uint64_t disk_budgets[2] = { m->io_budget_bps, m->io_budget_iops };
	struct json_object *disks = NULL, *nics = NULL;
	uint64_t ms;
	bool fresh, ok = true;

	if (mgr_refresh_info(m, vm, MGR_INFO_TIMEOUT_MS) || vm->deleted ||
	    vm->state != MGR_RUNNING || !vm->info)
		return false;
	fresh = vm->io_pid == vm->pid && vm->info_ms > vm->io_ms;
	ms = fresh ? vm->info_ms - vm->io_ms : 0;
	json_object_object_get_ex(vm->info, "disks", &disks);
	json_object_object_get_ex(vm->info, "nics", &nics);
	for (unsigned int i = 0; i < vm->def.ndisks && ok; i++) {
		struct json_object *o = json_object_array_get_idx(disks, i);
		uint64_t c[3] = { get_u64(o, "charged_bytes", &ok), get_u64(o, "charged_ops", &ok),
				  get_u64(o, "throttled_ns", &ok) };
		uint64_t cur[2] = { get_u64(o, "bps", &ok), get_u64(o, "iops", &ok) };

		dev_update(&vm->io[i], fresh, ms, c, cur, disk_budgets);
	}
	for (unsigned int i = 0; i < vm->def.nnics && ok; i++) {
		struct json_object *o = json_object_array_get_idx(nics, i);
		uint64_t rx[3] = { get_u64(o, "rx_bytes", &ok), 0, get_u64(o, "rx_throttled_ns", &ok) };
		uint64_t tx[3] = { get_u64(o, "tx_bytes", &ok), 0, get_u64(o, "tx_throttled_ns", &ok) };
		uint64_t crx[2] = { get_u64(o, "rx_bps", &ok), 0 }, ctx[2] = { get_u64(o, "tx_bps", &ok), 0 };
		uint64_t b[2] = { nic_budget(m, &vm->def.nics[i]), 0 };

		dev_update(&vm->io[MGR_MAX_DISKS + 2 * i], fresh, ms, rx, crx, b);
		dev_update(&vm->io[MGR_MAX_DISKS + 2 * i + 1], fresh, ms, tx, ctx, b);
	}
	vm->io_pid = vm->pid;
	vm->io_ms = vm->info_ms;
	return ok; /* a VMM without these counters (older binary): left alone */
}

/* Where each share of a pool goes: VM, slot, dimension. */
struct slot {
	struct mgr_vm *vm;
	unsigned int dev, dim;
};

/* The shares of one pool over the VMs read this round. */
static unsigned int pool_shares(int pool, struct mgr_vm **vms, unsigned int nv, struct io_share *s,
				struct slot *where)
{
	unsigned int n = 0;

	for (unsigned int v = 0; v < nv; v++) {
		const struct vm_def *def = &vms[v]->def;
		unsigned int count = pool <= POOL_DISK_IOPS ? def->ndisks : def->nnics;

		for (unsigned int i = 0; i < count && n < IO_MAX_SHARES; i++) {
			const struct mgr_disk *d = pool <= POOL_DISK_IOPS ? &def->disks[i] : NULL;
			const struct mgr_nic *nic = d ? NULL : &def->nics[i];
			unsigned int dev = d ? i : MGR_MAX_DISKS + 2 * i + (pool == POOL_NET_TX);
			unsigned int dim = pool == POOL_DISK_IOPS;

			s[n] = (struct io_share){
				.demand = vms[v]->io[dev].demand[dim],
				.weight = d ? d->weight : nic->weight,
				.floor = d ? (dim ? d->floor_iops : d->floor_bps) : nic->floor_bps,
				.cap = d ? (dim ? d->iops : d->bps)
					 : (pool == POOL_NET_TX ? nic->tx_bps : nic->rx_bps),
			};
			where[n++] = (struct slot){ vms[v], dev, dim };
		}
	}
	return n;
}

/* The group of a vNIC share: its network's index in nets (added if new),
 * -1 if its network has no budget (or it is on a plain tap). */
static int net_group(struct mgr *m, const struct slot *w, struct mgr_net **nets,
		     uint64_t *gbudget, unsigned int *ng)
{
	struct mgr_net *n = budget_net(m, &w->vm->def.nics[(w->dev - MGR_MAX_DISKS) / 2]);
	unsigned int g = 0;

	if (!n)
		return -1;
	while (g < *ng && nets[g] != n)
		g++;
	if (g == *ng) {
		nets[g] = n;
		gbudget[g] = n->budget_bps;
		(*ng)++;
	}
	return (int)g;
}

/* Divides one budget (a vNIC direction's: the host's and the networks');
 * true if its floors asked for more than it. */
static bool run_pool(struct mgr *m, int pool, struct mgr_vm **vms, unsigned int nv,
		     uint64_t want[][MGR_IO_DEVS][2])
{
	static struct io_share s[IO_MAX_SHARES];
	static struct slot where[IO_MAX_SHARES];
	static struct mgr_net *nets[IO_MAX_SHARES];
	static uint64_t gbudget[IO_MAX_SHARES], galloc[IO_MAX_SHARES];
	static int group[IO_MAX_SHARES];
	uint64_t budget = pool_budget(m, pool);
	unsigned int n, ng = 0;
	bool over;

	n = pool_shares(pool, vms, nv, s, where);
	for (unsigned int i = 0; i < n; i++)
		group[i] = pool >= POOL_NET_RX ? net_group(m, &where[i], nets, gbudget, &ng) : -1;
	if (!budget && !ng)
		return false;
	over = io_allocate_groups(s, group, n, gbudget, galloc, ng, budget);
	for (unsigned int g = 0; g < ng; g++)
		nets[g]->alloc[pool - POOL_NET_RX] = galloc[g];
	for (unsigned int i = 0; i < n; i++) {
		unsigned int v = 0;

		while (vms[v] != where[i].vm)
			v++;
		want[v][where[i].dev][where[i].dim] = s[i].limit;
	}
	return over;
}

/* Warns when a class's floors become overcommitted (once, not each round). */
static void note_over(struct mgr *m, const bool over[3])
{
	static const char *const what[3] = { "disk bytes/s", "disk ops/s", "vNIC bytes/s" };
	const uint64_t budgets[3] = { m->io_budget_bps, m->io_budget_iops, m->net_budget_bps };

	for (int c = 0; c < 3; c++) {
		if (over[c] && !m->io_over[c])
			log_warn("I/O policy: the floors ask for more %s than the budget %" PRIu64
				 "%s: each gets the same fraction of its floor", what[c], budgets[c],
				 c == 2 ? " (the host's) or a network's budget_bps" : "");
		m->io_over[c] = over[c];
	}
}

/* Worth a set-limits: new, or more than 1/32 away (a near-equal change is
 * not worth a round trip to the VMM). */
static bool differs(uint64_t cur, uint64_t want)
{
	uint64_t d = cur > want ? cur - want : want - cur;

	return want && (!cur || d > cur / 32);
}

static const char *demand_text(uint64_t d, char *buf, size_t size)
{
	if (d == IO_UNBOUNDED)
		return "unbounded";
	snprintf(buf, size, "%" PRIu64, d);
	return buf;
}

/* The fixed limit of slot `dev`, dimension `k` in the VM's definition. */
static uint64_t dev_cap(const struct vm_def *def, unsigned int dev, int k)
{
	const struct mgr_nic *nic;

	if (dev < MGR_MAX_DISKS)
		return k ? def->disks[dev].iops : def->disks[dev].bps;
	nic = &def->nics[(dev - MGR_MAX_DISKS) / 2];
	return (dev - MGR_MAX_DISKS) % 2 ? nic->tx_bps : nic->rx_bps;
}

static uint64_t within(uint64_t v, uint64_t cap)
{
	return cap && (!v || v > cap) ? cap : v;
}

uint64_t mgr_iopolicy_bound(const struct mgr *m, const struct mgr_vm *vm, unsigned int dev,
			    int k, uint64_t cap)
{
	if (!m->io_auto || vm->state != MGR_RUNNING || !vm->io[dev].limit[k])
		return cap;
	return within(vm->io[dev].limit[k], cap);
}

/* Sends one device's new limits (under the VM's operation lock, skipped if
 * the VM is in an operation; m->lock dropped for the request). */
static void set_dev(struct mgr *m, struct mgr_vm *vm, unsigned int dev, uint64_t want[2])
{
	bool nic = dev >= MGR_MAX_DISKS;
	unsigned int idx = nic ? (dev - MGR_MAX_DISKS) / 2 : dev;
	struct io_dev *d = &vm->io[dev];
	char sock[PATH_MAX], req[160], dem[24];
	struct json_object *r, *ok;

	if (vm->deleted || pthread_mutex_trylock(&vm->lock))
		return;
	/* A PATCH may have lowered the cap since this round read it. */
	for (int k = 0; k < 2; k++)
		if (want[k])
			want[k] = within(want[k], dev_cap(&vm->def, dev, k));
	store_path(m, sock, sizeof(sock), "run", vm->def.name, ".sock");
	if (nic) {
		snprintf(req, sizeof(req), "{\"action\":\"set-limits\",\"nic\":%u,\"%s\":%" PRIu64 "}",
			 idx, (dev - MGR_MAX_DISKS) % 2 ? "tx_bps" : "rx_bps", want[0]);
	} else {
		/* Only the changed dimensions: an absent one keeps its value
		 * (the user's fixed limit, for one without a budget). */
		int len = snprintf(req, sizeof(req), "{\"action\":\"set-limits\",\"disk\":%u", idx);

		if (want[0])
			len += snprintf(req + len, sizeof(req) - (size_t)len, ",\"bps\":%" PRIu64, want[0]);
		if (want[1])
			len += snprintf(req + len, sizeof(req) - (size_t)len, ",\"iops\":%" PRIu64, want[1]);
		snprintf(req + len, sizeof(req) - (size_t)len, "}");
	}
	pthread_mutex_unlock(&m->lock);
	r = vmm_request(sock, req);
	pthread_mutex_lock(&m->lock);
	if (r && json_object_object_get_ex(r, "ok", &ok) && json_object_get_boolean(ok) &&
	    vm->state == MGR_RUNNING) {
		for (int k = 0; k < 2; k++) {
			if (!want[k] || want[k] == d->limit[k])
				continue;
			log_info("VM %s: I/O policy: %s %u %s %" PRIu64 " -> %" PRIu64
				 " (used %" PRIu64 ", demand %s)", vm->def.name, nic ? "nic" : "disk",
				 idx, nic ? ((dev - MGR_MAX_DISKS) % 2 ? "tx_bps" : "rx_bps")
					  : (k ? "iops" : "bps"),
				 d->limit[k], want[k], d->used[k],
				 demand_text(d->demand[k], dem, sizeof(dem)));
			d->limit[k] = want[k];
		}
	}
	json_object_put(r);
	pthread_mutex_unlock(&vm->lock);
}

static void apply(struct mgr *m, struct mgr_vm *vm, uint64_t want[MGR_IO_DEVS][2])
{
	for (unsigned int dev = 0; dev < MGR_IO_DEVS; dev++) {
		struct io_dev *d = &vm->io[dev];

		/* Only a changed dimension is sent; the other keeps its value. */
		for (int k = 0; k < 2; k++)
			if (!differs(d->limit[k], want[dev][k]))
				want[dev][k] = 0;
		if (want[dev][0] || want[dev][1])
			set_dev(m, vm, dev, want[dev]);
	}
}

void mgr_iopolicy_run(struct mgr *m)
{
	static struct mgr_vm *vms[IO_MAX_VMS];
	static uint64_t want[IO_MAX_VMS][MGR_IO_DEVS][2];
	unsigned int nv = 0, nr = 0;
	bool over[3] = { false, false, false };

	/* Referenced first: reading each drops m->lock. */
	for (struct mgr_vm *vm = m->vms; vm && nv < IO_MAX_VMS; vm = vm->next)
		if (vm->state == MGR_RUNNING && (vm->def.ndisks || vm->def.nnics)) {
			mgr_ref(vm);
			vms[nv++] = vm;
		}
	for (unsigned int i = 0; i < nv; i++) {
		struct mgr_vm *vm = vms[i];

		if (read_vm(m, vm)) {
			vms[i] = vms[nr];
			vms[nr++] = vm;
		}
	}
	memset(want, 0, sizeof(want[0]) * nr);
	for (struct mgr_net *n = m->nets; n; n = n->next)
		n->alloc[0] = n->alloc[1] = 0;	/* no running vNICs: nothing */
	for (int p = 0; p < NPOOLS; p++)
		over[p < POOL_NET_RX ? p : 2] |= run_pool(m, p, vms, nr, want);
	note_over(m, over);
	for (unsigned int i = 0; i < nr; i++)
		if (!vms[i]->deleted && vms[i]->state == MGR_RUNNING)
			apply(m, vms[i], want[i]);
	for (unsigned int i = 0; i < nv; i++)
		mgr_unref(m, vms[i]);
}

/* ---- reporting ---- */

static void add_rate(struct json_object *o, const char *key, uint64_t v, bool managed)
{
	json_object_object_add(o, key, managed && v != IO_UNBOUNDED ? json_object_new_uint64(v)
								    : NULL);
}

static void add_dim(struct json_object *o, const struct io_dev *d, int k, const char *suffix)
{
	char key[32];
	bool managed = d->limit[k] != 0;

	snprintf(key, sizeof(key), "limit_%s", suffix);
	add_rate(o, key, d->limit[k], managed);
	snprintf(key, sizeof(key), "demand_%s", suffix);
	add_rate(o, key, d->demand[k], managed);
	snprintf(key, sizeof(key), "used_%s", suffix);
	add_rate(o, key, d->used[k], managed);
}

struct json_object *mgr_iopolicy_json(struct mgr *m, const struct mgr_vm *vm)
{
	struct json_object *o, *disks, *nics;

	if (!m->io_auto || vm->state != MGR_RUNNING)
		return NULL;
	o = json_object_new_object();
	disks = json_object_new_array();
	nics = json_object_new_array();
	for (unsigned int i = 0; i < vm->def.ndisks; i++) {
		struct json_object *d = json_object_new_object();

		add_dim(d, &vm->io[i], 0, "bps");
		add_dim(d, &vm->io[i], 1, "iops");
		json_object_array_add(disks, d);
	}
	for (unsigned int i = 0; i < vm->def.nnics; i++) {
		struct json_object *n = json_object_new_object();

		add_dim(n, &vm->io[MGR_MAX_DISKS + 2 * i], 0, "rx_bps");
		add_dim(n, &vm->io[MGR_MAX_DISKS + 2 * i + 1], 0, "tx_bps");
		json_object_array_add(nics, n);
	}
	json_object_object_add(o, "disks", disks);
	json_object_object_add(o, "nics", nics);
	return o;
}

static void print_value(FILE *f, uint64_t v)
{
	if (v == IO_UNBOUNDED)
		fputs("+Inf\n", f);
	else
		fprintf(f, "%" PRIu64 "\n", v);
}

/* One family over every running VM's devices of one kind. */
static void family(FILE *f, struct mgr *m, const char *name, const char *help, bool nic,
		   unsigned int side, int k, bool demand)
{
	fprintf(f, "# HELP %s %s\n# TYPE %s gauge\n", name, help, name);
	for (struct mgr_vm *vm = m->vms; vm; vm = vm->next) {
		unsigned int count = nic ? vm->def.nnics : vm->def.ndisks;

		if (vm->state != MGR_RUNNING)
			continue;
		for (unsigned int i = 0; i < count; i++) {
			const struct io_dev *d = &vm->io[nic ? MGR_MAX_DISKS + 2 * i + side : i];

			if (!d->limit[k])
				continue;
			fprintf(f, "%s{vm=\"%s\",%s=\"%u\"} ", name, vm->def.name, nic ? "nic" : "disk", i);
			print_value(f, demand ? d->demand[k] : d->limit[k]);
		}
	}
}

/* The networks with a budget: it, and what the last round gave them. */
static void networks_metrics(FILE *f, const struct mgr *m)
{
	static const char *const dir[2] = { "rx", "tx" };

	fputs("# HELP vireo_network_budget_bytes_per_second a network's vNIC budget "
	      "(budget_bps, each direction)\n"
	      "# TYPE vireo_network_budget_bytes_per_second gauge\n", f);
	for (const struct mgr_net *n = m->nets; n; n = n->next)
		if (n->budget_bps)
			fprintf(f, "vireo_network_budget_bytes_per_second{network=\"%s\"} %" PRIu64
				"\n", n->name, n->budget_bps);
	for (int k = 0; k < 2; k++) {
		fprintf(f, "# HELP vireo_network_policy_allocation_%s_bytes_per_second what the I/O "
			"policy gave a network's vNICs together\n# TYPE "
			"vireo_network_policy_allocation_%s_bytes_per_second gauge\n", dir[k], dir[k]);
		for (const struct mgr_net *n = m->nets; n; n = n->next)
			if (n->alloc[k])
				fprintf(f, "vireo_network_policy_allocation_%s_bytes_per_second"
					"{network=\"%s\"} %" PRIu64 "\n", dir[k], n->name, n->alloc[k]);
	}
}

void mgr_iopolicy_metrics(struct mgr *m, FILE *f)
{
	static const struct { const char *name, *help; bool nic; unsigned int side; int k; bool demand; } fams[] = {
		{ "vireo_vm_disk_policy_limit_bytes_per_second", "bandwidth limit the I/O policy set", false, 0, 0, false },
		{ "vireo_vm_disk_policy_demand_bytes_per_second", "bandwidth demand the I/O policy estimated (+Inf: all it can get)", false, 0, 0, true },
		{ "vireo_vm_disk_policy_limit_ops_per_second", "operations limit the I/O policy set", false, 0, 1, false },
		{ "vireo_vm_disk_policy_demand_ops_per_second", "operations demand the I/O policy estimated (+Inf: all it can get)", false, 0, 1, true },
		{ "vireo_vm_nic_policy_limit_rx_bytes_per_second", "receive limit the I/O policy set", true, 0, 0, false },
		{ "vireo_vm_nic_policy_demand_rx_bytes_per_second", "receive demand the I/O policy estimated (+Inf: all it can get)", true, 0, 0, true },
		{ "vireo_vm_nic_policy_limit_tx_bytes_per_second", "transmit limit the I/O policy set", true, 1, 0, false },
		{ "vireo_vm_nic_policy_demand_tx_bytes_per_second", "transmit demand the I/O policy estimated (+Inf: all it can get)", true, 1, 0, true },
	};
	static const char *const classes[3] = { "disk_bytes", "disk_ops", "net_bytes" };

	if (!m->io_auto)
		return;
	fputs("# HELP vireo_io_budget_per_second the I/O policy's host budget (0: not managed)\n"
	      "# TYPE vireo_io_budget_per_second gauge\n", f);
	fprintf(f, "vireo_io_budget_per_second{class=\"disk_bytes\"} %" PRIu64 "\n", m->io_budget_bps);
	fprintf(f, "vireo_io_budget_per_second{class=\"disk_ops\"} %" PRIu64 "\n", m->io_budget_iops);
	fprintf(f, "vireo_io_budget_per_second{class=\"net_bytes\"} %" PRIu64 "\n", m->net_budget_bps);
	fputs("# HELP vireo_io_floors_overcommitted 1 if the floors asked for more than the budget\n"
	      "# TYPE vireo_io_floors_overcommitted gauge\n", f);
	for (int c = 0; c < 3; c++)
		fprintf(f, "vireo_io_floors_overcommitted{class=\"%s\"} %d\n", classes[c], m->io_over[c]);
	for (size_t i = 0; i < sizeof(fams) / sizeof(fams[0]); i++)
		family(f, m, fams[i].name, fams[i].help, fams[i].nic, fams[i].side, fams[i].k,
		       fams[i].demand);
	networks_metrics(f, m);
}
