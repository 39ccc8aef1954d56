/* What the daemon reports: a VM as JSON (GET /vms, GET /vms/NAME) and the
 * Prometheus text exposition (GET /metrics). Live figures come from each
 * VMM's `info`, cached in vm->info and refreshed by a thread of its own, so
 * that a VMM that does not answer slows no reader; and from its cgroup. */
#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "vireo/log.h"
#include "vireo/mgr.h"

#define INFO_INTERVAL_MS 1000

static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

int mgr_refresh_info(struct mgr *m, struct mgr_vm *vm, int timeout_ms)
{
	char sock[PATH_MAX];
	struct json_object *r;
	pid_t pid = vm->pid;
	int ret = 0;

	if (!mgr_vm_active(vm))
		return -ENOENT;
	if (store_path(m, sock, sizeof(sock), "run", vm->def.name, ".sock"))
		return -ENAMETOOLONG;
	mgr_ref(vm);
	pthread_mutex_unlock(&m->lock);
	r = vmm_request_ms(sock, "{\"action\":\"info\"}", timeout_ms);
	if (!r)
		ret = -EIO;
	pthread_mutex_lock(&m->lock);
	/* Only for the VMM asked: it may have ended, or been replaced. */
	if (r && !vm->deleted && mgr_vm_active(vm) && vm->pid == pid) {
		json_object_object_del(r, "ok");
		json_object_put(vm->info);
		vm->info = r;
		vm->info_ms = mono_ms();
		r = NULL;
	}
	json_object_put(r);
	mgr_unref(m, vm);
	return ret;
}

/* One round: every active VM, each with a short deadline, m->lock dropped
 * around each request. */
static void refresh_all(struct mgr *m)
{
	struct mgr_vm **vms;
	size_t n = 0;

	for (struct mgr_vm *vm = m->vms; vm; vm = vm->next)
		n += mgr_vm_active(vm);
	vms = n ? calloc(n, sizeof(*vms)) : NULL;
	if (!vms)
		return;
	n = 0;
	for (struct mgr_vm *vm = m->vms; vm; vm = vm->next)
		if (mgr_vm_active(vm)) {
			mgr_ref(vm);
			vms[n++] = vm;
		}
	for (size_t i = 0; i < n; i++) {
		if (!m->info_quit)
			mgr_refresh_info(m, vms[i], MGR_INFO_TIMEOUT_MS);
		mgr_unref(m, vms[i]);
	}
	free(vms);
}

static void *info_main(void *arg)
{
	struct mgr *m = arg;

	pthread_mutex_lock(&m->lock);
	while (!m->info_quit) {
		struct timespec until;

		refresh_all(m);
		clock_gettime(CLOCK_MONOTONIC, &until);
		until.tv_sec += INFO_INTERVAL_MS / 1000;
		while (!m->info_quit && pthread_cond_timedwait(&m->info_cond, &m->lock, &until) == 0)
			;
	}
	pthread_mutex_unlock(&m->lock);
	return NULL;
}

int mgr_info_start(struct mgr *m)
{
	pthread_condattr_t attr;
	int ret;

	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(&m->info_cond, &attr);
	pthread_condattr_destroy(&attr);
	ret = pthread_create(&m->info_thread, NULL, info_main, m);
	if (ret)
		return err_set(-ret, "cannot start the info thread: %s", strerror(ret));
	m->info_running = true;
	return 0;
}

void mgr_info_stop(struct mgr *m)
{
	if (!m->info_running)
		return;
	pthread_mutex_lock(&m->lock);
	m->info_quit = true;
	pthread_cond_signal(&m->info_cond);
	pthread_mutex_unlock(&m->lock);
	pthread_join(m->info_thread, NULL);
	m->info_running = false;
}

struct json_object *mgr_vm_json(struct mgr *m, struct mgr_vm *vm, bool live)
{
	struct json_object *o = vm_def_to_json(&vm->def), *info;
	bool active = mgr_vm_active(vm);

