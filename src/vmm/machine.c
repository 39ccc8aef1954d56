/* The machine description, as snapshots record it (include/vireo/machine.h). */
#include <errno.h>

#include "vireo/log.h"
#include "vireo/machine.h"
#include "vireo/state.h"

void machine_save(const struct machine_config *m, struct state_writer *w)
{
	state_begin(w, STATE_SEC_MACHINE, 0, STATE_SECTION_CRITICAL);
	state_put_u32(w, m->ncpus);
	state_put_u64(w, m->mem_size);
	state_put_u8(w, m->hugepages);
	state_put_u8(w, m->debug_exit);
	state_put_u32(w, m->ndisks);
	state_put_u32(w, m->nnics);
	state_put_u8(w, m->rng);
	state_put_u8(w, m->balloon);
	state_end(w);
}

int machine_load(const struct state_reader *r, struct machine_config *m)
{
	struct state_cursor c;
	int ret = state_section(r, STATE_SEC_MACHINE, 0, &c);

	if (ret)
		return ret;
	m->ncpus = state_get_u32(&c);
	m->mem_size = state_get_u64(&c);
	m->hugepages = state_get_u8(&c) != 0;
	m->debug_exit = state_get_u8(&c) != 0;
	m->ndisks = state_get_u32(&c);
	m->nnics = state_get_u32(&c);
	m->rng = state_get_u8(&c) != 0;
	m->balloon = state_get_u8(&c) != 0;
	ret = state_done(&c);
	if (ret)
		return ret;
	if (m->ncpus != state_reader_header(r)->ncpus ||
	    m->mem_size != state_reader_header(r)->mem_size)
		return err_set(-EINVAL, "state file: the machine section disagrees with the header");
	return 0;
}

bool machine_snapshot_unsupported(const struct machine_config *m)
{
	if (!m->ndisks && !m->nnics && !m->rng && !m->balloon)
		return false;
	err_set(-ENOTSUP, "not yet supported: snapshot of a VM with virtio devices");
	return true;
}
