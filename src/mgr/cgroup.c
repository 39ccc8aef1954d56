/* cgroups for VMMs: one cgroup per VM under "vireo-ID", itself under the
 * daemon's own cgroup (so whatever limits the daemon lives under also bound
 * its VMs). cgroup v2 (cpu.weight, cpu.max, memory.max) when a v2 hierarchy
 * has the cpu controller; else v1 (cpu.shares, cpu.cfs_quota_us,
 * memory.limit_in_bytes, cpuacct.usage); else none, with the reason.
 *
 * Layout per VM: NAME holds the whole VMM and carries the weight and the
 * memory limit; NAME/vcpus (v1: a plain child in the cpu hierarchy; v2: a
 * threaded child) holds only the vCPU threads and carries the cap, so a
 * capped VM still answers its control socket at once. The vCPU threads
 * enter NAME/vcpus themselves (vireo run --vcpu-cgroup). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vireo/log.h"
#include "vireo/mgr.h"

#define CFS_PERIOD_US 100000

const char *cgroup_mode_name(enum cgroup_mode mode)
{
	return mode == CGROUP_V2 ? "v2" : mode == CGROUP_V1 ? "v1" : "none";
}

static int write_file(const char *dir, const char *file, const char *text)
{
	char path[PATH_MAX + 64];
	int fd, ret = 0;

	snprintf(path, sizeof(path), "%s/%s", dir, file);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return err_set(-errno, "cannot open %s: %m", path);
	if (write(fd, text, strlen(text)) < 0)
		ret = err_set(-errno, "cannot write '%s' to %s: %m", text, path);
	close(fd);
	return ret;
}

static int read_u64(const char *path, const char *key, uint64_t *out)
{
	char line[256];
	FILE *f = fopen(path, "re");
	int ret = -ENOENT;

	if (!f)
		return -errno;
	while (ret && fgets(line, sizeof(line), f)) {
		size_t k = key ? strlen(key) : 0;

		if (key && (strncmp(line, key, k) || line[k] != ' '))
			continue;
		*out = strtoull(line + k, NULL, 10);
		ret = 0;
	}
	fclose(f);
	return ret;
}

/* This process's cgroup path in the hierarchy with controller `ctrl`
 * ("" for v2) from /proc/self/cgroup. */
static int own_cgroup(const char *ctrl, char *out, size_t size)
{
	char line[1024];
	FILE *f = fopen("/proc/self/cgroup", "re");
	int ret = -ENOENT;

	if (!f)
		return -errno;
	while (ret && fgets(line, sizeof(line), f)) {
		char *ctrls = strchr(line, ':'), *path = ctrls ? strchr(ctrls + 1, ':') : NULL;
		char *save = NULL;

		if (!path)
			continue;
		*path++ = '\0';
		path[strcspn(path, "\n")] = '\0';
		ctrls++;
		if (!*ctrl && !*ctrls)
			ret = 0;
		for (char *t = strtok_r(ctrls, ",", &save); t && ret && *ctrl; t = strtok_r(NULL, ",", &save))
			if (!strcmp(t, ctrl))
				ret = 0;
		if (!ret)
			snprintf(out, size, "%s", path);
	}
	fclose(f);
	return ret;
}

/* Mount point of the hierarchy with controller `ctrl` (v1), or of cgroup2
 * when ctrl is "". */
static int find_mount(const char *ctrl, char *out, size_t size)
{
	char line[2048];
	FILE *f = fopen("/proc/self/mountinfo", "re");
	int ret = -ENOENT;

	if (!f)
		return -errno;
	while (ret && fgets(line, sizeof(line), f)) {
		char root[1024], mnt[1024], fstype[64], opts[1024];
		char *dash = strstr(line, " - "), *save = NULL;

		if (!dash || sscanf(line, "%*s %*s %*s %1023s %1023s", root, mnt) != 2 ||
		    sscanf(dash + 3, "%63s %*s %1023s", fstype, opts) != 2)
			continue;
		if (!*ctrl && !strcmp(fstype, "cgroup2"))
			ret = 0;
		for (char *t = strtok_r(opts, ",", &save); t && *ctrl && ret; t = strtok_r(NULL, ",", &save))
			if (!strcmp(fstype, "cgroup") && !strcmp(t, ctrl))
				ret = 0;
		if (!ret)
			snprintf(out, size, "%s", mnt);
	}
	fclose(f);
	return ret;
}