	json_object_object_add(o, "state", json_object_new_string(mgr_state_name(vm->state)));
	json_object_object_add(o, "reason", json_object_new_string(vm->reason));
	json_object_object_add(o, "pid", json_object_new_int(active ? vm->pid : 0));
	if (active && vm->vmm_uid)
		json_object_object_add(o, "vmm_uid", json_object_new_int64(vm->vmm_uid));
	if (active) {
		char path[PATH_MAX];

		if (!store_path(m, path, sizeof(path), "run", vm->def.name, ".console") &&
		    !access(path, F_OK))
			json_object_object_add(o, "console", json_object_new_string(path));
	}
	if (!live || !active)
		return o;
	json_object_object_add(o, "cgroup", json_object_new_string(cgroup_mode_name(m->cg.mode)));
	json_object_object_add(o, "cpu_ns", json_object_new_uint64(cgroup_vm_cpu_ns(&m->cg, vm->def.name)));
	json_object_object_add(o, "cpu_throttled_ns",
			       json_object_new_uint64(cgroup_vm_throttled_ns(&m->cg, vm->def.name)));
	if ((info = mgr_iopolicy_json(m, vm)))
		json_object_object_add(o, "io_policy", info);
	/* A copy: the reply is serialised after m->lock is released, and
	 * serialising writes into the object. */
	info = NULL;
	if (vm->info && json_object_deep_copy(vm->info, &info, NULL) == 0) {
		json_object_object_add(o, "vmm", info);
		json_object_object_add(o, "vmm_info_age_ms",
				       json_object_new_uint64(mono_ms() - vm->info_ms));
	}
	/* An outgoing migration's progress, as the VMM last told it. */
	if (vm->migrating_to[0]) {
		struct json_object *mig = NULL, *copy = NULL;

		if (vm->info && json_object_object_get_ex(vm->info, "migration", &mig))
			json_object_deep_copy(mig, &copy, NULL);
		if (!copy)
			copy = json_object_new_object();
		json_object_object_add(copy, "to", json_object_new_string(vm->migrating_to));
		json_object_object_add(o, "migration", copy);
	}
	json_object_object_add(o, "firewall_counters", mgr_fw_counters(&vm->def));
	return o;
}

