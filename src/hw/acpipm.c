/* ACPI PM1 event and control blocks (include/vireo/acpipm.h). One lock:
 * vCPU threads access the registers, the event loop presses the button,
 * and the SCI line must follow the last register change in order. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#include "vireo/acpi.h"
#include "vireo/acpipm.h"
#include "vireo/layout.h"
#include "vireo/log.h"
#include "vireo/state.h"

#define REG_STS 0
#define REG_EN  2
#define REG_CNT 4

struct acpipm {
	struct vm *vm;
	pthread_mutex_t lock;
	uint16_t sts, en, cnt;
	bool sci;
	bool s5;
	uint64_t power_buttons;
};

/* Called with the lock held, after every change of sts or en. */
static void acpipm_update_sci(struct acpipm *pm)
{
	bool level = (pm->sts & pm->en) != 0;

	if (level == pm->sci)
		return;
	__atomic_store_n(&pm->sci, level, __ATOMIC_RELAXED);
	if (pm->vm && vm_set_irq(pm->vm, IRQ_SCI, level))
		log_ratelimited("ACPI PM: cannot set the SCI (GSI %d)", IRQ_SCI);
}

static void acpipm_write_cnt(struct acpipm *pm, uint16_t v)
{
	pm->cnt = v & ~ACPIPM_SLP_EN;
	if (!(v & ACPIPM_SLP_EN) || ((v >> ACPIPM_SLP_TYP_SHIFT) & 7) != ACPI_S5_SLP_TYP)
		return; /* only S5 is declared (the DSDT's \_S5) */
	__atomic_store_n(&pm->s5, true, __ATOMIC_RELAXED);
	if (pm->vm)
		vm_request_stop(pm->vm, VM_EXIT_POWEROFF);
}

/* A write of any width at any offset: each 16-bit register takes the bytes
 * that fall on it (`mask`), so a byte write changes only its half. */
static void acpipm_write(struct acpipm *pm, uint64_t offset, const uint8_t *data, uint32_t len)
{
	uint8_t b[ACPIPM_LEN] = { 0 };
	uint16_t mask[ACPIPM_LEN / 2] = { 0 }, v[ACPIPM_LEN / 2];

	for (uint32_t i = 0; i < len && offset + i < ACPIPM_LEN; i++) {
		b[offset + i] = data[i];
		mask[(offset + i) / 2] |= (uint16_t)(0xff << (8 * ((offset + i) % 2)));
	}
	for (unsigned int r = 0; r < ACPIPM_LEN / 2; r++)
		v[r] = (uint16_t)(b[2 * r] | b[2 * r + 1] << 8) & mask[r];
	pm->sts &= (uint16_t)~v[REG_STS / 2];
	pm->en = (pm->en & (uint16_t)~mask[REG_EN / 2]) | v[REG_EN / 2];
	if (mask[REG_CNT / 2])
		acpipm_write_cnt(pm, (pm->cnt & (uint16_t)~mask[REG_CNT / 2]) | v[REG_CNT / 2]);
	acpipm_update_sci(pm);
}

void acpipm_io(void *opaque, uint64_t offset, uint8_t *data, uint32_t len, bool is_write)
{
	struct acpipm *pm = opaque;
	uint16_t cnt;
	uint8_t regs[ACPIPM_LEN];
	uint64_t v = 0;

	pthread_mutex_lock(&pm->lock);
	if (is_write) {
		acpipm_write(pm, offset, data, len);
		pthread_mutex_unlock(&pm->lock);
		return;
	}
	cnt = pm->cnt | ACPIPM_SCI_EN;
	regs[0] = (uint8_t)pm->sts; regs[1] = (uint8_t)(pm->sts >> 8);
	regs[2] = (uint8_t)pm->en;  regs[3] = (uint8_t)(pm->en >> 8);
	regs[4] = (uint8_t)cnt;     regs[5] = (uint8_t)(cnt >> 8);
	pthread_mutex_unlock(&pm->lock);
	for (uint32_t i = len; i-- > 0;)
		v = v << 8 | (offset + i < ACPIPM_LEN ? regs[offset + i] : 0);
	bus_put(data, len, v);
}