/* mount + own path + "/vireo-ID", created. Returns 0 or -errno. */
static int base_dir(const char *ctrl, const char *id, char *out, size_t size)
{
	char mnt[1024], own[1024];
	int n;

	if (find_mount(ctrl, mnt, sizeof(mnt)) || own_cgroup(ctrl, own, sizeof(own)))
		return -ENOENT;
	n = snprintf(out, size, "%s%s/vireo-%s", mnt, strcmp(own, "/") ? own : "", id);
	if (n < 0 || (size_t)n >= size)
		return -ENAMETOOLONG;
	if (mkdir(out, 0755) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

static bool v2_has_cpu(const char *mnt)
{
	char path[PATH_MAX], buf[512] = "";
	FILE *f;

	snprintf(path, sizeof(path), "%s/cgroup.controllers", mnt);
	f = fopen(path, "re");
	if (!f)
		return false;
	if (!fgets(buf, sizeof(buf), f))
		buf[0] = '\0';
	fclose(f);
	return strstr(buf, "cpu") != NULL;
}

static int init_v2(struct cgroups *cg, const char *id)
{
	char mnt[1024], parent[PATH_MAX];

	if (find_mount("", mnt, sizeof(mnt)))
		return err_set(-ENOENT, "no cgroup2 mount");
	if (!v2_has_cpu(mnt))
		return err_set(-ENOTSUP, "the cgroup2 tree at %s has no cpu controller", mnt);
	if (base_dir("", id, cg->v2, sizeof(cg->v2)))
		return err_set(-EACCES, "cannot create our cgroup2 directory");
	/* Our VMs' cgroups need cpu and memory delegated from the parent. */
	snprintf(parent, sizeof(parent), "%s", cg->v2);
	*strrchr(parent, '/') = '\0';
	write_file(parent, "cgroup.subtree_control", "+cpu +memory");
	return write_file(cg->v2, "cgroup.subtree_control", "+cpu +memory");
}

static int init_v1(struct cgroups *cg, const char *id)
{
	if (base_dir("cpu", id, cg->cpu, sizeof(cg->cpu)))
		return err_set(-ENOENT, "no writable cgroup v1 cpu hierarchy");
	if (base_dir("cpuacct", id, cg->cpuacct, sizeof(cg->cpuacct)))
		cg->cpuacct[0] = '\0';
	if (base_dir("memory", id, cg->memory, sizeof(cg->memory)))
		cg->memory[0] = '\0';
	return 0;
}

void cgroup_init(struct cgroups *cg, const char *id, const char *want)
{
	char why2[160] = "";

	memset(cg, 0, sizeof(*cg));
	if (want && !strcmp(want, "none")) {
		snprintf(cg->reason, sizeof(cg->reason), "disabled (--cgroup=none)");
		return;
	}
	if (!want || !strcmp(want, "v2")) {
		if (!init_v2(cg, id)) {
			cg->mode = CGROUP_V2;
			return;
		}
		snprintf(why2, sizeof(why2), "%s", err_get());
	}
	if ((!want || !strcmp(want, "v1")) && !init_v1(cg, id)) {
		cg->mode = CGROUP_V1;
		return;
	}
	snprintf(cg->reason, sizeof(cg->reason), "%s%s%s", why2, *why2 ? "; " : "", err_get());
}

/* The VM's directory in the hierarchy whose base is `base`. */
static int vm_dir(const char *base, const char *name, char *out, size_t size)
{
	int n = snprintf(out, size, "%s/%s", base, name);

	return n < 0 || (size_t)n >= size ? -ENAMETOOLONG : 0;
}

static int mkdir_vm(const char *base, const char *name)
{
	char dir[PATH_MAX];

	if (!*base)
		return 0;
	if (vm_dir(base, name, dir, sizeof(dir)))
		return err_set(-ENAMETOOLONG, "cgroup path too long");
	if (mkdir(dir, 0755) < 0 && errno != EEXIST)
		return err_set(-errno, "cannot create cgroup %s: %m", dir);
	return 0;
}

static int write_vm(const char *base, const char *name, const char *file, const char *text)
{
	char dir[PATH_MAX];

	if (!*base)
		return 0;
	if (vm_dir(base, name, dir, sizeof(dir)))
		return err_set(-ENAMETOOLONG, "cgroup path too long");
	return write_file(dir, file, text);
}

/* The base of the hierarchy that carries cpu limits. */
static const char *cpu_base(const struct cgroups *cg)
{
	return cg->mode == CGROUP_V2 ? cg->v2 : cg->mode == CGROUP_V1 ? cg->cpu : "";
}

int cgroup_vm_vcpu_file(const struct cgroups *cg, const char *name, char *buf, size_t size)
{
	int n;

	if (!*cpu_base(cg))
		return -ENOENT;
	n = snprintf(buf, size, "%s/%s/vcpus/%s", cpu_base(cg), name,
		     cg->mode == CGROUP_V2 ? "cgroup.threads" : "tasks");
	if (n < 0 || (size_t)n >= size)
		return -ENAMETOOLONG;
	return access(buf, W_OK) ? -errno : 0;
}

/* NAME/vcpus; on failure the cap goes on NAME as a whole. */
static void mkdir_vcpus(const struct cgroups *cg, const char *name)
{
	char sub[MGR_NAME_MAX + 8], dir[PATH_MAX];

	snprintf(sub, sizeof(sub), "%s/vcpus", name);
	if (mkdir_vm(cpu_base(cg), sub))
		goto fail;
	if (cg->mode == CGROUP_V1)
		return;
	if (vm_dir(cg->v2, sub, dir, sizeof(dir)) || write_file(dir, "cgroup.type", "threaded") ||
	    write_vm(cg->v2, name, "cgroup.subtree_control", "+cpu")) {
		rmdir(dir);
		goto fail;
	}
	return;
fail:
	log_warn("VM %s: no vCPU cgroup (%s); cpu_max caps the whole VMM", name, err_get());
}

int cgroup_vm_create(const struct cgroups *cg, const char *name)
{
	int ret = 0;

	if (cg->mode == CGROUP_V2) {
		ret = mkdir_vm(cg->v2, name);
	} else if (cg->mode == CGROUP_V1) {
		ret = mkdir_vm(cg->cpu, name);
		if (!ret)
			ret = mkdir_vm(cg->cpuacct, name);
		if (!ret)
			ret = mkdir_vm(cg->memory, name);
	}
	if (!ret && cg->mode != CGROUP_NONE)
		mkdir_vcpus(cg, name);
	return ret;
}

/* The cap: "QUOTA PERIOD" / "max PERIOD" (v2) or the quota in us, -1 (v1). */
static int write_cap(const struct cgroups *cg, const char *group, unsigned int max_pct)
{
	/* quota per period: max_pct % of one CPU */
	unsigned long quota = (unsigned long)max_pct * CFS_PERIOD_US / 100;
	char m[64];
	int ret;

	if (cg->mode == CGROUP_V2) {
		if (max_pct)
			snprintf(m, sizeof(m), "%lu %d", quota, CFS_PERIOD_US);
		else
			snprintf(m, sizeof(m), "max %d", CFS_PERIOD_US);
		return write_vm(cg->v2, group, "cpu.max", m);
	}
	snprintf(m, sizeof(m), "%ld", max_pct ? (long)quota : -1L);
	ret = write_vm(cg->cpu, group, "cpu.cfs_period_us", "100000");
	return ret ? ret : write_vm(cg->cpu, group, "cpu.cfs_quota_us", m);
}

int cgroup_vm_set_cpu(const struct cgroups *cg, const char *name, unsigned int weight,
		      unsigned int max_pct)
{
	char w[32], file[PATH_MAX], vcpus[MGR_NAME_MAX + 8];
	bool split = !cgroup_vm_vcpu_file(cg, name, file, sizeof(file));
	int ret;

	if (cg->mode == CGROUP_NONE)
		return 0;
	if (cg->mode == CGROUP_V2) {
		snprintf(w, sizeof(w), "%u", weight);
		ret = write_vm(cg->v2, name, "cpu.weight", w);
	} else {
		/* weight 100 (the v2 default) = 1024 shares (the v1 default) */
		snprintf(w, sizeof(w), "%lu", (unsigned long)weight * 1024 / 100);
		ret = write_vm(cg->cpu, name, "cpu.shares", w);
	}
	snprintf(vcpus, sizeof(vcpus), "%s/vcpus", name);
	if (!ret)
		ret = write_cap(cg, name, split ? 0 : max_pct);
	if (!ret && split)
		ret = write_cap(cg, vcpus, max_pct);
	return ret;
}

int cgroup_vm_set_memory(const struct cgroups *cg, const char *name, uint64_t bytes)
{
	char v[32];

	snprintf(v, sizeof(v), "%llu", (unsigned long long)bytes);
	if (cg->mode == CGROUP_V2)
		return write_vm(cg->v2, name, "memory.max", v);
	if (cg->mode == CGROUP_V1)
		return write_vm(cg->memory, name, "memory.limit_in_bytes", v);
	return 0;
}

int cgroup_vm_attach(const struct cgroups *cg, const char *name, pid_t pid)
{
	char v[32];
	int ret = 0;

	snprintf(v, sizeof(v), "%d", (int)pid);
	if (cg->mode == CGROUP_V2)
		return write_vm(cg->v2, name, "cgroup.procs", v);
	if (cg->mode == CGROUP_V1) {
		ret = write_vm(cg->cpu, name, "cgroup.procs", v);
		if (!ret)
			ret = write_vm(cg->cpuacct, name, "cgroup.procs", v);
		if (!ret)
			ret = write_vm(cg->memory, name, "cgroup.procs", v);
	}
	return ret;
}

uint64_t cgroup_vm_cpu_ns(const struct cgroups *cg, const char *name)
{
	char path[PATH_MAX + 32];
	uint64_t v = 0;

	if (cg->mode == CGROUP_V2) {
		snprintf(path, sizeof(path), "%s/%s/cpu.stat", cg->v2, name);
		return read_u64(path, "usage_usec", &v) ? 0 : v * 1000;
	}
	if (cg->mode == CGROUP_V1 && *cg->cpuacct) {
		snprintf(path, sizeof(path), "%s/%s/cpuacct.usage", cg->cpuacct, name);
		return read_u64(path, NULL, &v) ? 0 : v;
	}
	return 0;
}

uint64_t cgroup_vm_throttled_ns(const struct cgroups *cg, const char *name)
{
	char path[PATH_MAX + 32], file[PATH_MAX];
	bool split = !cgroup_vm_vcpu_file(cg, name, file, sizeof(file));
	uint64_t v = 0;

	if (cg->mode == CGROUP_NONE)
		return 0;
	snprintf(path, sizeof(path), "%s/%s%s/cpu.stat", cpu_base(cg), name, split ? "/vcpus" : "");
	if (cg->mode == CGROUP_V2)
		return read_u64(path, "throttled_usec", &v) ? 0 : v * 1000;
	return read_u64(path, "throttled_time", &v) ? 0 : v;
}

static void rmdir_vm(const char *base, const char *name)
{
	char dir[PATH_MAX];

	if (*base && !vm_dir(base, name, dir, sizeof(dir)) && rmdir(dir) < 0 && errno != ENOENT)
		log_warn("cannot remove cgroup %s: %s", dir, strerror(errno));
}

void cgroup_vm_remove(const struct cgroups *cg, const char *name)
{
	char vcpus[MGR_NAME_MAX + 8];

	snprintf(vcpus, sizeof(vcpus), "%s/vcpus", name);
	if (cg->mode != CGROUP_NONE)
		rmdir_vm(cpu_base(cg), vcpus);
	if (cg->mode == CGROUP_V2) {
		rmdir_vm(cg->v2, name);
	} else if (cg->mode == CGROUP_V1) {
		rmdir_vm(cg->cpu, name);
		rmdir_vm(cg->cpuacct, name);
		rmdir_vm(cg->memory, name);
	}
}

void cgroup_cleanup(const struct cgroups *cg)
{
	const char *const bases[] = { cg->v2, cg->cpu, cg->cpuacct, cg->memory };

	/* Only succeeds once no VM cgroup is left, which is what we want. */
	for (size_t i = 0; i < sizeof(bases) / sizeof(bases[0]); i++)
		if (*bases[i])
			rmdir(bases[i]);
}
