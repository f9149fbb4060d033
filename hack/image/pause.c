/* Two uses, built with gcc -static: the pods' sandbox process on the local cluster's nodes (no
 * sandbox image is reachable from here; imported into each node's containerd), which does
 * nothing until SIGTERM or SIGINT; and, as `/pause --until-killed` in nodevirt's image
 * (hack/image.sh), the only process of a VM's holder pod. That one ignores SIGTERM, so kubelet
 * keeps the pod, and the VM's resources booked, for the whole grace period in which the agent
 * shuts the guest down; kubelet's SIGKILL at its end stops it. */
#include <signal.h>
#include <string.h>
#include <unistd.h>
static void done(int sig) { (void)sig; _exit(0); }
int main(int argc, char **argv) {
  int hold = argc > 1 && strcmp(argv[1], "--until-killed") == 0;
  signal(SIGTERM, hold ? SIG_IGN : done);
  signal(SIGINT, hold ? SIG_IGN : done);
  for (;;) pause();
}
