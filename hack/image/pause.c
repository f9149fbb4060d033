/* The pods' sandbox process on the local cluster's nodes: no sandbox image is reachable from
 * here, so this is built with gcc -static and imported into each node's containerd. It holds
 * the pod's namespaces and does nothing until SIGTERM or SIGINT. */
#include <signal.h>
#include <unistd.h>
static void done(int sig) { (void)sig; _exit(0); }
int main(void) {
  signal(SIGTERM, done); signal(SIGINT, done);
  for (;;) pause();
}
