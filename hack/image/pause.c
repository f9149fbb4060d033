/* Two uses, built with gcc -static: the pods' sandbox process on the local cluster's nodes (no
 * sandbox image is reachable from here; imported into each node's containerd), and the only
 * process of a VM's holder pod, /pause in nodevirt's image (hack/image.sh). It does nothing
 * until SIGTERM or SIGINT. */
#include <signal.h>
#include <unistd.h>
static void done(int sig) { (void)sig; _exit(0); }
int main(void) {
  signal(SIGTERM, done); signal(SIGINT, done);
  for (;;) pause();
}
