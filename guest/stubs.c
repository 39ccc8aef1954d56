#include "virtio.h"
void scn_hostile(const char *arg) { (void)arg; }