static void metric_help(FILE *f, const char *name, const char *type, const char *help)
{
	fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static uint64_t get_u64(struct json_object *o, const char *key)
{
	struct json_object *v;

	return json_object_object_get_ex(o, key, &v) ? json_object_get_uint64(v) : 0;
}

/* A per-VM gauge from the definition. */
static void def_family(FILE *f, struct mgr *m, const char *name, const char *type,
		       const char *help, uint64_t (*get)(const struct vm_def *))
{
	metric_help(f, name, type, help);
	for (struct mgr_vm *vm = m->vms; vm; vm = vm->next)
		fprintf(f, "%s{vm=\"%s\"} %llu\n", name, vm->def.name, (unsigned long long)get(&vm->def));
}

static uint64_t def_vcpus(const struct vm_def *d) { return d->cpus; }
static uint64_t def_memory(const struct vm_def *d) { return d->memory; }
static uint64_t def_weight(const struct vm_def *d) { return d->cpu_weight; }
static uint64_t def_max(const struct vm_def *d) { return d->cpu_max; }

/* A figure from the VMMs' info replies: per VM (array NULL), or per
 * element of its "disks" or "nics" (labelled disk="N" or nic="N"). */
static void info_family(FILE *f, struct mgr *m, struct json_object **infos, const char *name,
			const char *type, const char *help, const char *key, const char *array)
{
	unsigned int i = 0;

	metric_help(f, name, type, help);
	for (struct mgr_vm *vm = m->vms; vm; vm = vm->next, i++) {
		struct json_object *arr;

		if (!infos[i])
			continue;
		if (!array) {
			fprintf(f, "%s{vm=\"%s\"} %llu\n", name, vm->def.name,
				(unsigned long long)get_u64(infos[i], key));
			continue;
		}
		if (!json_object_object_get_ex(infos[i], array, &arr))
			continue;
		for (size_t d = 0; d < json_object_array_length(arr); d++)
			fprintf(f, "%s{vm=\"%s\",%.*s=\"%zu\"} %llu\n", name, vm->def.name,
				(int)strlen(array) - 1, array, d,
				(unsigned long long)get_u64(json_object_array_get_idx(arr, d), key));
	}
}

/* From each VMM's "balloon" object; `sub` picks the guest's own stats. */
static void balloon_family(FILE *f, struct mgr *m, struct json_object **infos, const char *name,
			   const char *help, const char *key, bool sub)
{
	unsigned int i = 0;

	metric_help(f, name, "gauge", help);
	for (struct mgr_vm *vm = m->vms; vm; vm = vm->next, i++) {
		struct json_object *b, *g, *v;

		if (!infos[i] || !json_object_object_get_ex(infos[i], "balloon", &b))
			continue;
		if (sub && !json_object_object_get_ex(b, "guest", &g))
			continue;
		if (json_object_object_get_ex(sub ? g : b, key, &v))
			fprintf(f, "%s{vm=\"%s\"} %llu\n", name, vm->def.name,
				(unsigned long long)json_object_get_uint64(v));
	}
}

static void state_cpu_families(FILE *f, struct mgr *m)
{
	metric_help(f, "vireo_vm_state", "gauge", "1 for the state the VM is in");
	for (struct mgr_vm *vm = m->vms; vm; vm = vm->next)
		for (int s = MGR_STOPPED; s < MGR_NSTATES; s++)
			fprintf(f, "vireo_vm_state{vm=\"%s\",state=\"%s\"} %d\n", vm->def.name,
				mgr_state_name((enum mgr_state)s), vm->state == (enum mgr_state)s);
	metric_help(f, "vireo_vm_cpu_seconds_total", "counter", "CPU time of the VM's VMM (its cgroup)");
	for (struct mgr_vm *vm = m->vms; vm; vm = vm->next)
		if (mgr_vm_active(vm))
			fprintf(f, "vireo_vm_cpu_seconds_total{vm=\"%s\"} %.6f\n", vm->def.name,
				(double)cgroup_vm_cpu_ns(&m->cg, vm->def.name) / 1e9);
	metric_help(f, "vireo_vm_cpu_throttled_seconds_total", "counter",
		    "time the VM's vCPUs were held back by cpu_max");
	for (struct mgr_vm *vm = m->vms; vm; vm = vm->next)
		if (mgr_vm_active(vm))
			fprintf(f, "vireo_vm_cpu_throttled_seconds_total{vm=\"%s\"} %.6f\n", vm->def.name,
				(double)cgroup_vm_throttled_ns(&m->cg, vm->def.name) / 1e9);
}

static void host_family(FILE *f, struct mgr *m)
{
	unsigned int committed = 0;

	for (struct mgr_vm *vm = m->vms; vm; vm = vm->next)
		if (mgr_vm_active(vm))
			committed += vm->def.cpus;
	metric_help(f, "vireo_host_cpus", "gauge", "online host CPUs");
	fprintf(f, "vireo_host_cpus %ld\n", sysconf(_SC_NPROCESSORS_ONLN));
	long cpu;
	double worst = mgr_commitment(m, NULL, &cpu);

	metric_help(f, "vireo_vcpus_committed", "gauge", "vCPUs of running and paused VMs");
	fprintf(f, "vireo_vcpus_committed %u\n", committed);
	metric_help(f, "vireo_vcpus_per_cpu_max", "gauge",
		    "vCPUs on the most committed host CPU (pins counted)");
	fprintf(f, "vireo_vcpus_per_cpu_max %.3f\n", worst);
	metric_help(f, "vireo_overcommit_limit", "gauge", "vCPUs per host CPU past which starts are refused");
	fprintf(f, "vireo_overcommit_limit %u\n", m->overcommit);
}

/* The firewall's per-rule counters (nicfw.c) of every active VM, as
 * packets or bytes, labelled with the rule's name ("rule 0", "spoof-mac"). */
static void fw_family(FILE *f, struct mgr *m, struct json_object **fw, bool bytes)
{
	size_t i = 0;

	metric_help(f, bytes ? "vireo_vm_nic_firewall_bytes_total" :
		    "vireo_vm_nic_firewall_packets_total", "counter", bytes ?
		    "bytes matched by a firewall or anti-spoofing rule" :
		    "packets matched by a firewall or anti-spoofing rule");
	for (struct mgr_vm *vm = m->vms; vm; vm = vm->next, i++) {
		size_t n = fw[i] ? json_object_array_length(fw[i]) : 0;

		for (size_t k = 0; k < n; k++) {
			struct json_object *nic = json_object_array_get_idx(fw[i], k), *c;

			if (!json_object_object_get_ex(nic, "counters", &c))
				continue;
			json_object_object_foreach(c, rule, val)
				fprintf(f, "%s{vm=\"%s\",nic=\"%llu\",rule=\"%s\"} %llu\n",
					bytes ? "vireo_vm_nic_firewall_bytes_total" :
					"vireo_vm_nic_firewall_packets_total", vm->def.name,
					(unsigned long long)get_u64(nic, "nic"), rule,
					(unsigned long long)get_u64(val, bytes ? "bytes" : "packets"));
		}
	}
}

static void fw_families(FILE *f, struct mgr *m, size_t nvms)
{
	struct json_object **fw = calloc(nvms + 1, sizeof(*fw));
	size_t i = 0;

	if (!fw)
		return;
	for (struct mgr_vm *vm = m->vms; vm; vm = vm->next, i++)
		fw[i] = mgr_vm_active(vm) ? mgr_fw_counters(&vm->def) : NULL;
	fw_family(f, m, fw, false);
	fw_family(f, m, fw, true);
	for (i = 0; i < nvms; i++)
		json_object_put(fw[i]);
	free(fw);
}

char *mgr_metrics(struct mgr *m)
{
	static const struct { const char *name, *type, *help, *key, *array; } fams[] = {
		{ "vireo_vm_exits_total", "counter", "vCPU exits to userspace", "exits", NULL },
		{ "vireo_vm_serial_dropped_bytes_total", "counter", "guest console output lost: the VMM's output did not drain", "serial_dropped_bytes", NULL },
		{ "vireo_vm_serial_client_dropped_bytes_total", "counter", "guest console output a slow console client missed", "serial_client_dropped_bytes", NULL },
		{ "vireo_vm_disk_read_bytes_total", "counter", "bytes read", "rd_bytes", "disks" },
		{ "vireo_vm_disk_written_bytes_total", "counter", "bytes written", "wr_bytes", "disks" },
		{ "vireo_vm_disk_reads_total", "counter", "read requests", "rd_ops", "disks" },
		{ "vireo_vm_disk_writes_total", "counter", "write requests", "wr_ops", "disks" },
		{ "vireo_vm_disk_errors_total", "counter", "failed requests", "errors", "disks" },
		{ "vireo_vm_disk_throttled_nanoseconds_total", "counter", "time requests waited for the rate limiter", "throttled_ns", "disks" },
		{ "vireo_vm_disk_limit_bytes_per_second", "gauge", "bandwidth limit, 0 = none", "bps", "disks" },
		{ "vireo_vm_disk_limit_ops_per_second", "gauge", "operations limit, 0 = none", "iops", "disks" },
		{ "vireo_vm_nic_rx_packets_total", "counter", "packets to the guest", "rx_packets", "nics" },
		{ "vireo_vm_nic_tx_packets_total", "counter", "packets from the guest", "tx_packets", "nics" },
		{ "vireo_vm_nic_rx_dropped_total", "counter", "packets to the guest dropped", "rx_dropped", "nics" },
		{ "vireo_vm_nic_tx_dropped_total", "counter", "packets from the guest dropped", "tx_dropped", "nics" },
		{ "vireo_vm_nic_limit_rx_bytes_per_second", "gauge", "receive limit, 0 = none", "rx_bps", "nics" },
		{ "vireo_vm_nic_limit_tx_bytes_per_second", "gauge", "transmit limit, 0 = none", "tx_bps", "nics" },
		{ "vireo_vm_nic_rx_bytes_total", "counter", "bytes to the guest", "rx_bytes", "nics" },
		{ "vireo_vm_nic_tx_bytes_total", "counter", "bytes from the guest", "tx_bytes", "nics" },
		{ "vireo_vm_nic_rx_throttled_nanoseconds_total", "counter", "time receiving waited for the rate limiter", "rx_throttled_ns", "nics" },
		{ "vireo_vm_nic_tx_throttled_nanoseconds_total", "counter", "time transmitting waited for the rate limiter", "tx_throttled_ns", "nics" },
	};
	char *text = NULL;
	size_t len = 0, nvms = 0, i = 0;
	struct json_object **infos;
	FILE *f;

	for (struct mgr_vm *vm = m->vms; vm; vm = vm->next)
		nvms++;
	infos = calloc(nvms + 1, sizeof(*infos));
	f = infos ? open_memstream(&text, &len) : NULL;
	if (!f) {
		free(infos);
		return NULL;
	}
	/* Cached: a VMM that does not answer does not hold up the scrape. */
	for (struct mgr_vm *vm = m->vms; vm; vm = vm->next, i++)
		infos[i] = mgr_vm_active(vm) ? vm->info : NULL;
	host_family(f, m);
	state_cpu_families(f, m);
	def_family(f, m, "vireo_vm_vcpus", "gauge", "vCPUs", def_vcpus);
	def_family(f, m, "vireo_vm_memory_bytes", "gauge", "guest RAM", def_memory);
	def_family(f, m, "vireo_vm_cpu_weight", "gauge", "relative CPU share", def_weight);
	def_family(f, m, "vireo_vm_cpu_max_percent", "gauge", "CPU cap in % of one host CPU, 0 = none", def_max);
	for (size_t k = 0; k < sizeof(fams) / sizeof(fams[0]); k++)
		info_family(f, m, infos, fams[k].name, fams[k].type, fams[k].help, fams[k].key, fams[k].array);
	balloon_family(f, m, infos, "vireo_vm_balloon_target_bytes", "memory the guest is asked to give back", "target", false);
	balloon_family(f, m, infos, "vireo_vm_balloon_actual_bytes", "memory the guest's balloon holds", "actual", false);
	balloon_family(f, m, infos, "vireo_vm_guest_free_bytes", "free memory the guest last reported", "free", true);
	balloon_family(f, m, infos, "vireo_vm_guest_total_bytes", "total memory the guest last reported", "total", true);
	mgr_iopolicy_metrics(m, f);
	fw_families(f, m, nvms);
	free(infos);
	fclose(f);
	return text;
}
