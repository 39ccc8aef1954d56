/* Interrupt routing: vireo owns the GSI routing table so that it can add
 * MSI routes for irqfds. GSIs 0-23 go to the in-kernel PIC and IOAPIC as a
 * PC has them, except that GSI 0 (the PIT) drives IOAPIC pin 2, which is
 * what the MADT's IRQ0 -> GSI 2 override tells the guest. MSI routes take
 * GSIs from 24 up. */
#include <errno.h>
#include <linux/kvm.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "vireo/log.h"
#include "vireo/vmm.h"

#define FIRST_MSI_GSI 24

static struct kvm_irq_routing_entry irqchip_route(uint32_t gsi, uint32_t chip, uint32_t pin)
{
	return (struct kvm_irq_routing_entry){ .gsi = gsi, .type = KVM_IRQ_ROUTING_IRQCHIP,
					       .u.irqchip = { .irqchip = chip, .pin = pin } };
}

/* Called with vm->irq_lock held. */
static int irq_commit(struct vm *vm)
{
	struct kvm_irq_routing *table;
	size_t size = sizeof(*table) + vm->nroutes * sizeof(table->entries[0]);
	int ret = 0;

	table = calloc(1, size);
	if (!table)
		return -ENOMEM;
	table->nr = vm->nroutes;
	memcpy(table->entries, vm->routes, vm->nroutes * sizeof(table->entries[0]));
	if (ioctl(vm->vm_fd, KVM_SET_GSI_ROUTING, table) < 0)
		ret = -errno;
	free(table);
	return ret;
}

int irq_routing_init(struct vm *vm)
{
	unsigned int n = 0;
	int ret;

	vm->routes = calloc(VM_MAX_ROUTES, sizeof(*vm->routes));
	if (!vm->routes)
		return err_set(-ENOMEM, "out of memory");
	pthread_mutex_init(&vm->irq_lock, NULL);
	for (uint32_t gsi = 0; gsi < 16; gsi++)
		vm->routes[n++] = irqchip_route(gsi, gsi < 8 ? KVM_IRQCHIP_PIC_MASTER :
						KVM_IRQCHIP_PIC_SLAVE, gsi % 8);
	for (uint32_t gsi = 0; gsi < 24; gsi++)
		if (gsi != 2)
			vm->routes[n++] = irqchip_route(gsi, KVM_IRQCHIP_IOAPIC, gsi == 0 ? 2 : gsi);
	vm->nroutes = n;
	vm->next_msi_gsi = FIRST_MSI_GSI;
	pthread_mutex_lock(&vm->irq_lock);
	ret = irq_commit(vm);
	pthread_mutex_unlock(&vm->irq_lock);
	return ret ? err_set(ret, "cannot set the interrupt routing table") : 0;
}

static struct kvm_irq_routing_entry *irq_find(struct vm *vm, uint32_t gsi)
{
	for (unsigned int i = 0; i < vm->nroutes; i++)
		if (vm->routes[i].gsi == gsi && vm->routes[i].type == KVM_IRQ_ROUTING_MSI)
			return &vm->routes[i];
	return NULL;
}

int irq_msi_route(struct vm *vm, int gsi, uint64_t address, uint32_t data)
{
	struct kvm_irq_routing_entry *e;
	int ret;

	pthread_mutex_lock(&vm->irq_lock);
	e = gsi >= 0 ? irq_find(vm, (uint32_t)gsi) : NULL;
	if (!e) {
		if (vm->nroutes == VM_MAX_ROUTES) {
			pthread_mutex_unlock(&vm->irq_lock);
			return -ENOSPC;
		}
		gsi = (int)vm->next_msi_gsi++;
		e = &vm->routes[vm->nroutes++];
		*e = (struct kvm_irq_routing_entry){ .gsi = (uint32_t)gsi,
						     .type = KVM_IRQ_ROUTING_MSI };
	}
	e->u.msi.address_lo = (uint32_t)address;
	e->u.msi.address_hi = (uint32_t)(address >> 32);
	e->u.msi.data = data;
	ret = irq_commit(vm);
	pthread_mutex_unlock(&vm->irq_lock);
	return ret ? ret : gsi;
}

int irq_irqfd(struct vm *vm, int fd, uint32_t gsi, bool assign)
{
	struct kvm_irqfd req = { .fd = (uint32_t)fd, .gsi = gsi,
				 .flags = assign ? 0 : KVM_IRQFD_FLAG_DEASSIGN };

	return ioctl(vm->vm_fd, KVM_IRQFD, &req) < 0 ? -errno : 0;
}
