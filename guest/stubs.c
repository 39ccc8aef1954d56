#include "virtio.h"
void scn_net(const char *arg) { (void)arg; }
void scn_hostile(const char *arg) { (void)arg; }