void acpipm_power_button(struct acpipm *pm)
{
	pthread_mutex_lock(&pm->lock);
	pm->sts |= ACPIPM_PWRBTN;
	__atomic_fetch_add(&pm->power_buttons, 1, __ATOMIC_RELAXED);
	acpipm_update_sci(pm);
	pthread_mutex_unlock(&pm->lock);
}

uint64_t acpipm_power_button_count(const struct acpipm *pm)
{
	return __atomic_load_n(&pm->power_buttons, __ATOMIC_RELAXED);
}

bool acpipm_sci(const struct acpipm *pm)
{
	return __atomic_load_n(&pm->sci, __ATOMIC_RELAXED);
}

bool acpipm_s5_requested(const struct acpipm *pm)
{
	return __atomic_load_n(&pm->s5, __ATOMIC_RELAXED);
}

void acpipm_save(struct acpipm *pm, struct state_writer *w)
{
	pthread_mutex_lock(&pm->lock);
	state_begin(w, STATE_SEC_ACPIPM, 0, STATE_SECTION_CRITICAL);
	state_put_u32(w, pm->sts);
	state_put_u32(w, pm->en);
	state_put_u32(w, pm->cnt);
	state_put_u64(w, acpipm_power_button_count(pm));
	state_end(w);
	pthread_mutex_unlock(&pm->lock);
}

int acpipm_restore(struct acpipm *pm, const struct state_reader *r)
{
	struct state_cursor c;
	uint32_t sts, en, cnt;
	uint64_t buttons;
	int ret = state_section(r, STATE_SEC_ACPIPM, 0, &c);

	if (ret)
		return ret;
	sts = state_get_u32(&c);
	en = state_get_u32(&c);
	cnt = state_get_u32(&c);
	buttons = state_get_u64(&c);
	ret = state_done(&c);
	if (ret)
		return ret;
	/* SLP_EN reads 0: a saved one would be a sleep never carried out. */
	if (sts > UINT16_MAX || en > UINT16_MAX || cnt > UINT16_MAX || (cnt & ACPIPM_SLP_EN))
		return err_set(-EINVAL, "ACPI PM state: registers out of range");
	pthread_mutex_lock(&pm->lock);
	pm->sts = (uint16_t)sts;
	pm->en = (uint16_t)en;
	pm->cnt = (uint16_t)cnt;
	__atomic_store_n(&pm->power_buttons, buttons, __ATOMIC_RELAXED);
	/* The SCI line as the registers drive it (a fresh VM's is low). */
	pm->sci = false;
	acpipm_update_sci(pm);
	pthread_mutex_unlock(&pm->lock);
	return 0;
}

struct acpipm *acpipm_create(struct vm *vm)
{
	struct acpipm *pm = calloc(1, sizeof(*pm));
	int ret;

	if (!pm) {
		err_set(-ENOMEM, "out of memory");
		return NULL;
	}
	pm->vm = vm;
	pthread_mutex_init(&pm->lock, NULL);
	/* Adjacent blocks, one range (PORT_ACPI_PM1A_CNT follows the event
	 * block's 4 bytes). */
	if (vm) {
		ret = bus_register(&vm->pio, PORT_ACPI_PM1A_EVT, ACPIPM_LEN, acpipm_io, pm, "acpi-pm");
		if (ret) {
			err_set(ret, "cannot register the ACPI PM ports");
			acpipm_destroy(pm);
			return NULL;
		}
	}
	return pm;
}

void acpipm_destroy(struct acpipm *pm)
{
	if (!pm)
		return;
	pthread_mutex_destroy(&pm->lock);
	free(pm);
}
